// The in-flight journal: whatever point a process dies at, the next one
// finds exactly the requests that were taken and not answered, and the
// responses the guest may not have seen; anything it cannot trust is
// refused, never guessed at.
#include "blkback/data/fault.hpp"
#include "blkback/data/journal.hpp"

#include <doctest/doctest.h>

#include <fcntl.h>
#include <unistd.h>
#include <cstdlib>
#include <filesystem>
#include <fstream>

using namespace xbd::blkback;
using xbd::asio_xen::errc;
using xbd::asio_xen::make_error_code;

namespace {

constexpr std::uint32_t ring_size = 32;
constexpr std::uint32_t max_segments = 256;

struct cut {};

struct temp_path {
  std::filesystem::path path;
  temp_path() {
    char tmpl[] = "/tmp/xbd-journal-XXXXXX";
    int fd = ::mkstemp(tmpl);
    REQUIRE(fd >= 0);
    ::close(fd);
    path = tmpl;
    std::filesystem::remove(path);
  }
  ~temp_path() { std::filesystem::remove(path); }
};

journal_identity identity(unsigned queues = 1) {
  journal_identity id;
  id.frontend_domid = 5;
  id.devid = 51712;
  id.ring_order = 0;
  for (unsigned q = 0; q < queues; ++q) {
    id.ring_refs.push_back({static_cast<grant_ref_t>(8 + q)});
    id.ports.push_back(20 + q);
  }
  return id;
}

wire_request request(std::uint64_t id, std::uint8_t op = BLKIF_OP_WRITE) {
  wire_request w;
  w.operation = op;
  w.id = id;
  w.sector_number = id * 8;
  w.nr_segments = 1;
  w.seg[0] = {static_cast<grant_ref_t>(100 + id), 0, 7};
  return w;
}

// A request taken and answered the way the queue does it.
void answer(ring_journal& j, std::uint32_t& rsp, std::uint32_t entry, std::uint64_t id) {
  j.record_response(rsp, entry, id, BLKIF_OP_WRITE, 0);
  j.responded(rsp, entry);
  ++rsp;
}

// The next process's view.
xbd::asio_xen::result<recovered_ring> reopen(const temp_path& f, std::uint32_t pushed, std::uint32_t req_prod,
                                             const journal_identity& id = identity()) {
  auto j = vbd_journal::open(f.path, id, ring_size, max_segments);
  if (!j) return j.error();
  return j->ring(0).recover(pushed, req_prod);
}

}  // namespace

TEST_CASE("journal: what was in flight at the cut is found in ring order, with unpushed responses") {
  temp_path f;
  {
    auto j = vbd_journal::create(f.path, identity(), ring_size, max_segments);
    REQUIRE(j.has_value());
    ring_journal& r = j->ring(0);
    r.start(0, 0);
    std::uint32_t rsp = 0;
    auto e0 = r.take(0, request(10));
    auto e1 = r.take(1, request(11));
    auto e2 = r.take(2, request(12));
    REQUIRE((e0 && e1 && e2));
    answer(r, rsp, *e1, 11);  // out of order: 11 is done, 10 and 12 are not
  }
  // Nothing pushed yet (shared rsp_prod 0); the guest published 5.
  auto rec = reopen(f, 0, 5);
  REQUIRE(rec.has_value());
  CHECK(rec->req_cons == 3u);
  CHECK(rec->rsp_prod_pvt == 1u);
  REQUIRE(rec->requests.size() == 2u);
  CHECK(rec->requests[0].request.id == 10u);
  CHECK(rec->requests[0].ring_index == 0u);
  CHECK(rec->requests[1].request.id == 12u);
  CHECK(rec->requests[1].request.sector_number == 96u);
  REQUIRE(rec->responses.size() == 1u);
  CHECK(rec->responses[0].id == 11u);
  CHECK(rec->responses[0].index == 0u);
  // Once pushed, it is not the journal's to repeat.
  CHECK(reopen(f, 1, 5)->responses.empty());
}

