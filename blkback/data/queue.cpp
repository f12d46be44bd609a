#include "blkback/data/queue.hpp"

#include "blkback/data/fault.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <sys/mman.h>

#include <cstdlib>
#include <ctime>
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

// The steady clock (CLOCK_MONOTONIC, which steady_clock reads) straight
// through the vDSO, without libstdc++'s out-of-line wrapper: the hot path
// reads it once or twice per request. CLOCK_MONOTONIC_COARSE is the same
// clock to the kernel's tick, cheaper still: when pages were last used, for
// decisions made in tenths of a second.
std::chrono::steady_clock::time_point monotonic(clockid_t id) {
  timespec ts{};
  ::clock_gettime(id, &ts);
  return std::chrono::steady_clock::time_point(std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec));
}
std::chrono::steady_clock::time_point precise_now() { return monotonic(CLOCK_MONOTONIC); }
std::chrono::steady_clock::time_point coarse_now() { return monotonic(CLOCK_MONOTONIC_COARSE); }

}  // namespace

struct queue::slot {
  static constexpr std::uint32_t no_entry = ~std::uint32_t{0};
  std::uint32_t entry = no_entry;  // in the journal
  buffer_cache::chunk buf;
  checked_request req;
  std::unique_ptr<segment[]> segs;
  storage_wait io;                // where the storage channel resumes serve()
  asio_xen::error_code copy_ec;   // how its grant copies went
  std::optional<timed_op> timed;  // validated: its latency is recorded when answered
  // What the limits were charged for it, corrected once it is validated.
  std::optional<limited_request> charged;
  std::chrono::steady_clock::time_point started;
  // Served on the guest's own pages (zero-copy): the pieces its I/O runs
  // on, its own mapping, the persistent grants it holds, and the budget it
  // was charged for mapped pages.
  bool on_pages = false;
  std::vector<iovec> pieces;
  asio_xen::grant_mapping grants;
  std::vector<asio_xen::grant_ref> held;
  std::uint64_t page_charge = 0;
  // The pages spilled instead (queue::spill_): each one's segment and its
  // place in `spill`, one page per segment, charged as page_charge.
  struct spilled_page {
    std::size_t seg;
    std::byte* at;
  };
  std::vector<spilled_page> spilled;
  buffer_cache::chunk spill;
  frame_arena frame;  // serve()'s coroutine frame

  std::span<std::byte> data() const { return {buf.data, req.length}; }
};

// serve()'s wait for its grant copies, which run with the rest of the
// turn's (copy_batch.hpp). True if they all went through.
struct queue::copy_wait {
  queue& q;
  slot& s;
  bool to_guest;
  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<> h) { q.queue_copies(s, to_guest, h); }
  bool await_resume() { return q.copied(s); }
};

// Told by the budget that memory was freed: ends the ring's wait for it.
// Shared with the posted wake-up, which may run after the queue is gone.
struct queue::memory_wake final : memory_waiter, std::enable_shared_from_this<memory_wake> {
  explicit memory_wake(const asio::any_io_executor& ex) : timer(ex) {}
  void memory_freed() override {
    asio::post(timer.get_executor(), [self = shared_from_this()] { self->timer.cancel(); });
  }
  asio::steady_timer timer;
};

// Told by the vbd's throttle group that its limits changed (from the
// control thread): ends the ring's wait for them, which is then computed
// afresh.
struct queue::throttle_wake final : throttle_waiter, std::enable_shared_from_this<throttle_wake> {
  explicit throttle_wake(const asio::any_io_executor& ex) : timer(ex) {}
  void limits_changed() override {
    asio::post(timer.get_executor(), [self = shared_from_this()] { self->timer.cancel(); });
  }
  asio::steady_timer timer;
};

asio_xen::result<std::unique_ptr<queue>> queue::connect(const worker& w, const xen_platform& xen,
                                                        const queue_params& params, storage::store& store, logger lg) {
  if (params.ring_refs.empty()) return error_code(EINVAL, boost::system::generic_category());
  auto gd = xen.open_gnttab();
  if (!gd) return gd.error();
  asio_xen::grant_table gt(std::move(*gd));
  // The ring pages, and with zero-copy or persistent grants what the ring's
  // requests can have mapped at once (its budget bounds it further).
  const bool maps = params.zero_copy_min || params.persistent_grants > 0;
  const std::size_t entries = params.ring_refs.size() * 32;  // at most 32 requests per ring page, any layout
  const std::size_t most = entries * std::max<std::size_t>(params.limits.max_indirect_segments, 11);
  const std::size_t max_grants = params.ring_refs.size() + (maps ? most + params.persistent_grants : 0);
  if (error_code ec = gt.set_max_grants(static_cast<std::uint32_t>(std::min<std::size_t>(max_grants, 1u << 30))))
    return ec;
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
  std::optional<recovered_ring> rec;
  if (params.journal && params.recover) {
    auto r = params.journal->recover(ring->shared_rsp_prod(), ring->shared_req_prod());
    if (!r) return r.error();
    rec = std::move(*r);
  } else if (params.journal) {
    params.journal->start(ring->req_cons(), ring->rsp_prod_pvt());
  }
  std::unique_ptr<queue> q(new queue(w.ex, std::move(gt), std::move(*mem), std::move(*ring), std::move(*ch), params,
                                     std::move(*chan), std::move(lg)));
  q->vec_ = q->chan_->vectored();
  q->zero_copy_ = q->vec_ && params.zero_copy_min && store.props().direct;
  q->spill_ = store.props().direct && !params.zero_copy_min;
  if (q->vec_ && params.persistent_grants > 0)
    q->persistent_ = std::make_unique<persistent_grants>(q->gnttab_, params.frontend_domid, params.persistent_grants);
  if (rec) q->take_up(std::move(*rec));
  return q;
}

