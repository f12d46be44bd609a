// I/O limits (blkback/data/throttle.hpp) on a virtual clock: the rates,
// the bursts QEMU's names describe, iops-size, groups, and the checks of
// every value.
#include "blkback/data/throttle.hpp"

#include <doctest/doctest.h>

#include <chrono>

using namespace xbd::blkback;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

throttle_limits parse(std::initializer_list<std::pair<const char*, const char*>> kv) {
  throttle_settings s;
  for (const auto& [k, v] : kv) REQUIRE(s.set(k, v).empty());
  const auto l = s.limits();
  REQUIRE(validate(l).empty());
  return l;
}

// A guest that always has a request ready: the requests of `bytes` a
// member lets through between `from` and `to`, asking again as soon as it
// is told it may.
std::uint64_t greedy(throttle_group::member& m, clock_type::time_point from, clock_type::time_point to,
                     std::uint64_t bytes = 4096, bool write = false) {
  std::uint64_t n = 0;
  // Without a limit on this direction everything goes at once: stop
  // counting somewhere.
  for (auto now = from; now < to && n < 1'000'000;) {
    const auto w = m.take(now, write, bytes);
    if (w == clock_type::duration::zero()) {
      ++n;
    } else {
      now += w;
    }
  }
  return n;
}

struct no_waiter final : throttle_waiter {
  int told = 0;
  void limits_changed() override { ++told; }
};

}  // namespace

TEST_CASE("iops-total=1000 lets 1000 requests a second through, after a tenth of a second's allowance") {
  auto g = std::make_shared<throttle_group>("");
  const auto t0 = clock_type::time_point{} + 1h;
  g->configure(parse({{"iops-total", "1000"}}), t0);
  auto m = g->join();
  // At once: the bucket's size, a tenth of a second at the rate (and the
  // request that finds it just full).
  CHECK(greedy(*m, t0, t0 + 1ns) == 101);
  const std::uint64_t ten_seconds = greedy(*m, t0 + 1ns, t0 + 10s);
  CHECK(ten_seconds >= 9990);
  CHECK(ten_seconds <= 10001);
}

TEST_CASE("bps-read limits reads by bytes and leaves writes alone") {
  auto g = std::make_shared<throttle_group>("");
  const auto t0 = clock_type::time_point{} + 1h;
  g->configure(parse({{"bps-read", "1048576"}}), t0);
  auto m = g->join();
  (void)greedy(*m, t0, t0 + 1s, 65536);  // the allowance
  const std::uint64_t reads = greedy(*m, t0 + 1s, t0 + 11s, 65536);
  CHECK(reads >= 159);  // 10 MiB in 64 KiB requests
  CHECK(reads <= 161);
  CHECK(greedy(*m, t0 + 11s, t0 + 11s + 1ms, 65536, true) > 10000);
}

TEST_CASE("a burst: iops-total=100, -max=1000, -max-length=2 runs at 1000/s for about two seconds, then at 100/s") {
  auto g = std::make_shared<throttle_group>("");
  const auto t0 = clock_type::time_point{} + 1h;
  g->configure(parse({{"iops-total", "100"}, {"iops-total-max", "1000"}, {"iops-total-max-length", "2"}}), t0);
  auto m = g->join();
  // The burst bucket lets a tenth of a second at the burst rate through at
  // once, then the burst rate holds.
  CHECK(greedy(*m, t0, t0 + 1ns) == 101);
  const std::uint64_t first_second = greedy(*m, t0 + 1ns, t0 + 1s);
  CHECK(first_second >= 995);
  CHECK(first_second <= 1001);
  // The main bucket (max x max-length = 2000 operations, leaking 100/s)
  // fills after about 2.1 s (1110 more at 1000/s), and from then on the
  // rate is 100/s (89 more by 3 s).
  const std::uint64_t burst_end = greedy(*m, t0 + 1s, t0 + 3s);
  CHECK(burst_end >= 1150);
  CHECK(burst_end <= 1250);
  const std::uint64_t steady = greedy(*m, t0 + 3s, t0 + 13s);
  CHECK(steady >= 995);
  CHECK(steady <= 1001);
  // Idle long enough to empty the buckets, and the burst is there again.
  CHECK(greedy(*m, t0 + 60s, t0 + 61s) >= 1090);
}

TEST_CASE("a burst rate with the default length lets max operations through at once") {
  auto g = std::make_shared<throttle_group>("");
  const auto t0 = clock_type::time_point{} + 1h;
  g->configure(parse({{"iops-write", "10"}, {"iops-write-max", "500"}}), t0);
  auto m = g->join();
  CHECK(greedy(*m, t0, t0 + 1ns, 4096, true) == 501);
  CHECK(greedy(*m, t0 + 1ns, t0 + 10s, 4096, true) <= 101);
}

