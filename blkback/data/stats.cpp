#include "blkback/data/stats.hpp"

#include <algorithm>
#include <bit>
#include <cmath>

namespace xbd::blkback {

const char* to_string(timed_op op) {
  switch (op) {
    case timed_op::read:
      return "read";
    case timed_op::write:
      return "write";
    case timed_op::flush:
      return "flush";
    case timed_op::discard:
      return "discard";
  }
  return "?";
}

namespace latency_buckets {

// Below per_octave nanoseconds one bucket per value; above, the exponent
// picks the octave and the next sub_bits bits the bucket within it.
unsigned of(std::uint64_t ns) {
  if (ns < per_octave) return static_cast<unsigned>(ns);
  const unsigned e = 63u - static_cast<unsigned>(std::countl_zero(ns));
  if (e > max_exponent) return count - 1;
  const auto sub = static_cast<unsigned>((ns >> (e - sub_bits)) & (per_octave - 1));
  return per_octave * (e - sub_bits + 1) + sub;
}

std::uint64_t low(unsigned b) {
  if (b < per_octave) return b;
  const unsigned e = b / per_octave + sub_bits - 1;
  return (std::uint64_t{per_octave} + b % per_octave) << (e - sub_bits);
}

std::uint64_t high(unsigned b) {
  if (b + 1 >= count) return ~std::uint64_t{0};
  return low(b + 1);
}

}  // namespace latency_buckets

latency_summary& latency_summary::operator+=(const latency_summary& o) {
  for (std::size_t i = 0; i < buckets.size(); ++i) buckets[i] += o.buckets[i];
  count += o.count;
  sum_ns += o.sum_ns;
  return *this;
}

std::uint64_t latency_summary::percentile_ns(double q) const {
  // The bucket counts are read one by one while the ring goes on, so
  // their sum, not `count`, is what they describe.
  std::uint64_t total = 0;
  for (auto n : buckets) total += n;
  if (total == 0) return 0;
  const auto rank = std::max<std::uint64_t>(1, static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(total))));
  std::uint64_t seen = 0;
  for (unsigned b = 0; b < buckets.size(); ++b) {
    seen += buckets[b];
    if (seen < rank) continue;
    const std::uint64_t lo = latency_buckets::low(b);
    if (b + 1 >= buckets.size()) return lo;  // the open-ended last bucket
    return lo + (latency_buckets::high(b) - lo) / 2;
  }
  return 0;
}

ring_counts& ring_counts::operator+=(const ring_counts& o) {
  rd_req += o.rd_req;
  wr_req += o.wr_req;
  f_req += o.f_req;
  ds_req += o.ds_req;
  oo_req += o.oo_req;
  rd_sect += o.rd_sect;
  wr_sect += o.wr_sect;
  rd_bytes += o.rd_bytes;
  wr_bytes += o.wr_bytes;
  err_rejected += o.err_rejected;
  err_grant += o.err_grant;
  err_io += o.err_io;
  err_unsupported += o.err_unsupported;
  err_no_memory += o.err_no_memory;
  fair_waits += o.fair_waits;
  throttled_ns += o.throttled_ns;
  limit_waits += o.limit_waits;
  limited_ns += o.limited_ns;
  idle_events += o.idle_events;
  storm_pauses += o.storm_pauses;
  yields += o.yields;
  copy_calls += o.copy_calls;
  copy_segments += o.copy_segments;
  mapped_req += o.mapped_req;
  map_calls += o.map_calls;
  persistent_hits += o.persistent_hits;
  persistent_maps += o.persistent_maps;
  persistent_drops += o.persistent_drops;
  persistent_grants += o.persistent_grants;
  poll_hits += o.poll_hits;
  poll_misses += o.poll_misses;
  poll_ns += o.poll_ns;
  in_flight += o.in_flight;
  peak_in_flight = std::max(peak_in_flight, o.peak_in_flight);
  slots += o.slots;
  cached_bytes += o.cached_bytes;
  return *this;
}

ring_stats& ring_stats::operator+=(const ring_stats& o) {
  ring_counts::operator+=(o);
  for (std::size_t i = 0; i < latency.size(); ++i) latency[i] += o.latency[i];
  return *this;
}

stats_view view(const ring_stats& s) {
  stats_view v;
  static_cast<ring_counts&>(v) = s;
  for (std::size_t i = 0; i < s.latency.size(); ++i) {
    const latency_summary& l = s.latency[i];
    v.latency[i] = {l.count, l.sum_ns, l.percentile_ns(0.5), l.percentile_ns(0.99), l.percentile_ns(0.999)};
  }
  return v;
}

ring_stats ring_stats::retired() const {
  ring_stats r = *this;
  r.in_flight = 0;
  r.slots = 0;
  r.cached_bytes = 0;
  r.persistent_grants = 0;
  return r;
}

namespace {

std::uint64_t get(const stat_counter& c) { return c.load(std::memory_order_relaxed); }

latency_summary snapshot(const latency_histogram& h) {
  latency_summary s;
  for (std::size_t i = 0; i < s.buckets.size(); ++i) s.buckets[i] = get(h.buckets[i]);
  s.count = get(h.count);
  s.sum_ns = get(h.sum_ns);
  return s;
}

}  // namespace

ring_stats snapshot(const ring_counters& c) {
  ring_stats s;
  s.rd_req = get(c.rd_req);
  s.wr_req = get(c.wr_req);
  s.f_req = get(c.f_req);
  s.ds_req = get(c.ds_req);
  s.oo_req = get(c.oo_req);
  s.rd_sect = get(c.rd_sect);
  s.wr_sect = get(c.wr_sect);
  s.rd_bytes = get(c.rd_bytes);
  s.wr_bytes = get(c.wr_bytes);
  s.err_rejected = get(c.err_rejected);
  s.err_grant = get(c.err_grant);
  s.err_io = get(c.err_io);
  s.err_unsupported = get(c.err_unsupported);
  s.err_no_memory = get(c.err_no_memory);
  s.fair_waits = get(c.fair_waits);
  s.throttled_ns = get(c.throttled_ns);
  s.limit_waits = get(c.limit_waits);
  s.limited_ns = get(c.limited_ns);
  s.idle_events = get(c.idle_events);
  s.storm_pauses = get(c.storm_pauses);
  s.yields = get(c.yields);
  s.copy_calls = get(c.copy_calls);
  s.copy_segments = get(c.copy_segments);
  s.mapped_req = get(c.mapped_req);
  s.map_calls = get(c.map_calls);
  s.persistent_hits = get(c.persistent_hits);
  s.persistent_maps = get(c.persistent_maps);
  s.persistent_drops = get(c.persistent_drops);
  s.persistent_grants = get(c.persistent_grants);
  s.poll_hits = get(c.poll_hits);
  s.poll_misses = get(c.poll_misses);
  s.poll_ns = get(c.poll_ns);
  s.in_flight = get(c.in_flight);
  s.peak_in_flight = get(c.peak_in_flight);
  s.slots = get(c.slots);
  s.cached_bytes = get(c.cached_bytes);
  for (std::size_t i = 0; i < s.latency.size(); ++i) s.latency[i] = snapshot(c.latency[i]);
  return s;
}

}  // namespace xbd::blkback
