// ring: typed views of a shared I/O ring (xen/io/ring.h) for either end.
//
// The layout is ring.h's: a 64-byte header {req_prod, req_event, rsp_prod,
// rsp_event, padding} followed by a power-of-two number of entries, each the
// size of the union of the request and response types. Nothing here knows
// what the entries mean: the ABI layer supplies the types (and for packed
// 32-bit layouts, byte-exact structs).
//
// The peer is untrusted and writes the same memory concurrently, so:
//  - indices are read once per use through atomic_ref (no torn or cached
//    reads) and ordered with explicit fences where ring.h puts its barriers;
//  - a request is copied out of its slot exactly once (XSA-155) and the copy
//    is all the caller ever sees;
//  - responses are written through a byte span of the slot, so the caller
//    decides what every byte is (XSA-216: no padding from our stack leaks);
//  - a producer index that claims more entries than the ring holds is
//    reported (errc::ring_overflow) rather than believed.
#pragma once

#include "asio_xen/error.hpp"
#include "asio_xen/xen.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>

namespace xbd::asio_xen {

using ring_index = std::uint32_t;  // RING_IDX: free-running, wraps modulo 2^32

namespace ring_detail {

inline constexpr std::size_t header_size = 64;
inline constexpr std::size_t req_prod_offset = 0;
inline constexpr std::size_t req_event_offset = 4;
inline constexpr std::size_t rsp_prod_offset = 8;
inline constexpr std::size_t rsp_event_offset = 12;

// Every blkif ring type shares this header; check ours against ring.h's.
static_assert(offsetof(blkif_sring, req_prod) == req_prod_offset);
static_assert(offsetof(blkif_sring, req_event) == req_event_offset);
static_assert(offsetof(blkif_sring, rsp_prod) == rsp_prod_offset);
static_assert(offsetof(blkif_sring, rsp_event) == rsp_event_offset);
static_assert(offsetof(blkif_sring, ring) == header_size);

// What a C union of the two would occupy.
template <class Req, class Rsp>
constexpr std::size_t entry_size() {
  constexpr std::size_t size = std::max(sizeof(Req), sizeof(Rsp));
  constexpr std::size_t align = std::max(alignof(Req), alignof(Rsp));
  return (size + align - 1) / align * align;
}

// __RING_SIZE: the largest power of two that fits.
constexpr std::uint32_t ring_entries(std::size_t bytes, std::size_t entry) {
  if (bytes <= header_size) return 0;
  std::size_t n = (bytes - header_size) / entry;
  if (n == 0) return 0;
  return static_cast<std::uint32_t>(std::bit_floor(n));
}

class shared_header {
 public:
  explicit shared_header(std::byte* base) : base_(base) {}
  ring_index load(std::size_t off) const {
    return std::atomic_ref<ring_index>(*reinterpret_cast<ring_index*>(base_ + off)).load(std::memory_order_relaxed);
  }
  void store(std::size_t off, ring_index v) const {
    std::atomic_ref<ring_index>(*reinterpret_cast<ring_index*>(base_ + off)).store(v, std::memory_order_relaxed);
  }
  std::byte* base() const { return base_; }

 private:
  std::byte* base_;
};

}  // namespace ring_detail

template <class Req, class Rsp>
requires std::is_trivially_copyable_v<Req> && std::is_trivially_copyable_v<Rsp>
class ring_base {
 public:
  static constexpr std::size_t entry_size = ring_detail::entry_size<Req, Rsp>();
  static_assert(ring_detail::ring_entries(xen::page_size, ring_detail::entry_size<Req, Rsp>()) > 0);

  // Entries in a ring of `pages` pages.
  static constexpr std::uint32_t entries_for_pages(std::size_t pages) {
    return ring_detail::ring_entries(pages * xen::page_size, entry_size);
  }

  std::uint32_t size() const { return size_; }

 protected:
  explicit ring_base(std::span<std::byte> mem)
      : hdr_(mem.data()), size_(ring_detail::ring_entries(mem.size(), entry_size)) {}

  std::byte* slot(ring_index i) const {
    return hdr_.base() + ring_detail::header_size + static_cast<std::size_t>(i & (size_ - 1)) * entry_size;
  }

  ring_detail::shared_header hdr_;
  std::uint32_t size_;
};

// The backend end: consumes requests, produces responses.
template <class Req, class Rsp>
class back_ring : public ring_base<Req, Rsp> {
  using base = ring_base<Req, Rsp>;
  using base::hdr_;
  using base::size_;

