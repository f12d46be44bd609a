#include "blkback/storage/aux_ring.hpp"
#include "asio_xen/wakeable.hpp"
#include "blkback/log.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <liburing.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <deque>
#include <optional>

namespace xbd::blkback {

namespace asio = boost::asio;
using asio_xen::error_code;

namespace {

const asio_xen::xen_call_category uring_call{"io_uring"};

struct op {
  enum kind { fdatasync, fallocate, readv, writev } what;
  int fd;
  int mode;
  std::uint64_t offset;
  std::uint64_t length;
  aux_completion* done;
  const iovec* iov = nullptr;
  unsigned nr = 0;
};

}  // namespace

struct aux_ring::impl : std::enable_shared_from_this<aux_ring::impl> {
  io_uring ring{};
  bool ring_ready = false;
  int efd = -1;
  asio::any_io_executor ex;
  std::optional<asio_xen::wakeable_wait> wake;  // the eventfd's readiness; see wakeable.hpp
  std::deque<op> backlog;                       // waiting for a submission entry
  unsigned in_flight = 0;
  bool reaping = false;
  bool flush_posted = false;
  bool closed = false;
  std::optional<asio::steady_timer> retry;  // a failed submission's next attempt
  bool retry_armed = false;
  unsigned failures_to_inject = 0;                         // tests: the next submissions fail with EAGAIN
  unsigned failed_attempts = 0;                            // in a row
  static constexpr unsigned attempts_before_warning = 20;  // about a second
  logger lg;

  ~impl() {
    if (ring_ready) io_uring_queue_exit(&ring);
    if (efd >= 0) ::close(efd);
  }

  void submit(const op& o) {
    if (closed) {
      complete(*o.done, make_error_code(asio_xen::errc::closed));
      return;
    }
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    if (!sqe) {
      backlog.push_back(o);
      schedule_flush();
      return;
    }
    prepare(sqe, o);
    // From here the entry is in the ring: it completes exactly once,
    // through reap(), whatever io_uring_submit() answers later.
    ++in_flight;
    start_reaper();
    schedule_flush();
  }

  static void prepare(io_uring_sqe* sqe, const op& o) {
    switch (o.what) {
      case op::fdatasync:
        io_uring_prep_fsync(sqe, o.fd, IORING_FSYNC_DATASYNC);
        break;
      case op::fallocate:
        io_uring_prep_fallocate(sqe, o.fd, o.mode, o.offset, o.length);
        break;
      case op::readv:
        io_uring_prep_readv(sqe, o.fd, o.iov, o.nr, o.offset);
        break;
      case op::writev:
        io_uring_prep_writev(sqe, o.fd, o.iov, o.nr, o.offset);
        break;
    }
    io_uring_sqe_set_data(sqe, o.done);
  }

  // What is queued goes to the kernel once per turn of the io_context,
  // together: one system call for all the turn's operations. What the
  // kernel finished during the call (a read from the page cache) is
  // completed right after it; the eventfd wakes the reaper for what
  // finishes later. (It signals for every completion: registered "async",
  // it would stay silent for O_DIRECT reads, which complete through the
  // submitting thread's task work, not an io-wq worker.)
  void schedule_flush() {
    if (flush_posted || closed) return;
    flush_posted = true;
    asio::post(ex, [self = shared_from_this()] {
      self->flush_posted = false;
      if (self->closed) return;
      self->flush();
      self->reap_ready();
    });
  }

  // Hands the queued entries to the kernel. liburing has already published
  // them when io_uring_enter fails (EAGAIN, EBUSY, ENOMEM), so they are not
  // lost: the next attempt takes them along. Failing the operation here
  // instead would complete it twice. Attempts back off from 1 ms to 100 ms;
  // a failure that lasts says so in the log, once, and the daemon's
  // shutdown ends the attempts (closed).
  void flush() {
    int rc = 0;
    if (failures_to_inject > 0) {
      --failures_to_inject;
      rc = -EAGAIN;
    } else {
      rc = io_uring_submit(&ring);
    }
    if (rc >= 0) {
      if (failed_attempts >= attempts_before_warning)
        XBD_LOG(lg, info) << "io_uring accepts submissions again after " << failed_attempts << " attempts";
      failed_attempts = 0;
      return;
    }
    if (++failed_attempts == attempts_before_warning)
      XBD_LOG(lg, error) << "io_uring refuses submissions (" << error_code(-rc, uring_call).what()
                         << "); reads, writes, flushes and discards wait and are retried";
    if (retry_armed || closed) return;
    retry_armed = true;
    retry->expires_after(std::chrono::milliseconds(std::min(100u, 1u << std::min(failed_attempts - 1, 7u))));
    retry->async_wait([self = shared_from_this()](const error_code& ec) {
      self->retry_armed = false;
      if (!ec && !self->closed) {
        self->flush();
        self->reap_ready();
      }
    });
  }

