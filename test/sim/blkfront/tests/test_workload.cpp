#include <doctest/doctest.h>

#include <array>
#include <set>
#include <vector>

#include "blkfront/queue_threads.hpp"
#include "blkfront/workload.hpp"

using namespace xbd::sim::blkfront;

namespace {
workload_spec spec(bool random, std::uint64_t blocks, std::uint32_t bs = 4096) {
  workload_spec s;
  s.random = random;
  s.read_pct = 50;
  s.region_bytes = blocks * bs;
  s.bs = bs;
  return s;
}
}  // namespace

TEST_CASE("no two in-flight I/Os share a block (random, QD larger than the region)") {
  workload w(spec(true, 8));
  std::vector<planned_io> in_flight;
  std::set<std::uint64_t> blocks;
  for (int round = 0; round < 200; ++round) {
    while (auto io = w.next()) {
      CHECK(blocks.insert(io->block).second);
      in_flight.push_back(*io);
    }
    CHECK(in_flight.size() <= 8);
    // Complete a varying share, oldest first.
    const std::size_t n = 1 + static_cast<std::size_t>(round) % in_flight.size();
    for (std::size_t i = 0; i < n; ++i) {
      w.complete(in_flight.front());
      blocks.erase(in_flight.front().block);
      in_flight.erase(in_flight.begin());
    }
  }
}

TEST_CASE("random order reaches every block of the region") {
  workload w(spec(true, 64));
  std::set<std::uint64_t> seen;
  for (int i = 0; i < 5000; ++i) {
    auto io = w.next();
    REQUIRE(io);
    seen.insert(io->block);
    w.complete(*io);
  }
  CHECK(seen.size() == 64);
}

TEST_CASE("sequential order runs through the region and wraps to its start") {
  auto s = spec(false, 4);
  s.region_offset = 1 << 20;
  workload w(s);
  std::vector<std::uint64_t> sectors;
  for (int i = 0; i < 6; ++i) {
    auto io = w.next();
    REQUIRE(io);
    sectors.push_back(io->sector);
    w.complete(*io);
  }
  const std::uint64_t base = (1 << 20) / 512;
  CHECK(sectors == std::vector<std::uint64_t>{base, base + 8, base + 16, base + 24, base, base + 8});
}

TEST_CASE("sequential order waits while its next block is still in flight") {
  workload w(spec(false, 2));
  auto a = w.next(), b = w.next();
  REQUIRE(a);
  REQUIRE(b);
  CHECK_FALSE(w.next());  // block 0 is next and busy
  CHECK_FALSE(w.exhausted());
  w.complete(*b);
  CHECK_FALSE(w.next());  // still block 0
  w.complete(*a);
  auto c = w.next();
  REQUIRE(c);
  CHECK(c->block == 0);
}

TEST_CASE("every I/O lies inside the region, the tail shorter than bs is never touched") {
  auto s = spec(true, 0);
  s.region_offset = 4096;
  s.region_bytes = 10 * 4096 + 3000;  // ten whole blocks and a tail
  workload w(s);
  CHECK(w.blocks() == 10);
  for (int i = 0; i < 2000; ++i) {
    auto io = w.next();
    REQUIRE(io);
    CHECK(io->sector * 512 >= s.region_offset);
    CHECK(io->sector * 512 + io->bytes <= s.region_offset + 10 * 4096);
    CHECK(io->sector % 8 == 0);
    w.complete(*io);
  }
  s.random = false;
  workload seq(s);
  for (int i = 0; i < 25; ++i) {
    auto io = seq.next();
    REQUIRE(io);
    CHECK(io->sector * 512 + io->bytes <= s.region_offset + 10 * 4096);
    seq.complete(*io);
  }
}

TEST_CASE("a region smaller than one block issues nothing") {
  auto s = spec(true, 0);
  s.region_bytes = 4095;
  workload w(s);
  CHECK_FALSE(w.next());
  CHECK(w.exhausted());
}

TEST_CASE("the read percentage is honoured") {
  for (unsigned pct : {0u, 30u, 100u}) {
    auto s = spec(true, 1000);
    s.read_pct = pct;
    workload w(s);
    int reads = 0;
    for (int i = 0; i < 10000; ++i) {
      auto io = w.next();
      REQUIRE(io);
      reads += io->kind == io_kind::read;
      w.complete(*io);
    }
    CHECK(reads >= static_cast<int>(pct) * 100 - 300);
    CHECK(reads <= static_cast<int>(pct) * 100 + 300);
  }
}

