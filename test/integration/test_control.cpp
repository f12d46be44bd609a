// The control socket of the real daemon, through the real xen-blkbackctl,
// and xentop's disk counters through xen-blkbackd-dm (issue 17): the
// numbers agree with what blkfront-sim did, and nothing a control client
// does reaches the guests.
#include "app/ctl/json.hpp"
#include "test/integration/control_client.hpp"
#include "test/integration/sim_env.hpp"

#include <doctest/doctest.h>

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <map>
#include <sstream>
#include <thread>

using namespace xbd::test;
using xbd::ctl::json;
using namespace std::chrono_literals;

namespace {

constexpr unsigned xvda = 51712;

json parsed(const std::string& text) {
  std::string why;
  auto v = json::parse(text, &why);
  INFO(text);
  REQUIRE_MESSAGE(v.has_value(), why);
  return *v;
}

// The daemon's `stats --json` for one vbd.
json vbd_stats(sim_env& env, unsigned domid = 5, unsigned devid = xvda) {
  auto r = ctl(env, {"stats", "--json", std::to_string(domid) + "/" + std::to_string(devid)});
  REQUIRE(r.status == 0);
  auto doc = parsed(r.out);
  REQUIRE(doc["vbds"].items().size() == 1u);
  return doc["vbds"].items()[0];
}

std::uint64_t field(const std::string& summary, const std::string& object, const std::string& key) {
  return parsed(summary)[object][key].u64();
}

// The daemon's counters are what the guest did, in Linux blkback's terms.
void check_agrees(const json& v, const frontend_result& r) {
  INFO(r.json);
  CHECK(v["rd_req"].u64() == field(r.json, "ops", "read"));
  CHECK(v["wr_req"].u64() == field(r.json, "ops", "write"));
  CHECK(v["f_req"].u64() == field(r.json, "ops", "flush"));
  CHECK(v["ds_req"].u64() == field(r.json, "ops", "discard"));
  CHECK(v["rd_sect"].u64() * 512 == field(r.json, "bytes", "read"));
  CHECK(v["wr_sect"].u64() * 512 == field(r.json, "bytes", "written"));
  CHECK(v["rd_bytes"].u64() == field(r.json, "bytes", "read"));
  CHECK(v["wr_bytes"].u64() == field(r.json, "bytes", "written"));
  CHECK(v["latency_ns"]["read"]["count"].u64() == field(r.json, "ops", "read"));
  CHECK(v["in_flight"].u64() == 0u);
  CHECK(v["errors"]["rejected"].u64() == 0u);
}

// A raw client of the control socket.
struct raw_client {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  explicit raw_client(const std::string& path) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  }
  ~raw_client() { ::close(fd); }
  bool readable(std::chrono::milliseconds limit) const {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, static_cast<int>(limit.count())) == 1;
  }
  std::string line(std::chrono::milliseconds limit = 5000ms) const {
    std::string s;
    char c;
    while (readable(limit) && ::recv(fd, &c, 1, 0) == 1 && c != '\n') s += c;
    return s;
  }
  // Bytes until the daemon closes, or -1 if it does not within `limit`.
  long drain(std::chrono::milliseconds limit) const {
    long total = 0;
    char buf[65536];
    while (readable(limit)) {
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) return total;
      total += n;
    }
    return -1;
  }
};

