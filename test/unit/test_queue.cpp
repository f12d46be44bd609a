// The data plane against the fakes: a frontend played by the test on fake
// guest memory, the real queue code in between, a real file behind it.
#include "asio_xen/ring.hpp"
#include "blkback/data/queue.hpp"
#include "blkback/storage/local.hpp"
#include "test/fakes/fake_evtchn.hpp"
#include "test/fakes/fake_gnttab.hpp"
#include "test/support/front_ring.hpp"
#include "test/unit/run.hpp"

#include <doctest/doctest.h>
#include <boost/asio/io_context.hpp>

#include <fcntl.h>
#include <unistd.h>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>

using namespace xbd;
using namespace xbd::blkback;
using asio_xen::grant_ref;
namespace asio = boost::asio;

namespace {

constexpr std::size_t page = xen::page_size;
constexpr unsigned guest_domid = 5;
constexpr std::size_t data_frames = 64;

std::byte pattern(std::uint64_t disk_offset) {
  return std::byte(static_cast<std::uint8_t>((disk_offset >> 9) * 31 + (disk_offset & 511)));
}

struct temp_file {
  std::string path;
  explicit temp_file(std::uint64_t size) {
    char tmpl[] = "/tmp/xbd-queue-XXXXXX";
    int fd = ::mkstemp(tmpl);
    REQUIRE(fd >= 0);
    path = tmpl;
    std::vector<std::byte> buf(size);
    for (std::uint64_t i = 0; i < size; ++i) buf[i] = pattern(i);
    REQUIRE(::write(fd, buf.data(), size) == static_cast<ssize_t>(size));
    ::close(fd);
  }
  ~temp_file() { ::unlink(path.c_str()); }
  std::vector<std::byte> read(std::uint64_t off, std::size_t len) const {
    std::vector<std::byte> b(len);
    int fd = ::open(path.c_str(), O_RDONLY);
    (void)!::pread(fd, b.data(), len, static_cast<off_t>(off));
    ::close(fd);
    return b;
  }
};

struct rig {
  asio::io_context ioc;
  fakes::fake_grant_tables tables;
  fakes::fake_evtchn_bus bus;
  std::size_t ring_pages;
  fakes::fake_guest& guest;
  std::vector<grant_ref> ring_refs;
  std::vector<grant_ref> data_refs;
  std::optional<asio_xen::front_ring<blkif_request, blkif_response>> front;
  std::optional<asio_xen::event_channel> front_evtchn;
  temp_file file;
  std::unique_ptr<storage::store> store;
  std::shared_ptr<memory_budget> memory;
  std::unique_ptr<queue> q;
  std::future<asio_xen::error_code> running;

  // `adjust` may wrap the store and set queue parameters before the queue connects.
  using adjuster = std::function<void(std::unique_ptr<storage::store>&, queue_params&)>;
  explicit rig(std::size_t pages = 1, device_limits lim = {}, std::uint64_t disk_bytes = 1 << 20, bool readonly = false,
               std::uint64_t memory_budget_bytes = std::uint64_t{1} << 30, queue_tuning tuning = {},
               const adjuster& adjust = {}, std::shared_ptr<throttle_group> throttle = nullptr)
      : ring_pages(pages),
        guest(tables.add_guest(guest_domid, pages + data_frames)),
        file(disk_bytes),
        memory(std::make_shared<memory_budget>(memory_budget_bytes)) {
    for (std::size_t i = 0; i < pages; ++i) ring_refs.push_back(guest.grant(i, 0));
    for (std::size_t i = 0; i < data_frames; ++i) data_refs.push_back(guest.grant(pages + i, 0));
    front.emplace(*asio_xen::front_ring<blkif_request, blkif_response>::init({guest.page(0).data(), pages * page}));
    front_evtchn.emplace(*asio_xen::event_channel::bind_unbound(ioc.get_executor(), bus.open(guest_domid), 0));
    auto st = storage::open_local(file.path, {!readonly, false});
    REQUIRE(st.has_value());
    store = std::move(*st);
    if (lim.sectors == 0) lim.sectors = disk_bytes / 512;
    lim.readonly = readonly;
    queue_params p;
    p.frontend_domid = guest_domid;
    p.ring_refs = ring_refs;
    p.remote_port = front_evtchn->local_port();
    p.limits = lim;
    p.memory = memory->open_account();
    p.throttle = std::move(throttle);
    if (adjust) adjust(store, p);
    xen_platform xp{[this] { return asio_xen::result<std::unique_ptr<asio_xen::evtchn_driver>>(bus.open(0)); },
                    [this] { return asio_xen::result<std::unique_ptr<asio_xen::gnttab_driver>>(tables.open(0)); }};
    auto aux = aux_ring::create(ioc.get_executor());
    REQUIRE(aux.has_value());
    auto qq = queue::connect(worker{ioc.get_executor(), *aux}, xp, p, *store, device_logger(guest_domid, 51712));
    REQUIRE(qq.has_value());
    q = std::move(*qq);
    q->set_tuning(tuning);
    running = asio::co_spawn(ioc, q->run(), asio::use_future);
  }

  std::span<std::byte> data_page(std::size_t i) { return guest.page(ring_pages + i); }

  void submit(const blkif_request& r) { front->put_request(r); }
  void kick() {
    if (front->push_requests()) REQUIRE_FALSE(front_evtchn->notify());
  }

  // Runs the backend until `n` responses are there.
  std::vector<blkif_response> responses(std::size_t n, std::chrono::milliseconds limit = std::chrono::seconds(5)) {
    std::vector<blkif_response> out;
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (out.size() < n) {
      while (front->unconsumed_responses() > 0 && out.size() < n) out.push_back(front->consume_response());
      if (out.size() >= n) break;
      if (std::chrono::steady_clock::now() > deadline) break;
      ioc.restart();
      xbd::test::run_for(ioc, std::chrono::milliseconds(5));
    }
    return out;
  }

  // Runs the backend for a while, whatever happens.
  void idle_for(std::chrono::milliseconds d) {
    ioc.restart();
    xbd::test::run_for(ioc, d);
  }

  // Stops the queue and returns what run() returned.
  asio_xen::error_code stop() {
    asio::post(ioc, [this] { q->stop(); });
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (running.wait_for(std::chrono::seconds(0)) != std::future_status::ready &&
           std::chrono::steady_clock::now() < deadline) {
      ioc.restart();
      xbd::test::run_for(ioc, std::chrono::milliseconds(5));
    }
    REQUIRE(running.wait_for(std::chrono::seconds(0)) == std::future_status::ready);
    return running.get();
  }
};

// A store whose flushes are refused (EOPNOTSUPP, as a file system without
// fsync answers), around a real one; it counts the flushes that reach it.
class unflushable final : public storage::store {
 public:
  explicit unflushable(std::unique_ptr<storage::store> inner) : inner_(std::move(inner)) {}
  const storage::properties& props() const override { return inner_->props(); }
  asio_xen::result<std::uint64_t> current_size() const override { return inner_->current_size(); }
  std::string name() const override { return inner_->name(); }
  asio_xen::result<std::unique_ptr<storage::channel>> open_channel(const worker& w, unsigned depth) override {
    auto c = inner_->open_channel(w, depth);
    if (!c) return c.error();
    return std::unique_ptr<storage::channel>(new channel(std::move(*c), w.ex, flushes));
  }
  int flushes = 0;

