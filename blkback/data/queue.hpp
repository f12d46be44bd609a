// queue: the data plane of one ring.
//
// One coroutine per ring (run()) takes requests out of the ring once each,
// in order, and starts one coroutine per request (serve()): validate, fetch
// the indirect segments, copy the data in, run the I/O on the storage
// channel, flush, copy the data out, respond. The ring's coroutine goes back
// to the ring while requests run; responses are pushed, and the frontend
// notified, once per turn of the io_context. Everything of a queue runs on
// one io_context thread: no locks.
//
// Memory comes and goes with the work (blkback/data/memory.hpp): a request
// is taken from the ring only when a slot (its coroutine frame and segment
// list) and a buffer for its data can be had within the daemon's budget;
// otherwise it stays in the ring until memory frees up. Slots and buffers
// are reused most-recently-freed first and handed back to the kernel after
// an idle second, so an idle ring holds almost nothing.
//
// I/O limits (blkback/data/throttle.hpp) hold a request back at the same
// point: over its vbd's limits, it stays in the ring until the buckets
// have leaked enough, and the guest sees a slower disk, never an error.
//
// Fairness on a shared worker thread: a ring yields the thread after a
// bounded amount of work per turn, and a frontend that notifies without
// publishing requests is answered with a growing pause (XSA-332).
#pragma once

#include "asio_xen/evtchn.hpp"
#include "asio_xen/gnttab.hpp"
#include "blkback/data/copy_batch.hpp"
#include "blkback/data/fair_share.hpp"
#include "blkback/data/journal.hpp"
#include "blkback/data/log_budget.hpp"
#include "blkback/data/memory.hpp"
#include "blkback/data/persistent_grants.hpp"
#include "blkback/data/request_task.hpp"
#include "blkback/data/ring_poll.hpp"
#include "blkback/data/stats.hpp"
#include "blkback/data/throttle.hpp"
#include "blkback/log.hpp"
#include "blkback/platform.hpp"
#include "blkback/ring/abi.hpp"
#include "blkback/ring/request.hpp"
#include "blkback/storage/storage.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <vector>

namespace xbd::blkback {

struct queue_params {
  unsigned frontend_domid = 0;
  abi layout = native_abi;
  std::vector<asio_xen::grant_ref> ring_refs;  // 1 << ring-page-order of them
  asio_xen::evtchn_port remote_port = 0;
  device_limits limits;
  // The vbd's: shared by its rings, kept across reconnects.
  std::shared_ptr<log_budget> budget = std::make_shared<log_budget>();
  // The vbd's share of the daemon's buffer memory; null: a budget of the
  // queue's own (tests).
  std::shared_ptr<memory_budget::account> memory;
  // The vbd's place in the daemon's CPU fairness (fair_share.hpp); null:
  // none (tests).
  std::shared_ptr<fair_share::member> fair;
  // The vbd's I/O limits (throttle.hpp), shared with its group; null: none.
  std::shared_ptr<throttle_group> throttle;
  // This ring's part of the in-flight journal (null: none). With `recover`,
  // what an earlier process left in it is taken up before anything else.
  ring_journal* journal = nullptr;
  bool recover = false;
  // Requests that carry at least this many bytes (by their header) run on
  // the guest's own pages, mapped, when the store is O_DIRECT and its
  // channel can (zero-copy); nullopt: never. docs/architecture.md, "Moving
  // the data".
  std::optional<std::uint64_t> zero_copy_min;
  // feature-persistent was negotiated: reads and writes run on pages kept
  // mapped, at most this many (0: not negotiated).
  unsigned persistent_grants = 0;
  // The longest the ring is looked at again after a burst before it
  // sleeps ([rings] poll-microseconds, ring_poll.hpp); zero: never.
  std::chrono::microseconds poll{0};
  // Called (on the queue's thread, once) when the store answers a flush
  // with EOPNOTSUPP: the vbd then withdraws flush and barrier.
  std::function<void()> flush_unsupported;
};

// What taking up a journal found.
struct recovery_counts {
  std::uint32_t reissued = 0;          // requests in flight, executed again
  std::uint32_t answered_unfreed = 0;  // answered just before the cut
  std::uint32_t pushed = 0;            // responses written but maybe not seen, pushed again
};

// Limits of one ring's turn and of its answer to a notify storm.
struct queue_tuning {
  unsigned turn_requests = 64;                       // requests started per turn at most
  std::uint64_t turn_bytes = 1u << 20;               // bytes copied in per turn at most
  unsigned storm_after = 8;                          // idle events in a row before pausing
  std::chrono::milliseconds storm_pause_max{128};    // the longest pause
  std::chrono::milliseconds idle_after{1000};        // memory unused this long goes back
  std::chrono::milliseconds persistent_idle{60000};  // a persistent grant unused this long is unmapped
  // ...and none is unmapped sooner than this after its last I/O ended
  // (persistent_grants::make_room).
  std::chrono::milliseconds persistent_settle{100};
};

class queue {
 public:
  // Maps the ring, binds the event channel, opens a storage channel on the
  // worker and sizes the slots. The queue runs on `w`'s thread.
  static asio_xen::result<std::unique_ptr<queue>> connect(const worker& w, const xen_platform& xen,
                                                          const queue_params& params, storage::store& store, logger lg);
  ~queue();
  queue(const queue&) = delete;
  queue& operator=(const queue&) = delete;

