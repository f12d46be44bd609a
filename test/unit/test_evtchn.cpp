#include "asio_xen/evtchn.hpp"
#include "test/fakes/fake_evtchn.hpp"
#include "test/unit/run.hpp"

#include <doctest/doctest.h>
#include <boost/asio/io_context.hpp>

#include <functional>

using namespace xbd::asio_xen;
using xbd::fakes::fake_evtchn_bus;
namespace asio = boost::asio;
using xbd::test::finishes;
using xbd::test::run;

namespace {

// A connected pair: the guest (domid 5) offers a port, dom0 binds to it.
struct pair {
  asio::io_context ioc;
  fake_evtchn_bus bus;
  std::optional<event_channel> front;
  std::optional<event_channel> back;

  pair() {
    auto f = event_channel::bind_unbound(ioc.get_executor(), bus.open(5), 0);
    REQUIRE(f.has_value());
    front.emplace(std::move(*f));
    auto b = event_channel::bind_interdomain(ioc.get_executor(), bus.open(0), 5, front->local_port());
    REQUIRE(b.has_value());
    back.emplace(std::move(*b));
  }
};

// A driver that runs a hook between the steps of wait(), to place a peer's
// event exactly in the window where the port is masked.
class interposer final : public evtchn_driver {
 public:
  interposer(std::unique_ptr<evtchn_driver> d) : d_(std::move(d)) {}
  std::function<void()> after_pending;
  int fd() override { return d_->fd(); }
  result<evtchn_port> bind_interdomain(unsigned dom, evtchn_port p) override { return d_->bind_interdomain(dom, p); }
  result<evtchn_port> bind_unbound_port(unsigned dom) override { return d_->bind_unbound_port(dom); }
  error_code unbind(evtchn_port p) override { return d_->unbind(p); }
  error_code notify(evtchn_port p) override { return d_->notify(p); }
  result<std::optional<evtchn_port>> pending() override {
    auto r = d_->pending();
    if (r && *r && after_pending) {
      auto hook = std::exchange(after_pending, nullptr);
      hook();
    }
    return r;
  }
  error_code unmask(evtchn_port p) override { return d_->unmask(p); }

 private:
  std::unique_ptr<evtchn_driver> d_;
};

}  // namespace

TEST_CASE("binding to a port the guest did not offer to us is refused") {
  asio::io_context ioc;
  fake_evtchn_bus bus;
  auto f = event_channel::bind_unbound(ioc.get_executor(), bus.open(5), 7);  // offered to domain 7
  REQUIRE(f.has_value());
  auto b = event_channel::bind_interdomain(ioc.get_executor(), bus.open(0), 5, f->local_port());
  REQUIRE_FALSE(b.has_value());
  CHECK(b.error() == boost::system::errc::invalid_argument);
  auto none = event_channel::bind_interdomain(ioc.get_executor(), bus.open(0), 5, 999);
  CHECK_FALSE(none.has_value());
}

TEST_CASE("a notification wakes the peer's wait, in both directions") {
  pair p;
  CHECK_FALSE(finishes(p.ioc, p.back->wait()));
  REQUIRE_FALSE(p.front->notify());
  CHECK_FALSE(run(p.ioc, p.back->wait()));
  REQUIRE_FALSE(p.back->notify());
  CHECK_FALSE(run(p.ioc, p.front->wait()));
  CHECK(p.back->events() == 1u);
}

TEST_CASE("an event that arrives before the wait is not lost") {
  pair p;
  REQUIRE_FALSE(p.front->notify());
  CHECK_FALSE(run(p.ioc, p.back->wait()));
  // And it is consumed: the next wait sleeps.
  CHECK_FALSE(finishes(p.ioc, p.back->wait()));
}

