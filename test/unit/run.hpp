// Runs a coroutine on an io_context, with a time limit, for tests. A
// coroutine that cannot finish fails the test (or, for finishes(), is
// cancelled and reported) instead of hanging it.
#pragma once

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <chrono>
#include <future>
#include <stdexcept>

namespace xbd::test {

struct timed_out : std::runtime_error {
  timed_out() : std::runtime_error("coroutine did not finish") {}
};

namespace detail {

template <class F>
bool drive(boost::asio::io_context& ioc, F& fut, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  ioc.restart();
  while (fut.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
    auto left = deadline - std::chrono::steady_clock::now();
    if (left <= std::chrono::steady_clock::duration::zero()) return false;
    if (ioc.run_one_for(left) == 0 && ioc.stopped()) return false;
  }
  return true;
}

}  // namespace detail

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