  // Serves the ring until stop(), then answers everything in flight and
  // returns. Returns errc::ring_overflow if the frontend broke the ring
  // (the ring is then abandoned, after the in-flight requests are answered).
  boost::asio::awaitable<asio_xen::error_code> run();

  // Stop taking requests. Call on the queue's executor.
  void stop();
  // The disk was resized (online resize). Call on the queue's executor.
  void set_sectors(std::uint64_t sectors);
  // The vbd moved to another limits group (null: none). Call on the
  // queue's executor.
  void set_throttle(const std::shared_ptr<throttle_group>& g);

  // The ring's live counters (blkback/data/stats.hpp): written on the
  // queue's thread, readable from any thread for as long as it is held.
  std::shared_ptr<const ring_counters> counters() const { return counters_; }
  ring_stats stats() const { return snapshot(*counters_); }
  // Requests in flight when stop() came, answered before run() returned.
  std::uint32_t in_flight_at_stop() const { return in_flight_at_stop_; }
  std::uint32_t ring_size() const { return ring_.size(); }
  asio_xen::evtchn_port local_port() const { return evtchn_.local_port(); }
  std::uint32_t in_flight() const { return in_flight_; }
  // Slots that exist now (in flight or cached).
  std::size_t slots() const { return slots_.size(); }
  std::size_t cached_buffer_bytes() const { return buffers_.cached_bytes(); }
  const recovery_counts& recovery() const { return recovery_; }
  void set_tuning(const queue_tuning& t) { tuning_ = t; }

  struct slot;

 private:
  queue(boost::asio::any_io_executor ex, asio_xen::grant_table gt, asio_xen::grant_mapping ring_mem, abi_ring ring,
        asio_xen::event_channel evtchn, const queue_params& params, std::unique_ptr<storage::channel> chan, logger lg);

  // `w` is read before the first suspension only (request_task starts
  // eagerly): the caller's copy outlives that part.
  request_task serve(slot& s, const wire_request& w, std::span<const blkif_request_segment> known);
  void take_up(recovered_ring rec);
  boost::asio::awaitable<void> reissue();
  boost::asio::awaitable<void> wait_for_room(bool memory);
  boost::asio::awaitable<void> wait_for_limits(std::chrono::steady_clock::duration d);
  // What a request counts against the limits: a write (or a read) and its
  // bytes, as far as its header tells; nullopt for what no limit counts.
  struct limited_request {
    bool write = false;
    std::uint64_t bytes = 0;
  };
  std::optional<limited_request> limited(const wire_request& w) const;
  boost::asio::awaitable<asio_xen::error_code> serve_ring();
  boost::asio::awaitable<asio_xen::error_code> sleep_for_event();
  bool poll_due();
  boost::asio::awaitable<bool> poll_ring();
  void learn_gap();
  boost::asio::awaitable<void> pause(std::chrono::milliseconds d);
  boost::asio::awaitable<void> wait_idle();
  boost::asio::awaitable<void> trim_loop();
  bool trim_idle();
  slot* admit(const wire_request& w, bool on_pages, bool& memory);
  bool fair_turn(std::uint64_t cost);
  static constexpr std::uint8_t no_chunk = 0xff;
  buffer_cache::chunk take_buffer(std::size_t bytes, bool ring_idle);
  void keep_buffer(slot& s, buffer_cache::chunk c);
  void give_kept(slot& s, std::chrono::steady_clock::time_point now);
  bool on_guest_pages(const wire_request& w) const;
  bool map_pages(slot& s);
  bool map_persistent(slot& s);
  std::byte* map_own(slot& s);
  std::byte* spill_pages(slot& s, std::size_t n);
  void unmap_pages(slot& s);
  void add_piece(slot& s, std::byte* at, std::size_t len);
  void grant_failed(const slot& s, const char* what, asio_xen::error_code ec);
  void drop_persistent(std::size_t pages);
  std::size_t data_bound(const wire_request& w) const;
  validation fetch_indirect(slot& s, const wire_request& w, const needs_indirect& need,
                            std::span<const blkif_request_segment> known);
  struct copy_wait;
  copy_wait copy_segments(slot& s, bool to_guest);
  void queue_copies(slot& s, bool to_guest, std::coroutine_handle<> waiter);
  bool copied(slot& s);
  void reject(slot& s, const rejected& r);
  std::int16_t account(const slot& s, asio_xen::error_code ec);
  std::int16_t no_buffer(const slot& s);
  void finish(slot& s, std::int16_t status);
  void count_taken(slot& s);
  void answer(slot& s, std::uint64_t id, std::uint8_t op, std::int16_t status);
  void schedule_turn_end();
  void run_copies();
  void end_turn();
  void push_now();
  slot& acquire();
  void release(slot& s, std::chrono::steady_clock::time_point now);
  void publish_gauges();

