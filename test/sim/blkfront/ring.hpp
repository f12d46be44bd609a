// The frontend's side of a shared ring (ring.h), over raw shared memory.
//
// Written by hand instead of with FRONT_RING_* so one type serves every ABI
// (the entry size is a run-time value) and raw mode can put the indices
// where a well-behaved frontend never would. The ordering is ring.h's:
// entries before the producer index (wmb), the producer index before reading
// the peer's event index (mb), the producer index before the entries it
// covers (rmb).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace xbd::sim::blkfront {

class front_ring {
 public:
  front_ring() = default;
  // `mem` is the whole shared area: the 64-byte header, then the entries.
  front_ring(std::span<std::byte> mem, std::size_t slot_size);

  // SHARED_RING_INIT + FRONT_RING_INIT: indices 0, event indices 1, header
  // padding zeroed. Only for a ring the backend has not attached yet.
  void init_shared();

  unsigned size() const { return nr_ents_; }
  std::size_t slot_size() const { return slot_size_; }

  std::uint32_t req_prod_pvt() const { return req_prod_pvt_; }
  std::uint32_t rsp_cons() const { return rsp_cons_; }
  unsigned free_requests() const { return nr_ents_ - (req_prod_pvt_ - rsp_cons_); }

  // The slot of the next private request; advance() makes it part of the
  // next push.
  std::span<std::byte> next_request_slot() { return slot(req_prod_pvt_); }
  void advance() { ++req_prod_pvt_; }
  std::span<std::byte> slot(std::uint32_t idx);

  // RING_PUSH_REQUESTS_AND_CHECK_NOTIFY: returns whether to notify.
  bool push_requests();

  // Responses the backend has published and we have not consumed yet.
  // Reading rsp_prod is followed by rmb(), so the entries it covers may be
  // read after this call.
  std::uint32_t unconsumed_responses();
  std::uint32_t shared_rsp_prod() const;
  // The response at rsp_cons; consume() moves past it.
  std::span<const std::byte> next_response_slot() { return slot(rsp_cons_); }
  void consume() { ++rsp_cons_; }
  // RING_FINAL_CHECK_FOR_RESPONSES: re-arms rsp_event and re-checks, so a
  // response published while we were deciding to sleep is never missed.
  bool final_check_for_responses();

  // Raw access for hostile-guest tests.
  std::uint32_t shared_req_prod() const;
  std::uint32_t shared_req_event() const;
  std::uint32_t shared_rsp_event() const;
  void set_shared_req_prod(std::uint32_t v);
  void set_req_prod_pvt(std::uint32_t v) { req_prod_pvt_ = v; }
  std::span<std::byte> memory() { return mem_; }

 private:
  std::uint32_t load(std::size_t off) const;
  void store(std::size_t off, std::uint32_t v);

  std::span<std::byte> mem_;
  std::size_t slot_size_ = 0;
  unsigned nr_ents_ = 0;
  std::uint32_t req_prod_pvt_ = 0;
  std::uint32_t rsp_cons_ = 0;
};

}  // namespace xbd::sim::blkfront
