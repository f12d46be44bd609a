#include "asio_xen/ring.hpp"
#include "test/support/front_ring.hpp"

#include <doctest/doctest.h>

#include <cstring>
#include <vector>

using namespace xbd::asio_xen;

namespace {

using back = back_ring<blkif_request, blkif_response>;
using front = front_ring<blkif_request, blkif_response>;

// A packed 108-byte request like blkif's x86_32 layout, to show the ring is
// generic over the entry type.
#pragma pack(push, 4)
struct packed_req {
  std::uint8_t op, nr;
  std::uint16_t handle;
  std::uint64_t id, sector;
  std::uint8_t segs[88];
};
struct packed_rsp {
  std::uint64_t id;
  std::uint8_t op;
  std::int16_t status;
};
#pragma pack(pop)

struct pages {
  std::vector<std::byte> mem;
  explicit pages(std::size_t n) : mem(n * xbd::xen::page_size) {}
  std::span<std::byte> span() { return mem; }
};

blkif_request request(std::uint64_t id) {
  blkif_request r{};
  r.operation = BLKIF_OP_READ;
  r.nr_segments = 1;
  r.id = id;
  r.sector_number = id * 8;
  return r;
}

void respond(back& b, std::uint64_t id) {
  auto slot = b.next_response_slot();
  std::memset(slot.data(), 0, slot.size());
  std::memcpy(slot.data() + offsetof(blkif_response, id), &id, sizeof id);
}

std::uint32_t shared_index(pages& p, std::size_t off) {
  std::uint32_t v;
  std::memcpy(&v, p.mem.data() + off, 4);
  return v;
}

}  // namespace

TEST_CASE("ring sizes follow ring.h: 32 entries per page, 512 in 16 pages") {
  CHECK(back::entries_for_pages(1) == 32u);
  CHECK(back::entries_for_pages(2) == 64u);
  CHECK(back::entries_for_pages(16) == 512u);
  CHECK(back::entries_for_pages(1) == __CONST_RING_SIZE(blkif, 4096));
  CHECK(back::entry_size == sizeof(blkif_request));
  CHECK(back_ring<packed_req, packed_rsp>::entry_size == 108u);
  CHECK(back_ring<packed_req, packed_rsp>::entries_for_pages(1) == 32u);
}

TEST_CASE("requests flow front to back and responses back to front") {
  pages p(1);
  auto f = front::init(p.span());
  REQUIRE(f.has_value());
  auto b = back::attach(p.span());
  REQUIRE(b.has_value());
  CHECK(b->size() == 32u);
  for (std::uint64_t i = 0; i < 5; ++i) f->put_request(request(i));
  f->push_requests();
  REQUIRE(b->unconsumed_requests().value() == 5u);
  for (std::uint64_t i = 0; i < 5; ++i) {
    blkif_request r = b->consume_request();
    CHECK(r.id == i);
    CHECK(r.sector_number == i * 8);
    respond(*b, r.id);
  }
  CHECK(b->unconsumed_requests().value() == 0u);
  b->push_responses();
  REQUIRE(f->unconsumed_responses() == 5u);
  for (std::uint64_t i = 0; i < 5; ++i) CHECK(f->consume_response().id == i);
}

TEST_CASE("a consumed request is a private copy: later writes to the slot do not reach it (XSA-155)") {
  pages p(1);
  auto f = front::init(p.span());
  auto b = back::attach(p.span());
  f->put_request(request(1));
  f->push_requests();
  REQUIRE(b->unconsumed_requests().value() == 1u);
  blkif_request r = b->consume_request();
  // The guest rewrites the slot after we copied it.
  blkif_request evil = request(1);
  evil.nr_segments = 200;
  std::memcpy(p.mem.data() + 64, &evil, sizeof evil);
  CHECK(r.nr_segments == 1);
}

TEST_CASE("responses notify only when the frontend asked (rsp_event)") {
  pages p(1);
  auto f = front::init(p.span());
  auto b = back::attach(p.span());
  for (int i = 0; i < 3; ++i) f->put_request(request(i));
  f->push_requests();
  // rsp_event starts at 1: the first response crosses it.
  (void)b->consume_request();
  respond(*b, 0);
  CHECK(b->push_responses());
  // The frontend has not re-armed: no notification for the next one.
  (void)b->consume_request();
  respond(*b, 1);
  CHECK_FALSE(b->push_responses());
  // It consumes and re-arms (final check), so the next response notifies.
  (void)f->consume_response();
  (void)f->consume_response();
  CHECK_FALSE(f->final_check_for_responses());
  (void)b->consume_request();
  respond(*b, 2);
  CHECK(b->push_responses());
}

