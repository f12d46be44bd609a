#include <doctest/doctest.h>

#include <cstring>
#include <vector>

#include "asio_xen/xen.hpp"
#include "blkfront/abi.hpp"

using namespace xbd::sim::blkfront;

namespace {
template <typename T>
T at(const std::vector<std::byte>& b, std::size_t off) {
  T v;
  std::memcpy(&v, b.data() + off, sizeof v);
  return v;
}
}  // namespace

TEST_CASE("x86_64-abi direct request fields land at blkif.h's byte offsets") {
  auto abi = make_abi("x86_64-abi");
  REQUIRE(abi);
  CHECK(abi->slot_size() == 112);
  std::vector<std::byte> slot(112);
  const segment segs[2] = {{0x11223344, 1, 6}, {0x55667788, 0, 7}};
  direct_request r;
  r.operation = op::write;
  r.nr_segments = 2;
  r.handle = 0xca00;
  r.id = 0x0102030405060708ull;
  r.sector_number = 0x1112131415161718ull;
  r.segs = segs;
  abi->put(slot, r);

  CHECK(at<std::uint8_t>(slot, 0) == 1);
  CHECK(at<std::uint8_t>(slot, 1) == 2);
  CHECK(at<std::uint16_t>(slot, 2) == 0xca00);
  CHECK(at<std::uint32_t>(slot, 4) == 0);  // padding stays zero
  CHECK(at<std::uint64_t>(slot, 8) == 0x0102030405060708ull);
  CHECK(at<std::uint64_t>(slot, 16) == 0x1112131415161718ull);
  CHECK(at<std::uint32_t>(slot, 24) == 0x11223344);
  CHECK(at<std::uint8_t>(slot, 28) == 1);
  CHECK(at<std::uint8_t>(slot, 29) == 6);
  CHECK(at<std::uint32_t>(slot, 32) == 0x55667788);
  CHECK(at<std::uint8_t>(slot, 36) == 0);
  CHECK(at<std::uint8_t>(slot, 37) == 7);

  // The same bytes read through the native struct.
  blkif_request_t native;
  std::memcpy(&native, slot.data(), sizeof native);
  CHECK(native.operation == BLKIF_OP_WRITE);
  CHECK(native.nr_segments == 2);
  CHECK(native.handle == 0xca00);
  CHECK(native.id == 0x0102030405060708ull);
  CHECK(native.sector_number == 0x1112131415161718ull);
  CHECK(native.seg[1].gref == 0x55667788);
  CHECK(native.seg[1].last_sect == 7);
}

TEST_CASE("x86_64-abi indirect request fields land at blkif.h's byte offsets") {
  auto abi = make_abi("x86_64-abi");
  std::vector<std::byte> slot(112);
  const std::uint32_t grefs[3] = {100, 200, 300};
  indirect_request r;
  r.indirect_op = op::read;
  r.nr_segments = 1000;
  r.handle = 0x1234;
  r.id = 42;
  r.sector_number = 4096;
  r.indirect_grefs = grefs;
  abi->put(slot, r);

  CHECK(at<std::uint8_t>(slot, 0) == BLKIF_OP_INDIRECT);
  CHECK(at<std::uint8_t>(slot, 1) == BLKIF_OP_READ);
  CHECK(at<std::uint16_t>(slot, 2) == 1000);
  CHECK(at<std::uint64_t>(slot, 8) == 42);
  CHECK(at<std::uint64_t>(slot, 16) == 4096);
  CHECK(at<std::uint16_t>(slot, 24) == 0x1234);
  CHECK(at<std::uint32_t>(slot, 28) == 100);
  CHECK(at<std::uint32_t>(slot, 32) == 200);
  CHECK(at<std::uint32_t>(slot, 36) == 300);
  CHECK(at<std::uint32_t>(slot, 40) == 0);

  blkif_request_indirect_t native;
  std::memcpy(&native, slot.data(), sizeof native);
  CHECK(native.nr_segments == 1000);
  CHECK(native.handle == 0x1234);
  CHECK(native.indirect_grefs[2] == 300);
}

