// CPU fairness between vbds: the rules of blkback/data/fair_share.hpp, one
// by one.
#include "blkback/data/fair_share.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <thread>

using namespace xbd::blkback;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t mib = 1 << 20;

struct counting_waiter final : memory_waiter {
  int told = 0;
  void memory_freed() override { ++told; }
};

// Grace long enough that no test outlives it by accident.
std::shared_ptr<fair_share> share(std::chrono::milliseconds grace = 10s) {
  return std::make_shared<fair_share>(mib, grace);
}

// Two vbds on one share, each with the waiter of its ring.
struct heavy_and_light {
  explicit heavy_and_light(std::chrono::milliseconds grace = 10s) : s(share(grace)) {}
  std::shared_ptr<fair_share> s;
  std::shared_ptr<fair_share::member> heavy = s->join();
  std::shared_ptr<fair_share::member> light = s->join();
  counting_waiter hw;
  counting_waiter lw;

  // The light vbd competes; the heavy one runs three windows ahead and is
  // held back.
  void hold_heavy_back() {
    REQUIRE(light->start(4096, lw));
    REQUIRE(heavy->start(3 * mib, hw));
    CHECK_FALSE(heavy->start(mib, hw));
  }
};

}  // namespace

TEST_CASE("fair share: a vbd alone is never held back, however much it starts") {
  auto s = share();
  auto a = s->join();
  counting_waiter w;
  for (int i = 0; i < 1000; ++i) REQUIRE(a->start(mib, w));
  CHECK(a->waits() == 0);
}

TEST_CASE("fair share: a vbd a window ahead of a competing one waits, and is told when that one catches up") {
  heavy_and_light t;
  auto& heavy = t.heavy;
  auto& light = t.light;
  auto& hw = t.hw;
  auto& lw = t.lw;
  REQUIRE(light->start(4096, lw));  // the light vbd competes
  REQUIRE(heavy->start(mib, hw));   // within the window
  REQUIRE(heavy->start(mib, hw));   // at the window's edge: started, now beyond it
  CHECK_FALSE(heavy->start(mib, hw));
  CHECK(heavy->waits() == 1);
  CHECK(hw.told == 0);
  // The light vbd's progress moves the floor; the heavy one is told only
  // once it may start again.
  REQUIRE(light->start(512 * 1024, lw));
  CHECK(hw.told == 0);
  REQUIRE(light->start(512 * 1024, lw));
  CHECK(hw.told == 1);
  CHECK(heavy->start(mib, hw));
  CHECK(lw.told == 0);  // the light vbd never waited
}

TEST_CASE("fair share: a vbd competes for its grace after each start and not after") {
  heavy_and_light t(50ms);
  t.hold_heavy_back();
  auto& heavy = t.heavy;
  auto& hw = t.hw;
  // Its request may still be at the disk: what counts is that it started
  // nothing since, so it no longer holds anyone back.
  std::this_thread::sleep_for(60ms);
  CHECK(heavy->start(mib, hw));
  CHECK(t.s->grace() == 50ms);
}

TEST_CASE("fair share: a request started from a lease (touch) keeps its vbd competing as a start would") {
  heavy_and_light t(50ms);
  t.hold_heavy_back();
  // The light vbd's ring starts requests from the lease it bought: no
  // start(), a touch each. After two graces it still holds the heavy one.
  for (int i = 0; i < 4; ++i) {
    std::this_thread::sleep_for(25ms);
    t.light->touch(fair_share::clock::now());
  }
  CHECK_FALSE(t.heavy->start(mib, t.hw));
}

TEST_CASE("fair share: a ring that waited a whole grace in vain goes, and the vbd that held it back loses its turn") {
  heavy_and_light t;
  t.hold_heavy_back();
  auto& heavy = t.heavy;
  auto& slow = t.light;
  auto& hw = t.hw;
  auto& sw = t.lw;
  CHECK(heavy->start(mib, hw, true));  // overdue
  // The slow vbd was brought up to one window behind the heavy one (three
  // before): a window of its progress, not three, lets the heavy one on.
  CHECK_FALSE(heavy->start(4096, hw));
  REQUIRE(slow->start(mib, sw));
  CHECK(hw.told == 1);
  CHECK(heavy->start(4096, hw));
}

TEST_CASE("fair share: a guest cannot reset its debt by pausing while the others compete") {
  heavy_and_light t;
  auto& heavy = t.heavy;
  auto& light = t.light;
  auto& hw = t.hw;
  auto& lw = t.lw;
  REQUIRE(light->start(4096, lw));
  REQUIRE(heavy->start(4 * mib, hw));
  REQUIRE(light->start(4096, lw));
  CHECK_FALSE(heavy->start(4096, hw));
}

TEST_CASE("fair share: a vbd back from a long idle gets no credit for it") {
  auto s = share(50ms);
  auto a = s->join();
  auto b = s->join();
  counting_waiter aw;
  counting_waiter bw;
  // b works alone for a long while; a is idle all along.
  for (int i = 0; i < 100; ++i) REQUIRE(b->start(mib, bw));
  // a starts near b, not 100 MiB behind: b is held back after a window of
  // a's progress, not after a's 100 MiB of saved-up credit.
  REQUIRE(a->start(4096, aw));
  int b_ahead = 0;
  while (b->start(mib, bw) && b_ahead < 1000) ++b_ahead;  // b runs until a window past a
  CHECK(b_ahead <= 2);
  CHECK(b->waits() == 1);
  std::uint64_t a_started = 0;
  for (int i = 0; i < 4 && bw.told == 0; ++i) {
    REQUIRE(a->start(mib, aw));
    a_started += mib;
  }
  CHECK(bw.told == 1);
  CHECK(a_started <= 4 * mib);
}

TEST_CASE("fair share: a vbd that goes away releases those it held back") {
  heavy_and_light t;
  t.hold_heavy_back();
  auto& heavy = t.heavy;
  auto& hw = t.hw;
  t.light.reset();
  CHECK(hw.told == 1);
  CHECK(heavy->start(mib, hw));
}

TEST_CASE("fair share: a ring that stops is forgotten and never told") {
  heavy_and_light t;
  t.hold_heavy_back();
  auto& heavy = t.heavy;
  auto& light = t.light;
  auto& hw = t.hw;
  auto& lw = t.lw;
  heavy->forget(hw);
  REQUIRE(light->start(4 * mib, lw));
  CHECK(hw.told == 0);
}

TEST_CASE("fair share: a vbd waits for the slowest of the others, not the first to catch up") {
  auto s = share();
  auto heavy = s->join();
  auto b = s->join();
  auto c = s->join();
  counting_waiter hw;
  counting_waiter bw;
  counting_waiter cw;
  REQUIRE(b->start(4096, bw));
  REQUIRE(c->start(4096, cw));
  REQUIRE(heavy->start(3 * mib, hw));
  CHECK_FALSE(heavy->start(mib, hw));
  REQUIRE(b->start(8 * mib, bw));  // b is now far ahead of everybody
  CHECK(hw.told == 0);             // c still holds the heavy one back
  REQUIRE(c->start(2 * mib, cw));
  CHECK(hw.told == 1);
  CHECK(heavy->start(mib, hw));
}
