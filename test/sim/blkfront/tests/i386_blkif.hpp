// blkif.h as a 32-bit x86 guest's compiler lays it out (no scalar aligned
// beyond 4 bytes; QEMU's xen_blkif.h declares the same), and ring.h's ring
// of it: the i386 side of the x86_32-abi rings, for the test backends.
#pragma once

#include "asio_xen/xen.hpp"

#include <cstdint>

namespace xbd::sim::blkfront::test_i386 {

#pragma pack(push, 4)
struct i386_request {
  std::uint8_t operation, nr_segments;
  std::uint16_t handle;
  std::uint64_t id, sector_number;
  struct blkif_request_segment seg[BLKIF_MAX_SEGMENTS_PER_REQUEST];
};
struct i386_request_discard {
  std::uint8_t operation, flag;
  std::uint16_t handle;
  std::uint64_t id, sector_number, nr_sectors;
};
struct i386_request_indirect {
  std::uint8_t operation, indirect_op;
  std::uint16_t nr_segments;
  std::uint64_t id, sector_number;
  std::uint16_t handle;
  grant_ref_t indirect_grefs[BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
  std::uint64_t pad;
};
struct i386_response {
  std::uint64_t id;
  std::uint8_t operation;
  std::int16_t status;
};
#pragma pack(pop)
static_assert(sizeof(i386_request) == 108 && sizeof(i386_response) == 12);

DEFINE_RING_TYPES(i386_blkif, struct i386_request, struct i386_response);

}  // namespace xbd::sim::blkfront::test_i386
