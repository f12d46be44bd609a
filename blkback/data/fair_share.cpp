#include "blkback/data/fair_share.hpp"

#include <algorithm>
#include <limits>

namespace xbd::blkback {

namespace {
constexpr std::uint64_t none = std::numeric_limits<std::uint64_t>::max();
}

fair_share::member::~member() {
  std::lock_guard lk(share_.mu_);
  std::erase_if(share_.waiting_, [&](const waiting_ring& r) { return r.owner == this; });
  std::erase(share_.active_, this);
  share_.advance_locked();
  if (!share_.waiting_.empty()) share_.wake_locked();
}

bool fair_share::member::start(std::uint64_t cost, memory_waiter& w, bool overdue, clock::time_point now) {
  fair_share& s = share_;
  std::lock_guard lk(s.mu_);
  s.expire_locked(now);
  const bool competing = std::find(s.active_.begin(), s.active_.end(), this) != s.active_.end();
  // Back from idle: no credit for the time away.
  if (!competing) vtime_ = std::max(vtime_, s.vnow_ > s.window_ ? s.vnow_ - s.window_ : 0);
  if (overdue) {
    s.forfeit_locked(this);
  } else if (!s.may_start_locked(this)) {
    const bool listed =
        std::any_of(s.waiting_.begin(), s.waiting_.end(), [&](const waiting_ring& r) { return r.waiter == &w; });
    if (!listed) {
      s.waiting_.push_back({&w, this});
      ++waits_;
    }
    return false;
  }
  if (!competing) s.active_.push_back(this);
  vtime_ += cost;
  touch(now);
  s.advance_locked();
  if (!s.waiting_.empty()) s.wake_locked();
  return true;
}

void fair_share::member::forget(memory_waiter& w) {
  std::lock_guard lk(share_.mu_);
  std::erase_if(share_.waiting_, [&](const waiting_ring& r) { return r.waiter == &w; });
}

std::uint64_t fair_share::member::waits() const {
  std::lock_guard lk(share_.mu_);
  return waits_;
}

void fair_share::expire_locked(clock::time_point now) {
  const auto n = std::erase_if(active_, [&](const member* a) {
    return now - clock::time_point(clock::duration(a->last_start_.load(std::memory_order_relaxed))) >= grace_;
  });
  if (n > 0) {
    advance_locked();
    if (!waiting_.empty()) wake_locked();
  }
}

std::uint64_t fair_share::floor_locked(const member* m) const {
  std::uint64_t f = none;
  for (const member* a : active_) {
    if (a != m) f = std::min(f, a->vtime_);
  }
  return f;
}

bool fair_share::may_start_locked(const member* m) const {
  const std::uint64_t f = floor_locked(m);
  return f == none || m->vtime_ <= f + window_;
}

// `m` waited a whole grace in vain: whoever held it back did not use the
// turn and is brought up to one window behind it.
void fair_share::forfeit_locked(const member* m) {
  const std::uint64_t least = m->vtime_ > window_ ? m->vtime_ - window_ : 0;
  for (member* a : active_) a->vtime_ = std::max(a->vtime_, least);
}

// The system's virtual time follows the slowest competing vbd, forward only.
void fair_share::advance_locked() {
  const std::uint64_t f = floor_locked(nullptr);
  if (f != none) vnow_ = std::max(vnow_, f);
}

// Tells every waiting ring whose vbd may start now (they try again on
// their own threads).
void fair_share::wake_locked() {
  // The lowest and second lowest virtual times once, rather than a floor
  // per waiting ring: with many vbds, a start stays linear in their number.
  const member* lowest = nullptr;
  std::uint64_t first = none;
  std::uint64_t second = none;
  for (const member* a : active_) {
    if (a->vtime_ < first) {
      second = first;
      first = a->vtime_;
      lowest = a;
    } else if (a->vtime_ < second) {
      second = a->vtime_;
    }
  }
  std::erase_if(waiting_, [&](const waiting_ring& r) {
    const std::uint64_t f = r.owner == lowest ? second : first;
    if (f != none && r.owner->vtime_ > f + window_) return false;
    r.waiter->memory_freed();
    return true;
  });
}

}  // namespace xbd::blkback
