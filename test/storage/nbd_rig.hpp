// What the NBD driver's tests share: a store and a channel on an
// io_context of their own, operations that note how they ended, and data
// written and read back.
#pragma once

#include "blkback/storage/nbd.hpp"
#include "test/storage/drive.hpp"
#include "test/storage/nbd_server.hpp"
#include "test/unit/run.hpp"

#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>

#include <algorithm>
#include <chrono>
#include <span>
#include <string>
#include <vector>

namespace xbd::test::nbd_rig {

namespace asio = boost::asio;
using namespace xbd::blkback::storage;
using xbd::asio_xen::error_code;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

// One operation's end; notes a completion from inside the call that started
// the operation (which the storage contract forbids).
struct op_done final : completion {
  static inline bool in_call = false;
  int calls = 0;
  bool inline_call = false;
  error_code ec;
  void complete(error_code e) override {
    ++calls;
    ec = e;
    inline_call = inline_call || in_call;
  }
  bool finished() const { return calls > 0; }
};

using xbd::test::drive;
using xbd::test::idle;
using xbd::test::pattern;

struct rig {
  asio::io_context io;
  std::unique_ptr<store> st;
  std::unique_ptr<channel> ch;
  std::string detail;

  // open_nbd on this context; the error, or empty with `st` set.
  error_code open(const nbd_target& t, nbd_options o, std::chrono::milliseconds limit = 15s) {
    auto r = xbd::test::run(io, open_nbd(t, o, detail), limit);
    if (!r) return r.error();
    st = std::move(*r);
    return {};
  }
  void open_channel(unsigned depth = 64) {
    auto c = st->open_channel(xbd::blkback::worker{io.get_executor(), nullptr}, depth);
    REQUIRE(c);
    ch = std::move(*c);
  }

  void read(std::uint64_t off, std::span<std::byte> into, op_done& d) {
    op_done::in_call = true;
    ch->read(off, into, d);
    op_done::in_call = false;
  }
  void write(std::uint64_t off, std::span<const std::byte> from, op_done& d) {
    op_done::in_call = true;
    ch->write(off, from, d);
    op_done::in_call = false;
  }
  void flush(op_done& d) {
    op_done::in_call = true;
    ch->flush(d);
    op_done::in_call = false;
  }
  void discard(std::uint64_t off, std::uint64_t len, op_done& d) {
    op_done::in_call = true;
    ch->discard(off, len, false, d);
    op_done::in_call = false;
  }

  bool all_finished(const std::vector<op_done>& v, std::chrono::milliseconds limit = 10s) {
    return drive(
        io, [&] { return std::all_of(v.begin(), v.end(), [](const op_done& d) { return d.finished(); }); }, limit);
  }

  // `data` to `base` (or from it, if !write) in `chunk`-byte operations,
  // `depth` in flight at a time; every operation's error, in order.
  std::vector<error_code> transfer(bool write, std::uint64_t base, std::span<std::byte> data, std::size_t chunk,
                                   unsigned depth) {
    return xbd::test::transfer_in_batches<op_done>(*this, write, base, data, chunk, depth);
  }
  bool all_ok(const std::vector<error_code>& v) {
    return std::all_of(v.begin(), v.end(), [](const error_code& e) { return !e; });
  }
};

using server_options = xbd::test::nbd_server::options;

inline server_options filtered(std::string filter, std::vector<std::string> params) {
  server_options o;
  o.filters = {std::move(filter)};
  o.params = std::move(params);
  return o;
}

inline nbd_options quick(bool writable = true) {
  nbd_options o;
  o.writable = writable;
  o.connect_timeout = 2s;
  o.reconnect = 10s;
  return o;
}

inline double ms_since(clock_type::time_point t) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t).count();
}

// Writes `n` bytes in 64 KiB operations, 32 at a time, reads them back the
// same way, and checks they match.
inline void write_and_verify(rig& r, std::uint64_t base, std::size_t n, std::uint64_t seed) {
  auto data = pattern(n, seed);
  CHECK(r.all_ok(r.transfer(true, base, data, 64 * 1024, 32)));
  std::vector<std::byte> back(n);
  CHECK(r.all_ok(r.transfer(false, base, back, 64 * 1024, 32)));
  CHECK(back == data);
}

// 1 MiB written, a flush and a discard of its second quarter, then read
// back: zeroes where discarded, the data elsewhere.
inline void flush_and_discard_verified(rig& r) {
  auto data = pattern(1 << 20, 3);
  REQUIRE(r.all_ok(r.transfer(true, 0, data, 128 * 1024, 8)));
  std::vector<op_done> done(2);
  r.flush(done[0]);
  r.discard(256 * 1024, 256 * 1024, done[1]);
  REQUIRE(r.all_finished(done));
  CHECK_FALSE(done[0].ec);
  CHECK_FALSE(done[1].ec);
  CHECK_FALSE(done[0].inline_call);
  std::vector<std::byte> back(1 << 20);
  REQUIRE(r.all_ok(r.transfer(false, 0, back, 128 * 1024, 8)));
  std::fill(data.begin() + 256 * 1024, data.begin() + 512 * 1024, std::byte{0});
  CHECK(back == data);
}

}  // namespace xbd::test::nbd_rig