// After an unclean exit: the responses the guest may not have seen are
// written again and pushed, the ring resumes at the journal's indices, and
// the requests in flight wait for run() to execute them again.
void queue::take_up(recovered_ring rec) {
  const std::uint32_t pushed = ring_.shared_rsp_prod();
  ring_.resume_at(rec.req_cons, pushed);
  for (const recovered_response& r : rec.responses) ring_.put_response(r.id, r.op, r.status);
  (void)ring_.push_responses();
  // Always: the process before may have pushed responses and died before
  // the notification the frontend waits for.
  if (error_code ec = evtchn_.notify()) XBD_LOG(log_, debug) << "notify failed: " << ec.what();
  recovery_ = {static_cast<std::uint32_t>(rec.requests.size()), rec.answered_unfreed,
               static_cast<std::uint32_t>(rec.responses.size())};
  recovered_ = std::move(rec);
}

namespace {

// A queue without a vbd's account (unit tests) has a budget of its own.
std::shared_ptr<memory_budget> private_budget(const queue_params& p) {
  return p.memory ? nullptr : std::make_shared<memory_budget>(std::uint64_t{1} << 30);
}

}  // namespace

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
      max_segments_(std::max<std::size_t>(BLKIF_MAX_SEGMENTS_PER_REQUEST, params.limits.max_indirect_segments)),
      slot_charge_((sizeof(slot) + max_segments_ * sizeof(segment) + buffer_cache::page - 1) / buffer_cache::page *
                   buffer_cache::page),
      own_budget_(private_budget(params)),
      buffers_(params.memory ? params.memory : own_budget_->open_account()),
      idle_(ex),
      trim_(ex),
      pause_(ex),
      poll_(params.poll),
      burst_end_cons_(ring_.req_cons()),
      journal_(params.journal),
      memory_wake_(std::make_shared<memory_wake>(ex)),
      fair_(params.fair),
      throttle_wake_(std::make_shared<throttle_wake>(ex)),
      throttle_(params.throttle ? params.throttle->join(throttle_wake_) : nullptr),
      budget_(params.budget ? params.budget : std::make_shared<log_budget>()) {}

queue::~queue() {
  for (auto& s : slots_) give_kept(*s, std::chrono::steady_clock::now());
  persistent_.reset();
  buffers_.account().shrink(persistent_charge_);
  buffers_.account().forget(*memory_wake_);
  if (fair_) fair_->forget(*memory_wake_);
  buffers_.account().shrink(slot_charge_ * slots_.size());
}

void queue::stop() {
  stopping_ = true;
  // What waits for a lost network server ends now (answered ERROR), not
  // after [nbd] reconnect-seconds: a stop never waits on a server.
  chan_->cancel();
  evtchn_.cancel();  // a wake-up, not an Asio cancel (asio_xen/wakeable.hpp)
  idle_.cancel();
  trim_.cancel();
  pause_.cancel();
  memory_wake_->timer.cancel();
  throttle_wake_->timer.cancel();
}

// Until every request taken from the ring has been answered and pushed.
asio::awaitable<void> queue::wait_idle() {
  waiting_idle_ = true;
  while (in_flight_ > 0 || turn_end_scheduled_) {
    idle_.expires_at(asio::steady_timer::time_point::max());
    co_await idle_.async_wait(asio::as_tuple(asio::use_awaitable));
  }
  waiting_idle_ = false;
}

asio::awaitable<error_code> queue::run() {
  trimming_ = true;
  asio::co_spawn(ex_, trim_loop(), asio::detached);
  if (recovered_) co_await reissue();
  const error_code result = co_await serve_ring();
  stopping_ = true;
  in_flight_at_stop_ = in_flight_;
  XBD_LOG(log_, debug) << "ring stopping with " << in_flight_ << " request(s) in flight";
  // Answer everything in flight before returning: the guest gets a response
  // for every request we took, and nothing can call back into this queue
  // once run() has returned (docs/architecture.md, "Lifetimes").
  co_await wait_idle();
  push_now();
  trim_.cancel();
  while (trimming_) {
    idle_.expires_at(asio::steady_timer::time_point::max());
    co_await idle_.async_wait(asio::as_tuple(asio::use_awaitable));
  }
  buffers_.account().forget(*memory_wake_);
  if (fair_) fair_->forget(*memory_wake_);
  co_return result;
}

// Takes requests until stop() or a broken ring; see the header for the
// rules of a turn.
asio::awaitable<error_code> queue::serve_ring() {
  // Requests may already be waiting (a backend restarted mid-connection):
  // look at the ring before the first wait.
  while (!stopping_) {
    auto n = ring_.unconsumed_requests();
    if (n && *n == 0 && poll_due()) {
      const bool found = co_await poll_ring();
      if (found) continue;
    }
    if (n && *n == 0) {
      // XSA-332: drain, then sleep with the final check, never spin.
      auto more = ring_.final_check_for_requests();
      if (!more) n = more.error();
      if (more && *more) continue;
    }
    if (!n) {
      XBD_LOG(log_, error) << "frontend published an impossible request index; this ring is halted";
      co_return n.error();
    }
    if (*n == 0) {
      if (error_code ec = co_await sleep_for_event()) co_return ec;
      continue;
    }
    unsigned started = 0;
    std::uint64_t copied = 0;
    turn_start_ = precise_now();
    for (std::uint32_t i = 0; i < *n && !stopping_; ++i) {
      wire_request w = ring_.consume_request();
      took_since_event_ = true;
      const bool barrier = w.operation == BLKIF_OP_WRITE_BARRIER && params_.limits.barrier;
      // A barrier orders the stream: everything before it is finished
      // first, and nothing after it starts until it is done.
      if (barrier) co_await wait_idle();
      // Over the vbd's I/O limits: it stays in the ring until they allow it.
      const auto lim = throttle_ && throttle_->enabled() ? limited(w) : std::nullopt;
      if (lim) {
        const auto wait = throttle_->take(std::chrono::steady_clock::now(), lim->write, lim->bytes);
        if (wait > std::chrono::steady_clock::duration::zero()) {
          ring_.unconsume_request();
          co_await wait_for_limits(wait);
          break;
        }
      }
      bool memory = false;
      slot* s = admit(w, on_guest_pages(w), memory);
      if (s == nullptr) {
        // No memory for it now, or other vbds' turn: it stays in the ring,
        // and its charge against the limits is given back.
        if (lim) throttle_->correct(lim->write, lim->bytes, 0, false);
        ring_.unconsume_request();
        co_await wait_for_room(memory);
        break;
      }
      s->charged = lim;
      if (journal_) s->entry = journal_->take(ring_.req_cons() - 1, w).value_or(slot::no_entry);
      fault::at(fault::point::consumed);
      s->started = turn_start_;
      copied += data_bound(w);
      serve(*s, w, {});
      if (barrier) {
        co_await wait_idle();
        break;  // look at the ring afresh
      }
      if (++started >= tuning_.turn_requests || copied >= tuning_.turn_bytes) {
        // Let the other rings on this thread have a turn.
        bump(counters_->yields);
        co_await asio::post(ex_, asio::use_awaitable);
        break;
      }
    }
  }
  co_return error_code{};
}
// Executes again, in ring order, what was in flight when an earlier
// process died. Their journal entries stay theirs; they are answered like
// any request.
asio::awaitable<void> queue::reissue() {
  recovered_ring rec = std::move(*recovered_);
  recovered_.reset();
  for (recovered_request& r : rec.requests) {
    const bool barrier = r.request.operation == BLKIF_OP_WRITE_BARRIER && params_.limits.barrier;
    if (barrier) co_await wait_idle();
    slot* s = nullptr;
    bool memory = false;
    while (!stopping_) {
      turn_start_ = precise_now();  // admit()'s clock
      if ((s = admit(r.request, on_guest_pages(r.request), memory)) != nullptr) break;
      co_await wait_for_room(memory);
    }
    // Stopped before all were started: the rest stay in the journal.
    if (s == nullptr) co_return;
    s->entry = r.entry;
    s->charged.reset();  // what was in flight is not limited again
    s->started = std::chrono::steady_clock::now();
    serve(*s, r.request, r.descriptors);
    if (barrier) co_await wait_idle();
  }
}

