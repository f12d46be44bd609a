#include <doctest/doctest.h>

#include <cstring>
#include <vector>

#include "blkfront/verify.hpp"

using namespace xbd::sim::blkfront;

namespace {
constexpr std::uint64_t run = 0x1234567890abcdefull;

std::vector<std::byte> stamped(std::size_t size, std::uint64_t lba, std::uint64_t gen, std::uint64_t run_id = run) {
  std::vector<std::byte> b(size);
  write_stamped_block(b, stamp{lba, gen, run_id});
  return b;
}

expectation written(std::uint32_t gen) { return expectation{gen, {}}; }
const expectation never{};
}  // namespace

TEST_CASE("verify block size is the largest power of two up to 4096 dividing bs") {
  CHECK(verify_block_size(512) == 512);
  CHECK(verify_block_size(1024) == 1024);
  CHECK(verify_block_size(4096) == 4096);
  CHECK(verify_block_size(65536) == 4096);
  CHECK(verify_block_size(1536) == 512);
  CHECK(verify_block_size(6144) == 2048);
}

TEST_CASE("a stamped block carries magic, LBA, generation, run id, and checks out") {
  auto b = stamped(4096, 800, 3);
  std::uint64_t v;
  std::memcpy(&v, b.data(), 8);
  CHECK(v == stamp_magic);
  std::memcpy(&v, b.data() + 8, 8);
  CHECK(v == 800);
  std::memcpy(&v, b.data() + 16, 8);
  CHECK(v == 3);
  std::memcpy(&v, b.data() + 24, 8);
  CHECK(v == run);
  CHECK(check_block(b, 800, run, written(3), unwritten_policy::any).v == verdict::ok);
}

TEST_CASE("the payload depends on LBA and generation, so equal headers cannot hide a swap") {
  auto a = stamped(512, 8, 1), b = stamped(512, 8, 2), c = stamped(512, 16, 1);
  CHECK(std::memcmp(a.data() + 40, b.data() + 40, 472) != 0);
  CHECK(std::memcmp(a.data() + 40, c.data() + 40, 472) != 0);
}

TEST_CASE("an older generation is stale") {
  auto b = stamped(4096, 8, 2);
  const auto r = check_block(b, 8, run, written(3), unwritten_policy::any);
  CHECK(r.v == verdict::stale);
  CHECK(r.found_generation == 2);
}

TEST_CASE("a generation never acknowledged is reported as future") {
  auto b = stamped(4096, 8, 5);
  CHECK(check_block(b, 8, run, written(3), unwritten_policy::any).v == verdict::future);
  // ...also on a block this run never wrote.
  CHECK(check_block(b, 8, run, never, unwritten_policy::any).v == verdict::future);
}

TEST_CASE("a valid block of another LBA is a misdirected I/O") {
  auto b = stamped(4096, 16, 3);
  const auto r = check_block(b, 8, run, written(3), unwritten_policy::any);
  CHECK(r.v == verdict::wrong_lba);
  CHECK(r.found_lba == 16);
}

TEST_CASE("changing any single byte of a block is detected") {
  const auto good = stamped(512, 40, 7);
  for (std::size_t i = 0; i < good.size(); ++i) {
    auto b = good;
    b[i] ^= std::byte{0x01};
    const auto r = check_block(b, 40, run, written(7), unwritten_policy::any);
    CHECK_MESSAGE(r.v != verdict::ok, "byte " << i);
  }
}

TEST_CASE("corruption reports where the block goes wrong") {
  auto b = stamped(4096, 40, 7);
  b[1000] ^= std::byte{0x80};
  const auto r = check_block(b, 40, run, written(7), unwritten_policy::any);
  CHECK(r.v == verdict::corrupt);
  CHECK(r.first_bad_offset == 1000);
}

