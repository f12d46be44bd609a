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

TEST_CASE("protocol names: x86_64-abi and native are served, x86_32-abi is known but not yet") {
  std::string why;
  CHECK(make_abi("x86_64-abi", &why));
  CHECK(make_abi("native", &why));
  CHECK(make_abi("x86_64-abi")->name() == "x86_64-abi");
  CHECK_FALSE(make_abi("x86_32-abi", &why));
  CHECK(why.find("not implemented") != std::string::npos);
  CHECK_FALSE(make_abi("sparc-abi", &why));
  CHECK(why.find("unknown") != std::string::npos);
}