  boost::asio::any_io_executor ex_;
  asio_xen::grant_table gnttab_;
  asio_xen::grant_mapping ring_mem_;
  abi_ring ring_;
  asio_xen::event_channel evtchn_;
  queue_params params_;
  std::unique_ptr<storage::channel> chan_;
  logger log_;

  std::size_t max_segments_;
  std::uint64_t slot_charge_;                  // bytes of a slot, counted against the budget
  std::shared_ptr<memory_budget> own_budget_;  // only without a vbd's account
  buffer_cache buffers_;
  std::vector<std::unique_ptr<slot>> slots_;
  std::vector<slot*> free_;
  std::uint64_t kept_bytes_ = 0;  // buffers free slots keep for their next request
  // The data copies of this turn's requests, run together when it ends.
  copy_batch batch_;
  // Scratch for the indirect pages' copies, grown on demand.
  std::vector<asio_xen::copy_segment> copies_;
  std::vector<blkif_request_segment> descriptors_;
  // Zero-copy (docs/architecture.md, "Moving the data"): the channel's
  // vectored side, whether large requests of an O_DIRECT store map the
  // guest's pages, the pages kept for persistent grants and the budget
  // they hold.
  storage::vectored_io* vec_ = nullptr;
  bool zero_copy_ = false;
  // Pages the persistent grants cannot keep go through a bounce page
  // rather than a mapping of their own when the store is O_DIRECT and
  // zero-copy was not chosen (docs/architecture.md, "Moving the data").
  bool spill_ = false;
  std::unique_ptr<persistent_grants> persistent_;
  std::uint64_t persistent_charge_ = 0;
  std::vector<asio_xen::grant_ref> refs_;  // scratch: the refs of one map call
  std::vector<std::byte*> pages_;          // scratch: each segment's page
  std::uint32_t in_flight_ = 0;
  std::uint32_t peak_in_flight_ = 0;
  std::uint32_t in_flight_at_stop_ = 0;
  // When the ring's current turn began: the start of every request taken in
  // it, for its latency (the guest's requests were in the ring by then).
  std::chrono::steady_clock::time_point turn_start_;
  bool stopping_ = false;
  bool turn_end_scheduled_ = false;  // end_turn() is posted
  bool waiting_idle_ = false;
  bool trimming_ = false;          // trim_loop() runs
  bool trim_armed_ = false;        // something may go back to the kernel
  bool waiting_memory_ = false;    // for memory or for the vbd's turn
  bool turn_overdue_ = false;      // waited a whole grace for the vbd's turn
  std::uint64_t fair_credit_ = 0;  // what is left of its lease of the vbd's share
  bool event_seen_ = false;        // the last sleep ended with an event
  bool took_since_event_ = false;
  unsigned idle_events_in_row_ = 0;
  std::chrono::steady_clock::time_point last_release_;
  boost::asio::steady_timer idle_;   // wakes waits on the queue's own state (wait_idle, run's end)
  boost::asio::steady_timer trim_;   // trim_loop()'s tick
  boost::asio::steady_timer pause_;  // a storm pause
  ring_poll poll_;
  // When the ring was last found empty after taking requests (poll_due()),
  // and req_cons then: the start of the gap ring_poll learns from.
  std::chrono::steady_clock::time_point burst_end_;
  std::uint32_t burst_end_cons_ = 0;
  bool gap_open_ = false;  // no request seen since burst_end_
  ring_journal* journal_ = nullptr;
  std::optional<recovered_ring> recovered_;  // until run() has re-issued it
  recovery_counts recovery_;
  struct memory_wake;
  std::shared_ptr<memory_wake> memory_wake_;  // the wait for buffer memory or a turn
  std::shared_ptr<fair_share::member> fair_;
  struct throttle_wake;
  std::shared_ptr<throttle_wake> throttle_wake_;  // the wait for the limits
  std::shared_ptr<throttle_group::member> throttle_;
  queue_tuning tuning_;
  std::shared_ptr<ring_counters> counters_ = std::make_shared<ring_counters>();
  std::shared_ptr<log_budget> budget_;
};

}  // namespace xbd::blkback
