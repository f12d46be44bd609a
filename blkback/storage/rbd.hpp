// The RBD driver: an image in a Ceph cluster, through librbd.
//
// One cluster connection (librados) per distinct cluster — the same
// ceph.conf, client id and options — shared by every vbd of the daemon,
// and one image handle per vbd, opened read-only when the vbd is and always
// for a snapshot. Each ring's channel starts librbd's asynchronous
// operations on the ring's thread and gets their completions back on it
// without blocking; opening and closing, which librados does synchronously
// in part, never run on a ring's or the control thread. The image's update
// watch reports resizes (store::watch_size).
#pragma once

#include "blkback/storage/spec.hpp"
#include "blkback/storage/storage.hpp"

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>

namespace xbd::blkback::storage {

struct rbd_options {
  bool writable = true;
  std::string cluster = "ceph";  // [rbd] cluster: the cluster's name (ceph.conf's $cluster)
  // [rbd] conf: read when the spec names no conf=; empty: librados's own
  // search (CEPH_CONF, /etc/ceph/$cluster.conf, ...).
  std::filesystem::path conf;
  std::string client_id = "admin";  // [rbd] client-id: when the spec has no id=
  // Connecting to the cluster and opening the image, together; closing the
  // image too (a close that takes longer goes on in the background).
  std::chrono::milliseconds connect_timeout{10000};
  // librados's operation timeouts (rados_osd_op_timeout,
  // rados_mon_op_timeout): how long a request waits for an unavailable
  // cluster before it fails. 0: for ever (librados's default; then a
  // request waits for the cluster for as long as it takes). Whole seconds
  // (librados's unit), rounded up.
  std::chrono::milliseconds op_timeout{60000};
};

// Connects (or reuses the connection to the same cluster) and opens the
// image on the calling coroutine's executor, bounded by o.connect_timeout.
// On failure `detail` says why in librados's words: no such pool or image,
// permission denied (credentials, caps), the cluster did not answer, the
// image locked by another client.
boost::asio::awaitable<asio_xen::result<std::unique_ptr<store>>> open_rbd(const rbd_target& t, const rbd_options& o,
                                                                          std::string& detail);

// The cluster connections (librados handles) that exist now: one per
// distinct cluster in use, each gone shortly after its last image closed.
std::size_t rbd_connections();

// Waits (blocking: for the daemon's exit, after every store has closed, and
// for tests) until no thread of the driver is left inside librados or
// librbd (a close or an open that ran out of time, a connection shutting
// down), at most `limit`; false if one still is.
bool rbd_quiesce(std::chrono::milliseconds limit);

}  // namespace xbd::blkback::storage
