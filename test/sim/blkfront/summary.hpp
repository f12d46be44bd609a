// The one-line JSON summary and the exit status derived from it.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "blkfront/engine.hpp"
#include "blkfront/negotiation.hpp"
#include "blkfront/script.hpp"

namespace xbd::sim::blkfront {

struct summary {
  std::string end = "completed";  // run_end name, or "setup_failed"
  std::string error;              // why setup failed or the close went wrong
  bool setup_failed = false;
  bool allow_io_errors = false;
  // A signal stopped the run: `error` (a close cut short) fails nothing.
  bool stopped = false;

  std::uint32_t domid = 0, devid = 0;
  std::size_t devices = 1, connected = 0;  // several --devid: how many, how many connected
  std::string frontend, backend;
  std::uint32_t backend_id = 0;

  std::optional<backend_features> features;
  std::optional<negotiated> neg;
  std::string protocol;
  unsigned ring_entries = 0;
  unsigned requests_per_io = 1;
  bool indirect_in_use = false;
  std::optional<disk_properties> disk;

  bool workload = false;
  std::string rw;
  unsigned read_pct = 0;
  unsigned discard_pct = 0;
  bool discard_secure = false;
  std::uint64_t barrier_every = 0;
  std::uint32_t bs = 0;
  unsigned qd = 0, effective_qd = 0;
  bool verify = false;
  bool same_page = false;
  bool fresh_grants = false;
  bool queue_threads = false;
  // Pages (rings, data, script pools) the backend still held when it was
  // Closed, summed over the cycles; nullopt if never known. Reported only:
  // ending access then is deferred by gntshr, not refused.
  std::optional<std::uint64_t> held_after_close;
  std::uint64_t run_id = 0;
  std::uint64_t prefill_ios = 0;
  unsigned cycles = 0;
  unsigned reconnects = 0;

  run_stats stats;
  std::vector<unsigned> backend_states;
  std::optional<script_result> raw;
};

// 0: all good; 1: the backend misbehaved (mismatch, protocol error, I/O
// error unless allowed, stall, disconnect, failed script expectation);
// 2: setup failed (also when a signal came before the device connected).
int exit_status(const summary& s);
std::string to_json(const summary& s);
// A few human-readable lines for stderr.
std::string to_text(const summary& s);

}  // namespace xbd::sim::blkfront
