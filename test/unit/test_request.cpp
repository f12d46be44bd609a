#include "blkback/ring/request.hpp"

#include <doctest/doctest.h>

using namespace xbd::blkback;

namespace {

device_limits disk(std::uint64_t sectors = 2048) {
  device_limits l;
  l.sectors = sectors;
  return l;
}

wire_request rw(std::uint8_t op, std::uint64_t sector, std::initializer_list<std::pair<int, int>> segs) {
  wire_request r;
  r.operation = op;
  r.id = 0x1234'5678'9abc'def0ull;
  r.sector_number = sector;
  r.nr_segments = static_cast<std::uint8_t>(segs.size());
  int i = 0;
  for (auto [first, last] : segs) {
    r.seg[i].gref = 100 + i;
    r.seg[i].first_sect = static_cast<std::uint8_t>(first);
    r.seg[i].last_sect = static_cast<std::uint8_t>(last);
    ++i;
  }
  return r;
}

struct outcome {
  validation v;
  std::array<segment, BLKIF_MAX_SEGMENTS_PER_REQUEST> storage{};
};

std::int16_t status_of(const wire_request& r, const device_limits& lim) {
  std::array<segment, BLKIF_MAX_SEGMENTS_PER_REQUEST> storage{};
  auto v = validate(r, lim, storage);
  if (auto* rej = std::get_if<rejected>(&v)) {
    CHECK(rej->id == r.id);
    const bool inner =
        r.operation == BLKIF_OP_INDIRECT && (r.indirect_op == BLKIF_OP_READ || r.indirect_op == BLKIF_OP_WRITE);
    CHECK(rej->operation == (inner ? r.indirect_op : r.operation));
    return rej->status;
  }
  return BLKIF_RSP_OKAY;
}

}  // namespace

