// --queue-threads: every queue of the vbd driven by a thread of its own, as
// a multi-queue guest drives its rings from several vCPUs (blk-mq's
// hardware contexts), instead of one loop serving all of them.
//
// Each queue thread ("lane") has its own engine over its one ring, its own
// platform (event-channel and gntshr handles: a port is delivered to the
// handle that bound it, so a thread cannot wait on another's), its own
// workload over a contiguous share of the region's blocks, and its own
// statistics, merged at the end. The shares never overlap, so no two
// threads ever have the same block in flight and verify keeps its one
// answer per block (the generation tracker locks its shared maps).
//
// The calling thread stays the only one that talks to xenstore (the
// watchdog brackets one request at a time): it watches the backend's state
// and calls the run off on every lane when the backend leaves. A lane that
// ends in a protocol error or a stall calls the others off too, as the
// one-thread loop abandons every queue then; a signal reaches every lane's
// wait by itself, and each drains within stop_bound::drain.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "blkfront/engine.hpp"
#include "blkfront/workload.hpp"
#include "blkfront/xen_platform.hpp"

namespace xbd::sim::blkfront {

// Lane `i` of `n`: a contiguous share of the region's blocks, and its
// share of --ios and of --bytes in whole blocks (each split evenly, the
// remainder to the first lanes; a lane whose share is 0 issues nothing). --flush-every and
// --barrier-every count the lane's own writes. Lane 0 keeps the seed; the
// others' differ.
workload_spec lane_spec(const workload_spec& w, unsigned i, unsigned n);

struct lane {
  engine* eng = nullptr;         // prepared, over this lane's queue only
  xen_platform* plat = nullptr;  // the one `eng` waits on
  workload_spec spec;
  run_stats stats;
  run_end end = run_end::completed;
};

// Runs every lane on a thread of its own until all have ended; meanwhile
// the calling thread waits on `main` (xenstore watches: `on_watch` true
// means the backend left, and every lane is called off). The run's end: the
// first protocol error or stall of a lane, else backend_closed if the
// backend left, else interrupted if a signal stopped a lane, else
// completed. setup_failed (with `err`) if a thread could not be started.
// On a stall, every lane's queues are described on stderr.
run_end run_lanes(xen_platform& main, std::vector<lane>& lanes, std::optional<clock::time_point> deadline,
                  const engine::watch_fn& on_watch, std::string& err);

// The lanes' statistics as one run's: sums, except the run time, which is
// the longest lane's (they ran side by side).
run_stats merge_lanes(const std::vector<lane>& lanes);

}  // namespace xbd::sim::blkfront
