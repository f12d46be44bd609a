#include "blkfront/runner.hpp"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>

#include "blkfront/engine.hpp"
#include "blkfront/frontend.hpp"
#include "blkfront/queue_threads.hpp"
#include "blkfront/script.hpp"
#include "blkfront/stop.hpp"
#include "blkfront/summary.hpp"
#include "blkfront/xen_platform.hpp"

namespace xbd::sim::blkfront {
namespace {

// One verify generation per block of the region: cap the table at 1 GiB.
constexpr std::uint64_t max_verify_blocks = std::uint64_t{1} << 28;

std::optional<std::string> slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return std::nullopt;
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct program {
  const options& o;
  summary s;
  // First: blocks the signals before libxenstore starts its thread.
  stop_control stop;
  xenstore xs;
  std::unique_ptr<xen_platform> plat;
  // --queue-threads: one platform (event-channel and gntshr handles) per
  // queue we may negotiate, for the queue's thread to wait on; they hold
  // the queues' ports and pages, so they outlive the engines.
  std::vector<std::unique_ptr<xen_platform>> queue_plats;
  std::unique_ptr<frontend> fe;
  std::unique_ptr<generation_tracker> tracker;
  std::uint64_t region_offset = 0, region_bytes = 0;
  // The pages a cycle's script and workload shared stay shared until its
  // close handshake is done, as Linux's blkfront ends its persistent grants
  // only then (blkif_free): a backend may hold them until it disconnects.
  std::unique_ptr<script_runner> script;
  // One engine over every queue; with --queue-threads one per queue.
  std::vector<std::unique_ptr<engine>> engines;

  explicit program(const options& opts) : o(opts) {}

  bool interrupted() const { return stop.requested_at().has_value(); }
  void mark_interrupted() {
    if (s.end == "completed") s.end = "interrupted";
  }

  void log(const std::string& msg) const {
    if (!o.quiet && !o.json) std::fprintf(stderr, "blkfront-sim: %s\n", msg.c_str());
  }

  bool setup_failed(std::string msg) {
    s.setup_failed = true;
    s.end = "setup_failed";
    s.error = std::move(msg);
    return false;
  }

  // Checks the workload against the disk the backend offers.
  bool check_workload(const disk_properties& d) {
    if (!o.workload) return true;
    if (o.bs % d.sector_size != 0)
      return setup_failed("--bs " + std::to_string(o.bs) + " is not a multiple of sector-size " +
                          std::to_string(d.sector_size));
    if (o.offset % d.sector_size != 0) return setup_failed("--offset is not a multiple of sector-size");
    const std::uint64_t disk_bytes = d.bytes();
    if (o.offset >= disk_bytes) return setup_failed("--offset is beyond the end of the disk");
    const std::uint64_t bytes = o.size.value_or(disk_bytes - o.offset);
    if (bytes > disk_bytes - o.offset) return setup_failed("--offset + --size is beyond the end of the disk");
    if (bytes < o.bs) return setup_failed("the I/O region is smaller than one block");
    if (o.flush_every && !d.flush)
      return setup_failed("--flush-every, but the backend does not advertise feature-flush-cache");
    if (o.barrier_every && !d.barrier)
      return setup_failed("--barrier-every, but the backend does not advertise feature-barrier");
    if (o.discard_pct) {
      if (!d.discard) return setup_failed("discards asked for, but the backend does not advertise feature-discard");
      if (o.discard_secure && !d.discard_secure)
        return setup_failed("--discard-secure, but the backend does not advertise discard-secure");
      // blkif.h: discard extents start at discard-alignment and are
      // discard-granularity long. Every discard covers one --bs block, so
      // blocks must be made of whole extents; a backend may otherwise
      // discard only part of a block, and verify could not say which part.
      const std::uint64_t g = d.discard_granularity ? d.discard_granularity : d.sector_size;
      const std::uint64_t a = d.discard_alignment % g;
      if (o.bs % g != 0 || (o.offset + g - a) % g != 0)
        return setup_failed("discards need --bs and --offset in whole discard extents (discard-granularity " +
                            std::to_string(g) + ", discard-alignment " + std::to_string(d.discard_alignment) + ")");
    }
    if (tracker && (region_offset != o.offset || region_bytes != bytes))
      return setup_failed("the disk changed size across a reconnect; verify cannot continue");
    region_offset = o.offset;
    region_bytes = bytes;
    if (o.verify && !tracker) {
      const std::uint64_t blocks = bytes / verify_block_size(o.bs);
      if (blocks > max_verify_blocks)
        return setup_failed("the region has too many verify blocks (" + std::to_string(blocks) +
                            "); restrict it with --size");
      tracker = std::make_unique<generation_tracker>(blocks);
    }
    return true;
  }

  workload_spec spec() const {
    workload_spec w;
    w.random = o.random;
    w.read_pct = o.read_pct;
    w.region_offset = region_offset;
    w.region_bytes = region_bytes;
    w.bs = o.bs;
    w.flush_every = o.flush_every;
    w.discard_pct = o.discard_pct;
    w.barrier_every = o.barrier_every;
    w.max_ios = o.ios;
    w.max_bytes = o.bytes;
    w.seed = o.seed;
    return w;
  }

  engine_params params(const connection& c) const {
    engine_params p;
    p.layout = c.layout.get();
    p.handle = static_cast<std::uint16_t>(o.devid);
    p.backend_domid = fe->backend_id();
    p.neg = c.neg;
    p.qd = o.qd;
    p.bs = o.bs;
    p.verify = o.verify;
    p.policy = o.unwritten;
    p.discards = o.discarded;
    p.discard_secure = o.discard_secure;
    p.barriers = o.barrier_every > 0 && o.read_pct < 100 && o.discard_pct < 100;
    p.run_id = s.run_id;
    p.region_offset = region_offset;
    p.response_timeout = o.timeout;
    p.same_page = o.same_page;
    p.fresh_grants = o.fresh_grants;
    p.persistent = o.persistent && c.features.persistent;  // blkif.h: when both ends set the key
    return p;
  }

  // The engines of this cycle, prepared: one over all queues, or with
  // --queue-threads one per queue on that queue's platform.
  bool make_engines(const connection& c) {
    const engine_params p = params(c);
    engines.clear();
    if (!o.queue_threads) engines.push_back(std::make_unique<engine>(*plat, c.queue_ptrs(), p, tracker.get()));
    for (std::size_t i = 0; o.queue_threads && i < c.queues.size(); ++i)
      engines.push_back(std::make_unique<engine>(*queue_plats.at(i), std::vector{c.queues[i].get()}, p, tracker.get()));
    std::string err;
    for (auto& e : engines)
      if (!e->prepare(err)) return setup_failed(err);
    s.effective_qd = engines[0]->effective_qd();
    s.requests_per_io = engines[0]->requests_per_io();
    s.indirect_in_use = engines[0]->uses_indirect();
    return true;
  }

  // One run of workload `w`: on this thread, or split across the queue
  // threads (queue_threads.hpp).
  run_end drive(const workload_spec& w, std::optional<clock::time_point> deadline, run_stats& st) {
    auto watch = [this] { return fe->backend_left(); };
    if (!o.queue_threads) {
      workload wl(w);
      return engines[0]->run(wl, deadline, st, watch);
    }
    std::vector<lane> lanes(engines.size());
    for (unsigned i = 0; i < lanes.size(); ++i) {
      lanes[i].eng = engines[i].get();
      lanes[i].plat = queue_plats.at(i).get();
      lanes[i].spec = lane_spec(w, i, static_cast<unsigned>(lanes.size()));
    }
    std::string err;
    const run_end end = run_lanes(*plat, lanes, deadline, watch, err);
    st = merge_lanes(lanes);
    if (end == run_end::setup_failed) setup_failed(err);
    return end;
  }

  // Returns false when the remaining cycles must be skipped.
  bool run_workload(connection& c, bool first_cycle) {
    if (!make_engines(c)) return false;
    if (o.prefill && first_cycle) {
      workload_spec w = spec();
      w.random = false;
      w.read_pct = 0;
      w.discard_pct = 0;
      w.flush_every = 0;
      w.barrier_every = 0;
      w.max_bytes = 0;
      w.max_ios = region_bytes / o.bs;
      run_stats ps;
      log("prefilling " + std::to_string(w.max_ios) + " blocks");
      const run_end end = drive(w, std::nullopt, ps);
      s.prefill_ios = ps.ops[1];
      // Only what went wrong counts: the prefill is not part of the measurement.
      s.stats.io_errors += ps.io_errors;
      s.stats.eopnotsupp += ps.eopnotsupp;
      for (const auto& m : ps.protocol_messages) s.stats.protocol_error("prefill: " + m);
      if (end != run_end::completed) {
        s.end = std::string(to_string(end));
        return false;
      }
    }

    std::optional<clock::time_point> deadline;
    if (o.runtime)
      deadline = clock::now() + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(*o.runtime));
    run_stats rs;
    const run_end end = drive(spec(), deadline, rs);
    s.stats.merge(rs);
    if (end != run_end::completed) {
      s.end = std::string(to_string(end));
      return false;
    }
    return true;
  }

