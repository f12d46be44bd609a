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
// Memory is sized from the ring when the queue connects: one slot per ring
// entry, each with a bounce buffer for the largest request and room for its
// request's coroutine frame. Nothing is allocated per request. The buffers
// are reserved, not committed: only slots that have been used take memory,
// and slots are reused most-recently-freed first.
#pragma once

#include "asio_xen/evtchn.hpp"
#include "asio_xen/gnttab.hpp"
#include "blkback/data/log_budget.hpp"
#include "blkback/data/request_task.hpp"
#include "blkback/log.hpp"
#include "blkback/platform.hpp"
#include "blkback/ring/abi.hpp"
#include "blkback/ring/request.hpp"
#include "blkback/storage/storage.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

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
  // The vbd's: shared by its rings, kept across reconnects.
  std::shared_ptr<log_budget> budget = std::make_shared<log_budget>();
};

struct queue_stats {
  std::uint64_t requests = 0;
  std::uint64_t reads = 0;
  std::uint64_t writes = 0;
  std::uint64_t flushes = 0;
  std::uint64_t discards = 0;
  std::uint64_t rejected = 0;  // answered without I/O: failed validation
  std::uint64_t failed = 0;    // answered ERROR or EOPNOTSUPP: grant copy or storage failed
  std::uint64_t bytes_read = 0;
  std::uint64_t bytes_written = 0;
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

  const queue_stats& stats() const { return stats_; }
  std::uint32_t ring_size() const { return ring_.size(); }
  asio_xen::evtchn_port local_port() const { return evtchn_.local_port(); }
  std::uint32_t in_flight() const { return in_flight_; }

  struct slot;

 private:
  queue(boost::asio::any_io_executor ex, asio_xen::grant_table gt, asio_xen::grant_mapping ring_mem, abi_ring ring,
        asio_xen::event_channel evtchn, const queue_params& params, std::unique_ptr<storage::channel> chan, logger lg);

  request_task serve(slot& s, wire_request w);
  boost::asio::awaitable<void> wait_idle();
  validation fetch_indirect(slot& s, const wire_request& w, const needs_indirect& need);
  bool copy_segments(slot& s, bool to_guest);
  void reject(slot& s, const rejected& r);
  std::int16_t account(const slot& s, asio_xen::error_code ec);
  void finish(slot& s, std::int16_t status);
  void respond(std::uint64_t id, std::uint8_t op, std::int16_t status);
  void schedule_push();
  void push_now();
  slot& acquire();
  void release(slot& s);

  boost::asio::any_io_executor ex_;
  asio_xen::grant_table gnttab_;
  asio_xen::grant_mapping ring_mem_;
  abi_ring ring_;
  asio_xen::event_channel evtchn_;
  queue_params params_;
  std::unique_ptr<storage::channel> chan_;
  logger log_;

  std::size_t slot_bytes_;
  void* buffers_ = nullptr;
  std::size_t buffers_size_ = 0;
  std::vector<std::unique_ptr<slot>> slots_;
  std::vector<slot*> free_;
  std::uint32_t in_flight_ = 0;
  bool stopping_ = false;
  bool push_scheduled_ = false;
  bool waiting_idle_ = false;
  boost::asio::steady_timer idle_;  // wakes wait_idle() when the last request is answered
  queue_stats stats_;
  std::shared_ptr<log_budget> budget_;
};

}  // namespace xbd::blkback