TEST_CASE("the checksum survives the same bit flipped in two words") {
  auto b = stamped(512, 40, 7);
  b[47] ^= std::byte{0x80};  // top bit of word 5
  b[55] ^= std::byte{0x80};  // top bit of word 6
  CHECK(check_block(b, 40, run, written(7), unwritten_policy::any).v == verdict::corrupt);
  auto c = stamped(512, 40, 7);
  c[40] ^= std::byte{0x01};
  c[48] ^= std::byte{0x01};
  CHECK(check_block(c, 40, run, written(7), unwritten_policy::any).v == verdict::corrupt);
}

TEST_CASE("a torn block (half of one generation, half of the next) is corrupt") {
  auto old_gen = stamped(4096, 8, 1), new_gen = stamped(4096, 8, 2);
  std::memcpy(new_gen.data() + 2048, old_gen.data() + 2048, 2048);
  CHECK(check_block(new_gen, 8, run, written(2), unwritten_policy::any).v == verdict::corrupt);
}

TEST_CASE("poisoned data means the backend transferred nothing") {
  std::vector<std::byte> b(4096);
  poison(b);
  CHECK(check_block(b, 8, run, written(1), unwritten_policy::any).v == verdict::untouched);
  CHECK(check_block(b, 8, run, never, unwritten_policy::any).v == verdict::untouched);
}

TEST_CASE("no stamp where we wrote one is missing data") {
  std::vector<std::byte> zero(4096);
  CHECK(check_block(zero, 8, run, written(1), unwritten_policy::any).v == verdict::missing);
}

TEST_CASE("never-written blocks follow the unwritten policy") {
  std::vector<std::byte> zero(4096), junk(4096, std::byte{0x33});
  const auto other_run = stamped(4096, 8, 9, 0x42);
  const auto ours = stamped(4096, 8, 1);

  CHECK(check_block(zero, 8, run, never, unwritten_policy::any).v == verdict::ok);
  CHECK(check_block(junk, 8, run, never, unwritten_policy::any).v == verdict::ok);
  CHECK(check_block(other_run, 8, run, never, unwritten_policy::any).v == verdict::ok);

  CHECK(check_block(zero, 8, run, never, unwritten_policy::zero).v == verdict::ok);
  CHECK(check_block(junk, 8, run, never, unwritten_policy::zero).v == verdict::unwritten_mismatch);
  CHECK(check_block(other_run, 8, run, never, unwritten_policy::zero).v == verdict::unwritten_mismatch);

  CHECK(check_block(zero, 8, run, never, unwritten_policy::stamped).v == verdict::unwritten_mismatch);
  CHECK(check_block(other_run, 8, run, never, unwritten_policy::stamped).v == verdict::ok);

  // A block claiming to be ours although this run never wrote it.
  CHECK(check_block(ours, 8, run, never, unwritten_policy::any).v == verdict::future);
  // Stamps are still checked where the content is otherwise free.
  auto bad = other_run;
  bad[200] ^= std::byte{1};
  CHECK(check_block(bad, 8, run, never, unwritten_policy::any).v == verdict::corrupt);
  CHECK(check_block(stamped(4096, 16, 1, 0x42), 8, run, never, unwritten_policy::any).v == verdict::wrong_lba);
}

TEST_CASE("another run's data where this run wrote is stale") {
  const auto other_run = stamped(4096, 8, 3, 0x42);
  CHECK(check_block(other_run, 8, run, written(3), unwritten_policy::any).v == verdict::stale);
}

TEST_CASE("generation tracker: each write of a block carries the next generation") {
  generation_tracker t(4);
  CHECK(t.expect(2).committed == 0);
  CHECK(t.next_generation(2) == 1);
  t.write_completed(2, 1, true);
  CHECK(t.expect(2).committed == 1);
  CHECK(t.next_generation(2) == 2);
  t.write_completed(2, 2, true);
  CHECK(t.expect(2).committed == 2);
  CHECK(t.expect(1).committed == 0);  // others untouched
}

