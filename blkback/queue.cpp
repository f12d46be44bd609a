#include "blkback/queue.hpp"

#include "blkback/handler_memory.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_allocator.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/random_access_file.hpp>
#include <boost/asio/read_at.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write_at.hpp>

#include <boost/asio/thread_pool.hpp>

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <optional>

namespace xbd::blkback {

namespace asio = boost::asio;
using asio_xen::error_code;

namespace {

// Rejected requests are logged at warning up to this many per connection;
// the rest are counted (a guest must not be able to flood the log).
constexpr unsigned max_logged_rejections = 5;

const asio_xen::xen_call_category mmap_call{"mmap"};

// Asio's default completion condition (transfer_all) caps each underlying
// read or write at 64 KiB, which turns a 1 MiB request into 16 serial
// I/Os. Ask for everything that is left in one go.
auto whole(std::uint64_t length) {
  return [length](const error_code& ec, std::size_t done) -> std::size_t { return ec ? 0 : length - done; };
}

}  // namespace

struct queue::slot final : aux_completion {
  queue* owner = nullptr;
  std::byte* buf = nullptr;
  std::optional<asio::random_access_file> file;
  checked_request req;
  std::vector<segment> segs;
  std::vector<asio_xen::copy_segment> copies;
  handler_arena arena;

  arena_allocator<void> allocator() { return arena_allocator<void>(arena); }

  // A flush finished.
  // Indirect requests: the segment descriptors, fetched once from the
  // guest's indirect pages (XSA-155 applies to them as to the ring).
  std::vector<blkif_request_segment> descriptors;

