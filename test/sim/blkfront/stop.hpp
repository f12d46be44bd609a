// SIGINT/SIGTERM, and the bounds that hold from then on, so that blkfront-sim
// stops within a second wherever it is.
//
// A watchdog thread owns the signals (blocked in every thread, read from a
// signalfd). At the first signal it records the time and makes stop_fd()
// readable, which every platform wait polls. From then on:
//   - the workload stops issuing; in-flight requests get `drain` to be
//     answered, then they are abandoned;
//   - the close handshake still runs, politely, until `close` after the
//     signal;
//   - at `hard` the watchdog writes a short JSON summary itself and exits the
//     process, whatever the main thread is doing (a xenstore call that does
//     not return, say). A second signal goes there at once.
// Without a signal the watchdog bounds one thing the waits cannot: a
// xenstore request. libxenstore waits for xenstored's answer without a
// limit, so a request unanswered for --timeout (checked once a second) ends
// the run the same way, with end "xenstore_stalled".
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

namespace xbd::sim::blkfront {

namespace stop_bound {
inline constexpr std::chrono::milliseconds drain{200};
inline constexpr std::chrono::milliseconds close{500};
inline constexpr std::chrono::milliseconds hard{750};
}  // namespace stop_bound

class stop_control {
 public:
  // Blocks SIGINT and SIGTERM in the calling thread, and so in every thread
  // started after it: construct it before anything starts threads
  // (libxenstore does).
  stop_control();
  ~stop_control();
  stop_control(const stop_control&) = delete;
  stop_control& operator=(const stop_control&) = delete;

  // Starts the watchdog. `domid`/`devid` go into the summary it may write;
  // `xenstore_limit` bounds one xenstore request.
  bool start(std::uint32_t domid, std::uint32_t devid, std::chrono::milliseconds xenstore_limit, std::string& err);

  // Readable from the first signal on (never drained).
  int stop_fd() const { return stop_fd_; }
  std::optional<std::chrono::steady_clock::time_point> requested_at() const;

  // Brackets a xenstore request (no system call: two atomic stores).
  void xenstore_begin(const char* what);
  void xenstore_end();

  // The main thread is about to print its summary. False if the watchdog
  // got there first (it is exiting the process).
  bool claim_output();

 private:
  void run();
  // Writes the short summary and exits the process; returns only if the
  // main thread has already claimed the output (it is about to exit).
  void emergency(const std::string& end, const std::string& error);

  int signal_fd_ = -1;
  int stop_fd_ = -1;  // eventfd: written once at the first signal
  int wake_fd_ = -1;  // eventfd: tells the watchdog to end
  std::uint32_t domid_ = 0, devid_ = 0;
  std::chrono::milliseconds xenstore_limit_{30000};
  std::atomic<std::int64_t> stop_at_ns_{0};         // steady clock; 0 = no signal yet
  std::atomic<std::int64_t> xenstore_since_ns_{0};  // 0 = no request in progress
  std::atomic<const char*> xenstore_what_{nullptr};
  std::mutex output_mu_;
  bool output_claimed_ = false;
  std::thread thread_;
};

}  // namespace xbd::sim::blkfront
