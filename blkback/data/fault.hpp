// Fault points for the crash-recovery tests: places in the data path where
// a test can have the daemon killed (or, in unit tests, a call cut short).
//
// Off unless XBD_FAULT names a point ("journal-take:3": the third time the
// journal takes a request, the process is SIGKILLed; "consumed:3:stall":
// the thread that gets there blocks for an hour instead, a wedged worker). When off, a point
// costs one relaxed load of a flag that never changes.
#pragma once

#include <atomic>
#include <functional>
#include <string_view>

namespace xbd::blkback::fault {

enum class point {
  consumed,         // a request taken from the ring and journaled, before its I/O starts
  io_started,       // a storage operation started, not yet completed
  completed,        // a request's I/O done, its response not yet written
  responded,        // a response written into the ring, not yet pushed
  pushed,           // responses pushed, the frontend not yet notified
  journal_take,     // inside the journal's take(): the entry written, not yet marked in flight
  journal_respond,  // inside responding: rsp_prod_pvt advanced, the entry not yet freed
};

std::string_view to_string(point p);

extern std::atomic<bool> armed;
void reached(point p);

inline void at(point p) {
  if (armed.load(std::memory_order_relaxed)) [[unlikely]]
    reached(p);
}

// Reads XBD_FAULT; false (and a message on stderr) if it is set and bad.
bool arm_from_environment();
// Tests: run `f` at the n-th time `p` is reached (f may throw to cut the
// caller short).
void arm(point p, unsigned n, std::function<void()> f);
void disarm();

}  // namespace xbd::blkback::fault
