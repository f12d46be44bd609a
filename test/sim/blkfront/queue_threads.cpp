#include "blkfront/queue_threads.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <system_error>
#include <thread>

namespace xbd::sim::blkfront {

workload_spec lane_spec(const workload_spec& w, unsigned i, unsigned n) {
  workload_spec l = w;
  // Blocks and budgets are shared alike (the remainder to the first
  // lanes), so that a budget of one I/O per block (the prefill) covers
  // every lane's blocks exactly.
  auto share = [&](std::uint64_t total) { return total / n + (i < total % n ? 1 : 0); };
  const std::uint64_t blocks = w.bs ? w.region_bytes / w.bs : 0;
  const std::uint64_t first = i * (blocks / n) + std::min<std::uint64_t>(i, blocks % n);
  l.region_offset = w.region_offset + first * w.bs;
  l.region_bytes = share(blocks) * w.bs;
  // A budget of 0 means "no limit" to the workload: a lane with no share
  // gets no blocks instead.
  if (w.max_ios) l.max_ios = share(w.max_ios);
  // --bytes in whole blocks, as the one-thread workload issues it.
  if (w.max_bytes && w.bs) l.max_bytes = share((w.max_bytes + w.bs - 1) / w.bs) * w.bs;
  if ((w.max_ios && !l.max_ios) || (w.max_bytes && !l.max_bytes)) l.region_bytes = 0;
  l.seed = w.seed + i * 0x9E3779B97F4A7C15ull;
  return l;
}

run_stats merge_lanes(const std::vector<lane>& lanes) {
  run_stats all;
  double longest = 0;
  for (const auto& l : lanes) {
    all.merge(l.stats);
    longest = std::max(longest, l.stats.seconds);
  }
  all.seconds = longest;
  return all;
}

namespace {

// An eventfd, closed on destruction.
class event_fd {
 public:
  event_fd() : fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}
  ~event_fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  event_fd(const event_fd&) = delete;
  event_fd& operator=(const event_fd&) = delete;
  int fd() const { return fd_; }
  void post() const {
    const std::uint64_t one = 1;
    // Only fails when the counter is full: it is readable then anyway.
    if (::write(fd_, &one, sizeof one) < 0) return;
  }
  void drain() const {
    std::uint64_t n = 0;
    if (::read(fd_, &n, sizeof n) < 0) return;  // EAGAIN: nothing posted
  }

 private:
  int fd_;
};

// What the lanes share while they run.
struct lane_control {
  event_fd abort;              // posted once: every lane's wait wakes, and its run ends `aborted`
  event_fd done;               // posted by each lane as it ends: the calling thread looks
  std::atomic<int> cause{-1};  // the run_end that called the run off
  std::atomic<unsigned> finished{0};

  void call_off(run_end why) {
    int none = -1;
    if (cause.compare_exchange_strong(none, static_cast<int>(why))) abort.post();
  }
};

void run_lane(lane& l, lane_control& ctl, std::optional<clock::time_point> deadline) {
  workload w(l.spec);
  l.end = l.eng->run(w, deadline, l.stats);
  if (l.end == run_end::protocol_error || l.end == run_end::stalled) ctl.call_off(l.end);
  ctl.finished.fetch_add(1);
  ctl.done.post();
}

// The queues of the lanes that did not stall themselves (a stalled lane
// described its own as it gave up), so that a stall shows every queue as
// the one-thread loop's report does.
void describe_others(std::vector<lane>& lanes) {
  if (!diagnostics()) return;
  for (auto& l : lanes)
    if (l.end != run_end::stalled)
      for (const auto& line : l.eng->describe_queues())
        std::fprintf(stderr, "blkfront-sim: stalled: %s\n", line.c_str());
}

}  // namespace

run_end run_lanes(xen_platform& main, std::vector<lane>& lanes, std::optional<clock::time_point> deadline,
                  const engine::watch_fn& on_watch, std::string& err) {
  lane_control ctl;
  if (ctl.abort.fd() < 0 || ctl.done.fd() < 0) {
    err = std::string("eventfd: ") + std::strerror(errno);
    return run_end::setup_failed;
  }
  for (auto& l : lanes) l.plat->set_wake_fd(ctl.abort.fd());
  main.set_wake_fd(ctl.done.fd());
  std::vector<std::thread> threads;
  threads.reserve(lanes.size());
  try {
    for (auto& l : lanes) threads.emplace_back(run_lane, std::ref(l), std::ref(ctl), deadline);
  } catch (const std::system_error& e) {
    err = std::string("starting a queue thread: ") + e.what();
    ctl.call_off(run_end::setup_failed);
  }
  // Every lane's run is bounded by its own waits (the deadline, the
  // response timeout, the drain after a signal), and a call-off ends it at
  // its next wait: this loop ends with them.
  while (ctl.finished.load() < threads.size()) {
    const wait_result r = main.wait(std::chrono::milliseconds(100));
    if (r.wake) ctl.done.drain();
    if (r.xenstore && on_watch && on_watch()) ctl.call_off(run_end::backend_closed);
  }
  for (auto& t : threads) t.join();
  main.set_wake_fd(-1);
  for (auto& l : lanes) l.plat->set_wake_fd(-1);

  if (const int cause = ctl.cause.load(); cause >= 0) {
    const auto end = static_cast<run_end>(cause);
    if (end == run_end::stalled) describe_others(lanes);
    return end;
  }
  const bool stopped =
      std::any_of(lanes.begin(), lanes.end(), [](const lane& l) { return l.end == run_end::interrupted; });
  return stopped ? run_end::interrupted : run_end::completed;
}

}  // namespace xbd::sim::blkfront