TEST_CASE("generation tracker: after a failed write the block may hold the old or the new data") {
  generation_tracker t(2);
  t.write_completed(0, 1, true);
  const std::uint32_t g2 = t.next_generation(0);
  t.write_completed(0, g2, false);
  const std::uint32_t g3 = t.next_generation(0);
  CHECK(g3 == 3);  // never reuse a generation that may be on disk
  t.write_completed(0, g3, false);

  const auto e = t.expect(0);
  CHECK(e.committed == 1);
  for (std::uint32_t g : {1u, 2u, 3u})
    CHECK(check_block(stamped(512, 0, g), 0, run, e, unwritten_policy::any).v == verdict::ok);
  CHECK(check_block(stamped(512, 0, 4), 0, run, e, unwritten_policy::any).v == verdict::future);

  // A successful write settles it.
  t.write_completed(0, t.next_generation(0), true);
  CHECK(t.expect(0).committed == 4);
  CHECK(t.expect(0).maybe.empty());
  CHECK(check_block(stamped(512, 0, 3), 0, run, t.expect(0), unwritten_policy::any).v == verdict::stale);
}

TEST_CASE("generation tracker: a failed first write leaves the block possibly unwritten") {
  generation_tracker t(1);
  t.write_completed(0, t.next_generation(0), false);
  std::vector<std::byte> zero(512);
  CHECK(check_block(zero, 0, run, t.expect(0), unwritten_policy::zero).v == verdict::ok);
  CHECK(check_block(stamped(512, 0, 1), 0, run, t.expect(0), unwritten_policy::zero).v == verdict::ok);
}

// ---------------------------------------------------------------------------
// Discards.

namespace {
expectation discarded_after(std::uint32_t gen) {
  expectation e;
  e.committed = gen;
  e.discarded = true;
  return e;
}
}  // namespace

TEST_CASE("a discarded block must read as zeroes under the zero policy") {
  const std::vector<std::byte> zero(4096);
  CHECK(check_block(zero, 8, run, discarded_after(3), unwritten_policy::any, discard_policy::zero).v == verdict::ok);
  // What was there before the discard is exactly what a backend that only
  // pretended to discard would return.
  auto old = stamped(4096, 8, 3);
  auto r = check_block(old, 8, run, discarded_after(3), unwritten_policy::any, discard_policy::zero);
  CHECK(r.v == verdict::not_discarded);
  CHECK(r.found_generation == 3);
  CHECK(r.found_lba == 8);
  std::vector<std::byte> partly(4096);
  partly[4095] = std::byte{1};
  CHECK(check_block(partly, 8, run, discarded_after(3), unwritten_policy::any, discard_policy::zero).v ==
        verdict::not_discarded);
  // A never-written block that was discarded is no different.
  CHECK(check_block(zero, 8, run, discarded_after(0), unwritten_policy::stamped, discard_policy::zero).v ==
        verdict::ok);
}

TEST_CASE("under the unknown policy a discarded block may hold zeroes or its own older data, nothing else") {
  const auto unknown = discard_policy::unknown;
  const std::vector<std::byte> zero(4096);
  CHECK(check_block(zero, 8, run, discarded_after(3), unwritten_policy::any, unknown).v == verdict::ok);
  CHECK(check_block(stamped(4096, 8, 3), 8, run, discarded_after(3), unwritten_policy::any, unknown).v == verdict::ok);
  CHECK(check_block(stamped(4096, 8, 1), 8, run, discarded_after(3), unwritten_policy::any, unknown).v == verdict::ok);
  CHECK(check_block(stamped(4096, 8, 4), 8, run, discarded_after(3), unwritten_policy::any, unknown).v ==
        verdict::future);
  CHECK(check_block(stamped(4096, 16, 3), 8, run, discarded_after(3), unwritten_policy::any, unknown).v ==
        verdict::wrong_lba);
  auto torn = stamped(4096, 8, 3);
  torn[2000] ^= std::byte{4};
  CHECK(check_block(torn, 8, run, discarded_after(3), unwritten_policy::any, unknown).v == verdict::corrupt);
  std::vector<std::byte> junk(4096, std::byte{0x5a});
  CHECK(check_block(junk, 8, run, discarded_after(3), unwritten_policy::any, unknown).v == verdict::missing);
}

