// CPU fairness between vbds: what each may start while others compete.
//
// A request's cost on a worker thread grows with its data (the kernel's
// page-cache copy, our grant copy) plus a fixed part per request. Turns of
// bounded length (queue_tuning) are not enough: a guest issuing 1 MiB
// requests does 250 times a 4 KiB guest's work per request, and Asio runs
// completions first come, first served, so whatever a heavy guest has
// started is done before a light guest's next request is even looked at
// (docs/limits.md, "CPU").
//
// So the daemon schedules by cost, start-time fair queueing style: each vbd
// has a virtual time, the cost it has started. A vbd may start a request
// only while its virtual time is at most `window` ahead of the slowest
// vbd that competes; otherwise its ring leaves the request in the ring and
// waits for that one to catch up.
//  - A vbd competes from each request it starts until `grace` later. A
//    guest at a high queue depth answers its responses with new requests
//    within far less, so the heavy neighbour cannot fill the thread while
//    the light one turns round (CFQ and BFQ idle for the same reason). A vbd
//    whose requests sit at a slow disk, or that went quiet, stops counting.
//  - No credit for idling: a vbd that starts competing again is brought up
//    to the system's virtual time less one window.
//  - No debt forgiven by pausing: a vbd ahead stays ahead while the others
//    compete.
//  - Never more than a grace of waiting for nothing: a ring whose wait ends
//    without the others having caught up takes its turn anyway, and the
//    vbds that did not use theirs lose them (brought up to one window
//    behind). A neighbour that is slow for its own reasons (its disk, its
//    frontend) so costs a heavy vbd at most a grace per window.
#pragma once

#include "blkback/data/memory.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace xbd::blkback {

// Always held by a shared_ptr: its members keep it alive.
class fair_share : public std::enable_shared_from_this<fair_share> {
 public:
  using clock = std::chrono::steady_clock;
  // The fixed cost of a request, in bytes of data it is worth.
  static constexpr std::uint64_t request_cost = 4096;
  // Small requests buy their vbd's share this much at a time (a ring pays
  // a lease up front with one start(), then starts requests from it with
  // touch() alone): a sixteenth of the window the rules allow.
  static constexpr std::uint64_t lease = 128 << 10;

  fair_share(std::uint64_t window, clock::duration grace) : window_(window), grace_(grace) {}
  fair_share(const fair_share&) = delete;
  fair_share& operator=(const fair_share&) = delete;

  // One vbd. Thread-safe: its rings use it from their threads.
  class member {
   public:
    explicit member(std::shared_ptr<fair_share> s) : owner_(std::move(s)), share_(*owner_) {}
    ~member();
    member(const member&) = delete;
    member& operator=(const member&) = delete;

    // Starts a request of `cost`, or registers `w` to be told when this vbd
    // may (answering false). `overdue`: the ring already waited a whole
    // grace for this request; it goes now. `now`: the caller's clock
    // reading, if it has a recent one (the time of its turn).
    bool start(std::uint64_t cost, memory_waiter& w, bool overdue = false, clock::time_point now = clock::now());
    // A request of a lease bought with start() starts at `now`: the vbd
    // still competes (no lock: one relaxed store).
    void touch(clock::time_point now) { last_start_.store(now.time_since_epoch().count(), std::memory_order_relaxed); }
    // `w` no longer waits (its ring stops).
    void forget(memory_waiter& w);
    // Times a ring of this vbd had to wait for its turn.
    std::uint64_t waits() const;
    clock::duration grace() const { return share_.grace_; }

   private:
    friend class fair_share;
    std::shared_ptr<fair_share> owner_;
    fair_share& share_;
    std::uint64_t vtime_ = 0;                // under the share's lock
    std::atomic<clock::rep> last_start_{0};  // the clock's count: touch() stores it without the lock
    std::uint64_t waits_ = 0;
  };

  std::shared_ptr<member> join() { return std::make_shared<member>(shared_from_this()); }
  std::uint64_t window() const { return window_; }
  clock::duration grace() const { return grace_; }

 private:
  // Drops the vbds whose grace is over.
  void expire_locked(clock::time_point now);
  // The lowest virtual time among competing vbds other than `m`; max if none.
  std::uint64_t floor_locked(const member* m) const;
  bool may_start_locked(const member* m) const;
  void forfeit_locked(const member* m);
  void advance_locked();
  void wake_locked();

  struct waiting_ring {
    memory_waiter* waiter;
    const member* owner;
  };

  const std::uint64_t window_;
  const clock::duration grace_;
  mutable std::mutex mu_;
  std::uint64_t vnow_ = 0;       // the system's virtual time: never goes back
  std::vector<member*> active_;  // members competing now
  std::vector<waiting_ring> waiting_;
};

}  // namespace xbd::blkback
