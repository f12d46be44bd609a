// copy_batch: the grant copies of many requests in one call.
//
// A grant copy is a system call into gntdev and, under it, hypercalls of up
// to 16 segments each; a 4 KiB request has one segment. Copying request by
// request costs a call per request; the queue instead collects the copies
// its requests ask for during one turn of its thread (the writes taken in a
// pass over the ring, the reads whose data came back) and runs them
// together when the turn ends (docs/architecture.md, "Batched grant
// copies").
//
// Each request still gets its own verdict: every segment has its own status
// (XSA-362/365: a guest can make any one fail), and a call that fails as a
// whole (gntdev refuses the batch before copying anything) is retried
// request by request, so one bad request never fails its neighbours.
#pragma once

#include "asio_xen/gnttab.hpp"

#include <coroutine>
#include <cstddef>
#include <span>
#include <vector>

namespace xbd::blkback {

class copy_batch {
 public:
  // Past this many segments a batch runs before it takes more (a bound on
  // the scratch it keeps, not on what one request may add).
  static constexpr std::size_t soft_limit = 1024;

  // Room for one request's `n` segments, to be filled by the caller; the
  // request's coroutine `waiter` is resumed once they ran, with `*result`
  // empty if all of them succeeded.
  std::span<asio_xen::copy_segment> add(std::size_t n, std::coroutine_handle<> waiter, asio_xen::error_code* result);
  bool empty() const { return entries_.empty(); }
  bool full() const { return used_ >= soft_limit; }

  // Runs everything added (also what the resumed requests add meanwhile),
  // then resumes each request in the order they were added. Returns the
  // number of calls made. A call from inside a resumed request does nothing:
  // the outer call takes up what it added.
  std::size_t run(asio_xen::gnttab_driver& d);

  // Lets go of the scratch space (an idle ring).
  void trim();

 private:
  struct entry {
    std::size_t first = 0;
    std::size_t count = 0;
    std::coroutine_handle<> waiter;
    asio_xen::error_code* result = nullptr;
  };
  std::size_t run_once(asio_xen::gnttab_driver& d);

  // Grown, never shrunk but by trim(): segments_[0, used_) are this batch's.
  std::vector<asio_xen::copy_segment> segments_, running_segments_;
  std::size_t used_ = 0, running_used_ = 0;
  std::vector<entry> entries_, running_;
  bool running_now_ = false;
};

}  // namespace xbd::blkback
