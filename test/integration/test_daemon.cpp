// The real xen-blkbackd binary on simulated Xen, driven by blkfront-sim.
#include "test/integration/sim_env.hpp"

#include <doctest/doctest.h>

#include <sys/stat.h>
#include <csignal>
#include <fstream>
#include <thread>

using namespace xbd::test;
using namespace std::chrono_literals;

namespace {

constexpr unsigned xvda = 51712;

std::uint32_t add_disk(sim_env& env, unsigned domid, const std::filesystem::path& image, bool writable = true,
                       bool direct_io_safe = false, const std::string& vdev = "xvda") {
  xbd::sim::disk_spec d;
  d.domid = domid;
  d.vdev = vdev;
  d.target = image;
  d.writable = writable;
  d.direct_io_safe = direct_io_safe;
  return env.toolstack().add_disk(d);
}

std::string backend(unsigned domid, unsigned devid = xvda) {
  return "/local/domain/0/backend/qdisk/" + std::to_string(domid) + "/" + std::to_string(devid);
}

// Both ends Connected: the guest is using the disk.
bool both_connected(sim_env& env, unsigned domid, unsigned devid = xvda) {
  return eventually([&] {
    return env.read(backend(domid, devid) + "/state") == xenbus::connected &&
           env.read("/local/domain/" + std::to_string(domid) + "/device/vbd/" + std::to_string(devid) + "/state") ==
               xenbus::connected;
  });
}

void check_clean(const frontend_result& r) {
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(json_field(r.json, "ok") == "true");
  CHECK(json_field(r.json, "mismatches") == "0");
}

}  // namespace

TEST_CASE("verified random reads and writes through a 16-page ring, with flushes") {
  sim_env env;
  env.create_guest(5);
  add_disk(env, 5, env.make_image("disk.img", 64 << 20));
  env.start_daemon();
  auto r = env.run_frontend(5, {"--devid", "51712", "--rw", "randrw", "--bs", "4096", "--qd", "32", "--ios", "4000",
                                "--flush-every", "16", "--verify"});
  check_clean(r);
  CHECK(json_field(r.json, "ring_page_order") == "4");
  CHECK(json_field(r.json, "flush") != "0");
  CHECK(env.log_shows("connected: 1 queue(s) of 16 ring page(s), 512 entries each"));
  CHECK(env.read(backend(5) + "/state") == xenbus::closed);  // the frontend closed at the end
  CHECK(env.stop_daemon() == 0);
}

TEST_CASE("verified sequential I/O through a single-page ring with large requests") {
  sim_env env;
  env.create_guest(5);
  add_disk(env, 5, env.make_image("disk.img", 32 << 20));
  env.start_daemon();
  auto r = env.run_frontend(5, {"--devid", "51712", "--ring-order", "0", "--rw", "rw", "--bs", "45056", "--qd", "32",
                                "--bytes", "16M", "--verify"});
  check_clean(r);
  CHECK(json_field(r.json, "ring_entries") == "32");
  CHECK(env.log_shows("connected: 1 queue(s) of 1 ring page(s), 32 entries each"));
}

TEST_CASE("direct-io-safe decides the open mode, and the log says which each vbd got") {
  sim_env env;
  env.create_guest(5);
  env.create_guest(6);
  add_disk(env, 5, env.make_image("direct.img", 8 << 20), true, /*direct_io_safe*/ true);
  add_disk(env, 6, env.make_image("buffered.img", 8 << 20), true, false);
  env.start_daemon();
  CHECK(env.log_shows("[d5/51712 xvda] opened " + (env.dir() / "direct.img").string() +
                      " read-write with O_DIRECT (direct-io-safe=1)"));
  CHECK(env.log_shows("[d6/51712 xvda] opened " + (env.dir() / "buffered.img").string() +
                      " read-write buffered (no direct-io-safe key)"));
  check_clean(env.run_frontend(5, {"--devid", "51712", "--rw", "randrw", "--ios", "500", "--verify"}));
}