// Until memory frees up or other vbds catch up (the budget, the fair
// share or our own release says so): 100 ms at most for memory, the fair
// share's grace for a turn.
asio::awaitable<void> queue::wait_for_room(bool memory) {
  bump(memory ? counters_->oo_req : counters_->fair_waits);
  const auto since = std::chrono::steady_clock::now();
  waiting_memory_ = true;
  memory_wake_->timer.expires_after(
      memory || !fair_ ? std::chrono::steady_clock::duration(std::chrono::milliseconds(100)) : fair_->grace());
  auto [ec] = co_await memory_wake_->timer.async_wait(asio::as_tuple(asio::use_awaitable));
  waiting_memory_ = false;
  bump(counters_->throttled_ns,
       static_cast<std::uint64_t>(std::chrono::nanoseconds(std::chrono::steady_clock::now() - since).count()));
  // A whole grace with nobody saying it is our turn: take it.
  if (!memory && !ec) turn_overdue_ = true;
}

// Until the vbd's limits allow the next request, or they change: at most
// a second at a time (the loop then asks again).
asio::awaitable<void> queue::wait_for_limits(std::chrono::steady_clock::duration d) {
  bump(counters_->limit_waits);
  const auto since = std::chrono::steady_clock::now();
  throttle_wake_->timer.expires_after(std::min<std::chrono::steady_clock::duration>(d, std::chrono::seconds(1)));
  co_await throttle_wake_->timer.async_wait(asio::as_tuple(asio::use_awaitable));
  bump(counters_->limited_ns,
       static_cast<std::uint64_t>(std::chrono::nanoseconds(std::chrono::steady_clock::now() - since).count()));
}

// A request's direction and bytes, from its private copy's header (the
// limits are checked before it is taken). A direct request's segments say
// its length; an indirect one's are not fetched yet, so it is charged its
// largest length and corrected once validated. Flushes and barriers
// without data move nothing and are not limited (as in QEMU); a discard
// is one write operation without bytes.
std::optional<queue::limited_request> queue::limited(const wire_request& w) const {
  auto direct_bytes = [&w] {
    std::uint64_t bytes = 0;
    const std::size_t n = std::min<std::size_t>(w.nr_segments, BLKIF_MAX_SEGMENTS_PER_REQUEST);
    for (std::size_t i = 0; i < n; ++i)
      if (w.seg[i].first_sect <= w.seg[i].last_sect && w.seg[i].last_sect < xen::page_size / 512)
        bytes += std::uint64_t{512} * (w.seg[i].last_sect - w.seg[i].first_sect + 1u);
    return bytes;
  };
  switch (w.operation) {
    case BLKIF_OP_READ:
      return limited_request{false, direct_bytes()};
    case BLKIF_OP_WRITE:
      return limited_request{true, direct_bytes()};
    case BLKIF_OP_WRITE_BARRIER:
    case BLKIF_OP_FLUSH_DISKCACHE:
      if (w.nr_segments == 0) return std::nullopt;
      return limited_request{true, direct_bytes()};
    case BLKIF_OP_DISCARD:
      return limited_request{true, 0};
    case BLKIF_OP_INDIRECT:
      if (w.indirect_op != BLKIF_OP_READ && w.indirect_op != BLKIF_OP_WRITE) return std::nullopt;
      return limited_request{w.indirect_op == BLKIF_OP_WRITE, data_bound(w)};
    default:
      return std::nullopt;
  }
}

// Sleeps until the frontend notifies. A frontend that keeps notifying with
// nothing in the ring (a notify storm) waits a growing pause first, 1 ms
// doubling up to tuning_.storm_pause_max: its port stays masked meanwhile,
// so the storm costs this thread nothing (XSA-332; Linux's lateeoi).
asio::awaitable<error_code> queue::sleep_for_event() {
  if (event_seen_ && !took_since_event_) {
    bump(counters_->idle_events);
    ++idle_events_in_row_;
  } else {
    idle_events_in_row_ = 0;
  }
  if (idle_events_in_row_ >= tuning_.storm_after) {
    const unsigned doublings = std::min(idle_events_in_row_ - tuning_.storm_after, 16u);
    const auto d =
        std::min<std::chrono::milliseconds>(std::chrono::milliseconds(1 << doublings), tuning_.storm_pause_max);
    if (idle_events_in_row_ == tuning_.storm_after && budget_->spend(failure_kind::storm))
      XBD_LOG(log_, warning) << "frontend notifies without requests (" << idle_events_in_row_
                             << " events in a row); pausing this ring between events";
    bump(counters_->storm_pauses);
    co_await pause(d);
  }
  event_seen_ = false;
  took_since_event_ = false;
  error_code ec = co_await evtchn_.wait();
  if (ec == asio::error::operation_aborted) co_return error_code{};  // stop()
  if (ec) {
    XBD_LOG(log_, error) << "event channel failed: " << ec.what() << "; this ring is halted";
    co_return ec;
  }
  event_seen_ = true;
  if (gap_open_) learn_gap();
  co_return error_code{};
}

