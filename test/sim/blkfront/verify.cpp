#include "blkfront/verify.hpp"

#include <algorithm>
#include <bit>
#include <cassert>
#include <cstring>

namespace xbd::sim::blkfront {
namespace {

constexpr std::uint64_t p1 = 0x9E3779B185EBCA87ull, p2 = 0xC2B2AE3D27D4EB4Full, p3 = 0x165667B19E3779F9ull,
                        p5 = 0x27D4EB2F165667C5ull;
constexpr std::size_t checksum_offset = 32;

std::uint64_t load64(std::span<const std::byte> b, std::size_t off) {
  std::uint64_t v;
  std::memcpy(&v, b.data() + off, sizeof v);
  return v;
}

void store64(std::span<std::byte> b, std::size_t off, std::uint64_t v) { std::memcpy(b.data() + off, &v, sizeof v); }

std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::uint64_t payload_seed(const stamp& s) { return mix64(s.lba ^ mix64(s.generation ^ mix64(s.run_id))); }

// Each word depends only on its index, so any offset can be regenerated.
std::uint64_t payload_word(std::uint64_t seed, std::size_t index) {
  return mix64(seed + (index + 1) * 0x9E3779B97F4A7C15ull);
}

void fill_payload(std::span<std::byte> block, const stamp& s) {
  const std::uint64_t seed = payload_seed(s);
  for (std::size_t off = stamp_header_size; off + 8 <= block.size(); off += 8)
    store64(block, off, payload_word(seed, off / 8));
}

}  // namespace

std::uint32_t verify_block_size(std::uint32_t bs) {
  assert(bs >= 512 && bs % 512 == 0);
  return std::min<std::uint32_t>(4096, std::uint32_t{1} << std::countr_zero(bs));
}

// One lane of xxHash64's round over 8-byte words. Every step is a bijection
// of the accumulator for a fixed input word and of the word for a fixed
// accumulator, so a block that differs from the stamped one in a single
// word always fails the check; several damaged words collide with
// probability ~2^-64.
std::uint64_t block_checksum(std::span<const std::byte> block) {
  std::uint64_t acc = p5 + block.size();
  for (std::size_t off = 0; off + 8 <= block.size(); off += 8) {
    if (off == checksum_offset) continue;
    acc += load64(block, off) * p2;
    acc = std::rotl(acc, 31);
    acc *= p1;
  }
  acc ^= acc >> 33;
  acc *= p2;
  acc ^= acc >> 29;
  acc *= p3;
  return acc ^ (acc >> 32);
}

void write_stamped_block(std::span<std::byte> block, const stamp& s) {
  assert(block.size() >= 512 && block.size() % 8 == 0);
  store64(block, 0, stamp_magic);
  store64(block, 8, s.lba);
  store64(block, 16, s.generation);
  store64(block, 24, s.run_id);
  fill_payload(block, s);
  store64(block, checksum_offset, block_checksum(block));
}

void poison(std::span<std::byte> buf) { std::fill(buf.begin(), buf.end(), poison_byte); }

std::string_view to_string(verdict v) {
  switch (v) {
    case verdict::ok:
      return "ok";
    case verdict::untouched:
      return "untouched";
    case verdict::missing:
      return "missing";
    case verdict::corrupt:
      return "corrupt";
    case verdict::wrong_lba:
      return "wrong_lba";
    case verdict::stale:
      return "stale";
    case verdict::future:
      return "future";
    case verdict::unwritten_mismatch:
      return "unwritten_mismatch";
    case verdict::not_discarded:
      return "not_discarded";
  }
  return "?";
}

check_result check_block(std::span<const std::byte> block, std::uint64_t lba, std::uint64_t run_id,
                         const expectation& e, unwritten_policy policy, discard_policy discards) {
  check_result r;
  const bool may_be_unwritten = e.committed == 0;
  const bool after_discard = e.discarded || e.maybe_discarded;
  // An acknowledged zeroing discard replaces the committed data: from then
  // on only zeroes, or writes that failed since, may be there.
  const bool zero_base = e.discarded && discards == discard_policy::zero;
  // After a discard that guarantees nothing, older data of the block is as
  // good as zeroes; newer data than we wrote, or another block's, is not.
  const bool older_ok = after_discard && discards == discard_policy::unknown;
  auto all_zero = [&] {
    return std::all_of(block.begin(), block.end(), [](std::byte b) { return b == std::byte{0}; });
  };

  if (std::all_of(block.begin(), block.begin() + 8, [](std::byte b) { return b == poison_byte; })) {
    r.v = verdict::untouched;
    return r;
  }
  if (after_discard && all_zero()) return r;
  if (load64(block, 0) != stamp_magic) {
    if (zero_base) {
      r.v = verdict::not_discarded;
      return r;
    }
    if (!may_be_unwritten) {
      r.v = verdict::missing;
      return r;
    }
    if ((policy == unwritten_policy::zero && !all_zero()) || policy == unwritten_policy::stamped)
      r.v = verdict::unwritten_mismatch;
    return r;
  }

  r.found_lba = load64(block, 8);
  r.found_generation = load64(block, 16);
  r.found_run_id = load64(block, 24);
  if (block_checksum(block) != load64(block, checksum_offset)) {
    r.v = verdict::corrupt;
    // Regenerate what the header claims and report where the bytes part.
    std::vector<std::byte> want(block.size());
    write_stamped_block(want, stamp{r.found_lba, r.found_generation, r.found_run_id});
    for (std::size_t i = 0; i < block.size(); ++i) {
      if (i >= checksum_offset && i < checksum_offset + 8) continue;
      if (want[i] != block[i]) {
        r.first_bad_offset = i;
        break;
      }
    }
    return r;
  }
  if (r.found_lba != lba) {
    r.v = verdict::wrong_lba;
    return r;
  }
  if (r.found_run_id != run_id) {
    // Another run's data is what a never-written block legitimately holds
    // on a reused image; where we wrote, it means our write was lost.
    if (zero_base)
      r.v = verdict::not_discarded;
    else if (!may_be_unwritten)
      r.v = verdict::stale;
    else if (policy == unwritten_policy::zero)
      r.v = verdict::unwritten_mismatch;
    return r;
  }
  const auto g = r.found_generation;
  if (std::find(e.maybe.begin(), e.maybe.end(), g) != e.maybe.end()) return r;
  if (zero_base && g <= e.committed) {
    // What the block held before the discard: the discard did not happen.
    r.v = verdict::not_discarded;
    return r;
  }
  if (e.committed != 0 && g == e.committed) return r;
  if (g < e.committed && older_ok) return r;
  r.v = g < e.committed ? verdict::stale : verdict::future;
  return r;
}

generation_tracker::generation_tracker(std::uint64_t blocks) : committed_(blocks, 0) {}

std::uint32_t generation_tracker::next_generation(std::uint64_t block) const {
  std::lock_guard lk(mu_);
  std::uint32_t g = committed_.at(block);
  if (auto it = maybe_.find(block); it != maybe_.end() && !it->second.empty()) g = std::max(g, it->second.back());
  return g + 1;
}

void generation_tracker::write_completed(std::uint64_t block, std::uint32_t generation, bool ok) {
  std::lock_guard lk(mu_);
  if (ok) {
    committed_.at(block) = generation;
    maybe_.erase(block);
    discards_.erase(block);
  } else {
    maybe_[block].push_back(generation);
  }
}

void generation_tracker::discard_completed(std::uint64_t block, bool ok) {
  std::lock_guard lk(mu_);
  if (!ok) {
    discards_[block] |= maybe_discarded_bit;
    return;
  }
  // The data of failed writes is gone with the rest; their generations are
  // folded into `committed` so that no later write reuses one that a
  // discard without a zeroing guarantee might leave readable.
  std::uint32_t& c = committed_.at(block);
  if (auto it = maybe_.find(block); it != maybe_.end()) {
    for (std::uint32_t g : it->second) c = std::max(c, g);
    maybe_.erase(it);
  }
  discards_[block] = discarded_bit;
}

expectation generation_tracker::expect(std::uint64_t block) const {
  std::lock_guard lk(mu_);
  expectation e;
  e.committed = committed_.at(block);
  if (auto it = maybe_.find(block); it != maybe_.end()) e.maybe = it->second;
  if (auto it = discards_.find(block); it != discards_.end()) {
    e.discarded = it->second & discarded_bit;
    e.maybe_discarded = it->second & maybe_discarded_bit;
  }
  return e;
}

}  // namespace xbd::sim::blkfront
