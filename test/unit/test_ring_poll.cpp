// Adaptive polling (blkback/data/ring_poll.hpp) on a virtual clock: a
// simulated guest publishes requests with given gaps after each burst, and
// the ring polls or sleeps as ring_poll says.
#include "blkback/data/ring_poll.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <vector>

using namespace xbd::blkback;
using namespace std::chrono_literals;
using duration = ring_poll::duration;

namespace {

// What a run of gaps cost and saved.
struct outcome {
  unsigned hits = 0;    // requests a poll found: no notification, no wake-up
  unsigned misses = 0;  // polls that found nothing
  unsigned sleeps = 0;  // requests that needed a notification
  duration polled{};    // time spent polling
};

// The ring finds itself empty after a burst; the guest's next request
// comes `gap` later. As queue::serve_ring does: poll for the window, and
// on a miss (or without a window) sleep until the request comes.
void next(ring_poll& p, duration gap, outcome& o) {
  const duration w = p.window();
  if (w > duration::zero() && gap <= w) {
    ++o.hits;
    o.polled += gap;
    p.hit(gap);
    return;
  }
  if (w > duration::zero()) {
    ++o.misses;
    o.polled += w;
    p.miss();
  }
  ++o.sleeps;
  p.slept(gap);
}

outcome run(ring_poll& p, const std::vector<duration>& gaps) {
  outcome o;
  for (const duration g : gaps) {
    next(p, g, o);
    CHECK(p.window() <= p.max());
  }
  return o;
}

std::vector<duration> repeat(duration gap, unsigned n) { return std::vector<duration>(n, gap); }

}  // namespace

TEST_CASE("ring_poll: with a maximum of zero it never polls") {
  ring_poll p;
  const auto o = run(p, repeat(5us, 1000));
  CHECK(o.hits == 0u);
  CHECK(o.misses == 0u);
  CHECK(o.polled == duration::zero());
  CHECK(p.window() == duration::zero());
}

TEST_CASE("ring_poll: a new ring sleeps at once, and polls from the first gap a poll would have caught") {
  ring_poll p(50us);
  CHECK(p.window() == duration::zero());
  outcome o;
  next(p, 10us, o);
  CHECK(o.sleeps == 1u);
  CHECK(p.window() == 20us);
  next(p, 10us, o);
  CHECK(o.hits == 1u);
}

TEST_CASE("ring_poll: a guest at queue depth 1 is caught by polling, at the cost of its gaps only") {
  ring_poll p(50us);
  const auto o = run(p, repeat(8us, 10000));
  CHECK(o.sleeps == 1u);
  CHECK(o.misses == 0u);
  CHECK(o.hits == 9999u);
  CHECK(o.polled == 9999 * duration(8us));
}

TEST_CASE("ring_poll: gaps that vary are followed up to the maximum, never beyond") {
  ring_poll p(100us);
  std::vector<duration> gaps;
  for (unsigned i = 0; i < 1000; ++i) gaps.push_back(duration(std::chrono::microseconds(5 + (i * 7) % 40)));
  const auto o = run(p, gaps);
  // The window grows to twice the longest gap seen (44 us): everything
  // after the first few is caught.
  CHECK(o.hits >= 990u);
  CHECK(o.misses <= 5u);
  CHECK(p.window() >= 80us);
  CHECK(p.window() <= 100us);
}

TEST_CASE("ring_poll: a guest that pauses longer than the maximum stops the polling after a few windows") {
  ring_poll p(50us);
  run(p, repeat(10us, 100));
  REQUIRE(p.window() > duration::zero());
  // Now it pauses 5 ms between requests: each poll misses, the window
  // halves, and after misses_to_stop misses in a row it is off for good.
  const auto o = run(p, repeat(5ms, 1000));
  CHECK(o.misses <= ring_poll::misses_to_stop);
  CHECK(o.polled <= 50us);  // 20 + 10 + 5 + 2.5: less than one full window
  CHECK(o.sleeps == 1000u);
  CHECK(p.window() == duration::zero());
}

TEST_CASE("ring_poll: a miss halves the window, misses_to_stop in a row turn it off") {
  ring_poll p(1000us);
  p.slept(400us);
  CHECK(p.window() == 800us);
  p.miss();
  CHECK(p.window() == 400us);
  p.miss();
  CHECK(p.window() == 200us);
  p.hit(10us);  // a hit ends the streak, and keeps the window
  CHECK(p.window() == 200us);
  for (unsigned i = 1; i < ring_poll::misses_to_stop; ++i) {
    p.miss();
    CHECK(p.window() > duration::zero());
  }
  p.miss();
  CHECK(p.window() == duration::zero());
}

TEST_CASE("ring_poll: a window shrinks to nothing below min_window") {
  ring_poll p(1000us);
  p.slept(1us);
  CHECK(p.window() == 2us);
  p.miss();
  CHECK(p.window() == 1us);
  p.miss();
  CHECK(p.window() == duration::zero());
}

TEST_CASE("ring_poll: a gap the window just missed, within the maximum, widens it to catch the next") {
  ring_poll p(100us);
  p.slept(10us);
  REQUIRE(p.window() == 20us);
  outcome o;
  next(p, 30us, o);  // missed: polled 20 us, then slept
  CHECK(o.misses == 1u);
  CHECK(p.window() == 60us);
  next(p, 30us, o);
  CHECK(o.hits == 1u);
}

TEST_CASE("ring_poll: gaps longer than the maximum never start polling") {
  ring_poll p(50us);
  const auto o = run(p, repeat(51us, 1000));
  CHECK(o.misses == 0u);
  CHECK(o.polled == duration::zero());
}

TEST_CASE("ring_poll: bursts with pauses between them cost at most a few windows per pause") {
  ring_poll p(50us);
  outcome o;
  for (unsigned burst = 0; burst < 100; ++burst) {
    for (unsigned i = 0; i < 50; ++i) next(p, 6us, o);
    next(p, 20ms, o);
  }
  // Every pause costs one missed window (12 us, twice the gaps) and the
  // one request after it a sleep; everything else is caught.
  CHECK(o.misses == 100u);
  CHECK(o.hits >= 100u * 49u);
  CHECK(o.polled <= 100 * 50 * duration(6us) + 100 * duration(12us));
}
