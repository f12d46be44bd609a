#include "app/service.hpp"

#include "blkback/log.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <systemd/sd-daemon.h>

namespace xbd::app {

namespace asio = boost::asio;

void service::ready(const std::string& status) {
  if (ready_sent_) return;
  ready_sent_ = true;
  (void)sd_notify(0, ("READY=1\nSTATUS=" + status).c_str());
}

void service::status(const std::string& status) { (void)sd_notify(0, ("STATUS=" + status).c_str()); }

void service::stopping() { (void)sd_notify(0, "STOPPING=1\nSTATUS=answering requests in flight, then exiting"); }

std::chrono::microseconds service::watchdog_interval() {
  std::uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) <= 0) return std::chrono::microseconds::zero();
  return std::chrono::microseconds(usec);
}

asio::awaitable<void> service::watchdog(std::vector<std::shared_ptr<worker_beat>> workers,
                                        std::chrono::microseconds interval) {
  blkback::logger lg;
  asio::steady_timer timer(co_await asio::this_coro::executor);
  const auto period = interval / 2;
  bool complained = false;
  for (;;) {
    const auto asked = std::chrono::steady_clock::now().time_since_epoch().count();
    for (auto& w : workers)
      asio::post(w->ex, [w] { w->last.store(std::chrono::steady_clock::now().time_since_epoch().count()); });
    timer.expires_after(period);
    co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    bool all = true;
    for (auto& w : workers) all = all && w->last.load() >= asked;
    if (all) {
      (void)sd_notify(0, "WATCHDOG=1");
      complained = false;
    } else if (!complained) {
      complained = true;
      XBD_LOG(lg, error) << "a worker thread has not run for " << period.count() / 1000
                         << " ms; no longer feeding systemd's watchdog";
    }
  }
}

}  // namespace xbd::app
