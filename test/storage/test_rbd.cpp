// The RBD driver against the test suite's Ceph cluster (ctest's "ceph"
// fixture, XBD_CEPH_CONF): data, concurrency, read-only opens and
// snapshots, resizes, the shared cluster connection and what a store
// leaves behind. Faults and refusals: test_rbd_faults.cpp.
#include "test/storage/rbd_rig.hpp"

#include "test/integration/process.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <future>
#include <iterator>

namespace {

namespace asio = boost::asio;
using namespace xbd::test::rbd;
using xbd::test::ceph_cluster;
using namespace std::chrono_literals;
constexpr std::uint64_t mib = 1024 * 1024;

std::vector<std::byte> file_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<char> v{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  std::vector<std::byte> out(v.size());
  std::memcpy(out.data(), v.data(), v.size());
  return out;
}

// One ring: its own io_context, run by its own thread, and a channel opened there.
struct ring_thread {
  asio::io_context io;
  std::unique_ptr<channel> ch;
  std::thread::id id;
};

// `n` bytes from `base` written and then read back in 64 KiB operations,
// `depth` in flight at all times, on the calling thread (the ring's); true
// if every operation completed once, on that thread, never inline, without
// error, and the data matched.
bool churn(ring_thread& r, std::uint64_t base, std::size_t n, unsigned depth, std::uint64_t seed) {
  r.id = std::this_thread::get_id();
  auto data = pattern(n, seed);
  std::vector<std::byte> back(n);
  constexpr std::size_t chunk = 64 * 1024;
  const std::size_t ops = n / chunk;
  bool ok = true;
  for (bool writing : {true, false}) {
    std::size_t started = 0, completed = 0;
    std::vector<op_done> slots(depth);
    std::vector<bool> busy(depth, false);
    auto start = [&](std::size_t i) {
      slots[i] = op_done{};
      busy[i] = true;
      const std::size_t at = started++ * chunk;
      op_done::in_call = true;
      if (writing)
        r.ch->write(base + at, std::span(data).subspan(at, chunk), slots[i]);
      else
        r.ch->read(base + at, std::span(back).subspan(at, chunk), slots[i]);
      op_done::in_call = false;
    };
    for (std::size_t i = 0; i < depth && started < ops; ++i) start(i);
    const bool all = drive(
        r.io,
        [&] {
          for (std::size_t i = 0; i < depth; ++i) {
            if (!busy[i] || !slots[i].finished()) continue;
            const op_done& d = slots[i];
            ok = ok && d.calls == 1 && !d.ec && !d.inline_call && d.thread == r.id;
            busy[i] = false;
            ++completed;
            if (started < ops) start(i);
          }
          return completed == ops;
        },
        60s);
    ok = ok && all;
  }
  return ok && back == data;
}

}  // namespace

