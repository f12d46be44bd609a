#include "blkfront/ring.hpp"

#include <algorithm>
#include <atomic>
#include <cassert>

#include "asio_xen/xen.hpp"
#include "blkfront/abi.hpp"

namespace xbd::sim::blkfront {
namespace {
// struct blkif_sring header (ring.h), identical for every ABI.
constexpr std::size_t off_req_prod = 0, off_req_event = 4, off_rsp_prod = 8, off_rsp_event = 12;
#if defined(__x86_64__)
static_assert(offsetof(struct blkif_sring, req_prod) == off_req_prod);
static_assert(offsetof(struct blkif_sring, req_event) == off_req_event);
static_assert(offsetof(struct blkif_sring, rsp_prod) == off_rsp_prod);
static_assert(offsetof(struct blkif_sring, rsp_event) == off_rsp_event);
#endif
}  // namespace

front_ring::front_ring(std::span<std::byte> mem, std::size_t slot_size) : mem_(mem), slot_size_(slot_size) {
  assert(mem.size() % xen::page_size == 0);
  nr_ents_ = ring_entries(slot_size, static_cast<unsigned>(mem.size() / xen::page_size));
}

// The peer writes these words concurrently: every access is a single
// 32-bit atomic one (the compiler may neither tear nor cache it), ordered by
// the explicit fences ring.h prescribes.
std::uint32_t front_ring::load(std::size_t off) const {
  auto* p = reinterpret_cast<std::uint32_t*>(mem_.data() + off);
  return std::atomic_ref<std::uint32_t>(*p).load(std::memory_order_relaxed);
}

void front_ring::store(std::size_t off, std::uint32_t v) {
  auto* p = reinterpret_cast<std::uint32_t*>(mem_.data() + off);
  std::atomic_ref<std::uint32_t>(*p).store(v, std::memory_order_relaxed);
}

void front_ring::init_shared() {
  std::fill(mem_.begin(), mem_.begin() + ring_header_size, std::byte{0});
  store(off_req_prod, 0);
  store(off_rsp_prod, 0);
  store(off_req_event, 1);
  store(off_rsp_event, 1);
  req_prod_pvt_ = 0;
  rsp_cons_ = 0;
  xen_wmb();
}

std::span<std::byte> front_ring::slot(std::uint32_t idx) {
  const std::size_t i = idx & (nr_ents_ - 1);
  return mem_.subspan(ring_header_size + i * slot_size_, slot_size_);
}

bool front_ring::push_requests() {
  const std::uint32_t old_prod = load(off_req_prod);
  const std::uint32_t new_prod = req_prod_pvt_;
  xen_wmb();
  store(off_req_prod, new_prod);
  xen_mb();
  const std::uint32_t event = load(off_req_event);
  return static_cast<std::uint32_t>(new_prod - event) < static_cast<std::uint32_t>(new_prod - old_prod);
}

std::uint32_t front_ring::unconsumed_responses() {
  const std::uint32_t prod = load(off_rsp_prod);
  xen_rmb();
  return prod - rsp_cons_;
}

bool front_ring::final_check_for_responses() {
  if (unconsumed_responses() != 0) return true;
  store(off_rsp_event, rsp_cons_ + 1);
  xen_mb();
  return unconsumed_responses() != 0;
}

std::uint32_t front_ring::shared_rsp_prod() const { return load(off_rsp_prod); }
std::uint32_t front_ring::shared_req_prod() const { return load(off_req_prod); }
std::uint32_t front_ring::shared_req_event() const { return load(off_req_event); }
std::uint32_t front_ring::shared_rsp_event() const { return load(off_rsp_event); }

void front_ring::set_shared_req_prod(std::uint32_t v) {
  xen_wmb();
  store(off_req_prod, v);
  xen_mb();
}

}  // namespace xbd::sim::blkfront
