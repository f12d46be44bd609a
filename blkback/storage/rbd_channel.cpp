#include "blkback/storage/rbd_channel.hpp"

#include "asio_xen/wakeable.hpp"
#include "blkback/log.hpp"
#include "blkback/storage/rbd_mailbox.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>

#include <cerrno>
#include <cstring>
#include <vector>

namespace xbd::blkback::storage::rbd {

namespace asio = boost::asio;
using asio_xen::error_code;

namespace {

error_code errno_code(int e) { return {e, boost::system::generic_category()}; }

std::uint64_t bytes(std::span<const iovec> pieces) {
  std::uint64_t n = 0;
  for (const iovec& p : pieces) n += p.iov_len;
  return n;
}

const char* to_string(op_kind k) {
  switch (k) {
    case op_kind::read:
      return "read";
    case op_kind::write:
      return "write";
    case op_kind::flush:
      return "flush";
    case op_kind::discard:
      return "discard";
  }
  return "operation";
}

// The channel's state, shared with the coroutine that delivers completions:
// it stays until that coroutine has seen the channel close.
class core : public std::enable_shared_from_this<core> {
 public:
  core(const asio::any_io_executor& ex, unsigned depth, std::shared_ptr<const channel_config> cfg, int efd,
       asio_xen::wakeable_wait wait)
      : ex_(ex), cfg_(std::move(cfg)), box_(efd), wait_(std::move(wait)), ops_(depth) {
    for (op& o : ops_) {
      o.next = free_;
      free_ = &o;
    }
  }

  void start() { asio::co_spawn(ex_, pump(shared_from_this()), asio::detached); }
  void submit(op_kind k, std::uint64_t offset, std::uint64_t length, std::byte* buf, completion& done,
              std::span<const iovec> pieces = {});
  void refuse(completion& done, error_code ec);
  void close() {
    closing_ = true;
    wait_.close();
  }

 private:
  op* slot(completion& done);
  static void finished(rbd_completion_t c, void* arg);
  asio::awaitable<void> pump(std::shared_ptr<core> self);
  void deliver();
  void log_failure(const op& o, const error_code& ec);

  asio::any_io_executor ex_;
  std::shared_ptr<const channel_config> cfg_;
  mailbox box_;  // owns the eventfd that wait_ watches
  asio_xen::wakeable_wait wait_;
  std::vector<op> ops_;  // never resized: librbd holds pointers into it
  op* free_ = nullptr;
  bool closing_ = false;
  logger lg_;
};

op* core::slot(completion& done) {
  op* o = free_;
  if (!o) {
    // More than the ring's depth in flight: its bug. Still never inline.
    asio::post(ex_, [&done] { done.complete(errno_code(EBUSY)); });
    return nullptr;
  }
  free_ = o->next;
  o->next = nullptr;
  o->done = &done;
  o->ec = {};
  o->refused = false;
  return o;
}

void core::submit(op_kind k, std::uint64_t offset, std::uint64_t length, std::byte* buf, completion& done,
                  std::span<const iovec> pieces) {
  op* o = slot(done);
  if (!o) return;
  o->kind = k;
  o->offset = offset;
  o->length = length;
  o->buf = buf;
  o->pieces = pieces;
  o->box = &box_;
  o->keep = shared_from_this();
  rbd_completion_t c = nullptr;
  int r = rbd_aio_create_completion(o, &core::finished, &c);
  if (r == 0) {
    rbd_image_t img = cfg_->image;
    char* data = reinterpret_cast<char*>(buf);
    const int n = static_cast<int>(pieces.size());
    switch (k) {
      case op_kind::read:
        r = n ? rbd_aio_readv(img, pieces.data(), n, offset, c) : rbd_aio_read(img, offset, length, data, c);
        break;
      case op_kind::write:
        r = n ? rbd_aio_writev(img, pieces.data(), n, offset, c) : rbd_aio_write(img, offset, length, data, c);
        break;
      case op_kind::flush:
        r = rbd_aio_flush(img, c);
        break;
      case op_kind::discard:
        r = rbd_aio_discard(img, offset, length, c);
        break;
    }
    if (r < 0) rbd_aio_release(c);  // refused at once: no callback will come
  }
  if (r < 0) {
    o->ec = errno_code(-r);
    o->keep.reset();
    box_.post(o);
  }
}

void core::refuse(completion& done, error_code ec) {
  op* o = slot(done);
  if (!o) return;
  o->ec = ec;
  o->refused = true;
  box_.post(o);
}

// The tail of a short read, from `at` bytes on, in the buffer or the pieces.
void zero_from(op& o, std::uint64_t at) {
  if (o.pieces.empty()) {
    std::memset(o.buf + at, 0, o.length - at);
    return;
  }
  for (const iovec& p : o.pieces) {
    if (at < p.iov_len) std::memset(static_cast<std::byte*>(p.iov_base) + at, 0, p.iov_len - at);
    at = at > p.iov_len ? at - p.iov_len : 0;
  }
}

// librbd's thread. The reference to the channel's state is taken out of the
// slot first: once posted, the slot is the ring's, and the channel may go.
void core::finished(rbd_completion_t c, void* arg) {
  op* o = static_cast<op*>(arg);
  const ssize_t r = rbd_aio_get_return_value(c);
  rbd_aio_release(c);
  // A read that ran past the end of a shrunk image comes back short; the
  // rest reads as zeroes, as a block device's would.
  if (o->kind == op_kind::read && r >= 0 && static_cast<std::uint64_t>(r) < o->length)
    zero_from(*o, static_cast<std::uint64_t>(r));
  o->ec = r < 0 ? errno_code(static_cast<int>(-r)) : error_code{};
  const std::shared_ptr<void> keep = std::move(o->keep);
  o->box->post(o);
}

// NOLINTNEXTLINE(performance-unnecessary-value-param): keeps the state alive across suspensions
asio::awaitable<void> core::pump(std::shared_ptr<core> self) {
  (void)self;
  while (!closing_) {
    const error_code ec = co_await wait_.wait();
    if (closing_ || ec == asio_xen::errc::closed) co_return;
    deliver();
  }
}

// Each slot is free again before its completion runs, so that the ring can
// start its next request from inside it.
void core::deliver() {
  op* o = box_.take();
  while (o && !closing_) {
    op* next = o->next;
    completion* done = std::exchange(o->done, nullptr);
    const error_code ec = o->ec;
    if (ec && !o->refused) log_failure(*o, ec);
    o->next = free_;
    free_ = o;
    done->complete(ec);
    o = next;
  }
}

// Nothing per request above debug, and few warnings whatever the cluster
// does: the budget is shared by every ring of the image.
void core::log_failure(const op& o, const error_code& ec) {
  if (cfg_->budget->spend(failure_kind::io))
    XBD_LOG(lg_, warning) << cfg_->name << ": " << to_string(o.kind) << " of " << o.length << " bytes at " << o.offset
                          << " failed: " << ec.message();
  else
    XBD_LOG(lg_, debug) << cfg_->name << ": " << to_string(o.kind) << " of " << o.length << " bytes at " << o.offset
                        << " failed: " << ec.message();
}

class rbd_channel final : public channel, public vectored_io {
 public:
  rbd_channel(std::shared_ptr<core> c, const properties& p) : c_(std::move(c)), props_(p) {}
  ~rbd_channel() override { c_->close(); }
  rbd_channel(const rbd_channel&) = delete;
  rbd_channel& operator=(const rbd_channel&) = delete;

