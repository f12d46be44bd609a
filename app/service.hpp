// The daemon as a systemd service (Type=notify): readiness, a status line,
// and a watchdog fed only while every event loop answers.
//
// Without NOTIFY_SOCKET (not started by systemd) every call is a no-op.
// READY=1 is sent once every device found at start-up has been picked up
// (re-attached, or set up afresh), so that `systemctl restart` returns when
// the guests are served again. With WatchdogSec= the control thread sends
// WATCHDOG=1 at half the interval, but only after every worker thread has
// run a heartbeat posted to it since the last one: a wedged worker stops the
// keep-alives and systemd restarts the daemon, which takes up the in-flight
// journals (docs/operations.md).
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace xbd::app {

class service {
 public:
  void ready(const std::string& status);
  void status(const std::string& status);
  void stopping();

  // The watchdog interval systemd asked for, or zero.
  static std::chrono::microseconds watchdog_interval();

  // One worker thread's heartbeat.
  struct worker_beat {
    boost::asio::any_io_executor ex;
    std::atomic<std::int64_t> last{0};  // steady_clock ticks of its last heartbeat
  };
  // Feeds the watchdog while every worker answers; runs until the control
  // context stops.
  boost::asio::awaitable<void> watchdog(std::vector<std::shared_ptr<worker_beat>> workers,
                                        std::chrono::microseconds interval);

 private:
  bool ready_sent_ = false;
};

}  // namespace xbd::app