TEST_CASE("journal: recovery goes on where it left off, and a second cut is recovered too") {
  temp_path f;
  {
    auto j = vbd_journal::create(f.path, identity(), ring_size, max_segments);
    REQUIRE(j.has_value());
    j->ring(0).start(0, 0);
    REQUIRE(j->ring(0).take(0, request(1)));
    REQUIRE(j->ring(0).take(1, request(2)));
  }
  {
    auto j = vbd_journal::open(f.path, identity(), ring_size, max_segments);
    REQUIRE(j.has_value());
    auto rec = j->ring(0).recover(0, 2);
    REQUIRE(rec.has_value());
    REQUIRE(rec->requests.size() == 2u);
    std::uint32_t rsp = rec->rsp_prod_pvt;
    answer(j->ring(0), rsp, rec->requests[1].entry, 2);
    REQUIRE(j->ring(0).take(2, request(3)));
  }
  auto rec = reopen(f, 0, 3);
  REQUIRE(rec.has_value());
  REQUIRE(rec->requests.size() == 2u);
  CHECK(rec->requests[0].request.id == 1u);
  CHECK(rec->requests[1].request.id == 3u);
  CHECK(rec->responses.size() == 1u);
}

TEST_CASE("journal: a journal in the previous layout (an upgrade's restart) is recovered, checked and goes on in it") {
  temp_path f;
  {
    auto j = vbd_journal::create(f.path, identity(), ring_size, max_segments, 1);
    REQUIRE(j.has_value());
    ring_journal& r = j->ring(0);
    r.start(0, 0);
    std::uint32_t rsp = 0;
    auto e0 = r.take(0, request(1));
    auto e1 = r.take(1, request(2, BLKIF_OP_INDIRECT));
    REQUIRE((e0 && e1));
    const blkif_request_segment d[2] = {{300, 0, 7}, {301, 0, 7}};
    r.save_descriptors(*e1, d);
    answer(r, rsp, *e0, 1);
  }
  {
    auto j = vbd_journal::open(f.path, identity(), ring_size, max_segments);
    REQUIRE(j.has_value());
    auto rec = j->ring(0).recover(0, 2);
    REQUIRE(rec.has_value());
    REQUIRE(rec->requests.size() == 1u);
    CHECK(rec->requests[0].request.id == 2u);
    CHECK(rec->requests[0].descriptors.size() == 2u);
    REQUIRE(rec->responses.size() == 1u);
    CHECK(rec->responses[0].id == 1u);
    REQUIRE(j->ring(0).take(2, request(3)));  // written in layout 1 as well
  }
  SUBCASE("recovered again") {
    auto rec = reopen(f, 1, 3);
    REQUIRE(rec.has_value());
    REQUIRE(rec->requests.size() == 2u);
    CHECK(rec->requests[1].request.id == 3u);
  }
  SUBCASE("its checks still catch a changed byte") {
    // request(3)'s sector number (24), found by its value.
    std::fstream io(f.path, std::ios::in | std::ios::out | std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(io)), {});
    bool changed = false;
    for (std::size_t i = 4096; i + 8 <= bytes.size() && !changed; i += 8) {
      std::uint64_t v;
      std::memcpy(&v, &bytes[i], 8);
      if (v == 24) {
        io.seekp(static_cast<std::streamoff>(i));
        io.write("\x19", 1);
        changed = true;
      }
    }
    REQUIRE(changed);
    io.close();
    CHECK(reopen(f, 1, 3).error() == make_error_code(errc::journal_corrupt));
  }
  CHECK_FALSE(vbd_journal::create(f.path, identity(), ring_size, max_segments, 3).has_value());
}

