// xen-blkbackd-dm's QMP responder: what libxl 4.17 says to a qemu-xen device
// model at start-up, answered as QEMU would.
#include "app/ctl/json.hpp"
#include "app/dm/daemon_blocks.hpp"
#include "app/dm/qmp.hpp"

#include <doctest/doctest.h>

using xbd::dm::machine_state;
using xbd::dm::qmp_session;

TEST_CASE("QMP: the greeting announces QMP with a version") {
  auto g = qmp_session::greeting();
  CHECK(g.find("\"QMP\"") != std::string::npos);
  CHECK(g.find("\"version\"") != std::string::npos);
  CHECK(g.ends_with("\r\n"));
}

TEST_CASE("QMP: libxl's start-up conversation is answered, ids echoed") {
  machine_state m;
  qmp_session s(m);
  auto caps = s.feed("{\"execute\":\"qmp_capabilities\",\"id\":1}\r\n");
  CHECK(caps.find("\"return\"") != std::string::npos);
  CHECK(caps.find("\"id\": 1") != std::string::npos);
  auto chardev = s.feed("{\"execute\":\"query-chardev\",\"id\":2}");
  CHECK(chardev.find("\"return\": []") != std::string::npos);
  CHECK(chardev.find("\"id\": 2") != std::string::npos);
  CHECK_FALSE(s.broken());
}

TEST_CASE("QMP: a command split across reads is answered once it is whole") {
  machine_state m;
  qmp_session s(m);
  CHECK(s.feed("{\"execute\":\"qmp_capa").empty());
  CHECK(s.feed("bilities\"}").find("\"return\"") != std::string::npos);
}

TEST_CASE("QMP: garbage breaks the session instead of being guessed at") {
  machine_state m;
  qmp_session s(m);
  (void)s.feed("this is not json}\r\n");
  CHECK(s.broken());
}

namespace {

xbd::dm::block_device disk() {
  xbd::dm::block_device d;
  d.device = "xvda";
  d.file = "/srv/a.img";
  d.size = 1 << 20;
  d.rd_operations = 7;
  d.wr_operations = 3;
  d.rd_bytes = 7 * 4096;
  d.wr_bytes = 3 * 4096;
  return d;
}

// What libxenstat (xenstat_qmp.c) sends, in its own spelling.
constexpr const char* caps = "{ \"execute\": \"qmp_capabilities\" }";

}  // namespace

TEST_CASE("QMP: query-blockstats and query-block answer what libxenstat reads, from the daemon's counters") {
  machine_state m;
  int asked = 0;
  qmp_session s(m, [&]() -> std::variant<std::vector<xbd::dm::block_device>, std::string> {
    ++asked;
    return std::vector{disk()};
  });
  CHECK(s.feed(caps).find("\"return\": {}") != std::string::npos);
  const std::string stats = s.feed("{ \"execute\": \"query-blockstats\" }");
  CHECK(stats.ends_with("\r\n"));
  const auto doc = xbd::ctl::json::parse(stats);
  REQUIRE(doc.has_value());  // one JSON value: libxenstat parses the whole read
  const auto& entry = (*doc)["return"].items().at(0);
  CHECK(entry["device"].str() == "xvda");
  CHECK(entry["stats"]["rd_bytes"].u64() == 7u * 4096);
  CHECK(entry["stats"]["wr_bytes"].u64() == 3u * 4096);
  CHECK(entry["stats"]["rd_operations"].u64() == 7u);
  CHECK(entry["stats"]["wr_operations"].u64() == 3u);
  const auto block = xbd::ctl::json::parse(s.feed("{ \"execute\": \"query-block\" }"));
  REQUIRE(block.has_value());
  const auto& b = (*block)["return"].items().at(0);
  CHECK(b["device"].str() == "xvda");
  CHECK(b["inserted"]["file"].str() == "/srv/a.img");
  CHECK(asked == 1);  // query-block is answered from what query-blockstats fetched
}

TEST_CASE("QMP: without the daemon, query-blockstats is a GenericError naming why") {
  machine_state m;
  qmp_session s(m, []() -> std::variant<std::vector<xbd::dm::block_device>, std::string> {
    return std::string("connecting to /run/xen-blkbackd/control.sock: No such file or directory");
  });
  (void)s.feed(caps);
  const auto r = s.feed("{\"execute\": \"query-blockstats\", \"id\": 4}");
  CHECK(r.find("\"class\": \"GenericError\"") != std::string::npos);
  CHECK(r.find("xen-blkbackd: connecting to") != std::string::npos);
  CHECK(r.find("\"id\": 4") != std::string::npos);
  CHECK_FALSE(s.broken());
}

TEST_CASE("the daemon's stats answer becomes QMP disks with Linux's counters, and libxenstat's file") {
  const auto got = xbd::dm::blocks_from_stats(
      R"({"vbds":[{"domid":5,"devid":51712,"dev":"xvda","params":"aio:/srv/a.img","writable":true,"direct":true,)"
      R"("sectors":2048,"rd_req":10,"wr_req":4,"f_req":2,"ds_req":1,"rd_sect":80,"wr_sect":32,)"
      R"("latency_ns":{"read":{"sum":5000},"write":{"sum":7000}}},)"
      R"({"domid":5,"devid":51728,"dev":"","params":"nbd:host:10809","writable":false}]})");
  REQUIRE(std::holds_alternative<std::vector<xbd::dm::block_device>>(got));
  const auto& d = std::get<std::vector<xbd::dm::block_device>>(got);
  REQUIRE(d.size() == 2u);
  CHECK(d[0].device == "xvda");
  CHECK(d[0].file == "/srv/a.img");
  CHECK(d[0].rd_operations == 10u);
  CHECK(d[0].wr_operations == 4u);
  CHECK(d[0].flush_operations == 2u);
  CHECK(d[0].rd_bytes == 80u * 512);  // libxenstat divides by 512 again: rd_sect
  CHECK(d[0].wr_bytes == 32u * 512);
  CHECK(d[0].rd_total_time_ns == 5000u);
  CHECK(d[0].size == 2048u * 512);
  CHECK(d[1].device == "vbd-51728");
  CHECK(d[1].file == "nbd:host:10809");
  CHECK(d[1].read_only);
  CHECK(std::get<std::string>(xbd::dm::blocks_from_stats(R"({"error":"no"})")) == "no");
  CHECK(std::holds_alternative<std::string>(xbd::dm::blocks_from_stats("nonsense")));
  CHECK(xbd::dm::libxenstat_file("aio:nbd://h/e") == "//h/e");
}
