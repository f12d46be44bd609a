// librados and librbd, loaded when the first RBD disk is opened (dlopen)
// rather than linked into the daemon.
//
// Why: a daemon that serves no RBD disk needs no Ceph library installed
// (the package recommends librbd1, it does not depend on it) and pays
// nothing for them. Linked, they cost every start: libceph-common's static
// set-up and, on a slow guest-side dom0, seconds of loading; under the
// sanitizers a leak scan of its 130 MiB of globals at every exit.
//
// The RBD driver (rbd_*.cpp) calls the libraries through ceph(), which is
// only reached through a cluster connection (rbd_cluster.cpp), and that
// loads them first. docs/storage.md, "RBD", says what an operator sees.
#pragma once

#include <rados/librados.h>
#include <rbd/librbd.h>

#include <string>

namespace xbd::blkback::storage::rbd {

// The functions the driver uses, as librados.h and librbd.h declare them.
// clang-format off
#define XBD_CEPH_FUNCTIONS(F) \
  F(rados, rados_create2) \
  F(rados, rados_conf_read_file) \
  F(rados, rados_conf_set) \
  F(rados, rados_connect) \
  F(rados, rados_shutdown) \
  F(rados, rados_ioctx_create) \
  F(rados, rados_ioctx_set_namespace) \
  F(rados, rados_ioctx_destroy) \
  F(rbd, rbd_open) \
  F(rbd, rbd_open_read_only) \
  F(rbd, rbd_close) \
  F(rbd, rbd_snap_set) \
  F(rbd, rbd_stat) \
  F(rbd, rbd_get_size) \
  F(rbd, rbd_get_features) \
  F(rbd, rbd_update_watch) \
  F(rbd, rbd_update_unwatch) \
  F(rbd, rbd_lock_get_owners) \
  F(rbd, rbd_lock_get_owners_cleanup) \
  F(rbd, rbd_lock_acquire) \
  F(rbd, rbd_lock_release) \
  F(rbd, rbd_list_lockers) \
  F(rbd, rbd_aio_create_completion) \
  F(rbd, rbd_aio_read) \
  F(rbd, rbd_aio_readv) \
  F(rbd, rbd_aio_write) \
  F(rbd, rbd_aio_writev) \
  F(rbd, rbd_aio_flush) \
  F(rbd, rbd_aio_discard) \
  F(rbd, rbd_aio_get_return_value) \
  F(rbd, rbd_aio_release)
// clang-format on

struct ceph_api {
#define XBD_CEPH_MEMBER(lib, name) decltype(&::name) name = nullptr;
  XBD_CEPH_FUNCTIONS(XBD_CEPH_MEMBER)
#undef XBD_CEPH_MEMBER
};

// Loads the libraries (once: a success is kept for the process's life, a
// failure is tried again at the next call, so that installing librbd1
// needs no restart). False, with why in words, if they cannot be loaded.
// Thread-safe.
bool load_ceph(std::string& why);

// The functions. Only after load_ceph() said true.
const ceph_api& ceph();

// Whether they are loaded (tests: a daemon without RBD disks has not).
bool ceph_loaded();

// Tests: the file names load_ceph() tries ("librados.so.2", "librbd.so.1").
void set_ceph_library_names(std::string rados, std::string rbd);

}  // namespace xbd::blkback::storage::rbd
