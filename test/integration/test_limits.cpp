// I/O limits (issue 17, docs/limits.md "I/O limits") through the real
// daemon: the rate a guest gets, bursts, live changes through
// xen-blkbackctl that outlast a reconnect, the toolstack's backend keys
// (and what happens to bad ones), the control socket's errors, and a
// throttled noisy guest beside a victim.
#include "app/ctl/json.hpp"
#include "test/integration/control_client.hpp"
#include "test/integration/sim_env.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <thread>

using namespace xbd::test;
using xbd::ctl::json;
using namespace std::chrono_literals;

namespace {

constexpr unsigned xvda = 51712;

std::string backend(unsigned domid, unsigned devid = xvda) {
  return "/local/domain/0/backend/qdisk/" + std::to_string(domid) + "/" + std::to_string(devid);
}

json parsed(const std::string& text) {
  std::string why;
  auto v = json::parse(text, &why);
  INFO(text);
  REQUIRE_MESSAGE(v.has_value(), why);
  return *v;
}

json limits_of(sim_env& env, const std::string& vbd) {
  auto r = ctl(env, {"limits", "--json", vbd});
  INFO(r.out);
  REQUIRE(r.status == 0);
  return parsed(r.out);
}

json vbd_stats(sim_env& env, const std::string& vbd) {
  auto r = ctl(env, {"stats", "--json", vbd});
  REQUIRE(r.status == 0);
  auto doc = parsed(r.out);
  REQUIRE(doc["vbds"].items().size() == 1u);
  return doc["vbds"].items()[0];
}

std::uint64_t requests(const json& v) { return v["rd_req"].u64() + v["wr_req"].u64(); }

std::vector<std::string> reads(std::vector<std::string> extra, unsigned devid = xvda) {
  std::vector<std::string> a{"--devid", std::to_string(devid), "--rw", "randread", "--bs", "4096"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

// The last line of `out` that is a JSON object: blkfront-sim's summary.
std::string last_json(const std::string& out) {
  std::string found;
  std::size_t at = 0;
  while (at < out.size()) {
    const std::size_t end = std::min(out.find('\n', at), out.size());
    if (out[at] == '{') found = out.substr(at, end - at);
    at = end + 1;
  }
  return found;
}

// What a blkfront-sim run achieved: its data operations over its runtime.
double achieved_iops(const frontend_result& r) {
  const json s = parsed(r.json);
  const double ops = static_cast<double>(s["ops"]["read"].u64() + s["ops"]["write"].u64());
  return s["runtime_s"].number() > 0 ? ops / s["runtime_s"].number() : 0;
}

}  // namespace

TEST_CASE(
    "limits: a vbd limited to 500 IOPS by the toolstack gets 500 within 5 % over 10 s, its neighbour is not "
    "limited") {
  sim_env env("[io]\nworker-threads = 2\n");
  env.create_guest(5);
  env.add_disk(5, env.make_image("a.img", 16 << 20).string(), "xvda");
  const std::uint32_t xvdb = env.add_disk(5, env.make_image("b.img", 16 << 20).string(), "xvdb");
  env.toolstack().xs().write(backend(5) + "/throttle-iops-total", "500");
  start(env);
  auto limited = env.start_frontend(5, reads({"--qd", "16", "--runtime", "10", "--json"}), "limited");
  // The neighbour, meanwhile, in the same guest: never held back (below),
  // and above the limit even on a loaded machine (it does 860 to 1500 here
  // beside the limited one under other builds, several thousand alone).
  const auto free = env.run_frontend(5, reads({"--qd", "16", "--runtime", "3"}, xvdb));
  REQUIRE(free.status == 0);
  CHECK(achieved_iops(free) > 550);
  REQUIRE(limited->wait(30s) == 0);
  const std::string summary = last_json(limited->output());
  frontend_result r{0, summary, limited->output()};
  const double iops = achieved_iops(r);
  INFO(summary);
  // The first tenth of a second's worth goes at once (+1 %); a loaded
  // machine can only make it slower.
  CHECK(iops >= 475);
  CHECK(iops <= 525);
  const json a = vbd_stats(env, "5/xvda");
  CHECK(a["limit_waits"].u64() > 0u);
  CHECK(a["limited_ns"].u64() > 5'000'000'000u);  // most of the 10 s, over 16 requests
  CHECK(a["errors"]["rejected"].u64() == 0u);
  const json b = vbd_stats(env, "5/xvdb");
  CHECK(b["limit_waits"].u64() == 0u);
  CHECK(b["limited_ns"].u64() == 0u);
  const json l = limits_of(env, "5/xvda");
  CHECK(l["limits"]["iops-total"].u64() == 500u);
  CHECK(l["sources"]["toolstack"]["iops-total"].u64() == 500u);
  CHECK(limits_of(env, "5/xvdb")["limits"].members().empty());
}

TEST_CASE("limits: a burst of iops-total-max goes at once, then the rate holds") {
  sim_env env;
  env.create_guest(5);
  env.add_disk(5, env.make_image("a.img", 16 << 20).string());
  start(env);
  REQUIRE(ctl(env, {"limits", "5/xvda", "iops-total=50", "iops-total-max=600"}).status == 0);
  // The bucket holds 600 operations: 500 go without waiting.
  const auto burst = env.run_frontend(5, reads({"--qd", "16", "--ios", "500"}));
  REQUIRE(burst.status == 0);
  CHECK(parsed(burst.json)["runtime_s"].number() < 1.0);
  // Then 50 a second: of 300 more, the rest of the bucket and what leaked
  // between the runs (well under 200) go first, the others at 50 a second.
  const auto after = env.run_frontend(5, reads({"--qd", "16", "--ios", "300"}));
  REQUIRE(after.status == 0);
  CHECK(parsed(after.json)["runtime_s"].number() > 1.0);
}

TEST_CASE("limits: a change through the control socket takes effect at once and stays across a reconnect") {
  sim_env env;
  env.create_guest(5);
  env.add_disk(5, env.make_image("a.img", 16 << 20).string());
  start(env);
  REQUIRE(ctl(env, {"limits", "5/xvda", "iops-total=200"}).status == 0);
  auto fe = env.start_frontend(5, reads({"--qd", "8", "--runtime", "30"}), "guest");
  REQUIRE(env.log_shows("I/O limits in force: iops-total=200"));
  std::this_thread::sleep_for(1s);
  auto rate = [&](std::chrono::milliseconds over) {
    const auto n0 = requests(vbd_stats(env, "5/xvda"));
    const auto t0 = std::chrono::steady_clock::now();
    std::this_thread::sleep_for(over);
    const auto n1 = requests(vbd_stats(env, "5/xvda"));
    return static_cast<double>(n1 - n0) / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  const double slow = rate(2s);
  CHECK(slow <= 230);
  CHECK(slow >= 150);
  const auto changed = ctl(env, {"limits", "5/xvda", "iops-total=1000"});
  CHECK(changed.status == 0);
  CHECK(changed.out.find("  limits      iops-total=1000") != std::string::npos);
  std::this_thread::sleep_for(200ms);
  const double fast = rate(2s);
  CHECK(fast >= 800);
  CHECK(fast <= 1100);
  fe->signal(SIGTERM);
  REQUIRE(fe->wait(10s).has_value());
  // A new connection of the same vbd: the change is still in force.
  const auto again = env.run_frontend(5, reads({"--qd", "8", "--ios", "2000"}));
  REQUIRE(again.status == 0);
  const double later = achieved_iops(again);
  CHECK(later <= 1100);
  CHECK(later >= 700);
  const json l = limits_of(env, "5/xvda");
  CHECK(l["sources"]["control"]["iops-total"].u64() == 1000u);
  CHECK(l["in_force"]["iops-total"].u64() == 1000u);
  // 0 removes it.
  REQUIRE(ctl(env, {"limits", "5/xvda", "iops-total=0"}).status == 0);
  CHECK(limits_of(env, "5/xvda")["in_force"].members().empty());
}

TEST_CASE("limits: group=domain makes a guest's disks share one budget") {
  sim_env env("[io]\nworker-threads = 2\n[limits]\ngroup = \"domain\"\niops-total = 600\n");
  env.create_guest(5);
  env.add_disk(5, env.make_image("a.img", 16 << 20).string(), "xvda");
  const std::uint32_t xvdb = env.add_disk(5, env.make_image("b.img", 16 << 20).string(), "xvdb");
  start(env);
  auto a = env.start_frontend(5, reads({"--qd", "8", "--runtime", "6", "--json"}), "a");
  auto b = env.start_frontend(5, reads({"--qd", "8", "--runtime", "6", "--json"}, xvdb), "b");
  REQUIRE(a->wait(30s) == 0);
  REQUIRE(b->wait(30s) == 0);
  const double total = static_cast<double>(requests(vbd_stats(env, "5/xvda")) + requests(vbd_stats(env, "5/xvdb")));
  // 600 a second for both together over about 6 s (each started and
  // stopped at its own moment, so a little less).
  CHECK(total <= 600 * 6 * 1.1 + 100);
  CHECK(total >= 600 * 6 * 0.75);
  // Taking turns: neither is starved.
  CHECK(requests(vbd_stats(env, "5/xvda")) >= total / 4);
  CHECK(requests(vbd_stats(env, "5/xvdb")) >= total / 4);
  const json l = limits_of(env, "5/xvda");
  CHECK(l["group"].str() == "domain");
  CHECK(l["sources"]["file"]["group"].str() == "domain");
}

TEST_CASE("limits: malformed toolstack keys are logged and set aside, and the vbd serves with the other limits") {
  sim_env env("[limits]\niops-total = 5000\n");
  env.create_guest(5);
  env.add_disk(5, env.make_image("a.img", 16 << 20).string());
  env.toolstack().xs().write(backend(5) + "/throttle-iops-total", "fast");
  start(env);
  CHECK(
      env.log_shows("I/O limits: throttle-iops-total: iops-total must be a whole number, got 'fast'; the "
                    "toolstack's throttle-* keys are ignored"));
  const auto r = env.run_frontend(5, reads({"--qd", "8", "--ios", "500", "--verify"}));
  CHECK(r.status == 0);
  json l = limits_of(env, "5/xvda");
  CHECK(l["in_force"]["iops-total"].u64() == 5000u);
  CHECK(l["toolstack_problem"].str().find("throttle-iops-total") != std::string::npos);
  // Keys that parse but do not add up are set aside too, at the next
  // connection.
  env.toolstack().xs().write(backend(5) + "/throttle-iops-total", "100");
  env.toolstack().xs().write(backend(5) + "/throttle-iops-total-max", "10");
  CHECK(env.run_frontend(5, reads({"--qd", "8", "--ios", "200"})).status == 0);
  CHECK(
      env.log_shows("I/O limits: the throttle-* keys: iops-total-max (10) is below iops-total (100); the "
                    "toolstack's throttle-* keys are ignored"));
  l = limits_of(env, "5/xvda");
  CHECK(l["in_force"]["iops-total"].u64() == 5000u);
  // Good keys are taken at the next connection.
  env.toolstack().xs().write(backend(5) + "/throttle-iops-total-max", "400");
  CHECK(env.run_frontend(5, reads({"--qd", "8", "--ios", "100"})).status == 0);
  l = limits_of(env, "5/xvda");
  CHECK(l["in_force"]["iops-total"].u64() == 100u);
  CHECK(l["in_force"]["iops-total-max"].u64() == 400u);
  CHECK(l["toolstack_problem"].is(json::kind::null));
}

TEST_CASE("limits: bad requests on the control socket get an error answer and change nothing") {
  sim_env env;
  env.create_guest(5);
  env.add_disk(5, env.make_image("a.img", 16 << 20).string());
  start(env);
  REQUIRE(ctl(env, {"limits", "5/xvda", "bps-total=1000000"}).status == 0);
  const std::pair<std::vector<std::string>, std::string> cases[] = {
      {{"limits", "9/xvda"}, "no vbd 9/xvda"},
      {{"limits", "5/xvdz", "iops-total=1"}, "no vbd 5/xvdz"},
      {{"limits", "nonsense"}, "bad vbd 'nonsense'"},
      {{"limits", "5/xvda", "iops=100"}, "unknown limit 'iops'"},
      {{"limits", "5/xvda", "iops-total=-5"}, "iops-total must be a whole number, got '-5'"},
      {{"limits", "5/xvda", "iops-total=lots"}, "iops-total must be a whole number, got 'lots'"},
      {{"limits", "5/xvda", "bps-read=99999999999999999999999"}, "bps-read must be at most 1000000000000000"},
      {{"limits", "5/xvda", "iops-total=100", "iops-total-max=50"}, "iops-total-max (50) is below iops-total (100)"},
      {{"limits", "5/xvda", "iops-read-max-length=5"}, "iops-read-max-length needs iops-read-max"},
      {{"limits", "5/xvda", "bps-read=5"}, "bps-total cannot be combined with bps-read or bps-write"},
      {{"limits", "5/xvda", "iops-size=4096"}, "iops-size needs iops-total, iops-read or iops-write"},
      {{"limits", "5/xvda", "iops-total=5", "iops-total=6"}, "iops-total given twice"},
      {{"limits", "5/xvda", "iops-total"}, "usage: limits DOMID/DEVID [NAME=VALUE...]"},
      {{"limits", "5/xvda", "group=a/b"}, "group 'a/b' is not a group name"},
      {{"limits", "5/xvda", "iops-total=10", "bogus=1"}, "unknown limit 'bogus'"},
  };
  for (const auto& [args, message] : cases) {
    const auto r = ctl(env, args);
    INFO(args.back() << ": " << r.out);
    CHECK(r.status == 1);
    CHECK(r.out.starts_with("xen-blkbackctl: "));
    CHECK(r.out.find(message) != std::string::npos);
  }
  const json l = limits_of(env, "5/xvda");
  CHECK(l["in_force"]["bps-total"].u64() == 1000000u);
  CHECK(l["in_force"].members().size() == 1u);
  CHECK(l["sources"]["control"].members().size() == 1u);
  CHECK(env.run_frontend(5, reads({"--ios", "100"})).status == 0);  // the daemon serves on
}

TEST_CASE("limits: a throttled noisy guest does not raise a victim's p99") {
  sim_env env("[io]\nworker-threads = 2\n");
  env.create_guest(5);
  env.create_guest(6);
  env.add_disk(5, env.make_image("noisy.img", 64 << 20).string());
  env.add_disk(6, env.make_image("victim.img", 16 << 20).string());
  // The noisy guest: 1 MiB reads at depth 8 on two queues, held to 8 MiB/s
  // (XBD_TEST_NOISY_FREE=1 leaves it unlimited, to see this test fail).
  if (!std::getenv("XBD_TEST_NOISY_FREE"))
    env.toolstack().xs().write(backend(5) + "/throttle-bps-total", std::to_string(8 << 20));
  start(env);
  const std::vector<std::string> victim{"--devid", std::to_string(xvda), "--rw", "randread", "--bs", "4096", "--qd",
                                        "1",       "--runtime",          "4"};
  const auto solo = env.run_frontend(6, victim);
  REQUIRE(solo.status == 0);
  auto noisy = env.start_frontend(5,
                                  {"--devid", std::to_string(xvda), "--rw", "randread", "--bs", "1048576", "--qd", "8",
                                   "--queues", "2", "--runtime", "6", "--json"},
                                  "noisy");
  REQUIRE(env.log_shows("[d5/51712 xvda] state InitWait -> Connected"));
  std::this_thread::sleep_for(500ms);
  const auto beside = env.run_frontend(6, victim);
  REQUIRE(beside.status == 0);
  REQUIRE(noisy->wait(30s) == 0);
  const double p99_solo = parsed(solo.json)["lat_us"]["p99"].number();
  const double p99_beside = parsed(beside.json)["lat_us"]["p99"].number();
  INFO("victim p99 alone " << p99_solo << " us, beside the throttled guest " << p99_beside << " us");
  // Unlimited, the same noisy guest raises it tenfold or more (17 us to
  // 309 us on the development VM): XBD_TEST_NOISY_FREE=1 shows it.
  CHECK(p99_beside <= 4 * p99_solo + 50);
  // And the noisy guest was held to its limit: what it had in flight when
  // its runtime ended drained at that rate too.
  const json noisy_summary = parsed(last_json(noisy->output()));
  INFO(ctl(env, {"show", "5/xvda"}).out);
  CHECK(noisy_summary["mib_s"].number() <= 8 * 1.05);
  CHECK(noisy_summary["mib_s"].number() >= 6);
  const json n = vbd_stats(env, "5/xvda");
  CHECK(n["limit_waits"].u64() > 0u);
}