// The ring is empty: notes when a burst ended, and says whether to look
// at the ring again before sleeping: only right after taking requests
// (never on a notification that brought nothing: a notify storm does not
// make us poll), and while ring_poll finds it worth it.
bool queue::poll_due() {
  if (poll_.max() == ring_poll::duration::zero()) return false;
  if (ring_.req_cons() != burst_end_cons_) {
    burst_end_cons_ = ring_.req_cons();
    burst_end_ = std::chrono::steady_clock::now();
    gap_open_ = true;
  }
  return took_since_event_ && poll_.window() > ring_poll::duration::zero();
}

// Looks at the ring once per turn of the io_context, so everything else
// ready on this thread (other rings, storage completions, stop()) runs
// between two looks, until a request comes, the window ends or stop().
// req_event is not re-armed meanwhile: a frontend that publishes within the
// window needs no notification, and we need no wake-up. True: work found
// (or a broken ring, which the caller reports).
asio::awaitable<bool> queue::poll_ring() {
  const auto start = std::chrono::steady_clock::now();
  const auto window = poll_.window();
  auto now = start;
  bool found = false;
  while (!stopping_ && !found && now - start < window) {
    co_await asio::post(ex_, asio::use_awaitable);
    const auto before = std::exchange(now, std::chrono::steady_clock::now());
    // Counted as it goes: poll_ns shows a poll that would not end.
    bump(counters_->poll_ns, static_cast<std::uint64_t>(std::chrono::nanoseconds(now - before).count()));
    const auto n = ring_.unconsumed_requests();
    found = !n || *n > 0;
  }
  if (stopping_) co_return false;
  if (found) {
    bump(counters_->poll_hits);
    poll_.hit(now - start);
  } else {
    bump(counters_->poll_misses);
    poll_.miss();
  }
  co_return found;
}

// Woken by the frontend after a burst (events that brought nothing may
// have come between): a request that came within the longest window tells
// ring_poll a poll would have caught it.
void queue::learn_gap() {
  const auto n = ring_.unconsumed_requests();
  if (!n || *n == 0) return;
  gap_open_ = false;
  poll_.slept(std::chrono::steady_clock::now() - burst_end_);
}

asio::awaitable<void> queue::pause(std::chrono::milliseconds d) {
  pause_.expires_after(d);
  co_await pause_.async_wait(asio::as_tuple(asio::use_awaitable));
}

// Gives idle memory back: a tick every quarter second while there is any,
// none otherwise (an idle ring costs no wake-ups). Ends with the ring.
asio::awaitable<void> queue::trim_loop() {
  using namespace std::chrono_literals;
  while (!stopping_) {
    trim_.expires_after(trim_armed_ ? std::chrono::steady_clock::duration(250ms)
                                    : std::chrono::steady_clock::duration(24h));
    co_await trim_.async_wait(asio::as_tuple(asio::use_awaitable));
    if (stopping_) break;
    if (trim_armed_) trim_armed_ = trim_idle();
  }
  trimming_ = false;
  idle_.cancel();
}

// Unmaps buffers unused for a second (at once when another vbd waits for
// memory and this one holds more than its share); when the ring has been
// idle as long, its slots and scratch space go too, and the storage
// channel lets go of what it keeps. Whether anything is left to trim.
bool queue::trim_idle() {
  const bool give_back = buffers_.account().should_yield();
  const auto now = std::chrono::steady_clock::now();
  const bool idle = in_flight_ == 0 && now - last_release_ >= tuning_.idle_after;
  // What free slots kept goes to the cache, to be unmapped with the rest.
  if (give_back || idle)
    for (slot* f : free_) give_kept(*f, now);
  buffers_.trim(give_back ? std::chrono::steady_clock::duration::zero()
                          : std::chrono::steady_clock::duration(tuning_.idle_after));
  // Persistent grants unused for a minute are unmapped (all unused ones
  // when another vbd waits for memory), and a full set makes some room for
  // the pages it had to refuse (persistent_grants.hpp).
  if (persistent_) {
    const auto settled = now - tuning_.persistent_settle;
    drop_persistent(persistent_->drop_unused(give_back ? settled : now - tuning_.persistent_idle));
    drop_persistent(persistent_->make_room(settled));
  }
  if (idle && !slots_.empty()) {
    buffers_.account().shrink(slot_charge_ * slots_.size());
    free_.clear();
    slots_.clear();
    copies_ = {};
    descriptors_ = {};
    batch_.trim();
    chan_->trim();
  }
  publish_gauges();
  return buffers_.cached_bytes() > 0 || !slots_.empty() || (persistent_ && persistent_->size() > 0);
}

// The largest data a request can carry, from its header: what its buffer
// must hold. Anything without data, or that validation will refuse, needs
// none.
std::size_t queue::data_bound(const wire_request& w) const {
  switch (w.operation) {
    case BLKIF_OP_READ:
    case BLKIF_OP_WRITE:
    case BLKIF_OP_WRITE_BARRIER:
    case BLKIF_OP_FLUSH_DISKCACHE:
      return std::size_t{std::min<std::uint8_t>(w.nr_segments, BLKIF_MAX_SEGMENTS_PER_REQUEST)} * xen::page_size;
    case BLKIF_OP_INDIRECT:
      return w.indirect_nr_segments <= max_segments_ ? std::size_t{w.indirect_nr_segments} * xen::page_size : 0;
    default:
      return 0;
  }
}

