#include "blkback/control/offer.hpp"

#include "asio_xen/xen.hpp"
#include "asio_xen/xenstore.hpp"

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
  l.discard_granularity = store.discard_granularity;
  l.max_indirect_segments = cfg.max_indirect_segments;
  o.discard_alignment = l.discard ? store.discard_alignment : 0;
  o.info = (keys.cdrom ? VDISK_CDROM : 0u) | (keys.removable ? VDISK_REMOVABLE : 0u) | (writable ? 0u : VDISK_READONLY);
  return o;
}

bool offer_discard_secure(const device_limits& offered, bool vouched, const storage::properties& store) {
  return offered.discard && vouched && store.discard_secure;
}

sector_size_choice choose_sector_size(std::uint32_t forced, bool frontend_large, const storage::properties& store) {
  if (forced != 0) return {forced, "forced"};
  // blkif.h: without feature-large-sector-size the frontend may assume
  // 512-byte sectors, whatever the store has.
  if (!frontend_large) return {512, "the frontend does not set feature-large-sector-size"};
  return {store.logical_sector, "the store's, for a frontend with feature-large-sector-size"};
}

sector_fit fit_sector_size(std::uint32_t size, const storage::properties& store) {
  // Both are powers of two: a larger sector is a whole number of the
  // store's units.
  if (store.io_alignment <= size) return sector_fit::fits;
  return store.direct ? sector_fit::without_direct : sector_fit::impossible;
}

std::optional<std::uint32_t> parse_forced_sector_size(const std::optional<std::string>& key, unsigned configured) {
  if (!key) return configured;
  auto v = asio_xen::parse_value<unsigned>(*key);
  if (!v) return std::nullopt;
  if (*v == 0 || valid_sector_size(*v)) return *v;
  return std::nullopt;
}

}  // namespace xbd::blkback
