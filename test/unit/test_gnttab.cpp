#include "asio_xen/gnttab.hpp"
#include "test/fakes/fake_gnttab.hpp"

#include <doctest/doctest.h>

#include <cstring>

using namespace xbd::asio_xen;
using xbd::fakes::fake_grant_tables;

namespace {
constexpr std::size_t page = xbd::xen::page_size;
}

TEST_CASE("grant refs of scattered frames map as one contiguous, shared range") {
  fake_grant_tables t;
  auto& g = t.add_guest(5, 16);
  std::vector<grant_ref> refs{g.grant(9, 0), g.grant(2, 0), g.grant(14, 0)};
  grant_table gt(t.open(0));
  auto m = gt.map(5, refs, true);
  REQUIRE(m.has_value());
  CHECK(m->pages() == 3u);
  auto bytes = m->bytes();
  REQUIRE(bytes.size() == 3 * page);
  bytes[0] = std::byte{0xa1};
  bytes[page] = std::byte{0xb2};
  bytes[2 * page + page - 1] = std::byte{0xc3};
  CHECK(g.page(9)[0] == std::byte{0xa1});
  CHECK(g.page(2)[0] == std::byte{0xb2});
  CHECK(g.page(14)[page - 1] == std::byte{0xc3});
  // And the other way.
  g.page(2)[7] = std::byte{0x55};
  CHECK(bytes[page + 7] == std::byte{0x55});
}

TEST_CASE("mapping is all or nothing and refused without the right grant") {
  fake_grant_tables t;
  auto& g = t.add_guest(5, 8);
  grant_ref ok = g.grant(0, 0);
  grant_ref other = g.grant(1, 7);  // granted to domain 7
  grant_ref ro = g.grant(2, 0, /*readonly*/ true);
  grant_table gt(t.open(0));
  auto refused = [&](std::vector<grant_ref> refs, bool writable) {
    auto m = gt.map(5, refs, writable);
    bool eperm = !m.has_value() && m.error() == boost::system::errc::invalid_argument;
    return eperm && t.mapped_pages() == 0;
  };
  CHECK(refused({ok, 999}, true));    // not granted at all
  CHECK(refused({ok, other}, true));  // granted to someone else
  CHECK(refused({ro}, true));         // read-only grant mapped writable
  CHECK(gt.map(5, std::vector<grant_ref>{ro}, false).has_value());
  CHECK_FALSE(gt.map(5, std::vector<grant_ref>{}, true).has_value());
}

TEST_CASE("set_max_grants caps what one handle maps at once") {
  fake_grant_tables t;
  auto& g = t.add_guest(5, 8);
  grant_table gt(t.open(0));
  REQUIRE_FALSE(gt.set_max_grants(2));
  auto a = gt.map(5, std::vector<grant_ref>{g.grant(0, 0), g.grant(1, 0)}, true);
  REQUIRE(a.has_value());
  CHECK_FALSE(gt.map(5, std::vector<grant_ref>{g.grant(2, 0)}, true).has_value());
  a->reset();
  CHECK(gt.map(5, std::vector<grant_ref>{g.grant(3, 0)}, true).has_value());
}

TEST_CASE("a mapping is undone by its destructor") {
  fake_grant_tables t;
  auto& g = t.add_guest(5, 4);
  grant_table gt(t.open(0));
  {
    auto m = gt.map(5, std::vector<grant_ref>{g.grant(0, 0), g.grant(1, 0)}, true);
    REQUIRE(m.has_value());
    CHECK(t.mapped_pages() == 2u);
    grant_mapping moved = std::move(*m);
    CHECK(t.mapped_pages() == 2u);
  }
  CHECK(t.mapped_pages() == 0u);
}

TEST_CASE("grant copy moves data both ways") {
  fake_grant_tables t;
  auto& g = t.add_guest(5, 4);
  grant_ref r = g.grant(3, 0);
  std::memset(g.page(3).data(), 0x5a, page);
  grant_table gt(t.open(0));
  alignas(4096) static std::byte buf[page];
  std::vector<copy_segment> segs{copy_from_guest(5, r, 512, buf, 1024)};
  REQUIRE_FALSE(gt.copy(segs));
  CHECK(buf[0] == std::byte{0x5a});
  CHECK(buf[1023] == std::byte{0x5a});
  std::memset(buf, 0x11, page);
  segs = {copy_to_guest(5, r, 4096 - 512, buf, 512)};
  REQUIRE_FALSE(gt.copy(segs));
  CHECK(g.page(3)[4095] == std::byte{0x11});
  CHECK(g.page(3)[4096 - 513] == std::byte{0x5a});
}

TEST_CASE("every segment's status is checked and the others still run (XSA-362/365)") {
  fake_grant_tables t;
  auto& g = t.add_guest(5, 4);
  grant_ref good = g.grant(0, 0);
  grant_ref ro = g.grant(1, 0, true);
  grant_ref other = g.grant(2, 9);
  std::memset(g.page(0).data(), 0x77, page);
  grant_table gt(t.open(0));
  alignas(4096) static std::byte buf[4][page];
  std::vector<copy_segment> segs{
      copy_from_guest(5, 12345, 0, buf[0], 512),  // no such grant
      copy_to_guest(5, ro, 0, buf[1], 512),       // writing a read-only grant
      copy_from_guest(5, other, 0, buf[2], 512),  // granted to domain 9
      copy_from_guest(5, good, 0, buf[3], 4096),  // fine
  };
  std::size_t failed = 99;
  error_code ec = gt.copy(segs, &failed);
  CHECK(ec == grant_status_error(GNTST_bad_gntref));
  CHECK(failed == 0u);
  CHECK(segs[0].status == GNTST_bad_gntref);
  CHECK(segs[1].status == GNTST_general_error);
  CHECK(segs[2].status == GNTST_general_error);
  CHECK(segs[3].status == GNTST_okay);
  CHECK(buf[3][4095] == std::byte{0x77});
  // A segment beyond its page fails the whole call before anything is copied.
  std::vector<copy_segment> beyond{copy_from_guest(5, good, 3584, buf[0], 1024)};
  CHECK(gt.copy(beyond) == boost::system::errc::invalid_argument);
  std::vector<copy_segment> unknown_dom{copy_from_guest(6, good, 0, buf[0], 512)};
  CHECK(gt.copy(unknown_dom) == grant_status_error(GNTST_bad_domain));
}

TEST_CASE("the copy fault knob fails one chosen segment") {
  fake_grant_tables t;
  auto& g = t.add_guest(5, 2);
  grant_ref r = g.grant(0, 0);
  grant_table gt(t.open(0));
  alignas(4096) static std::byte buf[2][page];
  t.fail_copy_segment(1, GNTST_general_error);
  std::vector<copy_segment> segs{copy_from_guest(5, r, 0, buf[0], 512), copy_from_guest(5, r, 0, buf[1], 512)};
  std::size_t failed = 99;
  CHECK(gt.copy(segs, &failed) == grant_status_error(GNTST_general_error));
  CHECK(failed == 1u);
  CHECK(segs[0].status == GNTST_okay);
}
