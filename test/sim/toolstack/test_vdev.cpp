// vdev <-> devid, as libxl__device_disk_dev_number / libxl__devid_to_vdev.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "toolstack.hpp"

using xbd::sim::devid_to_vdev;
using xbd::sim::vdev_to_devid;

namespace {
constexpr std::uint32_t ext = 1u << 28;
}

TEST_CASE("xvd names: 202<<8 | disk<<4 | part up to 15/15") {
  CHECK(vdev_to_devid("xvda") == 51712u);
  CHECK(vdev_to_devid("xvda1") == 51713u);
  CHECK(vdev_to_devid("xvdb") == 51728u);
  CHECK(vdev_to_devid("xvdp") == 51952u);
  CHECK(vdev_to_devid("xvdp15") == 51967u);
}

TEST_CASE("xvd names: the extended form beyond 16 disks or 15 partitions") {
  CHECK(vdev_to_devid("xvdq") == (ext | (16u << 8)));
  CHECK(vdev_to_devid("xvda16") == (ext | 16u));
  CHECK(vdev_to_devid("xvda255") == (ext | 255u));
  CHECK(vdev_to_devid("xvdz") == (ext | (25u << 8)));
  CHECK(vdev_to_devid("xvdaa") == (ext | (26u << 8)));
  CHECK(vdev_to_devid("xvdzzzz") == (ext | (475253u << 8)));
  CHECK(vdev_to_devid("xvdaaaaa") == (ext | (475254u << 8)));
  CHECK_FALSE(vdev_to_devid("xvdzzzzz"));  // index 12356629 > 2^20-1
  CHECK_FALSE(vdev_to_devid("xvda256"));
}

TEST_CASE("d<disk>p<part> names") {
  CHECK(vdev_to_devid("d0p0") == 51712u);
  CHECK(vdev_to_devid("d1p2") == 51730u);
  CHECK(vdev_to_devid("d16p0") == (ext | (16u << 8)));
  CHECK(vdev_to_devid("d0p16") == (ext | 16u));
  CHECK(vdev_to_devid("d0x10p0") == (ext | (16u << 8)));  // %i: hex accepted
  CHECK_FALSE(vdev_to_devid("d1048576p0"));
  CHECK_FALSE(vdev_to_devid("d0p256"));
  CHECK_FALSE(vdev_to_devid("d0p1x"));
}

TEST_CASE("hd names: 3<<8 (hda/hdb) or 22<<8 (hdc/hdd), slave bit 6, 63 partitions") {
  CHECK(vdev_to_devid("hda") == 768u);
  CHECK(vdev_to_devid("hdb") == 832u);
  CHECK(vdev_to_devid("hdc") == 5632u);
  CHECK(vdev_to_devid("hdd") == 5696u);
  CHECK(vdev_to_devid("hda1") == 769u);
  CHECK(vdev_to_devid("hda63") == 831u);
  CHECK_FALSE(vdev_to_devid("hde"));
  CHECK_FALSE(vdev_to_devid("hda64"));
}

TEST_CASE("sd names: 8<<8 | disk<<4 | part, 16 disks, 15 partitions") {
  CHECK(vdev_to_devid("sda") == 2048u);
  CHECK(vdev_to_devid("sdb") == 2064u);
  CHECK(vdev_to_devid("sdp") == 2288u);
  CHECK(vdev_to_devid("sda15") == 2063u);
  CHECK_FALSE(vdev_to_devid("sdq"));
  CHECK_FALSE(vdev_to_devid("sda16"));
}

TEST_CASE("plain numbers are taken as the devid") {
  CHECK(vdev_to_devid("51712") == 51712u);
  CHECK(vdev_to_devid("0x10") == 16u);
  CHECK(vdev_to_devid("2147483647") == 2147483647u);
  CHECK_FALSE(vdev_to_devid("2147483648"));
  CHECK_FALSE(vdev_to_devid("-1"));
}

TEST_CASE("names libxl rejects, and the garbage it would accept that we reject") {
  CHECK_FALSE(vdev_to_devid("xvda0"));  // leading zero in the partition
  CHECK_FALSE(vdev_to_devid("xvdA"));
  CHECK_FALSE(vdev_to_devid("xvda1x"));
  CHECK_FALSE(vdev_to_devid("vda"));
  CHECK_FALSE(vdev_to_devid("xvd"));    // libxl: -16
  CHECK_FALSE(vdev_to_devid("hd"));     // libxl: 832
  CHECK_FALSE(vdev_to_devid(""));       // libxl: 0 (strtoul of "")
  CHECK_FALSE(vdev_to_devid("d-1p0"));  // libxl: negative garbage
}

TEST_CASE("devid -> xvd name (libxl__devid_to_vdev) and round trips") {
  CHECK(devid_to_vdev(51712) == "xvda");
  CHECK(devid_to_vdev(51713) == "xvda1");
  CHECK(devid_to_vdev(51967) == "xvdp15");
  CHECK(devid_to_vdev(ext | (16u << 8)) == "xvdq");
  CHECK(devid_to_vdev(ext | 16u) == "xvda16");
  CHECK(devid_to_vdev(ext | (26u << 8)) == "xvdaa");
  for (const char* name : {"xvda", "xvdb3", "xvdp", "xvdq", "xvdq7", "xvda200", "xvdzz", "xvdabc9"}) {
    CAPTURE(name);
    auto d = vdev_to_devid(name);
    REQUIRE(d);
    CHECK(devid_to_vdev(*d) == name);
  }
}
