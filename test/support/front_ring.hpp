// The frontend's end of a shared ring, for the tests and the blkfront
// simulator (the daemon only ever holds the backend's end, asio_xen/ring.hpp).
#pragma once

#include "asio_xen/ring.hpp"

#include <atomic>
#include <cstring>

namespace xbd::asio_xen {

// The frontend end: produces requests, consumes responses. Used by tests and
// the blkfront simulator.
template <class Req, class Rsp>
class front_ring : public ring_base<Req, Rsp> {
  using base = ring_base<Req, Rsp>;
  using base::hdr_;
  using base::size_;

 public:
  // Initialises the shared page(s) (SHARED_RING_INIT + FRONT_RING_INIT).
  static result<front_ring> init(std::span<std::byte> mem) {
    if (ring_detail::ring_entries(mem.size(), base::entry_size) == 0) return make_error_code(errc::bad_ring_size);
    std::memset(mem.data(), 0, ring_detail::header_size);
    front_ring r(mem);
    r.hdr_.store(ring_detail::req_event_offset, 1);
    r.hdr_.store(ring_detail::rsp_event_offset, 1);
    return r;
  }

  std::uint32_t free_requests() const { return size_ - (req_prod_pvt_ - rsp_cons_); }

  // The slot of the next request; published by push_requests().
  std::span<std::byte, ring_detail::entry_size<Req, Rsp>()> next_request_slot() {
    std::byte* s = this->slot(req_prod_pvt_);
    ++req_prod_pvt_;
    return std::span<std::byte, base::entry_size>(s, base::entry_size);
  }
  void put_request(const Req& r) {
    auto s = next_request_slot();
    std::memcpy(s.data(), &r, sizeof r);
  }

  // RING_PUSH_REQUESTS_AND_CHECK_NOTIFY.
  bool push_requests() {
    ring_index old_prod = hdr_.load(ring_detail::req_prod_offset);
    ring_index new_prod = req_prod_pvt_;
    xen_wmb();
    hdr_.store(ring_detail::req_prod_offset, new_prod);
    xen_mb();
    ring_index event = hdr_.load(ring_detail::req_event_offset);
    return static_cast<ring_index>(new_prod - event) < static_cast<ring_index>(new_prod - old_prod);
  }

  std::uint32_t unconsumed_responses() const {
    ring_index prod = hdr_.load(ring_detail::rsp_prod_offset);
    xen_rmb();
    return prod - rsp_cons_;
  }

  Rsp consume_response() {
    Rsp r;
    std::memcpy(&r, this->slot(rsp_cons_), sizeof r);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    ++rsp_cons_;
    return r;
  }

  // RING_FINAL_CHECK_FOR_RESPONSES.
  bool final_check_for_responses() {
    if (unconsumed_responses()) return true;
    hdr_.store(ring_detail::rsp_event_offset, rsp_cons_ + 1);
    xen_mb();
    return unconsumed_responses() != 0;
  }

  // Raw access for tests that play a hostile frontend.
  void set_shared_req_prod(ring_index v) { hdr_.store(ring_detail::req_prod_offset, v); }
  ring_index req_prod_pvt() const { return req_prod_pvt_; }

 private:
  explicit front_ring(std::span<std::byte> mem) : base(mem) {}
  ring_index req_prod_pvt_ = 0;
  ring_index rsp_cons_ = 0;
};

}  // namespace xbd::asio_xen