TEST_SUITE("rbd") {
  TEST_CASE("an RBD image reads back what was written with 32 operations in flight, and rbd export agrees") {
    const auto cluster = ceph_cluster::from_env();
    const auto name = cluster.create_image(64);
    rig r;
    REQUIRE_MESSAGE(!r.open(target(cluster, name), options()), r.detail);
    const auto& p = r.st->props();
    CHECK(p.size == 64 * mib);
    CHECK(p.writable);
    CHECK(p.flush);
    CHECK(p.discard);
    CHECK_FALSE(p.discard_secure);
    CHECK(p.discard_granularity == 4 * mib);  // the image's object size
    CHECK(p.logical_sector == 512);
    CHECK(p.max_queues == 0);
    CHECK(r.st->current_size().value() == 64 * mib);
    CHECK(r.st->name().find(name) != std::string::npos);
    r.open_channel();

    auto data = pattern(16 * mib, 1);
    CHECK(rig::all_ok(r.transfer(true, 3 * mib + 512, data, 64 * 1024, 32)));
    std::vector<op_done> f(1);
    r.flush(f[0]);
    REQUIRE(r.all_finished(f));
    CHECK_FALSE(f[0].ec);
    CHECK_FALSE(f[0].inline_call);
    std::vector<std::byte> back(data.size());
    CHECK(rig::all_ok(r.transfer(false, 3 * mib + 512, back, 128 * 1024, 32)));
    CHECK(back == data);

    // What the cluster holds, seen by another client, while the image is
    // still open here.
    cluster.export_image(name, cluster.scratch() / "export.raw");
    const auto exported = file_bytes(cluster.scratch() / "export.raw");
    REQUIRE(exported.size() == 64 * mib);
    CHECK(std::equal(data.begin(), data.end(), exported.begin() + 3 * mib + 512));
    CHECK(all_zero(std::span(exported).first(3 * mib + 512)));
    r.close();
    cluster.remove_image(name);
  }

  TEST_CASE("discarded whole objects read back as zeroes, the rest keeps its data, and a secure discard is refused") {
    const auto cluster = ceph_cluster::from_env();
    const auto name = cluster.create_image(32);
    rig r;
    REQUIRE_MESSAGE(!r.open(target(cluster, name), options()), r.detail);
    r.open_channel();
    auto data = pattern(16 * mib, 2);
    REQUIRE(rig::all_ok(r.transfer(true, 0, data, 1 * mib, 8)));
    std::vector<op_done> d(3);
    r.discard(4 * mib, 8 * mib, d[0]);
    r.discard(0, 4096, d[1], true);
    r.flush(d[2]);
    REQUIRE(r.all_finished(d));
    CHECK_FALSE(d[0].ec);
    CHECK(d[1].ec == boost::system::errc::operation_not_supported);
    CHECK_FALSE(d[2].ec);
    for (const auto& x : d) CHECK_FALSE(x.inline_call);
    std::vector<std::byte> back(16 * mib);
    REQUIRE(rig::all_ok(r.transfer(false, 0, back, 1 * mib, 8)));
    std::fill(data.begin() + 4 * mib, data.begin() + 12 * mib, std::byte{0});
    CHECK(back == data);
    cluster.export_image(name, cluster.scratch() / "discarded.raw");
    const auto exported = file_bytes(cluster.scratch() / "discarded.raw");
    REQUIRE(exported.size() == 32 * mib);
    CHECK(std::equal(data.begin(), data.end(), exported.begin()));
    r.close();
    cluster.remove_image(name);
  }

  TEST_CASE("two rings on two threads, 32 operations in flight each, get their own completions on their own thread") {
    const auto cluster = ceph_cluster::from_env();
    const auto name = cluster.create_image(64);
    rig r;
    REQUIRE_MESSAGE(!r.open(target(cluster, name), options()), r.detail);
    ring_thread rings[2];
    for (auto& ring : rings) {
      auto c = r.st->open_channel(xbd::blkback::worker{ring.io.get_executor(), nullptr}, 32);
      REQUIRE(c);
      ring.ch = std::move(*c);
    }
    std::future<bool> ok[2];
    for (int i = 0; i < 2; ++i)
      ok[i] = std::async(std::launch::async, [&ring = rings[i], i] {
        const bool good = churn(ring, static_cast<std::uint64_t>(i) * 32 * mib, 16 * mib, 32, 10 + i);
        ring.ch.reset();  // on its own thread, as a ring closes its channel
        ring.io.restart();
        ring.io.poll();
        return good;
      });
    CHECK(ok[0].get());
    CHECK(ok[1].get());
    CHECK(rings[0].id != rings[1].id);
    r.close();
    cluster.remove_image(name);
  }

  TEST_CASE("an image opened read-only, and a snapshot opened for writing, are offered read-only and refuse writes") {
    const auto cluster = ceph_cluster::from_env();
    const auto name = cluster.create_image(16);
    auto before = pattern(1 * mib, 3);
    {
      rig w;
      REQUIRE_MESSAGE(!w.open(target(cluster, name), options()), w.detail);
      w.open_channel();
      REQUIRE(rig::all_ok(w.transfer(true, 0, before, 256 * 1024, 4)));
      w.close();
    }
    cluster.snap_create(name, "s1");
    auto after = pattern(1 * mib, 4);
    {
      rig w;
      REQUIRE_MESSAGE(!w.open(target(cluster, name), options()), w.detail);
      w.open_channel();
      REQUIRE(rig::all_ok(w.transfer(true, 0, after, 256 * 1024, 4)));
      w.close();
    }
    struct {
      rbd_target t;
      bool writable;
      const std::vector<std::byte>* expect;
    } cases[] = {{target(cluster, name), false, &after}, {target(cluster, name, "s1"), true, &before}};
    for (const auto& c : cases) {
      CAPTURE(c.t.describe());
      rig r;
      REQUIRE_MESSAGE(!r.open(c.t, options(c.writable)), r.detail);
      CHECK_FALSE(r.st->props().writable);
      CHECK_FALSE(r.st->props().discard);
      CHECK(r.st->props().flush);
      r.open_channel();
      std::vector<std::byte> back(1 * mib);
      CHECK(rig::all_ok(r.transfer(false, 0, back, 256 * 1024, 4)));
      CHECK(back == *c.expect);
      std::vector<op_done> d(2);
      r.write(0, back, d[0]);
      r.discard(0, 4 * mib, d[1]);
      REQUIRE(r.all_finished(d));
      CHECK(d[0].ec == boost::system::errc::read_only_file_system);
      CHECK(d[1].ec == boost::system::errc::operation_not_supported);
      CHECK_FALSE(d[0].inline_call);
      r.close();
    }
    cluster.remove_image(name);
  }

  TEST_CASE("a resize by another client is reported through watch_size, and current_size follows it") {
    const auto cluster = ceph_cluster::from_env();
    const auto name = cluster.create_image(16);
    rig r;
    REQUIRE_MESSAGE(!r.open(target(cluster, name), options()), r.detail);
    std::atomic<int> calls{0};
    r.st->watch_size([&calls] { ++calls; });
    cluster.resize_image(name, 48);
    CHECK(xbd::test::eventually([&] { return calls > 0; }, 20s));
    CHECK(r.st->current_size().value() == 48 * mib);
    CHECK(r.st->props().size == 16 * mib);  // what was offered at open

    // Data beyond the old end reads and writes once the image has grown.
    r.open_channel();
    auto data = pattern(1 * mib, 5);
    CHECK(rig::all_ok(r.transfer(true, 40 * mib, data, 256 * 1024, 4)));
    std::vector<std::byte> back(1 * mib);
    CHECK(rig::all_ok(r.transfer(false, 40 * mib, back, 256 * 1024, 4)));
    CHECK(back == data);

    const int seen = calls;
    cluster.rbd({"resize", "--allow-shrink", "--size", "24M", std::string(ceph_cluster::pool) + "/" + name});
    CHECK(xbd::test::eventually([&] { return r.st->current_size().value() == 24 * mib; }, 20s));
    CHECK(calls > seen);
    r.close();
    // After close() nothing is called any more.
    const int at_close = calls;
    cluster.resize_image(name, 32);
    std::this_thread::sleep_for(1s);
    CHECK(calls == at_close);
    cluster.remove_image(name);
  }

  TEST_CASE("closing leaves no watcher on the image") {
    const auto cluster = ceph_cluster::from_env();
    const auto name = cluster.create_image(16);
    rig r;
    REQUIRE_MESSAGE(!r.open(target(cluster, name), options()), r.detail);
    r.open_channel();
    auto data = pattern(1 * mib, 6);
    REQUIRE(rig::all_ok(r.transfer(true, 0, data, 256 * 1024, 4)));
    CHECK(cluster.watchers(name).size() == 1);
    r.close();
    CHECK(cluster.watchers(name).empty());
    cluster.remove_image(name);
  }

  TEST_CASE("two stores on one cluster share one connection, which is shut down after the last close") {
    const auto cluster = ceph_cluster::from_env();
    REQUIRE(xbd::blkback::storage::rbd_quiesce(30s));
    REQUIRE(xbd::test::eventually([] { return xbd::blkback::storage::rbd_connections() == 0; }, 20s));
    const auto a = cluster.create_image(16), b = cluster.create_image(16);
    rig ra, rb;
    REQUIRE_MESSAGE(!ra.open(target(cluster, a), options()), ra.detail);
    CHECK(xbd::blkback::storage::rbd_connections() == 1);
    REQUIRE_MESSAGE(!rb.open(target(cluster, b), options()), rb.detail);
    CHECK(xbd::blkback::storage::rbd_connections() == 1);
    // Anything that shapes the connection differently makes another one.
    rbd_options other = options(false);
    other.op_timeout = 30s;
    rig rc;
    REQUIRE_MESSAGE(!rc.open(target(cluster, a), other), rc.detail);
    CHECK(xbd::blkback::storage::rbd_connections() == 2);
    rc.close();
    CHECK(xbd::test::eventually([] { return xbd::blkback::storage::rbd_connections() == 1; }, 20s));
    ra.close();
    CHECK(xbd::blkback::storage::rbd_connections() == 1);
    rb.close();
    // Gone when the last close() returns: a daemon that exits then leaves
    // no thread inside librados.
    CHECK(xbd::blkback::storage::rbd_connections() == 0);
    CHECK(xbd::blkback::storage::rbd_quiesce(2s));
    cluster.remove_image(a);
    cluster.remove_image(b);
  }

  TEST_CASE("many open, write, read and close cycles leave no descriptor and no thread behind") {
    const auto cluster = ceph_cluster::from_env();
    const auto name = cluster.create_image(16);
    auto cycle = [&](std::uint64_t seed) {
      rig r;
      REQUIRE_MESSAGE(!r.open(target(cluster, name), options()), r.detail);
      r.open_channel(32);
      auto data = pattern(1 * mib, seed);
      REQUIRE(rig::all_ok(r.transfer(true, 0, data, 128 * 1024, 8)));
      std::vector<std::byte> back(1 * mib);
      REQUIRE(rig::all_ok(r.transfer(false, 0, back, 128 * 1024, 8)));
      CHECK(back == data);
      r.close();
    };
    auto settled = [] {
      return xbd::blkback::storage::rbd_quiesce(30s) &&
             xbd::test::eventually([] { return xbd::blkback::storage::rbd_connections() == 0; }, 20s);
    };
    cycle(100);  // librados's process-wide state, made once
    REQUIRE(settled());
    const std::size_t fds = descriptors();
    std::size_t tasks = 0;
    xbd::test::eventually([&] { return (tasks = threads()) == 1; }, 5s);
    for (int i = 0; i < 12; ++i) cycle(101 + i);
    REQUIRE(settled());
    CHECK(xbd::test::eventually([&] { return descriptors() <= fds; }, 10s));
    CHECK(descriptors() == fds);
    CHECK(xbd::test::eventually([&] { return threads() <= tasks; }, 10s));
    CHECK(threads() == tasks);
    cluster.remove_image(name);
  }
}
