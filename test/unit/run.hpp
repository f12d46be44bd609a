// Runs a coroutine on an io_context, with a time limit, for tests. A
// coroutine that cannot finish fails the test (or, for finishes(), is
// cancelled and reported) instead of hanging it.
#pragma once

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_future.hpp>

#include <chrono>
#include <future>
#include <memory>
#include <stdexcept>

namespace xbd::test {

struct timed_out : std::runtime_error {
  timed_out() : std::runtime_error("coroutine did not finish") {}
};

namespace detail {

// The deadline is a timer in the io_context rather than run_one_for():
// Boost 1.81's io_uring backend submits the timed wait's removal without
// setting its user_data, so its completion can land on another object's
// operation (asio_xen/wakeable.hpp). Timers do not have that flaw.
template <class F>
bool drive(boost::asio::io_context& ioc, F& fut, std::chrono::milliseconds limit) {
  ioc.restart();
  auto expired = std::make_shared<bool>(false);
  boost::asio::steady_timer deadline(ioc, limit);
  deadline.async_wait([expired](const boost::system::error_code& ec) { *expired = !ec; });
  while (fut.wait_for(std::chrono::seconds(0)) != std::future_status::ready && !*expired) ioc.run_one();
  deadline.cancel();
  ioc.poll();
  return fut.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
}

}  // namespace detail

// io_context::run_for() without its flaw (see drive()): runs handlers for
// `d`, timed by a timer of the context.
inline void run_for(boost::asio::io_context& ioc, std::chrono::milliseconds d) {
  ioc.restart();
  auto expired = std::make_shared<bool>(false);
  boost::asio::steady_timer t(ioc, d);
  t.async_wait([expired](const boost::system::error_code&) { *expired = true; });
  while (!*expired) ioc.run_one();
}

template <class T>
T run(boost::asio::io_context& ioc, boost::asio::awaitable<T> a,
      std::chrono::milliseconds limit = std::chrono::milliseconds(2000)) {
  boost::asio::cancellation_signal cancel;
  auto fut = boost::asio::co_spawn(ioc, std::move(a),
                                   boost::asio::bind_cancellation_slot(cancel.slot(), boost::asio::use_future));
  if (!detail::drive(ioc, fut, limit)) {
    // Take the coroutine down so that it does not linger as a waiter.
    cancel.emit(boost::asio::cancellation_type::all);
    detail::drive(ioc, fut, std::chrono::milliseconds(1000));
    throw timed_out();
  }
  return fut.get();
}

// Whether the coroutine finishes within `limit` (for "nothing happens"
// checks); if not, it is cancelled before this returns.
template <class T>
bool finishes(boost::asio::io_context& ioc, boost::asio::awaitable<T> a,
              std::chrono::milliseconds limit = std::chrono::milliseconds(100)) {
  try {
    run(ioc, std::move(a), limit);
    return true;
  } catch (const timed_out&) {
    return false;
  }
}

}  // namespace xbd::test
