// log_budget: how much one vbd may log about what its guest does.
//
// A guest decides how many of its requests fail and how often it
// reconnects; it must not decide how much we write to the log. A vbd's
// budget is shared by its rings (they run on different threads) and lasts
// across reconnects: the first few failures in each minute are logged at
// warning, the rest at debug, and every one is counted by kind, so the line
// the vbd logs when a connection ends says honestly what went unlogged.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

namespace xbd::blkback {

enum class failure_kind { rejected, grant, io, storm };

class log_budget {
 public:
  static constexpr unsigned warnings_per_window = 5;
  static constexpr std::chrono::seconds window{60};

  // Counts one failure; true if it may be logged at warning.
  bool spend(failure_kind k) {
    ++count(k);
    const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
    auto start = window_start_.load(std::memory_order_relaxed);
    if (now - start > std::chrono::duration_cast<std::chrono::steady_clock::duration>(window).count() &&
        window_start_.compare_exchange_strong(start, now, std::memory_order_relaxed))
      spent_.store(0, std::memory_order_relaxed);
    if (spent_.fetch_add(1, std::memory_order_relaxed) < warnings_per_window) return true;
    unlogged_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }

  std::uint64_t rejected() const { return rejected_.load(std::memory_order_relaxed); }
  std::uint64_t grant_failures() const { return grant_.load(std::memory_order_relaxed); }
  std::uint64_t io_failures() const { return io_.load(std::memory_order_relaxed); }
  std::uint64_t storms() const { return storm_.load(std::memory_order_relaxed); }

  // What went unlogged since the last call, as a log line, or empty:
  // "12 guest-caused failures were logged at debug only (in all: 10 rejected, 2 grant copies, 0 I/O, 0 notify
  // storms)".
  std::string take_unlogged() {
    const auto n = unlogged_.exchange(0, std::memory_order_relaxed);
    if (n == 0) return {};
    return std::to_string(n) +
           " guest-caused failures were logged at debug only (in all: " + std::to_string(rejected()) + " rejected, " +
           std::to_string(grant_failures()) + " grant copies, " + std::to_string(io_failures()) + " I/O, " +
           std::to_string(storms()) + " notify storms)";
  }

 private:
  std::atomic<std::uint64_t>& count(failure_kind k) {
    switch (k) {
      case failure_kind::rejected:
        return rejected_;
      case failure_kind::grant:
        return grant_;
      case failure_kind::io:
        return io_;
      case failure_kind::storm:
        return storm_;
    }
    return io_;
  }
  std::atomic<std::int64_t> window_start_{std::chrono::steady_clock::now().time_since_epoch().count()};
  std::atomic<std::uint64_t> spent_{0};
  std::atomic<std::uint64_t> unlogged_{0};
  std::atomic<std::uint64_t> rejected_{0};
  std::atomic<std::uint64_t> grant_{0};
  std::atomic<std::uint64_t> io_{0};
  std::atomic<std::uint64_t> storm_{0};
};

}  // namespace xbd::blkback
