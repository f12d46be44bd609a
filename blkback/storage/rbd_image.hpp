// One vbd's image handle: opened, watched for resizes and closed on threads
// of their own (rbd_thread.hpp); used by the rings' channels in between.
//
// The image's lock. Images have the exclusive-lock feature by default:
// librbd takes the lock on a handle's first write and, under its default
// ("automatic") policy, gives it up when another client asks for it. That
// is how live migration works: the destination host opens the image while
// the source still has it open, and the lock moves on the destination's
// first write. A client that took the lock with rbd_lock_acquire(), or a
// kernel client mapped with -o exclusive, refuses instead, and every write
// of ours would fail with EROFS. So a writable open whose image has a lock
// owner asks that owner, with a second, short-lived handle: rbd_lock_acquire
// on it either gets the lock (the owner gave it up, as a migration source
// does; released at once, and our own handle takes it on its first write)
// or fails with EROFS (the owner keeps it: the open is refused with EBUSY,
// naming the owner). The cost is one lock round trip, and only when the
// image has an owner. An advisory lock (`rbd lock add`) under the same
// name, which no librbd client ever gives up and which would hold every
// write for ever, is refused too.
//
// Our own handle never calls rbd_lock_acquire: that switches a handle to
// librbd's "standard" policy for good, and it would then refuse the lock to
// a migration's destination in turn. An owner that died keeps the lock until
// the cluster drops its watch (osd_client_watch_timeout, 30 s): the open
// runs into its timeout and says it was asking the owner, and a retry after
// that succeeds.
//
// Resizes. librbd calls the update watch's callback, on its own thread,
// when the image's header changes. The callback only notes it; a refresher
// thread (started when needed, one at a time) reads the new size with
// rbd_get_size, which may refresh the image synchronously and so must run
// neither in librbd's callback nor on the control thread, keeps it for
// size(), and tells the vbd if it changed.
#pragma once

#include "asio_xen/error.hpp"
#include "blkback/storage/rbd_cluster.hpp"

#include <rbd/librbd.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

namespace xbd::blkback::storage::rbd {

struct image_spec {
  std::string pool;
  std::string ns;  // empty: the pool's default namespace
  std::string image;
  std::string snapshot;  // empty: the image itself
  bool writable = true;  // never with a snapshot
  std::string describe;  // for messages (rbd_target::describe())
};

// What an open is doing, for the message when it runs out of time.
class progress {
 public:
  void set(std::string stage) {
    std::lock_guard lk(m_);
    stage_ = std::move(stage);
  }
  std::string get() const {
    std::lock_guard lk(m_);
    return stage_;
  }

 private:
  mutable std::mutex m_;
  std::string stage_ = "starting";
};

class image : public std::enable_shared_from_this<image> {
 public:
  // Blocks. Connects (or shares the cluster's connection), opens the image
  // (read-only unless spec.writable), checks its lock and starts watching
  // it. On failure `detail` says why and everything opened is closed again.
  static asio_xen::result<std::shared_ptr<image>> open(const cluster_key& key, const image_spec& spec,
                                                       clock::time_point deadline, progress& p, std::string& detail);
  // Blocks. Stops the watch, closes the image and lets the cluster go;
  // idempotent. The handle must have no operation in flight.
  void shut();

  rbd_image_t handle() const { return h_; }
  std::uint64_t size() const { return size_.load(std::memory_order_relaxed); }  // bytes, as last read
  std::uint64_t object_size() const { return object_size_; }
  // `changed` is called (from a librbd-related thread) after size() took a
  // new value, until stop_notifying() has returned.
  void notify_resize(std::function<void()> changed);
  void stop_notifying();

  image() = default;
  ~image();
  image(const image&) = delete;
  image& operator=(const image&) = delete;

 private:
  asio_xen::error_code open_handle(const image_spec& spec, std::string& detail);
  asio_xen::error_code check_lock(const image_spec& spec, progress& p, std::string& detail);
  asio_xen::error_code ask_owner(const image_spec& spec, const std::string& owner, std::string& detail);
  std::string lockers();
  asio_xen::error_code watch(std::string& detail);
  static void updated(void* self);
  void refresh();

  std::string name_;  // for log lines
  std::shared_ptr<cluster> cluster_;
  rados_ioctx_t io_ = nullptr;
  rbd_image_t h_ = nullptr;
  std::uint64_t watch_handle_ = 0;
  bool watching_ = false;
  std::uint64_t object_size_ = 0;
  std::atomic<std::uint64_t> size_{0};

  std::mutex m_;
  std::condition_variable idle_;
  std::function<void()> changed_;  // cleared by stop_notifying()
  bool dirty_ = false;             // an update not yet read
  bool refreshing_ = false;        // a refresher thread runs
  bool closing_ = false;           // shut() has begun: no new refresher
};

}  // namespace xbd::blkback::storage::rbd
