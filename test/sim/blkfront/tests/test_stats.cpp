#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "blkfront/stats.hpp"

using namespace xbd::sim::blkfront;

TEST_CASE("histogram buckets tile the whole range without gaps or overlaps") {
  std::uint64_t expect_low = 0;
  for (std::size_t b = 0; b < 128 + 57 * 64; ++b) {
    CHECK(latency_histogram::bucket_low(b) == expect_low);
    CHECK(latency_histogram::bucket_of(expect_low) == b);
    const std::uint64_t w = latency_histogram::bucket_width(b);
    CHECK(latency_histogram::bucket_of(expect_low + w - 1) == b);
    expect_low += w;
    if (expect_low == 0) break;  // wrapped past 2^64: the last bucket
  }
  CHECK(latency_histogram::bucket_of(~0ull) == 128 + 57 * 64 - 1);
}

TEST_CASE("percentiles are within 1/64 of the exact nearest-rank value") {
  std::mt19937_64 rng(3);
  std::lognormal_distribution<double> dist(11.0, 1.5);  // ~60 us median, long tail
  std::vector<std::uint64_t> v;
  latency_histogram h;
  for (int i = 0; i < 100000; ++i) {
    const auto ns = static_cast<std::uint64_t>(dist(rng));
    v.push_back(ns);
    h.record(ns);
  }
  std::sort(v.begin(), v.end());
  for (double p : {1.0, 50.0, 90.0, 99.0, 99.9, 100.0}) {
    const auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
    const double exact = static_cast<double>(v[rank - 1]);
    const double got = static_cast<double>(h.percentile_ns(p));
    CHECK_MESSAGE(std::abs(got - exact) <= exact / 64.0 + 1, "p" << p);
  }
  CHECK(h.count() == 100000);
  CHECK(h.min_ns() == v.front());
  CHECK(h.max_ns() == v.back());
}

TEST_CASE("small values are exact, and merge adds up") {
  latency_histogram a, b;
  for (std::uint64_t i = 1; i <= 100; ++i) a.record(i);
  CHECK(a.percentile_ns(50) == 50);
  CHECK(a.percentile_ns(99) == 99);
  CHECK(a.mean_ns() == doctest::Approx(50.5));
  b.record(1000);
  a.merge(b);
  CHECK(a.count() == 101);
  CHECK(a.max_ns() == 1000);
  CHECK(a.percentile_ns(100) == 1000);
  latency_histogram empty;
  CHECK(empty.percentile_ns(50) == 0);
  CHECK(empty.min_ns() == 0);
}