TEST_CASE("the frontend closes and initialises again: the daemon reconnects each time") {
  sim_env env;
  env.create_guest(5);
  add_disk(env, 5, env.make_image("disk.img", 16 << 20));
  env.start_daemon();
  auto r = env.run_frontend(5, {"--devid", "51712", "--rw", "randrw", "--ios", "500", "--verify", "--reconnect", "3"});
  check_clean(r);
  CHECK(json_field(r.json, "reconnects") == "3");
  CHECK(env.log_shows("frontend reinitialising"));
}

TEST_CASE("two guests are served at once, each with its own disk") {
  sim_env env;
  env.create_guest(5);
  env.create_guest(6);
  add_disk(env, 5, env.make_image("a.img", 32 << 20));
  add_disk(env, 6, env.make_image("b.img", 32 << 20));
  env.start_daemon();
  auto a =
      env.start_frontend(5, {"--devid", "51712", "--rw", "randrw", "--runtime", "2", "--qd", "16", "--verify"}, "a");
  auto b =
      env.start_frontend(6, {"--devid", "51712", "--rw", "randrw", "--runtime", "2", "--qd", "16", "--verify"}, "b");
  REQUIRE(a->wait(30s) == 0);
  REQUIRE(b->wait(30s) == 0);
  CHECK(a->output().find("\"mismatches\":0") != std::string::npos);
  CHECK(b->output().find("\"mismatches\":0") != std::string::npos);
}

TEST_CASE("a read-only vbd refuses every write and serves reads") {
  sim_env env;
  env.create_guest(5);
  auto img = env.make_image("ro.img", 8 << 20);
  add_disk(env, 5, img, /*writable*/ false);
  env.start_daemon();
  auto w = env.run_frontend(5, {"--devid", "51712", "--rw", "write", "--ios", "20", "--allow-io-errors"});
  INFO(w.output);
  CHECK(json_field(json_field(w.json, "errors"), "io") == "20");
  CHECK(json_field(w.json, "readonly") == "true");
  auto r = env.run_frontend(5, {"--devid", "51712", "--rw", "read", "--ios", "200"});
  CHECK(r.status == 0);
  // The image is still all zeroes.
  std::ifstream in(img, std::ios::binary);
  std::string data((std::istreambuf_iterator<char>(in)), {});
  CHECK(data.find_first_not_of('\0') == std::string::npos);
}

TEST_CASE("a missing backing file closes that vbd with an error node and another guest is unaffected") {
  sim_env env;
  env.create_guest(5);
  env.create_guest(6);
  add_disk(env, 5, env.dir() / "does-not-exist.img");
  add_disk(env, 6, env.make_image("good.img", 8 << 20));
  env.start_daemon();
  CHECK(eventually([&] { return env.read(backend(5) + "/state") == xenbus::closed; }));
  auto err = env.read(backend(5) + "/error");
  REQUIRE(err.has_value());
  CHECK(err->find("No such file or directory") != std::string::npos);
  CHECK(env.log_shows("does-not-exist.img: No such file or directory"));
  check_clean(env.run_frontend(6, {"--devid", "51712", "--rw", "randrw", "--ios", "300", "--verify"}));
  CHECK(env.daemon().running());
}

TEST_CASE("a toolstack unplug while the guest is idle closes the vbd and the toolstack removes it") {
  sim_env env;
  env.create_guest(5);
  auto devid = add_disk(env, 5, env.make_image("disk.img", 8 << 20));
  env.start_daemon();
  REQUIRE(eventually([&] { return env.read(backend(5) + "/state") == xenbus::init_wait; }));
  auto res = env.toolstack().remove_disk(5, devid, {5s, xbd::sim::remove_mode::remove});
  CHECK(res.ok());
  CHECK(res.closed);
  CHECK(env.log_shows("unplugged by the toolstack"));
  CHECK_FALSE(env.read(backend(5) + "/state").has_value());
  // The daemon goes on: a new disk for the same guest is served.
  add_disk(env, 5, env.make_image("disk2.img", 8 << 20));
  check_clean(env.run_frontend(5, {"--devid", "51712", "--rw", "randrw", "--ios", "200", "--verify"}));
}

