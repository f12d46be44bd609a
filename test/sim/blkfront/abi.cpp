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

// Field offsets per layout. They are spelled out rather than taken from
// blkif.h because only one layout (the host's) exists as C structs; the
// assertions below tie each table to a compiler's view of the structs.
struct x64 {
  static constexpr protocol which = protocol::x86_64;
  static constexpr std::string_view name = XEN_IO_PROTO_ABI_X86_64;
  static constexpr std::size_t slot = 112, response_size = 16;
  static constexpr std::size_t req_operation = 0, req_nr_segments = 1, req_handle = 2, req_id = 8, req_sector = 16,
                               req_seg = 24;
  static constexpr std::size_t ind_operation = 0, ind_indirect_op = 1, ind_nr_segments = 2, ind_id = 8, ind_sector = 16,
                               ind_handle = 24, ind_grefs = 28;
  static constexpr std::size_t dis_operation = 0, dis_flag = 1, dis_handle = 2, dis_id = 8, dis_sector = 16,
                               dis_nr_sectors = 24;
  static constexpr std::size_t rsp_id = 0, rsp_operation = 8, rsp_status = 10;
};

// x86_32-abi: i386 aligns no scalar beyond 4 bytes, so `id` follows the
// handle directly. In the indirect request the 2-byte handle at 20 is
// followed by 2 bytes of padding so the grant refs start 4-aligned at 24,
// and blkif.h's `#ifdef __i386__` pad takes the struct to 64 bytes; all of
// it fits in the 108-byte slot.
struct x32 {
  static constexpr protocol which = protocol::x86_32;
  static constexpr std::string_view name = XEN_IO_PROTO_ABI_X86_32;
  static constexpr std::size_t slot = 108, response_size = 12;
  static constexpr std::size_t req_operation = 0, req_nr_segments = 1, req_handle = 2, req_id = 4, req_sector = 12,
                               req_seg = 20;
  static constexpr std::size_t ind_operation = 0, ind_indirect_op = 1, ind_nr_segments = 2, ind_id = 4, ind_sector = 12,
                               ind_handle = 20, ind_grefs = 24;
  static constexpr std::size_t dis_operation = 0, dis_flag = 1, dis_handle = 2, dis_id = 4, dis_sector = 12,
                               dis_nr_sectors = 20;
  static constexpr std::size_t rsp_id = 0, rsp_operation = 8, rsp_status = 10;
};

#if defined(__x86_64__)
static_assert(sizeof(blkif_request_t) == x64::slot);
static_assert(sizeof(union blkif_sring_entry) == x64::slot);
static_assert(sizeof(blkif_response_t) == x64::response_size);
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
static_assert(offsetof(blkif_request_discard_t, flag) == x64::dis_flag);
static_assert(offsetof(blkif_request_discard_t, handle) == x64::dis_handle);
static_assert(offsetof(blkif_request_discard_t, id) == x64::dis_id);
static_assert(offsetof(blkif_request_discard_t, sector_number) == x64::dis_sector);
static_assert(offsetof(blkif_request_discard_t, nr_sectors) == x64::dis_nr_sectors);
static_assert(offsetof(blkif_response_t, id) == x64::rsp_id);
static_assert(offsetof(blkif_response_t, operation) == x64::rsp_operation);
static_assert(offsetof(blkif_response_t, status) == x64::rsp_status);
static_assert(offsetof(struct blkif_sring, ring) == ring_header_size);
#endif