 private:
  class channel final : public storage::channel {
   public:
    channel(std::unique_ptr<storage::channel> inner, asio::any_io_executor ex, int& flushes)
        : inner_(std::move(inner)), ex_(std::move(ex)), flushes_(flushes) {}
    void read(std::uint64_t o, std::span<std::byte> b, storage::completion& d) override { inner_->read(o, b, d); }
    void write(std::uint64_t o, std::span<const std::byte> b, storage::completion& d) override {
      inner_->write(o, b, d);
    }
    void flush(storage::completion& d) override {
      ++flushes_;
      asio::post(ex_, [&d] { d.complete(asio_xen::error_code(EOPNOTSUPP, boost::system::generic_category())); });
    }
    void discard(std::uint64_t o, std::uint64_t l, bool secure, storage::completion& d) override {
      inner_->discard(o, l, secure, d);
    }
    void trim() override { inner_->trim(); }

   private:
    std::unique_ptr<storage::channel> inner_;
    asio::any_io_executor ex_;
    int& flushes_;
  };
  std::unique_ptr<storage::store> inner_;
};

blkif_request make(std::uint8_t op, std::uint64_t id, std::uint64_t sector,
                   std::vector<std::tuple<grant_ref, int, int>> segs) {
  blkif_request r{};
  r.operation = op;
  r.id = id;
  r.sector_number = sector;
  r.nr_segments = static_cast<std::uint8_t>(segs.size());
  for (std::size_t i = 0; i < segs.size(); ++i) {
    r.seg[i].gref = std::get<0>(segs[i]);
    r.seg[i].first_sect = static_cast<std::uint8_t>(std::get<1>(segs[i]));
    r.seg[i].last_sect = static_cast<std::uint8_t>(std::get<2>(segs[i]));
  }
  return r;
}

}  // namespace

TEST_CASE("a read copies the right disk bytes into the guest's segments") {
  rig r;
  r.submit(make(BLKIF_OP_READ, 7, 16, {{r.data_refs[0], 0, 7}, {r.data_refs[1], 2, 3}}));
  r.kick();
  auto rs = r.responses(1);
  REQUIRE(rs.size() == 1u);
  CHECK(rs[0].id == 7u);
  CHECK(rs[0].operation == BLKIF_OP_READ);
  CHECK(rs[0].status == BLKIF_RSP_OKAY);
  for (std::size_t i = 0; i < page; ++i) REQUIRE(r.data_page(0)[i] == pattern(16 * 512 + i));
  for (std::size_t i = 0; i < 1024; ++i) REQUIRE(r.data_page(1)[1024 + i] == pattern(16 * 512 + page + i));
  // Outside the segment nothing was written.
  CHECK(r.data_page(1)[0] == std::byte{0});
  CHECK_FALSE(r.stop());
}

TEST_CASE("a write lands at its offset, and a flush after it succeeds") {
  rig r;
  std::memset(r.data_page(2).data(), 0xab, page);
  r.submit(make(BLKIF_OP_WRITE, 1, 8, {{r.data_refs[2], 4, 7}}));
  r.submit(make(BLKIF_OP_FLUSH_DISKCACHE, 2, 0, {}));
  r.kick();
  auto rs = r.responses(2);
  REQUIRE(rs.size() == 2u);
  for (auto& x : rs) CHECK(x.status == BLKIF_RSP_OKAY);
  auto disk = r.file.read(8 * 512, 2048);
  for (auto b : disk) REQUIRE(b == std::byte{0xab});
  CHECK(r.file.read(8 * 512 + 2048, 1)[0] == pattern(8 * 512 + 2048));
  // Counted as Linux's blkback counts them (blkback/data/stats.hpp).
  const auto st = r.q->stats();
  CHECK(st.wr_req == 1u);
  CHECK(st.wr_sect == 4u);
  CHECK(st.wr_bytes == 2048u);
  CHECK(st.f_req == 1u);
  CHECK(st.latency[static_cast<std::size_t>(timed_op::write)].count == 1u);
  CHECK(st.latency[static_cast<std::size_t>(timed_op::flush)].count == 1u);
  CHECK(st.in_flight == 0u);
  CHECK_FALSE(r.stop());
}

TEST_CASE("a flush with data writes and then flushes") {
  rig r;
  std::memset(r.data_page(0).data(), 0x3c, page);
  r.submit(make(BLKIF_OP_FLUSH_DISKCACHE, 11, 0, {{r.data_refs[0], 0, 7}}));
  r.kick();
  auto rs = r.responses(1);
  REQUIRE(rs.size() == 1u);
  CHECK(rs[0].status == BLKIF_RSP_OKAY);
  CHECK(rs[0].operation == BLKIF_OP_FLUSH_DISKCACHE);
  CHECK(r.file.read(0, 1)[0] == std::byte{0x3c});
  // Linux's blkback: a flush, whose data counts in wr_sect.
  CHECK(r.q->stats().wr_req == 0u);
  CHECK(r.q->stats().f_req == 1u);
  CHECK(r.q->stats().wr_sect == 8u);
  CHECK(r.q->stats().wr_bytes == 4096u);
  CHECK_FALSE(r.stop());
}

TEST_CASE("a store that refuses a flush: EOPNOTSUPP, the vbd told once, later flushes and barriers never reach it") {
  unflushable* store = nullptr;
  int told = 0;
  device_limits lim;
  lim.barrier = true;
  rig r(1, lim, 1 << 20, false, std::uint64_t{1} << 30, {}, [&](auto& st, queue_params& p) {
    auto u = std::make_unique<unflushable>(std::move(st));
    store = u.get();
    st = std::move(u);
    p.flush_unsupported = [&told] { ++told; };
  });
  std::memset(r.data_page(0).data(), 0x5a, page);
  r.submit(make(BLKIF_OP_FLUSH_DISKCACHE, 1, 0, {{r.data_refs[0], 0, 7}}));  // write, then the flush
  r.kick();
  auto first = r.responses(1);
  REQUIRE(first.size() == 1u);
  CHECK(first[0].status == BLKIF_RSP_EOPNOTSUPP);
  CHECK(r.file.read(0, 1)[0] == std::byte{0x5a});  // the data landed
  CHECK(told == 1);
  CHECK(store->flushes == 1);
  r.submit(make(BLKIF_OP_FLUSH_DISKCACHE, 2, 0, {}));
  r.submit(make(BLKIF_OP_WRITE_BARRIER, 3, 0, {}));
  r.submit(make(BLKIF_OP_WRITE, 4, 8, {{r.data_refs[0], 0, 7}}));
  r.kick();
  auto rest = r.responses(3);
  REQUIRE(rest.size() == 3u);
  for (const auto& x : rest) CHECK(x.status == (x.id == 4 ? BLKIF_RSP_OKAY : BLKIF_RSP_EOPNOTSUPP));
  CHECK(told == 1);
  CHECK(store->flushes == 1);
  CHECK_FALSE(r.stop());
}

