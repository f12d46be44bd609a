#include "blkback/ring/request.hpp"

namespace xbd::blkback {

namespace {

constexpr std::uint64_t sector = 512;

// The operation a response echoes: for INDIRECT, the operation inside it
// (Linux's blkfront checks the response against READ/WRITE, never 6).
std::uint8_t echoed(const wire_request& r) {
  if (r.operation == BLKIF_OP_INDIRECT && (r.indirect_op == BLKIF_OP_READ || r.indirect_op == BLKIF_OP_WRITE))
    return r.indirect_op;
  return r.operation;
}

rejected error(const wire_request& r, const char* why) { return {r.id, echoed(r), BLKIF_RSP_ERROR, why}; }
rejected unsupported(const wire_request& r, const char* why) { return {r.id, echoed(r), BLKIF_RSP_EOPNOTSUPP, why}; }

// Turns segment descriptors into byte ranges and checks them. Returns the
// total length in bytes, or a reason.
const char* convert_segments(std::span<const blkif_request_segment> in, std::span<segment> out, std::uint64_t& total) {
  total = 0;
  for (std::size_t i = 0; i < in.size(); ++i) {
    const auto& s = in[i];
    // blkif.h: a segment lies within one page: first_sect <= last_sect <= 7.
    if (s.last_sect >= xen::sectors_per_page || s.first_sect > s.last_sect) return "segment outside its page";
    out[i].gref = s.gref;
    out[i].offset = static_cast<std::uint16_t>(s.first_sect * sector);
    out[i].length = static_cast<std::uint16_t>((s.last_sect - s.first_sect + 1) * sector);
    total += out[i].length;
  }
  return nullptr;
}

// The disk range [sector_number, +bytes) must lie inside the disk, computed
// without overflow whatever the guest wrote, and be aligned to the logical
// sector size.
const char* check_range(std::uint64_t sector_number, std::uint64_t bytes, const device_limits& lim) {
  const std::uint64_t n = bytes / sector;
  if (sector_number > lim.sectors || n > lim.sectors - sector_number) return "beyond the end of the disk";
  const std::uint64_t per_lsector = lim.sector_size / sector;
  if (per_lsector > 1 && (sector_number % per_lsector != 0 || n % per_lsector != 0))
    return "not aligned to the logical sector size";
  return nullptr;
}

validation finish_rw(const wire_request& r, op_kind kind, std::uint8_t op, bool flush_after,
                     std::span<const blkif_request_segment> segs, const device_limits& lim,
                     std::span<segment> storage) {
  std::uint64_t total = 0;
  if (const char* why = convert_segments(segs, storage, total)) return error(r, why);
  if (const char* why = check_range(r.sector_number, total, lim)) return error(r, why);
  checked_request c;
  c.id = r.id;
  c.operation = op;
  c.kind = kind;
  c.flush_after = flush_after;
  c.offset = r.sector_number * sector;
  c.length = total;
  c.segments = storage.first(segs.size());
  return c;
}

}  // namespace

validation validate(const wire_request& r, const device_limits& lim, std::span<segment> storage) {
  const std::span<const blkif_request_segment> direct(r.seg.data(), r.nr_segments <= r.seg.size() ? r.nr_segments : 0);
  switch (r.operation) {
    case BLKIF_OP_READ:
    case BLKIF_OP_WRITE: {
      const bool write = r.operation == BLKIF_OP_WRITE;
      if (r.nr_segments == 0 || r.nr_segments > BLKIF_MAX_SEGMENTS_PER_REQUEST)
        return error(r, "segment count out of range");
      if (write && lim.readonly) return error(r, "write to a read-only device");
      return finish_rw(r, write ? op_kind::write : op_kind::read, r.operation, false, direct, lim, storage);
    }
    case BLKIF_OP_FLUSH_DISKCACHE:
    case BLKIF_OP_WRITE_BARRIER: {
      const bool barrier = r.operation == BLKIF_OP_WRITE_BARRIER;
      if (barrier ? !lim.barrier : !lim.flush) return unsupported(r, "operation not advertised");
      if (r.nr_segments > BLKIF_MAX_SEGMENTS_PER_REQUEST) return error(r, "segment count out of range");
      const op_kind kind = barrier ? op_kind::barrier : op_kind::flush;
      if (r.nr_segments == 0) {
        checked_request c;
        c.id = r.id;
        c.operation = r.operation;
        c.kind = kind;
        c.flush_after = true;
        return c;
      }
      // With data (Linux blkfront sends REQ_PREFLUSH writes this way): the
      // write lands first and the flush makes it and everything before it
      // durable.
      if (lim.readonly) return error(r, "write to a read-only device");
      return finish_rw(r, kind, r.operation, true, direct, lim, storage);
    }
    case BLKIF_OP_DISCARD: {
      if (!lim.discard) return unsupported(r, "discard not advertised");
      if (lim.readonly) return error(r, "discard on a read-only device");
      if (r.nr_sectors == 0 || r.nr_sectors > UINT64_MAX / sector) return error(r, "discard length out of range");
      if (const char* why = check_range(r.sector_number, r.nr_sectors * sector, lim)) return error(r, why);
      checked_request c;
      c.id = r.id;
      c.operation = r.operation;
      c.kind = op_kind::discard;
      // blkif.h: the secure flag means nothing unless discard-secure was
      // offered; then the discard is a plain one (as Linux's blkback does).
      c.secure = lim.discard_secure && (r.discard_flag & BLKIF_DISCARD_SECURE) != 0;
      c.offset = r.sector_number * sector;
      c.length = r.nr_sectors * sector;
      return c;
    }
    case BLKIF_OP_INDIRECT: {
      if (lim.max_indirect_segments == 0) return unsupported(r, "indirect descriptors not advertised");
      if (r.indirect_op != BLKIF_OP_READ && r.indirect_op != BLKIF_OP_WRITE)
        return error(r, "indirect operation other than read or write");
      if (r.indirect_nr_segments == 0 || r.indirect_nr_segments > lim.max_indirect_segments)
        return error(r, "indirect segment count out of range");
      if (r.indirect_op == BLKIF_OP_WRITE && lim.readonly) return error(r, "write to a read-only device");
      const auto pages = static_cast<std::uint16_t>((r.indirect_nr_segments + segments_per_indirect_page - 1) /
                                                    segments_per_indirect_page);
      if (pages > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST) return error(r, "too many indirect pages");
      return needs_indirect{r.indirect_nr_segments, pages};
    }
    default:
      // Unknown and reserved operations: EOPNOTSUPP, as Linux and tapdisk
      // answer (QEMU answers ERROR).
      return unsupported(r, "unknown operation");
  }
}

validation validate_indirect(const wire_request& r, std::span<const blkif_request_segment> descriptors,
                             const device_limits& lim, std::span<segment> storage) {
  if (r.operation != BLKIF_OP_INDIRECT || descriptors.size() != r.indirect_nr_segments ||
      storage.size() < descriptors.size())
    return error(r, "indirect descriptors do not match the request");
  const op_kind kind = r.indirect_op == BLKIF_OP_WRITE ? op_kind::write : op_kind::read;
  return finish_rw(r, kind, echoed(r), false, descriptors, lim, storage);
}

}  // namespace xbd::blkback
