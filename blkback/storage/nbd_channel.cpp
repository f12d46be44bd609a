#include "blkback/storage/nbd_core.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace xbd::blkback::storage::nbd {

core::core(const asio::any_io_executor& ex, unsigned depth, std::shared_ptr<const channel_config> cfg,
           std::shared_ptr<socket_watch> watch)
    : ex_(ex), cfg_(std::move(cfg)), watch_(std::move(watch)), ops_(depth), retry_(ex), deadline_(ex), watchdog_(ex) {
  for (op& o : ops_) {
    o.owner = this;
    free_.push_back(&o);
  }
}

void core::start() {
  begin_outage();
  asio::co_spawn(ex_, supervise(shared_from_this()), asio::detached);
}

// One connection after another, for as long as the channel lives: connect
// (each attempt bounded), serve until the connection is lost, and wait a
// little longer after each failed attempt, or each connection that did not
// last (a server that drops every connection, or keeps answering ESHUTDOWN,
// must not have us reconnect in a tight loop).
// NOLINTNEXTLINE(performance-unnecessary-value-param): keeps the state alive across suspensions
asio::awaitable<void> core::supervise(std::shared_ptr<core> self) {
  (void)self;
  auto backoff = first_backoff;
  auto pause = [this, &backoff]() -> asio::awaitable<void> {
    retry_.expires_after(backoff);
    co_await retry_.async_wait(asio::as_tuple(asio::use_awaitable));
    backoff = std::min(backoff * 2, max_backoff);
  };
  while (!closing_) {
    link_ = std::make_shared<link>();
    std::string detail;
    const error_code ec =
        co_await connect(link_, watch_, cfg_->target, cfg_->local_files, cfg_->opt.connect_timeout, detail);
    if (closing_) co_return;
    if (ec) {
      attempt_failed(detail);
      co_await pause();
      continue;
    }
    came_up();
    const auto since = std::chrono::steady_clock::now();
    co_await serve();
    if (closing_) co_return;
    went_down();
    if (std::chrono::steady_clock::now() - since > max_backoff) backoff = first_backoff;
    co_await pause();
  }
}

// Sends what waits, then waits for the socket and lets libnbd read replies
// (their callbacks run inside step()) and write what it could not yet.
asio::awaitable<void> core::serve() {
  const std::shared_ptr<socket_watch> w = watch_;
  issue();
  while (!link_->down() && doomed_.empty()) {
    w->watch(nbd_aio_get_fd(link_->handle()), static_cast<unsigned>(nbd_aio_get_direction(link_->handle())));
    const error_code ec = co_await w->wait();
    if (closing_ || ec == asio_xen::errc::closed) co_return;
    link_->step(w->ready());
    issue();
    // Replies that came in meanwhile are taken now rather than after
    // another trip through the io_context's poll: fewer wake-ups, and the
    // ring answers them in one push. Bounded, so that a busy server cannot
    // hold the thread.
    for (int more = 0; more < 8 && !link_->down() && doomed_.empty(); ++more) {
      w->watch(nbd_aio_get_fd(link_->handle()), static_cast<unsigned>(nbd_aio_get_direction(link_->handle())));
      const unsigned dir = w->ready();
      if (dir == 0) break;
      link_->step(dir);
      issue();
    }
  }
}

void core::came_up() {
  up_ = true;
  gave_up_ = false;
  ++outage_generation_;
  deadline_.cancel();
  arm_watchdog();
  const auto took =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - outage_since_);
  if (outage_reported_) {
    if (outage_logged_)
      XBD_LOG(lg_, info) << "nbd " << cfg_->name << ": connected again after " << took.count() << " ms";
    else
      XBD_LOG(lg_, debug) << "nbd " << cfg_->name << ": connected again after " << took.count() << " ms";
  } else {
    XBD_LOG(lg_, debug) << "nbd " << cfg_->name << ": channel connected in " << took.count() << " ms";
  }
  outage_reported_ = outage_logged_ = false;
}

void core::went_down() {
  std::string why = doomed_.empty() ? link_->why() : doomed_;
  if (why.empty()) why = "the server closed the connection";
  up_ = false;
  drop_link();
  begin_outage();
  outage_reported_ = true;
  outage_logged_ = cfg_->budget->spend(failure_kind::io);
  if (outage_logged_)
    XBD_LOG(lg_, warning) << "nbd " << cfg_->name << ": connection lost (" << why << "); reconnecting";
  else
    XBD_LOG(lg_, debug) << "nbd " << cfg_->name << ": connection lost (" << why << "); reconnecting";
}

void core::attempt_failed(const std::string& detail) {
  drop_link();
  if (outage_reported_) return;
  outage_reported_ = true;
  outage_logged_ = cfg_->budget->spend(failure_kind::io);
  if (outage_logged_)
    XBD_LOG(lg_, warning) << "nbd " << cfg_->name << ": cannot connect (" << detail << "); retrying";
  else
    XBD_LOG(lg_, debug) << "nbd " << cfg_->name << ": cannot connect (" << detail << "); retrying";
}