// A slot with a buffer for `w` (or, served on the guest's pages, the
// budget for mapping them), within the budget and the vbd's fair share;
// null when the ring must wait (`memory` says for which; memory_wake_ is
// told when to try again).
queue::slot* queue::admit(const wire_request& w, bool on_pages, bool& memory) {
  const bool ring_idle = in_flight_ == 0;
  memory = true;
  if (free_.empty()) {
    if (!buffers_.account().grow(slot_charge_, ring_idle, *memory_wake_)) return nullptr;
    auto s = std::make_unique<slot>();
    s->segs = std::make_unique<segment[]>(max_segments_);
    free_.push_back(s.get());
    slots_.push_back(std::move(s));
  }
  buffer_cache::chunk c;
  const std::size_t bytes = data_bound(w);
  if (on_pages) {
    if (!buffers_.account().grow(bytes, ring_idle, *memory_wake_)) return nullptr;
  } else if (bytes) {
    c = take_buffer(bytes, ring_idle);
    if (c.data == nullptr && c.order == no_chunk) return nullptr;
  }
  const std::uint64_t cost = fair_share::request_cost + bytes;
  if (fair_ && !fair_turn(cost)) {
    memory = false;
    if (on_pages) buffers_.account().shrink(bytes);
    keep_buffer(*free_.back(), c);
    return nullptr;
  }
  slot& s = acquire();
  if (bytes && !on_pages)
    s.buf = c;
  else if (s.buf.data != nullptr)
    kept_bytes_ -= buffer_cache::bytes_of(s.buf.order);  // kept through this request, unused
  s.on_pages = on_pages;
  s.page_charge = on_pages ? bytes : 0;
  return &s;
}

// Reads and writes run on the guest's own pages with persistent grants,
// or from the size threshold up on an O_DIRECT store; the rest is copied.
bool queue::on_guest_pages(const wire_request& w) const {
  if (!persistent_ && !zero_copy_) return false;
  const std::uint8_t op = w.operation == BLKIF_OP_INDIRECT ? w.indirect_op : w.operation;
  if (op != BLKIF_OP_READ && op != BLKIF_OP_WRITE) return false;
  if (data_bound(w) == 0) return false;
  return persistent_ || (zero_copy_ && data_bound(w) >= *params_.zero_copy_min);
}

// GCC (12, without optimisation) takes the frame's deallocation by the
// promise's usual operator delete for a mismatch with its slot-taking
// operator new; that pairing is exactly what [dcl.fct.def.coroutine] asks for.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
// One request, from the copy taken out of the ring to its response. Runs
// eagerly up to its first storage operation, so requests are validated and
// started in ring order.
request_task queue::serve(slot& s, const wire_request& w, std::span<const blkif_request_segment> known) {
  validation v = validate(w, params_.limits, std::span(s.segs.get(), max_segments_));
  if (auto* need = std::get_if<needs_indirect>(&v)) v = fetch_indirect(s, w, *need, known);
  if (auto* r = std::get_if<rejected>(&v)) {
    s.charged.reset();  // it counts as what its header said
    reject(s, *r);
    co_return;
  }
  s.req = std::get<checked_request>(v);
  if (const auto c = std::exchange(s.charged, std::nullopt);
      c && throttle_ && s.req.kind != op_kind::discard && c->bytes != s.req.length)
    throttle_->correct(c->write, c->bytes, s.req.length, true);
  count_taken(s);
  error_code ec;
  if (s.on_pages && s.req.length > 0) {
    // Zero-copy: the I/O runs on the guest's pages, unmapped (or given
    // back to the persistent grants) before the response.
    if (!map_pages(s)) co_return finish(s, BLKIF_RSP_ERROR);
    const bool read = s.req.kind == op_kind::read;
    const bool spilled = !s.spilled.empty();
    if (spilled && !read && !co_await copy_segments(s, false)) {
      unmap_pages(s);
      co_return finish(s, BLKIF_RSP_ERROR);
    }
    ec = co_await s.io.on([&](storage::completion& c) {
      if (read)
        vec_->readv(s.req.offset, s.pieces, c);
      else
        vec_->writev(s.req.offset, s.pieces, c);
    });
    const bool copied_back = !ec && spilled && read ? co_await copy_segments(s, true) : true;
    unmap_pages(s);
    if (!copied_back) co_return finish(s, BLKIF_RSP_ERROR);
    if (!ec) bump(read ? counters_->rd_bytes : counters_->wr_bytes, s.req.length);
    fault::at(fault::point::completed);
    co_return finish(s, account(s, ec));
  }
  if (s.req.kind != op_kind::discard && s.req.length > 0 && s.buf.data == nullptr) co_return finish(s, no_buffer(s));
  switch (s.req.kind) {
    case op_kind::read:
      ec = co_await s.io.on([&](storage::completion& c) { chan_->read(s.req.offset, s.data(), c); });
      if (!ec && !co_await copy_segments(s, true)) co_return finish(s, BLKIF_RSP_ERROR);
      if (!ec) bump(counters_->rd_bytes, s.req.length);
      break;
    case op_kind::write:
    case op_kind::flush:
    case op_kind::barrier:
      if (s.req.length > 0) {
        if (!co_await copy_segments(s, false)) co_return finish(s, BLKIF_RSP_ERROR);
        ec = co_await s.io.on([&](storage::completion& c) { chan_->write(s.req.offset, s.data(), c); });
        if (!ec) bump(counters_->wr_bytes, s.req.length);
      }
      if (!ec && (s.req.length == 0 || s.req.flush_after))
        ec = co_await s.io.on([&](storage::completion& c) { chan_->flush(c); });
      break;
    case op_kind::discard:
      ec = co_await s.io.on(
          [&](storage::completion& c) { chan_->discard(s.req.offset, s.req.length, s.req.secure, c); });
      break;
  }
  fault::at(fault::point::completed);
  finish(s, account(s, ec));
}
#pragma GCC diagnostic pop

