#include "blkback/data/copy_batch.hpp"

#include <utility>

namespace xbd::blkback {

using asio_xen::error_code;

std::span<asio_xen::copy_segment> copy_batch::add(std::size_t n, std::coroutine_handle<> waiter, error_code* result) {
  const std::size_t first = used_;
  used_ += n;
  if (segments_.size() < used_) segments_.resize(used_);
  entries_.push_back({first, n, waiter, result});
  return {segments_.data() + first, n};
}

std::size_t copy_batch::run(asio_xen::gnttab_driver& d) {
  if (running_now_) return 0;
  running_now_ = true;
  std::size_t calls = 0;
  while (!entries_.empty()) calls += run_once(d);
  running_now_ = false;
  return calls;
}

namespace {

// The first failed segment's status, or success.
error_code verdict(std::span<const asio_xen::copy_segment> segs) {
  for (const auto& s : segs)
    if (s.status != GNTST_okay) return asio_xen::grant_status_error(s.status);
  return {};
}

}  // namespace

// One batch: what was added until now. Its requests are resumed only once
// every verdict is known; what they add goes into the next batch.
std::size_t copy_batch::run_once(asio_xen::gnttab_driver& d) {
  std::swap(segments_, running_segments_);
  std::swap(entries_, running_);
  running_used_ = std::exchange(used_, 0);
  std::size_t calls = 1;
  const error_code whole = d.grant_copy(std::span(running_segments_.data(), running_used_));
  for (entry& e : running_) {
    const std::span seg(running_segments_.data() + e.first, e.count);
    if (!whole) {
      *e.result = verdict(seg);
    } else if (running_.size() == 1) {
      *e.result = whole;
    } else {
      // Refused as a whole: each request alone, so that only the bad one fails.
      ++calls;
      const error_code alone = d.grant_copy(seg);
      *e.result = alone ? alone : verdict(seg);
    }
  }
  for (entry& e : running_) e.waiter.resume();
  running_.clear();
  running_used_ = 0;
  return calls;
}

void copy_batch::trim() {
  used_ = running_used_ = 0;
  segments_ = {};
  running_segments_ = {};
  entries_ = {};
  running_ = {};
}

}  // namespace xbd::blkback