TEST_CASE("a flush follows every N writes") {
  auto s = spec(false, 100);
  s.read_pct = 0;
  s.flush_every = 3;
  workload w(s);
  std::vector<io_kind> kinds;
  for (int i = 0; i < 8; ++i) {
    auto io = w.next();
    REQUIRE(io);
    kinds.push_back(io->kind);
    w.complete(*io);
  }
  using k = io_kind;
  CHECK(kinds == std::vector<io_kind>{k::write, k::write, k::write, k::flush, k::write, k::write, k::write, k::flush});
}

TEST_CASE("the budget: max_ios and max_bytes stop issuing") {
  auto s = spec(true, 100);
  s.max_ios = 5;
  workload w(s);
  int n = 0;
  while (auto io = w.next()) {
    ++n;
    w.complete(*io);
  }
  CHECK(n == 5);
  CHECK(w.exhausted());

  s.max_ios = 0;
  s.max_bytes = 3 * 4096 + 1;
  workload b(s);
  n = 0;
  while (auto io = b.next()) {
    ++n;
    b.complete(*io);
  }
  CHECK(n == 4);
}

TEST_CASE("stop() ends issuing at once") {
  workload w(spec(true, 100));
  CHECK(w.next());
  w.stop();
  CHECK_FALSE(w.next());
  CHECK(w.exhausted());
}

TEST_CASE("the same seed gives the same sequence, another seed another one") {
  auto run = [](std::uint64_t seed) {
    auto s = spec(true, 1 << 20);
    s.seed = seed;
    workload w(s);
    std::vector<std::pair<std::uint64_t, io_kind>> out;
    for (int i = 0; i < 100; ++i) {
      auto io = w.next();
      out.emplace_back(io->block, io->kind);
      w.complete(*io);
    }
    return out;
  };
  CHECK(run(7) == run(7));
  CHECK(run(7) != run(8));
}

TEST_CASE("the discard share is honoured, and the rest splits by read-pct") {
  auto s = spec(true, 1000);
  s.discard_pct = 30;
  s.read_pct = 50;
  workload w(s);
  std::array<unsigned, io_kind_count> n{};
  for (int i = 0; i < 10000; ++i) {
    auto io = w.next();
    REQUIRE(io);
    ++n[static_cast<std::size_t>(io->kind)];
    if (io->kind == io_kind::discard) {
      CHECK(io->bytes == 4096u);
      CHECK(io->sector == io->block * 8);
      CHECK_FALSE(io->barrier);
    }
    w.complete(*io);
  }
  CHECK(n[static_cast<std::size_t>(io_kind::discard)] > 2700);
  CHECK(n[static_cast<std::size_t>(io_kind::discard)] < 3300);
  CHECK(n[static_cast<std::size_t>(io_kind::read)] > 3200);
  CHECK(n[static_cast<std::size_t>(io_kind::write)] > 3200);
  CHECK(n[static_cast<std::size_t>(io_kind::flush)] == 0);
}

TEST_CASE("a discard share of 100 discards every block, locked like any I/O") {
  auto s = spec(false, 4);
  s.discard_pct = 100;
  s.flush_every = 1;  // flushes follow writes only
  workload w(s);
  std::vector<planned_io> ios;
  for (int i = 0; i < 4; ++i) {
    auto io = w.next();
    REQUIRE(io);
    CHECK(io->kind == io_kind::discard);
    CHECK(io->block == static_cast<std::uint64_t>(i));
    ios.push_back(*io);
  }
  CHECK_FALSE(w.next());  // every block is in flight
  w.complete(ios[0]);
  auto again = w.next();
  REQUIRE(again);
  CHECK(again->block == 0u);
}

TEST_CASE("without discards the sequence of a seed is what it always was") {
  auto a = spec(true, 500);
  auto b = a;
  b.discard_pct = 0;
  b.barrier_every = 0;
  workload wa(a), wb(b);
  for (int i = 0; i < 1000; ++i) {
    auto x = wa.next(), y = wb.next();
    REQUIRE(x);
    REQUIRE(y);
    CHECK(x->block == y->block);
    CHECK(x->kind == y->kind);
    wa.complete(*x);
    wb.complete(*y);
  }
}

