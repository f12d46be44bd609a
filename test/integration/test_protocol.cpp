// The protocol details real frontends need, through the real daemon: the
// sector size a frontend may be given (feature-large-sector-size,
// force-sector-size, [io] sector-size), secure discard, a store that
// cannot flush, and a block device that grows (docs/protocol.md).
#include "test/integration/sim_env.hpp"

#include <doctest/doctest.h>

#include <sys/mount.h>
#include <unistd.h>
#include <algorithm>
#include <csignal>
#include <fstream>
#include <sstream>
#include <thread>

using namespace xbd::test;
using namespace std::chrono_literals;

namespace {

constexpr unsigned xvda = 51712;

std::string backend(unsigned domid, unsigned devid = xvda) {
  return "/local/domain/0/backend/qdisk/" + std::to_string(domid) + "/" + std::to_string(devid);
}

std::uint32_t add_disk(sim_env& env, unsigned domid, const std::filesystem::path& target, bool direct_io_safe = false) {
  return env.add_raw_disk(domid, target, true, direct_io_safe);
}

void check_clean(const frontend_result& r) {
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(json_field(r.json, "ok") == "true");
  CHECK(json_field(r.json, "mismatches") == "0");
}

// How many lines of the daemon's log contain `text`.
std::size_t log_count(sim_env& env, const std::string& text) {
  std::istringstream in(env.daemon_log());
  std::size_t n = 0;
  for (std::string line; std::getline(in, line);)
    if (line.find(text) != std::string::npos) ++n;
  return n;
}

// A loop device over a file, with the logical sector size asked for (root
// only: the case is skipped without one).
struct loop_device {
  std::string dev;
  std::filesystem::path log;
  loop_device(sim_env& env, const std::filesystem::path& file, unsigned sector) : log(env.dir() / "losetup.log") {
    if (::geteuid() != 0) return;
    auto out = run({"/usr/sbin/losetup", "--find", "--show", "--sector-size", std::to_string(sector), file.string()},
                   {}, log, 20s);
    std::istringstream in(out.output);
    if (out.status != 0 || !(in >> dev) || !dev.starts_with("/dev/loop")) dev.clear();
  }
  ~loop_device() {
    if (dev.empty()) return;
    for (int i = 0; i < 50; ++i) {
      if (run({"/usr/sbin/losetup", "-d", dev}, {}, log, 10s).status == 0) break;
      ::usleep(100'000);
    }
  }
  // The device takes the new size of its file.
  bool update_capacity() const { return run({"/usr/sbin/losetup", "-c", dev}, {}, log, 10s).status == 0; }
};

// xbd-faultyfs (test/integration/faultyfs.cpp): one file, disk.img, whose
// requests fail where `rules` says.
struct faulty_disk {
  std::filesystem::path dir, mount;
  std::unique_ptr<process> server;
  std::string why_not;
  faulty_disk(sim_env& env, const std::string& rules, std::uint64_t bytes)
      : dir(env.dir() / "fuse"), mount(dir / "mnt") {
    if (std::string(XBD_FAULTYFS_BIN).empty() || ::access("/dev/fuse", R_OK | W_OK) != 0) {
      why_not = "no xbd-faultyfs or no /dev/fuse";
      return;
    }
    std::filesystem::create_directories(mount);
    std::ofstream(dir / "rules") << rules;
    std::ofstream(dir / "events").flush();
    std::ofstream(dir / "backing.img").flush();
    std::filesystem::resize_file(dir / "backing.img", bytes);
    server = std::make_unique<process>(
        std::vector<std::string>{XBD_FAULTYFS_BIN, mount.string(), (dir / "backing.img").string(),
                                 (dir / "rules").string(), (dir / "events").string()},
        std::vector<std::string>{}, dir / "faultyfs.log");
    if (!eventually([&] { return server->output().find("ready") != std::string::npos || !server->running(); }, 10s) ||
        !server->running() || !std::filesystem::exists(image()))
      why_not = "xbd-faultyfs could not mount: " + server->output();
  }
  ~faulty_disk() {
    if (server) {
      server->signal(SIGTERM);
      (void)server->wait(10s);
    }
    ::umount2(mount.c_str(), MNT_DETACH);
  }
  std::filesystem::path image() const { return mount / "disk.img"; }
  // New rules, in force from the file system's next request.
  void set_rules(const std::string& rules) {
    std::ofstream(dir / "rules") << rules;
    server->signal(SIGUSR1);
  }
  // Whether a request `what` ("open 0 0") has reached the file system.
  bool saw(const std::string& what) const {
    std::ifstream in(dir / "events");
    for (std::string line; std::getline(in, line);)
      if (line == what) return true;
    return false;
  }
};

// Guest 5's disk on `disk`, and the daemon started; false (said) where the
// file system cannot be had.
bool serve_faulty(sim_env& env, const faulty_disk& disk) {
  if (!disk.why_not.empty()) {
    MESSAGE("skipped: " << disk.why_not);
    return false;
  }
  env.create_guest(5);
  add_disk(env, 5, disk.image());
  env.start_daemon();
  return true;
}

// Guest 5 connected and idle, until its frontend is stopped.
std::unique_ptr<process> hold_connected(sim_env& env) {
  auto fe = env.start_frontend(5, {"--devid", "51712", "--rw", "none", "--hold", "0"}, "hold");
  REQUIRE(eventually([&] { return env.read(backend(5) + "/state") == xenbus::connected; }));
  return fe;
}

}  // namespace

TEST_CASE("a frontend without feature-large-sector-size gets 512-byte sectors from a 4Kn device, O_DIRECT dropped") {
  sim_env env;
  loop_device loop(env, env.make_image("4kn.img", 16 << 20), 4096);
  if (loop.dev.empty()) {
    MESSAGE("skipped: no loop device (needs root and losetup)");
    return;
  }
  env.create_guest(5);
  add_disk(env, 5, loop.dev, /*direct_io_safe*/ true);
  env.start_daemon();
  REQUIRE(env.log_shows("opened " + loop.dev + " read-write with O_DIRECT"));
  auto r = env.run_frontend(5, {"--devid", "51712", "--rw", "randrw", "--bs", "512", "--qd", "8", "--ios", "400",
                                "--verify", "--flush-every", "8"});
  check_clean(r);
  CHECK(json_field(r.json, "sector_size") == "512");
  CHECK(json_field(r.json, "physical_sector_size") == "4096");
  CHECK(
      env.log_shows(loop.dev + ": O_DIRECT dropped: it needs 4096-byte units and the frontend gets 512-byte sectors"));
  CHECK(env.log_shows("indirect, sector 512 (the frontend does not set feature-large-sector-size)\n"));
  CHECK(env.read(backend(5) + "/sectors") == std::to_string((16 << 20) / 512));
}

TEST_CASE("a frontend with feature-large-sector-size gets a 4Kn device's 4096-byte sectors, with O_DIRECT") {
  sim_env env;
  loop_device loop(env, env.make_image("4kn.img", 16 << 20), 4096);
  if (loop.dev.empty()) {
    MESSAGE("skipped: no loop device (needs root and losetup)");
    return;
  }
  env.create_guest(5);
  add_disk(env, 5, loop.dev, /*direct_io_safe*/ true);
  env.start_daemon();
  auto r = env.run_frontend(5, {"--devid", "51712", "--large-sectors", "--rw", "randrw", "--bs", "4096", "--qd", "8",
                                "--ios", "400", "--verify"});
  check_clean(r);
  CHECK(json_field(r.json, "sector_size") == "4096");
  CHECK(env.log_shows("indirect, sector 4096\n"));
  CHECK(env.daemon_log().find("O_DIRECT dropped") == std::string::npos);
  // Still 512-byte units (blkif.h's sectors).
  CHECK(env.read(backend(5) + "/sectors") == std::to_string((16 << 20) / 512));
}

TEST_CASE("force-sector-size and [io] sector-size decide the sector size whatever the frontend says") {
  sim_env env("[io]\nsector-size = 4096\n");
  env.create_guest(5);
  env.create_guest(6);
  add_disk(env, 5, env.make_image("a.img", 8 << 20));
  add_disk(env, 6, env.make_image("b.img", 8 << 20));
  // The toolstack's key for one disk, written after the vbd appeared and
  // before the guest connects: read at connect.
  env.toolstack().xs().write(backend(6) + "/force-sector-size", "0");
  env.start_daemon();
  auto a = env.run_frontend(5, {"--devid", "51712", "--rw", "randrw", "--bs", "4096", "--ios", "200", "--verify"});
  check_clean(a);
  CHECK(json_field(a.json, "sector_size") == "4096");
  CHECK(env.log_shows("indirect, sector 4096 ([io] sector-size)\n"));
  auto b = env.run_frontend(
      6, {"--devid", "51712", "--rw", "randrw", "--bs", "512", "--size", "4M", "--ios", "200", "--verify"});
  check_clean(b);
  CHECK(json_field(b.json, "sector_size") == "512");
  // A key written later applies at the next connection.
  env.toolstack().xs().write(backend(6) + "/force-sector-size", "2048");
  // (Blocks of its own: the 512-byte run's stamps do not read as 2048-byte ones.)
  auto c = env.run_frontend(
      6, {"--devid", "51712", "--rw", "randrw", "--bs", "2048", "--offset", "4M", "--ios", "200", "--verify"});
  check_clean(c);
  CHECK(json_field(c.json, "sector_size") == "2048");
  CHECK(env.log_shows("indirect, sector 2048 (force-sector-size)\n"));
}

TEST_CASE("a malformed force-sector-size closes that vbd with an error node, and no other") {
  sim_env env;
  env.create_guest(5);
  env.create_guest(6);
  add_disk(env, 5, env.make_image("a.img", 8 << 20));
  add_disk(env, 6, env.make_image("b.img", 8 << 20));
  env.toolstack().xs().write(backend(5) + "/force-sector-size", "3000");
  env.start_daemon();
  auto bad = env.start_frontend(5, {"--devid", "51712", "--rw", "none", "--timeout", "5"}, "bad");
  CHECK(eventually([&] { return env.read(backend(5) + "/state") == xenbus::closed; }));
  const auto error = env.read(backend(5) + "/error");
  REQUIRE(error);
  CHECK(error->find("force-sector-size \"3000\" is not 0, 512, 1024, 2048 or 4096") != std::string::npos);
  CHECK(env.log_shows("[d5/51712 xvda] force-sector-size \"3000\" is not 0, 512, 1024, 2048 or 4096"));
  (void)bad->wait(20s);
  check_clean(env.run_frontend(6, {"--devid", "51712", "--rw", "randrw", "--ios", "200", "--verify"}));
}

// A file system that stops answering (a hard-mounted NFS whose server is
// gone): its calls sleep in the kernel. They run off the control thread
// (blkback/storage/off_thread.hpp), so the other vbds go on.
TEST_CASE("an open its file system does not answer holds up its own vbd alone, which fails past the bound") {
  sim_env env("[io]\nopen-timeout-seconds = 3\n");
  faulty_disk disk(env, "open delay:15000\n", 8 << 20);
  if (!serve_faulty(env, disk)) return;
  REQUIRE(eventually([&] { return disk.saw("open 0 0"); }, 10s));
  // While that open sleeps, another guest's disk is served (the control
  // thread used to sleep with it, for as long as the file system took).
  env.create_guest(6);
  add_disk(env, 6, env.make_image("fine.img", 8 << 20));
  check_clean(env.run_frontend(6, {"--devid", "51712", "--rw", "randrw", "--ios", "100", "--verify"}, 12s));
  CHECK(eventually(
      [&] {
        return env.read(backend(5) + "/error").value_or("").find("did not answer within 3 s") != std::string::npos;
      },
      10s));
  // The error node is written first, then the state.
  CHECK(eventually([&] { return env.read(backend(5) + "/state") == xenbus::closed; }));
}

TEST_CASE("SIGTERM while an open sleeps in its file system: the daemon finishes at once and leaves the vbd as it was") {
  sim_env env("[io]\nopen-timeout-seconds = 600\n");
  faulty_disk disk(env, "open delay:15000\n", 8 << 20);
  if (!serve_faulty(env, disk)) return;
  REQUIRE(eventually([&] { return disk.saw("open 0 0"); }, 10s));
  const auto state = env.read(backend(5) + "/state");
  env.daemon().signal(SIGTERM);
  // Its last line long before the file system answers. (The process is
  // reaped only after that: the kernel keeps a thread in an unanswered
  // FUSE or NFS request, and with it the process, whatever we do.)
  CHECK(env.log_shows("info exiting", 8s));
  CHECK(env.stop_daemon() == std::optional<int>(0));
  CHECK(env.read(backend(5) + "/state") == state);
  CHECK_FALSE(env.read(backend(5) + "/error"));
}

TEST_CASE("a size read its file system does not answer holds up nothing else, and a later resize is still seen") {
  sim_env env;
  faulty_disk disk(env, "", 8 << 20);
  if (!serve_faulty(env, disk)) return;
  auto fe = hold_connected(env);
  // fstat past the kernel's one-second attribute cache now asks getattr,
  // which sleeps; the resize poll asks every second.
  disk.set_rules("getattr delay:20000\n");
  REQUIRE(eventually([&] { return disk.saw("getattr 0 0"); }, 10s));
  env.create_guest(6);
  add_disk(env, 6, env.make_image("fine.img", 8 << 20));
  check_clean(env.run_frontend(6, {"--devid", "51712", "--rw", "randrw", "--ios", "100", "--verify"}, 12s));
  CHECK(env.log_shows("is still being read: its file system does not answer"));
  // The file system answers again, and the file has grown.
  disk.set_rules("");
  std::filesystem::resize_file(disk.dir / "backing.img", 12 << 20);
  CHECK(eventually([&] { return env.read(backend(5) + "/sectors") == std::to_string((12 << 20) / 512); }, 30s));
  fe->signal(SIGTERM);
  (void)fe->wait(10s);
}

TEST_CASE("a store that cannot flush: EOPNOTSUPP, and feature-flush-cache and feature-barrier withdrawn once") {
  sim_env env;
  faulty_disk disk(env, "flush eopnotsupp\n", 8 << 20);
  if (!serve_faulty(env, disk)) return;
  auto fe = hold_connected(env);
  CHECK(env.read(backend(5) + "/feature-flush-cache") == "1");
  CHECK(env.read(backend(5) + "/feature-barrier") == "1");
  fe->signal(SIGTERM);
  (void)fe->wait(10s);
  auto r = env.run_frontend(
      5, {"--devid", "51712", "--rw", "write", "--ios", "64", "--qd", "4", "--flush-every", "4", "--allow-io-errors"});
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(json_field(r.json, "eopnotsupp") != "0");
  CHECK(json_field(r.json, "io") == "0");
  CHECK(eventually([&] { return env.read(backend(5) + "/feature-flush-cache") == "0"; }));
  CHECK(env.read(backend(5) + "/feature-barrier") == "0");
  CHECK(env.log_shows("cannot flush (EOPNOTSUPP): feature-flush-cache and feature-barrier withdrawn"));
  CHECK(log_count(env, "cannot flush (EOPNOTSUPP)") == 1);
  // The next connection is not offered flush at all.
  auto again = env.run_frontend(5, {"--devid", "51712", "--rw", "write", "--ios", "16"});
  INFO(again.output);
  CHECK(again.status == 0);
  CHECK(env.read(backend(5) + "/feature-flush-cache") == "0");
  CHECK(log_count(env, "cannot flush (EOPNOTSUPP)") == 1);
}

TEST_CASE("discard-secure is offered on a block device the toolstack vouches for, and EOPNOTSUPP comes back") {
  sim_env env;
  loop_device vouched(env, env.make_image("vouched.img", 16 << 20), 512);
  loop_device plain(env, env.make_image("plain.img", 16 << 20), 512);
  if (vouched.dev.empty() || plain.dev.empty()) {
    MESSAGE("skipped: no loop device (needs root and losetup)");
    return;
  }
  env.create_guest(5);
  env.create_guest(6);
  add_disk(env, 5, vouched.dev);
  add_disk(env, 6, plain.dev);
  env.toolstack().xs().write(backend(5) + "/discard-secure-enable", "1");
  env.start_daemon();
  // A loop device has no secure erase: the kernel says EOPNOTSUPP, and so
  // does the answer. (blkfront-sim refuses --discard-secure unless the
  // backend offers it.)
  auto r = env.run_frontend(
      5, {"--devid", "51712", "--rw", "trim", "--discard-secure", "--bs", "4096", "--ios", "8", "--allow-io-errors"});
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(json_field(r.json, "eopnotsupp") == "8");
  CHECK(env.read(backend(5) + "/discard-secure") == "1");
  // A plain discard still works.
  auto discard = env.run_frontend(5, {"--devid", "51712", "--rw", "trim", "--bs", "4096", "--ios", "8"});
  INFO(discard.output);
  CHECK(discard.status == 0);
  // Without the toolstack's word, a block device is not offered it.
  check_clean(env.run_frontend(6, {"--devid", "51712", "--rw", "randrw", "--ios", "50", "--verify"}));
  CHECK(env.read(backend(6) + "/feature-discard") == "1");
  CHECK(env.read(backend(6) + "/discard-secure") == "0");
}

TEST_CASE("a grown block device is noticed without a signal, by default") {
  sim_env env;
  auto file = env.make_image("grow.img", 8 << 20);
  loop_device loop(env, file, 512);
  if (loop.dev.empty()) {
    MESSAGE("skipped: no loop device (needs root and losetup)");
    return;
  }
  env.create_guest(5);
  add_disk(env, 5, loop.dev);
  env.start_daemon();
  auto fe = hold_connected(env);
  CHECK(env.read(backend(5) + "/sectors") == std::to_string((8 << 20) / 512));
  std::filesystem::resize_file(file, 12 << 20);
  REQUIRE(loop.update_capacity());
  CHECK(eventually([&] { return env.read(backend(5) + "/sectors") == std::to_string((12 << 20) / 512); }, 5s));
  CHECK(env.log_shows("resized: 16384 -> 24576 sectors"));
  fe->signal(SIGTERM);
  (void)fe->wait(10s);
}

TEST_CASE("a restarted daemon re-attaches with the sector size the frontend was given, O_DIRECT dropped again") {
  sim_env env;
  loop_device loop(env, env.make_image("4kn.img", 16 << 20), 4096);
  if (loop.dev.empty()) {
    MESSAGE("skipped: no loop device (needs root and losetup)");
    return;
  }
  env.create_guest(5);
  add_disk(env, 5, loop.dev, /*direct_io_safe*/ true);
  env.start_daemon();
  auto fe = env.start_frontend(5,
                               {"--devid", "51712", "--rw", "randrw", "--bs", "512", "--qd", "16", "--runtime", "3",
                                "--verify", "--timeout", "120"},
                               "long");
  REQUIRE(eventually([&] { return env.read(backend(5) + "/state") == xenbus::connected; }));
  CHECK(env.read(backend(5) + "/sector-size") == "512");
  std::this_thread::sleep_for(500ms);
  CHECK(env.stop_daemon() == 0);
  // Meant for the next connection, not for this one.
  env.toolstack().xs().write(backend(5) + "/force-sector-size", "4096");
  env.start_daemon();
  CHECK(env.log_shows("indirect, sector 512 (as published before the restart)\n"));
  REQUIRE(fe->wait(150s) == 0);
  const auto out = fe->output();
  INFO(out);
  CHECK(out.find("\"mismatches\":0") != std::string::npos);
  CHECK(out.find("\"io\":0") != std::string::npos);
  CHECK(env.read(backend(5) + "/sector-size") == "512");
}