TEST_CASE("each bad request gets its own status and the ring goes on serving") {
  rig r;
  r.submit(make(42, 1, 0, {{r.data_refs[0], 0, 7}}));                    // unknown op
  r.submit(make(BLKIF_OP_READ, 2, 1u << 30, {{r.data_refs[0], 0, 7}}));  // beyond the disk
  r.submit(make(BLKIF_OP_READ, 3, 0, {{r.data_refs[0], 0, 9}}));         // segment outside its page
  r.submit(make(BLKIF_OP_READ, 4, 0, {{99999, 0, 7}}));                  // no such grant
  r.submit(make(BLKIF_OP_READ, 5, 0, {{r.data_refs[0], 0, 7}}));         // fine
  r.kick();
  auto rs = r.responses(5);
  REQUIRE(rs.size() == 5u);
  std::map<std::uint64_t, std::int16_t> by_id;
  for (auto& x : rs) by_id[x.id] = x.status;
  CHECK(by_id[1] == BLKIF_RSP_EOPNOTSUPP);
  CHECK(by_id[2] == BLKIF_RSP_ERROR);
  CHECK(by_id[3] == BLKIF_RSP_ERROR);
  CHECK(by_id[4] == BLKIF_RSP_ERROR);
  CHECK(by_id[5] == BLKIF_RSP_OKAY);
  CHECK(r.q->stats().err_rejected == 3u);
  CHECK(r.q->stats().err_grant == 1u);
  CHECK(r.q->stats().failed() == 1u);
  CHECK(r.q->stats().rd_req == 2u);  // validated: the bad grant's and the good one
  CHECK(r.q->stats().requests() == 5u);
  CHECK_FALSE(r.stop());
}

TEST_CASE("a read-only vbd refuses writes and leaves the disk untouched") {
  rig r(1, {}, 1 << 20, /*readonly*/ true);
  std::memset(r.data_page(0).data(), 0xee, page);
  r.submit(make(BLKIF_OP_WRITE, 1, 0, {{r.data_refs[0], 0, 7}}));
  r.submit(make(BLKIF_OP_READ, 2, 0, {{r.data_refs[1], 0, 7}}));
  r.kick();
  auto rs = r.responses(2);
  REQUIRE(rs.size() == 2u);
  for (auto& x : rs) CHECK(x.status == (x.id == 1 ? BLKIF_RSP_ERROR : BLKIF_RSP_OKAY));
  CHECK(r.file.read(0, 1)[0] == pattern(0));
  CHECK_FALSE(r.stop());
}

TEST_CASE("a write from a read-only grant fails the copy, not the daemon") {
  rig r;
  grant_ref ro = r.guest.grant(r.ring_pages + 10, 0, /*readonly*/ true);
  // Reading the disk into a read-only grant must fail: we may not write it.
  r.submit(make(BLKIF_OP_READ, 1, 0, {{ro, 0, 7}}));
  r.kick();
  auto rs = r.responses(1);
  REQUIRE(rs.size() == 1u);
  CHECK(rs[0].status == BLKIF_RSP_ERROR);
  CHECK_FALSE(r.stop());
}

TEST_CASE("a read past the end of a file that shrank is an I/O error for that request only") {
  rig r;
  REQUIRE(::truncate(r.file.path.c_str(), 4096) == 0);
  r.submit(make(BLKIF_OP_READ, 1, 64, {{r.data_refs[0], 0, 7}}));
  r.submit(make(BLKIF_OP_READ, 2, 0, {{r.data_refs[1], 0, 7}}));
  r.kick();
  auto rs = r.responses(2);
  REQUIRE(rs.size() == 2u);
  for (auto& x : rs) CHECK(x.status == (x.id == 1 ? BLKIF_RSP_ERROR : BLKIF_RSP_OKAY));
  CHECK_FALSE(r.stop());
}

TEST_CASE("a full 16-page ring: 512 requests in flight at once, all answered") {
  rig r(16, {}, 8 << 20);
  for (std::uint64_t i = 0; i < 512; ++i)
    r.submit(make(BLKIF_OP_READ, i, (i % 64) * 8, {{r.data_refs[i % data_frames], 0, 7}}));
  r.kick();
  auto rs = r.responses(512);
  REQUIRE(rs.size() == 512u);
  std::set<std::uint64_t> ids;
  for (auto& x : rs) {
    CHECK(x.status == BLKIF_RSP_OKAY);
    ids.insert(x.id);
  }
  CHECK(ids.size() == 512u);
  CHECK(r.q->ring_size() == 512u);
  CHECK_FALSE(r.stop());
}

TEST_CASE("responses are pushed with one notification per batch") {
  rig r;
  for (std::uint64_t i = 0; i < 20; ++i) r.submit(make(BLKIF_OP_READ, i, 0, {{r.data_refs[i], 0, 7}}));
  r.kick();
  auto before = r.bus.notifications();
  auto rs = r.responses(20);
  REQUIRE(rs.size() == 20u);
  // The backend notifies far less often than once per response.
  CHECK(r.bus.notifications() - before < 20u);
  CHECK_FALSE(r.stop());
}

TEST_CASE(
    "a frontend that claims more requests than the ring holds halts its ring after the in-flight ones are answered") {
  rig r;
  r.submit(make(BLKIF_OP_READ, 1, 0, {{r.data_refs[0], 0, 7}}));
  r.kick();
  REQUIRE(r.responses(1).size() == 1u);
  r.front->set_shared_req_prod(r.front->req_prod_pvt() + 100);
  REQUIRE_FALSE(r.front_evtchn->notify());
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (r.running.wait_for(std::chrono::seconds(0)) != std::future_status::ready &&
         std::chrono::steady_clock::now() < deadline) {
    r.ioc.restart();
    xbd::test::run_for(r.ioc, std::chrono::milliseconds(5));
  }
  REQUIRE(r.running.wait_for(std::chrono::seconds(0)) == std::future_status::ready);
  CHECK(r.running.get() == asio_xen::make_error_code(asio_xen::errc::ring_overflow));
}

TEST_CASE("stop answers every request already taken, then run() returns") {
  rig r;
  for (std::uint64_t i = 0; i < 30; ++i) r.submit(make(BLKIF_OP_WRITE, i, i * 8, {{r.data_refs[i], 0, 7}}));
  r.kick();
  // Let the backend take them, then stop at once.
  r.ioc.restart();
  r.ioc.poll();
  CHECK_FALSE(r.stop());
  std::size_t answered = 0;
  while (r.front->unconsumed_responses() > 0) {
    (void)r.front->consume_response();
    ++answered;
  }
  CHECK(answered == 30u);
  CHECK(r.q->in_flight() == 0u);
}

namespace {

blkif_request indirect(std::uint8_t op, std::uint64_t id, std::uint64_t sector, std::uint16_t nseg,
                       std::vector<grant_ref> pages) {
  blkif_request r{};
  auto* ind = reinterpret_cast<blkif_request_indirect*>(&r);
  ind->operation = BLKIF_OP_INDIRECT;
  ind->indirect_op = op;
  ind->nr_segments = nseg;
  ind->id = id;
  ind->sector_number = sector;
  for (std::size_t i = 0; i < pages.size(); ++i) ind->indirect_grefs[i] = pages[i];
  return r;
}

device_limits with_indirect(std::uint32_t segs) {
  device_limits l;
  l.max_indirect_segments = segs;
  return l;
}

}  // namespace

