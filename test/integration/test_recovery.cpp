// Crash recovery: the daemon is SIGKILLed in the middle of a verified
// workload, at each stage of a request's life and at random, and restarted.
// The guest must see every request answered exactly once and every block
// as it last wrote it.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "test/integration/sim_env.hpp"

using namespace xbd::test;
using namespace std::chrono_literals;

namespace {

constexpr unsigned xvda = 51712, xvdb = 51728;

std::string backend(unsigned domid, unsigned devid) {
  return "/local/domain/0/backend/qdisk/" + std::to_string(domid) + "/" + std::to_string(devid);
}

// A verified mixed workload that outlives several daemons: 64 KiB random
// reads and writes at QD 32 on two queues, indirect requests, flushes.
std::vector<std::string> workload(unsigned devid, const std::string& seconds) {
  return {
      "--devid", std::to_string(devid), "--rw", "randrw",        "--bs", "64k",       "--qd",  "32",       "--queues",
      "2",       "--indirect",          "32",   "--flush-every", "50",   "--runtime", seconds, "--verify", "--timeout",
      "60"};
}

// Sums "took up the previous daemon's in-flight journal: N request(s)
// executed again" over the daemon's logs.
unsigned reissued(const std::string& log) {
  static const std::regex line("in-flight journal: ([0-9]+) request\\(s\\) executed again");
  unsigned n = 0;
  for (auto it = std::sregex_iterator(log.begin(), log.end(), line); it != std::sregex_iterator(); ++it)
    n += static_cast<unsigned>(std::stoul((*it)[1]));
  return n;
}

void check_verified(process& fe) {
  const auto status = fe.wait(180s);
  const std::string out = fe.output();
  INFO(out);
  REQUIRE(status == 0);
  CHECK(out.find("\"mismatches\":0") != std::string::npos);
  CHECK(out.find("\"protocol\":0") != std::string::npos);
  CHECK(out.find("\"io\":0") != std::string::npos);
}

// The daemon died of the fault (SIGKILL: 128 + 9).
bool killed(sim_env& env) { return env.daemon().wait(30s) == 128 + 9; }

}  // namespace

TEST_CASE("a daemon killed at each stage of a request's life restarts without losing or repeating one") {
  for (const char* point :
       {"consumed", "io-started", "completed", "responded", "pushed", "journal-take", "journal-respond"}) {
    CAPTURE(point);
    sim_env env;
    env.create_guest(5);
    env.add_disk(5, env.make_image("disk.img", 64 << 20), "xvda");
    // Late enough that both queues are full (QD 32 each), early enough for
    // a slow (ASan, loaded) machine to get there within the run.
    env.start_daemon({}, {std::string("XBD_FAULT=") + point + ":150"});
    auto fe = env.start_frontend(5, workload(xvda, "6"), "verified");
    REQUIRE(killed(env));
    env.start_daemon();
    check_verified(*fe);
    const std::string log = env.daemon_log();
    INFO(log);
    CHECK(log.find("took up the previous daemon's in-flight journal") != std::string::npos);
  }
}