TEST_CASE("after a failed discard a block may read as discarded or as before") {
  expectation e = written(3);
  e.maybe_discarded = true;
  const std::vector<std::byte> zero(4096);
  CHECK(check_block(zero, 8, run, e, unwritten_policy::any, discard_policy::zero).v == verdict::ok);
  CHECK(check_block(stamped(4096, 8, 3), 8, run, e, unwritten_policy::any, discard_policy::zero).v == verdict::ok);
  CHECK(check_block(stamped(4096, 8, 2), 8, run, e, unwritten_policy::any, discard_policy::zero).v == verdict::stale);
  CHECK(check_block(stamped(4096, 8, 2), 8, run, e, unwritten_policy::any, discard_policy::unknown).v == verdict::ok);
}

TEST_CASE("generation tracker: a discard, then a write, then exact expectations again") {
  generation_tracker t(4);
  t.write_completed(1, t.next_generation(1), true);
  t.discard_completed(1, true);
  expectation e = t.expect(1);
  CHECK(e.discarded);
  CHECK_FALSE(e.maybe_discarded);
  CHECK(e.committed == 1);
  const std::uint32_t g = t.next_generation(1);
  CHECK(g == 2);
  t.write_completed(1, g, true);
  e = t.expect(1);
  CHECK_FALSE(e.discarded);
  CHECK(e.committed == 2);
  // Other blocks know nothing of it.
  CHECK_FALSE(t.expect(0).discarded);
}

TEST_CASE("generation tracker: failed writes before a discard are folded, never reused") {
  generation_tracker t(2);
  t.write_completed(0, 1, true);
  t.write_completed(0, 2, false);
  t.write_completed(0, 3, false);
  t.discard_completed(0, true);
  const expectation e = t.expect(0);
  CHECK(e.discarded);
  CHECK(e.maybe.empty());
  CHECK(e.committed == 3);
  CHECK(t.next_generation(0) == 4);
}

TEST_CASE("generation tracker: a failed discard leaves the block maybe discarded until a write") {
  generation_tracker t(2);
  t.write_completed(0, 1, true);
  t.discard_completed(0, false);
  expectation e = t.expect(0);
  CHECK_FALSE(e.discarded);
  CHECK(e.maybe_discarded);
  CHECK(e.committed == 1);
  t.discard_completed(0, true);
  e = t.expect(0);
  CHECK(e.discarded);
  t.discard_completed(0, false);
  e = t.expect(0);
  CHECK(e.discarded);
  CHECK(e.maybe_discarded);
  t.write_completed(0, t.next_generation(0), true);
  e = t.expect(0);
  CHECK_FALSE(e.discarded);
  CHECK_FALSE(e.maybe_discarded);
}

TEST_CASE("a write that fails after a discard may have landed: zeroes or its data, not the older data") {
  generation_tracker t(1);
  t.write_completed(0, 1, true);
  t.discard_completed(0, true);
  const std::uint32_t failed = t.next_generation(0);
  CHECK(failed == 2);
  t.write_completed(0, failed, false);
  const expectation e = t.expect(0);
  CHECK(e.discarded);
  REQUIRE(e.maybe.size() == 1);
  const std::vector<std::byte> zero(4096);
  CHECK(check_block(zero, 0, run, e, unwritten_policy::any, discard_policy::zero).v == verdict::ok);
  CHECK(check_block(stamped(4096, 0, 2), 0, run, e, unwritten_policy::any, discard_policy::zero).v == verdict::ok);
  CHECK(check_block(stamped(4096, 0, 1), 0, run, e, unwritten_policy::any, discard_policy::zero).v ==
        verdict::not_discarded);
  CHECK(check_block(stamped(4096, 0, 1), 0, run, e, unwritten_policy::any, discard_policy::unknown).v == verdict::ok);
  CHECK(check_block(stamped(4096, 0, 3), 0, run, e, unwritten_policy::any, discard_policy::zero).v == verdict::future);
}
