// The ring layouts a frontend may use (blkif.h "protocol", protocols.h),
// reduced to one private form.
//
// A request slot is copied out of shared memory once (the ring does that),
// and only then decoded field by field from the private bytes (XSA-155).
// A response is written field by field into a zeroed slot (XSA-216): no
// padding from our memory ever reaches the guest.
#pragma once

#include "asio_xen/ring.hpp"
#include "asio_xen/xen.hpp"

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <variant>

namespace xbd::blkback {

enum class abi { x86_64, x86_32 };
// The host's own layout: what a frontend without a `protocol` key speaks.
inline constexpr abi native_abi = abi::x86_64;
static_assert(sizeof(void*) == 8, "native_abi assumes an x86_64 host");

// "x86_64-abi" / "x86_32-abi" (protocols.h); nullopt for anything else.
std::optional<abi> parse_protocol(std::string_view text);
std::string_view to_string(abi a);

// A request as the frontend wrote it, in no particular layout. Which fields
// mean something depends on `operation`.
struct wire_request {
  std::uint8_t operation = 0;
  std::uint8_t nr_segments = 0;  // READ/WRITE/BARRIER/FLUSH
  std::uint64_t id = 0;
  std::uint64_t sector_number = 0;
  std::array<blkif_request_segment, BLKIF_MAX_SEGMENTS_PER_REQUEST> seg{};
  // BLKIF_OP_DISCARD
  std::uint8_t discard_flag = 0;
  std::uint64_t nr_sectors = 0;
  // BLKIF_OP_INDIRECT
  std::uint8_t indirect_op = 0;
  std::uint16_t indirect_nr_segments = 0;
  std::array<grant_ref_t, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST> indirect_grefs{};
};

// Decoders of one private slot copy. The byte spans are the sizes of the
// respective layouts' request structs.
inline constexpr std::size_t x86_64_request_size = 112;
inline constexpr std::size_t x86_64_response_size = 16;
wire_request decode_x86_64(std::span<const std::byte, x86_64_request_size> raw);
// Zeroes the response slot and writes id, operation and status at the x86_64
// offsets.
void encode_response_x86_64(std::span<std::byte> slot, std::uint64_t id, std::uint8_t op, std::int16_t status);

// A 32-bit guest's compiler aligns 64-bit fields to 4 bytes, so its requests
// are 108 bytes with `id` at 4, and its responses 12 bytes (abi.cpp has
// every offset).
inline constexpr std::size_t x86_32_request_size = 108;
inline constexpr std::size_t x86_32_response_size = 12;
wire_request decode_x86_32(std::span<const std::byte, x86_32_request_size> raw);
// Zeroes the 12-byte response and writes id, operation and status at the
// x86_32 offsets; the rest of the slot is left alone.
void encode_response_x86_32(std::span<std::byte> slot, std::uint64_t id, std::uint8_t op, std::int16_t status);

namespace detail {
// Byte arrays, not structs with the fields: the ring copies whole slots and
// the decoders pick the fields out at the layout's offsets, so no host
// alignment or padding rule can creep in. Their alignment of 1 also makes
// the ring's entry size exactly the layout's (108 for x86_32, as ring.h's
// union is on i386).
struct raw_x86_64_request {
  std::byte bytes[x86_64_request_size];
};
struct raw_x86_64_response {
  std::byte bytes[x86_64_response_size];
};
struct raw_x86_32_request {
  std::byte bytes[x86_32_request_size];
};
struct raw_x86_32_response {
  std::byte bytes[x86_32_response_size];
};
}  // namespace detail

// The backend end of a ring in one of the layouts.
class abi_ring {
 public:
  using x86_64_ring = asio_xen::back_ring<detail::raw_x86_64_request, detail::raw_x86_64_response>;
  using x86_32_ring = asio_xen::back_ring<detail::raw_x86_32_request, detail::raw_x86_32_response>;

  static asio_xen::result<abi_ring> attach(abi a, std::span<std::byte> mem);
  // Entries of a ring of `pages` pages in layout `a`.
  static std::uint32_t entries(abi a, std::size_t pages);

  abi layout() const { return abi_; }
  std::uint32_t size() const;
  asio_xen::result<std::uint32_t> unconsumed_requests() const;
  // Copies the next slot out once and decodes the copy.
  wire_request consume_request();
  // The last request taken goes back into the ring, to be copied again.
  void unconsume_request();
  void put_response(std::uint64_t id, std::uint8_t op, std::int16_t status);
  bool push_responses();
  asio_xen::result<bool> final_check_for_requests();
  std::uint32_t in_flight() const;
  std::uint32_t req_cons() const;
  std::uint32_t rsp_prod_pvt() const;
  std::uint32_t shared_rsp_prod() const;
  std::uint32_t shared_req_prod() const;
  void resume_at(std::uint32_t req_cons, std::uint32_t rsp_prod_pvt);

 private:
  using any_ring = std::variant<x86_64_ring, x86_32_ring>;
  abi_ring(abi a, any_ring r) : abi_(a), ring_(std::move(r)) {}
  abi abi_;
  any_ring ring_;
};

}  // namespace xbd::blkback