TEST_CASE("journal: a cut inside take() leaves the request in the ring, not half in the journal") {
  temp_path f;
  {
    auto j = vbd_journal::create(f.path, identity(), ring_size, max_segments);
    REQUIRE(j.has_value());
    j->ring(0).start(0, 0);
    REQUIRE(j->ring(0).take(0, request(1)));
    fault::arm(fault::point::journal_take, 1, [] { throw cut{}; });
    CHECK_THROWS_AS(j->ring(0).take(1, request(2)), cut);
    fault::disarm();
  }
  auto rec = reopen(f, 0, 2);
  REQUIRE(rec.has_value());
  CHECK(rec->req_cons == 1u);
  REQUIRE(rec->requests.size() == 1u);
  CHECK(rec->requests[0].request.id == 1u);
}

TEST_CASE("journal: taken and marked but req_cons not yet advanced counts as not taken") {
  // take() stores the entry's state, then req_cons: emulate the cut
  // between the two by taking and then restoring the earlier req_cons.
  temp_path f;
  {
    auto j = vbd_journal::create(f.path, identity(), ring_size, max_segments);
    REQUIRE(j.has_value());
    j->ring(0).start(0, 0);
    REQUIRE(j->ring(0).take(0, request(1)));
    REQUIRE(j->ring(0).take(1, request(2)));
    j->ring(0).start(1, 0);  // req_cons back to 1 (start also frees nothing in the file)
  }
  auto rec = reopen(f, 0, 2);
  REQUIRE(rec.has_value());
  CHECK(rec->req_cons == 1u);
  REQUIRE(rec->requests.size() == 1u);
  CHECK(rec->requests[0].request.id == 1u);
}

TEST_CASE("journal: a response recorded but not counted leaves its request in flight") {
  temp_path f;
  {
    auto j = vbd_journal::create(f.path, identity(), ring_size, max_segments);
    REQUIRE(j.has_value());
    j->ring(0).start(0, 0);
    auto e = j->ring(0).take(0, request(1));
    REQUIRE(e);
    j->ring(0).record_response(0, *e, 1, BLKIF_OP_WRITE, 0);  // cut before responded()
  }
  auto rec = reopen(f, 0, 1);
  REQUIRE(rec.has_value());
  CHECK(rec->rsp_prod_pvt == 0u);
  CHECK(rec->requests.size() == 1u);
  CHECK(rec->responses.empty());
}

TEST_CASE("journal: a response counted whose entry was not yet freed is answered, not repeated") {
  temp_path f;
  {
    auto j = vbd_journal::create(f.path, identity(), ring_size, max_segments);
    REQUIRE(j.has_value());
    j->ring(0).start(0, 0);
    auto e0 = j->ring(0).take(0, request(1));
    auto e1 = j->ring(0).take(1, request(2));
    REQUIRE((e0 && e1));
    j->ring(0).record_response(0, *e1, 2, BLKIF_OP_WRITE, 0);
    fault::arm(fault::point::journal_respond, 1, [] { throw cut{}; });
    CHECK_THROWS_AS(j->ring(0).responded(0, *e1), cut);
    fault::disarm();
  }
  auto rec = reopen(f, 0, 2);
  REQUIRE(rec.has_value());
  CHECK(rec->answered_unfreed == 1u);
  REQUIRE(rec->requests.size() == 1u);
  CHECK(rec->requests[0].request.id == 1u);
  REQUIRE(rec->responses.size() == 1u);
  CHECK(rec->responses[0].id == 2u);
}

TEST_CASE("journal: an indirect request's descriptors come back, before they were saved, none") {
  temp_path f;
  std::vector<blkif_request_segment> d(300);
  for (std::size_t i = 0; i < d.size(); ++i) d[i] = {static_cast<grant_ref_t>(1000 + i), 0, 7};
  {
    auto j = vbd_journal::create(f.path, identity(), ring_size, 512);
    REQUIRE(j.has_value());
    j->ring(0).start(0, 0);
    auto e0 = j->ring(0).take(0, request(1, BLKIF_OP_INDIRECT));
    auto e1 = j->ring(0).take(1, request(2, BLKIF_OP_INDIRECT));
    REQUIRE((e0 && e1));
    j->ring(0).save_descriptors(*e0, d);
  }
  // The journal's own segment limit decides its layout, whatever ours is now.
  auto j = vbd_journal::open(f.path, identity(), ring_size, max_segments);
  REQUIRE(j.has_value());
  auto rec = j->ring(0).recover(0, 2);
  REQUIRE(rec.has_value());
  REQUIRE(rec->requests.size() == 2u);
  REQUIRE(rec->requests[0].descriptors.size() == 300u);
  CHECK(rec->requests[0].descriptors[299].gref == 1299u);
  CHECK(rec->requests[1].descriptors.empty());
}

