// off_thread: calls that may sleep in the kernel for as long as a file
// system does not answer, run on threads of their own and waited for with
// a bound (blkback/storage/off_thread.hpp).
#include "blkback/storage/off_thread.hpp"
#include "test/unit/run.hpp"

#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

using namespace xbd::blkback::storage;
using namespace std::chrono_literals;
namespace asio = boost::asio;

namespace {

// What a hung call waits for (never longer than 10 s: no test thread is
// left behind for good).
struct gate {
  std::mutex m;
  std::condition_variable cv;
  bool open = false;
  void wait() {
    std::unique_lock l(m);
    cv.wait_for(l, 10s, [&] { return open; });
  }
  void release() {
    {
      const std::lock_guard g(m);
      open = true;
    }
    cv.notify_all();
  }
};

}  // namespace

TEST_CASE("off_thread: a result comes back, a call past its bound is left to finish, a stop ends the wait") {
  asio::io_context ioc;
  auto [done, seven] = xbd::test::run(ioc, run_off_thread<int>([] { return 7; }, 2s));
  CHECK(done == off_thread_end::done);
  CHECK(seven == 7);

  auto g = std::make_shared<gate>();
  auto [late, none] = xbd::test::run(ioc, run_off_thread<int>(
                                              [g] {
                                                g->wait();
                                                return 1;
                                              },
                                              100ms));
  CHECK(late == off_thread_end::timed_out);
  CHECK_FALSE(none);

  off_thread_stop stop;
  asio::steady_timer t(ioc, 50ms);
  t.async_wait([&](const boost::system::error_code&) { stop.stop(); });
  auto [stopped, nothing] = xbd::test::run(ioc, run_off_thread<int>(
                                                    [g] {
                                                      g->wait();
                                                      return 1;
                                                    },
                                                    10s, &stop));
  CHECK(stopped == off_thread_end::stopped);
  CHECK_FALSE(nothing);
  // A stopped waiter does not start another call.
  auto [again, no] = xbd::test::run(ioc, run_off_thread<int>([] { return 1; }, 2s, &stop));
  CHECK(again == off_thread_end::stopped);
  g->release();
}

TEST_CASE("off_thread: past max_pending hung calls the next fails at once, and uncounted calls still run") {
  asio::io_context ioc;
  auto g = std::make_shared<gate>();
  auto hang = [g] {
    g->wait();
    return 0;
  };
  for (unsigned i = 0; i < off_thread_detail::max_pending; ++i)
    REQUIRE(xbd::test::run(ioc, run_off_thread<int>(hang, 1ms)).first == off_thread_end::timed_out);
  CHECK(xbd::test::run(ioc, run_off_thread<int>(hang, 1s)).first == off_thread_end::too_many);
  auto [end, three] = xbd::test::run(ioc, run_off_thread<int>([] { return 3; }, 2s, nullptr, false));
  CHECK(end == off_thread_end::done);
  CHECK(three == 3);
  // Once the hung calls return, counted calls run again.
  g->release();
  bool ran = false;
  for (int i = 0; i < 100 && !ran; ++i) {
    ran = xbd::test::run(ioc, run_off_thread<int>([] { return 0; }, 2s)).first == off_thread_end::done;
    if (!ran) std::this_thread::sleep_for(50ms);
  }
  CHECK(ran);
}

TEST_CASE("off_thread: idle threads are reused, and a hung one never delays the next call") {
  asio::io_context ioc;
  // One check after another, as the resize poll makes them: a handful of
  // threads serve them all, not one thread each (threads idle from an
  // earlier case in this process may serve some).
  const unsigned idle_before = off_thread_detail::threads();
  std::mutex m;
  std::set<std::thread::id> ids;
  for (int i = 0; i < 200; ++i) {
    auto [end, v] = xbd::test::run(ioc, run_off_thread<int>(
                                            [&] {
                                              const std::lock_guard l(m);
                                              ids.insert(std::this_thread::get_id());
                                              return i;
                                            },
                                            2s, nullptr, false));
    REQUIRE(end == off_thread_end::done);
    CHECK(v == i);
  }
  CHECK(ids.size() <= idle_before + 8);
  CHECK(off_thread_detail::threads() <= idle_before + 8);

  // Every thread of the pool hangs: the next call gets a thread of its own.
  auto g = std::make_shared<gate>();
  const unsigned before = off_thread_detail::threads();
  for (unsigned i = 0; i <= before; ++i)
    REQUIRE(xbd::test::run(ioc, run_off_thread<int>(
                                    [g] {
                                      g->wait();
                                      return 0;
                                    },
                                    1ms, nullptr, false))
                .first == off_thread_end::timed_out);
  auto [end, four] = xbd::test::run(ioc, run_off_thread<int>([] { return 4; }, 2s));
  CHECK(end == off_thread_end::done);
  CHECK(four == 4);
  g->release();
}
