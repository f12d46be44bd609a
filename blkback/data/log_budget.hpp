// log_budget: how much one ring may log about what its guest does.
//
// A guest decides how many of its requests fail; it must not decide how
// much we write to the log. The first few failures of a connection are
// logged at warning, the rest at debug, and every one is counted by kind,
// so the line a ring logs when it stops says honestly what went unlogged.
#pragma once

#include <cstdint>
#include <string>

namespace xbd::blkback {

enum class failure_kind { rejected, grant, io };

class log_budget {
 public:
  static constexpr unsigned warnings = 5;

  // Counts one failure; true if it may be logged at warning.
  bool spend(failure_kind k) {
    ++count(k);
    return spent_++ < warnings;
  }

  std::uint64_t rejected() const { return rejected_; }
  std::uint64_t grant_failures() const { return grant_; }
  std::uint64_t io_failures() const { return io_; }

  // "12 more failures were not logged at warning (10 rejected, 2 grant copies, 0 I/O)", or empty.
  std::string unlogged() const {
    if (spent_ <= warnings) return {};
    return std::to_string(spent_ - warnings) + " more failures were not logged at warning (" +
           std::to_string(rejected_) + " rejected, " + std::to_string(grant_) + " grant copies, " +
           std::to_string(io_) + " I/O, in all)";
  }

 private:
  std::uint64_t& count(failure_kind k) {
    switch (k) {
      case failure_kind::rejected:
        return rejected_;
      case failure_kind::grant:
        return grant_;
      case failure_kind::io:
        return io_;
    }
    return io_;
  }
  std::uint64_t spent_ = 0;
  std::uint64_t rejected_ = 0;
  std::uint64_t grant_ = 0;
  std::uint64_t io_ = 0;
};

}  // namespace xbd::blkback