// XBD_RECOVERY_KILLS sets the number of kills (default 100). Each restart
// also exercises the simulator's cleanup of a process killed anywhere: a
// notify cut short, a grant entry's lock left held (test/sim/xensim/README.md,
// "A producer killed in the middle of a notify" and "A dead process").
TEST_CASE("a soak: killed at random a hundred times, two guests' verified I/O answers every request exactly once") {
  const char* env_kills = std::getenv("XBD_RECOVERY_KILLS");
  const unsigned kills = env_kills ? static_cast<unsigned>(std::atoi(env_kills)) : 100;
  sim_env env;
  env.create_guest(5);
  env.create_guest(6);
  env.add_disk(5, env.make_image("a.img", 64 << 20), "xvda");
  env.add_disk(6, env.make_image("b.img", 64 << 20), "xvdb");
  env.start_daemon();
  // The frontends run 30 s (0.3 s a kill beyond a hundred), then finish by
  // themselves and report. The kills take about 20 s, more on a loaded
  // machine: they stop 5 s before the frontends do, however many are left.
  const auto runtime = std::chrono::seconds(std::max(30u, kills * 3 / 10));
  const auto kills_until = std::chrono::steady_clock::now() + runtime - 5s;
  auto a = env.start_frontend(5, workload(xvda, std::to_string(runtime.count())), "a");
  auto b = env.start_frontend(6, workload(xvdb, std::to_string(runtime.count())), "b");
  REQUIRE(eventually([&] { return env.read(backend(5, xvda) + "/state") == xenbus::connected; }));
  REQUIRE(eventually([&] { return env.read(backend(6, xvdb) + "/state") == xenbus::connected; }));
  std::mt19937 rng(20261206);
  std::uniform_int_distribution<int> pause_ms(20, 250);
  unsigned done = 0;
  for (; done < kills && std::chrono::steady_clock::now() < kills_until; ++done) {
    std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms(rng)));
    env.daemon().signal(SIGKILL);
    REQUIRE(env.daemon().wait(10s) == 128 + 9);
    env.start_daemon();
    REQUIRE(a->running());
    REQUIRE(b->running());
  }
  check_verified(*a);
  check_verified(*b);
  const std::string log = env.daemon_log();
  const unsigned n = reissued(log);
  std::cout << "recovery soak: " << done << " of " << kills << " SIGKILLs, " << n
            << " request(s) executed again in all\n";
  CHECK(done * 4 >= kills);  // a machine too slow for a quarter of them tests little
  CHECK(n > 0);
  CHECK(log.find("the device is closed") == std::string::npos);
}

TEST_CASE("a damaged or stale journal closes that vbd with a reason, the other guest's vbd recovers") {
  sim_env env;
  env.create_guest(5);
  env.create_guest(6);
  env.add_disk(5, env.make_image("a.img", 16 << 20), "xvda");
  env.add_disk(6, env.make_image("b.img", 16 << 20), "xvdb");
  env.start_daemon();
  auto a = env.start_frontend(5, workload(xvda, "4"), "a");
  auto b = env.start_frontend(6, workload(xvdb, "4"), "b");
  REQUIRE(eventually([&] { return env.read(backend(5, xvda) + "/state") == xenbus::connected; }));
  REQUIRE(eventually([&] { return env.read(backend(6, xvdb) + "/state") == xenbus::connected; }));
  std::this_thread::sleep_for(500ms);
  env.daemon().signal(SIGKILL);
  REQUIRE(env.daemon().wait(10s) == 128 + 9);
  const auto journal = env.dir() / "journal" / ("qdisk-5-" + std::to_string(xvda));
  SUBCASE("damaged") {
    // Every byte of the first ring's region flipped: entries, records, indices.
    std::fstream io(journal, std::ios::in | std::ios::out | std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(io)), {});
    for (std::size_t i = 4096; i < std::min<std::size_t>(bytes.size(), 4096 + 65536); ++i) bytes[i] ^= 0x5a;
    io.seekp(0);
    io.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  SUBCASE("missing") { std::filesystem::remove(journal); }
  SUBCASE("cut short") { std::filesystem::resize_file(journal, 4096); }
  env.start_daemon();
  CHECK(eventually([&] { return env.read(backend(5, xvda) + "/state") == xenbus::closed; }, 20s));
  const std::string error = env.read(backend(5, xvda) + "/error").value_or("");
  INFO(error);
  CHECK(error.find("journal") != std::string::npos);
  // The other guest goes on as if nothing happened; the first sees its
  // disk fail (the backend closed), not wrong data.
  check_verified(*b);
  CHECK(a->wait(90s).has_value());
  INFO(a->output());
  CHECK(a->output().find("\"mismatches\":0") != std::string::npos);
}
