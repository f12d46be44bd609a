// Fuzz target: a request slot as a guest could write it, through decoding
// and validation, with device limits also taken from the input. Whatever
// the bytes, validation must not crash, and what it accepts must be safe to
// act on: inside the disk, inside each page, aligned, lengths consistent.
#include "blkback/ring/abi.hpp"
#include "blkback/ring/request.hpp"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

using namespace xbd::blkback;

namespace {

[[noreturn]] void broken(const char*) { __builtin_trap(); }

template <class T>
T take(const std::uint8_t*& p, std::size_t& n) {
  T v{};
  std::size_t k = n < sizeof v ? n : sizeof v;
  std::memcpy(&v, p, k);
  p += k;
  n -= k;
  return v;
}

void check(const checked_request& c, const device_limits& lim, std::uint8_t op) {
  if (op == BLKIF_OP_INDIRECT ? (c.operation != BLKIF_OP_READ && c.operation != BLKIF_OP_WRITE) : c.operation != op)
    broken("operation not echoed");
  if (c.kind == op_kind::discard) {
    if (c.length == 0 || c.offset / 512 > lim.sectors || c.length / 512 > lim.sectors - c.offset / 512)
      broken("discard outside the disk");
    return;
  }
  std::uint64_t total = 0;
  for (const segment& s : c.segments) {
    if (s.length == 0 || s.length % 512 != 0 || s.offset % 512 != 0) broken("ragged segment");
    if (std::uint32_t{s.offset} + s.length > 4096) broken("segment beyond its page");
    total += s.length;
  }
  if (total != c.length) broken("segment lengths do not add up");
  if (c.length == 0) {
    if (c.kind == op_kind::read || c.kind == op_kind::write) broken("empty read or write");
    return;
  }
  if (c.offset % 512 != 0) broken("offset not in sectors");
  if (c.offset / 512 > lim.sectors || c.length / 512 > lim.sectors - c.offset / 512) broken("outside the disk");
  if (c.offset % lim.sector_size != 0 || c.length % lim.sector_size != 0) broken("not aligned");
  if (lim.readonly && c.kind != op_kind::read) broken("write accepted on a read-only device");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < x86_64_request_size) return 0;
  std::array<std::byte, x86_64_request_size> slot;
  std::memcpy(slot.data(), data, slot.size());
  const std::uint8_t* p = data + slot.size();
  std::size_t n = size - slot.size();

  device_limits lim;
  lim.sectors = take<std::uint64_t>(p, n);
  static constexpr std::uint32_t sizes[] = {512, 1024, 2048, 4096};
  const auto flags = take<std::uint8_t>(p, n);
  lim.sector_size = sizes[flags & 3];
  lim.readonly = flags & 4;
  lim.barrier = flags & 8;
  lim.discard = flags & 16;
  lim.discard_secure = flags & 32;
  lim.flush = !(flags & 64);
  lim.max_indirect_segments = (flags & 128) ? take<std::uint16_t>(p, n) % 4097 : 0;

  // The input's length picks the layout its first bytes are read in.
  wire_request w =
      size % 2 ? decode_x86_32(std::span<const std::byte, x86_32_request_size>(slot.data(), x86_32_request_size))
               : decode_x86_64(slot);
  std::array<segment, BLKIF_MAX_SEGMENTS_PER_REQUEST> direct{};
  validation v = validate(w, lim, direct);
  if (auto* c = std::get_if<checked_request>(&v)) {
    check(*c, lim, w.operation);
  } else if (auto* r = std::get_if<rejected>(&v)) {
    if (r->id != w.id) broken("response id differs");
    if (r->status != BLKIF_RSP_ERROR && r->status != BLKIF_RSP_EOPNOTSUPP) broken("bad status");
  } else {
    const auto& need = std::get<needs_indirect>(v);
    if (need.nr_segments == 0 || need.nr_segments > lim.max_indirect_segments) broken("indirect count");
    if (need.pages == 0 || need.pages > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST) broken("indirect pages");
    // The rest of the input plays the indirect pages' contents.
    std::vector<blkif_request_segment> descs(need.nr_segments);
    for (auto& d : descs) d = take<blkif_request_segment>(p, n);
    std::vector<segment> storage(need.nr_segments);
    validation iv = validate_indirect(w, descs, lim, storage);
    if (auto* c = std::get_if<checked_request>(&iv)) check(*c, lim, w.operation);
  }
  return 0;
}