// Copies an indirect request's descriptors out of the guest's indirect
// pages into the slot, once, and validates that private copy.
validation queue::fetch_indirect(slot& s, const wire_request& w, const needs_indirect& need,
                                 std::span<const blkif_request_segment> known) {
  // Recovery: the descriptors the journal kept, not the guest's pages again.
  if (known.size() == need.nr_segments)
    return validate_indirect(w, known, params_.limits, std::span(s.segs.get(), max_segments_));
  copies_.clear();
  descriptors_.resize(std::size_t{need.pages} * segments_per_indirect_page);
  const auto dom = static_cast<std::uint16_t>(params_.frontend_domid);
  std::size_t bytes = std::size_t{need.nr_segments} * sizeof(blkif_request_segment);
  auto* dest = reinterpret_cast<std::byte*>(descriptors_.data());
  for (std::uint16_t page = 0; page < need.pages; ++page) {
    const auto len = static_cast<std::uint16_t>(std::min<std::size_t>(bytes, xen::page_size));
    copies_.push_back(asio_xen::copy_from_guest(dom, w.indirect_grefs[page], 0, dest + page * xen::page_size, len));
    bytes -= len;
  }
  if (error_code ec = gnttab_.copy(copies_))
    return rejected{w.id, w.indirect_op, BLKIF_RSP_ERROR, "indirect pages could not be copied"};
  const std::span<const blkif_request_segment> fetched(descriptors_.data(), need.nr_segments);
  if (journal_ && s.entry != slot::no_entry) journal_->save_descriptors(s.entry, fetched);
  return validate_indirect(w, fetched, params_.limits, std::span(s.segs.get(), max_segments_));
}

// Grant copy between the guest's segments and the slot's buffer, where the
// segments lie back to back in disk order: queued for the end of the turn.
queue::copy_wait queue::copy_segments(slot& s, bool to_guest) { return {*this, s, to_guest}; }

void queue::queue_copies(slot& s, bool to_guest, std::coroutine_handle<> waiter) {
  if (batch_.full()) run_copies();  // bounds the scratch; resumes only others
  const auto dom = static_cast<std::uint16_t>(params_.frontend_domid);
  auto one = [&](const segment& seg, std::byte* local) {
    return to_guest ? asio_xen::copy_to_guest(dom, seg.gref, seg.offset, local, seg.length)
                    : asio_xen::copy_from_guest(dom, seg.gref, seg.offset, local, seg.length);
  };
  if (s.spilled.empty()) {
    // All its segments, to or from its buffer, back to back.
    auto segs = batch_.add(s.req.segments.size(), waiter, &s.copy_ec);
    std::byte* local = s.buf.data;
    for (std::size_t i = 0; i < segs.size(); ++i) {
      segs[i] = one(s.req.segments[i], local);
      local += s.req.segments[i].length;
    }
    bump(counters_->copy_segments, segs.size());
  } else {
    // Its spilled pages alone.
    auto segs = batch_.add(s.spilled.size(), waiter, &s.copy_ec);
    for (std::size_t i = 0; i < segs.size(); ++i) segs[i] = one(s.req.segments[s.spilled[i].seg], s.spilled[i].at);
    bump(counters_->copy_segments, segs.size());
  }
  schedule_turn_end();
}

// Whether a request's copies went through; a bad grant is the guest's
// mistake (XSA-362/365), answered with ERROR.
bool queue::copied(slot& s) {
  const error_code ec = std::exchange(s.copy_ec, {});
  if (!ec) return true;
  grant_failed(s, "copy", ec);
  return false;
}

// Maps the request's pages for its I/O: its own mapping of all of them, in
// one call (zero-copy), or the persistent grants' pages. False: a bad
// grant, answered ERROR; nothing stays mapped for it.
bool queue::map_pages(slot& s) {
  bump(counters_->mapped_req);
  s.pieces.clear();
  if (persistent_) return map_persistent(s);
  refs_.clear();
  for (const segment& seg : s.req.segments) refs_.push_back(seg.gref);
  std::byte* base = map_own(s);
  if (base == nullptr) return false;
  for (std::size_t i = 0; i < s.req.segments.size(); ++i)
    add_piece(s, base + i * xen::page_size + s.req.segments[i].offset, s.req.segments[i].length);
  return true;
}

// Each page from the persistent grants (mapped and kept on first sight);
// those that cannot be kept (all kept pages in use, or a grant that is
// not writable) are mapped for this request only, in one call, or on an
// O_DIRECT store without zero-copy copied through bounce pages. The budget
// the request was charged for its pages goes to the pages kept, or back.
bool queue::map_persistent(slot& s) {
  const auto now = std::chrono::steady_clock::now();
  const std::size_t n = s.req.segments.size();
  refs_.clear();
  pages_.assign(n, nullptr);
  s.held.clear();
  std::size_t kept = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const auto l = persistent_->get(s.req.segments[i].gref, now);
    if (l.page == nullptr) {
      refs_.push_back(s.req.segments[i].gref);
      continue;
    }
    pages_[i] = l.page;
    s.held.push_back(s.req.segments[i].gref);
    bump(l.mapped_now ? counters_->persistent_maps : counters_->persistent_hits);
    kept += l.mapped_now ? 1 : 0;
  }
  // The pages kept now are the persistent grants' to account for; the
  // request keeps what its own pages need.
  const std::uint64_t own_bytes = refs_.size() * xen::page_size;
  persistent_charge_ += kept * xen::page_size;
  buffers_.account().shrink(s.page_charge - own_bytes - kept * xen::page_size);
  s.page_charge = own_bytes;
  set(counters_->persistent_grants, persistent_->size());
  std::byte* own = nullptr;
  if (!refs_.empty() && (own = spill_ ? spill_pages(s, refs_.size()) : map_own(s)) == nullptr) {
    unmap_pages(s);
    return false;
  }
  std::size_t next = 0;  // of its own pages
  for (std::size_t i = 0; i < n; ++i) {
    const segment& seg = s.req.segments[i];
    std::byte* at = (pages_[i] ? pages_[i] : own + xen::page_size * next++) + seg.offset;
    if (!pages_[i] && spill_) s.spilled.push_back({i, at});
    add_piece(s, at, seg.length);
  }
  return true;
}