TEST_CASE("writing a request clears every byte a previous request left in the slot") {
  auto abi = make_abi("x86_64-abi");
  std::vector<std::byte> slot(112, std::byte{0xff});
  const segment one[1] = {{7, 0, 7}};
  direct_request r;
  r.nr_segments = 1;
  r.segs = one;
  abi->put(slot, r);
  for (std::size_t i = 32; i < 112; ++i) CHECK(slot[i] == std::byte{0});

  std::fill(slot.begin(), slot.end(), std::byte{0xff});
  indirect_request ir;
  abi->put(slot, ir);
  for (std::size_t i = 28; i < 112; ++i) CHECK(slot[i] == std::byte{0});
}

TEST_CASE("a direct request never writes more than 11 segments, whatever nr_segments says") {
  auto abi = make_abi("x86_64-abi");
  std::vector<std::byte> slot(200, std::byte{0xee});
  std::vector<segment> many(20, segment{1, 0, 7});
  direct_request r;
  r.nr_segments = 20;
  r.segs = many;
  abi->put(std::span(slot).first(112), r);
  CHECK(at<std::uint8_t>(slot, 1) == 20);
  for (std::size_t i = 112; i < 200; ++i) CHECK(slot[i] == std::byte{0xee});
}

TEST_CASE("responses are read from blkif.h's byte offsets") {
  auto abi = make_abi("x86_64-abi");
  std::vector<std::byte> slot(112);
  blkif_response_t native{};
  native.id = 0xdeadbeefcafef00dull;
  native.operation = BLKIF_OP_FLUSH_DISKCACHE;
  native.status = BLKIF_RSP_EOPNOTSUPP;
  std::memcpy(slot.data(), &native, sizeof native);
  const response r = abi->get_response(slot);
  CHECK(r.id == 0xdeadbeefcafef00dull);
  CHECK(r.operation == BLKIF_OP_FLUSH_DISKCACHE);
  CHECK(r.status == -2);
}

TEST_CASE("ring entries follow ring.h: 32 per page, a power of two for multi-page rings") {
  CHECK(ring_entries(112, 1) == 32);
  CHECK(ring_entries(112, 1) == __CONST_RING_SIZE(blkif, 4096));
  CHECK(ring_entries(112, 2) == __CONST_RING_SIZE(blkif, 8192));
  CHECK(ring_entries(112, 4) == 128);
  CHECK(ring_entries(112, 16) == 512);
  CHECK(ring_entries(112, 16) == __CONST_RING_SIZE(blkif, 16 * 4096));
  CHECK(ring_entries(112, 256) == 8192);
}

TEST_CASE("indirect segment descriptors are 8 bytes: gref, first_sect, last_sect, padding") {
  std::vector<std::byte> page(4096, std::byte{0xff});
  put_indirect_segment(page, 511, segment{0xabcdef01, 2, 5});
  CHECK(at<std::uint32_t>(page, 511 * 8) == 0xabcdef01);
  CHECK(at<std::uint8_t>(page, 511 * 8 + 4) == 2);
  CHECK(at<std::uint8_t>(page, 511 * 8 + 5) == 5);
  CHECK(at<std::uint16_t>(page, 511 * 8 + 6) == 0);
  CHECK(at<std::uint8_t>(page, 510 * 8 + 7) == 0xff);  // the neighbour is untouched
  const segment s = get_indirect_segment(page, 511);
  CHECK(s.gref == 0xabcdef01);
  CHECK(s.first_sect == 2);
  CHECK(s.last_sect == 5);
  CHECK(segments_per_indirect_page == 512);
}

TEST_CASE("protocol names: x86_64-abi, native and x86_32-abi are served, arm-abi is known but not") {
  std::string why;
  CHECK(make_abi("x86_64-abi", &why));
  CHECK(make_abi("native", &why));
  CHECK(make_abi("x86_64-abi")->name() == "x86_64-abi");
  CHECK(make_abi("native")->which() == protocol::x86_64);
  REQUIRE(make_abi("x86_32-abi", &why));
  CHECK(make_abi("x86_32-abi")->name() == "x86_32-abi");
  CHECK(make_abi("x86_32-abi")->which() == protocol::x86_32);
  CHECK_FALSE(make_abi("arm-abi", &why));
  CHECK(why.find("not implemented") != std::string::npos);
  CHECK_FALSE(make_abi("sparc-abi", &why));
  CHECK(why.find("unknown") != std::string::npos);
}

