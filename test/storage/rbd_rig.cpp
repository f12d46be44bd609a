#include "test/storage/rbd_rig.hpp"

#include "test/unit/run.hpp"

#include <doctest/doctest.h>

#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <filesystem>
#include <stdexcept>

namespace xbd::test::rbd {

namespace asio = boost::asio;
using namespace std::chrono_literals;

rbd_target target(const ceph_cluster& c, const std::string& name, const std::string& snapshot) {
  rbd_target t;
  t.pool = ceph_cluster::pool;
  t.image = name;
  t.snapshot = snapshot;
  t.conf = c.conf().string();
  return t;
}

rbd_options options(bool writable) {
  rbd_options o;
  o.writable = writable;
  o.connect_timeout = 20s;
  o.op_timeout = 60s;
  return o;
}

rig::~rig() {
  ch.reset();
  if (st) {
    try {
      close();
    } catch (...) {  // a failed test's leftovers; the store's destructor still lets go
    }
  }
}

error_code rig::open(const rbd_target& t, const rbd_options& o, std::chrono::milliseconds limit) {
  auto r = run(io, blkback::storage::open_rbd(t, o, detail), limit);
  if (!r) return r.error();
  st = std::move(*r);
  return {};
}

void rig::open_channel(unsigned depth) {
  auto c = st->open_channel(blkback::worker{io.get_executor(), nullptr}, depth);
  REQUIRE(c);
  ch = std::move(*c);
}

void rig::close(std::chrono::milliseconds limit) {
  ch.reset();
  if (!st) return;
  run(io, st->close(), limit);
  st.reset();
}

void rig::read(std::uint64_t off, std::span<std::byte> into, op_done& d) {
  op_done::in_call = true;
  ch->read(off, into, d);
  op_done::in_call = false;
}

void rig::write(std::uint64_t off, std::span<const std::byte> from, op_done& d) {
  op_done::in_call = true;
  ch->write(off, from, d);
  op_done::in_call = false;
}

void rig::flush(op_done& d) {
  op_done::in_call = true;
  ch->flush(d);
  op_done::in_call = false;
}

void rig::discard(std::uint64_t off, std::uint64_t len, op_done& d, bool secure) {
  op_done::in_call = true;
  ch->discard(off, len, secure, d);
  op_done::in_call = false;
}

bool rig::all_finished(const std::vector<op_done>& v, std::chrono::milliseconds limit) {
  return drive(
      io, [&] { return std::all_of(v.begin(), v.end(), [](const op_done& d) { return d.finished(); }); }, limit);
}

std::vector<error_code> rig::transfer(bool write, std::uint64_t base, std::span<std::byte> data, std::size_t chunk,
                                      unsigned depth) {
  return xbd::test::transfer_in_batches<op_done>(*this, write, base, data, chunk, depth);
}

bool rig::all_ok(const std::vector<error_code>& v) {
  return std::all_of(v.begin(), v.end(), [](const error_code& e) { return !e; });
}

other_client::other_client(const ceph_cluster& c, const std::string& image) {
  int r = rados_create2(&cluster_, "ceph", "client.admin", 0);
  if (r == 0) r = rados_conf_read_file(cluster_, c.conf().c_str());
  if (r == 0) r = rados_conf_set(cluster_, "client_mount_timeout", "20");
  if (r == 0) r = rados_connect(cluster_);
  if (r == 0) r = rados_ioctx_create(cluster_, ceph_cluster::pool, &io_);
  if (r == 0) r = rbd_open(io_, image.c_str(), &image_, nullptr);
  if (r != 0) {
    release();
    throw std::runtime_error("another client cannot open " + image + ": error " + std::to_string(r));
  }
}

other_client::~other_client() { release(); }

void other_client::release() {
  if (image_) rbd_close(image_);
  if (io_) rados_ioctx_destroy(io_);
  if (cluster_) rados_shutdown(cluster_);
  image_ = nullptr;
  io_ = nullptr;
  cluster_ = nullptr;
}

int other_client::lock_exclusively() { return rbd_lock_acquire(image_, RBD_LOCK_MODE_EXCLUSIVE); }

int other_client::write(std::uint64_t off, std::span<const std::byte> from) {
  const auto n = rbd_write(image_, off, from.size(), reinterpret_cast<const char*>(from.data()));
  return n < 0 ? static_cast<int>(n) : 0;
}

int other_client::read(std::uint64_t off, std::span<std::byte> into) {
  const auto n = rbd_read(image_, off, into.size(), reinterpret_cast<char*>(into.data()));
  return n < 0 ? static_cast<int>(n) : 0;
}

bool other_client::owns_lock() {
  int owner = 0;
  return rbd_is_exclusive_lock_owner(image_, &owner) == 0 && owner == 1;
}

namespace {

std::size_t entries(const char* dir) {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir)) ++n;
  return n;
}

}  // namespace

std::size_t descriptors() { return entries("/proc/self/fd"); }
std::size_t threads() { return entries("/proc/self/task"); }

}  // namespace xbd::test::rbd
