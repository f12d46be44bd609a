// xen-blkbackctl's pieces: the JSON reader, the bounded client, and the
// human output of list and show.
#include "app/ctl/client.hpp"
#include "app/ctl/json.hpp"
#include "app/ctl/render.hpp"
#include "blkback/control/report.hpp"

#include <doctest/doctest.h>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <thread>

using xbd::ctl::json;
using namespace std::chrono_literals;

TEST_CASE("the JSON reader takes whole documents: numbers exact to 64 bits, escapes decoded") {
  const auto v = json::parse(R"( {"a": [1, 18446744073709551615, -2.5e3, true, false, null],
                                 "s": "x\"\\\/\u00e9\ud83d\ude00\n", "o": {}} )");
  REQUIRE(v.has_value());
  const auto& a = (*v)["a"].items();
  REQUIRE(a.size() == 6u);
  CHECK(a[0].u64() == 1u);
  CHECK(a[1].u64() == 18446744073709551615u);
  CHECK(a[2].number() == -2500.0);
  CHECK(a[2].u64() == 0u);
  CHECK(a[3].boolean());
  CHECK_FALSE(a[4].boolean());
  CHECK(a[5].is(json::kind::null));
  CHECK((*v)["s"].str() == "x\"\\/\xc3\xa9\xf0\x9f\x98\x80\n");
  CHECK((*v)["o"].is(json::kind::object));
  CHECK((*v)["missing"]["deeper"].is(json::kind::null));
  std::string why;
  for (const char* bad : {"", "{", "[1,]", "{\"a\" 1}", "\"\x01\"", "1 2", "{\"a\":1}}", "nul"}) {
    CAPTURE(bad);
    CHECK_FALSE(json::parse(bad, &why).has_value());
  }
  CHECK_FALSE(json::parse(std::string(100, '[') + std::string(100, ']')).has_value());  // too deep
}

namespace {

// A one-connection server that answers with `reply` (or never, if empty).
struct one_shot {
  std::filesystem::path dir = [] {
    char t[] = "/tmp/xbdcli.XXXXXX";
    REQUIRE(::mkdtemp(t));
    return std::filesystem::path(t);
  }();
  std::string path = (dir / "s").string();
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  std::thread t;
  std::string got;

  explicit one_shot(std::string reply) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(fd, 1) == 0);
    t = std::thread([this, reply] {
      const int c = ::accept(fd, nullptr, nullptr);
      char ch;
      while (::recv(c, &ch, 1, 0) == 1 && ch != '\n') got += ch;
      if (!reply.empty()) (void)!::send(c, reply.data(), reply.size(), MSG_NOSIGNAL);
      char rest[16];
      (void)!::recv(c, rest, sizeof rest, 0);  // until the client goes
      ::close(c);
    });
  }
  ~one_shot() {
    t.join();
    ::close(fd);
    std::filesystem::remove_all(dir);
  }
};

}  // namespace

TEST_CASE("the client sends one line and returns the answer's line; no daemon, or a silent one, is a failure in time") {
  {
    one_shot s("{\"ok\":1}\nlater");
    const auto a = xbd::ctl::ask(s.path, "stats 5", 2000ms);
    REQUIRE(std::holds_alternative<std::string>(a));
    CHECK(std::get<std::string>(a) == "{\"ok\":1}");
  }
  {
    one_shot silent("");
    const auto start = std::chrono::steady_clock::now();
    const auto a = xbd::ctl::ask(silent.path, "list", 300ms);
    REQUIRE(std::holds_alternative<xbd::ctl::failure>(a));
    CHECK(std::get<xbd::ctl::failure>(a).what.find("waiting for the answer") != std::string::npos);
    CHECK(std::chrono::steady_clock::now() - start < 2s);
    CHECK(silent.got == "list");
  }
  const auto none = xbd::ctl::ask("/nonexistent/xbd.sock", "list", 300ms);
  REQUIRE(std::holds_alternative<xbd::ctl::failure>(none));
  CHECK(std::get<xbd::ctl::failure>(none).what.find("is xen-blkbackd running?") != std::string::npos);
}

TEST_CASE("list and show read the daemon's JSON for people") {
  xbd::blkback::vbd_report v;
  v.type = "qdisk";
  v.domid = 5;
  v.devid = 51712;
  v.dev = "xvda";
  v.state = "Connected";
  v.frontend_state = "Connected";
  v.params = "aio:/srv/a.img";
  v.backing = "/srv/a.img";
  v.writable = true;
  v.connected = true;
  v.total.rd_req = 12;
  v.total.rd_bytes = 3 << 20;
  v.total.latency[0] = {12, 12 * 45000, 45000, 45000, 45000};
  v.queues.push_back({0, 512, 17, v.total});
  const auto list = json::parse(xbd::blkback::list_json({v}));
  REQUIRE(list.has_value());
  const std::string l = xbd::ctl::render_list(*list);
  CHECK(l.starts_with("VBD            DEV   STATE      FRONTEND   QUEUES  PARAMS\n"));
  CHECK(l.find("qdisk/5/51712  xvda  Connected  Connected  1       aio:/srv/a.img\n") != std::string::npos);
  const auto show = json::parse(xbd::blkback::vbd_json(v, true));
  REQUIRE(show.has_value());
  const std::string s = xbd::ctl::render_show(*show);
  CHECK(s.starts_with("qdisk/5/51712 (xvda): Connected, frontend Connected"));
  CHECK(s.find("  requests    read 12, write 0, flush 0, discard 0") != std::string::npos);
  CHECK(s.find("  bytes       read 3.0 MiB, written 0 B") != std::string::npos);
  CHECK(s.find("  latency     read 4") != std::string::npos);  // ~45 us p50
  CHECK(s.find("  queue 0: 512 entries, event channel 17\n    requests    read 12") != std::string::npos);
  CHECK(xbd::ctl::human_time(1500) == "1.5 us");
  CHECK(xbd::ctl::human_time(2500000) == "2.50 ms");
  CHECK(xbd::ctl::human_bytes(1536) == "1.5 KiB");
}

TEST_CASE("limits are shown for people: the group, what is in force, and each source") {
  xbd::blkback::vbd_report v;
  v.type = "qdisk";
  v.domid = 5;
  v.devid = 51712;
  v.dev = "xvda";
  xbd::blkback::limits_view l;
  REQUIRE(l.file.set("iops-total", "1000").empty());
  REQUIRE(l.live.set("iops-total-max", "2000").empty());
  REQUIRE(l.live.set("group", "domain").empty());
  l.effective = l.file;
  l.effective.overlay(l.live);
  l.group = "domain";
  l.in_force = l.effective.limits();
  l.group_rings = 3;
  l.toolstack_problem = "throttle-bps-total: bps-total must be a whole number, got 'x'";
  const auto a = json::parse(xbd::blkback::limits_json(v, l));
  REQUIRE(a.has_value());
  CHECK((*a)["in_force"]["iops-total"].u64() == 1000u);
  CHECK((*a)["sources"]["control"]["group"].str() == "domain");
  const std::string s = xbd::ctl::render_limits(*a);
  CHECK(s ==
        "qdisk/5/51712 (xvda): group domain, 3 ring(s) share them\n"
        "  limits      iops-total=1000 iops-total-max=2000\n"
        "  in force    iops-total=1000 iops-total-max=2000\n"
        "  file        iops-total=1000\n"
        "  toolstack   none\n"
        "  control     iops-total-max=2000 group=domain\n"
        "  ignored     throttle-bps-total: bps-total must be a whole number, got 'x'\n");
}