TEST_CASE("a read within the disk is accepted with its segments as byte ranges in disk order") {
  std::array<segment, BLKIF_MAX_SEGMENTS_PER_REQUEST> storage{};
  auto v = validate(rw(BLKIF_OP_READ, 8, {{0, 7}, {2, 3}}), disk(), storage);
  auto* c = std::get_if<checked_request>(&v);
  REQUIRE(c);
  CHECK(c->kind == op_kind::read);
  CHECK(c->id == 0x1234'5678'9abc'def0ull);
  CHECK(c->offset == 8u * 512);
  CHECK(c->length == 4096u + 1024);
  REQUIRE(c->segments.size() == 2u);
  CHECK(c->segments[0].gref == 100u);
  CHECK(c->segments[0].offset == 0u);
  CHECK(c->segments[0].length == 4096u);
  CHECK(c->segments[1].gref == 101u);
  CHECK(c->segments[1].offset == 1024u);
  CHECK(c->segments[1].length == 1024u);
}

TEST_CASE("an unknown operation is answered EOPNOTSUPP") {
  for (std::uint8_t op : {std::uint8_t{4}, std::uint8_t{7}, std::uint8_t{200}, std::uint8_t{255}}) {
    CAPTURE(op);
    CHECK(status_of(rw(op, 0, {{0, 7}}), disk()) == BLKIF_RSP_EOPNOTSUPP);
  }
}

TEST_CASE("known operations that were not advertised are answered EOPNOTSUPP") {
  auto lim = disk();
  lim.barrier = false;
  lim.discard = false;
  lim.max_indirect_segments = 0;
  CHECK(status_of(rw(BLKIF_OP_WRITE_BARRIER, 0, {}), lim) == BLKIF_RSP_EOPNOTSUPP);
  wire_request d;
  d.operation = BLKIF_OP_DISCARD;
  d.nr_sectors = 8;
  CHECK(status_of(d, lim) == BLKIF_RSP_EOPNOTSUPP);
  wire_request ind;
  ind.operation = BLKIF_OP_INDIRECT;
  ind.indirect_op = BLKIF_OP_READ;
  ind.indirect_nr_segments = 16;
  CHECK(status_of(ind, lim) == BLKIF_RSP_EOPNOTSUPP);
  lim.flush = false;
  CHECK(status_of(rw(BLKIF_OP_FLUSH_DISKCACHE, 0, {}), lim) == BLKIF_RSP_EOPNOTSUPP);
}

TEST_CASE("a read or write needs 1 to 11 segments") {
  auto r = rw(BLKIF_OP_READ, 0, {});
  CHECK(status_of(r, disk()) == BLKIF_RSP_ERROR);
  r.nr_segments = 12;
  CHECK(status_of(r, disk()) == BLKIF_RSP_ERROR);
  r.nr_segments = 255;
  CHECK(status_of(r, disk()) == BLKIF_RSP_ERROR);
  auto w =
      rw(BLKIF_OP_WRITE, 0, {{0, 7}, {0, 7}, {0, 7}, {0, 7}, {0, 7}, {0, 7}, {0, 7}, {0, 7}, {0, 7}, {0, 7}, {0, 7}});
  CHECK(status_of(w, disk()) == BLKIF_RSP_OKAY);
}

TEST_CASE("a segment must lie within its page: first_sect <= last_sect <= 7") {
  CHECK(status_of(rw(BLKIF_OP_READ, 0, {{0, 8}}), disk()) == BLKIF_RSP_ERROR);
  CHECK(status_of(rw(BLKIF_OP_READ, 0, {{5, 4}}), disk()) == BLKIF_RSP_ERROR);
  CHECK(status_of(rw(BLKIF_OP_READ, 0, {{255, 255}}), disk()) == BLKIF_RSP_ERROR);
  CHECK(status_of(rw(BLKIF_OP_READ, 0, {{0, 7}, {3, 200}}), disk()) == BLKIF_RSP_ERROR);
  CHECK(status_of(rw(BLKIF_OP_READ, 0, {{7, 7}}), disk()) == BLKIF_RSP_OKAY);
}

TEST_CASE("the sector range must end inside the disk, whatever overflow the guest aims for") {
  auto lim = disk(2048);
  CHECK(status_of(rw(BLKIF_OP_READ, 2040, {{0, 7}}), lim) == BLKIF_RSP_OKAY);  // the last 4 KiB
  CHECK(status_of(rw(BLKIF_OP_READ, 2041, {{0, 7}}), lim) == BLKIF_RSP_ERROR);
  CHECK(status_of(rw(BLKIF_OP_READ, 2048, {{0, 0}}), lim) == BLKIF_RSP_ERROR);
  CHECK(status_of(rw(BLKIF_OP_READ, UINT64_MAX, {{0, 7}}), lim) == BLKIF_RSP_ERROR);
  CHECK(status_of(rw(BLKIF_OP_READ, UINT64_MAX - 7, {{0, 7}}), lim) == BLKIF_RSP_ERROR);
  // sector * 512 would wrap to a small offset.
  CHECK(status_of(rw(BLKIF_OP_READ, (1ull << 55), {{0, 7}}), lim) == BLKIF_RSP_ERROR);
  CHECK(status_of(rw(BLKIF_OP_WRITE, 1ull << 63, {{0, 7}}), lim) == BLKIF_RSP_ERROR);
}

TEST_CASE("with 4 KiB logical sectors, requests must be 4 KiB aligned in offset and length") {
  auto lim = disk(2048);
  lim.sector_size = 4096;
  CHECK(status_of(rw(BLKIF_OP_READ, 8, {{0, 7}}), lim) == BLKIF_RSP_OKAY);
  CHECK(status_of(rw(BLKIF_OP_READ, 4, {{0, 7}}), lim) == BLKIF_RSP_ERROR);
  CHECK(status_of(rw(BLKIF_OP_READ, 8, {{0, 3}}), lim) == BLKIF_RSP_ERROR);
  CHECK(status_of(rw(BLKIF_OP_READ, 8, {{0, 3}, {4, 7}}), lim) == BLKIF_RSP_OKAY);
}

TEST_CASE("a write to a read-only vbd is answered with BLKIF_RSP_ERROR, reads still pass") {
  auto lim = disk();
  lim.readonly = true;
  CHECK(status_of(rw(BLKIF_OP_WRITE, 0, {{0, 7}}), lim) == BLKIF_RSP_ERROR);
  CHECK(status_of(rw(BLKIF_OP_FLUSH_DISKCACHE, 0, {{0, 7}}), lim) == BLKIF_RSP_ERROR);
  CHECK(status_of(rw(BLKIF_OP_READ, 0, {{0, 7}}), lim) == BLKIF_RSP_OKAY);
  // A flush without data changes nothing and is fine.
  CHECK(status_of(rw(BLKIF_OP_FLUSH_DISKCACHE, 0, {}), lim) == BLKIF_RSP_OKAY);
}

TEST_CASE("a flush without data is a flush, with data it is a write followed by a flush") {
  std::array<segment, BLKIF_MAX_SEGMENTS_PER_REQUEST> storage{};
  auto plain = validate(rw(BLKIF_OP_FLUSH_DISKCACHE, 12345, {}), disk(), storage);
  auto* c = std::get_if<checked_request>(&plain);
  REQUIRE(c);
  CHECK(c->kind == op_kind::flush);
  CHECK(c->length == 0u);
  CHECK(c->flush_after);
  auto with_data = validate(rw(BLKIF_OP_FLUSH_DISKCACHE, 16, {{0, 7}}), disk(), storage);
  c = std::get_if<checked_request>(&with_data);
  REQUIRE(c);
  CHECK(c->kind == op_kind::flush);
  CHECK(c->length == 4096u);
  CHECK(c->offset == 16u * 512);
  CHECK(c->flush_after);
  CHECK(c->operation == BLKIF_OP_FLUSH_DISKCACHE);
  // Its range is checked like a write's.
  CHECK(status_of(rw(BLKIF_OP_FLUSH_DISKCACHE, 2048, {{0, 7}}), disk()) == BLKIF_RSP_ERROR);
  auto too_many = rw(BLKIF_OP_FLUSH_DISKCACHE, 0, {});
  too_many.nr_segments = 12;
  CHECK(status_of(too_many, disk()) == BLKIF_RSP_ERROR);
}

TEST_CASE("discard: range inside the disk, never on a read-only vbd, secure only if advertised, else plain") {
  auto lim = disk(2048);
  lim.discard = true;
  wire_request d;
  d.operation = BLKIF_OP_DISCARD;
  d.id = 9;
  d.sector_number = 2000;
  d.nr_sectors = 48;
  CHECK(status_of(d, lim) == BLKIF_RSP_OKAY);
  d.nr_sectors = 49;
  CHECK(status_of(d, lim) == BLKIF_RSP_ERROR);
  d.nr_sectors = 0;
  CHECK(status_of(d, lim) == BLKIF_RSP_ERROR);
  d.nr_sectors = UINT64_MAX;
  CHECK(status_of(d, lim) == BLKIF_RSP_ERROR);
  d.nr_sectors = 8;
  d.discard_flag = BLKIF_DISCARD_SECURE;
  std::array<segment, BLKIF_MAX_SEGMENTS_PER_REQUEST> storage{};
  auto plain = validate(d, lim, storage);
  REQUIRE(std::holds_alternative<checked_request>(plain));
  CHECK_FALSE(std::get<checked_request>(plain).secure);  // not offered: a plain discard
  lim.discard_secure = true;
  auto secure = validate(d, lim, storage);
  REQUIRE(std::holds_alternative<checked_request>(secure));
  CHECK(std::get<checked_request>(secure).secure);
  lim.readonly = true;
  CHECK(status_of(d, lim) == BLKIF_RSP_ERROR);
}

TEST_CASE("indirect: READ/WRITE only, 1..max segments, then its descriptors are checked like direct ones") {
  auto lim = disk(1 << 20);
  lim.max_indirect_segments = 256;
  std::array<segment, BLKIF_MAX_SEGMENTS_PER_REQUEST> small{};
  wire_request r;
  r.operation = BLKIF_OP_INDIRECT;
  r.id = 77;
  r.indirect_op = BLKIF_OP_WRITE_BARRIER;
  r.indirect_nr_segments = 8;
  CHECK(status_of(r, lim) == BLKIF_RSP_ERROR);
  r.indirect_op = BLKIF_OP_READ;
  r.indirect_nr_segments = 0;
  CHECK(status_of(r, lim) == BLKIF_RSP_ERROR);
  r.indirect_nr_segments = 257;
  CHECK(status_of(r, lim) == BLKIF_RSP_ERROR);
  r.indirect_nr_segments = 256;
  auto v = validate(r, lim, small);
  auto* need = std::get_if<needs_indirect>(&v);
  REQUIRE(need);
  CHECK(need->nr_segments == 256u);
  CHECK(need->pages == 1u);
  std::vector<blkif_request_segment> descs(256, blkif_request_segment{5, 0, 7});
  std::vector<segment> storage(256);
  auto ok = validate_indirect(r, descs, lim, storage);
  auto* c = std::get_if<checked_request>(&ok);
  REQUIRE(c);
  CHECK(c->length == 256u * 4096);
  // The response echoes the operation inside, as Linux's blkfront expects.
  CHECK(c->operation == BLKIF_OP_READ);
  descs[200].last_sect = 8;
  CHECK(std::holds_alternative<rejected>(validate_indirect(r, descs, lim, storage)));
  r.indirect_op = BLKIF_OP_WRITE;
  lim.readonly = true;
  CHECK(status_of(r, lim) == BLKIF_RSP_ERROR);
}