// The request's own mapping of the pages in refs_, in one call.
std::byte* queue::map_own(slot& s) {
  bump(counters_->map_calls);
  auto m = gnttab_.map(params_.frontend_domid, refs_, s.req.kind == op_kind::read);
  if (!m) {
    grant_failed(s, "map", m.error());
    return nullptr;
  }
  s.grants = std::move(*m);
  return s.grants.bytes().data();
}

// Bounce pages for `n` pages that are copied rather than mapped, from the
// ring's buffer cache. On Linux 6.1's gntdev, O_DIRECT on a page mapped for
// one request can leave its unmap pending after the response
// (docs/architecture.md, "Moving the data"). The request was charged for
// mapping these pages (page_charge); the chunk carries its own charge
// instead, taken first so that the budget is never shown room that is not
// there. A ring past its persistent set is busy: it waits for nobody here.
std::byte* queue::spill_pages(slot& s, std::size_t n) {
  const std::size_t bytes = n * xen::page_size;
  s.spill = buffers_.take(bytes, true, *memory_wake_).value_or(buffer_cache::chunk{});
  if (s.spill.data == nullptr) {
    grant_failed(s, "bounce page", error_code(ENOMEM, boost::system::generic_category()));
    return nullptr;
  }
  buffers_.account().shrink(bytes);
  s.page_charge -= bytes;
  return s.spill.data;
}

// Before the response: a guest may reuse or revoke its pages once answered.
void queue::unmap_pages(slot& s) {
  if (!s.held.empty()) {
    const auto now = coarse_now();
    for (asio_xen::grant_ref r : s.held) persistent_->put(r, now);
  }
  s.held.clear();
  s.grants.reset();
  s.spilled.clear();
  if (s.spill.data != nullptr) buffers_.give(std::exchange(s.spill, {}), coarse_now());
}

// One piece of the I/O, joined to the one before when they touch (the
// pages of one mapping are contiguous).
void queue::add_piece(slot& s, std::byte* at, std::size_t len) {
  if (!s.pieces.empty()) {
    iovec& last = s.pieces.back();
    if (static_cast<std::byte*>(last.iov_base) + last.iov_len == at) {
      last.iov_len += len;
      return;
    }
  }
  s.pieces.push_back({at, len});
}

// Persistent pages unmapped: their budget goes back.
void queue::drop_persistent(std::size_t pages) {
  if (pages == 0) return;
  bump(counters_->persistent_drops, pages);
  const std::uint64_t b = std::min<std::uint64_t>(persistent_charge_, pages * xen::page_size);
  persistent_charge_ -= b;
  buffers_.account().shrink(b);
  set(counters_->persistent_grants, persistent_ ? persistent_->size() : 0);
}

// XSA-362/365: a bad grant is the guest's mistake, answered with ERROR.
void queue::grant_failed(const slot& s, const char* what, error_code ec) {
  bump(counters_->err_grant);
  if (budget_->spend(failure_kind::grant))
    XBD_LOG(log_, warning) << "grant " << what << " for request " << s.req.id << " failed: " << ec.what();
  else
    XBD_LOG(log_, debug) << "grant " << what << " for request " << s.req.id << " failed: " << ec.what();
}

// Answered without I/O: the request failed a check.
void queue::reject(slot& s, const rejected& r) {
  bump(counters_->err_rejected);
  if (budget_->spend(failure_kind::rejected))
    XBD_LOG(log_, warning) << "rejected request " << r.id << ": " << r.reason;
  else
    XBD_LOG(log_, debug) << "rejected request " << r.id << ": " << r.reason;
  answer(s, r.id, r.operation, r.status);
}

// The status a storage result earns, counted and (within budget) logged.
std::int16_t queue::account(const slot& s, error_code ec) {
  if (!ec) return BLKIF_RSP_OKAY;
  // The store cannot do it after all (a filesystem without hole punching):
  // say so rather than claim an error.
  const bool unsupported = ec == boost::system::errc::operation_not_supported;
  if (unsupported && (s.req.kind == op_kind::flush || s.req.kind == op_kind::barrier) &&
      (params_.limits.flush || params_.limits.barrier)) {
    // Not offered from now on: later ones are answered EOPNOTSUPP without
    // reaching the store, and the vbd tells the frontend (docs/protocol.md).
    params_.limits.flush = params_.limits.barrier = false;
    if (params_.flush_unsupported) params_.flush_unsupported();
  }
  bump(unsupported ? counters_->err_unsupported : counters_->err_io);
  if (budget_->spend(failure_kind::io))
    XBD_LOG(log_, warning) << what(s.req.kind) << " at " << s.req.offset << " failed: " << ec.message();
  else
    XBD_LOG(log_, debug) << what(s.req.kind) << " at " << s.req.offset << " failed: " << ec.message();
  return unsupported ? BLKIF_RSP_EOPNOTSUPP : BLKIF_RSP_ERROR;
}

void queue::finish(slot& s, std::int16_t status) { answer(s, s.req.id, s.req.operation, status); }

// A validated request, counted as Linux's blkback counts it at dispatch
// (stats.hpp); its latency is recorded when it is answered.
void queue::count_taken(slot& s) {
  ring_counters& c = *counters_;
  const std::uint64_t sectors = s.req.length / 512;
  switch (s.req.kind) {
    case op_kind::read:
      bump(c.rd_req);
      bump(c.rd_sect, sectors);
      s.timed = timed_op::read;
      break;
    case op_kind::write:
      bump(c.wr_req);
      bump(c.wr_sect, sectors);
      s.timed = timed_op::write;
      break;
    case op_kind::flush:
    case op_kind::barrier:
      bump(c.f_req);
      bump(c.wr_sect, sectors);
      s.timed = timed_op::flush;
      break;
    case op_kind::discard:
      bump(c.ds_req);
      s.timed = timed_op::discard;
      break;
  }
}

// What the control thread reads of the queue's state (stats.hpp).
void queue::publish_gauges() {
  set(counters_->in_flight, in_flight_);
  set(counters_->peak_in_flight, peak_in_flight_);
  set(counters_->slots, slots_.size());
  set(counters_->cached_bytes, buffers_.cached_bytes() + kept_bytes_);
}

