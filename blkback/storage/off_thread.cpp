#include "blkback/storage/off_thread.hpp"

namespace xbd::blkback::storage::off_thread_detail {

namespace {
std::atomic<unsigned> pending{0};
}  // namespace

bool reserve() {
  if (pending.fetch_add(1) < max_pending) return true;
  pending.fetch_sub(1);
  return false;
}

void release() { pending.fetch_sub(1); }

}  // namespace xbd::blkback::storage::off_thread_detail

namespace xbd::blkback::storage {

std::string describe_stall(off_thread_end end, std::chrono::seconds bound) {
  switch (end) {
    case off_thread_end::done:
      return {};
    case off_thread_end::timed_out:
      return "its file system did not answer within " + std::to_string(bound.count()) +
             " s (io.open-timeout-seconds; the call is left to finish in the background)";
    case off_thread_end::stopped:
      return "the daemon stops (the call is left to finish in the background)";
    case off_thread_end::too_many:
      return std::to_string(off_thread_detail::max_pending) +
             " calls to file systems that do not answer are pending already";
    case off_thread_end::no_thread:
      return "no thread for the call (out of resources)";
  }
  return {};
}

}  // namespace xbd::blkback::storage