  // Never inline from submit(): the caller's bookkeeping must be done
  // before its completion runs.
  void complete(aux_completion& done, error_code ec) {
    asio::post(ex, [&done, ec] { done.aux_complete(ec, 0); });
  }

  void start_reaper() {
    if (reaping) return;
    reaping = true;
    asio::co_spawn(ex, reap(shared_from_this()), asio::detached);
  }

  // Completes every finished entry, then moves what waited for room into
  // the ring.
  void reap_ready() {
    io_uring_cqe* cqe = nullptr;
    while (!closed && io_uring_peek_cqe(&ring, &cqe) == 0) {
      auto* done = static_cast<aux_completion*>(io_uring_cqe_get_data(cqe));
      const int res = cqe->res;
      io_uring_cqe_seen(&ring, cqe);
      --in_flight;
      if (res < 0)
        done->aux_complete(error_code(-res, boost::system::generic_category()), 0);
      else
        done->aux_complete({}, static_cast<std::size_t>(res));
    }
    while (!closed && !backlog.empty() && io_uring_sq_space_left(&ring) > 0) {
      op o = backlog.front();
      backlog.pop_front();
      submit(o);
    }
  }

  // Waits for the eventfd from the first operation until the ring closes
  // (the destructor wakes it): started once, not once per turn, which cost
  // a coroutine's start per turn (~70 instructions per 4 KiB read). With
  // nothing in flight no completion signals, so an idle ring's reaper
  // sleeps.
  static asio::awaitable<void> reap(std::shared_ptr<impl> self) {
    while (!self->closed) {
      error_code ec = co_await self->wake->wait();
      if (ec || self->closed) break;
      std::uint64_t count;
      (void)!::read(self->efd, &count, sizeof count);
      self->reap_ready();
    }
    self->reaping = false;
  }
};

asio_xen::result<std::shared_ptr<aux_ring>> aux_ring::create(asio::any_io_executor ex, unsigned entries) {
  auto i = std::make_shared<impl>();
  i->ex = ex;
  int rc = io_uring_queue_init(entries, &i->ring, 0);
  if (rc < 0) return error_code(-rc, uring_call);
  i->ring_ready = true;
  i->retry.emplace(ex);
  i->efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (i->efd < 0) return asio_xen::xen_error(uring_call);
  rc = io_uring_register_eventfd(&i->ring, i->efd);
  if (rc < 0) return error_code(-rc, uring_call);
  auto w = asio_xen::wakeable_wait::create(ex, i->efd);
  if (!w) return w.error();
  i->wake.emplace(std::move(*w));
  return std::shared_ptr<aux_ring>(new aux_ring(std::move(i)));
}

aux_ring::~aux_ring() { close(); }

void aux_ring::close() {
  // The owners drained before this; anything still in the kernel completes
  // there and is forgotten.
  impl_->closed = true;
  if (impl_->wake) {
    impl_->wake->close();  // a pending reaper is woken and lets go itself
    impl_->wake.reset();
  }
}

void aux_ring::fail_next_submissions(unsigned n) { impl_->failures_to_inject = n; }

void aux_ring::fdatasync(int fd, aux_completion& done) { impl_->submit({op::fdatasync, fd, 0, 0, 0, &done}); }

void aux_ring::readv(int fd, std::uint64_t offset, std::span<const iovec> v, aux_completion& done) {
  impl_->submit({op::readv, fd, 0, offset, 0, &done, v.data(), static_cast<unsigned>(v.size())});
}

void aux_ring::writev(int fd, std::uint64_t offset, std::span<const iovec> v, aux_completion& done) {
  impl_->submit({op::writev, fd, 0, offset, 0, &done, v.data(), static_cast<unsigned>(v.size())});
}

void aux_ring::fallocate(int fd, int mode, std::uint64_t offset, std::uint64_t length, aux_completion& done) {
  impl_->submit({op::fallocate, fd, mode, offset, length, &done});
}

}  // namespace xbd::blkback