TEST_CASE("an indirect read fetches its descriptors once and fills every segment, the response says READ") {
  rig r(1, with_indirect(256), 4 << 20);
  // Descriptors in data page 63: 40 segments, one per data page 0..39.
  auto desc_page = r.data_page(63);
  for (std::uint16_t i = 0; i < 40; ++i) {
    blkif_request_segment s{r.data_refs[i], 0, 7};
    std::memcpy(desc_page.data() + i * sizeof s, &s, sizeof s);
  }
  r.submit(indirect(BLKIF_OP_READ, 99, 64, 40, {r.data_refs[63]}));
  r.kick();
  auto rs = r.responses(1);
  REQUIRE(rs.size() == 1u);
  CHECK(rs[0].id == 99u);
  CHECK(rs[0].status == BLKIF_RSP_OKAY);
  CHECK(rs[0].operation == BLKIF_OP_READ);
  for (std::size_t i = 0; i < 40; ++i)
    for (std::size_t b = 0; b < page; b += 511) REQUIRE(r.data_page(i)[b] == pattern(64 * 512 + i * page + b));
  CHECK_FALSE(r.stop());
}

TEST_CASE("an indirect write spanning two indirect pages lands in order") {
  rig r(1, with_indirect(600), 8 << 20);
  // 600 segments of one sector each, all from data page 0 (filled with 0x5a),
  // descriptors in data pages 61 and 62.
  std::memset(r.data_page(0).data(), 0x5a, page);
  for (std::uint16_t i = 0; i < 600; ++i) {
    blkif_request_segment s{r.data_refs[0], static_cast<std::uint8_t>(i % 8), static_cast<std::uint8_t>(i % 8)};
    auto dest = r.data_page(61 + i / 512);
    std::memcpy(dest.data() + (i % 512) * sizeof s, &s, sizeof s);
  }
  r.submit(indirect(BLKIF_OP_WRITE, 7, 1000, 600, {r.data_refs[61], r.data_refs[62]}));
  r.kick();
  auto rs = r.responses(1);
  REQUIRE(rs.size() == 1u);
  CHECK(rs[0].status == BLKIF_RSP_OKAY);
  CHECK(rs[0].operation == BLKIF_OP_WRITE);
  auto disk = r.file.read(1000 * 512, 600 * 512);
  for (auto b : disk) REQUIRE(b == std::byte{0x5a});
  CHECK(r.file.read(1600 * 512, 1)[0] == pattern(1600 * 512));
  CHECK_FALSE(r.stop());
}

TEST_CASE("indirect requests with a bad descriptor, a bad indirect page or too many segments are answered ERROR") {
  rig r(1, with_indirect(64), 4 << 20);
  blkif_request_segment bad{r.data_refs[0], 3, 9};
  std::memcpy(r.data_page(63).data(), &bad, sizeof bad);
  r.submit(indirect(BLKIF_OP_READ, 1, 0, 1, {r.data_refs[63]}));             // descriptor outside its page
  r.submit(indirect(BLKIF_OP_READ, 2, 0, 1, {123456}));                      // indirect page not granted
  r.submit(indirect(BLKIF_OP_READ, 3, 0, 65, {r.data_refs[63]}));            // above the advertised maximum
  r.submit(indirect(BLKIF_OP_FLUSH_DISKCACHE, 4, 0, 1, {r.data_refs[63]}));  // only READ/WRITE inside
  r.kick();
  auto rs = r.responses(4);
  REQUIRE(rs.size() == 4u);
  for (auto& x : rs) CHECK(x.status == BLKIF_RSP_ERROR);
  CHECK_FALSE(r.stop());
}

TEST_CASE("a barrier runs after everything before it and before everything after it") {
  device_limits lim;
  lim.barrier = true;
  rig r(1, lim, 1 << 20);
  std::memset(r.data_page(0).data(), 0x11, page);
  std::memset(r.data_page(1).data(), 0x22, page);
  std::memset(r.data_page(2).data(), 0x33, page);
  r.submit(make(BLKIF_OP_WRITE, 1, 0, {{r.data_refs[0], 0, 7}}));
  r.submit(make(BLKIF_OP_WRITE_BARRIER, 2, 0, {{r.data_refs[1], 0, 7}}));
  r.submit(make(BLKIF_OP_WRITE, 3, 0, {{r.data_refs[2], 0, 7}}));
  r.kick();
  auto rs = r.responses(3);
  REQUIRE(rs.size() == 3u);
  // Responses come in order: the barrier's completes after the first write
  // and before the third starts.
  CHECK(rs[0].id == 1u);
  CHECK(rs[1].id == 2u);
  CHECK(rs[2].id == 3u);
  for (auto& x : rs) CHECK(x.status == BLKIF_RSP_OKAY);
  CHECK(r.file.read(0, 1)[0] == std::byte{0x33});
  CHECK(r.q->stats().f_req == 1u);
  CHECK_FALSE(r.stop());
}

TEST_CASE("a discard punches a hole: the range reads back as zeroes") {
  device_limits lim;
  lim.discard = true;
  rig r(1, lim, 1 << 20);
  blkif_request d{};
  auto* disc = reinterpret_cast<blkif_request_discard*>(&d);
  disc->operation = BLKIF_OP_DISCARD;
  disc->id = 5;
  disc->sector_number = 8;
  disc->nr_sectors = 16;
  r.submit(d);
  r.kick();
  auto rs = r.responses(1);
  REQUIRE(rs.size() == 1u);
  CHECK(rs[0].status == BLKIF_RSP_OKAY);
  CHECK(rs[0].operation == BLKIF_OP_DISCARD);
  for (auto b : r.file.read(8 * 512, 16 * 512)) REQUIRE(b == std::byte{0});
  CHECK(r.file.read(7 * 512, 1)[0] == pattern(7 * 512));
  CHECK(r.file.read(24 * 512, 1)[0] == pattern(24 * 512));
  CHECK(r.q->stats().ds_req == 1u);
  CHECK_FALSE(r.stop());
}

