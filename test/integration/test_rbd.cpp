// Disks on Ceph RBD images, through the real daemon on simulated Xen, against
// the suite's real single-node cluster (the ctest fixture "ceph: start",
// scripts/ceph-cluster; test/storage/ceph_cluster.hpp).
#include "test/integration/sim_env.hpp"
#include "test/storage/ceph_cluster.hpp"

#include <doctest/doctest.h>

#include <csignal>
#include <fstream>
#include <iterator>
#include <thread>

using namespace xbd::test;
using namespace std::chrono_literals;

namespace {

constexpr unsigned xvda = 51712;
constexpr unsigned xvdb = 51728;

std::string backend(unsigned domid, unsigned devid = xvda) {
  return "/local/domain/0/backend/qdisk/" + std::to_string(domid) + "/" + std::to_string(devid);
}

void check_clean(const frontend_result& r) {
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(json_field(r.json, "ok") == "true");
  CHECK(json_field(r.json, "mismatches") == "0");
}

// The daemon's configuration for the test cluster, plus `extra`.
std::string rbd_config(const ceph_cluster& c, const std::string& extra = {}) {
  return "[rbd]\nconf = \"" + c.conf().string() + "\"\n" + extra;
}

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The vbd's error node, once it is written (or "" after `limit`).
std::string error_of(sim_env& env, unsigned devid, std::chrono::milliseconds limit = 30s) {
  std::optional<std::string> e;
  eventually([&] { return (e = env.read(backend(5, devid) + "/error")).has_value(); }, limit);
  return e.value_or("");
}

// An image of the cluster for the life of a test.
struct image {
  const ceph_cluster& c;
  std::string name;
  // Left for the cluster's end (ctest's "ceph: stop"): an image whose
  // client went away without closing keeps its watcher, and so cannot be
  // removed, for osd_client_watch_timeout (30 s).
  bool leave = false;
  image(const ceph_cluster& cluster, std::uint64_t mib) : c(cluster), name(cluster.create_image(mib)) {}
  ~image() {
    if (leave) return;
    try {
      c.remove_image(name);
    } catch (...) {  // a test's failure message matters more than the clean-up's
    }
  }
  std::string spec() const { return "rbd:rbd/" + name; }
};

}  // namespace