 public:
  // Attaches to a ring the frontend initialised, resuming where its
  // published responses end (BACK_RING_ATTACH): a fresh ring starts at 0, and
  // a backend that restarts mid-connection picks up the unanswered requests.
  // A ring whose indices are already impossible is refused.
  static result<back_ring> attach(std::span<std::byte> mem) {
    if (base::entries_for_pages(1) == 0 || ring_detail::ring_entries(mem.size(), base::entry_size) == 0)
      return make_error_code(errc::bad_ring_size);
    back_ring r(mem);
    ring_index rsp_prod = r.hdr_.load(ring_detail::rsp_prod_offset);
    ring_index req_prod = r.hdr_.load(ring_detail::req_prod_offset);
    if (req_prod - rsp_prod > r.size_) return make_error_code(errc::ring_overflow);
    r.req_cons_ = rsp_prod;
    r.rsp_prod_pvt_ = rsp_prod;
    return r;
  }

  // Requests published and not yet consumed that there is response space
  // for. errc::ring_overflow when the frontend claims more requests than the
  // ring can hold (a broken or hostile frontend: stop using this ring).
  result<std::uint32_t> unconsumed_requests() const {
    ring_index prod = hdr_.load(ring_detail::req_prod_offset);
    xen_rmb();  // entries are read only after the index that covers them
    if (prod - rsp_prod_pvt_ > size_) return make_error_code(errc::ring_overflow);
    std::uint32_t published = prod - req_cons_;
    std::uint32_t space = size_ - (req_cons_ - rsp_prod_pvt_);
    return std::min(published, space);
  }

  // Copies the next request out of shared memory, exactly once (XSA-155).
  // Call only while unconsumed_requests() said there is one.
  Req consume_request() {
    Req r;
    std::memcpy(&r, this->slot(req_cons_), sizeof r);
    // The compiler must not re-read the slot in place of the copy.
    std::atomic_signal_fence(std::memory_order_seq_cst);
    ++req_cons_;
    return r;
  }

  // Puts the last request taken back: the next consume_request() copies it
  // again (a request the backend cannot start yet stays in the ring).
  void unconsume_request() { --req_cons_; }

  // The slot of the next response, for the caller to fill completely;
  // published by push_responses().
  std::span<std::byte, ring_detail::entry_size<Req, Rsp>()> next_response_slot() {
    std::byte* s = this->slot(rsp_prod_pvt_);
    ++rsp_prod_pvt_;
    return std::span<std::byte, base::entry_size>(s, base::entry_size);
  }

  // Publishes the responses written so far (RING_PUSH_RESPONSES_AND_CHECK_
  // NOTIFY); true when the frontend asked to be notified of them.
  bool push_responses() {
    ring_index old_prod = hdr_.load(ring_detail::rsp_prod_offset);
    ring_index new_prod = rsp_prod_pvt_;
    xen_wmb();  // the frontend sees the responses before the index
    hdr_.store(ring_detail::rsp_prod_offset, new_prod);
    xen_mb();  // publish the index before reading rsp_event
    ring_index event = hdr_.load(ring_detail::rsp_event_offset);
    return static_cast<ring_index>(new_prod - event) < static_cast<ring_index>(new_prod - old_prod);
  }

  // Before sleeping (RING_FINAL_CHECK_FOR_REQUESTS): asks for an event at the
  // next request, then looks once more, so a request published in between
  // is not left waiting for an event that will never come. True: there is
  // more to do now.
  result<bool> final_check_for_requests() {
    auto n = unconsumed_requests();
    if (!n) return result<bool>(boost::system::in_place_error, n.error());
    if (*n) return true;
    hdr_.store(ring_detail::req_event_offset, req_cons_ + 1);
    xen_mb();
    n = unconsumed_requests();
    if (!n) return result<bool>(boost::system::in_place_error, n.error());
    return *n != 0;
  }

  ring_index req_cons() const { return req_cons_; }
  ring_index rsp_prod_pvt() const { return rsp_prod_pvt_; }
  // Requests consumed and not yet answered.
  std::uint32_t in_flight() const { return req_cons_ - rsp_prod_pvt_; }

  // The shared indices as they are now (recovery checks a journal against
  // them).
  ring_index shared_rsp_prod() const { return hdr_.load(ring_detail::rsp_prod_offset); }
  ring_index shared_req_prod() const { return hdr_.load(ring_detail::req_prod_offset); }
  // Resumes with private indices a journal kept (a backend restarted after
  // an unclean exit), instead of attach()'s guess from the shared ones.
  void resume_at(ring_index req_cons, ring_index rsp_prod_pvt) {
    req_cons_ = req_cons;
    rsp_prod_pvt_ = rsp_prod_pvt;
  }

 private:
  explicit back_ring(std::span<std::byte> mem) : base(mem) {}
  ring_index req_cons_ = 0;
  ring_index rsp_prod_pvt_ = 0;
};

}  // namespace xbd::asio_xen