TEST_CASE("x86_64-abi discard request fields land at blkif.h's byte offsets") {
  auto abi = make_abi("x86_64-abi");
  std::vector<std::byte> slot(112, std::byte{0xff});
  discard_request r;
  r.flag = discard_secure;
  r.handle = 0xca00;
  r.id = 0x0102030405060708ull;
  r.sector_number = 0x1112131415161718ull;
  r.nr_sectors = 0x2122232425262728ull;
  abi->put(slot, r);
  CHECK(at<std::uint8_t>(slot, 0) == BLKIF_OP_DISCARD);
  CHECK(at<std::uint8_t>(slot, 1) == BLKIF_DISCARD_SECURE);
  CHECK(at<std::uint16_t>(slot, 2) == 0xca00);
  CHECK(at<std::uint32_t>(slot, 4) == 0);
  CHECK(at<std::uint64_t>(slot, 8) == 0x0102030405060708ull);
  CHECK(at<std::uint64_t>(slot, 16) == 0x1112131415161718ull);
  CHECK(at<std::uint64_t>(slot, 24) == 0x2122232425262728ull);
  for (std::size_t i = 32; i < 112; ++i) CHECK(slot[i] == std::byte{0});

  blkif_request_discard_t native;
  std::memcpy(&native, slot.data(), sizeof native);
  CHECK(native.operation == BLKIF_OP_DISCARD);
  CHECK(native.flag == BLKIF_DISCARD_SECURE);
  CHECK(native.id == 0x0102030405060708ull);
  CHECK(native.sector_number == 0x1112131415161718ull);
  CHECK(native.nr_sectors == 0x2122232425262728ull);
}

// ---------------------------------------------------------------------------
// x86_32-abi. The expected offsets are a 32-bit x86 compiler's for blkif.h
// (checked with gcc -m32); the pack(4) structs below are that layout again,
// independently of abi.cpp's tables.

namespace {
#pragma pack(push, 4)
struct i386_req {
  std::uint8_t operation, nr_segments;
  std::uint16_t handle;
  std::uint64_t id, sector_number;
  struct blkif_request_segment seg[11];
};
struct i386_ind {
  std::uint8_t operation, indirect_op;
  std::uint16_t nr_segments;
  std::uint64_t id, sector_number;
  std::uint16_t handle;
  std::uint32_t indirect_grefs[8];
  std::uint64_t pad;
};
struct i386_rsp {
  std::uint64_t id;
  std::uint8_t operation;
  std::int16_t status;
};
#pragma pack(pop)
}  // namespace

TEST_CASE("x86_32-abi direct request: 108 bytes, id at 4, sector at 12, segments from 20") {
  auto abi = make_abi("x86_32-abi");
  REQUIRE(abi);
  CHECK(abi->slot_size() == 108);
  std::vector<std::byte> slot(120, std::byte{0xee});
  std::vector<segment> segs(11);
  for (unsigned i = 0; i < 11; ++i) segs[i] = {0x1000u + i, static_cast<std::uint8_t>(i % 8), 7};
  direct_request r;
  r.operation = op::write_barrier;
  r.nr_segments = 11;
  r.handle = 0xca10;
  r.id = 0x0102030405060708ull;
  r.sector_number = 0x1112131415161718ull;
  r.segs = segs;
  abi->put(std::span(slot).first(108), r);

  CHECK(at<std::uint8_t>(slot, 0) == BLKIF_OP_WRITE_BARRIER);
  CHECK(at<std::uint8_t>(slot, 1) == 11);
  CHECK(at<std::uint16_t>(slot, 2) == 0xca10);
  CHECK(at<std::uint64_t>(slot, 4) == 0x0102030405060708ull);
  CHECK(at<std::uint64_t>(slot, 12) == 0x1112131415161718ull);
  for (unsigned i = 0; i < 11; ++i) {
    CHECK(at<std::uint32_t>(slot, 20 + 8 * i) == 0x1000u + i);
    CHECK(at<std::uint8_t>(slot, 24 + 8 * i) == i % 8);
    CHECK(at<std::uint8_t>(slot, 25 + 8 * i) == 7);
    CHECK(at<std::uint16_t>(slot, 26 + 8 * i) == 0);  // segment padding
  }
  // The last segment ends the slot: nothing beyond 108 is touched.
  for (std::size_t i = 108; i < 120; ++i) CHECK(slot[i] == std::byte{0xee});

  i386_req view;
  static_assert(sizeof view == 108);
  std::memcpy(&view, slot.data(), sizeof view);
  // Copies: CHECK binds references, and these members are 4-aligned only.
  const std::uint64_t id = view.id, sector = view.sector_number;
  const std::uint32_t last_gref = view.seg[10].gref;
  CHECK(id == 0x0102030405060708ull);
  CHECK(sector == 0x1112131415161718ull);
  CHECK(last_gref == 0x100a);
}