TEST_CASE("an event during the masked window is latched and delivered after unmask") {
  asio::io_context ioc;
  fake_evtchn_bus bus;
  auto f = event_channel::bind_unbound(ioc.get_executor(), bus.open(5), 0);
  REQUIRE(f.has_value());
  auto* hook = new interposer(bus.open(0));
  auto b =
      event_channel::bind_interdomain(ioc.get_executor(), std::unique_ptr<evtchn_driver>(hook), 5, f->local_port());
  REQUIRE(b.has_value());
  // The guest signals again after we took the first event but before we
  // re-armed the port: exactly the window a wrong order would lose.
  hook->after_pending = [&] {
    CHECK(bus.masked(0, b->local_port()));
    REQUIRE_FALSE(f->notify());
    CHECK(bus.latched(0, b->local_port()));
  };
  REQUIRE_FALSE(f->notify());
  CHECK_FALSE(run(ioc, b->wait()));
  // The latched event was delivered at unmask: the second wait returns.
  CHECK_FALSE(run(ioc, b->wait()));
  CHECK_FALSE(bus.latched(0, b->local_port()));
}

TEST_CASE("the port is re-armed when wait returns, so a later event wakes the next wait") {
  pair p;
  REQUIRE_FALSE(p.front->notify());
  CHECK_FALSE(run(p.ioc, p.back->wait()));
  CHECK_FALSE(p.bus.masked(0, p.back->local_port()));
  REQUIRE_FALSE(p.front->notify());
  CHECK_FALSE(run(p.ioc, p.back->wait()));
}

TEST_CASE("notifications while the port is masked collapse into one latched event") {
  pair p;
  // The first delivers (and masks); the other 49 find the port masked.
  for (int i = 0; i < 50; ++i) REQUIRE_FALSE(p.front->notify());
  CHECK_FALSE(run(p.ioc, p.back->wait()));
  // The latched one comes at unmask, once.
  CHECK_FALSE(run(p.ioc, p.back->wait()));
  CHECK_FALSE(finishes(p.ioc, p.back->wait()));
  CHECK(p.bus.notifications() == 50u);
}

TEST_CASE("each channel sees only its own events") {
  asio::io_context ioc;
  fake_evtchn_bus bus;
  auto f1 = event_channel::bind_unbound(ioc.get_executor(), bus.open(5), 0);
  auto f2 = event_channel::bind_unbound(ioc.get_executor(), bus.open(5), 0);
  auto b1 = event_channel::bind_interdomain(ioc.get_executor(), bus.open(0), 5, f1->local_port());
  auto b2 = event_channel::bind_interdomain(ioc.get_executor(), bus.open(0), 5, f2->local_port());
  REQUIRE(b1.has_value());
  REQUIRE(b2.has_value());
  REQUIRE_FALSE(f2->notify());
  CHECK_FALSE(finishes(ioc, b1->wait()));
  CHECK_FALSE(run(ioc, b2->wait()));
  REQUIRE_FALSE(f1->notify());
  CHECK_FALSE(run(ioc, b1->wait()));
}

TEST_CASE("closing the backend end returns the guest's port to unbound, so a new backend can bind") {
  pair p;
  evtchn_port guest_port = p.front->local_port();
  p.back.reset();
  CHECK_FALSE(p.bus.bound(5, guest_port));
  auto again = event_channel::bind_interdomain(p.ioc.get_executor(), p.bus.open(0), 5, guest_port);
  REQUIRE(again.has_value());
  REQUIRE_FALSE(p.front->notify());
  CHECK_FALSE(run(p.ioc, again->wait()));
}

TEST_CASE("a lost notification is lost: the fault knob drops it") {
  pair p;
  p.bus.drop_next_notifications(1);
  REQUIRE_FALSE(p.front->notify());
  CHECK_FALSE(finishes(p.ioc, p.back->wait()));
}

TEST_CASE("cancel ends a wait with operation_aborted") {
  pair p;
  auto waiter = [&]() -> asio::awaitable<error_code> { co_return co_await p.back->wait(); };
  auto fut = asio::co_spawn(p.ioc, waiter(), asio::use_future);
  p.ioc.poll();  // the wait is now pending
  p.back->cancel();
  REQUIRE(xbd::test::detail::drive(p.ioc, fut, std::chrono::seconds(2)));
  CHECK(fut.get() == asio::error::operation_aborted);
}

TEST_CASE("a closed channel refuses to notify and to wait") {
  pair p;
  p.back->close();
  CHECK(p.back->notify() == make_error_code(errc::closed));
  CHECK(run(p.ioc, p.back->wait()) == make_error_code(errc::closed));
}