  bool run_script(connection& c) {
    std::variant<std::vector<command>, script_error> parsed;
    if (o.script) {
      auto text = slurp(*o.script);
      if (!text) return setup_failed("cannot read " + *o.script);
      parsed = parse_script(*text);
    } else {
      auto bytes = slurp(*o.raw_file);
      if (!bytes) return setup_failed("cannot read " + *o.raw_file);
      parsed = raw_file_script(*bytes, c.layout->slot_size(), o.timeout);
    }
    if (auto* e = std::get_if<script_error>(&parsed))
      return setup_failed("script line " + std::to_string(e->line) + ": " + e->message);
    script_runner::environment env;
    env.plat = plat.get();
    env.backend_domid = fe->backend_id();
    env.queues = c.queue_ptrs();
    env.layout = c.layout.get();
    env.handle = static_cast<std::uint16_t>(o.devid);
    env.backend_state = [this] { return fe->backend_state(); };
    env.max_wait = o.timeout;
    script = std::make_unique<script_runner>(env);
    s.raw = script->run(std::get<std::vector<command>>(parsed));
    for (const auto& f : s.raw->failures) log("script: " + f);
    if (s.raw->interrupted) {
      mark_interrupted();
      return false;
    }
    return true;
  }

  void hold() {
    std::optional<clock::time_point> deadline;
    if (*o.hold > 0)
      deadline = clock::now() + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(*o.hold));
    log("holding the connection");
    for (;;) {
      auto timeout = std::chrono::milliseconds(500);
      if (deadline) {
        const auto now = clock::now();
        if (now >= *deadline) return;
        timeout = std::min(timeout, std::chrono::duration_cast<std::chrono::milliseconds>(*deadline - now) +
                                        std::chrono::milliseconds(1));
      }
      const wait_result r = plat->wait(timeout);
      if (r.signal) {
        // The documented end of `--hold 0`; a timed hold was cut short.
        if (deadline) mark_interrupted();
        return;
      }
      // Like Linux's blkfront: a backend that goes Closing is followed to
      // Closed by the close that comes next.
      if (r.xenstore && fe->backend_left()) {
        s.end = "backend_left";
        return;
      }
    }
  }

