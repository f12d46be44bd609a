// Latency recording with bounded memory: a log-linear histogram (64
// sub-buckets per power of two, so any percentile is within 1/64 of the true
// value) plus exact count, min, max and sum.
#pragma once

#include <array>
#include <cstdint>

namespace xbd::sim::blkfront {

class latency_histogram {
 public:
  void record(std::uint64_t ns);
  void merge(const latency_histogram& other);

  std::uint64_t count() const { return count_; }
  std::uint64_t min_ns() const { return count_ ? min_ : 0; }
  std::uint64_t max_ns() const { return max_; }
  double mean_ns() const { return count_ ? static_cast<double>(sum_) / static_cast<double>(count_) : 0.0; }
  // The value below which `pct` percent of the samples fall (nearest rank),
  // reported as the midpoint of its bucket and clamped to [min, max].
  std::uint64_t percentile_ns(double pct) const;

  static std::size_t bucket_of(std::uint64_t ns);
  static std::uint64_t bucket_low(std::size_t bucket);
  static std::uint64_t bucket_width(std::size_t bucket);

 private:
  static constexpr unsigned sub_bits = 6;
  static constexpr std::size_t linear = std::size_t{2} << sub_bits;  // exact below 128
  static constexpr std::size_t buckets = linear + (64 - sub_bits - 1) * (std::size_t{1} << sub_bits);

  std::array<std::uint64_t, buckets> counts_{};
  std::uint64_t count_ = 0;
  std::uint64_t min_ = ~std::uint64_t{0};
  std::uint64_t max_ = 0;
  unsigned __int128 sum_ = 0;
};

}  // namespace xbd::sim::blkfront