TEST_SUITE("rbd") {
  TEST_CASE(
      "rbd: verified I/O on two queues at QD32 with flushes and discards, then rbd export equals the guest's "
      "writes") {
    const auto cluster = ceph_cluster::from_env();
    image img(cluster, 64);
    sim_env env(rbd_config(cluster));
    env.create_guest(5);
    env.add_disk(5, img.spec(), "xvda");
    const auto raw = env.make_image("same-writes.raw", 64 << 20);
    env.add_disk(5, raw.string(), "xvdb");
    env.start_daemon();
    auto r = env.run_frontend(5,
                              {"--devid", std::to_string(xvda), "--queues", "2", "--rw", "randrw", "--bs", "4096",
                               "--qd", "32", "--ios", "4000", "--flush-every", "16", "--verify", "--persistent"},
                              120s);
    check_clean(r);
    CHECK(json_field(r.json, "queues") == "2");
    // The first run had persistent grants: librbd read into and wrote from
    // the guest's kept pages.
    CHECK(json_field(r.json, "persistent") == "true");
    // Discards come in whole objects (the discard granularity is the
    // image's object size, 4 MiB), mixed with reads and writes.
    auto d = env.run_frontend(5,
                              {"--devid", std::to_string(xvda), "--queues", "2", "--rw", "randrw", "--bs", "4194304",
                               "--qd", "4", "--ios", "120", "--discard-pct", "30", "--flush-every", "8", "--verify"},
                              120s);
    check_clean(d);
    CHECK(d.json.find("\"discarded\":0}") == std::string::npos);
    // Then the same stream of writes over the whole disk to the image and
    // to a raw file: the exported image must equal the file.
    for (unsigned dev : {xvda, xvdb}) {
      auto w = env.run_frontend(5,
                                {"--devid", std::to_string(dev), "--rw", "write", "--bs", "65536", "--qd", "16",
                                 "--size", "64M", "--bytes", "64M", "--run-id", "11", "--verify", "--persistent"},
                                120s);
      check_clean(w);
    }
    CHECK(env.log_shows("RBD image"));
    REQUIRE(env.stop_daemon() == 0);
    const auto exported = env.dir() / "exported.raw";
    cluster.export_image(img.name, exported);
    CHECK(read_file(exported) == read_file(raw));
  }

  TEST_CASE("rbd: the image named in the spec with conf= and id=, and a snapshot served read-only") {
    const auto cluster = ceph_cluster::from_env();
    image img(cluster, 16);
    sim_env env;  // no [rbd]: everything from the spec
    env.create_guest(5);
    const auto spec = img.spec() + ":id=admin:conf=" + cluster.conf().string();
    env.add_disk(5, spec, "xvda");
    env.start_daemon();
    check_clean(env.run_frontend(5, {"--devid", std::to_string(xvda), "--rw", "write", "--bs", "65536", "--qd", "8",
                                     "--size", "16M", "--bytes", "16M", "--run-id", "3", "--verify"}));
    cluster.snap_create(img.name, "s1");
    xbd::sim::disk_spec d;
    d.domid = 5;
    d.vdev = "xvdb";
    d.target = img.spec() + "@s1:conf=" + cluster.conf().string();
    d.writable = false;
    const auto devid = env.toolstack().add_disk(d);
    // Then the image itself is overwritten by another run. The snapshot
    // still holds the first run's stamps, everywhere, and is read-only.
    check_clean(env.run_frontend(5, {"--devid", std::to_string(xvda), "--rw", "write", "--bs", "65536", "--qd", "8",
                                     "--size", "16M", "--bytes", "16M", "--run-id", "4", "--verify"}));
    auto r = env.run_frontend(5, {"--devid", std::to_string(devid), "--rw", "read", "--bs", "65536", "--qd", "8",
                                  "--size", "16M", "--bytes", "16M", "--verify"});
    check_clean(r);
    CHECK(json_field(r.json, "untouched") == "0");  // every block holds a stamp
    CHECK(json_field(r.json, "readonly") == "true");
    auto w = env.run_frontend(
        5, {"--devid", std::to_string(devid), "--rw", "write", "--bs", "4096", "--ios", "4", "--allow-io-errors"});
    CHECK(w.json.find("\"errors\":{\"io\":0,") == std::string::npos);  // the writes failed
    CHECK(env.log_shows("at snapshot \"s1\""));
  }

  TEST_CASE("rbd: a resize with the rbd tool reaches the guest through the update watch, without polling") {
    const auto cluster = ceph_cluster::from_env();
    image img(cluster, 16);
    sim_env env(rbd_config(cluster, "[io]\nresize-poll-seconds = 0\n"));
    env.create_guest(5);
    env.add_disk(5, img.spec());
    env.start_daemon();
    auto fe = env.start_frontend(5, {"--devid", std::to_string(xvda), "--rw", "none", "--hold", "0"}, "hold");
    REQUIRE(eventually([&] { return env.read(backend(5) + "/state") == xenbus::connected; }, 20s));
    CHECK(env.read(backend(5) + "/sectors") == std::to_string((16 << 20) / 512));
    cluster.resize_image(img.name, 24);
    CHECK(eventually([&] { return env.read(backend(5) + "/sectors") == std::to_string((24 << 20) / 512); }, 10s));
    CHECK(env.log_shows("resized: 32768 -> 49152 sectors"));
    fe->signal(SIGTERM);
    (void)fe->wait(10s);
    // The new sectors are served.
    check_clean(env.run_frontend(5, {"--devid", std::to_string(xvda), "--rw", "randrw", "--offset", "16M", "--size",
                                     "8M", "--ios", "200", "--verify"}));
  }

  TEST_CASE(
      "rbd: the OSD stopped and restarted mid-workload: requests wait and complete, a file disk is "
      "unaffected") {
    const auto cluster = ceph_cluster::from_env();
    image img(cluster, 32);
    sim_env env(rbd_config(cluster, "op-timeout-seconds = 120\n"));
    env.create_guest(5);
    env.create_guest(6);
    env.add_disk(5, img.spec());
    env.add_disk(6, env.make_image("file.img", 32 << 20).string());
    env.start_daemon();
    auto guest = env.start_frontend(5,
                                    {"--devid", std::to_string(xvda), "--rw", "randrw", "--bs", "4096", "--qd", "16",
                                     "--runtime", "6", "--flush-every", "8", "--verify", "--timeout", "150"},
                                    "rbd-guest");
    REQUIRE(env.log_shows("connected: "));
    std::this_thread::sleep_for(1s);
    cluster.osd_stop();
    // With the OSD gone, the other guest's file disk serves as ever.
    check_clean(env.run_frontend(6, {"--devid", std::to_string(xvda), "--rw", "randrw", "--bs", "4096", "--qd", "16",
                                     "--ios", "2000", "--verify"}));
    std::this_thread::sleep_for(2s);
    cluster.osd_start();
    auto status = guest->wait(170s);
    INFO(guest->output());
    REQUIRE(status.has_value());
    CHECK(*status == 0);
    CHECK(guest->output().find("\"mismatches\":0") != std::string::npos);
    CHECK(guest->output().find("\"errors\":{\"io\":0,") != std::string::npos);
  }

  TEST_CASE("rbd: with the OSD gone past op-timeout-seconds requests fail, and the daemon stops promptly") {
    const auto cluster = ceph_cluster::from_env();
    image img(cluster, 16);
    sim_env env(rbd_config(cluster, "op-timeout-seconds = 3\nconnect-timeout-seconds = 3\n"));
    env.create_guest(5);
    env.add_disk(5, img.spec());
    env.start_daemon();
    // Every object written: reads of objects that do not exist are answered
    // from librbd's object map, without the OSD.
    REQUIRE(env.run_frontend(5, {"--devid", std::to_string(xvda), "--rw", "write", "--bs", "1048576", "--size", "16M",
                                 "--bytes", "16M"})
                .status == 0);
    cluster.osd_stop();
    struct restart {
      const ceph_cluster& c;
      ~restart() {
        try {
          c.osd_start();
        } catch (...) {
        }
      }
    } later{cluster};
    auto r = env.run_frontend(5,
                              {"--devid", std::to_string(xvda), "--rw", "randread", "--bs", "4096", "--qd", "4",
                               "--ios", "8", "--allow-io-errors", "--timeout", "60"},
                              90s);
    INFO(r.output);
    CHECK(r.status == 0);
    CHECK(r.json.find("\"errors\":{\"io\":8,") != std::string::npos);
    CHECK(env.read(backend(5) + "/state") != std::nullopt);  // the vbd stays
    // The close cannot reach the cluster: it is given up after
    // connect-timeout-seconds, and the daemon exits.
    img.leave = true;
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(env.stop_daemon() == 0);
    CHECK(std::chrono::steady_clock::now() - t0 < 20s);
  }

  TEST_CASE(
      "rbd: a missing pool, image or snapshot, refused credentials and a locked image each get their own "
      "error, and a file disk serves") {
    const auto cluster = ceph_cluster::from_env();
    image img(cluster, 16);
    image locked(cluster, 16);
    cluster.lock_add(locked.name, "another-host");
    const auto nobody = cluster.restricted_client("nobody");
    const auto stranger = cluster.unknown_key_client("stranger");
    sim_env env(rbd_config(cluster, "connect-timeout-seconds = 10\n"));
    env.create_guest(5);
    env.add_disk(5, env.make_image("good.img", 16 << 20).string(), "xvda");
    env.add_disk(5, "rbd:no-such-pool/" + img.name, "xvdb");
    env.add_disk(5, "rbd:rbd/no-such-image", "xvdc");
    env.add_disk(5, img.spec() + "@no-such-snap", "xvdd");
    env.add_disk(5, img.spec() + ":id=nobody:conf=" + nobody.conf.string(), "xvde");
    env.add_disk(5, img.spec() + ":id=stranger:conf=" + stranger.conf.string(), "xvdf");
    env.add_disk(5, locked.spec(), "xvdg");
    env.start_daemon();
    struct expectation {
      unsigned devid;
      std::vector<std::string> words;
    };
    const std::vector<expectation> cases = {
        {xvdb, {"no-such-pool", "pool"}},      {51744, {"no-such-image", "No such file"}},
        {51760, {"no-such-snap", "snapshot"}}, {51776, {"client.nobody", "ermission"}},
        {51792, {"client.stranger"}},          {51808, {locked.name, "lock"}},
    };
    for (const auto& c : cases) {
      const auto e = error_of(env, c.devid);
      INFO("devid ", c.devid, ": ", e);
      for (const auto& w : c.words) CHECK(e.find(w) != std::string::npos);
    }
    const auto log = env.daemon_log();
    CHECK(log.find("AQ") == std::string::npos);  // no key material in the log
    check_clean(env.run_frontend(5, {"--devid", std::to_string(xvda), "--rw", "randrw", "--bs", "4096", "--qd", "8",
                                     "--ios", "500", "--verify"}));
    // The advisory lock would hold up the image's removal.
    for (const auto& l : cluster.locks(locked.name)) cluster.lock_remove(locked.name, l);
  }

  TEST_CASE("rbd: after unplug and after the daemon stops the image has no watcher left") {
    const auto cluster = ceph_cluster::from_env();
    image a(cluster, 16);
    image b(cluster, 16);
    sim_env env(rbd_config(cluster));
    env.create_guest(5);
    const auto devid = env.add_disk(5, a.spec(), "xvda");
    env.add_disk(5, b.spec(), "xvdb");
    env.start_daemon();
    for (unsigned dev : {xvda, xvdb})
      check_clean(env.run_frontend(5, {"--devid", std::to_string(dev), "--rw", "randrw", "--ios", "200", "--verify"}));
    CHECK_FALSE(cluster.watchers(a.name).empty());
    auto res = env.toolstack().remove_disk(5, devid, {10s, xbd::sim::remove_mode::remove});
    CHECK(res.closed);
    CHECK(eventually([&] { return cluster.watchers(a.name).empty(); }, 10s));
    CHECK_FALSE(cluster.watchers(b.name).empty());
    REQUIRE(env.stop_daemon() == 0);
    CHECK(eventually([&] { return cluster.watchers(b.name).empty(); }, 10s));
  }
}