namespace {

std::size_t open_fds() {
  std::size_t n = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

}  // namespace

TEST_CASE("memory: over the budget requests wait in the ring and are all served, idle memory goes back") {
  queue_tuning t;
  t.idle_after = std::chrono::milliseconds(50);
  // Room for one 11-segment request (a 64 KiB buffer and its slot) and no
  // more: each request waits for the one before.
  rig r(1, {}, 1 << 20, false, 64 * 1024, t);
  for (std::uint64_t i = 0; i < 8; ++i) {
    std::vector<std::tuple<grant_ref, int, int>> segs;
    for (std::size_t k = 0; k < 11; ++k) segs.emplace_back(r.data_refs[i * 11 % (data_frames - 11) + k], 0, 7);
    r.submit(make(BLKIF_OP_WRITE, 100 + i, i * 88, segs));
  }
  r.kick();
  auto rs = r.responses(8);
  REQUIRE(rs.size() == 8u);
  for (auto& x : rs) CHECK(x.status == BLKIF_RSP_OKAY);
  CHECK(r.q->stats().oo_req >= 1u);
  CHECK(r.q->stats().throttled_ns > 0u);
  CHECK(r.q->stats().peak_in_flight == 1u);
  // Never more than the budget and the one request an idle ring may start.
  CHECK(r.memory->usage().peak <= 64 * 1024 + 64 * 1024 + 4096);
  // A quarter-second tick after 50 ms idle: slots and buffers are gone.
  r.idle_for(std::chrono::milliseconds(700));
  CHECK(r.q->slots() == 0u);
  CHECK(r.q->cached_buffer_bytes() == 0u);
  CHECK(r.memory->usage().committed == 0u);
  // And they come back when needed.
  r.submit(make(BLKIF_OP_READ, 200, 0, {{r.data_refs[0], 0, 7}}));
  r.kick();
  auto again = r.responses(1);
  REQUIRE(again.size() == 1u);
  CHECK(again[0].status == BLKIF_RSP_OKAY);
  CHECK_FALSE(r.stop());
}

TEST_CASE("memory: an idle ring keeps no slots, buffers or file descriptors") {
  queue_tuning t;
  t.idle_after = std::chrono::milliseconds(50);
  rig r(2, {}, 1 << 20, false, std::uint64_t{1} << 30, t);
  const std::size_t before = open_fds();
  // A full two-page ring of reads: each operation in flight wants a file
  // object, and there are at most local_channel's 32 of them.
  const std::uint32_t n = 64;
  for (std::uint64_t i = 0; i < n; ++i) r.submit(make(BLKIF_OP_READ, i, (i % 32) * 8, {{r.data_refs[i], 0, 7}}));
  r.kick();
  auto rs = r.responses(n);
  REQUIRE(rs.size() == n);
  for (auto& x : rs) CHECK(x.status == BLKIF_RSP_OKAY);
  CHECK(open_fds() <= before + 32);
  r.idle_for(std::chrono::milliseconds(700));
  CHECK(r.q->slots() == 0u);
  CHECK(open_fds() == before);
  CHECK_FALSE(r.stop());
}

TEST_CASE("a notify storm on an empty ring is paused, counted and logged once, and real requests still get through") {
  queue_tuning t;
  t.storm_after = 4;
  t.storm_pause_max = std::chrono::milliseconds(20);
  rig r(1, {}, 1 << 20, false, std::uint64_t{1} << 30, t);
  for (int i = 0; i < 40; ++i) {
    REQUIRE_FALSE(r.front_evtchn->notify());
    r.idle_for(std::chrono::milliseconds(2));
  }
  const auto& st = r.q->stats();
  CHECK(st.idle_events >= 8u);
  CHECK(st.storm_pauses >= 1u);
  // Fewer events than notifications reached the ring: the pauses held the
  // port masked and the rest coalesced.
  CHECK(st.idle_events < 40u);
  r.submit(make(BLKIF_OP_READ, 9, 0, {{r.data_refs[0], 0, 7}}));
  r.kick();
  auto rs = r.responses(1, std::chrono::milliseconds(1000));
  REQUIRE(rs.size() == 1u);
  CHECK(rs[0].status == BLKIF_RSP_OKAY);
  CHECK_FALSE(r.stop());
}

TEST_CASE("a ring yields its thread after a bounded turn, and serves everything") {
  queue_tuning t;
  t.turn_requests = 4;
  rig r(2, {}, 1 << 20, false, std::uint64_t{1} << 30, t);
  for (std::uint64_t i = 0; i < 40; ++i) r.submit(make(BLKIF_OP_READ, i, i * 8, {{r.data_refs[i], 0, 7}}));
  r.kick();
  auto rs = r.responses(40);
  REQUIRE(rs.size() == 40u);
  for (auto& x : rs) CHECK(x.status == BLKIF_RSP_OKAY);
  CHECK(r.q->stats().yields >= 9u);
  CHECK_FALSE(r.stop());
}

TEST_CASE("limits: requests over the vbd's limits wait in the ring, not taken, and are all answered OKAY") {
  auto g = std::make_shared<throttle_group>("");
  throttle_settings s;
  REQUIRE(s.set("iops-total", "20").empty());
  g->configure(s.limits(), std::chrono::steady_clock::now());
  rig r(1, {}, 1 << 20, false, std::uint64_t{1} << 30, {}, {}, g);
  // The bucket holds a tenth of a second at 20/s: 2, and the one that
  // finds it full.
  for (std::uint64_t i = 0; i < 8; ++i) r.submit(make(BLKIF_OP_READ, i, i * 8, {{r.data_refs[i], 0, 7}}));
  r.kick();
  const auto t0 = std::chrono::steady_clock::now();
  auto first = r.responses(3, std::chrono::milliseconds(30));
  CHECK(first.size() == 3u);
  // The others are still in the ring: not taken, so not counted either
  // (the next may go 50 ms after the first).
  if (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(40)) CHECK(r.q->stats().rd_req == 3u);
  CHECK(r.q->stats().in_flight == 0u);
  auto rest = r.responses(5, std::chrono::seconds(3));
  REQUIRE(rest.size() == 5u);
  CHECK(std::chrono::steady_clock::now() - t0 >= std::chrono::milliseconds(200));  // 5 at 20/s
  for (const auto& x : first) CHECK(x.status == BLKIF_RSP_OKAY);
  for (const auto& x : rest) CHECK(x.status == BLKIF_RSP_OKAY);
  CHECK(r.q->stats().limit_waits > 0u);
  CHECK(r.q->stats().limited_ns > 100'000'000u);
  CHECK(r.q->stats().oo_req == 0u);

  // A change of limits ends a long wait at once.
  REQUIRE(s.set("iops-total", "1").empty());
  g->configure(s.limits(), std::chrono::steady_clock::now());
  for (std::uint64_t i = 0; i < 3; ++i) r.submit(make(BLKIF_OP_READ, 10 + i, i * 8, {{r.data_refs[i], 0, 7}}));
  r.kick();
  CHECK(r.responses(1, std::chrono::milliseconds(100)).size() == 1u);
  CHECK(r.responses(1, std::chrono::milliseconds(100)).empty());  // the next waits about a second
  g->configure({}, std::chrono::steady_clock::now());
  CHECK(r.responses(2, std::chrono::milliseconds(100)).size() == 2u);
  CHECK_FALSE(r.stop());
}

TEST_CASE("limits: a stop ends a wait for the limits, and what waits stays in the ring") {
  auto g = std::make_shared<throttle_group>("");
  throttle_settings s;
  REQUIRE(s.set("bps-total", "4096").empty());
  g->configure(s.limits(), std::chrono::steady_clock::now());
  rig r(1, {}, 1 << 20, false, std::uint64_t{1} << 30, {}, {}, g);
  for (std::uint64_t i = 0; i < 3; ++i) r.submit(make(BLKIF_OP_READ, i, i * 8, {{r.data_refs[i], 0, 7}}));
  r.kick();
  CHECK(r.responses(1, std::chrono::milliseconds(50)).size() == 1u);
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_FALSE(r.stop());
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(500));
  CHECK(r.q->stats().rd_req == 1u);
}

TEST_CASE("batched copies: the writes taken in one pass over the ring are copied in one call") {
  rig r(1, {}, 1 << 20);
  for (std::size_t i = 0; i < 16; ++i) std::memset(r.data_page(i).data(), static_cast<int>(0x10 + i), page);
  const auto before = r.tables.copies();
  for (std::uint64_t i = 0; i < 16; ++i) r.submit(make(BLKIF_OP_WRITE, i, i * 8, {{r.data_refs[i], 0, 7}}));
  r.kick();
  auto rs = r.responses(16);
  REQUIRE(rs.size() == 16u);
  for (auto& x : rs) CHECK(x.status == BLKIF_RSP_OKAY);
  CHECK(r.tables.copies() - before == 1u);
  for (std::uint64_t i = 0; i < 16; ++i) CHECK(r.file.read(i * page, 1)[0] == std::byte(0x10 + i));
  CHECK_FALSE(r.stop());
}