  // A flush or discard finished.
  void aux_complete(error_code ec) override { owner->aux_done(*this, ec); }
};

asio_xen::result<std::unique_ptr<queue>> queue::connect(asio::any_io_executor ex, const xen_platform& xen,
                                                        const queue_params& params, const backing_store& store,
                                                        std::shared_ptr<aux_ring> aux, logger lg) {
  if (params.ring_refs.empty()) return error_code(EINVAL, boost::system::generic_category());
  auto gd = xen.open_gnttab();
  if (!gd) return gd.error();
  asio_xen::grant_table gt(std::move(*gd));
  // We map only ring pages; data moves by grant copy.
  if (error_code ec = gt.set_max_grants(static_cast<std::uint32_t>(params.ring_refs.size()))) return ec;
  auto mem = gt.map(params.frontend_domid, params.ring_refs, true);
  if (!mem) return mem.error();
  auto ring = abi_ring::attach(params.layout, mem->bytes());
  if (!ring) return ring.error();
  auto ed = xen.open_evtchn();
  if (!ed) return ed.error();
  auto ch = asio_xen::event_channel::bind_interdomain(ex, std::move(*ed), params.frontend_domid, params.remote_port);
  if (!ch) return ch.error();
  std::unique_ptr<queue> q(new queue(ex, std::move(gt), std::move(*mem), std::move(*ring), std::move(*ch), params,
                                     store, std::move(aux), std::move(lg)));
  // Bounce buffers: reserved for every slot, committed only when touched.
  q->buffers_size_ = q->slot_bytes_ * q->slots_.size();
  void* p = ::mmap(nullptr, q->buffers_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
  if (p == MAP_FAILED) return asio_xen::xen_error(mmap_call);
  q->buffers_ = p;
  for (std::size_t i = 0; i < q->slots_.size(); ++i)
    q->slots_[i]->buf = static_cast<std::byte*>(p) + i * q->slot_bytes_;
  return q;
}

queue::queue(asio::any_io_executor ex, asio_xen::grant_table gt, asio_xen::grant_mapping ring_mem, abi_ring ring,
             asio_xen::event_channel evtchn, const queue_params& params, const backing_store& store,
             std::shared_ptr<aux_ring> aux, logger lg)
    : ex_(ex),
      gnttab_(std::move(gt)),
      ring_mem_(std::move(ring_mem)),
      ring_(std::move(ring)),
      evtchn_(std::move(evtchn)),
      params_(params),
      fd_(store.fd()),
      block_device_(store.properties().block_device),
      aux_(std::move(aux)),
      log_(std::move(lg)),
      idle_(ex) {
  const std::size_t max_segments =
      std::max<std::size_t>(BLKIF_MAX_SEGMENTS_PER_REQUEST, params.limits.max_indirect_segments);
  slot_bytes_ = max_segments * xen::page_size;
  slots_.reserve(ring_.size());
  for (std::uint32_t i = 0; i < ring_.size(); ++i) {
    auto s = std::make_unique<slot>();
    s->owner = this;
    s->segs.resize(max_segments);
    s->copies.reserve(std::max<std::size_t>(max_segments, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST));
    if (params.limits.max_indirect_segments > 0) s->descriptors.resize(params.limits.max_indirect_segments);
    slots_.push_back(std::move(s));
  }
  free_.reserve(slots_.size());
  for (auto it = slots_.rbegin(); it != slots_.rend(); ++it) free_.push_back(it->get());
}

queue::~queue() {
  if (buffers_) ::munmap(buffers_, buffers_size_);
}

void queue::stop() {
  stopping_ = true;
  evtchn_.cancel();
  idle_.cancel();
}

asio::awaitable<void> queue::drain() {
  draining_ = true;
  while (in_flight_ > 0 || push_scheduled_) {
    idle_.expires_at(asio::steady_timer::time_point::max());
    co_await idle_.async_wait(asio::as_tuple(asio::use_awaitable));
  }
  draining_ = false;
}

asio::awaitable<error_code> queue::run() {
  error_code result;
  // Requests may already be waiting (a backend restarted mid-connection):
  // look at the ring before the first wait.
  while (!stopping_) {
    auto n = ring_.unconsumed_requests();
    if (!n) {
      XBD_LOG(log_, error) << "frontend published an impossible request index; this ring is halted";
      result = n.error();
      break;
    }
    if (*n == 0) {
      // XSA-332: drain, then sleep with the final check, never spin.
      auto more = ring_.final_check_for_requests();
      if (!more) {
        XBD_LOG(log_, error) << "frontend published an impossible request index; this ring is halted";
        result = more.error();
        break;
      }
      if (*more) continue;
      error_code ec = co_await evtchn_.wait();
      if (ec == asio::error::operation_aborted) continue;  // stop(), or a spurious cancel
      if (ec) {
        XBD_LOG(log_, error) << "event channel failed: " << ec.what() << "; this ring is halted";
        result = ec;
        break;
      }
      continue;
    }
    for (std::uint32_t i = 0; i < *n && !stopping_; ++i) {
      wire_request w = ring_.consume_request();
      if (w.operation == BLKIF_OP_WRITE_BARRIER && params_.limits.barrier) {
        // A barrier orders the stream: everything before it is finished
        // first, and nothing after it starts until it is done.
        co_await drain();
        dispatch(w);
        co_await drain();
        break;  // look at the ring afresh
      }
      dispatch(w);
    }
  }
  stopping_ = true;
  XBD_LOG(log_, debug) << "ring stopping with " << in_flight_ << " request(s) in flight";
  // Answer everything in flight before returning: the guest gets a response
  // for every request we took.
  while (in_flight_ > 0 || push_scheduled_) {
    idle_.expires_at(asio::steady_timer::time_point::max());
    co_await idle_.async_wait(asio::as_tuple(asio::use_awaitable));
  }
  push_now();
  if (rejections_logged_ > max_logged_rejections)
    XBD_LOG(log_, warning) << (rejections_logged_ - max_logged_rejections) << " more requests were rejected";
  co_return result;
}

queue::slot& queue::acquire() {
  slot* s = free_.back();
  free_.pop_back();
  ++in_flight_;
  return *s;
}

void queue::release(slot& s) {
  free_.push_back(&s);
  --in_flight_;
}

void queue::log_rejection(const char* what, std::uint64_t id) {
  ++stats_.rejected;
  if (rejections_logged_++ < max_logged_rejections)
    XBD_LOG(log_, warning) << "rejected request " << id << ": " << what;
  else
    XBD_LOG(log_, debug) << "rejected request " << id << ": " << what;
}

void queue::dispatch(const wire_request& w) {
  ++stats_.requests;
  if (free_.empty()) {
    // Cannot happen with a sane ring (one slot per entry); answer rather
    // than trust it.
    respond(w.id, w.operation, BLKIF_RSP_ERROR);
    return;
  }
  slot& s = acquire();
  validation v = validate(w, params_.limits, s.segs);
  if (auto* r = std::get_if<rejected>(&v)) {
    log_rejection(r->reason, r->id);
    release(s);
    respond(r->id, r->operation, r->status);
    return;
  }
  if (auto* need = std::get_if<needs_indirect>(&v)) {
    v = fetch_indirect(s, w, *need);
    if (auto* r = std::get_if<rejected>(&v)) {
      log_rejection(r->reason, r->id);
      release(s);
      respond(r->id, r->operation, r->status);
      return;
    }
  }
  s.req = std::get<checked_request>(v);
  switch (s.req.kind) {
    case op_kind::read:
      start_read(s);
      break;
    case op_kind::write:
    case op_kind::flush:
    case op_kind::barrier:
      if (s.req.length == 0) {
        start_flush(s);
        break;
      }
      if (!copy_segments(s, false)) {
        complete(s, BLKIF_RSP_ERROR);
        break;
      }
      start_write(s);
      break;
    case op_kind::discard:
      start_discard(s);
      break;
  }
}

// Copies an indirect request's descriptors out of the guest's indirect
// pages into the slot, once, and validates that private copy.
validation queue::fetch_indirect(slot& s, const wire_request& w, const needs_indirect& need) {
  s.copies.clear();
  const auto dom = static_cast<std::uint16_t>(params_.frontend_domid);
  std::size_t bytes = std::size_t{need.nr_segments} * sizeof(blkif_request_segment);
  auto* dest = reinterpret_cast<std::byte*>(s.descriptors.data());
  for (std::uint16_t page = 0; page < need.pages; ++page) {
    const auto len = static_cast<std::uint16_t>(std::min<std::size_t>(bytes, xen::page_size));
    s.copies.push_back(asio_xen::copy_from_guest(dom, w.indirect_grefs[page], 0, dest + page * xen::page_size, len));
    bytes -= len;
  }
  if (error_code ec = gnttab_.copy(s.copies)) {
    ++stats_.failed;
    return rejected{w.id, w.indirect_op, BLKIF_RSP_ERROR, "indirect pages could not be copied"};
  }
  return validate_indirect(w, std::span(s.descriptors.data(), need.nr_segments), params_.limits, s.segs);
}

// Grant copy between the guest's segments and the slot's buffer, where the
// segments lie back to back in disk order.
bool queue::copy_segments(slot& s, bool to_guest) {
  s.copies.clear();
  std::size_t off = 0;
  const auto dom = static_cast<std::uint16_t>(params_.frontend_domid);
  for (const segment& seg : s.req.segments) {
    std::byte* local = s.buf + off;
    s.copies.push_back(to_guest ? asio_xen::copy_to_guest(dom, seg.gref, seg.offset, local, seg.length)
                                : asio_xen::copy_from_guest(dom, seg.gref, seg.offset, local, seg.length));
    off += seg.length;
  }
  std::size_t failed = 0;
  error_code ec = gnttab_.copy(s.copies, &failed);
  if (ec) {
    // XSA-362/365: a bad grant is the guest's mistake, answered with ERROR.
    ++stats_.failed;
    if (rejections_logged_++ < max_logged_rejections)
      XBD_LOG(log_, warning) << "grant copy for request " << s.req.id << " failed: " << ec.what();
    return false;
  }
  return true;
}

// Each slot's own file object, on its own dup of the backing descriptor
// (io.md: Asio runs one operation at a time per file object).
bool queue::ensure_file(slot& s) {
  if (s.file) return true;
  int fd = ::dup(fd_);
  if (fd < 0) {
    ++stats_.failed;
    if (rejections_logged_++ < max_logged_rejections)
      XBD_LOG(log_, warning) << "cannot duplicate the backing descriptor: " << std::strerror(errno);
    return false;
  }
  s.file.emplace(ex_, fd);
  return true;
}

void queue::start_read(slot& s) {
  if (!ensure_file(s)) {
    complete(s, BLKIF_RSP_ERROR);
    return;
  }
  asio::async_read_at(*s.file, s.req.offset, asio::buffer(s.buf, s.req.length), whole(s.req.length),
                      asio::bind_allocator(s.allocator(), [this, &s](error_code ec, std::size_t n) {
                        if (!io_done(s, ec, n, "read")) return;
                        ++stats_.reads;
                        stats_.bytes_read += n;
                        complete(s, copy_segments(s, true) ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR);
                      }));
}

void queue::start_write(slot& s) {
  if (!ensure_file(s)) {
    complete(s, BLKIF_RSP_ERROR);
    return;
  }
  asio::async_write_at(*s.file, s.req.offset, asio::buffer(s.buf, s.req.length), whole(s.req.length),
                       asio::bind_allocator(s.allocator(), [this, &s](error_code ec, std::size_t n) {
                         if (!io_done(s, ec, n, "write")) return;
                         ++stats_.writes;
                         stats_.bytes_written += n;
                         if (s.req.flush_after)
                           start_flush(s);
                         else
                           complete(s, BLKIF_RSP_OKAY);
                       }));
}

// A read or write came back: false (and the request answered ERROR) if it
// failed or fell short. An I/O error fails that request only.
bool queue::io_done(slot& s, const error_code& ec, std::size_t n, const char* what) {
  if (!ec && n == s.req.length) return true;
  ++stats_.failed;
  if (rejections_logged_++ < max_logged_rejections)
    XBD_LOG(log_, warning) << what << " at " << s.req.offset << " failed: " << (ec ? ec.message() : "short transfer");
  complete(s, BLKIF_RSP_ERROR);
  return false;
}

void queue::start_flush(slot& s) { aux_->fdatasync(fd_, s); }

// Discard: a hole punched in a file (io_uring FALLOCATE), or BLKDISCARD /
// BLKSECDISCARD on a block device. The ioctls block and have no io_uring
// form on the kernels we support, so they run on a small pool and complete
// back on this thread.
void queue::start_discard(slot& s) {
  if (!block_device_) {
    aux_->fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, s.req.offset, s.req.length, s);
    return;
  }
  asio::post(blocking_pool(), [this, &s, fd = fd_, ex = ex_] {
    std::uint64_t range[2] = {s.req.offset, s.req.length};
    error_code ec;
    if (::ioctl(fd, s.req.secure ? BLKSECDISCARD : BLKDISCARD, range) != 0)
      ec = error_code(errno, boost::system::generic_category());
    asio::post(ex, [this, &s, ec] { aux_done(s, ec); });
  });
}

void queue::aux_done(slot& s, error_code ec) {
  const bool discard = s.req.kind == op_kind::discard;
  if (ec == boost::system::errc::operation_not_supported) {
    // The backing store cannot do it after all (a filesystem without hole
    // punching): say so rather than claim an error.
    complete(s, BLKIF_RSP_EOPNOTSUPP);
    return;
  }
  if (ec) {
    ++stats_.failed;
    if (rejections_logged_++ < max_logged_rejections)
      XBD_LOG(log_, warning) << (discard ? "discard" : "flush") << " failed: " << ec.message();
  } else {
    ++(discard ? stats_.discards : stats_.flushes);
  }
  complete(s, ec ? BLKIF_RSP_ERROR : BLKIF_RSP_OKAY);
}

asio::thread_pool& queue::blocking_pool() {
  static asio::thread_pool pool(2);
  return pool;
}

void queue::set_sectors(std::uint64_t sectors) { params_.limits.sectors = sectors; }

void queue::complete(slot& s, std::int16_t status) {
  const std::uint64_t id = s.req.id;
  const std::uint8_t op = s.req.operation;
  release(s);
  respond(id, op, status);
}

void queue::respond(std::uint64_t id, std::uint8_t op, std::int16_t status) {
  ring_.put_response(id, op, status);
  schedule_push();
}

// Responses completed in one turn of the io_context go out together, with
// one notification.
void queue::schedule_push() {
  if (push_scheduled_) return;
  push_scheduled_ = true;
  asio::post(ex_, [this] {
    push_scheduled_ = false;
    push_now();
    if ((stopping_ || draining_) && in_flight_ == 0) idle_.cancel();
  });
}

void queue::push_now() {
  if (ring_.push_responses()) {
    if (error_code ec = evtchn_.notify())
      XBD_LOG(log_, debug) << "notify failed: " << ec.what();
  }
}

}  // namespace xbd::blkback
