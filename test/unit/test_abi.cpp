#include "blkback/abi.hpp"

#include <doctest/doctest.h>

#include <cstring>

using namespace xbd::blkback;

TEST_CASE("protocol names follow protocols.h") {
  CHECK(parse_protocol("x86_64-abi") == abi::x86_64);
  CHECK(parse_protocol("x86_32-abi") == abi::x86_32);
  CHECK_FALSE(parse_protocol("arm-abi").has_value());
  CHECK_FALSE(parse_protocol("").has_value());
  CHECK_FALSE(parse_protocol("x86_64-abi ").has_value());
  CHECK(to_string(abi::x86_64) == "x86_64-abi");
}

TEST_CASE("an x86_64 read request decodes from hand-built bytes") {
  std::array<std::byte, 112> raw{};
  auto put = [&](std::size_t off, auto v) { std::memcpy(raw.data() + off, &v, sizeof v); };
  put(0, std::uint8_t{BLKIF_OP_READ});
  put(1, std::uint8_t{2});                         // nr_segments
  put(2, std::uint16_t{51712});                    // handle
  put(8, std::uint64_t{0xdeadbeefcafef00dull});    // id
  put(16, std::uint64_t{123456789});               // sector_number
  put(24, std::uint32_t{42});                      // seg[0].gref
  put(28, std::uint8_t{1});                        // seg[0].first_sect
  put(29, std::uint8_t{6});                        // seg[0].last_sect
  put(32, std::uint32_t{43});
  put(36, std::uint8_t{0});
  put(37, std::uint8_t{7});
  wire_request r = decode_x86_64(raw);
  CHECK(r.operation == BLKIF_OP_READ);
  CHECK(r.nr_segments == 2);
  CHECK(r.id == 0xdeadbeefcafef00dull);
  CHECK(r.sector_number == 123456789u);
  CHECK(r.seg[0].gref == 42u);
  CHECK(r.seg[0].first_sect == 1);
  CHECK(r.seg[0].last_sect == 6);
  CHECK(r.seg[1].gref == 43u);
  CHECK(r.seg[1].last_sect == 7);
}

TEST_CASE("x86_64 discard and indirect requests decode their own fields") {
  std::array<std::byte, 112> raw{};
  auto put = [&](std::size_t off, auto v) { std::memcpy(raw.data() + off, &v, sizeof v); };
  put(0, std::uint8_t{BLKIF_OP_DISCARD});
  put(1, std::uint8_t{BLKIF_DISCARD_SECURE});
  put(8, std::uint64_t{7});
  put(16, std::uint64_t{1000});
  put(24, std::uint64_t{2048});
  wire_request d = decode_x86_64(raw);
  CHECK(d.discard_flag == BLKIF_DISCARD_SECURE);
  CHECK(d.sector_number == 1000u);
  CHECK(d.nr_sectors == 2048u);
  raw = {};
  put(0, std::uint8_t{BLKIF_OP_INDIRECT});
  put(1, std::uint8_t{BLKIF_OP_WRITE});
  put(2, std::uint16_t{300});
  put(8, std::uint64_t{8});
  put(16, std::uint64_t{64});
  put(24, std::uint16_t{51712});
  for (std::uint32_t i = 0; i < 8; ++i) put(28 + 4 * i, std::uint32_t{500 + i});
  wire_request ind = decode_x86_64(raw);
  CHECK(ind.indirect_op == BLKIF_OP_WRITE);
  CHECK(ind.indirect_nr_segments == 300u);
  CHECK(ind.sector_number == 64u);
  CHECK(ind.indirect_grefs[0] == 500u);
  CHECK(ind.indirect_grefs[7] == 507u);
}

TEST_CASE("an x86_64 response is written field by field and its padding is zero (XSA-216)") {
  std::array<std::byte, 112> slot;
  slot.fill(std::byte{0xaa});  // what was there before: the request, or garbage
  encode_response_x86_64(slot, 0x0102030405060708ull, BLKIF_OP_WRITE, BLKIF_RSP_EOPNOTSUPP);
  std::uint64_t id;
  std::memcpy(&id, slot.data(), 8);
  CHECK(id == 0x0102030405060708ull);
  CHECK(slot[8] == std::byte{BLKIF_OP_WRITE});
  CHECK(slot[9] == std::byte{0});  // padding
  std::int16_t status;
  std::memcpy(&status, slot.data() + 10, 2);
  CHECK(status == BLKIF_RSP_EOPNOTSUPP);
  for (std::size_t i = 12; i < 16; ++i) CHECK(slot[i] == std::byte{0});
  // Nothing beyond the response is touched.
  CHECK(slot[16] == std::byte{0xaa});
}
