#include "blkback/ring/abi.hpp"

#include <bit>
#include <cstring>

namespace xbd::blkback {

namespace {

// Where each field sits, per layout. The decoders read only these; the
// assertions below tie them to a compiler's idea of the structs.
struct x64 {
  static constexpr std::size_t request_size = x86_64_request_size, response_size = x86_64_response_size;
  static constexpr std::size_t operation = 0, nr_segments = 1, handle = 2, id = 8, sector_number = 16, seg = 24;
  static constexpr std::size_t discard_flag = 1, discard_nr_sectors = 24;
  static constexpr std::size_t indirect_op = 1, indirect_nr_segments = 2, indirect_handle = 24, indirect_grefs = 28;
  static constexpr std::size_t rsp_id = 0, rsp_operation = 8, rsp_status = 10;
};

struct x32 {
  static constexpr std::size_t request_size = x86_32_request_size, response_size = x86_32_response_size;
  static constexpr std::size_t operation = 0, nr_segments = 1, handle = 2, id = 4, sector_number = 12, seg = 20;
  static constexpr std::size_t discard_flag = 1, discard_nr_sectors = 20;
  // The handle is followed by 2 bytes of padding before the 4-aligned grefs.
  static constexpr std::size_t indirect_op = 1, indirect_nr_segments = 2, indirect_handle = 20, indirect_grefs = 24;
  static constexpr std::size_t rsp_id = 0, rsp_operation = 8, rsp_status = 10;
};

constexpr std::size_t segment_size = 8;
constexpr std::size_t segment_first_sect = 4, segment_last_sect = 5;

// The x86_64 layout is the public header's native one on this host.
static_assert(sizeof(blkif_request) == x86_64_request_size);
static_assert(sizeof(blkif_response) == x86_64_response_size);
static_assert(offsetof(blkif_request, operation) == x64::operation);
static_assert(offsetof(blkif_request, nr_segments) == x64::nr_segments);
static_assert(offsetof(blkif_request, handle) == x64::handle);
static_assert(offsetof(blkif_request, id) == x64::id);
static_assert(offsetof(blkif_request, sector_number) == x64::sector_number);
static_assert(offsetof(blkif_request, seg) == x64::seg);
static_assert(sizeof(blkif_request_segment) == segment_size);
static_assert(offsetof(blkif_request_segment, first_sect) == segment_first_sect);
static_assert(offsetof(blkif_request_segment, last_sect) == segment_last_sect);
static_assert(std::endian::native == std::endian::little);  // the wire's order, copied as is
static_assert(offsetof(blkif_request_discard, flag) == x64::discard_flag);
static_assert(offsetof(blkif_request_discard, id) == x64::id);
static_assert(offsetof(blkif_request_discard, sector_number) == x64::sector_number);
static_assert(offsetof(blkif_request_discard, nr_sectors) == x64::discard_nr_sectors);
static_assert(sizeof(blkif_request_discard) <= x86_64_request_size);
static_assert(offsetof(blkif_request_indirect, indirect_op) == x64::indirect_op);
static_assert(offsetof(blkif_request_indirect, nr_segments) == x64::indirect_nr_segments);
static_assert(offsetof(blkif_request_indirect, id) == x64::id);
static_assert(offsetof(blkif_request_indirect, sector_number) == x64::sector_number);
static_assert(offsetof(blkif_request_indirect, handle) == x64::indirect_handle);
static_assert(offsetof(blkif_request_indirect, indirect_grefs) == x64::indirect_grefs);
static_assert(sizeof(blkif_request_indirect) <= x86_64_request_size);
static_assert(offsetof(blkif_response, id) == x64::rsp_id);
static_assert(offsetof(blkif_response, operation) == x64::rsp_operation);
static_assert(offsetof(blkif_response, status) == x64::rsp_status);

// blkif.h's structs as a 32-bit x86 compiler lays them out: the i386 SysV
// ABI aligns no scalar beyond 4 bytes, which pack(4) reproduces here (the
// sizes and offsets below are also what `gcc -m32` makes of blkif.h
// itself). Only the assertions use them; nothing is copied through them.
#pragma pack(push, 4)
struct i386_request {
  std::uint8_t operation;
  std::uint8_t nr_segments;
  std::uint16_t handle;
  std::uint64_t id;
  std::uint64_t sector_number;
  blkif_request_segment seg[BLKIF_MAX_SEGMENTS_PER_REQUEST];
};
struct i386_request_discard {
  std::uint8_t operation;
  std::uint8_t flag;
  std::uint16_t handle;
  std::uint64_t id;
  std::uint64_t sector_number;
  std::uint64_t nr_sectors;
};
struct i386_request_indirect {
  std::uint8_t operation;
  std::uint8_t indirect_op;
  std::uint16_t nr_segments;
  std::uint64_t id;
  std::uint64_t sector_number;
  std::uint16_t handle;
  grant_ref_t indirect_grefs[BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
  std::uint64_t pad;  // blkif.h's `#ifdef __i386__` member
};
struct i386_response {
  std::uint64_t id;
  std::uint8_t operation;
  std::int16_t status;
};
#pragma pack(pop)

static_assert(sizeof(i386_request) == x86_32_request_size);
static_assert(offsetof(i386_request, operation) == x32::operation);
static_assert(offsetof(i386_request, nr_segments) == x32::nr_segments);
static_assert(offsetof(i386_request, handle) == x32::handle);
static_assert(offsetof(i386_request, id) == x32::id);
static_assert(offsetof(i386_request, sector_number) == x32::sector_number);
static_assert(offsetof(i386_request, seg) == x32::seg);
static_assert(x32::seg + BLKIF_MAX_SEGMENTS_PER_REQUEST * segment_size == x86_32_request_size);
static_assert(sizeof(i386_request_discard) == 28);
static_assert(offsetof(i386_request_discard, flag) == x32::discard_flag);
static_assert(offsetof(i386_request_discard, handle) == x32::handle);
static_assert(offsetof(i386_request_discard, id) == x32::id);
static_assert(offsetof(i386_request_discard, sector_number) == x32::sector_number);
static_assert(offsetof(i386_request_discard, nr_sectors) == x32::discard_nr_sectors);
static_assert(sizeof(i386_request_indirect) == 64);
static_assert(offsetof(i386_request_indirect, indirect_op) == x32::indirect_op);
static_assert(offsetof(i386_request_indirect, nr_segments) == x32::indirect_nr_segments);
static_assert(offsetof(i386_request_indirect, id) == x32::id);
static_assert(offsetof(i386_request_indirect, sector_number) == x32::sector_number);
static_assert(offsetof(i386_request_indirect, handle) == x32::indirect_handle);
static_assert(offsetof(i386_request_indirect, indirect_grefs) == x32::indirect_grefs);
static_assert(offsetof(i386_request_indirect, pad) == 56);
static_assert(sizeof(i386_response) == x86_32_response_size);
static_assert(offsetof(i386_response, id) == x32::rsp_id);
static_assert(offsetof(i386_response, operation) == x32::rsp_operation);
static_assert(offsetof(i386_response, status) == x32::rsp_status);

// ring.h sizes a ring by its union entry: 108 bytes on i386 (the union is
// 4-aligned), so one page holds 32 entries there too.
static_assert(abi_ring::x86_32_ring::entry_size == x86_32_request_size);
static_assert(abi_ring::x86_64_ring::entry_size == sizeof(blkif_sring_entry));
static_assert(abi_ring::x86_32_ring::entries_for_pages(1) == 32);

template <class T>
T get(std::span<const std::byte> raw, std::size_t off) {
  T v;
  std::memcpy(&v, raw.data() + off, sizeof v);
  return v;
}

template <class T>
void put(std::span<std::byte> raw, std::size_t off, T v) {
  std::memcpy(raw.data() + off, &v, sizeof v);
}

}  // namespace

std::optional<abi> parse_protocol(std::string_view text) {
  if (text == XEN_IO_PROTO_ABI_X86_64) return abi::x86_64;
  if (text == XEN_IO_PROTO_ABI_X86_32) return abi::x86_32;
  return std::nullopt;
}

std::string_view to_string(abi a) { return a == abi::x86_32 ? XEN_IO_PROTO_ABI_X86_32 : XEN_IO_PROTO_ABI_X86_64; }

namespace {

// One decoder for both layouts: the same fields, at the layout's offsets.
// Which fields are read depends on the operation only, as in blkif.h's
// request union; the handle is never needed (a ring serves one vbd).
template <class L>
wire_request decode(std::span<const std::byte, L::request_size> raw) {
  wire_request r;
  r.operation = get<std::uint8_t>(raw, L::operation);
  r.id = get<std::uint64_t>(raw, L::id);
  r.sector_number = get<std::uint64_t>(raw, L::sector_number);
  switch (r.operation) {
    case BLKIF_OP_DISCARD:
      r.discard_flag = get<std::uint8_t>(raw, L::discard_flag);
      r.nr_sectors = get<std::uint64_t>(raw, L::discard_nr_sectors);
      break;
    case BLKIF_OP_INDIRECT:
      r.indirect_op = get<std::uint8_t>(raw, L::indirect_op);
      r.indirect_nr_segments = get<std::uint16_t>(raw, L::indirect_nr_segments);
      for (std::size_t i = 0; i < r.indirect_grefs.size(); ++i)
        r.indirect_grefs[i] = get<grant_ref_t>(raw, L::indirect_grefs + sizeof(grant_ref_t) * i);
      break;
    default:
      r.nr_segments = get<std::uint8_t>(raw, L::nr_segments);
      // The wire's segments are blkif_request_segment's layout (asserted
      // above), little-endian as we are: one copy of all eleven.
      std::memcpy(r.seg.data(), raw.data() + L::seg, sizeof r.seg);
      break;
  }
  return r;
}

template <class L>
void encode_response(std::span<std::byte> slot, std::uint64_t id, std::uint8_t op, std::int16_t status) {
  std::memset(slot.data(), 0, L::response_size);
  put(slot, L::rsp_id, id);
  put(slot, L::rsp_operation, op);
  put(slot, L::rsp_status, status);
}

}  // namespace

wire_request decode_x86_64(std::span<const std::byte, x86_64_request_size> raw) { return decode<x64>(raw); }

wire_request decode_x86_32(std::span<const std::byte, x86_32_request_size> raw) { return decode<x32>(raw); }

void encode_response_x86_64(std::span<std::byte> slot, std::uint64_t id, std::uint8_t op, std::int16_t status) {
  encode_response<x64>(slot, id, op, status);
}

void encode_response_x86_32(std::span<std::byte> slot, std::uint64_t id, std::uint8_t op, std::int16_t status) {
  encode_response<x32>(slot, id, op, status);
}

asio_xen::result<abi_ring> abi_ring::attach(abi a, std::span<std::byte> mem) {
  auto make = [&]<class R>() -> asio_xen::result<abi_ring> {
    auto r = R::attach(mem);
    if (!r) return r.error();
    return abi_ring(a, any_ring(std::in_place_type<R>, std::move(*r)));
  };
  if (a == abi::x86_32) return make.template operator()<x86_32_ring>();
  return make.template operator()<x86_64_ring>();
}

std::uint32_t abi_ring::entries(abi a, std::size_t pages) {
  return a == abi::x86_32 ? x86_32_ring::entries_for_pages(pages) : x86_64_ring::entries_for_pages(pages);
}

std::uint32_t abi_ring::size() const {
  return std::visit([](const auto& r) { return r.size(); }, ring_);
}

asio_xen::result<std::uint32_t> abi_ring::unconsumed_requests() const {
  return std::visit([](const auto& r) { return r.unconsumed_requests(); }, ring_);
}

wire_request abi_ring::consume_request() {
  if (auto* r = std::get_if<x86_32_ring>(&ring_)) {
    detail::raw_x86_32_request copy = r->consume_request();
    return decode_x86_32(std::span<const std::byte, x86_32_request_size>(copy.bytes));
  }
  detail::raw_x86_64_request copy = std::get<x86_64_ring>(ring_).consume_request();
  return decode_x86_64(std::span<const std::byte, x86_64_request_size>(copy.bytes));
}

std::uint32_t abi_ring::req_cons() const {
  return std::visit([](const auto& r) { return r.req_cons(); }, ring_);
}
std::uint32_t abi_ring::rsp_prod_pvt() const {
  return std::visit([](const auto& r) { return r.rsp_prod_pvt(); }, ring_);
}
std::uint32_t abi_ring::shared_rsp_prod() const {
  return std::visit([](const auto& r) { return r.shared_rsp_prod(); }, ring_);
}
std::uint32_t abi_ring::shared_req_prod() const {
  return std::visit([](const auto& r) { return r.shared_req_prod(); }, ring_);
}
void abi_ring::resume_at(std::uint32_t req_cons, std::uint32_t rsp_prod_pvt) {
  std::visit([&](auto& r) { r.resume_at(req_cons, rsp_prod_pvt); }, ring_);
}

void abi_ring::unconsume_request() {
  std::visit([](auto& r) { r.unconsume_request(); }, ring_);
}

// The slot is the whole ring entry (108 or 112 bytes, and it still holds
// the request); only the response's own bytes are written, zeroes included.
void abi_ring::put_response(std::uint64_t id, std::uint8_t op, std::int16_t status) {
  if (auto* r = std::get_if<x86_32_ring>(&ring_)) {
    encode_response_x86_32(r->next_response_slot(), id, op, status);
    return;
  }
  encode_response_x86_64(std::get<x86_64_ring>(ring_).next_response_slot(), id, op, status);
}

bool abi_ring::push_responses() {
  return std::visit([](auto& r) { return r.push_responses(); }, ring_);
}

asio_xen::result<bool> abi_ring::final_check_for_requests() {
  return std::visit([](auto& r) { return r.final_check_for_requests(); }, ring_);
}

std::uint32_t abi_ring::in_flight() const {
  return std::visit([](const auto& r) { return r.in_flight(); }, ring_);
}

}  // namespace xbd::blkback