TEST_CASE("an unplug of a connected disk waits for the guest to let go") {
  sim_env env;
  env.create_guest(5);
  auto devid = add_disk(env, 5, env.make_image("disk.img", 8 << 20));
  env.start_daemon();
  // The guest holds the disk until the backend leaves (as Linux does on
  // an unplug request), then closes properly.
  auto fe = env.start_frontend(5, {"--devid", "51712", "--rw", "none", "--hold", "0"}, "hold");
  REQUIRE(both_connected(env, 5));
  auto res = env.toolstack().remove_disk(5, devid, {10s, xbd::sim::remove_mode::remove});
  INFO(fe->output());
  CHECK(res.ok());
  CHECK(fe->wait(10s) == 0);
  CHECK(env.log_shows("unplugged by the toolstack"));
}

TEST_CASE("a guest that dies is torn down without waiting for it, and a new guest works after it") {
  sim_env env;
  env.create_guest(5);
  add_disk(env, 5, env.make_image("disk.img", 8 << 20));
  env.start_daemon();
  auto fe = env.start_frontend(5, {"--devid", "51712", "--rw", "none", "--hold", "0"}, "dying");
  REQUIRE(both_connected(env, 5));
  fe->signal(SIGKILL);  // the guest stops dead: no Closing, no Closed
  (void)fe->wait(5s);
  env.xenstored().kill_domain(5);
  CHECK(env.log_shows("disconnected after"));
  CHECK((env.log_shows("guest domain died", 1s) || env.log_shows("frontend gone", 1s)));
  env.toolstack().destroy_domain(5);
  env.create_guest(7);
  add_disk(env, 7, env.dir() / "disk.img");
  check_clean(env.run_frontend(7, {"--devid", "51712", "--rw", "randrw", "--ios", "300", "--verify"}));
}

TEST_CASE("SIGTERM answers the requests in flight and a restarted daemon re-attaches without the guest noticing") {
  sim_env env;
  env.create_guest(5);
  add_disk(env, 5, env.make_image("disk.img", 32 << 20));
  env.start_daemon();
  auto fe = env.start_frontend(
      5, {"--devid", "51712", "--rw", "randrw", "--qd", "64", "--runtime", "4", "--verify", "--timeout", "120"},
      "long");
  REQUIRE(eventually([&] { return env.read(backend(5) + "/state") == xenbus::connected; }));
  std::this_thread::sleep_for(700ms);
  INFO("daemon log:\n" << env.daemon_log());
  CHECK(env.stop_daemon() == 0);
  CHECK(env.log_shows("all devices released"));
  // Guest-visible state is untouched: still Connected.
  CHECK(env.read(backend(5) + "/state") == xenbus::connected);
  env.start_daemon();
  CHECK(env.log_shows("re-attached"));
  REQUIRE(fe->wait(150s) == 0);
  auto out = fe->output();
  INFO(out);
  // Every request was answered exactly once and every read verified.
  CHECK(out.find("\"mismatches\":0") != std::string::npos);
  CHECK(out.find("\"protocol\":0") != std::string::npos);
}

TEST_CASE("a vbd directory written before its keys is served once the toolstack completes it") {
  // libxl writes a vbd in one transaction; a toolstack may write the
  // directory first and the keys later (a shell script with xenstore-write
  // does). The daemon must not give up on the directory it saw first.
  sim_env env("[log]\nlevel = \"debug\"\n");
  env.create_guest(5);
  add_disk(env, 5, env.make_image("disk.img", 8 << 20));
  auto& xs = env.toolstack().xs();
  const std::string be = backend(5);
  const auto perms = xs.perms(be);
  REQUIRE(perms);
  std::vector<std::pair<std::string, std::string>> keys;
  const auto names = xs.directory(be);
  REQUIRE(names);
  for (const auto& k : *names) keys.emplace_back(k, xs.read(be + "/" + k).value_or(""));
  REQUIRE(xs.rm(be));
  env.start_daemon();
  REQUIRE(env.log_shows("ready: 0 device(s) picked up"));
  xs.write(be, "");
  xs.set_perms(be, *perms);
  CHECK(env.log_shows("directory without params or frontend yet: waiting for the toolstack"));
  std::this_thread::sleep_for(200ms);  // the daemon reads the half-written directory again
  xs.in_transaction([&](xbd::sim::xs_client::transaction t) {
    for (const auto& [k, v] : keys) xs.write(be + "/" + k, v, t);
  });
  auto r = env.run_frontend(5, {"--devid", "51712", "--rw", "randrw", "--ios", "500", "--verify", "--timeout", "20"});
  check_clean(r);
  CHECK(env.stop_daemon() == 0);
}