  int main() {
    s.domid = o.domid;
    s.devid = o.devid;
    s.allow_io_errors = o.allow_io_errors;
    s.workload = o.workload;
    s.rw = o.rw;
    s.read_pct = o.read_pct;
    s.discard_pct = o.discard_pct;
    s.discard_secure = o.discard_secure;
    s.barrier_every = o.barrier_every;
    s.bs = o.bs;
    s.qd = o.qd;
    s.verify = o.verify;
    s.same_page = o.same_page;
    s.fresh_grants = o.fresh_grants;
    s.queue_threads = o.queue_threads;
    s.run_id = o.run_id ? *o.run_id : (std::uint64_t{std::random_device{}()} << 32 | std::random_device{}());
    s.protocol = o.protocol_key ? *o.protocol_key : o.write_protocol_key ? o.protocol : "(none)";
    s.devices = o.devids.size();
    if (o.devids.size() > 1)
      run_devices();
    else
      run_cycles();
    s.backend_states = fe ? fe->backend_states_seen() : std::vector<unsigned>{};
    // The watchdog may have written its own summary and be exiting.
    if (!stop.claim_output()) return 2;
    std::printf("%s\n", to_json(s).c_str());
    std::fflush(stdout);
    if (!o.quiet && !o.json) std::fputs(to_text(s).c_str(), stderr);
    return exit_status(s);
  }

