#include "blkback/data/memory.hpp"

#include <malloc.h>
#include <sys/mman.h>

#include <algorithm>
#include <bit>

namespace xbd::blkback {

memory_budget::account::~account() {
  // Rings give everything back before they go; a remainder is counted
  // back here so that the budget never leaks.
  std::lock_guard lk(budget_.mu_);
  if (committed_ > 0) {
    budget_.committed_ -= committed_;
    --budget_.holders_;
    budget_.wake_locked();
  }
}

bool memory_budget::account::grow(std::uint64_t bytes, bool ring_idle, memory_waiter& w) {
  memory_budget& b = budget_;
  std::lock_guard lk(b.mu_);
  const bool fits = b.committed_ + bytes <= b.limit_;
  const bool polite = !b.others_wait_locked(this) || committed_ + bytes <= b.fair_share_locked();
  if (ring_idle || (fits && polite)) {
    if (committed_ == 0) ++b.holders_;
    committed_ += bytes;
    b.committed_ += bytes;
    peak_ = std::max(peak_, committed_);
    b.peak_ = std::max(b.peak_, b.committed_);
    return true;
  }
  const bool listed = std::any_of(b.waiting_list_.begin(), b.waiting_list_.end(),
                                  [&](const waiting_ring& r) { return r.waiter == &w; });
  if (!listed) {
    b.waiting_list_.push_back({&w, this});
    b.waiting_.store(static_cast<unsigned>(b.waiting_list_.size()), std::memory_order_relaxed);
    ++waits_;
    ++b.waits_;
  }
  return false;
}

void memory_budget::account::shrink(std::uint64_t bytes) {
  memory_budget& b = budget_;
  std::lock_guard lk(b.mu_);
  bytes = std::min(bytes, committed_);
  committed_ -= bytes;
  b.committed_ -= bytes;
  if (committed_ == 0 && bytes > 0) --b.holders_;
  b.wake_locked();
}

void memory_budget::account::forget(memory_waiter& w) {
  memory_budget& b = budget_;
  std::lock_guard lk(b.mu_);
  std::erase_if(b.waiting_list_, [&](const waiting_ring& r) { return r.waiter == &w; });
  b.waiting_.store(static_cast<unsigned>(b.waiting_list_.size()), std::memory_order_relaxed);
}

bool memory_budget::account::should_yield() const {
  if (!pressure()) return false;
  std::lock_guard lk(budget_.mu_);
  return budget_.others_wait_locked(this) && committed_ > budget_.fair_share_locked();
}

memory_budget::account::totals memory_budget::account::usage() const {
  std::lock_guard lk(budget_.mu_);
  return {committed_, peak_, waits_};
}

memory_usage memory_budget::usage() const {
  std::lock_guard lk(mu_);
  return {limit_, committed_, peak_, waits_, holders_};
}

// The budget divided by the vbds that hold memory, counting the asker.
std::uint64_t memory_budget::fair_share_locked() const { return limit_ / std::max(1u, holders_ + 1); }

bool memory_budget::others_wait_locked(const account* a) const {
  return std::any_of(waiting_list_.begin(), waiting_list_.end(), [&](const waiting_ring& r) { return r.owner != a; });
}

// Every waiting ring tries again; those that still do not fit come back.
void memory_budget::wake_locked() {
  if (waiting_list_.empty()) return;
  for (const waiting_ring& r : waiting_list_) r.waiter->memory_freed();
  waiting_list_.clear();
  waiting_.store(0, std::memory_order_relaxed);
}

std::uint8_t buffer_cache::order_for(std::size_t bytes) {
  const std::size_t pages = std::max<std::size_t>(1, (bytes + page - 1) / page);
  return static_cast<std::uint8_t>(std::bit_width(pages - 1));
}

buffer_cache::~buffer_cache() { trim(std::chrono::steady_clock::duration::zero()); }

std::optional<buffer_cache::chunk> buffer_cache::take(std::size_t bytes, bool ring_idle, memory_waiter& w) {
  const std::uint8_t order = order_for(bytes);
  if (free_.size() <= order) free_.resize(order + 1u);
  // A vbd over its share while others wait gives its cache back first.
  if (account_->should_yield()) trim(std::chrono::steady_clock::duration::zero());
  auto& list = free_[order];
  if (!list.empty()) {
    chunk c = list.back().c;
    list.pop_back();
    cached_bytes_ -= bytes_of(order);
    return c;
  }
  chunk c;
  if (!map(order, ring_idle, w, c)) return std::nullopt;
  return c;
}

// A new chunk within the budget. When the budget is full and this ring
// caches chunks of other sizes, those go first. A failed mmap gives a chunk
// without data: the request fails, nothing waits for it.
bool buffer_cache::map(std::uint8_t order, bool ring_idle, memory_waiter& w, chunk& out) {
  const std::size_t bytes = bytes_of(order);
  if (!account_->grow(bytes, ring_idle, w)) {
    if (cached_bytes_ == 0) return false;
    trim(std::chrono::steady_clock::duration::zero());
    if (!account_->grow(bytes, ring_idle, w)) return false;
    account_->forget(w);
  }
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    account_->shrink(bytes);
    out = chunk{};
    return true;
  }
  out = chunk{static_cast<std::byte*>(p), order};
  return true;
}

void buffer_cache::give(chunk c, std::chrono::steady_clock::time_point now) {
  if (c.data == nullptr) return;
  if (account_->pressure() && account_->should_yield()) {
    unmap(c);
    return;
  }
  if (free_.size() <= c.order) free_.resize(c.order + 1u);
  free_[c.order].push_back({c, now});
  cached_bytes_ += bytes_of(c.order);
}

void buffer_cache::trim(std::chrono::steady_clock::duration idle) {
  if (cached_bytes_ == 0) return;
  const auto cutoff = std::chrono::steady_clock::now() - idle;
  for (auto& list : free_) {
    // Oldest first: the front has been free the longest.
    auto end = std::find_if(list.begin(), list.end(), [&](const cached& e) { return e.since > cutoff; });
    for (auto it = list.begin(); it != end; ++it) {
      cached_bytes_ -= bytes_of(it->c.order);
      unmap(it->c);
    }
    list.erase(list.begin(), end);
  }
}

void buffer_cache::unmap(chunk c) {
  ::munmap(c.data, bytes_of(c.order));
  account_->shrink(bytes_of(c.order));
}

#if defined(__SANITIZE_ADDRESS__)
#define XBD_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define XBD_ASAN 1
#endif
#endif

void return_free_heap() {
#ifndef XBD_ASAN
  ::malloc_trim(0);
#endif
}

}  // namespace xbd::blkback
