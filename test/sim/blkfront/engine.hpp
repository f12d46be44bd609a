// The data path of the simulated frontend: turns the workload's I/Os into
// ring requests on the queues, consumes responses, checks them as Linux's
// blkif_interrupt does, verifies read data, and measures.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "blkfront/abi.hpp"
#include "blkfront/negotiation.hpp"
#include "blkfront/platform.hpp"
#include "blkfront/queue.hpp"
#include "blkfront/stats.hpp"
#include "blkfront/verify.hpp"
#include "blkfront/workload.hpp"

namespace xbd::sim::blkfront {

using clock = std::chrono::steady_clock;

// Protocol errors and mismatches are also written to stderr as they happen
// (the summary keeps only the first few); unit tests turn that off.
void set_diagnostics(bool on);
bool diagnostics();

struct engine_params {
  const abi* layout = nullptr;
  std::uint16_t handle = 0;
  std::uint32_t backend_domid = 0;
  negotiated neg;
  unsigned qd = 1;  // I/Os in flight per queue
  std::uint32_t bs = 4096;
  bool verify = false;
  unwritten_policy policy = unwritten_policy::any;
  discard_policy discards = discard_policy::zero;
  bool discard_secure = false;  // set BLKIF_DISCARD_SECURE on every discard
  bool barriers = false;        // the workload sends barrier writes
  std::uint64_t run_id = 0;
  std::uint64_t region_offset = 0;  // bytes; verify blocks are counted from here
  std::chrono::milliseconds response_timeout{30000};
  // Every data segment of every request references one page per queue
  // (--same-page); incompatible with verify.
  bool same_page = false;
  // Each request's data and indirect pages are granted for it alone and
  // access to them ended after its response (--fresh-grants).
  bool fresh_grants = false;
  // Both ends set feature-persistent: the backend may keep our pages mapped
  // after answering, so a page it still holds then is not its error.
  bool persistent = false;
};

struct mismatch_record {
  unsigned queue = 0;
  std::uint64_t lba = 0;
  verdict v = verdict::ok;
  std::uint32_t expected_generation = 0;
  check_result found;
};

inline constexpr std::size_t verdict_count = 9;

struct run_stats {
  std::array<std::uint64_t, io_kind_count> ops{};  // completed, by io_kind
  std::uint64_t barriers = 0;                      // writes completed that went as WRITE_BARRIER
  std::uint64_t bytes_read = 0;
  std::uint64_t bytes_written = 0;
  std::uint64_t bytes_discarded = 0;
  std::uint64_t requests = 0;  // ring requests pushed
  std::uint64_t indirect_requests = 0;
  std::uint64_t notifications = 0;  // event channel kicks sent
  std::uint64_t events = 0;         // event channel kicks received
  std::uint64_t io_errors = 0;      // BLKIF_RSP_ERROR responses
  std::uint64_t eopnotsupp = 0;     // BLKIF_RSP_EOPNOTSUPP responses
  std::uint64_t protocol_errors = 0;
  std::vector<std::string> protocol_messages;  // the first few
  std::uint64_t verified_blocks = 0;
  std::array<std::uint64_t, verdict_count> mismatches{};  // indexed by verdict; [ok] unused
  std::vector<mismatch_record> first_mismatches;
  latency_histogram latency;  // data I/Os and flushes, issue to completion
  latency_histogram read_latency;
  latency_histogram write_latency;
  latency_histogram discard_latency;
  double seconds = 0;
  // --fresh-grants: pages granted for one request; those the backend still
  // held when we ended access after the response (persistent grants only:
  // otherwise a protocol error); the most of those it held at once, as seen
  // by pruning about every 10 ms; whether the platform could tell at all.
  std::uint64_t fresh_pages = 0;
  std::uint64_t held_after_response = 0;
  std::uint64_t held_peak = 0;
  bool holds_unknown = false;

  std::uint64_t total_mismatches() const;
  void merge(const run_stats& o);
  void protocol_error(std::string msg);
};

enum class run_end {
  completed,       // budget or runtime used up, everything answered
  interrupted,     // a signal stopped issuing; what was in flight was answered
  protocol_error,  // the backend broke the ring protocol; the ring is abandoned
  stalled,         // requests outstanding and no response for response_timeout
  backend_closed,  // the backend left Connected; what was in flight is lost
  setup_failed,
  // --queue-threads: another queue's thread ended the run (its own end says
  // why); what was in flight here is abandoned. The platform's wake
  // descriptor is readable only for that (queue_threads.hpp).
  aborted,
};
std::string_view to_string(run_end e);

class engine {
 public:
  engine(platform& p, std::vector<ring_queue*> queues, const engine_params& params, generation_tracker* tracker);
  ~engine();
  engine(const engine&) = delete;
  engine& operator=(const engine&) = delete;

  // Shares the data (and indirect) pages every request slot needs.
  bool prepare(std::string& err);
  // The I/Os in flight per queue after the ring and pool limits.
  unsigned effective_qd() const { return effective_qd_; }
  unsigned requests_per_io() const { return parts_per_io_; }
  bool uses_indirect() const { return use_indirect_; }
  std::size_t shared_data_pages() const;
  // How many of them the backend holds (nullopt: the platform cannot tell).
  std::optional<std::size_t> held_pages() const;

  // For a stall report: one line per queue, our view of the ring and the
  // platform's of the port.
  std::vector<std::string> describe_queues();

  // Called when a xenstore watch fires; returning true abandons the run.
  using watch_fn = std::function<bool()>;
  run_end run(workload& w, std::optional<clock::time_point> deadline, run_stats& stats, const watch_fn& on_watch = {});

 private:
  struct request_ctx;
  struct io_state;
  struct queue_state;

  bool submit(queue_state& qs, workload& w, run_stats& st);
  bool start_io(queue_state& qs, const planned_io& io, run_stats& st);
  void fill_request(queue_state& qs, request_ctx& c, std::uint8_t operation);
  bool process(queue_state& qs, workload& w, run_stats& st);
  bool complete_request(queue_state& qs, request_ctx& c, std::int16_t status, workload& w, run_stats& st);
  bool share_fresh(request_ctx& c, bool indirect, run_stats& st);
  bool end_fresh(queue_state& qs, request_ctx& c, run_stats& st);
  void prune_held(run_stats& st, bool now);
  std::uint64_t verify_index(std::uint64_t lba) const;
  std::string describe(queue_state& qs);

  platform& platform_;
  std::vector<ring_queue*> queues_;
  engine_params params_;
  generation_tracker* tracker_;
  std::vector<std::unique_ptr<queue_state>> states_;
  std::uint32_t vblock_ = 4096;
  unsigned pages_per_io_ = 1;
  unsigned pages_per_request_ = 1;
  unsigned parts_per_io_ = 1;
  unsigned indirect_pages_per_request_ = 0;
  unsigned effective_qd_ = 0;
  bool use_indirect_ = false;
  // --fresh-grants with persistent grants: refs whose access we ended while
  // the backend held them (gntshr defers the end until it lets go), and
  // when they were last checked. A share that fails ends the run.
  std::unordered_set<std::uint32_t> held_;
  clock::time_point last_prune_{};
  bool share_failed_ = false;
};

}  // namespace xbd::sim::blkfront