TEST_CASE("requests notify only when the backend asked (req_event) and the final check re-arms") {
  pages p(1);
  auto f = front::init(p.span());
  auto b = back::attach(p.span());
  f->put_request(request(0));
  CHECK(f->push_requests());  // req_event starts at 1
  f->put_request(request(1));
  CHECK_FALSE(f->push_requests());  // backend has not re-armed
  REQUIRE(b->unconsumed_requests().value() == 2u);
  (void)b->consume_request();
  (void)b->consume_request();
  // Nothing left: the final check asks for an event at the next request.
  CHECK_FALSE(b->final_check_for_requests().value());
  CHECK(shared_index(p, 4) == b->req_cons() + 1);
  f->put_request(request(2));
  CHECK(f->push_requests());
}

TEST_CASE("the final check finds a request published before it re-armed") {
  pages p(1);
  auto f = front::init(p.span());
  auto b = back::attach(p.span());
  f->put_request(request(0));
  f->push_requests();
  // A request is there: final check says "more", without sleeping.
  CHECK(b->final_check_for_requests().value());
}

TEST_CASE("a producer index beyond the ring is an overflow, not a request count") {
  pages p(1);
  auto f = front::init(p.span());
  auto b = back::attach(p.span());
  f->set_shared_req_prod(33);
  CHECK(b->unconsumed_requests().error() == make_error_code(errc::ring_overflow));
  CHECK(b->final_check_for_requests().error() == make_error_code(errc::ring_overflow));
  f->set_shared_req_prod(32);
  CHECK(b->unconsumed_requests().value() == 32u);
  // Going backwards is just as impossible.
  f->set_shared_req_prod(0xffffffffu);
  CHECK(b->unconsumed_requests().error() == make_error_code(errc::ring_overflow));
}

TEST_CASE("requests are not consumed beyond the response space") {
  pages p(1);
  auto f = front::init(p.span());
  auto b = back::attach(p.span());
  for (int i = 0; i < 32; ++i) f->put_request(request(i));
  f->push_requests();
  REQUIRE(b->unconsumed_requests().value() == 32u);
  for (int i = 0; i < 32; ++i) (void)b->consume_request();
  CHECK(b->in_flight() == 32u);
  // The guest claims more before we answered anything: that is an overflow.
  f->set_shared_req_prod(33);
  CHECK_FALSE(b->unconsumed_requests().has_value());
  f->set_shared_req_prod(32);
  respond(*b, 0);
  b->push_responses();
  f->set_shared_req_prod(33);
  CHECK(b->unconsumed_requests().value() == 1u);
}

TEST_CASE("attach resumes at the published responses and refuses impossible indices") {
  pages p(1);
  std::uint32_t idx[4] = {100, 1, 90, 1};  // req_prod, req_event, rsp_prod, rsp_event
  std::memcpy(p.mem.data(), idx, sizeof idx);
  auto b = back::attach(p.span());
  REQUIRE(b.has_value());
  CHECK(b->req_cons() == 90u);
  CHECK(b->unconsumed_requests().value() == 10u);
  std::uint32_t bad[4] = {200, 1, 90, 1};
  std::memcpy(p.mem.data(), bad, sizeof bad);
  CHECK(back::attach(p.span()).error() == make_error_code(errc::ring_overflow));
  std::vector<std::byte> tiny(32);
  CHECK(back::attach(tiny).error() == make_error_code(errc::bad_ring_size));
}

TEST_CASE("indices wrap around 2^32") {
  pages p(1);
  std::uint32_t idx[4] = {0xfffffff0u, 1, 0xfffffff0u, 1};
  std::memcpy(p.mem.data(), idx, sizeof idx);
  auto b = back::attach(p.span());
  REQUIRE(b.has_value());
  // Play the frontend by hand: 20 requests across the wrap.
  for (std::uint32_t i = 0; i < 20; ++i) {
    blkif_request r = request(i);
    std::uint32_t slot = (0xfffffff0u + i) & 31;
    std::memcpy(p.mem.data() + 64 + slot * sizeof(blkif_request), &r, sizeof r);
  }
  std::uint32_t prod = 0xfffffff0u + 20;  // wraps to 4
  std::memcpy(p.mem.data(), &prod, 4);
  REQUIRE(b->unconsumed_requests().value() == 20u);
  for (std::uint64_t i = 0; i < 20; ++i) {
    CHECK(b->consume_request().id == i);
    respond(*b, i);
  }
  b->push_responses();
  CHECK(shared_index(p, 8) == 4u);
}

TEST_CASE("a multi-page ring uses all its pages") {
  pages p(16);
  auto f = front::init(p.span());
  auto b = back::attach(p.span());
  REQUIRE(b->size() == 512u);
  for (std::uint64_t i = 0; i < 512; ++i) f->put_request(request(i));
  f->push_requests();
  REQUIRE(b->unconsumed_requests().value() == 512u);
  for (std::uint64_t i = 0; i < 512; ++i) CHECK(b->consume_request().id == i);
}
