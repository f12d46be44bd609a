// Live statistics of one ring: what the control socket, xen-blkbackctl and
// xentop (through xen-blkbackd-dm) show, and what the disconnect line sums.
//
// The names of Linux's blkback (sysfs statistics/) are kept with their
// meaning there, so that tools written for one read the other alike:
//  - rd_req, wr_req: BLKIF_OP_READ, BLKIF_OP_WRITE requests taken (counted
//    once validated, before any I/O, as Linux counts them at dispatch);
//  - f_req: BLKIF_OP_FLUSH_DISKCACHE and BLKIF_OP_WRITE_BARRIER;
//  - ds_req: BLKIF_OP_DISCARD;
//  - rd_sect, wr_sect: their 512-byte sectors (a flush's data counts in
//    wr_sect, as in Linux);
//  - oo_req: "out of requests": times the ring held requests back because
//    no buffer memory could be had ([io] buffer-memory).
// Beside them: bytes that reached the backing store, errors by kind, the
// requests in flight, the time the ring held requests back, buffer use,
// and a latency histogram per operation.
//
// Cheap enough to be always on (docs/performance.md): every counter is
// written by the ring's own thread only, as a relaxed load and store (no
// locked instruction, no fence), and read by the control thread whenever
// it likes; the histograms are fixed arrays; nothing allocates per
// request. A reader may see one counter a request ahead of another; each
// counter on its own never goes back.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace xbd::blkback {

// What a latency is kept for: answered, validated requests by operation
// (a barrier is a flush).
enum class timed_op : std::uint8_t { read, write, flush, discard };
inline constexpr std::size_t timed_ops = 4;
const char* to_string(timed_op op);

// Log-linear buckets of nanoseconds: eight per power of two, so a bucket
// is at most 12.5 % of its values wide and a percentile read from its
// middle is within about 6 % of the truth. Values of 2^37 ns (137 s) and
// more share the last bucket.
namespace latency_buckets {
inline constexpr unsigned sub_bits = 3;
inline constexpr unsigned per_octave = 1u << sub_bits;
inline constexpr unsigned max_exponent = 36;
inline constexpr unsigned count = per_octave * (max_exponent - sub_bits + 2);

unsigned of(std::uint64_t ns);
// The bucket holds [low(b), high(b)).
std::uint64_t low(unsigned b);
std::uint64_t high(unsigned b);
}  // namespace latency_buckets

// A single-writer counter: a plain load and store, which is all one
// writer needs and costs what a non-atomic increment costs.
using stat_counter = std::atomic<std::uint64_t>;
inline void bump(stat_counter& c, std::uint64_t n = 1) {
  c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}
inline void set(stat_counter& c, std::uint64_t v) { c.store(v, std::memory_order_relaxed); }

struct latency_histogram {
  std::array<stat_counter, latency_buckets::count> buckets{};
  stat_counter count{0};
  stat_counter sum_ns{0};

  void record(std::uint64_t ns) {
    bump(buckets[latency_buckets::of(ns)]);
    bump(count);
    bump(sum_ns, ns);
  }
};

// A histogram's numbers at one moment, for adding up and reading.
struct latency_summary {
  std::array<std::uint64_t, latency_buckets::count> buckets{};
  std::uint64_t count = 0;
  std::uint64_t sum_ns = 0;

  latency_summary& operator+=(const latency_summary& o);
  // The value below which a fraction `q` (0..1) of the requests fell: the
  // middle of the bucket that holds it; 0 without requests.
  std::uint64_t percentile_ns(double q) const;
  std::uint64_t mean_ns() const { return count ? sum_ns / count : 0; }
};

