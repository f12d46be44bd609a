// Request buffer memory: bounded for the whole daemon, shared fairly between
// vbds, and given back to the kernel when it is not used.
//
// Every byte of guest data that passes through the daemon sits in a
// buffer for the life of its request. A guest chooses how much that is
// (up to ring size x largest request, per queue), so the daemon holds all
// buffers of all rings against one budget ([io] buffer-memory):
//  - memory_budget counts what is mapped (in use or cached) and says whether
//    a ring may map more. Rules, in order: a ring with nothing in flight may
//    always start one request (nobody starves, whatever the others do); a
//    vbd may grow while the total stays within the budget, unless another
//    vbd is waiting and this one already holds its fair share (the budget
//    divided by the vbds holding memory). Otherwise the ring waits, and its
//    requests stay in the ring: backpressure, never an error.
//  - buffer_cache is one ring's: chunks of 2^k pages, mapped on demand,
//    reused most-recently-freed first, unmapped after an idle second, or at
//    once while some ring is waiting for memory.
// docs/architecture.md ("Memory") has the reasoning and the numbers.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

namespace xbd::blkback {

// Told when memory has gone back to the budget. Called with the budget's
// lock held: it must only post, never do the work inline.
class memory_waiter {
 public:
  virtual void memory_freed() = 0;

 protected:
  ~memory_waiter() = default;
};

struct memory_usage {
  std::uint64_t limit = 0;
  std::uint64_t committed = 0;  // mapped for requests: in use or cached
  std::uint64_t peak = 0;       // the most committed at any time
  std::uint64_t waits = 0;      // times a ring had to wait for memory
  unsigned holders = 0;         // accounts holding memory now
};

// Always held by a shared_ptr: its accounts keep it alive.
class memory_budget : public std::enable_shared_from_this<memory_budget> {
 public:
  explicit memory_budget(std::uint64_t limit) : limit_(limit) {}
  memory_budget(const memory_budget&) = delete;
  memory_budget& operator=(const memory_budget&) = delete;

  // One vbd's share. Thread-safe; its rings use it from their threads.
  class account {
   public:
    explicit account(std::shared_ptr<memory_budget> b) : owner_(std::move(b)), budget_(*owner_) {}
    ~account();
    account(const account&) = delete;
    account& operator=(const account&) = delete;

    // Maps `bytes` more for this vbd, or registers `w` to be told when
    // memory is freed and answers false. `ring_idle`: the asking ring has
    // nothing in flight, which always gets its request through.
    bool grow(std::uint64_t bytes, bool ring_idle, memory_waiter& w);
    void shrink(std::uint64_t bytes);
    // `w` no longer waits (its ring stops).
    void forget(memory_waiter& w);
    // Whether this vbd should hand memory back rather than keep or reuse
    // it: another vbd waits and this one holds more than its fair share.
    bool should_yield() const;
    // Some ring, of any vbd, waits for memory.
    bool pressure() const { return budget_.waiting_.load(std::memory_order_relaxed) > 0; }

    struct totals {
      std::uint64_t committed = 0;
      std::uint64_t peak = 0;
      std::uint64_t waits = 0;
    };
    totals usage() const;
    std::uint64_t budget_limit() const { return budget_.limit_; }

   private:
    friend class memory_budget;
    std::shared_ptr<memory_budget> owner_;
    memory_budget& budget_;
    std::uint64_t committed_ = 0;  // under the budget's lock
    std::uint64_t peak_ = 0;
    std::uint64_t waits_ = 0;
  };

  std::shared_ptr<account> open_account() { return std::make_shared<account>(shared_from_this()); }
  memory_usage usage() const;
  std::uint64_t limit() const { return limit_; }

 private:
  std::uint64_t fair_share_locked() const;
  bool others_wait_locked(const account* a) const;
  void wake_locked();

  struct waiting_ring {
    memory_waiter* waiter;
    const account* owner;
  };

  const std::uint64_t limit_;
  mutable std::mutex mu_;
  std::uint64_t committed_ = 0;
  std::uint64_t peak_ = 0;
  std::uint64_t waits_ = 0;
  unsigned holders_ = 0;
  std::vector<waiting_ring> waiting_list_;
  std::atomic<unsigned> waiting_{0};
};

// One ring's buffers. Used on the ring's thread only.
class buffer_cache {
 public:
  struct chunk {
    std::byte* data = nullptr;
    std::uint8_t order = 0;  // 2^order pages
  };
  static constexpr std::size_t page = 4096;
  static std::size_t bytes_of(std::uint8_t order) { return page << order; }
  // The smallest order that holds `bytes` (> 0).
  static std::uint8_t order_for(std::size_t bytes);

  explicit buffer_cache(std::shared_ptr<memory_budget::account> acct) : account_(std::move(acct)) {}
  ~buffer_cache();
  buffer_cache(const buffer_cache&) = delete;
  buffer_cache& operator=(const buffer_cache&) = delete;

  // A chunk of at least `bytes`: a cached one, or a new one within the
  // budget. nullopt: wait, `w` is told when memory frees up.
  std::optional<chunk> take(std::size_t bytes, bool ring_idle, memory_waiter& w);
  // Back to the cache (unused since `now`), or to the kernel when memory
  // is wanted elsewhere.
  void give(chunk c, std::chrono::steady_clock::time_point now = std::chrono::steady_clock::now());
  // Unmaps chunks unused for `idle` or longer (all of them for zero).
  void trim(std::chrono::steady_clock::duration idle);
  std::size_t cached_bytes() const { return cached_bytes_; }
  memory_budget::account& account() const { return *account_; }

 private:
  struct cached {
    chunk c;
    std::chrono::steady_clock::time_point since;
  };
  bool map(std::uint8_t order, bool ring_idle, memory_waiter& w, chunk& out);
  void unmap(chunk c);

  std::shared_ptr<memory_budget::account> account_;
  std::vector<std::vector<cached>> free_;  // by order, most recently freed last
  std::size_t cached_bytes_ = 0;
};

// Gives the C library's free heap back to the kernel (malloc_trim), as a
// vbd that goes leaves many small freed allocations behind. Thread-safe.
// Does nothing in a build with AddressSanitizer: its allocator is not
// glibc's, so glibc's heap is first set up by this call, and two threads
// making that first call at once crash in glibc (its set-up is not safe
// against a concurrent first call).
void return_free_heap();

}  // namespace xbd::blkback
