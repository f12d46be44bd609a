// What a vbd offers, from the toolstack's keys, the store and the settings.
#include "asio_xen/xen.hpp"
#include "blkback/control/offer.hpp"

#include <doctest/doctest.h>

using namespace xbd::blkback;

namespace {

storage::properties disk(bool writable = true) {
  storage::properties p;
  p.size = 64 << 20;
  p.logical_sector = 512;
  p.physical_sector = 4096;
  p.writable = writable;
  p.discard = true;
  p.discard_granularity = 4096;
  p.discard_alignment = 512;
  return p;
}

}  // namespace

TEST_CASE("a writable disk offers flush, barrier, discard and indirect segments, in 512-byte sectors") {
  settings cfg;
  auto o = make_offer({}, disk(), cfg);
  CHECK(o.limits.sectors == (64u << 20) / 512);
  CHECK(o.limits.sector_size == 512);
  CHECK_FALSE(o.limits.readonly);
  CHECK(o.limits.flush);
  CHECK(o.limits.barrier);
  CHECK(o.limits.discard);
  CHECK_FALSE(o.limits.discard_secure);
  CHECK(o.limits.discard_granularity == 4096);
  CHECK(o.discard_alignment == 512);
  CHECK(o.limits.max_indirect_segments == cfg.max_indirect_segments);
  CHECK(o.info == 0);
}

TEST_CASE("sectors stay 512-byte units when the store's logical sector is 4 KiB") {
  auto p = disk();
  p.logical_sector = 4096;
  auto o = make_offer({}, p, settings{});
  CHECK(o.limits.sectors == (64u << 20) / 512);
  CHECK(o.limits.sector_size == 4096);
}

TEST_CASE("read-only: mode r, a cdrom, or a store opened read-only, none offers barrier or discard") {
  for (auto [keys, store] :
       {std::pair{toolstack_choices{false}, disk()}, std::pair{toolstack_choices{true, true}, disk()},
        std::pair{toolstack_choices{}, disk(false)}}) {
    auto o = make_offer(keys, store, settings{});
    CHECK(o.limits.readonly);
    CHECK_FALSE(o.limits.barrier);
    CHECK_FALSE(o.limits.discard);
    CHECK((o.info & VDISK_READONLY) != 0);
  }
  CHECK((make_offer({true, true}, disk(), settings{}).info & VDISK_CDROM) != 0);
  CHECK((make_offer({true, false, true}, disk(), settings{}).info & VDISK_REMOVABLE) != 0);
}

TEST_CASE("discard needs the toolstack, our settings and the store to agree") {
  settings off;
  off.discard = false;
  CHECK_FALSE(make_offer({}, disk(), off).limits.discard);
  CHECK_FALSE(make_offer({true, false, false, false}, disk(), settings{}).limits.discard);
  auto no_discard = disk();
  no_discard.discard = false;
  auto o = make_offer({}, no_discard, settings{});
  CHECK_FALSE(o.limits.discard);
  CHECK(o.discard_alignment == 0);
  auto secure = disk();
  secure.discard_secure = true;
  CHECK(make_offer({}, secure, settings{}).limits.discard_secure);
  CHECK_FALSE(make_offer({}, secure, off).limits.discard_secure);
}

TEST_CASE("indirect segments are offered as configured, or not at all") {
  settings cfg;
  cfg.max_indirect_segments = 0;
  CHECK(make_offer({}, disk(), cfg).limits.max_indirect_segments == 0);
  cfg.max_indirect_segments = 64;
  CHECK(make_offer({}, disk(), cfg).limits.max_indirect_segments == 64);
}