  // The close handshake. After a signal it is bounded by the stop (see
  // stop.hpp) and a close cut short is no failure of the backend's.
  void close(connection& c, std::chrono::milliseconds limit) {
    std::string err;
    const bool ok = fe->close(c, err, limit);
    s.stopped = interrupted();
    if (ok) return;
    if (s.stopped) {
      if (s.error.empty()) s.error = "closing: " + err;
    } else {
      s.stats.protocol_error("closing: " + err);
    }
  }

  // Once the backend is Closed it holds none of our pages (Linux's blkback
  // unmaps them all, persistent grants too, before it says Closed): how
  // many it still held, counted, not judged (summary.hpp).
  void count_held_after_close() {
    const auto rings = fe->rings_held_at_close();
    std::optional<std::size_t> data = 0;
    for (const auto& e : engines) {
      const auto h = e->held_pages();
      data = data && h ? std::optional(*data + *h) : std::nullopt;
    }
    const auto pools = script ? script->held_pages() : std::optional<std::size_t>(0);
    if (!rings || !data || !pools) return;
    s.held_after_close = s.held_after_close.value_or(0) + *rings + *data + *pools;
  }

  bool open_platform() {
    std::string err;
    if (!stop.start(o.domid, o.devid, o.timeout, err)) return setup_failed(err);
    if (!xs.open(err)) return setup_failed(err);
    xs.set_watchdog(&stop);
    plat = std::make_unique<xen_platform>(&xs, &stop);
    if (!plat->open(err)) return setup_failed(err);
    for (unsigned i = 0; o.queue_threads && i < o.wishes.queues; ++i) {
      // No xenstore: only the main thread talks to it (queue_threads.hpp).
      queue_plats.push_back(std::make_unique<xen_platform>(nullptr, &stop));
      if (!queue_plats.back()->open(err)) return setup_failed("queue thread " + std::to_string(i) + ": " + err);
    }
    return true;
  }

  // ------------------------------------------------ several devices
  // --devid A,B,...: each device is connected as a single one is (one after
  // the other), then all are held idle until the hold ends, a signal comes
  // or a backend leaves, and then closed together: all go Closing, and once
  // their backends followed (or the bound passed), all go Closed. One
  // process, one xenstore connection, one event-channel handle for all: a
  // guest with many disks, and the cheap way to keep many vbds connected.
  struct device {
    options o;
    std::unique_ptr<frontend> fe;
    connection c;
    bool connected = false;
    bool followed = false;  // its backend followed the close so far
  };
  std::vector<std::unique_ptr<device>> devs;