TEST_CASE("batched copies: a bad grant fails only its own request, the others in its batch succeed") {
  rig r(1, {}, 1 << 20);
  for (std::size_t i = 0; i < 8; ++i) std::memset(r.data_page(i).data(), static_cast<int>(0x20 + i), page);
  for (std::uint64_t i = 0; i < 8; ++i) {
    const grant_ref ref = i == 3 ? grant_ref{9999} : r.data_refs[i];  // never granted
    r.submit(make(BLKIF_OP_WRITE, i, i * 8, {{ref, 0, 7}}));
  }
  r.kick();
  auto rs = r.responses(8);
  REQUIRE(rs.size() == 8u);
  for (auto& x : rs) CHECK(x.status == (x.id == 3 ? BLKIF_RSP_ERROR : BLKIF_RSP_OKAY));
  CHECK(r.file.read(3 * page, 1)[0] == pattern(3 * page));
  CHECK(r.file.read(4 * page, 1)[0] == std::byte{0x24});
  CHECK(r.q->stats().err_grant == 1u);
  CHECK_FALSE(r.stop());
}

TEST_CASE("batched copies: a batch refused as a whole is copied again request by request") {
  rig r(1, {}, 1 << 20);
  for (std::size_t i = 0; i < 4; ++i) std::memset(r.data_page(i).data(), static_cast<int>(0x30 + i), page);
  const auto before = r.tables.copies();
  r.tables.fail_next_copy_call(EINVAL);
  for (std::uint64_t i = 0; i < 4; ++i) r.submit(make(BLKIF_OP_WRITE, i, i * 8, {{r.data_refs[i], 0, 7}}));
  r.kick();
  auto rs = r.responses(4);
  REQUIRE(rs.size() == 4u);
  for (auto& x : rs) CHECK(x.status == BLKIF_RSP_OKAY);
  CHECK(r.tables.copies() - before == 5u);  // the refused batch, then one call each
  for (std::uint64_t i = 0; i < 4; ++i) CHECK(r.file.read(i * page, 1)[0] == std::byte(0x30 + i));
  CHECK_FALSE(r.stop());
}

namespace {

// Zero-copy and persistent grants need a store the queue can hand the
// guest's pages to, O_DIRECT for zero-copy.
rig::adjuster on_guest_pages(std::optional<std::uint64_t> zero_copy_min, unsigned persistent = 0, bool direct = true) {
  return [=](std::unique_ptr<storage::store>& st, queue_params& p) {
    auto reopened = storage::open_local(st->name(), {true, direct});
    REQUIRE(reopened.has_value());
    REQUIRE((*reopened)->props().direct == direct);
    st = std::move(*reopened);
    p.zero_copy_min = zero_copy_min;
    p.persistent_grants = persistent;
  };
}

}  // namespace

TEST_CASE("zero-copy: reads and writes from the threshold up run on the guest's mapped pages, never copied") {
  rig r(1, {}, 1 << 20, false, std::uint64_t{1} << 30, {}, on_guest_pages(8192));
  std::memset(r.data_page(0).data(), 0x41, page);
  std::memset(r.data_page(1).data(), 0x42, page);
  const auto copies = r.tables.copies();
  r.submit(make(BLKIF_OP_WRITE, 1, 64, {{r.data_refs[0], 0, 7}, {r.data_refs[1], 0, 7}}));
  r.kick();
  auto w = r.responses(1);
  REQUIRE(w.size() == 1u);
  CHECK(w[0].status == BLKIF_RSP_OKAY);
  CHECK(r.tables.mapped_pages() == r.ring_pages);  // unmapped before the response
  CHECK(r.file.read(64 * 512, 1)[0] == std::byte{0x41});
  CHECK(r.file.read(64 * 512 + page, 1)[0] == std::byte{0x42});
  // Back, into a part of one page and the whole of another.
  r.submit(make(BLKIF_OP_READ, 2, 64, {{r.data_refs[2], 4, 7}, {r.data_refs[3], 0, 7}}));
  r.kick();
  auto rd = r.responses(1);
  REQUIRE(rd.size() == 1u);
  CHECK(rd[0].status == BLKIF_RSP_OKAY);
  CHECK(r.data_page(2)[0] == std::byte{0});  // before the segment: untouched
  CHECK(r.data_page(2)[2048] == std::byte{0x41});
  CHECK(r.data_page(3)[0] == std::byte{0x41});
  CHECK(r.data_page(3)[2048] == std::byte{0x42});
  CHECK(r.tables.copies() == copies);
  CHECK(r.q->stats().mapped_req == 2u);
  // Below the threshold: copied.
  r.submit(make(BLKIF_OP_READ, 3, 0, {{r.data_refs[4], 0, 7}}));
  r.kick();
  REQUIRE(r.responses(1).size() == 1u);
  CHECK(r.tables.copies() == copies + 1);
  CHECK(r.q->stats().mapped_req == 2u);
  CHECK_FALSE(r.stop());
  r.q.reset();
  CHECK(r.memory->usage().committed == 0u);
}

TEST_CASE("zero-copy: a grant that cannot be mapped fails its own request only, and nothing stays mapped") {
  rig r(1, {}, 1 << 20, false, std::uint64_t{1} << 30, {}, on_guest_pages(0));
  const grant_ref ro = r.guest.grant(r.ring_pages + 10, 0, /*readonly*/ true);
  r.submit(make(BLKIF_OP_READ, 1, 0, {{r.data_refs[0], 0, 7}, {grant_ref{9999}, 0, 7}}));  // never granted
  r.submit(make(BLKIF_OP_READ, 2, 0, {{ro, 0, 7}}));   // a read may not write a read-only grant
  r.submit(make(BLKIF_OP_WRITE, 3, 0, {{ro, 0, 7}}));  // a write may read it
  r.submit(make(BLKIF_OP_READ, 4, 0, {{r.data_refs[1], 0, 7}}));
  r.kick();
  auto rs = r.responses(4);
  REQUIRE(rs.size() == 4u);
  for (auto& x : rs) CHECK(x.status == (x.id <= 2 ? BLKIF_RSP_ERROR : BLKIF_RSP_OKAY));
  CHECK(r.q->stats().err_grant == 2u);
  CHECK(r.tables.mapped_pages() == r.ring_pages);
  CHECK_FALSE(r.stop());
}

TEST_CASE("persistent grants: pages are mapped once and reused, dropped after the idle time, and counted") {
  queue_tuning t;
  t.persistent_idle = std::chrono::milliseconds(300);
  rig r(1, {}, 1 << 20, false, std::uint64_t{1} << 30, t, on_guest_pages(std::nullopt, 8));
  for (std::uint64_t round = 0; round < 3; ++round) {
    for (std::uint64_t i = 0; i < 4; ++i)
      r.submit(make(i % 2 ? BLKIF_OP_WRITE : BLKIF_OP_READ, round * 4 + i, i * 8, {{r.data_refs[i], 0, 7}}));
    r.kick();
    auto rs = r.responses(4);
    REQUIRE(rs.size() == 4u);
    for (auto& x : rs) CHECK(x.status == BLKIF_RSP_OKAY);
  }
  const auto st = r.q->stats();
  CHECK(st.persistent_maps == 4u);
  CHECK(st.persistent_hits == 8u);
  CHECK(st.persistent_grants == 4u);
  CHECK(st.copy_calls == 0u);
  CHECK(r.tables.mapped_pages() == r.ring_pages + 4);
  CHECK(r.data_page(0)[0] == pattern(0));
  // The budget holds the kept pages, and gets them back when they go.
  CHECK(r.memory->usage().committed >= 4 * page);
  r.idle_for(std::chrono::milliseconds(1500));
  CHECK(r.tables.mapped_pages() == r.ring_pages);
  CHECK(r.q->stats().persistent_drops == 4u);
  CHECK(r.q->stats().persistent_grants == 0u);
  CHECK(r.memory->usage().committed == 0u);
  CHECK_FALSE(r.stop());
}

