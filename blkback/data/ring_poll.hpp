// ring_poll: how long a ring looks at its ring again, after a burst, before
// it sleeps (adaptive polling; docs/architecture.md, "Polling").
//
// When the ring is found empty after taking requests, a frontend that is
// about to publish the next one (a guest at queue depth 1 answers our
// response within microseconds) would otherwise have to notify us and we
// would have to wake up: a hypercall on its side, a sleep and a wake-up on
// ours. Looking at the ring for a short while first saves both when the
// request comes in time, and costs the CPU of the looks when it does not.
//
// The window adapts per ring to the gaps between the end of a burst and
// the next request:
//  - a poll that finds a request `after` some time keeps the window at
//    least twice that (the gaps of a steady guest vary);
//  - a poll that finds nothing halves the window; `misses_to_stop` misses
//    in a row, or a window below `min_window`, stop polling;
//  - a ring that slept (not polling, or after a miss) and woke to a
//    request a gap `g` after the burst ended learns from it: a gap a poll
//    could have caught (g <= max) doubles the window, and at least to 2 g;
//    a longer one teaches nothing, and the ring keeps sleeping at once.
// So a ring starts without polling, polls once a gap shows it would pay,
// follows the guest's gaps up to `max`, and a guest that pauses for
// longer than `max` costs a few halving windows, then nothing. No clock is
// read here: the caller says how long things took (the unit tests run on
// a virtual clock).
#pragma once

#include <chrono>
#include <cstdint>

namespace xbd::blkback {

class ring_poll {
 public:
  using duration = std::chrono::steady_clock::duration;

  // Shorter windows are not worth a look.
  static constexpr duration min_window = std::chrono::microseconds(1);
  static constexpr unsigned misses_to_stop = 4;

  // `max`: the longest window ([rings] poll-microseconds); zero: never poll.
  explicit ring_poll(duration max = duration::zero()) : max_(max < duration::zero() ? duration::zero() : max) {}

  // How long to look when the ring is found empty after a burst; zero:
  // sleep at once.
  duration window() const { return window_; }
  duration max() const { return max_; }

  // A poll found a request `after` it began.
  void hit(duration after);
  // A poll looked for its whole window and found nothing.
  void miss();
  // The ring slept and woke to a request `gap` after the burst ended.
  void slept(duration gap);

 private:
  void set(duration w);

  duration max_;
  duration window_ = duration::zero();
  unsigned misses_in_row_ = 0;
};

}  // namespace xbd::blkback