  void run_devices() {
    if (!open_platform()) return;
    xs.collect_watch_paths();
    std::string err;
    for (std::uint32_t id : o.devids) {
      auto d = std::make_unique<device>();
      d->o = o;
      d->o.devid = id;
      d->fe = std::make_unique<frontend>(xs, *plat, d->o);
      if (!d->fe->discover(err)) return (void)setup_failed("device " + std::to_string(id) + ": " + err);
      devs.push_back(std::move(d));
    }
    s.frontend = devs[0]->fe->frontend_dir();
    s.backend = devs[0]->fe->backend_dir();
    s.backend_id = devs[0]->fe->backend_id();
    s.cycles = 1;
    log("connecting " + std::to_string(devs.size()) + " devices");
    bool all = true;
    for (auto& d : devs) {
      std::vector<std::string> perrs;
      const bool ok = d->fe->connect(d->c, err, perrs);
      for (const auto& m : perrs) s.stats.protocol_error("device " + std::to_string(d->o.devid) + ": " + m);
      if (!ok) {
        setup_failed("device " + std::to_string(d->o.devid) + ": " + err);
        if (interrupted()) {
          s.end = "interrupted";
          s.stopped = true;
        }
        // It may have got half way: its close is part of the close below.
        d->connected = true;
        all = false;
        break;
      }
      d->connected = true;
      ++s.connected;
      if (!s.neg) {
        s.features = d->c.features;
        s.neg = d->c.neg;
        s.disk = d->c.disk;
        s.ring_entries = d->c.queues.empty() ? 0 : d->c.queues[0]->ring.size();
      }
    }
    if (all) {
      log("connected " + std::to_string(devs.size()) + " devices; holding");
      if (o.hold) hold_devices();
    }
    if (all && o.no_close) return;
    close_devices(all ? o.timeout : std::min(o.timeout, close_grace));
    s.stopped = s.stopped || interrupted();
    fe = std::move(devs[0]->fe);  // its states go into the summary
  }

  // The indices of the devices whose backend state a watch reported.
  std::vector<std::size_t> watched(const std::vector<std::string>& paths) {
    std::vector<std::size_t> out;
    for (const auto& p : paths)
      for (std::size_t i = 0; i < devs.size(); ++i)
        if (devs[i]->fe && p == devs[i]->fe->backend_state_path()) out.push_back(i);
    return out;
  }

