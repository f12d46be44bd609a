#include "blkback/storage/nbd_channel.hpp"

#include "blkback/log.hpp"
#include "blkback/storage/nbd_link.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <cerrno>
#include <optional>
#include <vector>

namespace xbd::blkback::storage::nbd {

namespace asio = boost::asio;
using asio_xen::error_code;

namespace {

// Between attempts to reach a lost server: soon at first, then less often.
constexpr std::chrono::milliseconds first_backoff{50};
constexpr std::chrono::milliseconds max_backoff{2000};
// An NBD command's length is 32 bits: longer discards go out in pieces.
constexpr std::uint64_t max_trim = std::uint64_t{1} << 30;

error_code errno_code(int e) { return {e, boost::system::generic_category()}; }

enum class op_kind { read, write, flush, trim };
enum class op_state { free, waiting, wire, done };

class core;

struct op {
  op_kind kind = op_kind::read;
  op_state state = op_state::free;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  std::uint64_t cursor = 0;  // trim: bytes discarded so far
  std::uint64_t piece = 0;   // trim: the piece on the wire
  // When a connection was first lost under it: an operation that every new
  // connection loses again (a server that drops it, or keeps answering
  // ESHUTDOWN) still fails once it has waited the reconnect window.
  std::chrono::steady_clock::time_point lost_at;
  void* buf = nullptr;
  completion* done = nullptr;
  error_code ec;
  op* next = nullptr;
  core* owner = nullptr;
};

// A FIFO of operations, threaded through the operations themselves.
class op_list {
 public:
  bool empty() const { return head_ == nullptr; }
  void push_back(op* o) {
    o->next = nullptr;
    (tail_ ? tail_->next : head_) = o;
    tail_ = o;
  }
  void push_front(op* o) {
    o->next = head_;
    head_ = o;
    if (!tail_) tail_ = o;
  }
  op* pop_front() {
    op* o = head_;
    if (o) {
      head_ = o->next;
      if (!head_) tail_ = nullptr;
      o->next = nullptr;
    }
    return o;
  }

 private:
  op* head_ = nullptr;
  op* tail_ = nullptr;
};

// The channel's state, shared with the handlers and the coroutine that keep
// the connection: they hold it alive until they have run, so a channel can
// go at any time without leaving them pointing at freed memory.
class core : public std::enable_shared_from_this<core> {
 public:
  core(const asio::any_io_executor& ex, unsigned depth, std::shared_ptr<const channel_config> cfg,
       std::shared_ptr<socket_watch> watch);

  void start();
  void submit(op_kind k, std::uint64_t offset, std::uint64_t length, void* buf, completion& done);
  void fail_later(completion& done, error_code ec) {
    asio::post(ex_, [&done, ec] { done.complete(ec); });
  }
  void cancel_waiting();
  void close();

 private:
  asio::awaitable<void> supervise(std::shared_ptr<core> self);
  asio::awaitable<void> serve();
  void came_up();
  void went_down();
  void attempt_failed(const std::string& detail);
  void begin_outage();
  void outage_expired(unsigned generation);
  void drop_link();
  void arm_watchdog();
  void check_stall();

  void kick();
  void requeue(op& o, bool front = false);
  void issue();
  bool issue_one(op& o);
  static int replied(void* user_data, int* error);
  void on_reply(op& o, int err);
  void finish(op* o, error_code ec);
  void deliver();

  asio::any_io_executor ex_;
  std::shared_ptr<const channel_config> cfg_;
  std::shared_ptr<socket_watch> watch_;
  std::shared_ptr<link> link_;
  logger lg_;

  std::vector<op> ops_;  // never resized: libnbd holds pointers into it
  op_list free_;
  op_list waiting_;
  op_list done_;
  bool delivering_ = false;

  bool up_ = false;       // link_ negotiated and serving
  std::string doomed_;    // why the connection must go although libnbd keeps it
  bool quiet_ = false;    // closing a handle: its callbacks are not news
  bool closing_ = false;  // the channel is gone
  bool gave_up_ = false;  // lost longer than the reconnect window: fail at once

