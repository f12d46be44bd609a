// stats_cost: what the live statistics add to one request, in nanoseconds
// of CPU, for scripts/bench's stats row.
//
// It does, with the real ring_counters, what blkback/data/queue.cpp does
// for the statistics per request: the counters of a validated read, the
// gauges published when its slot is taken and when it is released, its
// bytes, its latency into the histogram, and the clock read once per turn
// (here every 32 requests, a QD32 ring's turn). The clock read at the
// response is not counted: release() read it before the statistics
// existed. Thread CPU time over many requests, less an empty loop's.
//
//   stats_cost [REQUESTS]   prints {"ns_per_request":...,"requests":...}
#include "blkback/data/stats.hpp"

#include <time.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace {

using namespace xbd::blkback;

double cpu_ns() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) * 1e9 + static_cast<double>(t.tv_nsec);
}

// The statistics' part of `n` requests on `c`.
void requests(ring_counters& c, std::uint64_t n, bool counted) {
  auto turn = std::chrono::steady_clock::now();
  std::uint64_t in_flight = 0;
  for (std::uint64_t i = 0; i < n; ++i) {
    const auto now = turn + std::chrono::nanoseconds(20000 + (i * 7919) % 60000);  // a response's time
    if (!counted) {
      asm volatile("" : : "r"(now.time_since_epoch().count()) : "memory");
      continue;
    }
    if (i % 32 == 0) turn = std::chrono::steady_clock::now();
    bump(c.rd_req);  // count_taken
    bump(c.rd_sect, 8);
    for (int edge = 0; edge < 2; ++edge) {  // publish_gauges at acquire and release
      in_flight ^= 1;
      set(c.in_flight, in_flight);
      set(c.peak_in_flight, 32);
      set(c.slots, 32);
      set(c.cached_bytes, 32 * 4096);
    }
    bump(c.rd_bytes, 4096);
    c.latency[0].record(static_cast<std::uint64_t>(std::chrono::nanoseconds(now - turn).count()));
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::uint64_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 50000000;
  static ring_counters c;
  requests(c, n / 10, true);  // warm
  const double t0 = cpu_ns();
  requests(c, n, false);
  const double t1 = cpu_ns();
  requests(c, n, true);
  const double t2 = cpu_ns();
  const double per = ((t2 - t1) - (t1 - t0)) / static_cast<double>(n);
  std::printf("{\"ns_per_request\":%.2f,\"requests\":%llu,\"counted\":%llu}\n", per < 0 ? 0.0 : per,
              static_cast<unsigned long long>(n), static_cast<unsigned long long>(snapshot(c).rd_req));
  return 0;
}