TEST_CASE("journal: indices that wrap around 2^32 are followed") {
  temp_path f;
  const std::uint32_t base = 0xFFFFFFFEu;
  {
    auto j = vbd_journal::create(f.path, identity(), ring_size, max_segments);
    REQUIRE(j.has_value());
    ring_journal& r = j->ring(0);
    r.start(base, base);
    std::uint32_t rsp = base;
    for (std::uint32_t i = 0; i < 5; ++i) {
      auto e = r.take(base + i, request(i));
      REQUIRE(e);
      if (i % 2 == 0) answer(r, rsp, *e, i);
    }
  }
  auto rec = reopen(f, base + 1, base + 6);
  REQUIRE(rec.has_value());
  CHECK(rec->req_cons == base + 5);
  CHECK(rec->rsp_prod_pvt == base + 3);
  REQUIRE(rec->requests.size() == 2u);
  CHECK(rec->requests[0].request.id == 1u);
  CHECK(rec->requests[1].request.id == 3u);
  CHECK(rec->responses.size() == 2u);
}

TEST_CASE("journal: a journal of another connection is stale, a damaged one is corrupt, none is missing") {
  temp_path f;
  {
    auto j = vbd_journal::create(f.path, identity(), ring_size, max_segments);
    REQUIRE(j.has_value());
    j->ring(0).start(0, 0);
    REQUIRE(j->ring(0).take(0, request(1)));
  }
  journal_identity other = identity();
  other.ports[0] = 99;
  CHECK(reopen(f, 0, 1, other).error() == make_error_code(errc::journal_stale));
  CHECK(vbd_journal::open(f.path, identity(2), ring_size, max_segments).error() ==
        make_error_code(errc::journal_stale));

  SUBCASE("a byte of an in-flight request changed") {
    // The entry's request lies in the first ring's entries: flip a byte of
    // its sector number wherever it is, found by its value.
    std::fstream io(f.path, std::ios::in | std::ios::out | std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(io)), {});
    const std::uint64_t sector = 8;
    bool changed = false;
    for (std::size_t i = 4096; i + 8 <= bytes.size() && !changed; i += 8) {
      std::uint64_t v;
      std::memcpy(&v, &bytes[i], 8);
      if (v == sector) {
        io.seekp(static_cast<std::streamoff>(i));
        const char x = static_cast<char>(9);
        io.write(&x, 1);
        changed = true;
      }
    }
    REQUIRE(changed);
    io.close();
    CHECK(reopen(f, 0, 1).error() == make_error_code(errc::journal_corrupt));
  }
  SUBCASE("the file cut short") {
    std::filesystem::resize_file(f.path, 8192);
    CHECK(reopen(f, 0, 1).error() == make_error_code(errc::journal_corrupt));
  }
  SUBCASE("the header damaged") {
    std::fstream io(f.path, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(12);
    io.write("\x7f", 1);
    io.close();
    CHECK(reopen(f, 0, 1).error() == make_error_code(errc::journal_corrupt));
  }
  SUBCASE("indices that do not match the ring") {
    // The guest's ring says 40 responses were pushed: more than were made.
    CHECK(reopen(f, 40, 41).error() == make_error_code(errc::journal_corrupt));
  }
  SUBCASE("missing") {
    std::filesystem::remove(f.path);
    CHECK(reopen(f, 0, 1).error() == std::errc::no_such_file_or_directory);
  }
}
