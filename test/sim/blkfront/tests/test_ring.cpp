#include <doctest/doctest.h>

#include <cstdlib>
#include <cstring>
#include <memory>

#include "asio_xen/xen.hpp"
#include "blkfront/ring.hpp"

using namespace xbd::sim::blkfront;

namespace {
struct page_buffer {
  explicit page_buffer(unsigned pages)
      : size(pages * 4096u), mem(static_cast<std::byte*>(std::aligned_alloc(4096, size))) {
    std::memset(mem, 0xcc, size);
  }
  ~page_buffer() { std::free(mem); }
  std::span<std::byte> span() { return {mem, size}; }
  blkif_sring_t* sring() { return reinterpret_cast<blkif_sring_t*>(mem); }
  std::size_t size;
  std::byte* mem;
};
}  // namespace

TEST_CASE("init_shared: indices 0, event indices 1, header padding zeroed (SHARED_RING_INIT)") {
  page_buffer b(1);
  front_ring r(b.span(), 112);
  r.init_shared();
  CHECK(b.sring()->req_prod == 0);
  CHECK(b.sring()->rsp_prod == 0);
  CHECK(b.sring()->req_event == 1);
  CHECK(b.sring()->rsp_event == 1);
  for (std::size_t i = 16; i < 64; ++i) CHECK(b.mem[i] == std::byte{0});
  CHECK(r.size() == 32);
  CHECK(r.free_requests() == 32);
}

TEST_CASE("slots are consecutive after the 64-byte header and wrap at the ring size") {
  page_buffer b(2);
  front_ring r(b.span(), 112);
  r.init_shared();
  CHECK(r.size() == 64);
  CHECK(r.slot(0).data() == b.mem + 64);
  CHECK(r.slot(1).data() == b.mem + 64 + 112);
  CHECK(r.slot(64).data() == r.slot(0).data());
  CHECK(r.slot(0xffffffffu).data() == r.slot(63).data());
}

TEST_CASE("push notifies only when the new requests cross the backend's req_event") {
  page_buffer b(1);
  front_ring r(b.span(), 112);
  r.init_shared();
  r.advance();
  CHECK(r.push_requests());  // req_event 1: the backend waits for request 1
  CHECK(b.sring()->req_prod == 1);

  b.sring()->req_event = 5;  // the backend will look again at request 5 by itself
  r.advance();
  r.advance();
  CHECK_FALSE(r.push_requests());  // prod 3 < 5
  r.advance();
  r.advance();
  CHECK(r.push_requests());  // prod 5 reaches req_event
  CHECK(b.sring()->req_prod == 5);
  CHECK(r.free_requests() == 27);
}

TEST_CASE("responses: counted from rsp_cons, and the final check re-arms rsp_event") {
  page_buffer b(1);
  front_ring r(b.span(), 112);
  r.init_shared();
  for (int i = 0; i < 3; ++i) r.advance();
  r.push_requests();
  CHECK(r.unconsumed_responses() == 0);
  CHECK_FALSE(r.final_check_for_responses());
  CHECK(b.sring()->rsp_event == 1);

  b.sring()->rsp_prod = 2;
  CHECK(r.unconsumed_responses() == 2);
  CHECK(r.final_check_for_responses());
  r.consume();
  r.consume();
  CHECK(r.free_requests() == 31);
  CHECK_FALSE(r.final_check_for_responses());
  CHECK(b.sring()->rsp_event == 3);  // wake me at the next response

  b.sring()->rsp_prod = 3;
  CHECK(r.final_check_for_responses());
}

TEST_CASE("raw access moves the shared req_prod without touching the private index") {
  page_buffer b(1);
  front_ring r(b.span(), 112);
  r.init_shared();
  r.advance();
  r.set_shared_req_prod(1000);
  CHECK(b.sring()->req_prod == 1000);
  CHECK(r.shared_req_prod() == 1000);
  CHECK(r.req_prod_pvt() == 1);
  r.set_req_prod_pvt(7);
  CHECK(r.req_prod_pvt() == 7);
}