TEST_CASE("bad values from the toolstack close the vbd with a reason") {
  sim_env env;
  env.create_guest(5);
  add_disk(env, 5, env.make_image("disk.img", 8 << 20));
  env.toolstack().xs().write(backend(5) + "/params", "qcow3:" + (env.dir() / "disk.img").string());
  env.start_daemon();
  CHECK(eventually([&] { return env.read(backend(5) + "/state") == xenbus::closed; }));
  CHECK(env.read(backend(5) + "/error").value_or("").find("unknown format") != std::string::npos);
  CHECK(env.log_shows("names the unknown format \"qcow3\""));
}

TEST_CASE("multi-queue with indirect descriptors: two rings, large requests, verified data") {
  sim_env env("[log]\nlevel = \"debug\"\n[io]\nworker-threads = 2\n");
  env.create_guest(5);
  add_disk(env, 5, env.make_image("disk.img", 64 << 20));
  env.start_daemon();
  auto r = env.run_frontend(5, {"--devid", "51712", "--queues", "2", "--indirect", "256", "--rw", "randrw", "--bs",
                                "1M", "--qd", "4", "--bytes", "96M", "--flush-every", "8", "--verify"});
  check_clean(r);
  auto neg = json_field(r.json, "negotiated");
  CHECK(json_field(neg, "queues") == "2");
  CHECK(json_field(neg, "indirect_segments") == "256");
  CHECK(json_field(neg, "indirect_in_use") == "true");
  CHECK(env.log_shows("connected: 2 queue(s)"));
}

TEST_CASE("a frontend without indirect support still gets 1 MiB I/O done as 44 KiB requests") {
  sim_env env;
  env.create_guest(5);
  add_disk(env, 5, env.make_image("disk.img", 32 << 20));
  env.start_daemon();
  auto r = env.run_frontend(5, {"--devid", "51712", "--indirect", "0", "--rw", "rw", "--bs", "1M", "--qd", "4",
                                "--bytes", "32M", "--verify"});
  check_clean(r);
  CHECK(json_field(json_field(r.json, "negotiated"), "indirect_in_use") == "false");
}

TEST_CASE("online resize: the image grows, SIGHUP, and the backend publishes the new size") {
  sim_env env;
  env.create_guest(5);
  auto img = env.make_image("disk.img", 16 << 20);
  add_disk(env, 5, img);
  env.start_daemon();
  auto fe = env.start_frontend(5, {"--devid", "51712", "--rw", "none", "--hold", "0"}, "hold");
  REQUIRE(both_connected(env, 5));
  CHECK(env.read(backend(5) + "/sectors") == std::to_string((16 << 20) / 512));
  std::filesystem::resize_file(img, 48 << 20);
  env.daemon().signal(SIGHUP);
  CHECK(eventually([&] { return env.read(backend(5) + "/sectors") == std::to_string((48 << 20) / 512); }));
  CHECK(env.log_shows("resized: 32768 -> 98304 sectors"));
  CHECK(env.read(backend(5) + "/state") == xenbus::connected);
  // The new sectors are served.
  fe->signal(SIGTERM);
  (void)fe->wait(10s);
  check_clean(env.run_frontend(
      5, {"--devid", "51712", "--rw", "randrw", "--offset", "40M", "--size", "8M", "--ios", "200", "--verify"}));
}

