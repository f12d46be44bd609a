#include "blkfront/workload.hpp"

namespace xbd::sim::blkfront {

std::string_view to_string(io_kind k) {
  switch (k) {
    case io_kind::read:
      return "read";
    case io_kind::write:
      return "write";
    case io_kind::flush:
      return "flush";
    case io_kind::discard:
      return "discard";
  }
  return "?";
}

workload::workload(const workload_spec& spec)
    : spec_(spec), blocks_(spec.bs ? spec.region_bytes / spec.bs : 0), rng_(spec.seed) {}

// splitmix64: tiny, seedable, identical on every platform (unlike the
// distributions of <random>), so a seed names one exact sequence.
std::uint64_t workload::random_below(std::uint64_t n) {
  rng_ += 0x9E3779B97F4A7C15ull;
  std::uint64_t z = rng_;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<std::uint64_t>((static_cast<unsigned __int128>(z) * n) >> 64);
}

bool workload::budget_left() const {
  if (stopped_ || blocks_ == 0) return false;
  if (spec_.max_ios && issued_ios_ >= spec_.max_ios) return false;
  if (spec_.max_bytes && issued_bytes_ >= spec_.max_bytes) return false;
  return true;
}

bool workload::exhausted() const { return !budget_left() && !flush_due_; }

std::optional<planned_io> workload::next() {
  if (flush_due_ && !stopped_) {
    flush_due_ = false;
    ++flushes_in_flight_;
    return planned_io{io_kind::flush, 0, 0, 0};
  }
  if (!budget_left()) return std::nullopt;

  std::uint64_t block = 0;
  if (spec_.random) {
    bool found = false;
    for (int attempt = 0; attempt < 16 && !found; ++attempt) {
      block = random_below(blocks_);
      found = !busy_.contains(block);
    }
    if (!found) return std::nullopt;
  } else {
    block = cursor_;
    if (busy_.contains(block)) return std::nullopt;
    cursor_ = (cursor_ + 1) % blocks_;
  }

  planned_io io;
  // Each share draws only when it is a real choice, so a seed gives the same
  // sequence as before for workloads that do not discard.
  const bool is_discard = spec_.discard_pct >= 100 || (spec_.discard_pct > 0 && random_below(100) < spec_.discard_pct);
  const bool is_read =
      !is_discard && (spec_.read_pct >= 100 || (spec_.read_pct > 0 && random_below(100) < spec_.read_pct));
  io.kind = is_discard ? io_kind::discard : is_read ? io_kind::read : io_kind::write;
  io.block = block;
  io.bytes = spec_.bs;
  io.sector = (spec_.region_offset + block * spec_.bs) / 512;
  busy_.insert(block);
  ++issued_ios_;
  issued_bytes_ += spec_.bs;
  if (io.kind == io_kind::write && spec_.barrier_every && ++writes_since_barrier_ == spec_.barrier_every) {
    writes_since_barrier_ = 0;
    io.barrier = true;
  }
  if (io.kind == io_kind::write && spec_.flush_every && ++writes_since_flush_ == spec_.flush_every) {
    writes_since_flush_ = 0;
    flush_due_ = true;
  }
  return io;
}

void workload::complete(const planned_io& io) {
  if (io.kind == io_kind::flush) {
    if (flushes_in_flight_) --flushes_in_flight_;
    return;
  }
  busy_.erase(io.block);
}

}  // namespace xbd::sim::blkfront
