// queue: the data plane of one ring.
//
// One coroutine per ring (run()): wait for the event, copy requests out of
// the ring once, validate the copies, start their I/O, and go back to the
// ring while the I/O runs. Completions write the responses; responses are
// pushed, and the frontend notified, once per batch. Everything of a queue
// runs on one io_context thread: no locks.
//
// Memory is sized from the ring when the queue connects: one slot per ring
// entry, each with a bounce buffer for the largest request, a file object of
// its own (io.md: Asio runs one operation at a time per file object) and
// room for its completion handlers. Nothing is allocated per request. The
// buffers are reserved, not committed: only slots that have been used take
// memory, and slots are reused most-recently-freed first.
#pragma once

#include "asio_xen/evtchn.hpp"
#include "asio_xen/gnttab.hpp"
#include "blkback/abi.hpp"
#include "blkback/aux_ring.hpp"
#include "blkback/backing.hpp"
#include "blkback/log.hpp"
#include "blkback/platform.hpp"
#include "blkback/request.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>

#include <cstdint>
#include <memory>
#include <vector>

namespace xbd::blkback {

struct queue_params {
  unsigned frontend_domid = 0;
  abi layout = native_abi;
  std::vector<asio_xen::grant_ref> ring_refs;  // 1 << ring-page-order of them
  asio_xen::evtchn_port remote_port = 0;
  device_limits limits;
};

struct queue_stats {
  std::uint64_t requests = 0;
  std::uint64_t reads = 0;
  std::uint64_t writes = 0;
  std::uint64_t flushes = 0;
  std::uint64_t discards = 0;
  std::uint64_t rejected = 0;   // answered without I/O: failed validation
  std::uint64_t failed = 0;     // answered ERROR: grant copy or I/O failed
  std::uint64_t bytes_read = 0;
  std::uint64_t bytes_written = 0;
};

class queue {
 public:
  // Maps the ring, binds the event channel and sizes the slots. `ex` is the
  // thread the queue will run on; `aux` must belong to that thread.
  static asio_xen::result<std::unique_ptr<queue>> connect(boost::asio::any_io_executor ex, const xen_platform& xen,
                                                          const queue_params& params, const backing_store& store,
                                                          std::shared_ptr<aux_ring> aux, logger lg);
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

  const queue_stats& stats() const { return stats_; }
  std::uint32_t ring_size() const { return ring_.size(); }
  asio_xen::evtchn_port local_port() const { return evtchn_.local_port(); }
  std::uint32_t in_flight() const { return in_flight_; }

  struct slot;

 private:
  queue(boost::asio::any_io_executor ex, asio_xen::grant_table gt, asio_xen::grant_mapping ring_mem, abi_ring ring,
        asio_xen::event_channel evtchn, const queue_params& params, const backing_store& store,
        std::shared_ptr<aux_ring> aux, logger lg);

  void dispatch(const wire_request& w);
  bool ensure_file(slot& s);
  void start_read(slot& s);
  void start_write(slot& s);
  bool io_done(slot& s, const asio_xen::error_code& ec, std::size_t n, const char* what);
  void start_flush(slot& s);
  void start_discard(slot& s);
  void aux_done(slot& s, asio_xen::error_code ec);
  validation fetch_indirect(slot& s, const wire_request& w, const needs_indirect& need);
  boost::asio::awaitable<void> drain();
  static boost::asio::thread_pool& blocking_pool();
  void complete(slot& s, std::int16_t status);
  void respond(std::uint64_t id, std::uint8_t op, std::int16_t status);
  void schedule_push();
  void push_now();
  void log_rejection(const char* what, std::uint64_t id);
  slot& acquire();
  void release(slot& s);
  bool copy_segments(slot& s, bool to_guest);

  boost::asio::any_io_executor ex_;
  asio_xen::grant_table gnttab_;
  asio_xen::grant_mapping ring_mem_;
  abi_ring ring_;
  asio_xen::event_channel evtchn_;
  queue_params params_;
  int fd_;
  bool block_device_;
  std::shared_ptr<aux_ring> aux_;
  logger log_;

  std::size_t slot_bytes_;
  void* buffers_ = nullptr;
  std::size_t buffers_size_ = 0;
  std::vector<std::unique_ptr<slot>> slots_;
  std::vector<slot*> free_;
  std::uint32_t in_flight_ = 0;
  bool stopping_ = false;
  bool push_scheduled_ = false;
  bool draining_ = false;  // a barrier waits for the requests before it
  boost::asio::steady_timer idle_;  // wakes run() when the last request is answered after stop()
  queue_stats stats_;
  unsigned rejections_logged_ = 0;
};

}  // namespace xbd::blkback
