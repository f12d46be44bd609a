#include "blkfront/stats.hpp"

#include <algorithm>
#include <bit>
#include <cmath>

namespace xbd::sim::blkfront {

// Values below 128 have a bucket each; above, a value with its top bit at
// position m (m >= 7) keeps its 7 leading bits: shift = m - 6, and the bucket
// is identified by (shift, v >> shift) with v >> shift in [64, 128).
std::size_t latency_histogram::bucket_of(std::uint64_t v) {
  if (v < linear) return static_cast<std::size_t>(v);
  const unsigned msb = 63 - static_cast<unsigned>(std::countl_zero(v));
  const unsigned shift = msb - sub_bits;
  const std::uint64_t top = v >> shift;  // in [64, 128)
  return linear + (shift - 1) * (std::size_t{1} << sub_bits) +
         static_cast<std::size_t>(top - (std::uint64_t{1} << sub_bits));
}

std::uint64_t latency_histogram::bucket_low(std::size_t b) {
  if (b < linear) return b;
  const std::size_t rel = b - linear;
  const unsigned shift = static_cast<unsigned>(rel >> sub_bits) + 1;
  const std::uint64_t top = (rel & ((std::size_t{1} << sub_bits) - 1)) + (std::uint64_t{1} << sub_bits);
  return top << shift;
}

std::uint64_t latency_histogram::bucket_width(std::size_t b) {
  if (b < linear) return 1;
  return std::uint64_t{1} << ((static_cast<unsigned>((b - linear) >> sub_bits)) + 1);
}

void latency_histogram::record(std::uint64_t ns) {
  ++counts_[bucket_of(ns)];
  ++count_;
  min_ = std::min(min_, ns);
  max_ = std::max(max_, ns);
  sum_ += ns;
}

void latency_histogram::merge(const latency_histogram& o) {
  for (std::size_t i = 0; i < buckets; ++i) counts_[i] += o.counts_[i];
  count_ += o.count_;
  min_ = std::min(min_, o.min_);
  max_ = std::max(max_, o.max_);
  sum_ += o.sum_;
}

std::uint64_t latency_histogram::percentile_ns(double pct) const {
  if (count_ == 0) return 0;
  pct = std::clamp(pct, 0.0, 100.0);
  auto rank = static_cast<std::uint64_t>(std::ceil(pct / 100.0 * static_cast<double>(count_)));
  rank = std::clamp<std::uint64_t>(rank, 1, count_);
  std::uint64_t seen = 0;
  for (std::size_t b = 0; b < buckets; ++b) {
    seen += counts_[b];
    if (seen >= rank) {
      const std::uint64_t mid = bucket_low(b) + bucket_width(b) / 2;
      return std::clamp(mid, min_, max_);
    }
  }
  return max_;
}

}  // namespace xbd::sim::blkfront
