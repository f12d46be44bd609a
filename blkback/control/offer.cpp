#include "blkback/control/offer.hpp"

#include "asio_xen/xen.hpp"

namespace xbd::blkback {

disk_offer make_offer(const toolstack_choices& keys, const storage::properties& store, const settings& cfg) {
  const bool writable = keys.writable && !keys.cdrom && store.writable;  // blkif.h: a cdrom is read-only
  disk_offer o;
  auto& l = o.limits;
  l.sectors = store.size / 512;  // always 512-byte units
  l.sector_size = store.logical_sector;
  l.readonly = !writable;
  l.flush = store.flush;
  l.barrier = writable;
  l.discard = writable && keys.discard_enable && cfg.discard && store.discard;
  l.discard_secure = l.discard && store.discard_secure;
  l.discard_granularity = store.discard_granularity;
  l.max_indirect_segments = cfg.max_indirect_segments;
  o.discard_alignment = l.discard ? store.discard_alignment : 0;
  o.info = (keys.cdrom ? VDISK_CDROM : 0u) | (keys.removable ? VDISK_REMOVABLE : 0u) | (writable ? 0u : VDISK_READONLY);
  return o;
}

}  // namespace xbd::blkback
