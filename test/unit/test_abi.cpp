#include "blkback/ring/abi.hpp"

#include <doctest/doctest.h>

#include <cstring>
#include <vector>

using namespace xbd::blkback;

TEST_CASE("protocol names follow protocols.h") {
  CHECK(parse_protocol("x86_64-abi") == abi::x86_64);
  CHECK(parse_protocol("x86_32-abi") == abi::x86_32);
  CHECK_FALSE(parse_protocol("arm-abi").has_value());
  CHECK_FALSE(parse_protocol("").has_value());
  CHECK_FALSE(parse_protocol("x86_64-abi ").has_value());
  CHECK(to_string(abi::x86_64) == "x86_64-abi");
  CHECK(to_string(abi::x86_32) == "x86_32-abi");
}

TEST_CASE("an x86_64 read request decodes from hand-built bytes") {
  std::array<std::byte, 112> raw{};
  auto put = [&](std::size_t off, auto v) { std::memcpy(raw.data() + off, &v, sizeof v); };
  put(0, std::uint8_t{BLKIF_OP_READ});
  put(1, std::uint8_t{2});                       // nr_segments
  put(2, std::uint16_t{51712});                  // handle
  put(8, std::uint64_t{0xdeadbeefcafef00dull});  // id
  put(16, std::uint64_t{123456789});             // sector_number
  put(24, std::uint32_t{42});                    // seg[0].gref
  put(28, std::uint8_t{1});                      // seg[0].first_sect
  put(29, std::uint8_t{6});                      // seg[0].last_sect
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

// ---------------------------------------------------------------------------
// x86_32-abi: what a 32-bit guest's compiler makes of blkif.h. Every 64-bit
// field is 4-aligned, so `id` is at 4 and `sector_number` at 12.

namespace {

template <std::size_t N>
struct slot_bytes {
  std::array<std::byte, N> raw{};
  template <class T>
  void put(std::size_t off, T v) {
    std::memcpy(raw.data() + off, &v, sizeof v);
  }
};

using x32_slot = slot_bytes<x86_32_request_size>;

}  // namespace

TEST_CASE("an x86_32 write with three segments decodes from hand-built bytes") {
  x32_slot s;
  s.put(0, std::uint8_t{BLKIF_OP_WRITE});
  s.put(1, std::uint8_t{3});                        // nr_segments
  s.put(2, std::uint16_t{51712});                   // handle
  s.put(4, std::uint64_t{0x8877665544332211ull});   // id
  s.put(12, std::uint64_t{0x0000001234567890ull});  // sector_number
  for (std::uint32_t i = 0; i < 3; ++i) {
    s.put(20 + 8 * i, std::uint32_t{1000 + i});  // seg[i].gref
    s.put(24 + 8 * i, std::uint8_t(i));          // seg[i].first_sect
    s.put(25 + 8 * i, std::uint8_t(7 - i));      // seg[i].last_sect
  }
  // The last segment slot ends the request exactly at byte 108.
  s.put(20 + 8 * 10, std::uint32_t{0xfeedbeef});
  s.put(25 + 8 * 10, std::uint8_t{5});
  wire_request r = decode_x86_32(s.raw);
  CHECK(r.operation == BLKIF_OP_WRITE);
  CHECK(r.nr_segments == 3);
  CHECK(r.id == 0x8877665544332211ull);
  CHECK(r.sector_number == 0x1234567890ull);
  for (std::uint32_t i = 0; i < 3; ++i) {
    CHECK(r.seg[i].gref == 1000 + i);
    CHECK(r.seg[i].first_sect == i);
    CHECK(r.seg[i].last_sect == 7 - i);
  }
  CHECK(r.seg[10].gref == 0xfeedbeefu);
  CHECK(r.seg[10].last_sect == 5);
}

TEST_CASE("an x86_32 read is not decoded at the x86_64 offsets") {
  x32_slot s;
  s.put(0, std::uint8_t{BLKIF_OP_READ});
  s.put(1, std::uint8_t{1});
  s.put(4, std::uint64_t{7});
  s.put(12, std::uint64_t{2048});
  s.put(20, std::uint32_t{99});
  s.put(25, std::uint8_t{7});
  wire_request r = decode_x86_32(s.raw);
  CHECK(r.operation == BLKIF_OP_READ);
  CHECK(r.id == 7u);
  CHECK(r.sector_number == 2048u);
  CHECK(r.seg[0].gref == 99u);
  CHECK(r.seg[0].first_sect == 0);
  CHECK(r.seg[0].last_sect == 7);
  CHECK(r.seg[1].gref == 0u);
}

TEST_CASE("an x86_32 discard carries its flag at 1 and nr_sectors at 20") {
  x32_slot s;
  s.put(0, std::uint8_t{BLKIF_OP_DISCARD});
  s.put(1, std::uint8_t{BLKIF_DISCARD_SECURE});
  s.put(2, std::uint16_t{0xffff});  // handle: ignored
  s.put(4, std::uint64_t{0xa1a2a3a4a5a6a7a8ull});
  s.put(12, std::uint64_t{1u << 20});
  s.put(20, std::uint64_t{0x100000000ull});  // more than 32 bits of sectors
  wire_request d = decode_x86_32(s.raw);
  CHECK(d.operation == BLKIF_OP_DISCARD);
  CHECK(d.discard_flag == BLKIF_DISCARD_SECURE);
  CHECK(d.id == 0xa1a2a3a4a5a6a7a8ull);
  CHECK(d.sector_number == (1u << 20));
  CHECK(d.nr_sectors == 0x100000000ull);
  CHECK(d.nr_segments == 0);  // not a field of a discard
}

TEST_CASE("an x86_32 indirect request has its handle at 20 and its grefs at 24 (blkif.h's i386 layout)") {
  x32_slot s;
  s.put(0, std::uint8_t{BLKIF_OP_INDIRECT});
  s.put(1, std::uint8_t{BLKIF_OP_READ});
  s.put(2, std::uint16_t{4096});  // nr_segments
  s.put(4, std::uint64_t{0x0badc0de});
  s.put(12, std::uint64_t{800});
  s.put(20, std::uint16_t{51712});   // handle
  s.put(22, std::uint16_t{0xeeee});  // padding: never read
  for (std::uint32_t i = 0; i < 8; ++i) s.put(24 + 4 * i, std::uint32_t{700 + i});
  s.put(56, std::uint64_t{~0ull});  // blkif.h's i386 `pad`
  wire_request r = decode_x86_32(s.raw);
  CHECK(r.operation == BLKIF_OP_INDIRECT);
  CHECK(r.indirect_op == BLKIF_OP_READ);
  CHECK(r.indirect_nr_segments == 4096u);
  CHECK(r.id == 0x0badc0deu);
  CHECK(r.sector_number == 800u);
  for (std::uint32_t i = 0; i < 8; ++i) CHECK(r.indirect_grefs[i] == 700 + i);
}

TEST_CASE("an x86_32 flush has only an operation and an id") {
  x32_slot s;
  s.put(0, std::uint8_t{BLKIF_OP_FLUSH_DISKCACHE});
  s.put(4, std::uint64_t{0xffffffff00000001ull});
  wire_request r = decode_x86_32(s.raw);
  CHECK(r.operation == BLKIF_OP_FLUSH_DISKCACHE);
  CHECK(r.nr_segments == 0);
  CHECK(r.id == 0xffffffff00000001ull);
  CHECK(r.sector_number == 0u);
}

TEST_CASE("an x86_32 response is 12 bytes, status at 10, its padding zero (XSA-216)") {
  std::array<std::byte, 108> slot;
  slot.fill(std::byte{0xaa});
  encode_response_x86_32(slot, 0x0102030405060708ull, BLKIF_OP_DISCARD, BLKIF_RSP_ERROR);
  std::uint64_t id;
  std::memcpy(&id, slot.data(), 8);
  CHECK(id == 0x0102030405060708ull);
  CHECK(slot[8] == std::byte{BLKIF_OP_DISCARD});
  CHECK(slot[9] == std::byte{0});  // padding
  std::int16_t status;
  std::memcpy(&status, slot.data() + 10, 2);
  CHECK(status == BLKIF_RSP_ERROR);
  for (std::size_t i = 12; i < slot.size(); ++i) CHECK(slot[i] == std::byte{0xaa});
}

// ---------------------------------------------------------------------------
// Ring sizes against ring.h itself, with the i386 entry built by ring.h's own
// DEFINE_RING_TYPES from structs laid out as a 32-bit compiler would.

namespace {

#pragma pack(push, 4)
struct i386_blkif_request {
  std::uint8_t operation, nr_segments;
  std::uint16_t handle;
  std::uint64_t id, sector_number;
  blkif_request_segment seg[BLKIF_MAX_SEGMENTS_PER_REQUEST];
};
struct i386_blkif_response {
  std::uint64_t id;
  std::uint8_t operation;
  std::int16_t status;
};
#pragma pack(pop)

DEFINE_RING_TYPES(xbd_test_i386_blkif, struct i386_blkif_request, struct i386_blkif_response);

}  // namespace

TEST_CASE("each layout's ring holds ring.h's __RING_SIZE entries, for every order up to 8") {
  static_assert(sizeof(union xbd_test_i386_blkif_sring_entry) == x86_32_request_size);
  static_assert(sizeof(union blkif_sring_entry) == x86_64_request_size);
  CHECK(abi_ring::entries(abi::x86_32, 1) == 32u);
  CHECK(abi_ring::entries(abi::x86_64, 1) == 32u);
  CHECK(abi_ring::entries(abi::x86_32, 16) == 512u);
  for (unsigned order = 0; order <= 8; ++order) {
    const std::size_t bytes = (std::size_t{1} << order) * xbd::xen::page_size;
    std::vector<std::byte> mem(bytes);
    auto* s32 = reinterpret_cast<xbd_test_i386_blkif_sring*>(mem.data());
    auto* s64 = reinterpret_cast<blkif_sring*>(mem.data());
    CAPTURE(order);
    CHECK(abi_ring::entries(abi::x86_32, std::size_t{1} << order) == __RING_SIZE(s32, bytes));
    CHECK(abi_ring::entries(abi::x86_64, std::size_t{1} << order) == __RING_SIZE(s64, bytes));
    CHECK(abi_ring::entries(abi::x86_32, std::size_t{1} << order) == __CONST_RING_SIZE(xbd_test_i386_blkif, bytes));
  }
}

// ---------------------------------------------------------------------------
// abi_ring end to end in the x86_32 layout, with the frontend's side written
// byte by byte at ring.h's offsets: header {req_prod 0, req_event 4,
// rsp_prod 8, rsp_event 12}, entries of 108 bytes from 64.

namespace {

struct i386_front {
  std::vector<std::byte> mem = std::vector<std::byte>(xbd::xen::page_size);
  std::uint32_t req_prod = 0;

  std::uint32_t index(std::size_t off) const {
    std::uint32_t v;
    std::memcpy(&v, mem.data() + off, 4);
    return v;
  }
  void set_index(std::size_t off, std::uint32_t v) { std::memcpy(mem.data() + off, &v, 4); }
  std::byte* entry(std::uint32_t i) { return mem.data() + 64 + (i % 32) * 108; }
  template <class T>
  void put(std::uint32_t i, std::size_t off, T v) {
    std::memcpy(entry(i) + off, &v, sizeof v);
  }
  template <class T>
  T get(std::uint32_t i, std::size_t off) {
    T v;
    std::memcpy(&v, entry(i) + off, sizeof v);
    return v;
  }
  void read(std::uint64_t id, std::uint64_t sector, std::uint32_t gref) {
    std::memset(entry(req_prod), 0, 108);
    put(req_prod, 0, std::uint8_t{BLKIF_OP_READ});
    put(req_prod, 1, std::uint8_t{1});
    put(req_prod, 4, id);
    put(req_prod, 12, sector);
    put(req_prod, 20, gref);
    put(req_prod, 25, std::uint8_t{7});
    ++req_prod;
  }
  void publish() { set_index(0, req_prod); }
};

}  // namespace

TEST_CASE("an x86_32 ring round trip: 108-byte strides in, 12-byte responses out, across wrap-around") {
  i386_front fe;
  fe.set_index(4, 1);   // req_event
  fe.set_index(12, 1);  // rsp_event
  auto ring = abi_ring::attach(abi::x86_32, fe.mem);
  REQUIRE(ring.has_value());
  CHECK(ring->layout() == abi::x86_32);
  CHECK(ring->size() == 32u);

  // Three rounds of 20 requests: the second and third wrap the 32 entries.
  std::uint64_t next_id = 0x100000000ull;
  for (int round = 0; round < 3; ++round) {
    const std::uint32_t first = fe.req_prod;
    for (int i = 0; i < 20; ++i, ++next_id) fe.read(next_id, next_id * 8, static_cast<std::uint32_t>(next_id));
    fe.publish();
    auto n = ring->unconsumed_requests();
    REQUIRE(n.has_value());
    REQUIRE(*n == 20u);
    for (std::uint32_t i = 0; i < 20; ++i) {
      wire_request r = ring->consume_request();
      const std::uint64_t want = next_id - 20 + i;
      CHECK(r.operation == BLKIF_OP_READ);
      CHECK(r.id == want);
      CHECK(r.sector_number == want * 8);
      CHECK(r.nr_segments == 1);
      CHECK(r.seg[0].gref == static_cast<std::uint32_t>(want));
      CHECK(r.seg[0].last_sect == 7);
    }
    CHECK(ring->in_flight() == 20u);
    // Answer in reverse order; each response lands in the next slot.
    for (std::uint32_t i = 0; i < 20; ++i) ring->put_response(next_id - 1 - i, BLKIF_OP_READ, BLKIF_RSP_OKAY);
    CHECK(ring->push_responses());  // rsp_event asked for it
    CHECK(fe.index(8) == fe.req_prod);
    CHECK(ring->in_flight() == 0u);
    for (std::uint32_t i = 0; i < 20; ++i) {
      const std::uint32_t slot = first + i;
      CHECK(fe.get<std::uint64_t>(slot, 0) == next_id - 1 - i);
      CHECK(fe.get<std::uint8_t>(slot, 8) == BLKIF_OP_READ);
      CHECK(fe.get<std::uint8_t>(slot, 9) == 0);
      CHECK(fe.get<std::int16_t>(slot, 10) == BLKIF_RSP_OKAY);
      // Past the response, the request's own bytes are still there:
      // nothing of ours was written.
      CHECK(fe.get<std::uint32_t>(slot, 20) == static_cast<std::uint32_t>(next_id - 20 + i));
    }
    fe.set_index(12, fe.req_prod + 1);  // the frontend re-arms rsp_event
    auto more = ring->final_check_for_requests();
    REQUIRE(more.has_value());
    CHECK_FALSE(*more);
    CHECK(fe.index(4) == fe.req_prod + 1);  // req_event re-armed by the backend
  }
}

TEST_CASE("an x86_32 ring refuses a producer index beyond its 32 entries") {
  i386_front fe;
  fe.set_index(0, 33);
  CHECK_FALSE(abi_ring::attach(abi::x86_32, fe.mem).has_value());
  fe.set_index(0, 0);
  auto ring = abi_ring::attach(abi::x86_32, fe.mem);
  REQUIRE(ring.has_value());
  fe.set_index(0, 40);
  CHECK_FALSE(ring->unconsumed_requests().has_value());
}

TEST_CASE("both layouts attach, and x86_64 slots are still 112 bytes apart") {
  std::vector<std::byte> mem(xbd::xen::page_size);
  auto put = [&](std::size_t off, auto v) { std::memcpy(mem.data() + off, &v, sizeof v); };
  put(64 + 112 + 0, std::uint8_t{BLKIF_OP_FLUSH_DISKCACHE});
  put(64 + 112 + 8, std::uint64_t{77});
  put(0, std::uint32_t{2});
  auto ring = abi_ring::attach(abi::x86_64, mem);
  REQUIRE(ring.has_value());
  CHECK(ring->layout() == abi::x86_64);
  (void)ring->consume_request();
  wire_request r = ring->consume_request();
  CHECK(r.operation == BLKIF_OP_FLUSH_DISKCACHE);
  CHECK(r.id == 77u);
}