TEST_CASE(
    "persistent grants: bounded, full sets serve the rest per request without keeping it, and room is made a little at "
    "a time") {
  rig r(1, {}, 1 << 20, false, std::uint64_t{1} << 30, {}, on_guest_pages(std::nullopt, 2));
  // Three pages in one request, two kept: the third is served for it alone.
  r.submit(make(BLKIF_OP_READ, 1, 0, {{r.data_refs[0], 0, 7}, {r.data_refs[1], 0, 7}, {r.data_refs[2], 0, 7}}));
  r.kick();
  auto a = r.responses(1);
  REQUIRE(a.size() == 1u);
  CHECK(a[0].status == BLKIF_RSP_OKAY);
  CHECK(r.data_page(2)[0] == pattern(2 * page));
  CHECK(r.q->stats().persistent_maps == 2u);
  CHECK(r.tables.mapped_pages() <= r.ring_pages + 2);
  // A guest that names new pages all the time (a flood of new refs): each
  // request maps its own page, the set never grows past two, and pages are
  // not unmapped per request to make room (that would be some 20 drops):
  // at most a page per tick of the queue's trimming.
  for (std::uint64_t i = 0; i < 20; ++i) r.submit(make(BLKIF_OP_READ, 10 + i, 0, {{r.data_refs[3 + i], 0, 7}}));
  r.kick();
  auto b = r.responses(20);
  REQUIRE(b.size() == 20u);
  for (auto& x : b) CHECK(x.status == BLKIF_RSP_OKAY);
  CHECK(r.q->stats().persistent_grants <= 2u);
  CHECK(r.q->stats().persistent_drops <= 2u);
  CHECK(r.tables.mapped_pages() <= r.ring_pages + 2);
  CHECK(r.memory->usage().committed <= std::uint64_t{1} << 20);
  // The next ticks make room (pages were refused), and a new page is kept.
  r.idle_for(std::chrono::milliseconds(700));
  CHECK(r.q->stats().persistent_drops >= 1u);
  CHECK(r.q->stats().persistent_grants <= 1u);
  const auto maps = r.q->stats().persistent_maps;
  r.submit(make(BLKIF_OP_READ, 50, 0, {{r.data_refs[40], 0, 7}}));
  r.kick();
  REQUIRE(r.responses(1).size() == 1u);
  CHECK(r.q->stats().persistent_maps == maps + 1);
  CHECK_FALSE(r.stop());
  r.q.reset();
  CHECK(r.tables.mapped_pages() == 0u);
  CHECK(r.memory->usage().committed == 0u);
}

TEST_CASE("persistent grants: room is not made with pages whose I/O ended within the settle time") {
  queue_tuning t;
  t.persistent_settle = std::chrono::seconds(30);
  rig r(1, {}, 1 << 20, false, std::uint64_t{1} << 30, t, on_guest_pages(std::nullopt, 2));
  for (std::uint64_t i = 0; i < 6; ++i) r.submit(make(BLKIF_OP_READ, i, 0, {{r.data_refs[i], 0, 7}}));
  r.kick();
  auto rs = r.responses(6);
  REQUIRE(rs.size() == 6u);
  for (auto& x : rs) CHECK(x.status == BLKIF_RSP_OKAY);
  r.idle_for(std::chrono::milliseconds(700));  // ticks that would make room
  CHECK(r.q->stats().persistent_drops == 0u);
  CHECK(r.q->stats().persistent_grants == 2u);
  CHECK_FALSE(r.stop());
}

TEST_CASE("persistent grants: a read-only grant serves its write without being kept, and a bad one fails its request") {
  rig r(1, {}, 1 << 20, false, std::uint64_t{1} << 30, {}, on_guest_pages(std::nullopt, 8));
  const grant_ref ro = r.guest.grant(r.ring_pages + 10, 0, /*readonly*/ true);
  std::memset(r.guest.page(r.ring_pages + 10).data(), 0x77, page);
  r.submit(make(BLKIF_OP_WRITE, 1, 0, {{ro, 0, 7}}));
  r.submit(make(BLKIF_OP_WRITE, 2, 8, {{grant_ref{9999}, 0, 7}}));
  r.kick();
  auto rs = r.responses(2);
  REQUIRE(rs.size() == 2u);
  for (auto& x : rs) CHECK(x.status == (x.id == 1 ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR));
  CHECK(r.file.read(0, 1)[0] == std::byte{0x77});
  CHECK(r.q->stats().persistent_grants == 0u);
  CHECK(r.tables.mapped_pages() == r.ring_pages);
  CHECK_FALSE(r.stop());
}

namespace {

// Three pages written with a pattern each and read back into three others
// through a set that keeps two: the queue's grant counters after it.
ring_stats overflow_round_trip(rig& r) {
  for (std::size_t i = 0; i < 3; ++i) std::memset(r.data_page(i).data(), static_cast<int>(0x50 + i), page);
  r.submit(make(BLKIF_OP_WRITE, 1, 0, {{r.data_refs[0], 0, 7}, {r.data_refs[1], 0, 7}, {r.data_refs[2], 0, 7}}));
  r.kick();
  auto w = r.responses(1);
  REQUIRE(w.size() == 1u);
  CHECK(w[0].status == BLKIF_RSP_OKAY);
  r.submit(make(BLKIF_OP_READ, 2, 0, {{r.data_refs[3], 0, 7}, {r.data_refs[4], 1, 7}, {r.data_refs[5], 0, 7}}));
  r.kick();
  auto rd = r.responses(1);
  REQUIRE(rd.size() == 1u);
  CHECK(rd[0].status == BLKIF_RSP_OKAY);
  for (std::size_t i = 0; i < 3; ++i) CHECK(r.file.read(i * page, 1)[0] == std::byte(0x50 + i));
  CHECK(r.data_page(3)[0] == std::byte{0x50});
  CHECK(r.data_page(4)[0] == std::byte{0});  // before its segment
  CHECK(r.data_page(4)[512] == std::byte{0x51});
  CHECK(r.data_page(5)[4095] == std::byte{0x52});
  CHECK(r.tables.mapped_pages() <= r.ring_pages + 2);
  return r.q->stats();
}

}  // namespace