TEST_CASE("iops-size counts a large request as several operations") {
  auto g = std::make_shared<throttle_group>("");
  const auto t0 = clock_type::time_point{} + 1h;
  g->configure(parse({{"iops-total", "100"}, {"iops-size", "4096"}}), t0);
  auto m = g->join();
  (void)greedy(*m, t0, t0 + 1ns, 65536);
  // 64 KiB = 16 operations: 100/s is 6.25 requests a second.
  const std::uint64_t big = greedy(*m, t0 + 1ns, t0 + 16s, 65536);
  CHECK(big >= 99);
  CHECK(big <= 101);
  // A request smaller than iops-size is one operation.
  const std::uint64_t small = greedy(*m, t0 + 100s, t0 + 110s, 512);
  CHECK(small >= 999);
  CHECK(small <= 1012);
}

TEST_CASE("the vbds of a group share one budget and take turns") {
  auto g = std::make_shared<throttle_group>("domain/5");
  const auto t0 = clock_type::time_point{} + 1h;
  g->configure(parse({{"iops-total", "1000"}}), t0);
  auto a = g->join();
  auto b = g->join();
  CHECK(g->members() == 2u);
  // Both greedy, interleaved in time as two rings on two threads would be.
  std::uint64_t na = 0, nb = 0;
  auto ta = t0, tb = t0;
  while (ta < t0 + 10s || tb < t0 + 10s) {
    if (ta <= tb) {
      const auto w = a->take(ta, false, 4096);
      if (w == clock_type::duration::zero()) ++na;
      ta += w == clock_type::duration::zero() ? 1us : w;
    } else {
      const auto w = b->take(tb, true, 4096);
      if (w == clock_type::duration::zero()) ++nb;
      tb += w == clock_type::duration::zero() ? 1us : w;
    }
  }
  INFO(na << " and " << nb);
  CHECK(na + nb >= 9990);
  CHECK(na + nb <= 10102);
  CHECK(na >= 4500);
  CHECK(nb >= 4500);
}

TEST_CASE("a ring that does not use its turn loses it after the grace") {
  auto g = std::make_shared<throttle_group>("g");
  const auto t0 = clock_type::time_point{} + 1h;
  g->configure(parse({{"iops-total", "10"}}), t0);
  auto a = g->join();
  auto b = g->join();
  (void)greedy(*a, t0, t0 + 1ns);
  const auto wa = a->take(t0 + 1ns, false, 0);  // a waits first: its turn comes first
  REQUIRE(wa > 0ns);
  const auto due = t0 + 1ns + wa;
  CHECK(b->take(due, false, 0) == throttle_group::grace);
  // a never comes back (its ring waits for memory): b goes after the grace.
  CHECK(b->take(due + throttle_group::grace, false, 0) == clock_type::duration::zero());
}

TEST_CASE("new limits wake the waiting rings, and the same limits again change nothing") {
  auto g = std::make_shared<throttle_group>("");
  const auto t0 = clock_type::time_point{} + 1h;
  auto waiter = std::make_shared<no_waiter>();
  auto& w = *waiter;
  auto m = g->join(waiter);
  CHECK(m->take(t0, false, 1u << 20) == clock_type::duration::zero());  // no limits
  g->configure(parse({{"bps-total", "1000"}}), t0);
  CHECK(w.told == 1);
  CHECK(m->take(t0, false, 1u << 20) == clock_type::duration::zero());
  CHECK(m->take(t0, false, 4096) > 1000s);
  g->configure(parse({{"bps-total", "1000"}}), t0 + 1s);
  CHECK(w.told == 1);
  CHECK(m->take(t0 + 1s, false, 4096) > 1000s);  // still full: no fresh burst
  g->configure({}, t0 + 2s);
  CHECK(w.told == 2);
  CHECK(m->take(t0 + 2s, false, 4096) == clock_type::duration::zero());
}

TEST_CASE("a corrected charge gives back what a request did not carry") {
  auto g = std::make_shared<throttle_group>("");
  const auto t0 = clock_type::time_point{} + 1h;
  g->configure(parse({{"bps-total", "100000"}}), t0);
  auto m = g->join();
  CHECK(m->take(t0, true, 1u << 20) == clock_type::duration::zero());
  CHECK(m->take(t0, true, 4096) > 9s);
  m->correct(true, 1u << 20, 0, false);  // not taken after all
  CHECK(m->take(t0, true, 4096) == clock_type::duration::zero());
}

