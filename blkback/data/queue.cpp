#include "blkback/data/queue.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <sys/mman.h>

#include <optional>

namespace xbd::blkback {

namespace asio = boost::asio;
using asio_xen::error_code;

namespace {

const asio_xen::xen_call_category mmap_call{"mmap"};

const char* what(op_kind k) {
  switch (k) {
    case op_kind::read:
      return "read";
    case op_kind::write:
      return "write";
    case op_kind::flush:
      return "flush";
    case op_kind::barrier:
      return "barrier";
    case op_kind::discard:
      return "discard";
  }
  return "request";
}

}  // namespace

struct queue::slot {
  std::byte* buf = nullptr;
  checked_request req;
  std::vector<segment> segs;
  std::vector<asio_xen::copy_segment> copies;
  // Indirect requests: the segment descriptors, fetched once from the
  // guest's indirect pages (XSA-155 applies to them as to the ring).
  std::vector<blkif_request_segment> descriptors;
  storage_wait io;    // where the storage channel resumes serve()
  frame_arena frame;  // serve()'s coroutine frame

  std::span<std::byte> data() const { return {buf, req.length}; }
};

asio_xen::result<std::unique_ptr<queue>> queue::connect(const worker& w, const xen_platform& xen,
                                                        const queue_params& params, storage::store& store, logger lg) {
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
  auto ch = asio_xen::event_channel::bind_interdomain(w.ex, std::move(*ed), params.frontend_domid, params.remote_port);
  if (!ch) return ch.error();
  auto chan = store.open_channel(w, ring->size());
  if (!chan) return chan.error();
  std::unique_ptr<queue> q(new queue(w.ex, std::move(gt), std::move(*mem), std::move(*ring), std::move(*ch), params,
                                     std::move(*chan), std::move(lg)));
  // Bounce buffers: reserved for every slot, committed only when touched.
  q->buffers_size_ = q->slot_bytes_ * q->slots_.size();
  void* p =
      ::mmap(nullptr, q->buffers_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return asio_xen::xen_error(mmap_call);
  q->buffers_ = p;
  for (std::size_t i = 0; i < q->slots_.size(); ++i)
    q->slots_[i]->buf = static_cast<std::byte*>(p) + i * q->slot_bytes_;
  return q;
}

queue::queue(asio::any_io_executor ex, asio_xen::grant_table gt, asio_xen::grant_mapping ring_mem, abi_ring ring,
             asio_xen::event_channel evtchn, const queue_params& params, std::unique_ptr<storage::channel> chan,
             logger lg)
    : ex_(ex),
      gnttab_(std::move(gt)),
      ring_mem_(std::move(ring_mem)),
      ring_(std::move(ring)),
      evtchn_(std::move(evtchn)),
      params_(params),
      chan_(std::move(chan)),
      log_(std::move(lg)),
      idle_(ex),
      budget_(params.budget ? params.budget : std::make_shared<log_budget>()) {
  const std::size_t max_segments =
      std::max<std::size_t>(BLKIF_MAX_SEGMENTS_PER_REQUEST, params.limits.max_indirect_segments);
  slot_bytes_ = max_segments * xen::page_size;
  slots_.reserve(ring_.size());
  for (std::uint32_t i = 0; i < ring_.size(); ++i) {
    auto s = std::make_unique<slot>();
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
  evtchn_.cancel();  // a wake-up, not an Asio cancel (asio_xen/wakeable.hpp)
  idle_.cancel();
}

// Until every request taken from the ring has been answered and pushed.
asio::awaitable<void> queue::wait_idle() {
  waiting_idle_ = true;
  while (in_flight_ > 0 || push_scheduled_) {
    idle_.expires_at(asio::steady_timer::time_point::max());
    co_await idle_.async_wait(asio::as_tuple(asio::use_awaitable));
  }
  waiting_idle_ = false;
}

asio::awaitable<error_code> queue::run() {
  error_code result;
  // Requests may already be waiting (a backend restarted mid-connection):
  // look at the ring before the first wait.
  while (!stopping_) {
    auto n = ring_.unconsumed_requests();
    if (n && *n == 0) {
      // XSA-332: drain, then sleep with the final check, never spin.
      auto more = ring_.final_check_for_requests();
      if (!more) n = more.error();
      if (more && *more) continue;
    }
    if (!n) {
      XBD_LOG(log_, error) << "frontend published an impossible request index; this ring is halted";
      result = n.error();
      break;
    }
    if (*n == 0) {
      error_code ec = co_await evtchn_.wait();
      if (ec == asio::error::operation_aborted) continue;  // stop()
      if (ec) {
        XBD_LOG(log_, error) << "event channel failed: " << ec.what() << "; this ring is halted";
        result = ec;
        break;
      }
      continue;
    }
    for (std::uint32_t i = 0; i < *n && !stopping_; ++i) {
      wire_request w = ring_.consume_request();
      ++stats_.requests;
      if (free_.empty()) {
        // Cannot happen with a sane ring (one slot per entry); answer
        // rather than trust it.
        respond(w.id, w.operation, BLKIF_RSP_ERROR);
        continue;
      }
      const bool barrier = w.operation == BLKIF_OP_WRITE_BARRIER && params_.limits.barrier;
      // A barrier orders the stream: everything before it is finished
      // first, and nothing after it starts until it is done.
      if (barrier) co_await wait_idle();
      serve(acquire(), w);
      if (barrier) {
        co_await wait_idle();
        break;  // look at the ring afresh
      }
    }
  }
  stopping_ = true;
  XBD_LOG(log_, debug) << "ring stopping with " << in_flight_ << " request(s) in flight";
  // Answer everything in flight before returning: the guest gets a response
  // for every request we took, and nothing can call back into this queue
  // once run() has returned (docs/architecture.md, "Lifetimes").
  co_await wait_idle();
  push_now();
  co_return result;
}

// GCC (12, without optimisation) takes the frame's deallocation by the
// promise's usual operator delete for a mismatch with its slot-taking
// operator new; that pairing is exactly what [dcl.fct.def.coroutine] asks for.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
// One request, from the copy taken out of the ring to its response. Runs
// eagerly up to its first storage operation, so requests are validated and
// started in ring order.
request_task queue::serve(slot& s, wire_request w) {
  validation v = validate(w, params_.limits, s.segs);
  if (auto* need = std::get_if<needs_indirect>(&v)) v = fetch_indirect(s, w, *need);
  if (auto* r = std::get_if<rejected>(&v)) {
    reject(s, *r);
    co_return;
  }
  s.req = std::get<checked_request>(v);
  error_code ec;
  switch (s.req.kind) {
    case op_kind::read:
      ec = co_await s.io.on([&](storage::completion& c) { chan_->read(s.req.offset, s.data(), c); });
      if (!ec && !copy_segments(s, true)) co_return finish(s, BLKIF_RSP_ERROR);
      if (!ec) stats_.bytes_read += s.req.length;
      break;
    case op_kind::write:
    case op_kind::flush:
    case op_kind::barrier:
      if (s.req.length > 0) {
        if (!copy_segments(s, false)) co_return finish(s, BLKIF_RSP_ERROR);
        ec = co_await s.io.on([&](storage::completion& c) { chan_->write(s.req.offset, s.data(), c); });
        if (!ec) stats_.bytes_written += s.req.length;
      }
      if (!ec && (s.req.length == 0 || s.req.flush_after))
        ec = co_await s.io.on([&](storage::completion& c) { chan_->flush(c); });
      break;
    case op_kind::discard:
      ec = co_await s.io.on(
          [&](storage::completion& c) { chan_->discard(s.req.offset, s.req.length, s.req.secure, c); });
      break;
  }
  finish(s, account(s, ec));
}
#pragma GCC diagnostic pop

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
  if (error_code ec = gnttab_.copy(s.copies))
    return rejected{w.id, w.indirect_op, BLKIF_RSP_ERROR, "indirect pages could not be copied"};
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
  error_code ec = gnttab_.copy(s.copies);
  if (!ec) return true;
  // XSA-362/365: a bad grant is the guest's mistake, answered with ERROR.
  ++stats_.failed;
  if (budget_->spend(failure_kind::grant))
    XBD_LOG(log_, warning) << "grant copy for request " << s.req.id << " failed: " << ec.what();
  else
    XBD_LOG(log_, debug) << "grant copy for request " << s.req.id << " failed: " << ec.what();
  return false;
}

// Answered without I/O: the request failed a check.
void queue::reject(slot& s, const rejected& r) {
  ++stats_.rejected;
  if (budget_->spend(failure_kind::rejected))
    XBD_LOG(log_, warning) << "rejected request " << r.id << ": " << r.reason;
  else
    XBD_LOG(log_, debug) << "rejected request " << r.id << ": " << r.reason;
  release(s);
  respond(r.id, r.operation, r.status);
}

// The status a storage result earns, counted and (within budget) logged.
std::int16_t queue::account(const slot& s, error_code ec) {
  if (!ec) {
    switch (s.req.kind) {
      case op_kind::read:
        ++stats_.reads;
        break;
      case op_kind::write:
        ++stats_.writes;
        break;
      case op_kind::flush:
      case op_kind::barrier:
        if (s.req.length > 0) ++stats_.writes;
        ++stats_.flushes;
        break;
      case op_kind::discard:
        ++stats_.discards;
        break;
    }
    return BLKIF_RSP_OKAY;
  }
  ++stats_.failed;
  // The store cannot do it after all (a filesystem without hole punching):
  // say so rather than claim an error.
  const bool unsupported = ec == boost::system::errc::operation_not_supported;
  if (budget_->spend(failure_kind::io))
    XBD_LOG(log_, warning) << what(s.req.kind) << " at " << s.req.offset << " failed: " << ec.message();
  else
    XBD_LOG(log_, debug) << what(s.req.kind) << " at " << s.req.offset << " failed: " << ec.message();
  return unsupported ? BLKIF_RSP_EOPNOTSUPP : BLKIF_RSP_ERROR;
}

void queue::finish(slot& s, std::int16_t status) {
  const std::uint64_t id = s.req.id;
  const std::uint8_t op = s.req.operation;
  release(s);
  respond(id, op, status);
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

void queue::set_sectors(std::uint64_t sectors) { params_.limits.sectors = sectors; }

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
    if ((stopping_ || waiting_idle_) && in_flight_ == 0) idle_.cancel();
  });
}

void queue::push_now() {
  if (ring_.push_responses()) {
    if (error_code ec = evtchn_.notify()) XBD_LOG(log_, debug) << "notify failed: " << ec.what();
  }
}

}  // namespace xbd::blkback
