// Validation of a request: pure functions from a private copy to either a
// checked_request the I/O code may act on, or the status to answer with.
//
// Nothing here does I/O or touches shared memory, so it is unit-tested rule
// by rule and fuzzed (test/fuzz).
#pragma once

#include "blkback/ring/abi.hpp"

#include <cstdint>
#include <span>
#include <variant>

namespace xbd::blkback {

// What the device offers: the limits every request is checked against.
struct device_limits {
  std::uint64_t sectors = 0;        // size in 512-byte sectors
  std::uint32_t sector_size = 512;  // logical sector size in bytes (512, 1024, 2048 or 4096)
  bool readonly = false;
  bool flush = true;                        // feature-flush-cache
  bool barrier = false;                     // feature-barrier
  bool discard = false;                     // feature-discard
  bool discard_secure = false;              // discard-secure
  std::uint32_t discard_granularity = 0;    // bytes; 0 = sector_size
  std::uint32_t max_indirect_segments = 0;  // feature-max-indirect-segments; 0 = no indirect
};

enum class op_kind : std::uint8_t { read, write, flush, barrier, discard };

// One contiguous piece of a guest page: bytes [offset, offset + length).
struct segment {
  grant_ref_t gref;
  std::uint16_t offset;
  std::uint16_t length;
};

// A request that passed every check. `segments` holds the data segments in
// disk order; their lengths add up to `length`.
struct checked_request {
  std::uint64_t id = 0;
  std::uint8_t operation = 0;  // echoed in the response (INDIRECT: its indirect_op)
  op_kind kind = op_kind::read;
  bool flush_after = false;  // FLUSH_DISKCACHE/BARRIER with data: write, then flush
  bool secure = false;       // secure discard
  std::uint64_t offset = 0;  // bytes from the start of the disk
  std::uint64_t length = 0;  // bytes
  std::span<const segment> segments;
};

// The answer to a request that failed a check.
struct rejected {
  std::uint64_t id;
  std::uint8_t operation;
  std::int16_t status;  // BLKIF_RSP_ERROR or BLKIF_RSP_EOPNOTSUPP
  const char* reason;   // for the (rate-limited) log
};

// For BLKIF_OP_INDIRECT: the header passed its checks and its segment
// descriptors must now be fetched from `pages` indirect pages.
struct needs_indirect {
  std::uint16_t nr_segments;
  std::uint16_t pages;
};

using validation = std::variant<checked_request, rejected, needs_indirect>;

// Checks a direct request (everything but the segment list of INDIRECT).
// `storage` receives the segments and must hold BLKIF_MAX_SEGMENTS_PER_REQUEST.
validation validate(const wire_request& r, const device_limits& lim, std::span<segment> storage);

// Segment descriptors per indirect page (blkif.h: 512 of 8 bytes).
inline constexpr std::size_t segments_per_indirect_page = xen::page_size / sizeof(blkif_request_segment);

// Checks an INDIRECT request's segments, fetched from the private copy of
// its indirect pages.
validation validate_indirect(const wire_request& r, std::span<const blkif_request_segment> descriptors,
                             const device_limits& lim, std::span<segment> storage);

}  // namespace xbd::blkback
