// Where the RBD driver's blocking calls run: threads of their own, never a
// ring's or the control thread.
//
// librados and librbd connect, open, close and refresh synchronously (or
// offer an asynchronous call whose completion still needs a thread to wait
// on). Each such step runs on a short-lived thread started for it; the
// coroutine that asked waits on its own executor, bounded by a deadline.
// When the deadline passes first, the coroutine goes on without the result,
// and the thread, when the library finally returns, hands the result to an
// `orphan` function of its own (which closes what was opened) instead: a
// cluster that stops answering can hold a thread, never the daemon.
//
// Threads are counted, so that a test (or the daemon at exit) can wait for
// the ones still inside the library.
#pragma once

#include "asio_xen/error.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <cerrno>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>

namespace xbd::blkback::storage::rbd {

using clock = std::chrono::steady_clock;

// Runs `job` on a new detached thread; false (and `job` not run) if none
// could be started.
bool spawn(std::function<void()> job) noexcept;
// Whether the calling thread is one that spawn() started (where blocking
// on the cluster is allowed).
bool on_background_thread();
// Threads started by spawn() that have not finished.
std::size_t background_threads();
// Waits (blocking) until none is left, at most `limit`; true if none is.
bool wait_background(std::chrono::milliseconds limit);

namespace detail {

// A result on its way from a job's thread to the coroutine waiting for it.
// `timer` and the executor are touched on the executor's thread only; the
// rest under `m`.
template <class T>
struct handoff {
  std::mutex m;
  std::optional<T> value;
  bool abandoned = false;
  boost::asio::steady_timer* timer = nullptr;
};

// Marks the handoff abandoned however the waiting coroutine ends: returned,
// or destroyed with its io_context while suspended.
template <class T>
struct abandon_on_exit {
  std::shared_ptr<handoff<T>> h;
  ~abandon_on_exit() {
    std::lock_guard lk(h->m);
    h->abandoned = true;
    h->timer = nullptr;
  }
};

}  // namespace detail

// Runs `job` on a thread of its own and waits for its result until
// `deadline`, on the calling coroutine's executor (whose thread must be the
// only one running it). ETIMEDOUT if the deadline came first: the result
// then goes to `orphan`, on the job's thread. EAGAIN if no thread could be
// started.
template <class T>
boost::asio::awaitable<asio_xen::result<T>> offload(std::function<T()> job, std::function<void(T&&)> orphan,
                                                    clock::time_point deadline) {
  namespace asio = boost::asio;
  const auto ex = co_await asio::this_coro::executor;
  auto h = std::make_shared<detail::handoff<T>>();
  asio::steady_timer timer(ex, deadline);
  h->timer = &timer;
  const detail::abandon_on_exit<T> guard{h};
  const bool started = spawn([h, ex, job = std::move(job), orphan = std::move(orphan)]() mutable {
    T v = job();
    std::unique_lock lk(h->m);
    if (h->abandoned) {
      lk.unlock();
      orphan(std::move(v));
      return;
    }
    h->value.emplace(std::move(v));
    // Under the lock: the coroutine cannot have gone (and its executor with
    // it) between the check and the post.
    asio::post(ex, [h] {
      if (h->timer) h->timer->cancel();
    });
  });
  if (!started) co_return asio_xen::failure<T>(asio_xen::error_code(EAGAIN, boost::system::generic_category()));
  co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
  std::lock_guard lk(h->m);
  h->timer = nullptr;
  if (h->value) co_return std::move(*h->value);
  h->abandoned = true;
  co_return asio_xen::failure<T>(asio_xen::error_code(ETIMEDOUT, boost::system::generic_category()));
}

}  // namespace xbd::blkback::storage::rbd
