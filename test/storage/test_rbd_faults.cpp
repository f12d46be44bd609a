// The RBD driver when things go wrong (ctest's "ceph" fixture): an OSD that
// stops, a cluster that does not answer, what an open refuses and why, and
// images another client holds.
#include "test/storage/rbd_rig.hpp"

#include "test/integration/process.hpp"
#include "test/storage/nbd_server.hpp"

#include <doctest/doctest.h>

#include <fstream>

namespace {

using namespace xbd::test::rbd;
using xbd::test::ceph_cluster;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;
constexpr std::uint64_t mib = 1024 * 1024;

double seconds_since(clock_type::time_point t) { return std::chrono::duration<double>(clock_type::now() - t).count(); }

// The OSD stopped for the scope: started again on the way out, whatever
// the test did.
struct osd_outage {
  const ceph_cluster& c;
  bool down = false;
  explicit osd_outage(const ceph_cluster& cl) : c(cl) {
    c.osd_stop();
    down = true;
  }
  void end() {
    if (down) c.osd_start();
    down = false;
  }
  ~osd_outage() {
    try {
      end();
    } catch (...) {  // the next test finds the cluster down and says so
    }
  }
};

}  // namespace

TEST_SUITE("rbd") {
  TEST_CASE("requests sent while the OSD is stopped wait, and complete once it is back") {
    const auto cluster = ceph_cluster::from_env();
    const auto name = cluster.create_image(16);
    // Declared before the rig: should a check fail with operations in
    // flight, what they point at outlives the channel.
    auto second = pattern(4 * mib, 21);
    std::vector<op_done> w(16);
    std::vector<op_done> f(1);
    rig r;
    REQUIRE_MESSAGE(!r.open(target(cluster, name), options()), r.detail);
    r.open_channel();
    auto first = pattern(4 * mib, 20);
    REQUIRE(rig::all_ok(r.transfer(true, 0, first, 256 * 1024, 16)));

    osd_outage outage(cluster);
    for (std::size_t i = 0; i < w.size(); ++i)
      r.write(i * 256 * 1024, std::span(second).subspan(i * 256 * 1024, 256 * 1024), w[i]);
    r.flush(f[0]);
    idle(r.io, 3s);
    for (const auto& d : w) CHECK_FALSE(d.finished());  // waiting, not failed
    outage.end();
    const auto back_at = clock_type::now();
    CHECK(r.all_finished(w, 90s));
    CHECK(r.all_finished(f, 30s));
    MESSAGE("the writes completed " << seconds_since(back_at) << " s after the OSD was back");
    for (const auto& d : w) {
      CHECK(d.calls == 1);
      CHECK_FALSE(d.ec);
    }
    CHECK_FALSE(f[0].ec);
    std::vector<std::byte> back(4 * mib);
    CHECK(rig::all_ok(r.transfer(false, 0, back, 256 * 1024, 16)));
    CHECK(back == second);
    r.close();
    cluster.remove_image(name);
  }

  TEST_CASE("with a short op_timeout and the OSD stopped, requests fail with an error and close is bounded") {
    const auto cluster = ceph_cluster::from_env();
    const auto name = cluster.create_image(16);
    auto data = pattern(1 * mib, 22);
    {
      // Data that only the OSD has (not our cache), for the read to need it.
      other_client w(cluster, name);
      REQUIRE(w.write(8 * mib, data) == 0);
    }
    std::vector<op_done> d(2);  // before the rig: see above
    std::vector<std::byte> back(64 * 1024);
    rig r;
    auto o = options();
    o.op_timeout = 3s;
    REQUIRE_MESSAGE(!r.open(target(cluster, name), o), r.detail);
    r.open_channel();
    REQUIRE(rig::all_ok(r.transfer(true, 0, data, 256 * 1024, 4)));

    osd_outage outage(cluster);
    // The size comes from what the driver keeps, never from the cluster.
    auto asked = clock_type::now();
    CHECK(r.st->current_size().value() == 16 * mib);
    CHECK(seconds_since(asked) < 0.1);
    const auto start = clock_type::now();
    r.write(2 * mib, std::span(data).first(64 * 1024), d[0]);
    r.read(8 * mib, back, d[1]);
    REQUIRE(r.all_finished(d, 60s));
    MESSAGE("failed after " << seconds_since(start) << " s");
    CHECK(seconds_since(start) >= 2.5);
    for (const auto& x : d) {
      CHECK(x.calls == 1);
      CHECK(x.ec == boost::system::errc::timed_out);
      CHECK_FALSE(x.inline_call);
    }
    // Closing needs the OSD too (the header's watch, the lock): bounded.
    const auto closing = clock_type::now();
    r.close(60s);
    MESSAGE("closed after " << seconds_since(closing) << " s");
    CHECK(seconds_since(closing) < o.connect_timeout.count() / 1000.0 + 2);
    outage.end();
    cluster.remove_image(name);
  }

  TEST_CASE("closing while the cluster cannot answer returns in time, and the close finishes once the OSD is back") {
    const auto cluster = ceph_cluster::from_env();
    const auto name = cluster.create_image(16);
    REQUIRE(xbd::blkback::storage::rbd_quiesce(30s));
    rig r;
    auto o = options();
    o.op_timeout = 0s;  // librados waits for ever: only our bound ends the wait
    o.connect_timeout = 3s;
    REQUIRE_MESSAGE(!r.open(target(cluster, name), o), r.detail);
    r.open_channel();
    auto data = pattern(1 * mib, 23);
    REQUIRE(rig::all_ok(r.transfer(true, 0, data, 256 * 1024, 4)));  // the lock is ours now
    {
      osd_outage outage(cluster);
      const auto start = clock_type::now();
      r.close(20s);
      MESSAGE("close returned after " << seconds_since(start) << " s");
      CHECK(seconds_since(start) < 5);
      CHECK(xbd::blkback::storage::rbd_connections() >= 1);  // still closing, in the background
      CHECK_FALSE(xbd::blkback::storage::rbd_quiesce(0s));
    }
    CHECK(xbd::blkback::storage::rbd_quiesce(90s));
    CHECK(xbd::test::eventually([] { return xbd::blkback::storage::rbd_connections() == 0; }, 20s));
    CHECK(cluster.watchers(name).empty());
    cluster.remove_image(name);
  }

  TEST_CASE("a connection the cluster has blocklisted fails its I/O, and the next open connects again") {
    const auto cluster = ceph_cluster::from_env();
    const auto a = cluster.create_image(16), b = cluster.create_image(16);
    REQUIRE(xbd::blkback::storage::rbd_quiesce(30s));
    rig ra, rb;
    REQUIRE_MESSAGE(!ra.open(target(cluster, a), options()), ra.detail);
    ra.open_channel();
    auto data = pattern(64 * 1024, 24);
    REQUIRE(rig::all_ok(ra.transfer(true, 0, data, 64 * 1024, 1)));
    // Our connection's address, as the image's watcher shows it.
    const auto w = cluster.watchers(a);
    REQUIRE(w.size() == 1);
    const auto at = w[0].find("watcher=");
    REQUIRE(at != std::string::npos);
    const std::string addr = w[0].substr(at + 8, w[0].find(' ', at) - at - 8);
    cluster.ceph({"osd", "blocklist", "add", addr});
    struct unblock {
      const ceph_cluster& c;
      std::string addr;
      ~unblock() {
        try {
          c.ceph({"osd", "blocklist", "rm", addr});
        } catch (...) {
        }
      }
    } later{cluster, addr};
    CHECK(xbd::test::eventually(
        [&] {
          auto r = ra.transfer(true, 0, data, 64 * 1024, 1);
          return r.size() == 1 && r[0];
        },
        20s));
    const auto before = xbd::blkback::storage::rbd_connections();
    CHECK(before == 1);
    REQUIRE_MESSAGE(!rb.open(target(cluster, b), options()), rb.detail);
    CHECK(xbd::blkback::storage::rbd_connections() == 2);  // a new one beside the fenced one, still held by ra
    rb.open_channel();
    CHECK(rig::all_ok(rb.transfer(true, 0, data, 64 * 1024, 1)));
    ra.close();
    rb.close();
    CHECK(xbd::blkback::storage::rbd_connections() == 0);
    cluster.remove_image(a);
    cluster.remove_image(b);
  }

  TEST_CASE("a missing pool, image or snapshot fails the open, each with its own reason") {
    const auto cluster = ceph_cluster::from_env();
    const auto name = cluster.create_image(16);
    rig r;
    auto t = target(cluster, name);
    t.pool = "no-such-pool";
    CHECK(r.open(t, options()) == boost::system::errc::no_such_file_or_directory);
    CHECK(r.detail.find("pool 'no-such-pool' does not exist") != std::string::npos);
    MESSAGE(r.detail);

    t = target(cluster, name + "-missing");
    CHECK(r.open(t, options()) == boost::system::errc::no_such_file_or_directory);
    CHECK(r.detail.find("image '" + name + "-missing' does not exist in pool 'rbd'") != std::string::npos);
    MESSAGE(r.detail);

    t = target(cluster, name, "no-such-snap");
    CHECK(r.open(t, options()) == boost::system::errc::no_such_file_or_directory);
    CHECK(r.detail.find("has no snapshot 'no-such-snap'") != std::string::npos);
    MESSAGE(r.detail);

    t = target(cluster, name);
    t.ns = "no-such-namespace";
    CHECK(r.open(t, options()));
    MESSAGE(r.detail);
    CHECK_FALSE(r.st);
    cluster.remove_image(name);
  }

  TEST_CASE("bad credentials fail the open: a key the cluster does not know, and a client without caps on the pool") {
    const auto cluster = ceph_cluster::from_env();
    const auto name = cluster.create_image(16);
    rig r;
    const auto unknown = cluster.unknown_key_client();
    auto t = target(cluster, name);
    t.conf = unknown.conf.string();
    t.user = unknown.id;
    CHECK(r.open(t, options()) == boost::system::errc::permission_denied);
    MESSAGE(r.detail);
    CHECK(r.detail.find("refused client." + unknown.id + "'s key") != std::string::npos);

    const auto nobody = cluster.restricted_client();
    t = target(cluster, name);
    t.conf = nobody.conf.string();
    t.user = nobody.id;
    CHECK(r.open(t, options()) == boost::system::errc::operation_not_permitted);
    MESSAGE(r.detail);
    CHECK(r.detail.find("permission denied: client." + nobody.id + " may not open image") != std::string::npos);
    CHECK_FALSE(r.st);

    // A key given in the spec is used and never shown.
    t = target(cluster, name);
    t.options = {{"key", "AQBogusSecretKeyThatMustNotBeShownAnywhere00=="}};
    CHECK(r.open(t, options()));
    MESSAGE(r.detail);
    CHECK(r.detail.find("AQBogus") == std::string::npos);
    cluster.remove_image(name);
  }

  TEST_CASE("a cluster whose monitor does not answer fails the open within the connect timeout") {
    const auto cluster = ceph_cluster::from_env();
    const auto conf = cluster.scratch() / "silent.conf";
    std::ofstream(conf) << "[global]\nmon_host = 127.0.0.1:" << xbd::test::free_tcp_port()
                        << "\nauth_client_required = none\n";
    rig r;
    auto t = target(cluster, "any");
    t.conf = conf.string();
    auto o = options();
    o.connect_timeout = 3s;
    const auto start = clock_type::now();
    CHECK(r.open(t, o, 20s) == boost::system::errc::timed_out);
    const double took = seconds_since(start);
    MESSAGE(r.detail << " (after " << took << " s)");
    CHECK(took >= 2.5);
    CHECK(took < 8);
    CHECK(r.detail.find("no answer") != std::string::npos);
  }

  TEST_CASE(
      "an image another client holds exclusively is refused at open, naming the owner, and read-only still opens") {
    const auto cluster = ceph_cluster::from_env();
    const auto name = cluster.create_image(16);
    {
      other_client holder(cluster, name);
      REQUIRE(holder.lock_exclusively() == 0);
      rig r;
      const auto start = clock_type::now();
      CHECK(r.open(target(cluster, name), options()) == boost::system::errc::device_or_resource_busy);
      MESSAGE(r.detail << " (after " << seconds_since(start) << " s)");
      CHECK(r.detail.find("locked by 127.0.0.1:") != std::string::npos);
      CHECK(r.detail.find("will not give it up") != std::string::npos);
      CHECK(holder.owns_lock());
      CHECK(cluster.watchers(name).size() == 1);  // the holder's only: ours are closed

      REQUIRE_MESSAGE(!r.open(target(cluster, name), options(false)), r.detail);
      r.open_channel();
      std::vector<std::byte> back(64 * 1024);
      CHECK(rig::all_ok(r.transfer(false, 0, back, 64 * 1024, 1)));
      r.close();
    }
    cluster.remove_image(name);
  }

  TEST_CASE("an image with an advisory lock (rbd lock add) is refused for writing, naming the locker") {
    const auto cluster = ceph_cluster::from_env();
    const auto name = cluster.create_image(16);
    cluster.lock_add(name, "operator-lock");
    rig r;
    CHECK(r.open(target(cluster, name), options()) == boost::system::errc::device_or_resource_busy);
    MESSAGE(r.detail);
    CHECK(r.detail.find("lock id 'operator-lock'") != std::string::npos);
    REQUIRE_MESSAGE(!r.open(target(cluster, name), options(false)), r.detail);
    r.close();
    for (const auto& l : cluster.locks(name)) cluster.lock_remove(name, l);
    REQUIRE_MESSAGE(!r.open(target(cluster, name), options()), r.detail);
    r.close();
    cluster.remove_image(name);
  }

  TEST_CASE("an image a migration source still holds opens, and its lock moves over on the first write") {
    const auto cluster = ceph_cluster::from_env();
    const auto name = cluster.create_image(16);
    auto source_ptr = std::make_unique<other_client>(cluster, name);
    other_client& source = *source_ptr;
    auto theirs = pattern(64 * 1024, 30);
    REQUIRE(source.write(0, theirs) == 0);
    REQUIRE(source.owns_lock());  // librbd's automatic lock, taken by the write

    rig r;
    REQUIRE_MESSAGE(!r.open(target(cluster, name), options()), r.detail);
    r.open_channel();
    std::vector<std::byte> back(64 * 1024);
    CHECK(rig::all_ok(r.transfer(false, 0, back, 64 * 1024, 1)));
    CHECK(back == theirs);
    auto ours = pattern(64 * 1024, 31);
    CHECK(rig::all_ok(r.transfer(true, 64 * 1024, ours, 64 * 1024, 1)));
    CHECK_FALSE(source.owns_lock());
    // And back again, as a failed migration's source resumes.
    CHECK(source.write(128 * 1024, theirs) == 0);
    CHECK(source.owns_lock());
    CHECK(rig::all_ok(r.transfer(true, 192 * 1024, ours, 64 * 1024, 1)));
    std::vector<std::byte> check(64 * 1024);
    CHECK(source.read(192 * 1024, check) == 0);
    CHECK(check == ours);
    r.close();
    source_ptr.reset();
    cluster.remove_image(name);
  }
}
