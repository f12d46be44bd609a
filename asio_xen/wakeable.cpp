#include "asio_xen/wakeable.hpp"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <optional>

namespace xbd::asio_xen {

namespace asio = boost::asio;

namespace {

// One descriptor for the whole process that is always readable: an eventfd
// signalled once and never read. A wake-up adds it to the waiter's epoll
// set and the waiter takes it out again, so a ring needs no eventfd of its
// own (a descriptor per queue fewer, docs/limits.md). Never closed.
int always_readable() {
  static const int fd = [] {
    int e = ::eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK);
    return e;
  }();
  return fd;
}

}  // namespace

struct wakeable_wait::state {
  std::optional<asio::posix::stream_descriptor> epoll;  // what Asio polls
  int fd = -1;                                          // the watched descriptor
  bool waiting = false;
  bool woken = false;
  bool closed = false;

  ~state() { release(); }

  // Only ever with no operation pending on `epoll` (see the header).
  void release() {
    if (epoll) {
      error_code ignored;
      epoll->close(ignored);
      epoll.reset();
    }
  }

  void consume_wake() {
    (void)::epoll_ctl(epoll->native_handle(), EPOLL_CTL_DEL, always_readable(), nullptr);
    woken = false;
  }
};

namespace {

std::uint32_t events_of(wakeable_wait::readiness r) {
  return r == wakeable_wait::readiness::readable ? EPOLLIN : EPOLLOUT;
}

}  // namespace

result<wakeable_wait> wakeable_wait::create(asio::any_io_executor ex, int fd, readiness r) {
  auto s = std::make_shared<state>();
  int ep = ::epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) return xen_error(call::epoll);
  s->epoll.emplace(ex, ep);
  if (always_readable() < 0) return xen_error(call::eventfd);
  epoll_event ev{};
  ev.events = events_of(r);
  ev.data.fd = fd;
  if (::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) return xen_error(call::epoll);
  s->fd = fd;
  return wakeable_wait(std::move(s));
}

wakeable_wait& wakeable_wait::operator=(wakeable_wait&& other) noexcept {
  if (this != &other) {
    close();
    state_ = std::move(other.state_);
  }
  return *this;
}

wakeable_wait::~wakeable_wait() { close(); }

asio::awaitable<error_code> wakeable_wait::wait() {
  // The frame keeps the state (and so the descriptor Asio polls) alive
  // until the operation has completed, whatever happens to this object.
  auto s = state_;
  if (!s || s->closed) co_return make_error_code(errc::closed);
  if (s->woken) {
    s->consume_wake();
    co_return error_code(asio::error::operation_aborted);
  }
  s->waiting = true;
  auto [ec] =
      co_await s->epoll->async_wait(asio::posix::descriptor_base::wait_read, asio::as_tuple(asio::use_awaitable));
  s->waiting = false;
  if (s->closed) {
    s->release();
    co_return make_error_code(errc::closed);
  }
  if (ec) co_return ec;
  if (s->woken) {
    s->consume_wake();
    co_return error_code(asio::error::operation_aborted);
  }
  co_return error_code{};
}

void wakeable_wait::wake() {
  if (!state_ || state_->closed || state_->woken) return;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = always_readable();
  // EEXIST cannot happen (woken guards it); anything else (ENOMEM) leaves
  // the wait to end on its own, and the next one returns at once.
  (void)::epoll_ctl(state_->epoll->native_handle(), EPOLL_CTL_ADD, always_readable(), &ev);
  state_->woken = true;
}

error_code wakeable_wait::watch_for(readiness r) {
  if (!state_ || state_->closed) return make_error_code(errc::closed);
  epoll_event ev{};
  ev.events = events_of(r);
  ev.data.fd = state_->fd;
  if (::epoll_ctl(state_->epoll->native_handle(), EPOLL_CTL_MOD, state_->fd, &ev) != 0) return xen_error(call::epoll);
  return {};
}

void wakeable_wait::close() {
  if (!state_ || state_->closed) return;
  if (state_->waiting) {
    wake();
    state_->closed = true;  // the waiter releases the descriptors
  } else {
    state_->closed = true;
    state_->release();
  }
  state_.reset();
}

}  // namespace xbd::asio_xen