std::vector<std::string> workload(std::vector<std::string> extra = {}) {
  std::vector<std::string> a{"--devid", std::to_string(xvda), "--rw", "randrw", "--bs", "4096", "--qd", "16",
                             "--verify"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

}  // namespace

TEST_CASE("control: stats agree with what the guest did, reads, writes, flushes and discards") {
  sim_env env;
  env.create_guest(5);
  env.add_disk(5, env.make_image("disk.img", 32 << 20).string());
  start(env);
  auto r = env.run_frontend(5, workload({"--ios", "3000", "--flush-every", "25", "--discard-pct", "10"}));
  REQUIRE(r.status == 0);
  const auto v = vbd_stats(env);
  check_agrees(v, r);
  CHECK(v["f_req"].u64() > 0u);
  CHECK(v["ds_req"].u64() > 0u);
  CHECK(v["connections"].u64() == 1u);
  // The counters outlive the connection (the guest closed the disk) and
  // grow over the vbd's whole life.
  auto again = env.run_frontend(5, workload({"--ios", "500"}));
  REQUIRE(again.status == 0);
  const auto w = vbd_stats(env);
  CHECK(w["rd_req"].u64() == v["rd_req"].u64() + field(again.json, "ops", "read"));
  CHECK(w["connections"].u64() == 2u);
}

TEST_CASE("control: with two queues each ring counts its own requests, and they add up to the vbd's") {
  sim_env env("[io]\nworker-threads = 2\n[log]\nlevel = \"debug\"\n");
  env.create_guest(5);
  env.add_disk(5, env.make_image("disk.img", 32 << 20).string());
  start(env);
  auto fe = env.start_frontend(5, workload({"--queues", "2", "--ios", "4000", "--hold", "30"}), "held");
  // While the guest holds the connection, after its workload.
  REQUIRE(eventually(
      [&] {
        const auto now = vbd_stats(env);
        return now["rd_req"].u64() + now["wr_req"].u64() >= 4000;
      },
      30s));
  const auto v = vbd_stats(env);
  const auto& queues = v["queues"].items();
  REQUIRE(queues.size() == 2u);
  std::uint64_t rd = 0, wr = 0;
  for (const auto& q : queues) {
    CHECK(q["rd_req"].u64() + q["wr_req"].u64() > 0u);  // both rings were used
    CHECK(q["ring_entries"].u64() == 512u);
    rd += q["rd_req"].u64();
    wr += q["wr_req"].u64();
  }
  CHECK(rd == v["rd_req"].u64());
  CHECK(wr == v["wr_req"].u64());
  CHECK(v["connected"].boolean());
  fe->signal(SIGTERM);
  REQUIRE(fe->wait(10s).has_value());
  std::string summary;
  std::istringstream lines(fe->output());
  for (std::string l; std::getline(lines, l);)
    if (l.starts_with("{")) summary = l;
  CHECK(v["rd_req"].u64() == field(summary, "ops", "read"));
  CHECK(v["wr_req"].u64() == field(summary, "ops", "write"));
}

TEST_CASE("control: list and show, for people and as JSON, and an unknown vbd is an error answer") {
  sim_env env;
  env.create_guest(5);
  env.add_disk(5, env.make_image("disk.img", 16 << 20).string());
  start(env);
  REQUIRE(env.log_shows("state Unknown -> InitWait"));
  REQUIRE(env.run_frontend(5, workload({"--ios", "200"})).status == 0);
  const auto list = ctl(env, {"list"});
  CHECK(list.status == 0);
  CHECK(list.out.find("qdisk/5/51712  xvda  Closed") != std::string::npos);
  const auto show = ctl(env, {"show", "5/xvda"});
  CHECK(show.status == 0);
  CHECK(show.out.find("qdisk/5/51712 (xvda): Closed") != std::string::npos);
  CHECK(show.out.find("  requests    read ") != std::string::npos);
  const auto as_json = parsed(ctl(env, {"show", "--json", "5/51712"}).out);
  CHECK(as_json["vbd"]["params"].str() == "aio:" + (env.dir() / "disk.img").string());
  const auto unknown = ctl(env, {"show", "9/51712"});
  CHECK(unknown.status == 1);
  CHECK(unknown.out.find("xen-blkbackctl: no vbd 9/51712") != std::string::npos);
  CHECK(ctl(env, {"limits", "5/51712", "iops=100"}).out.find("unknown limit 'iops'") != std::string::npos);
  const auto prom = ctl(env, {"stats", "--prometheus"});
  CHECK(prom.status == 0);
  CHECK(prom.out.find(
            "xen_blkbackd_requests_total{domid=\"5\",devid=\"51712\",type=\"qdisk\",dev=\"xvda\",op=\"read\"}") !=
        std::string::npos);
  CHECK(ctl(env, {"frobnicate"}).status == 2);
}

TEST_CASE("control: log-level changes the running daemon's level at once") {
  sim_env env("[log]\nlevel = \"info\"\n");
  env.create_guest(5);
  env.add_disk(5, env.make_image("disk.img", 16 << 20).string());
  start(env);
  REQUIRE(env.run_frontend(5, workload({"--ios", "100"})).status == 0);
  REQUIRE(env.log_shows("disconnected after"));
  CHECK(env.daemon_log().find(" debug ") == std::string::npos);
  const auto set = ctl(env, {"log-level", "debug"});
  CHECK(set.status == 0);
  CHECK(set.out.find("log level debug (was info)") != std::string::npos);
  REQUIRE(env.run_frontend(5, workload({"--ios", "100"})).status == 0);
  CHECK(env.log_shows(" debug [d5/51712 xvda] stopping 1 queue(s)"));
  CHECK(ctl(env, {"log-level"}).out.find("log level debug") != std::string::npos);
  CHECK(ctl(env, {"log-level", "loud"}).status == 1);
}

TEST_CASE("control: a megabyte of garbage gets one error answer, and a verified guest beside it sees nothing") {
  sim_env env;
  env.create_guest(5);
  env.add_disk(5, env.make_image("disk.img", 32 << 20).string());
  start(env);
  auto guest = env.start_frontend(5, workload({"--runtime", "3"}), "victim");
  REQUIRE(env.log_shows("state InitWait -> Connected"));
  raw_client c(socket_of(env));
  std::thread writer([fd = c.fd] {
    std::string junk(1 << 20, '\0');
    for (std::size_t i = 0; i < junk.size(); ++i) junk[i] = static_cast<char>(i * 131 % 251 + 1);
    std::replace(junk.begin(), junk.end(), '\n', 'x');  // one line, longer than any request
    (void)!::send(fd, junk.data(), junk.size(), MSG_NOSIGNAL);
  });
  CHECK(c.line() == R"({"error":"request longer than 4096 bytes"})");
  CHECK(c.drain(5s) >= 0);  // and closed
  writer.join();
  CHECK(env.log_shows("control socket: a request longer than 4096 bytes; answered with an error and closed"));
  REQUIRE(guest->wait(30s) == 0);
  CHECK(guest->output().find("\"mismatches\":0") != std::string::npos);
  CHECK(ctl(env, {"list"}).status == 0);  // still answering
}

TEST_CASE("control: clients that leave mid-answer, or never read it, do not hold the daemon") {
  sim_env env;
  env.create_guest(5);
  env.add_disk(5, env.make_image("disk.img", 16 << 20).string());
  start(env);
  REQUIRE(env.run_frontend(5, workload({"--ios", "200"})).status == 0);
  {
    // Many answers asked for, a few bytes read, gone.
    raw_client leaver(socket_of(env));
    std::string many;
    for (int i = 0; i < 200; ++i) many += "stats\n";
    (void)!::send(leaver.fd, many.data(), many.size(), MSG_NOSIGNAL);
    REQUIRE(leaver.readable(5s));
    char some[100];
    CHECK(::recv(leaver.fd, some, sizeof some, 0) > 0);
  }
  // Answers asked for and never read: more than the socket holds.
  raw_client sleeper(socket_of(env));
  std::string many;
  for (int i = 0; i < 2000; ++i) many += "stats\n";
  (void)!::send(sleeper.fd, many.data(), many.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  // The daemon answers others meanwhile, promptly.
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(ctl(env, {"list"}).status == 0);
  CHECK(std::chrono::steady_clock::now() - t0 < 3s);
  // And drops the sleeper after 5 s.
  CHECK(env.log_shows("control socket: a client did not take its answer within 5000 ms; closed", 15s));
  CHECK(sleeper.drain(5s) >= 0);
  CHECK(ctl(env, {"show", "5/51712"}).status == 0);
}

TEST_CASE("control: a second daemon does not take the socket, a killed one's is replaced, a stopped one's removed") {
  sim_env env;
  env.create_guest(5);
  env.add_disk(5, env.make_image("disk.img", 16 << 20).string());
  start(env);
  // A second daemon with the same settings refuses to start (its domain is
  // served), and leaves the first one's socket alone.
  struct stat before {};
  REQUIRE(::stat(socket_of(env).c_str(), &before) == 0);
  auto second = run({XBD_DAEMON_BIN, "--config", (env.dir() / "xen-blkbackd.toml").string(), "--foreground"},
                    {"LD_LIBRARY_PATH=" XENSIM_LIBDIR_PATH, "XENSIM_DOMID=0"}, env.dir() / "second.log", 30s);
  CHECK(second.status == 1);
  CHECK(second.output.find("another xen-blkbackd (pid " + std::to_string(env.daemon().pid()) + ")") !=
        std::string::npos);
  struct stat after {};
  REQUIRE(::stat(socket_of(env).c_str(), &after) == 0);
  CHECK(after.st_ino == before.st_ino);   // the same socket file
  CHECK(ctl(env, {"list"}).status == 0);  // the first one's, answering
  // SIGKILL leaves the file; the next daemon replaces it.
  env.daemon().signal(SIGKILL);
  REQUIRE(env.daemon().wait(10s).has_value());
  CHECK(std::filesystem::exists(socket_of(env)));
  env.start_daemon();
  REQUIRE(eventually([&] { return ctl(env, {"list"}).status == 0; }));
  // SIGTERM removes it.
  CHECK(env.stop_daemon() == 0);
  CHECK_FALSE(std::filesystem::exists(socket_of(env)));
}

namespace {

// xentop -b's columns for one domain, by the header's names (read from the
// right: the first columns may hold spaces).
std::map<std::string, std::string> xentop_row(const std::string& out, const std::string& name) {
  std::vector<std::string> header, row;
  std::istringstream lines(out);
  for (std::string l; std::getline(lines, l);) {
    std::istringstream words(l);
    std::vector<std::string> w;
    for (std::string x; words >> x;) w.push_back(x);
    if (!w.empty() && w[0] == "NAME") header = w;
    if (!w.empty() && w[0] == name) row = w;
  }
  std::map<std::string, std::string> cols;
  if (header.empty() || row.size() < header.size()) return cols;
  for (std::size_t i = 0; i < header.size(); ++i) cols[header[i]] = row[row.size() - header.size() + i];
  return cols;
}

// The device model the way libxl starts it, per route.
std::vector<std::string> dm_args(bool traditional, const std::filesystem::path& run_dir, const std::string& socket) {
  const std::string stat = (run_dir / "qmp-libxenstat-5").string();
  if (traditional) return {XBD_DM_BIN, "-d", "5", "-libxenstat-socket", stat, "-blkbackd-socket", socket};
  return {XBD_DM_BIN,
          "-xen-domid",
          "5",
          "-chardev",
          "socket,id=libxl-cmd,path=" + (run_dir / "qmp-libxl-5").string() + ",server=on,wait=off",
          "-mon",
          "chardev=libxl-cmd,mode=control",
          "-chardev",
          "socket,id=libxenstat-cmd,path=" + stat + ",server=on,wait=off",
          "-mon",
          "chardev=libxenstat-cmd,mode=control",
          "-blkbackd-socket",
          socket};
}

}  // namespace

TEST_CASE("xentop shows the daemon's VBD_RD, VBD_WR, VBD_RSECT and VBD_WSECT through either device-model route") {
  if (!std::filesystem::exists(XBD_XENTOP_BIN)) {
    MESSAGE("skipped: no xentop at " XBD_XENTOP_BIN " (scripts/fetch-xen-utils)");
    return;
  }
  bool traditional = false;
  SUBCASE("qemu-xen: libxl names qmp-libxenstat-<domid>") {}
  SUBCASE("qemu-xen-traditional: the device model makes it itself") { traditional = true; }
  sim_env env;
  env.create_guest(5);
  env.add_disk(5, env.make_image("disk.img", 32 << 20).string());
  start(env);
  auto r = env.run_frontend(5, workload({"--ios", "2000", "--flush-every", "50"}));
  REQUIRE(r.status == 0);
  const auto run_dir = env.dir() / "run-xen";
  std::filesystem::create_directories(run_dir);
  process dm(dm_args(traditional, run_dir, socket_of(env)), {}, env.dir() / "dm.log");
  REQUIRE(eventually([&] { return std::filesystem::exists(run_dir / "qmp-libxenstat-5"); }));
  const std::vector<std::string> env_vars{"LD_PRELOAD=" XBD_XENTOP_SHIM, "XBD_XENTOP_DOMAINS=0,5",
                                          "XBD_XENTOP_RUN_DIR=" + run_dir.string()};
  std::map<std::string, std::string> row;
  std::string out;
  // libxenstat waits 10 ms for each answer; on a busy machine a look may
  // come back empty, so look again.
  const bool seen = eventually(
      [&] {
        out = run({XBD_XENTOP_BIN, "-b", "-x", "-i", "1"}, env_vars, env.dir() / "xentop.log", 20s).output;
        row = xentop_row(out, "guest5");
        return row["VBDS"] == "1" && row["VBD_RD"] != "0";
      },
      20s);
  INFO(r.json);
  INFO(dm.output());
  INFO(out);
  REQUIRE(seen);
  // -x: the disk by its device number, which libxenstat found by matching
  // query-block's file with the vbd's params (51712 is 0xca00).
  CHECK(out.find(" 51712 [ca: 0]  OO: ") != std::string::npos);
  CHECK(row["VBD_RD"] == std::to_string(field(r.json, "ops", "read")));
  CHECK(row["VBD_WR"] == std::to_string(field(r.json, "ops", "write")));
  CHECK(row["VBD_RSECT"] == std::to_string(field(r.json, "bytes", "read") / 512));
  CHECK(row["VBD_WSECT"] == std::to_string(field(r.json, "bytes", "written") / 512));
  CHECK(dm.output().find("QMP query-blockstats\n") != std::string::npos);
  CHECK(dm.output().find("QMP query-block\n") != std::string::npos);
  dm.signal(SIGTERM);
  CHECK(dm.wait(10s) == 0);
}
