// The ring layouts a frontend can speak (blkif.h, protocols.h).
//
// Requests are described in host structs and written into a ring slot field
// by field at the offsets of the chosen ABI, so that the bytes the backend
// sees are exactly the ABI's and never a host struct's padding. x86_64-abi
// is the public headers' native layout; x86_32-abi is what a 32-bit guest's
// compiler makes of the same headers (64-bit fields 4-aligned: 108-byte
// requests, 12-byte responses), spelled out in abi.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace xbd::sim::blkfront {

// blkif.h operation codes, kept numeric so raw mode can send any byte.
namespace op {
inline constexpr std::uint8_t read = 0;
inline constexpr std::uint8_t write = 1;
inline constexpr std::uint8_t write_barrier = 2;
inline constexpr std::uint8_t flush_diskcache = 3;
inline constexpr std::uint8_t discard = 5;
inline constexpr std::uint8_t indirect = 6;
}  // namespace op

namespace status {
inline constexpr std::int16_t okay = 0;
inline constexpr std::int16_t error = -1;
inline constexpr std::int16_t eopnotsupp = -2;
}  // namespace status

inline constexpr unsigned max_direct_segments = 11;  // BLKIF_MAX_SEGMENTS_PER_REQUEST
inline constexpr unsigned max_indirect_pages = 8;    // BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST
inline constexpr std::size_t segment_size = 8;       // blkif_request_segment, all ABIs
inline constexpr unsigned segments_per_indirect_page = 4096 / segment_size;
inline constexpr std::size_t ring_header_size = 64;  // same for every ABI

struct segment {
  std::uint32_t gref = 0;
  std::uint8_t first_sect = 0;
  std::uint8_t last_sect = 0;
};

// READ, WRITE, WRITE_BARRIER, FLUSH_DISKCACHE: the blkif_request layout.
// `nr_segments` is separate from `segs` so raw mode can lie about it.
struct direct_request {
  std::uint8_t operation = op::read;
  std::uint8_t nr_segments = 0;
  std::uint16_t handle = 0;
  std::uint64_t id = 0;
  std::uint64_t sector_number = 0;
  std::span<const segment> segs;  // at most max_direct_segments are written
};

struct indirect_request {
  std::uint8_t indirect_op = op::read;
  std::uint16_t nr_segments = 0;
  std::uint16_t handle = 0;
  std::uint64_t id = 0;
  std::uint64_t sector_number = 0;
  std::span<const std::uint32_t> indirect_grefs;  // at most max_indirect_pages
};

// BLKIF_OP_DISCARD: blkif_request_discard.
struct discard_request {
  std::uint8_t flag = 0;  // BLKIF_DISCARD_SECURE or 0
  std::uint16_t handle = 0;
  std::uint64_t id = 0;
  std::uint64_t sector_number = 0;
  std::uint64_t nr_sectors = 0;
};
inline constexpr std::uint8_t discard_secure = 1;  // BLKIF_DISCARD_SECURE

struct response {
  std::uint64_t id = 0;
  std::uint8_t operation = 0;
  std::int16_t status = 0;
};

enum class protocol { x86_64, x86_32 };

class abi {
 public:
  virtual ~abi() = default;
  virtual protocol which() const = 0;
  // The XEN_IO_PROTO_ABI_* string for the frontend's `protocol` key.
  virtual std::string_view name() const = 0;
  // One ring entry: the union of request and response.
  virtual std::size_t slot_size() const = 0;
  // Each writer zeroes the whole slot first so that no byte of a previous
  // request survives in fields this one does not use.
  virtual void put(std::span<std::byte> slot, const direct_request& r) const = 0;
  virtual void put(std::span<std::byte> slot, const indirect_request& r) const = 0;
  virtual void put(std::span<std::byte> slot, const discard_request& r) const = 0;
  virtual response get_response(std::span<const std::byte> slot) const = 0;
};

// Null when the name is not a protocol we implement; `why` then says whether
// it is known but not implemented yet.
std::unique_ptr<abi> make_abi(std::string_view protocol_name, std::string* why = nullptr);

// Entries in a ring of `pages` pages: as many as fit after the header,
// rounded down to a power of two (ring.h __RING_SIZE).
unsigned ring_entries(std::size_t slot_size, unsigned pages);

// An indirect page holds a plain array of blkif_request_segment.
void put_indirect_segment(std::span<std::byte> page, unsigned index, const segment& s);
segment get_indirect_segment(std::span<const std::byte> page, unsigned index);

}  // namespace xbd::sim::blkfront