TEST_CASE("every Nth write is a barrier write, and reads and discards do not count") {
  auto s = spec(false, 100);
  s.read_pct = 50;
  s.barrier_every = 3;
  s.flush_every = 4;
  workload w(s);
  std::uint64_t writes = 0, barriers = 0, flushes = 0;
  for (int i = 0; i < 3000; ++i) {
    auto io = w.next();
    REQUIRE(io);
    if (io->kind == io_kind::write) {
      ++writes;
      CHECK(io->barrier == (writes % 3 == 0));
      barriers += io->barrier;
    } else {
      CHECK_FALSE(io->barrier);
      if (io->kind == io_kind::flush) ++flushes;
    }
    w.complete(*io);
  }
  CHECK(barriers == writes / 3);
  // Barrier writes are writes for --flush-every too (the last flush may
  // still be due).
  CHECK(flushes + 1 >= writes / 4);
  CHECK(flushes <= writes / 4);
}

TEST_CASE("queue threads: the lanes split the region into contiguous shares, and the budgets") {
  workload_spec w = spec(true, 10, 8192);
  w.region_offset = 1 << 20;
  w.max_ios = 7;
  w.max_bytes = 0;
  std::uint64_t next_offset = w.region_offset, ios = 0;
  std::set<std::uint64_t> seeds;
  for (unsigned i = 0; i < 3; ++i) {
    const workload_spec l = lane_spec(w, i, 3);
    CHECK(l.region_offset == next_offset);
    CHECK(l.region_bytes % w.bs == 0);
    CHECK(l.region_bytes >= 3 * w.bs);
    next_offset = l.region_offset + l.region_bytes;
    ios += l.max_ios;
    CHECK(l.max_bytes == 0);
    seeds.insert(l.seed);
  }
  CHECK(next_offset == w.region_offset + w.region_bytes);
  CHECK(ios == 7);
  CHECK(seeds.size() == 3);
  CHECK(lane_spec(w, 0, 3).seed == w.seed);
  CHECK(lane_spec(w, 0, 3).max_ios == 3);  // the remainder goes to the first lanes

  // A lane whose budget share is 0 gets no blocks ("no limit" it is not).
  w.max_ios = 1;
  const workload_spec idle = lane_spec(w, 1, 2);
  CHECK(idle.region_bytes == 0);
  workload none(idle);
  CHECK_FALSE(none.next());
  w.max_ios = 0;
  w.max_bytes = 3 * 8192;
  CHECK(lane_spec(w, 0, 2).max_bytes == 2 * 8192);
  CHECK(lane_spec(w, 1, 2).max_bytes == 8192);

  // The lanes' blocks never overlap: every block goes to exactly one.
  std::set<std::uint64_t> sectors;
  for (unsigned i = 0; i < 4; ++i) {
    workload_spec l = lane_spec(spec(false, 10), i, 4);
    l.max_ios = l.region_bytes / l.bs;
    workload lw(l);
    while (auto io = lw.next()) {
      CHECK(sectors.insert(io->sector).second);
      lw.complete(*io);
    }
  }
  CHECK(sectors.size() == 10);

  // One I/O per block (the prefill): each lane's budget is its blocks.
  for (unsigned i = 0; i < 3; ++i) {
    workload_spec all = spec(false, 10);
    all.max_ios = 10;
    const workload_spec l = lane_spec(all, i, 3);
    CHECK(l.max_ios * l.bs == l.region_bytes);
  }
}

TEST_CASE("queue threads: the lanes' statistics add up, but they ran side by side: the longest run time") {
  std::vector<lane> lanes(2);
  lanes[0].stats.ops[0] = 100;
  lanes[0].stats.seconds = 2.0;
  lanes[0].stats.latency.record(1000);
  lanes[1].stats.ops[0] = 50;
  lanes[1].stats.ops[1] = 7;
  lanes[1].stats.seconds = 2.5;
  lanes[1].stats.protocol_error("queue 1: something");
  const run_stats all = merge_lanes(lanes);
  CHECK(all.ops[0] == 150);
  CHECK(all.ops[1] == 7);
  CHECK(all.seconds == doctest::Approx(2.5));
  CHECK(all.latency.count() == 1);
  CHECK(all.protocol_errors == 1);
}