TEST_CASE("a group is shared by name while a vbd holds it") {
  throttle_registry r;
  auto a = r.get("domain/5");
  auto b = r.get("domain/5");
  CHECK(a == b);
  CHECK(r.get("domain/6") != a);
  a->configure(parse({{"iops-total", "10"}}), clock_type::time_point{});
  a.reset();
  b.reset();
  // Nobody held it: the next vbd to name it starts afresh.
  CHECK(r.get("domain/5")->limits() == throttle_limits{});
}

TEST_CASE("limits are parsed by QEMU's names and every bad value is refused with a reason") {
  throttle_settings s;
  CHECK(s.set("iops-total", "1000").empty());
  CHECK(s.set("bps-write-max-length", "3").empty());
  CHECK(s.set("group", "domain").empty());
  CHECK(s.describe() == "iops-total=1000 bps-write-max-length=3 group=domain");
  REQUIRE(s.set("bps-write", "0").empty());
  CHECK(s.describe() == "bps-write=0 iops-total=1000 bps-write-max-length=3 group=domain");
  CHECK(describe(s.limits()) == "bps-write-max-length=3 iops-total=1000");  // by kind
  CHECK(s.set("iops", "1") == "unknown limit 'iops'");
  CHECK(s.set("iops-read", "-1") == "iops-read must be a whole number, got '-1'");
  CHECK(s.set("iops-read", "+1") == "iops-read must be a whole number, got '+1'");
  CHECK(s.set("iops-read", "") == "iops-read must be a whole number, got ''");
  CHECK(s.set("iops-read", "1e3") == "iops-read must be a whole number, got '1e3'");
  CHECK(s.set("iops-read", "ten") == "iops-read must be a whole number, got 'ten'");
  CHECK(s.set("bps-read", "99999999999999999999999").find("must be at most 1000000000000000") != std::string::npos);
  CHECK(s.set("bps-read", "1000000000000001").find("must be at most") != std::string::npos);
  CHECK(s.set("group", "a/b").find("is not a group name") != std::string::npos);
  CHECK(s.set("group", std::string(65, 'g')).find("is not a group name") != std::string::npos);
  CHECK(s.set("group", "").empty());
}

TEST_CASE("the combinations QEMU refuses are refused") {
  auto check = [](std::initializer_list<std::pair<const char*, const char*>> kv) {
    throttle_settings s;
    for (const auto& [k, v] : kv) REQUIRE(s.set(k, v).empty());
    return validate(s.limits());
  };
  CHECK(check({{"iops-total", "10"}, {"iops-read", "5"}}) ==
        "iops-total cannot be combined with iops-read or iops-write");
  CHECK(check({{"bps-total", "10"}, {"bps-write", "5"}}) == "bps-total cannot be combined with bps-read or bps-write");
  CHECK(check({{"iops-total-max", "10"}}) == "iops-total-max needs iops-total");
  CHECK(check({{"iops-total", "100"}, {"iops-total-max", "10"}}) == "iops-total-max (10) is below iops-total (100)");
  CHECK(check({{"bps-read", "100"}, {"bps-read-max-length", "5"}}) == "bps-read-max-length needs bps-read-max");
  CHECK(check({{"iops-size", "4096"}}) == "iops-size needs iops-total, iops-read or iops-write");
  CHECK(check({{"bps-total", "1"}, {"bps-total-max", "1000000000000000"}, {"bps-total-max-length", "2"}}) ==
        "bps-total-max x bps-total-max-length must be at most 1000000000000000");
  CHECK(check({{"iops-read", "5"}, {"iops-write", "7"}, {"bps-total", "1"}}).empty());
  // 0 removes a limit; a max-length of 0 is the default.
  CHECK(check({{"iops-total", "0"}, {"iops-total-max", "0"}, {"iops-total-max-length", "0"}}).empty());
}

TEST_CASE("sources overlay name by name") {
  throttle_settings file, keys, cli;
  REQUIRE(file.set("iops-total", "1000").empty());
  REQUIRE(file.set("bps-total", "5000000").empty());
  REQUIRE(keys.set("iops-total", "200").empty());
  REQUIRE(cli.set("bps-total", "0").empty());
  throttle_settings all = file;
  all.overlay(keys);
  all.overlay(cli);
  const auto l = all.limits();
  CHECK(l[throttle_kind::iops_total].avg == 200);
  CHECK(l[throttle_kind::bps_total].avg == 0);
  CHECK(all.group_name().empty());
}
