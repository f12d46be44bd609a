#include <doctest/doctest.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <filesystem>

#include "asio_xen/wakeable.hpp"
#include "test/unit/run.hpp"

using namespace xbd::asio_xen;
namespace asio = boost::asio;
using xbd::test::finishes;
using xbd::test::run;

namespace {

std::size_t open_fds() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

// The io_context opens its own io_uring with its first I/O object: have that
// done before counting.
void warm_up(asio::io_context& ioc, int fd) { (void)wakeable_wait::create(ioc.get_executor(), fd); }

struct watched {
  int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  ~watched() { ::close(fd); }
  void make_readable() const {
    const std::uint64_t one = 1;
    REQUIRE(::write(fd, &one, sizeof one) == sizeof one);
  }
};

}  // namespace

TEST_CASE("a wakeable wait completes when its descriptor becomes readable") {
  asio::io_context ioc;
  watched w;
  auto ww = wakeable_wait::create(ioc.get_executor(), w.fd);
  REQUIRE(ww.has_value());
  CHECK_FALSE(finishes(ioc, ww->wait()));
  w.make_readable();
  CHECK(run(ioc, ww->wait()) == error_code{});
}

TEST_CASE("wake() ends the wait in progress with operation_aborted, without an Asio cancel") {
  asio::io_context ioc;
  watched w;
  auto ww = wakeable_wait::create(ioc.get_executor(), w.fd);
  REQUIRE(ww.has_value());
  auto fut = asio::co_spawn(ioc, ww->wait(), asio::use_future);
  ioc.poll();  // the wait is now pending
  ww->wake();
  REQUIRE(xbd::test::detail::drive(ioc, fut, std::chrono::seconds(2)));
  CHECK(fut.get() == asio::error::operation_aborted);
  // The wake-up is consumed: the next wait waits again.
  CHECK_FALSE(finishes(ioc, ww->wait()));
}

TEST_CASE("a wake-up that comes before the wait ends the next wait at once") {
  asio::io_context ioc;
  watched w;
  auto ww = wakeable_wait::create(ioc.get_executor(), w.fd);
  REQUIRE(ww.has_value());
  ww->wake();
  ww->wake();  // coalesced
  CHECK(run(ioc, ww->wait()) == asio::error::operation_aborted);
  CHECK_FALSE(finishes(ioc, ww->wait()));
}

TEST_CASE("close() during a wait ends it with closed, and the descriptors go once it has returned") {
  asio::io_context ioc;
  watched w;
  warm_up(ioc, w.fd);
  const std::size_t before = open_fds();
  auto ww = wakeable_wait::create(ioc.get_executor(), w.fd);
  REQUIRE(ww.has_value());
  CHECK(open_fds() == before + 1);  // the epoll set; the wake-up eventfd is the process's, made once
  auto fut = asio::co_spawn(ioc, ww->wait(), asio::use_future);
  ioc.poll();
  ww->close();
  CHECK(open_fds() == before + 1);  // still polled by the pending wait
  REQUIRE(xbd::test::detail::drive(ioc, fut, std::chrono::seconds(2)));
  CHECK(fut.get() == make_error_code(errc::closed));
  CHECK(open_fds() == before);
  CHECK(run(ioc, ww->wait()) == make_error_code(errc::closed));
}

TEST_CASE("a wakeable wait destroyed while idle releases its descriptors at once") {
  asio::io_context ioc;
  watched w;
  warm_up(ioc, w.fd);
  const std::size_t before = open_fds();
  {
    auto ww = wakeable_wait::create(ioc.get_executor(), w.fd);
    REQUIRE(ww.has_value());
  }
  CHECK(open_fds() == before);
}

TEST_CASE("waits share one wake-up descriptor, yet waking one ends only that one, and only once") {
  asio::io_context ioc;
  watched w;
  warm_up(ioc, w.fd);
  auto a = wakeable_wait::create(ioc.get_executor(), w.fd);
  auto b = wakeable_wait::create(ioc.get_executor(), w.fd);
  REQUIRE(a.has_value());
  REQUIRE(b.has_value());
  auto fa = asio::co_spawn(ioc, a->wait(), asio::use_future);
  auto fb = asio::co_spawn(ioc, b->wait(), asio::use_future);
  ioc.poll();
  a->wake();
  REQUIRE(xbd::test::detail::drive(ioc, fa, std::chrono::seconds(2)));
  CHECK(fa.get() == asio::error::operation_aborted);
  ioc.poll();
  CHECK(fb.wait_for(std::chrono::milliseconds(0)) == std::future_status::timeout);
  // a's next wait is a real one again: it ends with the descriptor.
  auto fa2 = asio::co_spawn(ioc, a->wait(), asio::use_future);
  ioc.poll();
  CHECK(fa2.wait_for(std::chrono::milliseconds(0)) == std::future_status::timeout);
  w.make_readable();
  REQUIRE(xbd::test::detail::drive(ioc, fa2, std::chrono::seconds(2)));
  CHECK(fa2.get() == error_code{});
  REQUIRE(xbd::test::detail::drive(ioc, fb, std::chrono::seconds(2)));
  CHECK(fb.get() == error_code{});
}

TEST_CASE("a wakeable wait can wait for a socket to take more, and then for it to be readable again") {
  asio::io_context ioc;
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
  auto ww = wakeable_wait::create(ioc.get_executor(), sv[0], wakeable_wait::readiness::writable);
  REQUIRE(ww.has_value());
  CHECK(run(ioc, ww->wait()) == error_code{});  // room to write at once
  char chunk[4096] = {};
  while (::send(sv[0], chunk, sizeof chunk, MSG_DONTWAIT) > 0) {
  }
  CHECK_FALSE(finishes(ioc, ww->wait()));  // full
  while (::recv(sv[1], chunk, sizeof chunk, MSG_DONTWAIT) > 0) {
  }
  CHECK(run(ioc, ww->wait()) == error_code{});
  REQUIRE(ww->watch_for(wakeable_wait::readiness::readable) == error_code{});
  CHECK_FALSE(finishes(ioc, ww->wait()));  // nothing to read
  REQUIRE(::send(sv[1], "x", 1, 0) == 1);
  CHECK(run(ioc, ww->wait()) == error_code{});
  ww->close();
  ::close(sv[0]);
  ::close(sv[1]);
}