TEST_CASE("a grown image is noticed without a signal, by default") {
  sim_env env;
  env.create_guest(5);
  auto img = env.make_image("disk.img", 8 << 20);
  add_disk(env, 5, img);
  env.start_daemon();
  auto fe = env.start_frontend(5, {"--devid", "51712", "--rw", "none", "--hold", "0"}, "hold");
  REQUIRE(both_connected(env, 5));
  std::filesystem::resize_file(img, 12 << 20);
  CHECK(eventually([&] { return env.read(backend(5) + "/sectors") == std::to_string((12 << 20) / 512); }, 5s));
}

// What the kernel counts of a process's write-family system calls
// (/proc/PID/io `syscw`): the daemon's only writes while idle would be to
// xenstore, its log, or an event channel.
static std::uint64_t write_calls(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/io");
  std::string key;
  std::uint64_t value = 0;
  while (in >> key >> value)
    if (key == "syscw:") return value;
  return 0;
}

TEST_CASE("idle vbds cost no xenstore traffic: the size poll looks at the files only") {
  sim_env env;
  env.create_guest(5);
  std::string devids;
  for (unsigned i = 0; i < 16; ++i) {
    const std::string vdev = std::string("xvd") + static_cast<char>('a' + i);
    const auto devid =
        add_disk(env, 5, env.make_image("idle" + std::to_string(i) + ".img", 1 << 20), true, false, vdev);
    devids += (devids.empty() ? "" : ",") + std::to_string(devid);
  }
  env.start_daemon();
  auto fe = env.start_frontend(5, {"--devid", devids, "--rw", "none", "--hold", "0"}, "hold");
  REQUIRE(both_connected(env, 5, xvda + 15 * 16));
  REQUIRE(both_connected(env, 5, xvda));
  std::this_thread::sleep_for(1s);
  // resize-poll-seconds is 1: three polls of 16 vbds. Each used to step the
  // vbd through xenstore (three requests, a write each).
  const auto before = write_calls(env.daemon().pid());
  std::this_thread::sleep_for(3s);
  const auto writes = write_calls(env.daemon().pid()) - before;
  CHECK(writes < 16);
  // The poll still notices a grown image.
  std::filesystem::resize_file(env.dir() / "idle3.img", 2 << 20);
  CHECK(eventually([&] { return env.read(backend(5, xvda + 3 * 16) + "/sectors") == "4096"; }, 5s));
  fe->signal(SIGTERM);
  (void)fe->wait(10s);
}

TEST_CASE("a cdrom is served read-only with VDISK_CDROM") {
  sim_env env;
  env.create_guest(5);
  xbd::sim::disk_spec d;
  d.domid = 5;
  d.vdev = "xvdc";
  d.target = env.make_image("cd.iso", 4 << 20);
  d.cdrom = true;
  d.writable = false;
  auto devid = env.toolstack().add_disk(d);
  env.start_daemon();
  auto r = env.run_frontend(5, {"--devid", std::to_string(devid), "--rw", "read", "--ios", "100"});
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(json_field(r.json, "readonly") == "true");
  // VDISK_CDROM | VDISK_REMOVABLE | VDISK_READONLY: xl makes a cdrom removable.
  CHECK(json_field(json_field(r.json, "disk"), "info") == "7");
}