  void hold_devices() {
    std::optional<clock::time_point> deadline;
    if (*o.hold > 0)
      deadline = clock::now() + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(*o.hold));
    xs.take_watch_paths();
    for (;;) {
      auto timeout = std::chrono::milliseconds(500);
      if (deadline) {
        const auto now = clock::now();
        if (now >= *deadline) return;
        timeout = std::min(timeout, std::chrono::ceil<std::chrono::milliseconds>(*deadline - now));
      }
      const wait_result r = plat->wait(timeout);
      if (r.signal) {
        if (deadline) mark_interrupted();
        return;
      }
      for (std::size_t i : watched(xs.take_watch_paths()))
        if (devs[i]->fe->backend_left()) {
          s.end = "backend_left";
          s.error = "device " + std::to_string(devs[i]->o.devid) + ": the backend left";
          return;
        }
    }
  }

  // One step of the close for every device still in it: write `state`,
  // then wait until each backend satisfies `done` (within `limit`, and the
  // stop bound after a signal). Devices that do not get there drop out.
  void close_step(unsigned state, bool (*done)(std::optional<unsigned>), std::chrono::milliseconds limit,
                  const char* what) {
    std::string err;
    std::vector<std::size_t> waiting;
    for (std::size_t i = 0; i < devs.size(); ++i) {
      auto& d = *devs[i];
      if (!d.connected) continue;
      if (!d.fe->write_state(state, err)) {
        d.followed = false;
        if (!interrupted()) s.stats.protocol_error("closing device " + std::to_string(d.o.devid) + ": " + err);
      }
      if (d.followed) waiting.push_back(i);
    }
    // Look at each once, then at those a watch names (and all once a second:
    // a watch event may have been drained by an earlier wait).
    std::vector<std::size_t> look = waiting;
    auto deadline = clock::now() + limit;
    auto next_full = clock::now() + std::chrono::seconds(1);
    for (;;) {
      for (std::size_t i : look)
        if (std::find(waiting.begin(), waiting.end(), i) != waiting.end() && done(devs[i]->fe->backend_state()))
          waiting.erase(std::find(waiting.begin(), waiting.end(), i));
      if (waiting.empty()) return;
      if (auto at = plat->stop_requested()) deadline = std::min(deadline, *at + stop_bound::close);
      const auto now = clock::now();
      if (now >= deadline) break;
      plat->wait(
          std::min(std::chrono::ceil<std::chrono::milliseconds>(deadline - now), std::chrono::milliseconds(100)));
      look = watched(xs.take_watch_paths());
      if (clock::now() >= next_full) {
        look = waiting;
        next_full = clock::now() + std::chrono::seconds(1);
      }
    }
    for (std::size_t i : waiting) devs[i]->followed = false;
    const std::string msg = std::to_string(waiting.size()) + " of the devices' backends did not " + what +
                            (interrupted() ? " before the stop bound" : " in time") + " (first: device " +
                            std::to_string(devs[waiting.front()]->o.devid) + ")";
    if (interrupted()) {
      if (s.error.empty()) s.error = "closing: " + msg;
    } else {
      s.stats.protocol_error("closing: " + msg);
    }
  }

  void close_devices(std::chrono::milliseconds limit) {
    for (auto& d : devs) d->followed = d->connected;
    xs.take_watch_paths();
    close_step(
        xenbus::closing,
        [](std::optional<unsigned> st) { return !st || *st == xenbus::closing || *st == xenbus::closed; }, limit,
        "follow to Closing");
    close_step(
        xenbus::closed, [](std::optional<unsigned> st) { return !st || *st == xenbus::closed; }, limit, "reach Closed");
    // Only now have the backends let go of the rings and ports.
    for (auto& d : devs) d->c.queues.clear();
  }

  // ------------------------------------------------ one device
  void run_cycles() {
    std::string err;
    if (!open_platform()) return;
    fe = std::make_unique<frontend>(xs, *plat, o);
    std::vector<platform*> qps;
    for (auto& p : queue_plats) qps.push_back(p.get());
    fe->set_queue_platforms(std::move(qps));
    if (!fe->discover(err)) return (void)setup_failed(err);
    s.frontend = fe->frontend_dir();
    s.backend = fe->backend_dir();
    s.backend_id = fe->backend_id();

    for (unsigned cycle = 0; cycle <= o.reconnect; ++cycle) {
      s.cycles = cycle + 1;
      connection c;
      std::vector<std::string> perrs;
      log("connecting (cycle " + std::to_string(cycle + 1) + ")");
      if (!fe->connect(c, err, perrs)) {
        for (const auto& m : perrs) s.stats.protocol_error(m);
        if (cycle == 0) {
          setup_failed(err);
        } else {
          // Reconnecting is the backend's job to get right.
          s.end = "reconnect_failed";
          s.error = err;
        }
        if (interrupted()) {
          s.end = "interrupted";
          s.stopped = true;
        }
        // The backend did not get there within --timeout (or we were
        // stopped): a short, polite close, not another full timeout.
        std::string ignored;
        fe->close(c, ignored, std::min(o.timeout, close_grace));
        return;
      }
      for (const auto& m : perrs) s.stats.protocol_error(m);
      s.features = c.features;
      s.neg = c.neg;
      s.disk = c.disk;
      s.ring_entries = c.queues.empty() ? 0 : c.queues[0]->ring.size();
      log("connected: " + std::to_string(c.disk.sectors) + " sectors, " + std::to_string(c.neg.queues) +
          " queue(s), ring order " + std::to_string(c.neg.ring_page_order));

      bool go_on = check_workload(c.disk);
      if (go_on && cycle == 0 && (o.script || o.raw_file)) go_on = run_script(c);
      if (go_on && o.workload && !interrupted()) go_on = run_workload(c, cycle == 0);
      if (interrupted()) mark_interrupted();
      const bool last = !go_on || cycle == o.reconnect || interrupted();
      if (last && o.hold && !interrupted() && go_on) hold();

      if (last && o.no_close) return;
      // A backend that stopped answering requests gets a short close.
      close(c, s.end == "stalled" ? std::min(o.timeout, close_grace) : o.timeout);
      count_held_after_close();
      engines.clear();
      script.reset();
      if (last || interrupted()) return;
      ++s.reconnects;
    }
  }
};

}  // namespace

int run_blkfront(const options& o) {
  program p(o);
  return p.main();
}

}  // namespace xbd::sim::blkfront
