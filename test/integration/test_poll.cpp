// Adaptive polling ([rings] poll-microseconds, blkback/data/ring_poll.hpp)
// in the real daemon: a guest at queue depth 1 is caught by polling, an
// idle ring stops polling, and a daemon stopped while its ring polls
// stops promptly.
#include "app/ctl/json.hpp"
#include "test/integration/control_client.hpp"
#include "test/integration/sim_env.hpp"

#include <doctest/doctest.h>

#include <unistd.h>

#include <csignal>
#include <fstream>
#include <sstream>
#include <thread>

using namespace xbd::test;
using xbd::ctl::json;
using namespace std::chrono_literals;

namespace {

constexpr unsigned xvda = 51712;
const std::string polling_config = "[rings]\npoll-microseconds = 200\n[log]\nlevel = \"debug\"\n";

// The vbd's counters, from `xen-blkbackctl stats --json`.
json vbd_stats(sim_env& env) { return vbd_stats_of(env, 5, xvda).vbd; }

// The daemon's CPU time so far (all threads), in clock ticks.
long cpu_ticks(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::istringstream rest(stat.substr(stat.rfind(')') + 2));
  std::string skip;
  for (int i = 3; i < 14; ++i) rest >> skip;  // fields 3..13
  long utime = 0, stime = 0;
  rest >> utime >> stime;
  return utime + stime;
}

std::vector<std::string> qd1_reads(std::vector<std::string> extra) {
  std::vector<std::string> a{"--devid", std::to_string(xvda), "--rw", "randread", "--bs", "4096", "--qd", "1"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

}  // namespace

TEST_CASE("polling: a guest at queue depth 1 is caught by polling, and its ring stops polling once idle") {
  sim_env env(polling_config);
  env.create_guest(5);
  env.add_disk(5, env.make_image("disk.img", 16 << 20).string());
  start(env);
  CHECK(env.log_shows("poll-microseconds=200"));
  auto fe = env.start_frontend(5, qd1_reads({"--ios", "3000", "--hold", "0"}), "qd1");
  REQUIRE(eventually([&] { return vbd_stats(env)["rd_req"].u64() >= 3000u; }, 30s));
  const json busy = vbd_stats(env);
  // Most requests of a guest at queue depth 1 come within the window; on
  // a loaded test machine not all do.
  CHECK(busy["poll_hits"].u64() >= 300u);
  CHECK(busy["poll_ns"].u64() > 0u);
  CHECK(busy["storm_pauses"].u64() == 0u);

  // Connected and idle: the ring polls once after the last burst at most
  // (well within a few ms), then nothing grows.
  std::this_thread::sleep_for(200ms);
  const json idle = vbd_stats(env);
  const long ticks = cpu_ticks(env.daemon().pid());
  std::this_thread::sleep_for(1s);
  const json later = vbd_stats(env);
  CHECK(later["poll_ns"].u64() == idle["poll_ns"].u64());
  CHECK(later["poll_misses"].u64() == idle["poll_misses"].u64());
  CHECK(later["poll_hits"].u64() == idle["poll_hits"].u64());
  // And the daemon sleeps: a few ticks at most in that second.
  CHECK(cpu_ticks(env.daemon().pid()) - ticks <= 5);
  fe->signal(SIGTERM);
  CHECK(fe->wait(10s).has_value());
}

TEST_CASE("polling: a daemon stopped right after a burst, its ring polling, stops promptly") {
  sim_env env(polling_config);
  env.create_guest(5);
  env.add_disk(5, env.make_image("disk.img", 16 << 20).string());
  start(env);
  auto fe = env.start_frontend(5, qd1_reads({"--ios", "3000", "--hold", "0"}), "qd1");
  REQUIRE(eventually([&] { return vbd_stats(env)["rd_req"].u64() >= 3000u; }, 30s));
  // The ring has just taken the last request, and polls for it: the guest
  // is connected and silent.
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(env.stop_daemon() == 0);
  CHECK(std::chrono::steady_clock::now() - t0 < 3s);
  CHECK(env.log_shows("ring stopping with"));
  fe->signal(SIGTERM);
  (void)fe->wait(10s);
}