TEST_CASE("a hostile guest: bad requests are answered, a runaway producer index halts only its own ring") {
  sim_env env;
  env.create_guest(5);
  env.create_guest(6);
  add_disk(env, 5, env.make_image("evil.img", 8 << 20));
  add_disk(env, 6, env.make_image("good.img", 8 << 20));
  env.start_daemon();
  auto script = env.dir() / "hostile.script";
  std::ofstream(script) << "pages buf 2 rw\n"
                           "req op=0x63 id=1\n"                                  // unknown op
                           "req op=read id=2 sector=0 seg=buf:0:6:2\n"           // first_sect > last_sect
                           "req op=read id=3 sector=0 nseg=12\n"                 // too many segments
                           "req op=write id=4 sector=999999999 seg=buf:0:0:7\n"  // beyond the disk
                           "req op=read id=5 sector=0 seg=99999:0:7\n"           // a grant that does not exist
                           "req op=read id=6 sector=8 seg=buf:1:0:7\n"           // fine
                           "push\n"
                           "wait 6\n"
                           "expect 1 eopnotsupp\n"
                           "expect 2 error\n"
                           "expect 3 error\n"
                           "expect 4 error\n"
                           "expect 5 error\n"
                           "expect 6 okay\n"
                           "req-prod +1000\n"
                           "expect-no-response 300\n"
                           "expect-state connected\n";
  auto r = env.run_frontend(5, {"--devid", "51712", "--rw", "none", "--script", script.string()});
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(env.log_shows("[d5/51712 xvda] frontend published an impossible request index; this ring is halted"));
  // The other guest is served as if nothing happened, and so is a clean
  // reconnect of the hostile one.
  check_clean(env.run_frontend(6, {"--devid", "51712", "--rw", "randrw", "--ios", "500", "--verify"}));
  CHECK(env.daemon().running());
}

TEST_CASE("a 32-bit guest (x86_32-abi) with discards, barriers and flushes on two queues: verified") {
  sim_env env("[log]\nlevel = \"debug\"\n[io]\nworker-threads = 2\n");
  env.create_guest(5);
  add_disk(env, 5, env.make_image("disk.img", 32 << 20));
  env.start_daemon();
  auto r = env.run_frontend(5, {"--devid",
                                "51712",
                                "--protocol",
                                "x86_32-abi",
                                "--queues",
                                "2",
                                "--rw",
                                "randrw",
                                "--discard-pct",
                                "20",
                                "--barrier-every",
                                "5",
                                "--flush-every",
                                "50",
                                "--verify",
                                "--bs",
                                "16k",
                                "--qd",
                                "16",
                                "--ios",
                                "3000",
                                "--size",
                                "8m"});
  check_clean(r);
  CHECK(json_field(json_field(r.json, "negotiated"), "protocol") == "\"x86_32-abi\"");
  CHECK(json_field(json_field(r.json, "ops"), "discard") != "0");
  CHECK(json_field(json_field(r.json, "ops"), "barrier") != "0");
  CHECK(env.log_shows("x86_32-abi"));
}

TEST_CASE("discard punches holes: trimmed blocks read back as zeroes, and the image file has holes") {
  sim_env env;
  env.create_guest(5);
  auto img = env.make_image("disk.img", 16 << 20);
  add_disk(env, 5, img);
  env.start_daemon();
  check_clean(env.run_frontend(
      5, {"--devid", "51712", "--rw", "write", "--bs", "64k", "--size", "4m", "--bytes", "4m", "--verify"}));
  struct stat before {};
  REQUIRE(::stat(img.c_str(), &before) == 0);
  check_clean(
      env.run_frontend(5, {"--devid", "51712", "--rw", "trim", "--bs", "64k", "--size", "4m", "--bytes", "4m"}));
  check_clean(env.run_frontend(5, {"--devid", "51712", "--rw", "read", "--bs", "64k", "--size", "4m", "--bytes", "4m",
                                   "--verify", "--verify-unwritten", "zero"}));
  struct stat after {};
  REQUIRE(::stat(img.c_str(), &after) == 0);
  CHECK(after.st_blocks < before.st_blocks);  // the blocks went back to the filesystem
}

TEST_CASE("discard-enable=0 from the toolstack: no discard is offered") {
  sim_env env;
  env.create_guest(5);
  xbd::sim::disk_spec d;
  d.domid = 5;
  d.target = env.make_image("disk.img", 8 << 20);
  d.discard_enable = false;
  env.toolstack().add_disk(d);
  env.start_daemon();
  auto r = env.run_frontend(5, {"--devid", "51712", "--rw", "read", "--ios", "50"});
  CHECK(r.status == 0);
  CHECK(json_field(json_field(r.json, "disk"), "discard") == "false");
  CHECK(env.read(backend(5) + "/feature-discard") == "0");
}