  void read(std::uint64_t offset, std::span<std::byte> into, completion& done) override {
    c_->submit(op_kind::read, offset, into.size(), into.data(), done);
  }
  void write(std::uint64_t offset, std::span<const std::byte> from, completion& done) override {
    if (!props_.writable) return c_->refuse(done, errno_code(EROFS));
    // librbd only reads a write's buffer (and copies it: rbd_disable_zero_copy_writes).
    c_->submit(op_kind::write, offset, from.size(), const_cast<std::byte*>(from.data()), done);
  }
  // On the guest's pages (persistent grants): librbd reads into them, and
  // copies a write's pieces when it is submitted.
  vectored_io* vectored() override { return this; }
  void readv(std::uint64_t offset, std::span<const iovec> into, completion& done) override {
    c_->submit(op_kind::read, offset, bytes(into), nullptr, done, into);
  }
  void writev(std::uint64_t offset, std::span<const iovec> from, completion& done) override {
    if (!props_.writable) return c_->refuse(done, errno_code(EROFS));
    c_->submit(op_kind::write, offset, bytes(from), nullptr, done, from);
  }
  void flush(completion& done) override { c_->submit(op_kind::flush, 0, 0, nullptr, done); }
  void discard(std::uint64_t offset, std::uint64_t length, bool secure, completion& done) override {
    if (secure || !props_.discard) return c_->refuse(done, asio::error::operation_not_supported);
    c_->submit(op_kind::discard, offset, length, nullptr, done);
  }

 private:
  std::shared_ptr<core> c_;
  properties props_;
};

}  // namespace

asio_xen::result<std::unique_ptr<channel>> open_channel(const asio::any_io_executor& ex, unsigned depth,
                                                        std::shared_ptr<const channel_config> cfg) {
  const int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd < 0) return asio_xen::xen_error(asio_xen::call::eventfd);
  auto wait = asio_xen::wakeable_wait::create(ex, efd);
  if (!wait) {
    ::close(efd);
    return wait.error();
  }
  const properties props = cfg->props;
  auto c = std::make_shared<core>(ex, depth, std::move(cfg), efd, std::move(*wait));
  c->start();
  return std::unique_ptr<channel>(new rbd_channel(std::move(c), props));
}

}  // namespace xbd::blkback::storage::rbd
