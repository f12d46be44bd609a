#include "blkback/storage/nbd_link.hpp"

#include <sys/epoll.h>
#include <unistd.h>
#include <cerrno>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>

namespace xbd::blkback::storage::nbd {

namespace asio = boost::asio;
using asio_xen::error_code;

const asio_xen::xen_call_category connect_call{"nbd_aio_connect_uri"};

namespace {

const asio_xen::xen_call_category epoll_call{"epoll"};

std::uint32_t epoll_events(unsigned direction) {
  std::uint32_t ev = 0;
  if (direction & LIBNBD_AIO_DIRECTION_READ) ev |= EPOLLIN;
  if (direction & LIBNBD_AIO_DIRECTION_WRITE) ev |= EPOLLOUT;
  return ev;
}

}  // namespace

asio_xen::result<std::shared_ptr<socket_watch>> socket_watch::create(const asio::any_io_executor& ex) {
  const int inner = ::epoll_create1(EPOLL_CLOEXEC);
  if (inner < 0) return asio_xen::xen_error(epoll_call);
  auto outer = asio_xen::wakeable_wait::create(ex, inner);
  if (!outer) {
    ::close(inner);
    return outer.error();
  }
  return std::make_shared<socket_watch>(inner, std::move(*outer));
}

void socket_watch::watch(int fd, unsigned direction, bool again) {
  if (inner_ < 0) return;
  if (fd != fd_ || again) forget();
  fd_ = fd;
  direction &= LIBNBD_AIO_DIRECTION_BOTH;
  if (fd < 0 || direction == direction_) return;
  epoll_event ev{};
  ev.events = epoll_events(direction);
  ev.data.fd = fd;
  if (direction == 0) {
    ::epoll_ctl(inner_, EPOLL_CTL_DEL, fd, &ev);
  } else if (direction_ == 0) {
    if (::epoll_ctl(inner_, EPOLL_CTL_ADD, fd, &ev) != 0 && errno == EEXIST)
      ::epoll_ctl(inner_, EPOLL_CTL_MOD, fd, &ev);
  } else if (::epoll_ctl(inner_, EPOLL_CTL_MOD, fd, &ev) != 0 && errno == ENOENT) {
    // libnbd closed and reopened the socket under the same number.
    ::epoll_ctl(inner_, EPOLL_CTL_ADD, fd, &ev);
  }
  direction_ = direction;
}

void socket_watch::forget() {
  // A socket libnbd has closed already left the set by itself (ENOENT).
  if (inner_ >= 0 && fd_ >= 0 && direction_ != 0) ::epoll_ctl(inner_, EPOLL_CTL_DEL, fd_, nullptr);
  fd_ = -1;
  direction_ = 0;
}

unsigned socket_watch::ready() {
  if (inner_ < 0 || fd_ < 0 || direction_ == 0) return 0;
  epoll_event ev[2];
  const int n = ::epoll_wait(inner_, ev, 2, 0);
  unsigned dir = 0;
  for (int i = 0; i < n; ++i) {
    if (ev[i].data.fd != fd_) continue;
    // A hang-up or an error is news for whichever way libnbd is going: it
    // reads the end of the stream or the socket's error from there.
    if (ev[i].events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP | EPOLLERR)) dir |= LIBNBD_AIO_DIRECTION_READ;
    if (ev[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) dir |= LIBNBD_AIO_DIRECTION_WRITE;
  }
  return dir;
}

void socket_watch::close() {
  outer_.close();
  if (inner_ >= 0) ::close(inner_);
  inner_ = -1;
  fd_ = -1;
  direction_ = 0;
}

link::link() : h_(nbd_create()) {
  if (!h_) note_error();
}

bool link::up() const { return h_ && (nbd_aio_is_ready(h_) == 1 || nbd_aio_is_processing(h_) == 1); }

bool link::down() const { return !h_ || nbd_aio_is_dead(h_) == 1 || nbd_aio_is_closed(h_) == 1; }

void link::step(unsigned ready) {
  if (!h_) return;
  const unsigned want = static_cast<unsigned>(nbd_aio_get_direction(h_));
  // Both ready: reading first, as libnbd advises (a reply may change what
  // there is left to write).
  int r = 0;
  if (ready & want & LIBNBD_AIO_DIRECTION_READ)
    r = nbd_aio_notify_read(h_);
  else if (ready & want & LIBNBD_AIO_DIRECTION_WRITE)
    r = nbd_aio_notify_write(h_);
  if (r == -1) note_error();
}

void link::note_error() {
  if (!why_.empty()) return;
  const char* msg = nbd_get_error();
  note_error(msg ? msg : "", nbd_get_errno());
}

void link::note_error(const std::string& why, int err) {
  if (!why_.empty()) return;
  errno_ = err;
  why_ = why.empty() ? "libnbd gave no reason" : why;
}

void link::close() {
  if (h_) nbd_close(h_);
  h_ = nullptr;
}

asio::awaitable<error_code> connect(std::shared_ptr<link> l, std::shared_ptr<socket_watch> w, std::string uri,
                                    bool local_files, std::chrono::milliseconds limit, std::string& detail) {
  auto fail = [&l, &detail](int fallback) {
    detail = l->why();
    return asio_xen::xen_error(connect_call, l->error_number() ? l->error_number() : fallback);
  };
  if (!l->handle()) co_return fail(ENOMEM);
  nbd_set_request_structured_replies(l->handle(), true);
  // libnbd zeroes every read buffer before the read by default, so that a
  // careless caller cannot leak old heap contents. Ours never shows a failed
  // read's buffer to anyone, and a read buffer only ever held data of the
  // same ring's guest (queue buffers are per ring; unmapped memory comes
  // back zeroed): the zeroing would cost 8 % of the CPU of 1 MiB reads.
  nbd_set_pread_initialize(l->handle(), false);
  if (local_files) nbd_set_uri_allow_local_file(l->handle(), true);
  if (nbd_aio_connect_uri(l->handle(), uri.c_str()) == -1) {
    l->note_error();
    co_return fail(EIO);
  }
  // The deadline wakes the wait; the flag is this attempt's own, so a late
  // timer of an attempt that has finished changes nothing but a spurious
  // wake-up (which the waits all tolerate).
  auto expired = std::make_shared<bool>(false);
  asio::steady_timer deadline(co_await asio::this_coro::executor, limit);
  deadline.async_wait([expired, weak = std::weak_ptr<socket_watch>(w)](const error_code& ec) {
    if (ec) return;
    *expired = true;
    if (auto s = weak.lock()) s->wake();
  });
  error_code result;
  for (;;) {
    if (l->up()) break;
    if (l->down()) {
      l->note_error();
      result = fail(ECONNRESET);
      break;
    }
    w->watch(nbd_aio_get_fd(l->handle()), static_cast<unsigned>(nbd_aio_get_direction(l->handle())), true);
    const error_code ec = co_await w->wait();
    if (ec == asio_xen::errc::closed || !l->handle()) {
      result = asio::error::operation_aborted;
      break;
    }
    if (*expired) {
      detail = "no NBD handshake with the server within " + std::to_string(limit.count()) + " ms";
      result = asio_xen::xen_error(connect_call, ETIMEDOUT);
      break;
    }
    l->step(w->ready());
  }
  deadline.cancel();
  co_return result;
}

}  // namespace xbd::blkback::storage::nbd