queue::slot& queue::acquire() {
  slot* s = free_.back();
  free_.pop_back();
  ++in_flight_;
  peak_in_flight_ = std::max(peak_in_flight_, in_flight_);
  set(counters_->in_flight, in_flight_);  // the rest once a turn (end_turn)
  return *s;
}

// A buffer for `bytes`: the one the next free slot kept from its last
// request when it is of the right size (most are), else one from the
// cache. A chunk without data: an mmap that failed (the request fails);
// order no_chunk: the budget says wait.
buffer_cache::chunk queue::take_buffer(std::size_t bytes, bool ring_idle) {
  slot& next = *free_.back();
  if (next.buf.data != nullptr && next.buf.order == buffer_cache::order_for(bytes)) {
    kept_bytes_ -= buffer_cache::bytes_of(next.buf.order);
    return std::exchange(next.buf, {});
  }
  give_kept(next, turn_start_);
  auto got = buffers_.take(bytes, ring_idle, *memory_wake_);
  return got ? *got : buffer_cache::chunk{nullptr, no_chunk};
}

// A free slot keeps `c` for its next request.
void queue::keep_buffer(slot& s, buffer_cache::chunk c) {
  give_kept(s, turn_start_);
  if (c.data == nullptr) return;
  s.buf = c;
  kept_bytes_ += buffer_cache::bytes_of(c.order);
}

// A free slot's kept buffer back to the cache.
void queue::give_kept(slot& s, std::chrono::steady_clock::time_point now) {
  if (s.buf.data == nullptr) return;
  kept_bytes_ -= buffer_cache::bytes_of(s.buf.order);
  buffers_.give(std::exchange(s.buf, {}), now);
}

// The vbd's turn for a request of `cost` (fair_share.hpp): from the lease
// this ring holds, or, when it does not cover it, a new lease (or the
// request's own cost, if larger) bought from the fair share.
bool queue::fair_turn(std::uint64_t cost) {
  if (cost <= fair_credit_) {
    fair_credit_ -= cost;
    fair_->touch(turn_start_);
    return true;
  }
  const std::uint64_t buy = std::max(cost, fair_share::lease);
  if (!fair_->start(buy, *memory_wake_, std::exchange(turn_overdue_, false), turn_start_)) return false;
  fair_credit_ = buy - cost;
  return true;
}

// The slot and its buffer go back for reuse; trim_loop() returns them to
// the kernel if they stay unused. A ring waiting for memory tries again.
void queue::release(slot& s, std::chrono::steady_clock::time_point now) {
  // The buffer stays with the slot for its next request, unless memory is
  // wanted elsewhere (the cache then decides what goes back).
  if (s.buf.data != nullptr && !buffers_.account().pressure())
    kept_bytes_ += buffer_cache::bytes_of(s.buf.order);
  else
    buffers_.give(std::exchange(s.buf, {}), now);
  if (const std::uint64_t b = std::exchange(s.page_charge, 0)) buffers_.account().shrink(b);
  s.on_pages = false;
  free_.push_back(&s);
  --in_flight_;  // published at the turn's end (answer() schedules it)
  last_release_ = now;
  if (!trim_armed_) {
    trim_armed_ = true;
    trim_.cancel();
  }
  if (waiting_memory_) memory_wake_->timer.cancel();
}

// The buffer could not be mapped (the kernel is out of memory): the
// request fails, the ring goes on.
std::int16_t queue::no_buffer(const slot& s) {
  bump(counters_->err_no_memory);
  if (budget_->spend(failure_kind::io))
    XBD_LOG(log_, warning) << what(s.req.kind) << " at " << s.req.offset << " failed: no memory for its buffer";
  return BLKIF_RSP_ERROR;
}

void queue::set_sectors(std::uint64_t sectors) { params_.limits.sectors = sectors; }

void queue::set_throttle(const std::shared_ptr<throttle_group>& g) {
  throttle_ = g ? g->join(throttle_wake_) : nullptr;
  throttle_wake_->timer.cancel();  // a wait for the old group's limits ends
}

// The response goes into the ring in the journal's order (journal.hpp):
// its record first, then the ring slot, then the journal's index.
void queue::answer(slot& s, std::uint64_t id, std::uint8_t op, std::int16_t status) {
  const std::uint32_t entry = std::exchange(s.entry, slot::no_entry);
  const auto now = precise_now();
  if (const auto op = std::exchange(s.timed, std::nullopt))
    counters_->latency[static_cast<std::size_t>(*op)].record(
        static_cast<std::uint64_t>(std::chrono::nanoseconds(now - s.started).count()));
  release(s, now);
  const std::uint32_t index = ring_.rsp_prod_pvt();
  const bool journaled = journal_ && entry != slot::no_entry;
  if (journaled) journal_->record_response(index, entry, id, op, status);
  ring_.put_response(id, op, status);
  fault::at(fault::point::responded);
  if (journaled) journal_->responded(index, entry);
  schedule_turn_end();
}

// At the end of a turn of the io_context: the grant copies its requests
// asked for run in one batch, then the responses completed in it go out
// together, with one notification.
void queue::schedule_turn_end() {
  if (turn_end_scheduled_) return;
  turn_end_scheduled_ = true;
  asio::post(ex_, [this] { end_turn(); });
}

// The reads the batch completes are answered inside it, and pushed here
// without another turn.
void queue::end_turn() {
  run_copies();
  turn_end_scheduled_ = false;
  push_now();
  publish_gauges();  // once a turn, not per request
  if ((stopping_ || waiting_idle_) && in_flight_ == 0) idle_.cancel();
}

void queue::run_copies() {
  if (const std::size_t calls = batch_.run(gnttab_.driver())) bump(counters_->copy_calls, calls);
}

void queue::push_now() {
  const bool notify = ring_.push_responses();
  fault::at(fault::point::pushed);
  if (notify) {
    if (error_code ec = evtchn_.notify()) XBD_LOG(log_, debug) << "notify failed: " << ec.what();
  }
}

}  // namespace xbd::blkback
