#include "blkback/abi.hpp"

#include <cstring>

namespace xbd::blkback {

// The x86_64 layout is the public header's native one on this host; the
// decoder below uses its offsets, and these pin them.
static_assert(sizeof(blkif_request) == x86_64_request_size);
static_assert(sizeof(blkif_response) == x86_64_response_size);
static_assert(offsetof(blkif_request, operation) == 0);
static_assert(offsetof(blkif_request, nr_segments) == 1);
static_assert(offsetof(blkif_request, handle) == 2);
static_assert(offsetof(blkif_request, id) == 8);
static_assert(offsetof(blkif_request, sector_number) == 16);
static_assert(offsetof(blkif_request, seg) == 24);
static_assert(sizeof(blkif_request_segment) == 8);
static_assert(offsetof(blkif_request_discard, flag) == 1);
static_assert(offsetof(blkif_request_discard, id) == 8);
static_assert(offsetof(blkif_request_discard, sector_number) == 16);
static_assert(offsetof(blkif_request_discard, nr_sectors) == 24);
static_assert(offsetof(blkif_request_indirect, indirect_op) == 1);
static_assert(offsetof(blkif_request_indirect, nr_segments) == 2);
static_assert(offsetof(blkif_request_indirect, id) == 8);
static_assert(offsetof(blkif_request_indirect, sector_number) == 16);
static_assert(offsetof(blkif_request_indirect, handle) == 24);
static_assert(offsetof(blkif_request_indirect, indirect_grefs) == 28);
static_assert(offsetof(blkif_response, id) == 0);
static_assert(offsetof(blkif_response, operation) == 8);
static_assert(offsetof(blkif_response, status) == 10);

namespace {

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

std::string_view to_string(abi a) {
  return a == abi::x86_32 ? XEN_IO_PROTO_ABI_X86_32 : XEN_IO_PROTO_ABI_X86_64;
}

wire_request decode_x86_64(std::span<const std::byte, x86_64_request_size> raw) {
  wire_request r;
  r.operation = get<std::uint8_t>(raw, 0);
  r.id = get<std::uint64_t>(raw, 8);
  r.sector_number = get<std::uint64_t>(raw, 16);
  switch (r.operation) {
    case BLKIF_OP_DISCARD:
      r.discard_flag = get<std::uint8_t>(raw, 1);
      r.nr_sectors = get<std::uint64_t>(raw, 24);
      break;
    case BLKIF_OP_INDIRECT:
      r.indirect_op = get<std::uint8_t>(raw, 1);
      r.indirect_nr_segments = get<std::uint16_t>(raw, 2);
      for (std::size_t i = 0; i < r.indirect_grefs.size(); ++i)
        r.indirect_grefs[i] = get<grant_ref_t>(raw, 28 + 4 * i);
      break;
    default:
      r.nr_segments = get<std::uint8_t>(raw, 1);
      for (std::size_t i = 0; i < r.seg.size(); ++i) {
        r.seg[i].gref = get<grant_ref_t>(raw, 24 + 8 * i);
        r.seg[i].first_sect = get<std::uint8_t>(raw, 24 + 8 * i + 4);
        r.seg[i].last_sect = get<std::uint8_t>(raw, 24 + 8 * i + 5);
      }
      break;
  }
  return r;
}

void encode_response_x86_64(std::span<std::byte> slot, std::uint64_t id, std::uint8_t op, std::int16_t status) {
  std::memset(slot.data(), 0, x86_64_response_size);
  put(slot, 0, id);
  put(slot, 8, op);
  put(slot, 10, status);
}

asio_xen::result<abi_ring> abi_ring::attach(abi a, std::span<std::byte> mem) {
  // Only the x86_64 layout so far; the x86_32 one needs its own slot type.
  if (a != abi::x86_64) return asio_xen::error_code(EPROTONOSUPPORT, boost::system::generic_category());
  auto r = x86_64_ring::attach(mem);
  if (!r) return r.error();
  return abi_ring(a, std::move(*r));
}

std::uint32_t abi_ring::entries(abi a, std::size_t pages) {
  (void)a;
  return x86_64_ring::entries_for_pages(pages);
}

std::uint32_t abi_ring::size() const {
  return std::visit([](const auto& r) { return r.size(); }, ring_);
}

asio_xen::result<std::uint32_t> abi_ring::unconsumed_requests() const {
  return std::visit([](const auto& r) { return r.unconsumed_requests(); }, ring_);
}

wire_request abi_ring::consume_request() {
  auto& r = std::get<x86_64_ring>(ring_);
  detail::raw_x86_64_request copy = r.consume_request();
  return decode_x86_64(std::span<const std::byte, x86_64_request_size>(copy.bytes));
}

void abi_ring::put_response(std::uint64_t id, std::uint8_t op, std::int16_t status) {
  auto& r = std::get<x86_64_ring>(ring_);
  encode_response_x86_64(r.next_response_slot(), id, op, status);
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