// blkif.h's structs as a 32-bit x86 compiler lays them out (pack(4) gives
// the i386 rule of at most 4-byte alignment). Only the assertions use them.
#pragma pack(push, 4)
struct i386_request {
  std::uint8_t operation, nr_segments;
  std::uint16_t handle;
  std::uint64_t id, sector_number;
  std::uint8_t seg[max_direct_segments * segment_size];
};
struct i386_request_indirect {
  std::uint8_t operation, indirect_op;
  std::uint16_t nr_segments;
  std::uint64_t id, sector_number;
  std::uint16_t handle;
  std::uint32_t indirect_grefs[max_indirect_pages];
  std::uint64_t pad;
};
struct i386_request_discard {
  std::uint8_t operation, flag;
  std::uint16_t handle;
  std::uint64_t id, sector_number, nr_sectors;
};
struct i386_response {
  std::uint64_t id;
  std::uint8_t operation;
  std::int16_t status;
};
#pragma pack(pop)
static_assert(sizeof(i386_request) == x32::slot);
static_assert(offsetof(i386_request, nr_segments) == x32::req_nr_segments);
static_assert(offsetof(i386_request, handle) == x32::req_handle);
static_assert(offsetof(i386_request, id) == x32::req_id);
static_assert(offsetof(i386_request, sector_number) == x32::req_sector);
static_assert(offsetof(i386_request, seg) == x32::req_seg);
static_assert(sizeof(i386_request_indirect) == 64);
static_assert(offsetof(i386_request_indirect, indirect_op) == x32::ind_indirect_op);
static_assert(offsetof(i386_request_indirect, nr_segments) == x32::ind_nr_segments);
static_assert(offsetof(i386_request_indirect, id) == x32::ind_id);
static_assert(offsetof(i386_request_indirect, sector_number) == x32::ind_sector);
static_assert(offsetof(i386_request_indirect, handle) == x32::ind_handle);
static_assert(offsetof(i386_request_indirect, indirect_grefs) == x32::ind_grefs);
static_assert(offsetof(i386_request_indirect, pad) == 56);
static_assert(sizeof(i386_request_discard) == 28);
static_assert(offsetof(i386_request_discard, flag) == x32::dis_flag);
static_assert(offsetof(i386_request_discard, handle) == x32::dis_handle);
static_assert(offsetof(i386_request_discard, id) == x32::dis_id);
static_assert(offsetof(i386_request_discard, sector_number) == x32::dis_sector);
static_assert(offsetof(i386_request_discard, nr_sectors) == x32::dis_nr_sectors);
static_assert(sizeof(i386_response) == x32::response_size);
static_assert(offsetof(i386_response, id) == x32::rsp_id);
static_assert(offsetof(i386_response, operation) == x32::rsp_operation);
static_assert(offsetof(i386_response, status) == x32::rsp_status);

void put_segment(std::span<std::byte> b, std::size_t off, const segment& s) {
  store(b, off, s.gref);
  store(b, off + 4, s.first_sect);
  store(b, off + 5, s.last_sect);
}

template <class L>
class layout_abi final : public abi {
 public:
  protocol which() const override { return L::which; }
  std::string_view name() const override { return L::name; }
  std::size_t slot_size() const override { return L::slot; }

  void put(std::span<std::byte> slot, const direct_request& r) const override {
    std::fill(slot.begin(), slot.begin() + L::slot, std::byte{0});
    store(slot, L::req_operation, r.operation);
    store(slot, L::req_nr_segments, r.nr_segments);
    store(slot, L::req_handle, r.handle);
    store(slot, L::req_id, r.id);
    store(slot, L::req_sector, r.sector_number);
    const std::size_t n = std::min<std::size_t>(r.segs.size(), max_direct_segments);
    for (std::size_t i = 0; i < n; ++i) put_segment(slot, L::req_seg + i * segment_size, r.segs[i]);
  }

  void put(std::span<std::byte> slot, const indirect_request& r) const override {
    std::fill(slot.begin(), slot.begin() + L::slot, std::byte{0});
    store(slot, L::ind_operation, op::indirect);
    store(slot, L::ind_indirect_op, r.indirect_op);
    store(slot, L::ind_nr_segments, r.nr_segments);
    store(slot, L::ind_id, r.id);
    store(slot, L::ind_sector, r.sector_number);
    store(slot, L::ind_handle, r.handle);
    const std::size_t n = std::min<std::size_t>(r.indirect_grefs.size(), max_indirect_pages);
    for (std::size_t i = 0; i < n; ++i) store(slot, L::ind_grefs + i * 4, r.indirect_grefs[i]);
  }

  void put(std::span<std::byte> slot, const discard_request& r) const override {
    std::fill(slot.begin(), slot.begin() + L::slot, std::byte{0});
    store(slot, L::dis_operation, op::discard);
    store(slot, L::dis_flag, r.flag);
    store(slot, L::dis_handle, r.handle);
    store(slot, L::dis_id, r.id);
    store(slot, L::dis_sector, r.sector_number);
    store(slot, L::dis_nr_sectors, r.nr_sectors);
  }

  response get_response(std::span<const std::byte> slot) const override {
    return response{load<std::uint64_t>(slot, L::rsp_id), load<std::uint8_t>(slot, L::rsp_operation),
                    load<std::int16_t>(slot, L::rsp_status)};
  }
};

}  // namespace

std::unique_ptr<abi> make_abi(std::string_view name, std::string* why) {
  if (name == XEN_IO_PROTO_ABI_X86_64 || name == "native") return std::make_unique<layout_abi<x64>>();
  if (name == XEN_IO_PROTO_ABI_X86_32) return std::make_unique<layout_abi<x32>>();
  if (why) {
    if (name == XEN_IO_PROTO_ABI_ARM)
      *why =
          std::string(name) + " is not implemented (only " XEN_IO_PROTO_ABI_X86_64 " and " XEN_IO_PROTO_ABI_X86_32 ")";
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
  return segment{load<std::uint32_t>(page, off), load<std::uint8_t>(page, off + 4), load<std::uint8_t>(page, off + 5)};
}

}  // namespace xbd::sim::blkfront