// The live counters of one ring (see the top of this file).
struct ring_counters {
  stat_counter rd_req{0}, wr_req{0}, f_req{0}, ds_req{0}, oo_req{0};
  stat_counter rd_sect{0}, wr_sect{0};
  stat_counter rd_bytes{0}, wr_bytes{0};  // read or written by the backing store
  // Answered with an error: failed validation, a grant copy the guest got
  // wrong, the backing store's error, the store cannot do it (EOPNOTSUPP),
  // no memory for the buffer.
  stat_counter err_rejected{0}, err_grant{0}, err_io{0}, err_unsupported{0}, err_no_memory{0};
  stat_counter fair_waits{0};    // times the ring let other vbds catch up
  stat_counter throttled_ns{0};  // time it held requests back (memory, fair share)
  stat_counter limit_waits{0};   // times it held a request back for the I/O limits
  stat_counter limited_ns{0};    // time it held requests back for them
  stat_counter idle_events{0}, storm_pauses{0}, yields{0};
  // The data path (docs/architecture.md, "Moving the data"): grant copy
  // calls and the segments they carried; requests served on the guest's
  // own pages (zero-copy), their grant map calls; persistent grants found
  // mapped, mapped anew, and dropped.
  stat_counter copy_calls{0}, copy_segments{0}, mapped_req{0}, map_calls{0};
  stat_counter persistent_hits{0}, persistent_maps{0}, persistent_drops{0};
  // Adaptive polling (ring_poll.hpp): looks after a burst that found a
  // request, that found none, and the time they took.
  stat_counter poll_hits{0}, poll_misses{0}, poll_ns{0};
  // Gauges: what holds now.
  stat_counter in_flight{0}, peak_in_flight{0}, slots{0}, cached_bytes{0}, persistent_grants{0};
  std::array<latency_histogram, timed_ops> latency;
};

// The counters of a ring (or of a vbd, summed) at one moment.
struct ring_counts {
  std::uint64_t rd_req = 0, wr_req = 0, f_req = 0, ds_req = 0, oo_req = 0;
  std::uint64_t rd_sect = 0, wr_sect = 0;
  std::uint64_t rd_bytes = 0, wr_bytes = 0;
  std::uint64_t err_rejected = 0, err_grant = 0, err_io = 0, err_unsupported = 0, err_no_memory = 0;
  std::uint64_t fair_waits = 0, throttled_ns = 0;
  std::uint64_t limit_waits = 0, limited_ns = 0;
  std::uint64_t idle_events = 0, storm_pauses = 0, yields = 0;
  std::uint64_t poll_hits = 0, poll_misses = 0, poll_ns = 0;
  std::uint64_t copy_calls = 0, copy_segments = 0, mapped_req = 0, map_calls = 0;
  std::uint64_t persistent_hits = 0, persistent_maps = 0, persistent_drops = 0;
  std::uint64_t in_flight = 0, peak_in_flight = 0, slots = 0, cached_bytes = 0, persistent_grants = 0;

  // Counters and gauges add up; the peak is the largest.
  ring_counts& operator+=(const ring_counts& o);
  // Every request taken from the ring.
  std::uint64_t requests() const { return rd_req + wr_req + f_req + ds_req + err_rejected; }
  // Answered with an error after validation.
  std::uint64_t failed() const { return err_grant + err_io + err_unsupported + err_no_memory; }
};

// The counters and the whole histograms: what adds up across rings.
struct ring_stats : ring_counts {
  std::array<latency_summary, timed_ops> latency;

  ring_stats& operator+=(const ring_stats& o);
  // What stays of a ring that has ended: its counters, not its gauges.
  ring_stats retired() const;
};

// What is shown of a histogram: a few numbers, not its buckets.
struct latency_digest {
  std::uint64_t count = 0, sum_ns = 0, p50_ns = 0, p99_ns = 0, p999_ns = 0;
};

// What is shown of a ring or a vbd (a report holds many: kept small).
struct stats_view : ring_counts {
  std::array<latency_digest, timed_ops> latency;
};
stats_view view(const ring_stats& s);

ring_stats snapshot(const ring_counters& c);

}  // namespace xbd::blkback