  asio::steady_timer retry_;
  asio::steady_timer deadline_;
  asio::steady_timer watchdog_;
  unsigned on_wire_ = 0;
  std::chrono::steady_clock::time_point last_reply_;  // or the moment the wire stopped being empty
  unsigned outage_generation_ = 0;
  std::chrono::steady_clock::time_point outage_since_;
  bool outage_logged_ = false;  // at warning: its end is worth a line too
  bool outage_reported_ = false;
};

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
        co_await connect(link_, watch_, cfg_->uri, cfg_->local_files, cfg_->opt.connect_timeout, detail);
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

void core::submit(op_kind k, std::uint64_t offset, std::uint64_t length, void* buf, completion& done) {
  if (closing_) return;
  op* o = free_.pop_front();
  if (!o) {
    fail_later(done, errno_code(EBUSY));  // more than the ring's depth: its bug
    return;
  }
  o->kind = k;
  o->offset = offset;
  o->length = length;
  o->cursor = 0;
  o->lost_at = {};
  o->buf = buf;
  o->done = &done;
  if (!up_ && gave_up_) {
    finish(o, errno_code(EIO));
    return;
  }
  o->state = op_state::waiting;
  waiting_.push_back(o);
  if (up_) kick();
}

// Issues what waits, then makes the watch follow libnbd: the serve loop is
// woken if the connection died under the new commands.
void core::kick() {
  issue();
  if (link_->down() || !doomed_.empty())
    watch_->wake();
  else
    watch_->watch(nbd_aio_get_fd(link_->handle()), static_cast<unsigned>(nbd_aio_get_direction(link_->handle())));
}

void core::requeue(op& o, bool front) {
  if (o.lost_at == std::chrono::steady_clock::time_point{}) o.lost_at = std::chrono::steady_clock::now();
  o.state = op_state::waiting;
  if (front)
    waiting_.push_front(&o);
  else
    waiting_.push_back(&o);
}

void core::issue() {
  while (up_ && doomed_.empty() && !link_->down()) {
    op* o = waiting_.pop_front();
    if (!o) return;
    if (o->lost_at != std::chrono::steady_clock::time_point{} &&
        std::chrono::steady_clock::now() - o->lost_at >= cfg_->opt.reconnect) {
      finish(o, errno_code(EIO));
      continue;
    }
    if (!issue_one(*o)) return;
  }
}

// False if the connection turned out dead: the operation waits again.
bool core::issue_one(op& o) {
  nbd_handle* h = link_->handle();
  const nbd_completion_callback cb{&core::replied, &o, nullptr};
  o.state = op_state::wire;
  if (on_wire_++ == 0) last_reply_ = std::chrono::steady_clock::now();
  std::int64_t cookie = -1;
  switch (o.kind) {
    case op_kind::read:
      cookie = nbd_aio_pread(h, o.buf, o.length, o.offset, cb, 0);
      break;
    case op_kind::write:
      cookie = nbd_aio_pwrite(h, o.buf, o.length, o.offset, cb, 0);
      break;
    case op_kind::flush:
      cookie = nbd_aio_flush(h, cb, 0);
      break;
    case op_kind::trim:
      o.piece = std::min(o.length - o.cursor, max_trim);
      cookie = nbd_aio_trim(h, o.piece, o.offset + o.cursor, cb, 0);
      break;
  }
  if (cookie != -1) return true;
  // Refused before it was queued: libnbd calls no callback then.
  --on_wire_;
  const int err = nbd_get_errno();
  const char* msg = nbd_get_error();
  if (link_->down()) {
    link_->note_error(msg ? msg : "", err);
    o.state = op_state::waiting;
    waiting_.push_front(&o);
    return false;
  }
  finish(&o, errno_code(err != 0 ? err : EIO));  // unaligned, too long, not offered by the server
  return true;
}

// libnbd's completion callback, inside one of its calls: no libnbd call here.
int core::replied(void* user_data, int* error) {
  auto& o = *static_cast<op*>(user_data);
  o.owner->on_reply(o, *error);
  return 1;  // retire the command
}

void core::on_reply(op& o, int err) {
  if (o.state != op_state::wire || quiet_) return;
  --on_wire_;
  last_reply_ = std::chrono::steady_clock::now();
  if (err == ENOTCONN || err == ESHUTDOWN) {
    // The connection went (or the server is going) before an answer: the
    // operation did not happen as far as we know, and goes again.
    if (err == ESHUTDOWN) doomed_ = "the server is shutting down";
    requeue(o);
    return;
  }
  if (err == 0 && o.kind == op_kind::trim && (o.cursor += o.piece) < o.length) {
    o.state = op_state::waiting;
    waiting_.push_front(&o);
    return;
  }
  finish(&o, err != 0 ? errno_code(err) : error_code{});
}

// Completions go out together on a later turn of the executor, never from
// inside the call that started an operation, nor from inside libnbd.
void core::finish(op* o, error_code ec) {
  o->ec = ec;
  o->state = op_state::done;
  done_.push_back(o);
  if (delivering_) return;
  delivering_ = true;
  asio::post(ex_, [self = shared_from_this()] { self->deliver(); });
}

void core::deliver() {
  delivering_ = false;
  if (closing_) return;
  while (op* o = done_.pop_front()) {
    completion* c = std::exchange(o->done, nullptr);
    const error_code ec = o->ec;
    o->state = op_state::free;
    free_.push_back(o);
    c->complete(ec);
  }
}

void core::cancel_waiting() {
  while (op* o = waiting_.pop_front()) finish(o, asio::error::operation_aborted);
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