TEST_CASE("persistent grants on an O_DIRECT store: pages the set cannot keep are copied, never mapped per request") {
  rig r(1, {}, 1 << 20, false, std::uint64_t{1} << 30, {}, on_guest_pages(std::nullopt, 2));
  const auto st = overflow_round_trip(r);
  CHECK(st.map_calls == 0u);
  CHECK(st.persistent_maps >= 2u);
  // Each of the six pages kept, found kept or copied (a tick of the queue
  // may make room between the write and the read).
  CHECK(st.persistent_maps + st.persistent_hits + st.copy_segments == 6u);
  CHECK(st.copy_segments >= 1u);
  // Their bounce pages came from the ring's buffer cache and went back to
  // it: the next overflow reuses them (no allocation per request).
  CHECK(st.cached_bytes >= page);
  // A bad grant among the spilled pages fails its request alone.
  r.submit(make(BLKIF_OP_READ, 3, 0, {{r.data_refs[6], 0, 7}, {grant_ref{9999}, 0, 7}}));
  r.submit(make(BLKIF_OP_WRITE, 4, 64, {{r.data_refs[7], 0, 7}, {grant_ref{9998}, 0, 7}}));
  r.submit(make(BLKIF_OP_READ, 5, 0, {{r.data_refs[8], 0, 7}}));
  r.kick();
  auto rs = r.responses(3);
  REQUIRE(rs.size() == 3u);
  for (auto& x : rs) CHECK(x.status == (x.id == 5 ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR));
  CHECK(r.file.read(64 * 512, 1)[0] == pattern(64 * 512));  // the failed write wrote nothing
  CHECK(r.q->stats().map_calls == 0u);
  CHECK_FALSE(r.stop());
  r.q.reset();
  CHECK(r.tables.mapped_pages() == 0u);
  CHECK(r.memory->usage().committed == 0u);
}

TEST_CASE("persistent grants: a buffered store, or zero-copy chosen, maps the pages the set cannot keep") {
  SUBCASE("buffered") {
    rig r(1, {}, 1 << 20, false, std::uint64_t{1} << 30, {}, on_guest_pages(std::nullopt, 2, false));
    const auto st = overflow_round_trip(r);
    CHECK(st.map_calls >= 1u);
    CHECK(st.copy_segments == 0u);
    CHECK_FALSE(r.stop());
  }
  SUBCASE("zero-copy") {
    rig r(1, {}, 1 << 20, false, std::uint64_t{1} << 30, {}, on_guest_pages(0, 2));
    const auto st = overflow_round_trip(r);
    CHECK(st.map_calls >= 1u);
    CHECK(st.copy_segments == 0u);
    CHECK_FALSE(r.stop());
  }
}

namespace {

// A ring that polls for up to `max` after a burst (queue_params::poll).
rig polling_rig(std::chrono::microseconds max) {
  return rig(1, {}, 1 << 20, false, std::uint64_t{1} << 30, {}, [max](auto&, queue_params& p) { p.poll = max; });
}

// One read, notified as the ring asks, answered: `pause` before it is
// published teaches the ring that gap (ring_poll::slept).
void read_once(rig& r, std::uint64_t id, std::chrono::milliseconds pause = {}) {
  if (pause.count() > 0) r.idle_for(pause);
  r.submit(make(BLKIF_OP_READ, id, 0, {{r.data_refs[0], 0, 7}}));
  r.kick();
  auto rs = r.responses(1);
  REQUIRE(rs.size() == 1u);
  CHECK(rs[0].status == BLKIF_RSP_OKAY);
}

}  // namespace

TEST_CASE("polling: a request published within the window is taken without a notification, req_event unarmed") {
  rig r = polling_rig(std::chrono::seconds(1));
  read_once(r, 1);
  // The ring slept 30 ms after it, then woke to a request: it learns that
  // a poll of twice that would have caught it.
  read_once(r, 2, std::chrono::milliseconds(30));
  const auto idle_before = r.q->stats().idle_events;  // the first kick raced the ring's start
  // Polling now, after the second: the frontend is not asked to notify
  // (req_event was not re-armed), and the request is taken all the same.
  r.submit(make(BLKIF_OP_READ, 3, 0, {{r.data_refs[0], 0, 7}}));
  CHECK_FALSE(r.front->push_requests());
  auto rs = r.responses(1);
  REQUIRE(rs.size() == 1u);
  CHECK(rs[0].id == 3u);
  const auto st = r.q->stats();
  CHECK(st.poll_hits == 1u);
  CHECK(st.poll_ns > 0u);
  CHECK(st.idle_events == idle_before);
  CHECK_FALSE(r.stop());
}

TEST_CASE("polling: an idle ring polls once after its last burst, then costs nothing") {
  rig r = polling_rig(std::chrono::milliseconds(50));
  read_once(r, 1);
  read_once(r, 2, std::chrono::milliseconds(10));
  r.idle_for(std::chrono::milliseconds(200));
  const auto st = r.q->stats();
  CHECK(st.poll_misses == 1u);
  CHECK(st.poll_ns <= 60'000'000u);
  r.idle_for(std::chrono::milliseconds(200));
  CHECK(r.q->stats().poll_ns == st.poll_ns);
  CHECK(r.q->stats().poll_misses == 1u);
  // Then it is woken as before.
  read_once(r, 3);
  CHECK_FALSE(r.stop());
}

TEST_CASE("polling: stop() ends a poll at once") {
  rig r = polling_rig(std::chrono::seconds(10));
  read_once(r, 1);
  read_once(r, 2, std::chrono::milliseconds(400));  // now a window of 800 ms
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_FALSE(r.stop());
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(200));
  CHECK(r.q->stats().poll_hits + r.q->stats().poll_misses == 0u);  // ended by stop(): neither
}

TEST_CASE("polling: a notify storm on an empty ring starts no poll and is paused as without polling") {
  queue_tuning t;
  t.storm_after = 4;
  t.storm_pause_max = std::chrono::milliseconds(20);
  rig r(1, {}, 1 << 20, false, std::uint64_t{1} << 30, t,
        [](auto&, queue_params& p) { p.poll = std::chrono::seconds(1); });
  read_once(r, 1);
  read_once(r, 2, std::chrono::milliseconds(20));
  r.idle_for(std::chrono::milliseconds(100));  // the poll after it misses
  for (int i = 0; i < 40; ++i) {
    REQUIRE_FALSE(r.front_evtchn->notify());
    r.idle_for(std::chrono::milliseconds(2));
  }
  const auto st = r.q->stats();
  CHECK(st.storm_pauses >= 1u);
  CHECK(st.poll_hits + st.poll_misses == 1u);
  read_once(r, 3);
  CHECK_FALSE(r.stop());
}

TEST_CASE("polling: a guest that publishes within the window is never taken for a notify storm") {
  queue_tuning t;
  t.storm_after = 2;
  rig r(1, {}, 1 << 20, false, std::uint64_t{1} << 30, t,
        [](auto&, queue_params& p) { p.poll = std::chrono::seconds(1); });
  read_once(r, 1);
  read_once(r, 2, std::chrono::milliseconds(20));
  // Requests published while the ring polls, some notified anyway (a
  // frontend may notify whenever it likes), each one answered.
  for (std::uint64_t id = 3; id < 40; ++id) {
    r.submit(make(BLKIF_OP_READ, id, 0, {{r.data_refs[0], 0, 7}}));
    (void)r.front->push_requests();
    if (id % 3 == 0) REQUIRE_FALSE(r.front_evtchn->notify());
    auto rs = r.responses(1);
    REQUIRE(rs.size() == 1u);
  }
  const auto st = r.q->stats();
  CHECK(st.poll_hits >= 30u);
  CHECK(st.storm_pauses == 0u);
  CHECK_FALSE(r.stop());
}
