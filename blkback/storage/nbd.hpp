// The NBD driver: an export on an NBD server, through libnbd.
//
// The store connects once to learn what the export is (its size, whether it
// is read-only, which commands it takes); then each ring's channel keeps a
// connection of its own, driven from the ring's thread without blocking it
// (libnbd's asynchronous API, its socket watched by the ring's io_context).
// A lost server is reconnected to in the background: what was on the wire
// waits and is sent again, and nothing fails until the server has been gone
// for the reconnect window ([nbd] reconnect-seconds).
#pragma once

#include "blkback/storage/spec.hpp"
#include "blkback/storage/storage.hpp"

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <memory>
#include <string>

namespace xbd::blkback::storage {

struct nbd_options {
  bool writable = true;
  std::chrono::milliseconds connect_timeout{10000};  // one attempt: connect and negotiate
  std::chrono::milliseconds reconnect{30000};        // how long a request waits for a lost server
};

// Connects to `t` on the calling coroutine's executor (bounded by
// o.connect_timeout), reads what the export offers, and returns a store for
// it. On failure `detail` says why in libnbd's or the server's words ("connect:
// Connection refused", an export that does not exist, a read-only export
// opened for writing).
boost::asio::awaitable<asio_xen::result<std::unique_ptr<store>>> open_nbd(const nbd_target& t, const nbd_options& o,
                                                                          std::string& detail);

}  // namespace xbd::blkback::storage
