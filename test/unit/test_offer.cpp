// What a vbd offers, from the toolstack's keys, the store and the settings.
#include "asio_xen/xen.hpp"
#include "blkback/control/offer.hpp"

#include <doctest/doctest.h>

#include <string>

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
}

TEST_CASE("discard-secure is offered only when the toolstack vouches for it and the store can issue it") {
  auto device = disk();
  device.discard_secure = true;  // a block device: BLKSECDISCARD can be asked for
  const auto offered = make_offer({}, device, settings{}).limits;
  CHECK_FALSE(offered.discard_secure);  // decided per connection
  CHECK(offer_discard_secure(offered, true, device));
  CHECK_FALSE(offer_discard_secure(offered, false, device));  // no discard-secure-enable
  CHECK_FALSE(offer_discard_secure(offered, true, disk()));   // a file
  settings off;
  off.discard = false;
  CHECK_FALSE(offer_discard_secure(make_offer({}, device, off).limits, true, device));  // no discard at all
}

TEST_CASE("sector size: 512 for a frontend without feature-large-sector-size, the store's for one with it") {
  auto native4k = disk();
  native4k.logical_sector = 4096;
  CHECK(choose_sector_size(0, false, native4k).size == 512);
  CHECK(choose_sector_size(0, true, native4k).size == 4096);
  CHECK(choose_sector_size(0, true, disk()).size == 512);
  // What the operator forces wins over both.
  CHECK(choose_sector_size(4096, false, disk()).size == 4096);
  CHECK(choose_sector_size(512, true, native4k).size == 512);
  CHECK(std::string(choose_sector_size(4096, false, disk()).why) == "forced");
}

TEST_CASE("sector size: a store serves sizes from its unit up, or below it only without O_DIRECT") {
  auto direct4k = disk();
  direct4k.logical_sector = direct4k.io_alignment = 4096;
  direct4k.direct = true;
  CHECK(fit_sector_size(4096, direct4k) == sector_fit::fits);
  CHECK(fit_sector_size(512, direct4k) == sector_fit::without_direct);
  auto export4k = direct4k;  // a network export whose minimum block is 4 KiB
  export4k.direct = false;
  CHECK(fit_sector_size(512, export4k) == sector_fit::impossible);
  CHECK(fit_sector_size(2048, export4k) == sector_fit::impossible);
  auto buffered4k = disk();  // a 4Kn device through the page cache
  buffered4k.logical_sector = 4096;
  CHECK(fit_sector_size(512, buffered4k) == sector_fit::fits);
  CHECK(fit_sector_size(4096, disk()) == sector_fit::fits);
}

TEST_CASE("force-sector-size: absent is the configured default, 0 is none, anything else must be a sector size") {
  CHECK(parse_forced_sector_size(std::nullopt, 0) == 0u);
  CHECK(parse_forced_sector_size(std::nullopt, 4096) == 4096u);
  CHECK(parse_forced_sector_size(std::string("0"), 4096) == 0u);
  for (const char* good : {"512", "1024", "2048", "4096"})
    CHECK(parse_forced_sector_size(std::string(good), 0) == static_cast<std::uint32_t>(std::stoul(good)));
  for (const char* bad : {"", "256", "1000", "8192", "4k", "-512", " 512", "512 ", "0x200", "99999999999999999999"})
    CHECK_FALSE(parse_forced_sector_size(std::string(bad), 0).has_value());
}

TEST_CASE("indirect segments are offered as configured, or not at all") {
  settings cfg;
  cfg.max_indirect_segments = 0;
  CHECK(make_offer({}, disk(), cfg).limits.max_indirect_segments == 0);
  cfg.max_indirect_segments = 64;
  CHECK(make_offer({}, disk(), cfg).limits.max_indirect_segments == 64);
}