TEST_CASE("x86_32-abi indirect request: handle at 20, grant refs at 24") {
  auto abi = make_abi("x86_32-abi");
  std::vector<std::byte> slot(108, std::byte{0xff});
  const std::uint32_t grefs[8] = {10, 11, 12, 13, 14, 15, 16, 17};
  indirect_request r;
  r.indirect_op = op::write;
  r.nr_segments = 4096;
  r.handle = 0x1234;
  r.id = 0xa0a1a2a3a4a5a6a7ull;
  r.sector_number = 1ull << 40;
  r.indirect_grefs = grefs;
  abi->put(slot, r);

  CHECK(at<std::uint8_t>(slot, 0) == BLKIF_OP_INDIRECT);
  CHECK(at<std::uint8_t>(slot, 1) == BLKIF_OP_WRITE);
  CHECK(at<std::uint16_t>(slot, 2) == 4096);
  CHECK(at<std::uint64_t>(slot, 4) == 0xa0a1a2a3a4a5a6a7ull);
  CHECK(at<std::uint64_t>(slot, 12) == 1ull << 40);
  CHECK(at<std::uint16_t>(slot, 20) == 0x1234);
  CHECK(at<std::uint16_t>(slot, 22) == 0);  // padding before the 4-aligned refs
  for (unsigned i = 0; i < 8; ++i) CHECK(at<std::uint32_t>(slot, 24 + 4 * i) == 10 + i);
  for (std::size_t i = 56; i < 108; ++i) CHECK(slot[i] == std::byte{0});  // pad, then unused

  i386_ind view;
  static_assert(sizeof view == 64);
  std::memcpy(&view, slot.data(), sizeof view);
  const std::uint16_t nr_segments = view.nr_segments, handle = view.handle;
  const std::uint32_t last_gref = view.indirect_grefs[7];
  CHECK(nr_segments == 4096);
  CHECK(handle == 0x1234);
  CHECK(last_gref == 17);
}

TEST_CASE("x86_32-abi discard request: flag at 1, id at 4, sector at 12, nr_sectors at 20") {
  auto abi = make_abi("x86_32-abi");
  std::vector<std::byte> slot(108, std::byte{0xff});
  discard_request r;
  r.flag = 0;
  r.handle = 0xbeef;
  r.id = 99;
  r.sector_number = 4096;
  r.nr_sectors = 0x100000008ull;
  abi->put(slot, r);
  CHECK(at<std::uint8_t>(slot, 0) == BLKIF_OP_DISCARD);
  CHECK(at<std::uint8_t>(slot, 1) == 0);
  CHECK(at<std::uint16_t>(slot, 2) == 0xbeef);
  CHECK(at<std::uint64_t>(slot, 4) == 99);
  CHECK(at<std::uint64_t>(slot, 12) == 4096);
  CHECK(at<std::uint64_t>(slot, 20) == 0x100000008ull);
  for (std::size_t i = 28; i < 108; ++i) CHECK(slot[i] == std::byte{0});
}

TEST_CASE("x86_32-abi responses: id at 0, operation at 8, status at 10 (12 bytes)") {
  auto abi = make_abi("x86_32-abi");
  std::vector<std::byte> slot(108, std::byte{0x77});
  i386_rsp native{};
  static_assert(sizeof native == 12);
  native.id = 0xfedcba9876543210ull;
  native.operation = BLKIF_OP_DISCARD;
  native.status = BLKIF_RSP_ERROR;
  std::memcpy(slot.data(), &native, sizeof native);
  const response r = abi->get_response(slot);
  CHECK(r.id == 0xfedcba9876543210ull);
  CHECK(r.operation == BLKIF_OP_DISCARD);
  CHECK(r.status == -1);
}

TEST_CASE("x86_32-abi rings: 108-byte entries, still 32 per page and 512 in 16 pages") {
  CHECK(ring_entries(108, 1) == 32);
  CHECK(ring_entries(108, 2) == 64);
  CHECK(ring_entries(108, 16) == 512);
  CHECK(ring_entries(108, 256) == 8192);
  // Where the layouts part: 37 entries of 108 bytes fit in a page, 36 of
  // 112, and both round down to 32.
  CHECK((4096 - 64) / 108 == 37);
}
