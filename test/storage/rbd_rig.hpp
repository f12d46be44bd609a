// What the RBD driver's tests share: a store and a channel on an
// io_context of the test's, operations that note how they completed, and
// a second librados client in this process for the tests that need
// "another client" of the image.
#pragma once

#include "blkback/storage/rbd.hpp"
#include "test/storage/ceph_cluster.hpp"
#include "test/storage/drive.hpp"

#include <rados/librados.h>
#include <rbd/librbd.h>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

namespace xbd::test::rbd {

using asio_xen::error_code;
using blkback::storage::channel;
using blkback::storage::completion;
using blkback::storage::rbd_options;
using blkback::storage::rbd_target;
using blkback::storage::store;

// One operation's end: how often, with what, on which thread, and whether
// from inside the call that started it (which the storage contract forbids).
struct op_done final : completion {
  static inline thread_local bool in_call = false;
  int calls = 0;
  bool inline_call = false;
  std::thread::id thread;
  error_code ec;
  void complete(error_code e) override {
    ++calls;
    ec = e;
    thread = std::this_thread::get_id();
    inline_call = inline_call || in_call;
  }
  bool finished() const { return calls > 0; }
};

using xbd::test::all_zero;
using xbd::test::drive;
using xbd::test::idle;
using xbd::test::pattern;

// The image `name` of the test cluster's pool, as client.admin.
rbd_target target(const ceph_cluster& c, const std::string& name, const std::string& snapshot = {});
// Bounds short enough for tests, long enough for a loaded machine.
rbd_options options(bool writable = true);

struct rig {
  boost::asio::io_context io;
  std::unique_ptr<store> st;
  std::unique_ptr<channel> ch;
  std::string detail;

  ~rig();  // closes what is open
  // open_rbd on this context: its error, or empty with `st` set.
  error_code open(const rbd_target& t, const rbd_options& o,
                  std::chrono::milliseconds limit = std::chrono::seconds(40));
  void open_channel(unsigned depth = 64);
  void close(std::chrono::milliseconds limit = std::chrono::seconds(40));

  void read(std::uint64_t off, std::span<std::byte> into, op_done& d);
  void write(std::uint64_t off, std::span<const std::byte> from, op_done& d);
  void flush(op_done& d);
  void discard(std::uint64_t off, std::uint64_t len, op_done& d, bool secure = false);

  bool all_finished(const std::vector<op_done>& v, std::chrono::milliseconds limit = std::chrono::seconds(30));
  // `data` to `base` (or from it), `chunk` bytes per operation, `depth` in
  // flight at a time; each operation's error. Checks the contract on each.
  std::vector<error_code> transfer(bool write, std::uint64_t base, std::span<std::byte> data, std::size_t chunk,
                                   unsigned depth);
  static bool all_ok(const std::vector<error_code>& v);
};

// Another client of the cluster, in this process: a librados connection
// and an image handle of its own, as a second host would have. Every call
// blocks (the cluster is up in the tests that use it).
class other_client {
 public:
  other_client(const ceph_cluster& c, const std::string& image);
  ~other_client();
  other_client(const other_client&) = delete;
  other_client& operator=(const other_client&) = delete;

  // rbd_lock_acquire: held exclusively, refused to anyone who asks.
  int lock_exclusively();
  int write(std::uint64_t off, std::span<const std::byte> from);
  int read(std::uint64_t off, std::span<std::byte> into);
  bool owns_lock();

 private:
  void release();

  rados_t cluster_ = nullptr;
  rados_ioctx_t io_ = nullptr;
  rbd_image_t image_ = nullptr;
};

// This process's open descriptors and threads.
std::size_t descriptors();
std::size_t threads();

}  // namespace xbd::test::rbd
