// off_thread: a call that can block in the kernel for as long as a file
// system does not answer, run on a thread of its own and waited for with a
// bound, so that the control thread, which serves every vbd, never waits
// for one vbd's storage.
//
// open(2) and fstat(2) of an image on a hard-mounted NFS whose server is
// gone, or on a FUSE file system whose daemon is stuck, sleep in the kernel
// until the server answers; nothing can interrupt them. Run on the control
// thread, one such call would hold up every other vbd's state machine,
// guests starting and guests going. Run here, the call's vbd alone waits:
// past the bound it is told `timed_out` (its thread is left to finish
// whenever the kernel lets it, and what it returns then is destroyed on
// that thread). The opens stuck at once are bounded; past that, an open
// fails at once as `too_many` rather than piling up threads behind a dead
// server (size reads are not counted: a vbd runs one at a time).
// The threads are kept for reuse while they are idle (off_thread_detail::
// start): the resize poll checks every vbd on a network file system each
// second, and a thread started and ended per check cost more than the check.
// A call never waits for a busy thread: with none idle, another starts.
// docs/storage.md, "When the file system does not answer".
#pragma once

#include "asio_xen/error.hpp"
#include "asio_xen/wakeable.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

namespace xbd::blkback::storage {

enum class off_thread_end { done, timed_out, stopped, too_many, no_thread };

// Ends the wait of a run_off_thread() early (the daemon stops): it returns
// `stopped`, and the call is left to finish. One thread: the waiter's.
class off_thread_stop {
 public:
  void stop() {
    stopped_ = true;
    if (auto w = waiter_.lock()) w->wake();
  }
  bool stopped() const { return stopped_; }
  void watch(const std::shared_ptr<asio_xen::wakeable_wait>& w) { waiter_ = w; }

 private:
  bool stopped_ = false;
  std::weak_ptr<asio_xen::wakeable_wait> waiter_;
};

namespace off_thread_detail {

// Counted calls started and not yet returned, in the whole daemon.
inline constexpr unsigned max_pending = 256;
bool reserve();
void release();

// Runs `task` on an idle thread of the pool, or on a new one if none is
// idle; false if no thread could be started. A thread idle for
// idle_linger ends. The task is destroyed on the thread that ran it.
inline constexpr std::chrono::seconds idle_linger{30};
bool start(std::function<void()> task);
// Threads of the pool that exist now, busy or idle (for tests).
unsigned threads();

template <class T>
struct state {
  explicit state(int fd) : efd(fd) {}
  ~state() {
    if (efd >= 0) ::close(efd);
  }
  state(const state&) = delete;
  state& operator=(const state&) = delete;
  const int efd;
  std::mutex m;
  std::optional<T> value;
};

}  // namespace off_thread_detail

// For a log line or an error node: why a call has no result.
std::string describe_stall(off_thread_end end, std::chrono::seconds bound);

// Runs `fn` (returning T) on a thread of its own; its result, or why there
// is none. `fn` and T must be safe to destroy on that thread. `stop`, if
// given, may end the wait early. `counted`: the call counts against
// max_pending (a caller that bounds its own calls need not).
template <class T, class F>
boost::asio::awaitable<std::pair<off_thread_end, std::optional<T>>> run_off_thread(F fn,
                                                                                   std::chrono::milliseconds bound,
                                                                                   off_thread_stop* stop = nullptr,
                                                                                   bool counted = true) {
  using st = off_thread_detail::state<T>;
  if (stop && stop->stopped()) co_return std::pair{off_thread_end::stopped, std::optional<T>{}};
  const int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd < 0) co_return std::pair{off_thread_end::no_thread, std::optional<T>{}};
  auto s = std::make_shared<st>(efd);
  if (counted && !off_thread_detail::reserve()) co_return std::pair{off_thread_end::too_many, std::optional<T>{}};
  // Shared, so that a move-only `fn` fits in a std::function.
  auto call = std::make_shared<F>(std::move(fn));
  const bool started = off_thread_detail::start([s, call = std::move(call), counted]() mutable {
    T v = (*call)();
    call.reset();
    {
      const std::lock_guard g(s->m);
      s->value.emplace(std::move(v));
    }
    const std::uint64_t one = 1;
    (void)!::write(s->efd, &one, sizeof one);
    if (counted) off_thread_detail::release();
  });
  if (!started) {
    if (counted) off_thread_detail::release();
    co_return std::pair{off_thread_end::no_thread, std::optional<T>{}};
  }
  const auto ex = co_await boost::asio::this_coro::executor;
  auto w = asio_xen::wakeable_wait::create(ex, s->efd);
  if (!w) co_return std::pair{off_thread_end::no_thread, std::optional<T>{}};
  auto waiter = std::make_shared<asio_xen::wakeable_wait>(std::move(*w));
  if (stop) stop->watch(waiter);
  boost::asio::steady_timer timer(ex, bound);
  timer.async_wait([waiter](const boost::system::error_code& ec) {
    if (!ec) waiter->wake();
  });
  for (;;) {
    const asio_xen::error_code ec = co_await waiter->wait();
    const std::lock_guard g(s->m);
    if (s->value) {
      timer.cancel();
      waiter->close();
      co_return std::pair{off_thread_end::done, std::move(s->value)};
    }
    if (ec) break;  // woken by the bound or the stop: the thread is left to finish
  }
  timer.cancel();
  waiter->close();
  const bool stopped = stop && stop->stopped();
  co_return std::pair{stopped ? off_thread_end::stopped : off_thread_end::timed_out, std::optional<T>{}};
}

}  // namespace xbd::blkback::storage
