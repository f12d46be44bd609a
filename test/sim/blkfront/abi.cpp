#include "blkfront/abi.hpp"

#include <algorithm>
#include <cassert>
#include <cstring>

#include "asio_xen/xen.hpp"

namespace xbd::sim::blkfront {
namespace {

template <typename T>
void store(std::span<std::byte> b, std::size_t off, T v) {
  assert(off + sizeof v <= b.size());
  std::memcpy(b.data() + off, &v, sizeof v);
}

template <typename T>
T load(std::span<const std::byte> b, std::size_t off) {
  assert(off + sizeof(T) <= b.size());
  T v;
  std::memcpy(&v, b.data() + off, sizeof v);
  return v;
}

// x86_64-abi: natural alignment. The offsets are spelled out rather than
// taken from blkif.h so that the same code shape serves a layout the public
// headers do not define (x86_32); on an x86_64 build they are checked
// against the native structs below.
namespace x64 {
constexpr std::size_t slot = 112;
constexpr std::size_t req_operation = 0, req_nr_segments = 1, req_handle = 2, req_id = 8,
                      req_sector = 16, req_seg = 24;
constexpr std::size_t ind_operation = 0, ind_indirect_op = 1, ind_nr_segments = 2, ind_id = 8,
                      ind_sector = 16, ind_handle = 24, ind_grefs = 28;
constexpr std::size_t rsp_id = 0, rsp_operation = 8, rsp_status = 10;
}  // namespace x64

#if defined(__x86_64__)
static_assert(sizeof(blkif_request_t) == x64::slot);
static_assert(sizeof(union blkif_sring_entry) == x64::slot);
static_assert(offsetof(blkif_request_t, operation) == x64::req_operation);
static_assert(offsetof(blkif_request_t, nr_segments) == x64::req_nr_segments);
static_assert(offsetof(blkif_request_t, handle) == x64::req_handle);
static_assert(offsetof(blkif_request_t, id) == x64::req_id);
static_assert(offsetof(blkif_request_t, sector_number) == x64::req_sector);
static_assert(offsetof(blkif_request_t, seg) == x64::req_seg);
static_assert(sizeof(struct blkif_request_segment) == segment_size);
static_assert(offsetof(struct blkif_request_segment, first_sect) == 4);
static_assert(offsetof(struct blkif_request_segment, last_sect) == 5);
static_assert(offsetof(blkif_request_indirect_t, indirect_op) == x64::ind_indirect_op);
static_assert(offsetof(blkif_request_indirect_t, nr_segments) == x64::ind_nr_segments);
static_assert(offsetof(blkif_request_indirect_t, id) == x64::ind_id);
static_assert(offsetof(blkif_request_indirect_t, sector_number) == x64::ind_sector);
static_assert(offsetof(blkif_request_indirect_t, handle) == x64::ind_handle);
static_assert(offsetof(blkif_request_indirect_t, indirect_grefs) == x64::ind_grefs);
static_assert(offsetof(blkif_response_t, id) == x64::rsp_id);
static_assert(offsetof(blkif_response_t, operation) == x64::rsp_operation);
static_assert(offsetof(blkif_response_t, status) == x64::rsp_status);
static_assert(offsetof(struct blkif_sring, ring) == ring_header_size);
#endif

void put_segment(std::span<std::byte> b, std::size_t off, const segment& s) {
  store(b, off, s.gref);
  store(b, off + 4, s.first_sect);
  store(b, off + 5, s.last_sect);
}

class x86_64_abi final : public abi {
 public:
  protocol which() const override { return protocol::x86_64; }
  std::string_view name() const override { return XEN_IO_PROTO_ABI_X86_64; }
  std::size_t slot_size() const override { return x64::slot; }

  void put(std::span<std::byte> slot, const direct_request& r) const override {
    using namespace x64;
    std::fill(slot.begin(), slot.begin() + x64::slot, std::byte{0});
    store(slot, req_operation, r.operation);
    store(slot, req_nr_segments, r.nr_segments);
    store(slot, req_handle, r.handle);
    store(slot, req_id, r.id);
    store(slot, req_sector, r.sector_number);
    const std::size_t n = std::min<std::size_t>(r.segs.size(), max_direct_segments);
    for (std::size_t i = 0; i < n; ++i) put_segment(slot, req_seg + i * segment_size, r.segs[i]);
  }

  void put(std::span<std::byte> slot, const indirect_request& r) const override {
    using namespace x64;
    std::fill(slot.begin(), slot.begin() + x64::slot, std::byte{0});
    store(slot, ind_operation, op::indirect);
    store(slot, ind_indirect_op, r.indirect_op);
    store(slot, ind_nr_segments, r.nr_segments);
    store(slot, ind_id, r.id);
    store(slot, ind_sector, r.sector_number);
    store(slot, ind_handle, r.handle);
    const std::size_t n = std::min<std::size_t>(r.indirect_grefs.size(), max_indirect_pages);
    for (std::size_t i = 0; i < n; ++i) store(slot, ind_grefs + i * 4, r.indirect_grefs[i]);
  }

  response get_response(std::span<const std::byte> slot) const override {
    using namespace x64;
    return response{load<std::uint64_t>(slot, rsp_id), load<std::uint8_t>(slot, rsp_operation),
                    load<std::int16_t>(slot, rsp_status)};
  }
};

}  // namespace

std::unique_ptr<abi> make_abi(std::string_view name, std::string* why) {
  if (name == XEN_IO_PROTO_ABI_X86_64 || name == "native") return std::make_unique<x86_64_abi>();
  if (why) {
    if (name == XEN_IO_PROTO_ABI_X86_32 || name == XEN_IO_PROTO_ABI_ARM)
      *why = std::string(name) + " is not implemented yet (only " XEN_IO_PROTO_ABI_X86_64 ")";
    else
      *why = "unknown protocol '" + std::string(name) + "'";
  }
  return nullptr;
}

unsigned ring_entries(std::size_t slot_size, unsigned pages) {
  const std::size_t bytes = std::size_t{pages} * xen::page_size;
  if (bytes <= ring_header_size || slot_size == 0) return 0;
  std::size_t n = (bytes - ring_header_size) / slot_size;
  if (n == 0) return 0;
  std::size_t p = 1;
  while (p * 2 <= n) p *= 2;
  return static_cast<unsigned>(p);
}

void put_indirect_segment(std::span<std::byte> page, unsigned index, const segment& s) {
  const std::size_t off = std::size_t{index} * segment_size;
  std::fill(page.begin() + off, page.begin() + off + segment_size, std::byte{0});
  put_segment(page, off, s);
}

segment get_indirect_segment(std::span<const std::byte> page, unsigned index) {
  const std::size_t off = std::size_t{index} * segment_size;
  return segment{load<std::uint32_t>(page, off), load<std::uint8_t>(page, off + 4),
                 load<std::uint8_t>(page, off + 5)};
}

}  // namespace xbd::sim::blkfront
