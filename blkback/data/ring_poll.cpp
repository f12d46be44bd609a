#include "blkback/data/ring_poll.hpp"

#include <algorithm>

namespace xbd::blkback {

// Within max; below min_window it is off.
void ring_poll::set(duration w) {
  w = std::min(w, max_);
  window_ = w < min_window ? duration::zero() : w;
}

void ring_poll::hit(duration after) {
  misses_in_row_ = 0;
  set(std::max(window_, 2 * after));
}

void ring_poll::miss() {
  if (++misses_in_row_ >= misses_to_stop) {
    window_ = duration::zero();
    return;
  }
  set(window_ / 2);
}

void ring_poll::slept(duration gap) {
  if (max_ == duration::zero() || gap > max_) return;
  misses_in_row_ = 0;
  set(std::max(2 * window_, 2 * gap));
}

}  // namespace xbd::blkback