// The reconnect window starts when the connection is lost (or the channel
// opened): operations waiting when it closes fail, and so does every new one
// until a connection is up again, the way QEMU's reconnect-delay works.
void core::begin_outage() {
  outage_since_ = std::chrono::steady_clock::now();
  const unsigned generation = ++outage_generation_;
  deadline_.expires_after(cfg_->opt.reconnect);
  deadline_.async_wait([weak = weak_from_this(), generation](const error_code& ec) {
    if (auto self = weak.lock(); self && !ec) self->outage_expired(generation);
  });
}

void core::outage_expired(unsigned generation) {
  if (generation != outage_generation_ || up_ || closing_) return;
  gave_up_ = true;
  const bool any = !waiting_.empty();
  while (op* o = waiting_.pop_front()) finish(o, errno_code(EIO));
  if (any && outage_logged_)
    XBD_LOG(lg_, warning) << "nbd " << cfg_->name << ": no server for " << cfg_->opt.reconnect.count()
                          << " ms: failing I/O until it is back";
}

// A server that keeps the connection but stops answering (hung, stopped,
// partitioned without a reset) is treated as lost once nothing has come back
// for the reconnect window while commands were out: they are sent again on
// a new connection, and fail if none comes within another window.
void core::arm_watchdog() {
  watchdog_.expires_after(std::max<std::chrono::milliseconds>(cfg_->opt.reconnect / 4, std::chrono::milliseconds(50)));
  watchdog_.async_wait([weak = weak_from_this()](const error_code& ec) {
    if (auto self = weak.lock(); self && !ec) self->check_stall();
  });
}

void core::check_stall() {
  if (!up_ || closing_) return;
  const auto quiet =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - last_reply_);
  if (on_wire_ > 0 && quiet >= cfg_->opt.reconnect) {
    doomed_ = "no reply from the server for " + std::to_string(quiet.count()) + " ms";
    watch_->wake();
    return;
  }
  arm_watchdog();
}

// What libnbd still had is sent again on the next connection: a write is
// done only once a server has said so.
void core::drop_link() {
  if (!link_) return;
  for (op& o : ops_)
    if (o.state == op_state::wire) requeue(o);
  on_wire_ = 0;
  watch_->forget();
  quiet_ = true;
  link_->close();
  quiet_ = false;
  link_.reset();
  doomed_.clear();
  watchdog_.cancel();
}

// The ring has nothing in flight (the storage contract), so nothing here is
// left to complete: stop the connection, the timers and the watch; the
// handlers still queued find closing_ set and the state stays theirs until
// they have run.
void core::close() {
  if (closing_) return;
  closing_ = true;
  up_ = false;
  retry_.cancel();
  deadline_.cancel();
  watchdog_.cancel();
  drop_link();
  watch_->close();
  waiting_ = {};
  done_ = {};
}

namespace {

class nbd_channel final : public channel {
 public:
  nbd_channel(std::shared_ptr<core> c, const properties& p) : c_(std::move(c)), props_(p) {}
  ~nbd_channel() override {
    try {
      c_->close();
    } catch (...) {  // only a timer's cancel() throws, which epoll-less Linux timers never fail
    }
  }
  nbd_channel(const nbd_channel&) = delete;
  nbd_channel& operator=(const nbd_channel&) = delete;

  void read(std::uint64_t offset, std::span<std::byte> into, completion& done) override {
    c_->submit(op_kind::read, offset, into.size(), into.data(), done);
  }
  void write(std::uint64_t offset, std::span<const std::byte> from, completion& done) override {
    if (!props_.writable) return c_->fail_later(done, errno_code(EROFS));
    // libnbd only reads a write's buffer.
    c_->submit(op_kind::write, offset, from.size(), const_cast<std::byte*>(from.data()), done);
  }
  void flush(completion& done) override {
    if (!props_.flush) return c_->fail_later(done, asio::error::operation_not_supported);
    c_->submit(op_kind::flush, 0, 0, nullptr, done);
  }
  void discard(std::uint64_t offset, std::uint64_t length, bool secure, completion& done) override {
    if (secure || !props_.discard) return c_->fail_later(done, asio::error::operation_not_supported);
    c_->submit(op_kind::trim, offset, length, nullptr, done);
  }
  void cancel() override { c_->cancel_waiting(); }

 private:
  std::shared_ptr<core> c_;
  properties props_;
};

}  // namespace

asio_xen::result<std::unique_ptr<channel>> open_channel(const asio::any_io_executor& ex, unsigned depth,
                                                        std::shared_ptr<const channel_config> cfg) {
  auto watch = socket_watch::create(ex);
  if (!watch) return watch.error();
  const properties props = cfg->props;
  auto c = std::make_shared<core>(ex, depth, std::move(cfg), std::move(*watch));
  c->start();
  return std::unique_ptr<channel>(new nbd_channel(std::move(c), props));
}

}  // namespace xbd::blkback::storage::nbd
