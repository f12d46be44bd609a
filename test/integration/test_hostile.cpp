// A hostile guest against the real daemon, while another guest's verified
// workload runs beside it (hostile_rig.hpp): every case checks the answer
// the hostile guest gets, the line the daemon logs, and that the victim saw
// nothing (no error, no wrong block, at least half its solo throughput).
//
// Run it alone: xbd_integration_tests -tc='hostile*' (ctest: one test, the
// whole suite in one process).
#include <doctest/doctest.h>

#include <regex>
#include <thread>

#include <sys/mount.h>
#include <unistd.h>
#include <algorithm>
#include <csignal>
#include <fstream>
#include <random>
#include <sstream>

#include "test/integration/hostile_rig.hpp"

using namespace xbd::test;
using namespace xbd::test::hostile;
using namespace std::chrono_literals;

namespace {

// A segment list of `n` segments, each a whole page of pool `pool`.
std::string whole_pages(const std::string& pool, unsigned n) {
  std::string s;
  for (unsigned i = 0; i < n; ++i) s += " seg=" + pool + ":" + std::to_string(i) + ":0:7";
  return s;
}

// At most the last `n` bytes of a long text, for failure messages.
std::string tail(const std::string& s, std::size_t n = 3000) {
  return s.size() > n ? "..." + s.substr(s.size() - n) : s;
}

// A verified workload on `v` afterwards: the vbd is still usable.
void recovers(hostile_case& c, const vbd_ref& v, std::vector<std::string> extra = {}) {
  std::vector<std::string> args{
      "--devid", std::to_string(v.devid), "--rw", "randrw", "--ios", "64", "--verify", "--timeout", "10"};
  args.insert(args.end(), extra.begin(), extra.end());
  auto r = c.r().run_guest(v.domid, args);
  INFO("a clean guest on the same vbd afterwards:\n" << tail(r.output));
  CHECK(r.status == 0);
  CHECK(r.summary["verify"]["mismatches"].integer() == 0);
}

std::string le32(std::uint32_t v) {
  char b[9];
  std::snprintf(b, sizeof b, "%02x%02x%02x%02x", v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, v >> 24);
  return b;
}

std::string le64(std::uint64_t v) {
  return le32(static_cast<std::uint32_t>(v)) + le32(static_cast<std::uint32_t>(v >> 32));
}

// ---- negotiation by hand: the guest writes its keys itself

struct negotiation {
  std::string state;  // the backend's, once it settled
  std::string error;  // its error node
};

negotiation negotiate(hostile_case& c, const vbd_ref& v, const std::vector<std::pair<std::string, std::string>>& keys) {
  auto& xs = c.r().env().toolstack().xs();
  xs.in_transaction([&](auto t) {
    for (const auto& [k, val] : keys) xs.write(v.frontend + "/" + k, val, t);
    xs.write(v.frontend + "/state", xenbus::initialised, t);
  });
  negotiation n;
  eventually([&] {
    n.state = c.r().env().read(v.backend + "/state").value_or("");
    return n.state == xenbus::connected || n.state == xenbus::closed;
  });
  n.error = c.r().env().read(v.backend + "/error").value_or("");
  return n;
}

// The keys are refused: the vbd is Closed with `why` in its error node and
// its log, and a proper guest connects afterwards.
void refused(hostile_case& c, const vbd_ref& v, const std::vector<std::pair<std::string, std::string>>& keys,
             const std::string& why) {
  auto n = negotiate(c, v, keys);
  CHECK(n.state == xenbus::closed);
  INFO("error node: " << n.error);
  CHECK(n.error.find(why) != std::string::npos);
  c.expect_log(v, why);
  c.expect_log(v, "the device is closed");
  recovers(c, v);
}

// ---- backing stores that fail

// A tmpfs of its own.
struct tmpfs_mount {
  std::filesystem::path dir;
  bool ok = false;
  tmpfs_mount(const std::filesystem::path& d, const std::string& size) : dir(d) {
    std::filesystem::create_directories(dir);
    ok = ::mount("xbd-hostile", dir.c_str(), "tmpfs", 0, ("size=" + size).c_str()) == 0;
  }
  ~tmpfs_mount() {
    if (ok) ::umount2(dir.c_str(), MNT_DETACH);
  }
};

// A loop device over a file, with the logical sector size asked for.
struct loop_device {
  std::string dev;
  loop_device(rig& r, const std::filesystem::path& file, unsigned sector) {
    auto out = run({"/usr/sbin/losetup", "--find", "--show", "--sector-size", std::to_string(sector), file.string()},
                   {}, r.env().dir() / r.unique("losetup-"), 20s);
    std::istringstream in(out.output);
    if (out.status == 0 && (in >> dev) && dev.starts_with("/dev/loop")) return;
    dev.clear();
  }
  ~loop_device() {
    if (dev.empty()) return;
    for (int i = 0; i < 50; ++i) {
      if (run({"/usr/sbin/losetup", "-d", dev}, {}, "/dev/null", 10s).status == 0) break;
      ::usleep(100'000);
    }
  }
};

// xbd-faultyfs: a disk image whose reads, writes, flushes and discards fail
// (or wait) where `rules` says.
struct faulty_disk {
  std::filesystem::path dir, mount, backing, events;
  std::unique_ptr<process> server;
  std::string why_not;  // empty when usable
  faulty_disk(rig& r, const std::string& rules, std::uint64_t bytes) {
    if (std::string(XBD_FAULTYFS_BIN).empty()) {
      why_not = "xbd-faultyfs was not built (no libfuse3; scripts/install-deps installs it)";
      return;
    }
    if (::access("/dev/fuse", R_OK | W_OK) != 0) {
      why_not = "no /dev/fuse";
      return;
    }
    dir = r.env().dir() / r.unique("fuse-");
    mount = dir / "mnt";
    backing = dir / "backing.img";
    events = dir / "events";
    std::filesystem::create_directories(mount);
    std::ofstream(dir / "rules") << rules;
    std::ofstream(events).flush();
    std::ofstream(backing).flush();
    std::filesystem::resize_file(backing, bytes);
    server = std::make_unique<process>(std::vector<std::string>{XBD_FAULTYFS_BIN, mount.string(), backing.string(),
                                                                (dir / "rules").string(), events.string()},
                                       std::vector<std::string>{}, dir / "faultyfs.log");
    if (!eventually([&] { return server->output().find("ready") != std::string::npos || !server->running(); }, 10s) ||
        !server->running() || !std::filesystem::exists(image()))
      why_not = "xbd-faultyfs could not mount: " + server->output();
  }
  ~faulty_disk() {
    if (server) {
      server->signal(SIGTERM);
      (void)server->wait(10s);
    }
    if (!mount.empty()) ::umount2(mount.c_str(), MNT_DETACH);
  }
  std::filesystem::path image() const { return mount / "disk.img"; }
  // The file system has seen a request ("read 1048576 4096").
  bool saw(const std::string& line) {
    return eventually(
        [&] {
          std::ifstream in(events);
          for (std::string l; std::getline(in, l);)
            if (l == line) return true;
          return false;
        },
        10s);
  }
};

// The case's vbd on `disk`, or none (and a message) when this host cannot
// make one: the case is then skipped.
std::optional<vbd_ref> vbd_on(hostile_case& c, const faulty_disk& disk, bool direct_io_safe = false) {
  if (!disk.why_not.empty()) {
    MESSAGE("skipped: " << disk.why_not);
    return std::nullopt;
  }
  vbd_options o;
  o.target = disk.image();
  o.direct_io_safe = direct_io_safe;
  return c.vbd(o);
}

// ---- mapped and persistent grants

// The summary line of a blkfront-sim run's output.
json summary_of(const std::string& output) {
  std::string line;
  std::istringstream lines(output);
  for (std::string l; std::getline(lines, l);)
    if (!l.empty() && l.front() == '{') line = l;
  return parse_json(line).value_or(json{});
}

// `n` bytes of `b`, in hex (the helper's and peek's notation).
std::string hex_of(unsigned char b, std::size_t n) {
  char x[3];
  std::snprintf(x, sizeof x, "%02x", b);
  std::string out;
  for (std::size_t i = 0; i < n; ++i) out += x;
  return out;
}

// `n` bytes of a file at `offset`, in hex.
std::string file_hex(const std::filesystem::path& f, std::uint64_t offset, std::size_t n) {
  std::ifstream in(f, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(offset));
  std::string bytes(n, '\0');
  in.read(bytes.data(), static_cast<std::streamsize>(n));
  std::string out;
  for (char ch : bytes) out += hex_of(static_cast<unsigned char>(ch), 1);
  return out;
}

// What a case on mapped grants checks besides its answers: the daemon is
// up, keeps no more of the vbd's pages than the cap, and its memory grew
// by at most `slack_kib` since `rss_before`.
void bounded(hostile_case& c, const vbd_ref& v, std::size_t rss_before, std::size_t slack_kib = 16 * 1024) {
  auto& r = c.r();
  REQUIRE(r.env().daemon().running());
  const json g = r.grant_stats(v);
  CHECK(g["persistent"].integer() <= persistent_cap);
#if !defined(__SANITIZE_ADDRESS__)
  const std::size_t rss = r.daemon_rss_kib();
  INFO("daemon RSS " << rss_before << " -> " << rss << " KiB");
  CHECK(rss <= rss_before + slack_kib);
#else
  (void)rss_before;
  (void)slack_kib;
#endif
}

}  // namespace

// ============================================================ malformed requests

HOSTILE_CASE("hostile: requests: an unknown operation is answered EOPNOTSUPP, its code echoed",
             "requests: unknown operation") {
  auto v = c.vbd();
  auto r = c.requests(v, "req op=0x63 id=1\n", {{1, rsp::eopnotsupp}});
  CHECK(r.last(1)->op == 0x63);
  c.expect_log(v, "rejected request 1: unknown operation");
  c.finish();
}

HOSTILE_CASE("hostile: requests: the reserved operation 4 and codes 7 and 255 are answered EOPNOTSUPP",
             "requests: reserved and unknown codes") {
  auto v = c.vbd();
  c.requests(v, "req op=4 id=1\nreq op=7 id=2\nreq op=255 id=3\n",
             {{1, rsp::eopnotsupp}, {2, rsp::eopnotsupp}, {3, rsp::eopnotsupp}});
  c.expect_log(v, "rejected request 1: unknown operation");
  c.expect_log(v, "rejected request 3: unknown operation");
  c.finish();
}

HOSTILE_CASE("hostile: requests: a response echoes all 64 bits of the id", "requests: 64-bit id echoed") {
  auto v = c.vbd();
  auto r = c.requests(v, "pages buf 1 rw\nreq op=read id=0xffffffffffffffff sector=0 seg=buf:0:0:7\n",
                      {{0xffffffffffffffffull, rsp::okay}});
  CHECK(r.last(0xffffffffffffffffull)->op == 0);
  c.expect_log(v, disconnect_line(1, 4096, 0, 0, 0));
  c.finish();
}

HOSTILE_CASE("hostile: requests: two requests in flight with the same id are both answered",
             "requests: duplicate ids") {
  auto v = c.vbd();
  auto r = c.script(v, "pages buf 1 rw\nreq op=read id=7 sector=0 seg=buf:0:0:7\nreq op=0x63 id=7\npush\nwait 2\n");
  INFO(r.output);
  CHECK(r.status == 0);
  std::vector<int> statuses;
  for (const auto& x : r.responses)
    if (x.id == 7) statuses.push_back(x.status);
  std::sort(statuses.begin(), statuses.end());
  CHECK(statuses == std::vector<int>{rsp::eopnotsupp, rsp::okay});
  c.expect_log(v, "rejected request 7: unknown operation");
  c.expect_log(v, disconnect_line(2, 4096, 0, 1, 0));
  c.finish();
}

HOSTILE_CASE("hostile: requests: a read with no segment is answered ERROR", "requests: read with nr_segments 0") {
  auto v = c.vbd();
  c.requests(v, "req op=read id=1 nseg=0\n", {{1, rsp::error}});
  c.expect_log(v, "rejected request 1: segment count out of range");
  c.finish();
}

HOSTILE_CASE("hostile: requests: a write with no segment is answered ERROR", "requests: write with nr_segments 0") {
  auto v = c.vbd();
  c.requests(v, "req op=write id=1 nseg=0\n", {{1, rsp::error}});
  c.expect_log(v, "rejected request 1: segment count out of range");
  c.finish();
}

HOSTILE_CASE("hostile: requests: 12 and 255 segments in a direct request are answered ERROR",
             "requests: too many segments") {
  auto v = c.vbd();
  c.requests(v,
             "pages buf 11 rw\nreq op=read id=1 nseg=12" + whole_pages("buf", 11) + "\nreq op=write id=2 nseg=255" +
                 whole_pages("buf", 11) + "\n",
             {{1, rsp::error}, {2, rsp::error}});
  c.expect_log(v, "rejected request 1: segment count out of range");
  c.expect_log(v, "rejected request 2: segment count out of range");
  c.finish();
}

HOSTILE_CASE("hostile: requests: another device's handle is ignored, as Linux's blkback does",
             "requests: foreign handle") {
  auto v = c.vbd();
  c.requests(v, "pages buf 1 rw\nreq op=read id=1 handle=0xffff sector=0 seg=buf:0:0:7\n", {{1, rsp::okay}});
  c.expect_log(v, disconnect_line(1, 4096, 0, 0, 0));
  c.finish();
}

HOSTILE_CASE("hostile: requests: the last page of the disk is served, one sector further is ERROR",
             "requests: sector beyond the end") {
  auto v = c.vbd();
  const auto end = v.sectors;
  c.requests(v,
             "pages buf 1 rw\nreq op=read id=1 sector=" + std::to_string(end - 8) + " seg=buf:0:0:7\n" +
                 "req op=read id=2 sector=" + std::to_string(end - 7) + " seg=buf:0:0:7\n" +
                 "req op=write id=3 sector=" + std::to_string(end) + " seg=buf:0:0:0\n",
             {{1, rsp::okay}, {2, rsp::error}, {3, rsp::error}});
  c.expect_log(v, "rejected request 2: beyond the end of the disk");
  c.expect_log(v, "rejected request 3: beyond the end of the disk");
  c.expect_log(v, disconnect_line(3, 4096, 0, 2, 0));
  c.finish();
}

HOSTILE_CASE("hostile: requests: a sector number whose end overflows 64 bits is ERROR",
             "requests: sector + length overflow") {
  auto v = c.vbd();
  c.requests(v,
             "pages buf 2 rw\nreq op=read id=1 sector=0xfffffffffffffff8 seg=buf:0:0:7\n"
             "req op=write id=2 sector=0xffffffffffffffff" +
                 whole_pages("buf", 2) + "\nreq op=read id=3 sector=0x8000000000000000 seg=buf:0:0:7\n",
             {{1, rsp::error}, {2, rsp::error}, {3, rsp::error}});
  c.expect_log(v, "rejected request 1: beyond the end of the disk");
  c.expect_log(v, "rejected request 2: beyond the end of the disk");
  c.expect_log(v, "rejected request 3: beyond the end of the disk");
  c.finish();
}

HOSTILE_CASE("hostile: requests: last_sect before first_sect is ERROR", "requests: last_sect < first_sect") {
  auto v = c.vbd();
  c.requests(v,
             "pages buf 2 rw\nreq op=read id=1 sector=0 seg=buf:0:6:2\nreq op=write id=2 sector=0 seg=buf:0:0:7 "
             "seg=buf:1:1:0\n",
             {{1, rsp::error}, {2, rsp::error}});
  c.expect_log(v, "rejected request 1: segment outside its page");
  c.expect_log(v, "rejected request 2: segment outside its page");
  c.finish();
}

HOSTILE_CASE("hostile: requests: a segment reaching past its page (last_sect 8, 255) is ERROR",
             "requests: last_sect beyond the page") {
  auto v = c.vbd();
  c.requests(v,
             "pages buf 1 rw\nreq op=read id=1 sector=0 seg=buf:0:0:8\nreq op=write id=2 sector=0 seg=buf:0:8:8\n"
             "req op=read id=3 sector=0 seg=buf:0:255:255\n",
             {{1, rsp::error}, {2, rsp::error}, {3, rsp::error}});
  c.expect_log(v, "rejected request 1: segment outside its page");
  c.expect_log(v, "rejected request 3: segment outside its page");
  c.expect_log(v, disconnect_line(3, 0, 0, 3, 0));
  c.finish();
}

HOSTILE_CASE("hostile: requests: partial-page segments on a 512-byte disk move exactly their sectors",
             "requests: partial segments") {
  auto v = c.vbd();
  // Sectors 2..5 of one page and sector 0 of another: 2560 bytes from disk
  // sectors 0..4, back to back.
  c.requests(v, "pages buf 2 rw\nreq op=read id=1 sector=0 seg=buf:0:2:5 seg=buf:1:0:0\n", {{1, rsp::okay}});
  c.expect_log(v, disconnect_line(1, 2560, 0, 0, 0));
  c.finish();
}

HOSTILE_CASE("hostile: requests: on a 4 KiB-sector disk, segments that do not cover whole sectors are ERROR",
             "requests: not covering 4 KiB sectors") {
  auto& r = c.r();
  auto file = r.env().make_image(r.unique("4kn-") + ".img", 8 << 20);
  loop_device loop(r, file, 4096);
  if (loop.dev.empty()) {
    MESSAGE("skipped: losetup cannot make a loop device with 4096-byte sectors here");
    return;
  }
  vbd_options o;
  o.target = loop.dev;
  auto v = c.vbd(o);
  // This frontend sets no feature-large-sector-size: without the key it
  // would be given 512-byte sectors (docs/protocol.md, "Sector size").
  r.env().toolstack().xs().write(v.backend + "/force-sector-size", "4096");
  c.requests(v,
             "pages buf 1 rw\n"
             "req op=read id=1 sector=0 seg=buf:0:0:3\n"   // half a sector
             "req op=read id=2 sector=1 seg=buf:0:0:7\n"   // not at a sector boundary
             "req op=write id=3 sector=8 seg=buf:0:4:7\n"  // half again
             "req op=read id=4 sector=8 seg=buf:0:0:7\n",  // one whole sector
             {{1, rsp::error}, {2, rsp::error}, {3, rsp::error}, {4, rsp::okay}});
  c.expect_log(v, "sector 4096/4096");
  c.expect_log(v, "rejected request 1: not aligned to the logical sector size");
  c.expect_log(v, "rejected request 2: not aligned to the logical sector size");
  c.expect_log(v, "rejected request 3: not aligned to the logical sector size");
  c.finish();
}

HOSTILE_CASE("hostile: requests: a write to a read-only disk is ERROR, a read is served",
             "requests: write to a read-only disk") {
  vbd_options o;
  o.writable = false;
  auto v = c.vbd(o);
  c.requests(v, "pages buf 1 rw\nreq op=write id=1 sector=0 seg=buf:0:0:7\nreq op=read id=2 sector=0 seg=buf:0:0:7\n",
             {{1, rsp::error}, {2, rsp::okay}});
  c.expect_log(v, "rejected request 1: write to a read-only device");
  c.expect_log(v, disconnect_line(2, 4096, 0, 1, 0));
  c.finish();
}

HOSTILE_CASE("hostile: requests: a barrier where none is offered (read-only) is EOPNOTSUPP, where offered OKAY",
             "requests: barrier not offered") {
  vbd_options ro;
  ro.writable = false;
  auto v = c.vbd(ro);
  CHECK(c.r().env().read(v.backend + "/feature-barrier") == "0");
  c.requests(v, "req op=barrier id=1 nseg=0\n", {{1, rsp::eopnotsupp}});
  c.expect_log(v, "rejected request 1: operation not advertised");
  auto w = c.vbd();
  CHECK(c.r().env().read(w.backend + "/feature-barrier") == "1");
  c.requests(w, "req op=barrier id=1 nseg=0\n", {{1, rsp::okay}});
  c.expect_log(w, disconnect_line(1, 0, 0, 0, 0));
  c.finish();
}

HOSTILE_CASE("hostile: requests: a flush with data on a read-only disk is ERROR, without data OKAY",
             "requests: flush with data, read-only") {
  vbd_options ro;
  ro.writable = false;
  auto v = c.vbd(ro);
  c.requests(v, "pages buf 1 rw\nreq op=flush id=1 sector=0 seg=buf:0:0:7\nreq op=flush id=2 nseg=0\n",
             {{1, rsp::error}, {2, rsp::okay}});
  c.expect_log(v, "rejected request 1: write to a read-only device");
  c.finish();
}

HOSTILE_CASE("hostile: requests: a flush with segments is a write and a flush, with 12 it is ERROR",
             "requests: flush with segments") {
  auto v = c.vbd();
  c.requests(v,
             "pages buf 11 rw\nreq op=flush id=1 sector=0 seg=buf:0:0:7\nreq op=flush id=2 nseg=12 sector=0" +
                 whole_pages("buf", 11) + "\n",
             {{1, rsp::okay}, {2, rsp::error}});
  c.expect_log(v, "rejected request 2: segment count out of range");
  c.expect_log(v, disconnect_line(2, 0, 4096, 1, 0));
  c.finish();
}

HOSTILE_CASE("hostile: requests: a discard where the toolstack turned discard off is EOPNOTSUPP",
             "requests: discard not offered") {
  vbd_options o;
  o.discard_enable = false;
  auto v = c.vbd(o);
  CHECK(c.r().env().read(v.backend + "/feature-discard") == "0");
  c.requests(v, "dreq id=1 sector=0 nr=8\n", {{1, rsp::eopnotsupp}});
  c.expect_log(v, "rejected request 1: discard not advertised");
  c.finish();
}

HOSTILE_CASE("hostile: requests: a discard on a read-only disk is EOPNOTSUPP",
             "requests: discard on a read-only disk") {
  vbd_options o;
  o.writable = false;
  auto v = c.vbd(o);
  c.requests(v, "dreq id=1 sector=0 nr=8\n", {{1, rsp::eopnotsupp}});
  c.expect_log(v, "rejected request 1: discard not advertised");
  c.finish();
}

HOSTILE_CASE("hostile: requests: discards of no sectors, of 2^55 sectors, or past the end are ERROR",
             "requests: discard bad range") {
  auto v = c.vbd();
  REQUIRE(c.r().env().read(v.backend + "/feature-discard") == "1");
  c.requests(v,
             "dreq id=1 sector=0 nr=0\ndreq id=2 sector=0 nr=0x80000000000000\ndreq id=3 sector=" +
                 std::to_string(v.sectors - 8) + " nr=16\ndreq id=4 sector=0xfffffffffffffff0 nr=0x20\n" +
                 "dreq id=5 sector=" + std::to_string(v.sectors - 8) + " nr=8\n",
             {{1, rsp::error}, {2, rsp::error}, {3, rsp::error}, {4, rsp::error}, {5, rsp::okay}});
  c.expect_log(v, "rejected request 1: discard length out of range");
  c.expect_log(v, "rejected request 2: discard length out of range");
  c.expect_log(v, "rejected request 3: beyond the end of the disk");
  c.expect_log(v, "rejected request 4: beyond the end of the disk");
  c.finish();
}

HOSTILE_CASE("hostile: requests: a secure discard not offered is a plain one, other flag bits mean nothing",
             "requests: discard flags") {
  auto v = c.vbd();
  CHECK(c.r().env().read(v.backend + "/discard-secure") == "0");
  c.requests(v,
             "dreq id=1 sector=0 nr=8 flag=secure\ndreq id=2 sector=0 nr=8 flag=0xff\ndreq id=3 sector=0 nr=8 "
             "flag=0xfe\n",
             {{1, rsp::okay}, {2, rsp::okay}, {3, rsp::okay}});
  c.finish();
}

// ============================================================ 32-bit guests

HOSTILE_CASE("hostile: x86_32-abi: malformed requests at the 32-bit offsets get the same answers",
             "x86_32-abi: malformed requests") {
  auto v = c.vbd();
  auto r =
      c.requests(v,
                 "pages buf 1 rw\n"
                 "req op=0x63 id=0x100000001\n"
                 "req op=read id=2 sector=0 seg=buf:0:7:6\n"
                 "req op=read id=3 nseg=12 sector=0\n"
                 "req op=write id=4 sector=" +
                     std::to_string(v.sectors) + " seg=buf:0:0:7\n" + "req op=read id=5 sector=8 seg=buf:0:0:7\n",
                 {{0x100000001ull, rsp::eopnotsupp}, {2, rsp::error}, {3, rsp::error}, {4, rsp::error}, {5, rsp::okay}},
                 {"--protocol", "x86_32-abi"});
  CHECK(r.summary["negotiated"]["protocol"].s == "x86_32-abi");
  c.expect_log(v, "x86_32-abi");
  c.expect_log(v, "rejected request 4294967297: unknown operation");
  c.expect_log(v, "rejected request 2: segment outside its page");
  c.expect_log(v, "rejected request 3: segment count out of range");
  c.expect_log(v, "rejected request 4: beyond the end of the disk");
  c.finish();
}

HOSTILE_CASE("hostile: x86_32-abi: discards with bad ranges and flags at the 32-bit offsets", "x86_32-abi: discards") {
  auto v = c.vbd();
  c.requests(v,
             "dreq id=1 sector=0 nr=0\ndreq id=2 sector=" + std::to_string(v.sectors) +
                 " nr=8\ndreq id=3 sector=0 nr=8 flag=secure\ndreq id=4 sector=8 nr=8\n",
             {{1, rsp::error}, {2, rsp::error}, {3, rsp::okay}, {4, rsp::okay}}, {"--protocol", "x86_32-abi"});
  c.expect_log(v, "rejected request 1: discard length out of range");
  c.expect_log(v, "rejected request 2: beyond the end of the disk");
  c.finish();
}

HOSTILE_CASE("hostile: x86_32-abi: indirect requests at the 32-bit offsets", "x86_32-abi: indirect") {
  auto v = c.vbd();
  std::string s = "pages buf 4 rw\npages ind 1 rw\n";
  for (int i = 0; i < 4; ++i) s += "seg ind:0 " + std::to_string(i) + " buf:" + std::to_string(i) + " 0 7\n";
  s += "ireq iop=read nseg=4 id=1 sector=0 igref=ind:0\n"
       "ireq iop=flush nseg=4 id=2 sector=0 igref=ind:0\n"
       "ireq iop=write nseg=1025 id=3 sector=0 igref=ind:0\n";
  c.requests(v, s, {{1, rsp::okay}, {2, rsp::error}, {3, rsp::error}}, {"--protocol", "x86_32-abi"});
  c.expect_log(v, "rejected request 2: indirect operation other than read or write");
  c.expect_log(v, "rejected request 3: indirect segment count out of range");
  c.expect_log(v, disconnect_line(3, 16384, 0, 2, 0));
  c.finish();
}

// ============================================================ indirect requests

HOSTILE_CASE("hostile: indirect: an indirect_op other than read or write is ERROR, echoing INDIRECT",
             "indirect: bad indirect_op") {
  auto v = c.vbd();
  auto r = c.requests(v,
                      "pages ind 1 rw\nireq iop=flush nseg=1 id=1 igref=ind:0\nireq iop=0x63 nseg=1 id=2 "
                      "igref=ind:0\nireq iop=indirect nseg=1 id=3 igref=ind:0\n",
                      {{1, rsp::error}, {2, rsp::error}, {3, rsp::error}});
  CHECK(r.last(1)->op == 6);
  c.expect_log(v, "rejected request 1: indirect operation other than read or write");
  c.expect_log(v, "rejected request 3: indirect operation other than read or write");
  c.finish();
}

HOSTILE_CASE("hostile: indirect: 0 segments, or one more than the advertised 1024, is ERROR",
             "indirect: segment count out of range") {
  auto v = c.vbd();
  CHECK(c.r().env().read(v.backend + "/feature-max-indirect-segments") == "1024");
  c.requests(v,
             "pages ind 3 rw\nireq iop=read nseg=0 id=1 igref=ind:0\nireq iop=read nseg=1025 id=2 igref=ind:0 "
             "igref=ind:1 igref=ind:2\nireq iop=write nseg=65535 id=3 igref=ind:0\n",
             {{1, rsp::error}, {2, rsp::error}, {3, rsp::error}});
  c.expect_log(v, "rejected request 1: indirect segment count out of range");
  c.expect_log(v, "rejected request 2: indirect segment count out of range");
  c.expect_log(v, "rejected request 3: indirect segment count out of range");
  c.finish();
}

HOSTILE_CASE("hostile: indirect: 600 segments over two indirect pages are served",
             "indirect: two pages of descriptors") {
  auto v = c.vbd();
  std::string s = "pages buf 1 rw\npages ind 2 rw\n";
  for (int i = 0; i < 600; ++i)
    s += "seg ind:" + std::to_string(i / 512) + " " + std::to_string(i % 512) + " buf:0 0 7\n";
  s += "ireq iop=read nseg=600 id=1 sector=0 igref=ind:0 igref=ind:1\n";
  c.requests(v, s, {{1, rsp::okay}});
  c.expect_log(v, disconnect_line(1, 600 * 4096, 0, 0, 0));
  c.finish();
}

HOSTILE_CASE("hostile: indirect: too few indirect pages for the segment count is ERROR",
             "indirect: too few indirect pages") {
  auto v = c.vbd();
  std::string s = "pages buf 1 rw\npages ind 1 rw\n";
  for (int i = 0; i < 512; ++i) s += "seg ind:0 " + std::to_string(i) + " buf:0 0 7\n";
  // 600 segments need two pages; the second indirect_grefs entry is 0.
  s += "ireq iop=read nseg=600 id=1 sector=0 igref=ind:0\n";
  c.requests(v, s, {{1, rsp::error}});
  c.expect_log(v, "rejected request 1: indirect pages could not be copied");
  c.finish();
}

HOSTILE_CASE("hostile: indirect: grefs beyond the pages the segment count needs are never touched",
             "indirect: too many indirect pages") {
  auto v = c.vbd();
  std::string s = "pages buf 8 rw\npages ind 1 rw\n";
  for (int i = 0; i < 8; ++i) s += "seg ind:0 " + std::to_string(i) + " buf:" + std::to_string(i) + " 0 7\n";
  s += "ireq iop=write nseg=8 id=1 sector=0 igref=ind:0 igref=99999 igref=0 igref=0xffffffff\n";
  c.requests(v, s, {{1, rsp::okay}});
  c.expect_log(v, disconnect_line(1, 0, 8 * 4096, 0, 0));
  c.finish();
}

HOSTILE_CASE("hostile: indirect: an indirect page gref that does not exist or is another domain's is ERROR",
             "indirect: bad indirect grefs") {
  auto v = c.vbd();
  const auto foreign = c.r().grant(v.domid, 9, true)[0];
  c.requests(v,
             "ireq iop=read nseg=8 id=1 igref=99999\nireq iop=read nseg=8 id=2 igref=" + std::to_string(foreign) +
                 "\nireq iop=write nseg=8 id=3 igref=30000\n",
             {{1, rsp::error}, {2, rsp::error}, {3, rsp::error}});
  c.expect_log(v, "rejected request 1: indirect pages could not be copied");
  c.expect_log(v, "rejected request 2: indirect pages could not be copied");
  c.expect_log(v, "rejected request 3: indirect pages could not be copied");
  c.finish();
}

HOSTILE_CASE("hostile: indirect: descriptors with bad sectors are ERROR", "indirect: descriptors with bad sectors") {
  auto v = c.vbd();
  std::string s = "pages buf 4 rw\npages ind 2 rw\n";
  for (int i = 0; i < 4; ++i) s += "seg ind:0 " + std::to_string(i) + " buf:" + std::to_string(i) + " 0 7\n";
  for (int i = 0; i < 4; ++i) s += "seg ind:1 " + std::to_string(i) + " buf:" + std::to_string(i) + " 0 7\n";
  s += "seg ind:0 3 buf:3 6 2\n";  // last_sect < first_sect
  s += "seg ind:1 2 buf:2 0 9\n";  // beyond the page
  s += "ireq iop=read nseg=4 id=1 sector=0 igref=ind:0\nireq iop=write nseg=4 id=2 sector=0 igref=ind:1\n";
  c.requests(v, s, {{1, rsp::error}, {2, rsp::error}});
  c.expect_log(v, "rejected request 1: segment outside its page");
  c.expect_log(v, "rejected request 2: segment outside its page");
  c.finish();
}

HOSTILE_CASE("hostile: indirect: a descriptor with a bad data gref fails the whole request",
             "indirect: bad data gref") {
  auto v = c.vbd();
  std::string s = "pages buf 4 rw\npages ind 1 rw\n";
  for (int i = 0; i < 4; ++i) s += "seg ind:0 " + std::to_string(i) + " buf:" + std::to_string(i) + " 0 7\n";
  s += "seg ind:0 2 99999 0 7\n";
  s += "ireq iop=read nseg=4 id=1 sector=0 igref=ind:0\nireq iop=write nseg=4 id=2 sector=64 igref=ind:0\n";
  c.requests(v, s, {{1, rsp::error}, {2, rsp::error}});
  c.expect_log(v, "grant copy for request 1 failed");
  c.expect_log(v, "grant copy for request 2 failed");
  c.expect_log(v, disconnect_line(2, 0, 0, 0, 2));
  c.finish();
}

HOSTILE_CASE("hostile: indirect: beyond the end of the disk, and a write to a read-only disk, are ERROR",
             "indirect: range and read-only") {
  vbd_options ro;
  ro.writable = false;
  auto v = c.vbd(ro);
  std::string s = "pages buf 8 rw\npages ind 1 rw\n";
  for (int i = 0; i < 8; ++i) s += "seg ind:0 " + std::to_string(i) + " buf:" + std::to_string(i) + " 0 7\n";
  s += "ireq iop=read nseg=8 id=1 sector=" + std::to_string(v.sectors - 56) + " igref=ind:0\n";
  s += "ireq iop=write nseg=8 id=2 sector=0 igref=ind:0\n";
  s += "ireq iop=read nseg=8 id=3 sector=" + std::to_string(v.sectors - 64) + " igref=ind:0\n";
  c.requests(v, s, {{1, rsp::error}, {2, rsp::error}, {3, rsp::okay}});
  c.expect_log(v, "rejected request 1: beyond the end of the disk");
  c.expect_log(v, "rejected request 2: write to a read-only device");
  c.finish();
}

// ============================================================ bad and foreign grants

HOSTILE_CASE("hostile: grants: a gref beyond the grant table is ERROR, for reads and writes",
             "grants: gref out of range") {
  auto v = c.vbd();
  c.requests(v, "req op=read id=1 sector=0 seg=99999:0:7\nreq op=write id=2 sector=8 seg=0xffffffff:0:7\n",
             {{1, rsp::error}, {2, rsp::error}});
  c.expect_log(v, "grant copy for request 1 failed");
  c.expect_log(v, "grant copy for request 2 failed");
  c.expect_log(v, disconnect_line(2, 0, 0, 0, 2));
  c.finish();
}

HOSTILE_CASE("hostile: grants: a gref in the table but never granted is ERROR", "grants: gref never granted") {
  auto v = c.vbd();
  c.requests(v, "req op=read id=1 sector=0 seg=30000:0:7\nreq op=write id=2 sector=0 seg=0:0:7\n",
             {{1, rsp::error}, {2, rsp::error}});
  c.expect_log(v, "grant copy for request 1 failed");
  c.expect_log(v, "grant copy for request 2 failed");
  c.finish();
}

HOSTILE_CASE("hostile: grants: a gref granted to another domain is ERROR, the same kind granted to us is served",
             "grants: gref granted to another domain") {
  auto v = c.vbd();
  const auto foreign = std::to_string(c.r().grant(v.domid, 9, true)[0]);
  const auto ours = std::to_string(c.r().grant(v.domid, 0, true)[0]);
  c.requests(v,
             "req op=read id=1 sector=0 seg=" + foreign + ":0:7\nreq op=write id=2 sector=0 seg=" + foreign +
                 ":0:7\nreq op=read id=3 sector=0 seg=" + ours + ":0:7\n",
             {{1, rsp::error}, {2, rsp::error}, {3, rsp::okay}});
  c.expect_log(v, "grant copy for request 1 failed");
  c.expect_log(v, "grant copy for request 2 failed");
  c.expect_log(v, disconnect_line(3, 4096, 0, 0, 2));
  c.finish();
}

HOSTILE_CASE("hostile: grants: a read into a read-only grant is ERROR, a write from it is served",
             "grants: read-only grant") {
  auto v = c.vbd();
  c.requests(v, "pages ro 1 ro\nreq op=read id=1 sector=0 seg=ro:0:0:7\nreq op=write id=2 sector=0 seg=ro:0:0:7\n",
             {{1, rsp::error}, {2, rsp::okay}});
  c.expect_log(v, "grant copy for request 1 failed");
  c.expect_log(v, disconnect_line(2, 0, 4096, 0, 1));
  c.finish();
}

HOSTILE_CASE("hostile: grants: one bad segment among good ones fails that request only", "grants: one bad segment") {
  auto v = c.vbd();
  c.requests(v,
             "pages buf 3 rw\nreq op=read id=1 sector=0 seg=buf:0:0:7 seg=99999:0:7 seg=buf:2:0:7\n"
             "req op=write id=2 sector=0 seg=buf:0:0:7 seg=buf:1:0:7 seg=30000:0:7\n"
             "req op=read id=3 sector=0" +
                 whole_pages("buf", 3) + "\n",
             {{1, rsp::error}, {2, rsp::error}, {3, rsp::okay}});
  c.expect_log(v, "grant copy for request 1 failed");
  c.expect_log(v, "grant copy for request 2 failed");
  c.expect_log(v, disconnect_line(3, 3 * 4096, 0, 0, 2));
  c.finish();
}

// ============================================================ grants revoked mid-request

HOSTILE_CASE("hostile: revoked: a read whose grant is revoked while the disk works on it is ERROR",
             "revoked: read, grant revoked in flight") {
  auto& r = c.r();
  faulty_disk disk(r, "read 1048576 4096 delay:1500\n", 8 << 20);
  const auto vp = vbd_on(c, disk);
  if (!vp) return;
  const vbd_ref& v = *vp;
  const auto g = r.grant(v.domid, 0, true)[0];
  auto guest = r.start_guest(v.domid,
                             {"--devid", std::to_string(v.devid), "--rw", "none", "--timeout", "10", "--script",
                              r.script_file("req op=read id=1 sector=2048 seg=" + std::to_string(g) +
                                            ":0:7\npush\nwait 1 10000\nexpect 1 error\n")
                                  .string()},
                             "revoke-read");
  REQUIRE(disk.saw("read 1048576 4096"));
  CHECK(r.revoke(v.domid, g) == 0);  // nobody holds it while the disk works
  auto st = guest->wait(30s);
  INFO(guest->output());
  CHECK(st == 0);
  c.expect_log(v, "grant copy for request 1 failed");
  c.expect_log(v, disconnect_line(1, 0, 0, 0, 1));
  c.finish();
}

HOSTILE_CASE("hostile: revoked: a write whose grant is revoked after its data was copied is served",
             "revoked: write, grant revoked in flight") {
  auto& r = c.r();
  faulty_disk disk(r, "write 2097152 4096 delay:1500\n", 8 << 20);
  const auto vp = vbd_on(c, disk);
  if (!vp) return;
  const vbd_ref& v = *vp;
  const auto g = r.grant(v.domid, 0, true)[0];
  auto guest = r.start_guest(v.domid,
                             {"--devid", std::to_string(v.devid), "--rw", "none", "--timeout", "10", "--script",
                              r.script_file("req op=write id=1 sector=4096 seg=" + std::to_string(g) +
                                            ":0:7\npush\nwait 1 10000\nexpect 1 okay\n")
                                  .string()},
                             "revoke-write");
  REQUIRE(disk.saw("write 2097152 4096"));
  CHECK(r.revoke(v.domid, g) == 0);
  auto st = guest->wait(30s);
  INFO(guest->output());
  CHECK(st == 0);
  c.expect_log(v, disconnect_line(1, 0, 4096, 0, 0));
  c.finish();
}

HOSTILE_CASE("hostile: revoked: a frontend that closes with a read at the disk gets its answer before the ring goes",
             "revoked: close with a request in flight") {
  auto& r = c.r();
  faulty_disk disk(r, "read 1048576 4096 delay:1500\n", 8 << 20);
  const auto vp = vbd_on(c, disk);
  if (!vp) return;
  const vbd_ref& v = *vp;
  auto guest = r.start_guest(v.domid,
                             {"--devid", std::to_string(v.devid), "--rw", "none", "--timeout", "10", "--script",
                              r.script_file("pages buf 1 rw\nreq op=read id=1 sector=2048 seg=buf:0:0:7\npush\n"
                                            "wait 1 10000\nexpect 1 okay\n")
                                  .string()},
                             "close-in-flight");
  REQUIRE(disk.saw("read 1048576 4096"));
  r.env().toolstack().xs().write(v.frontend + "/state", xenbus::closed);
  c.expect_log(v, "ring stopping with 1 request(s) in flight");
  auto st = guest->wait(30s);
  INFO(guest->output());
  CHECK(st == 0);
  c.expect_log(v, disconnect_line(1, 4096, 0, 0, 0));
  c.finish();
}

HOSTILE_CASE("hostile: revoked: a guest that dies with a read at the disk is torn down once the read is answered",
             "revoked: guest dies with a request in flight") {
  auto& r = c.r();
  faulty_disk disk(r, "read 1048576 4096 delay:1500\n", 8 << 20);
  if (!disk.why_not.empty()) {
    MESSAGE("skipped: " << disk.why_not);
    return;
  }
  const unsigned dom = r.next_domid();
  r.env().create_guest(dom);
  vbd_options o;
  o.domid = dom;
  o.target = disk.image();
  auto v = r.add_vbd(o);  // goes with its domain
  auto guest = r.start_guest(dom,
                             {"--devid", std::to_string(v.devid), "--rw", "none", "--timeout", "10", "--script",
                              r.script_file("pages buf 1 rw\nreq op=read id=1 sector=2048 seg=buf:0:0:7\npush\n"
                                            "wait 1 10000\n")
                                  .string()},
                             "dies-in-flight");
  REQUIRE(disk.saw("read 1048576 4096"));
  guest->signal(SIGKILL);
  (void)guest->wait(10s);
  r.env().xenstored().kill_domain(dom);
  CHECK(r.env().toolstack().destroy_domain(dom).ok());
  c.expect_log(v, "ring stopping with 1 request(s) in flight");
  c.expect_log(v, "disconnected after 1 requests");
  c.expect_log(v, "-> Closed");
  CHECK(r.env().daemon().running());
  c.finish();
}

HOSTILE_CASE("hostile: revoked: a ring halted with a read at the disk still answers that read",
             "revoked: ring halted with a request in flight") {
  auto& r = c.r();
  faulty_disk disk(r, "read 1048576 4096 delay:1500\n", 8 << 20);
  const auto vp = vbd_on(c, disk);
  if (!vp) return;
  const vbd_ref& v = *vp;
  auto g = c.script(v,
                    "pages buf 1 rw\nreq op=read id=1 sector=2048 seg=buf:0:0:7\npush\nsleep 200\n"
                    "req-prod +1000\nwait 1 10000\nexpect 1 okay\nexpect-state connected\n");
  INFO(g.output);
  CHECK(g.status == 0);
  CHECK(disk.saw("read 1048576 4096"));
  c.expect_log(v, "this ring is halted");
  c.expect_log(v, "ring stopping with 1 request(s) in flight");
  c.expect_log(v, disconnect_line(1, 4096, 0, 0, 0));
  c.finish();
}

// ============================================================ mapped and persistent grants

// The rig's daemon serves every request of a direct-io-safe vbd on the
// guest's mapped pages (zero-copy-min-bytes 0), and keeps at most
// persistent_cap pages per ring for a guest that asks for persistent
// grants (hostile_rig.cpp).

// A guest that asks for persistent grants and then never uses a page twice:
// every request on pages granted for it alone (blkfront-sim --persistent
// --fresh-grants), 32 requests of 4 pages in flight, twice what the ring
// may keep. The daemon keeps at most the cap (dropping the least recently
// used page for each new one, mapping for one request what it cannot keep),
// and its memory does not grow with the flood.
HOSTILE_CASE("hostile: persistent: a guest that floods new grant refs is held to the cap, memory bounded",
             "persistent: grant flood") {
  auto& r = c.r();
  vbd_options o;
  o.bytes = 64 << 20;
  o.direct_io_safe = true;
  auto v = c.vbd(o);
  r.warm_victim();
  const std::size_t rss_before = r.daemon_rss_kib();
  auto flood = r.start_guest(v.domid,
                             {"--devid", std::to_string(v.devid), "--persistent", "--fresh-grants", "--rw", "randrw",
                              "--bs", "16k", "--qd", "32", "--ios", "6000", "--verify", "--timeout", "20"},
                             "grant-flood");
  REQUIRE(r.log_shows(v, "state InitWait -> Connected", 20s));
  std::int64_t gauge_peak = 0;
  std::size_t rss_peak = rss_before;
  const auto until = std::chrono::steady_clock::now() + 120s;
  while (flood->running() && std::chrono::steady_clock::now() < until) {
    gauge_peak = std::max(gauge_peak, r.grant_stats(v)["persistent"].integer());
    rss_peak = std::max(rss_peak, r.daemon_rss_kib());
    std::this_thread::sleep_for(50ms);
  }
  const auto st = flood->wait(30s);
  const std::string out = flood->output();
  INFO(tail(out));
  REQUIRE(st == 0);
  const json sum = summary_of(out);
  CHECK(sum["verify"]["mismatches"].integer() == 0);
  CHECK(sum["verify"]["blocks_checked"].integer() > 0);
  CHECK(sum["errors"]["protocol"].integer() == 0);
  // The guest's own count of its pages the daemon held at once, from the
  // grant table: the cap, whatever the daemon's gauge says.
  CHECK(sum["grants"]["checked"].b);
  CHECK(sum["grants"]["held_after_response"].integer() > 0);
  CHECK(sum["grants"]["held_peak"].integer() <= persistent_cap);
  const json g = r.grant_stats(v);
  MESSAGE("grant flood: persistent gauge peak "
          << gauge_peak << " (cap " << persistent_cap << "), maps " << g["persistent_maps"].integer() << ", map calls "
          << g["map_calls"].integer() << ", drops " << g["persistent_drops"].integer() << ", hits "
          << g["persistent_hits"].integer() << ", guest saw at most " << sum["grants"]["held_peak"].integer()
          << " held; daemon RSS " << rss_before / 1024 << " -> peak " << rss_peak / 1024 << " MiB");
  CHECK(gauge_peak > 0);
  CHECK(gauge_peak <= persistent_cap);
  // A full set maps the rest per request (one call each), and makes room a
  // tenth at a time on the queue's tick: the set is refilled, never churned
  // page by page.
  CHECK(g["map_calls"].integer() > 10 * persistent_cap);
  CHECK(g["persistent_maps"].integer() > persistent_cap);
  CHECK(g["persistent_drops"].integer() > 0);
  CHECK(g["persistent"].integer() == 0);  // gone with the connection
#if !defined(__SANITIZE_ADDRESS__)
  CHECK(rss_peak <= rss_before + 32 * 1024);
#endif
  bounded(c, v, rss_before);
  c.finish();
}

// A guest that ends access after every answer, as Linux's blkfront does
// without persistent grants, finds every page let go of: the daemon
// unmaps (or its copies are done) before it answers, in each way it moves
// data. blkfront-sim --fresh-grants fails the run otherwise.
HOSTILE_CASE("hostile: mapped: a guest ending access after each answer finds its pages let go of, copied or mapped",
             "mapped: fresh grants ended after each answer") {
  auto& r = c.r();
  r.warm_victim();
  const std::size_t rss_before = r.daemon_rss_kib();
  for (const bool direct : {false, true}) {
    CAPTURE(direct);
    vbd_options o;
    o.bytes = 32 << 20;
    o.direct_io_safe = direct;
    auto v = c.vbd(o);
    // One page direct, and 32 pages in one indirect request.
    for (const std::string bs : {"4k", "128k"}) {
      CAPTURE(bs);
      auto g = r.run_guest(v.domid, {"--devid", std::to_string(v.devid), "--fresh-grants", "--rw", "randrw", "--bs", bs,
                                     "--qd", "16", "--ios", "400", "--verify", "--timeout", "10"});
      INFO(tail(g.output));
      CHECK(g.status == 0);
      CHECK(g.summary["verify"]["mismatches"].integer() == 0);
      CHECK(g.summary["grants"]["checked"].b);
      CHECK(g.summary["grants"]["fresh_pages"].integer() >= 400);
      CHECK(g.summary["grants"]["held_after_response"].integer() == 0);
    }
    const json s = r.grant_stats(v);
    INFO("mapped_requests " << s["mapped_requests"].integer() << ", copy_segments " << s["copy_segments"].integer());
    if (direct) {
      CHECK(s["mapped_requests"].integer() >= 800);
    } else {
      CHECK(s["mapped_requests"].integer() == 0);
      CHECK(s["copy_segments"].integer() >= 400 * 33);
    }
    bounded(c, v, rss_before);
  }
  c.finish();
}

// Xen refuses to end access to a grant another domain has mapped (the
// entry carries GTF_reading/GTF_writing): the guest's revoke fails, the
// read goes on into the guest's page and is answered OKAY. On this
// platform the attack does nothing; what matters is that the daemon
// answers, lets go of the page with its answer, and serves on.
HOSTILE_CASE("hostile: mapped: a grant revoked under an in-flight zero-copy read stays mapped until its answer",
             "mapped: revoke under an in-flight read") {
  auto& r = c.r();
  faulty_disk disk(r, "read 1048576 4096 delay:1500\n", 8 << 20);
  const auto vp = vbd_on(c, disk, true);
  if (!vp) return;
  const vbd_ref& v = *vp;
  r.warm_victim();
  const std::size_t rss_before = r.daemon_rss_kib();
  const auto g = r.grant(v.domid, 0, true)[0];
  auto guest =
      r.start_guest(v.domid,
                    {"--devid", std::to_string(v.devid), "--rw", "none", "--timeout", "10", "--script",
                     r.script_file("req op=read id=1 sector=2048 seg=" + std::to_string(g) +
                                   ":0:7\npush\nwait 1 10000\nexpect 1 okay\nexpect-held " + std::to_string(g) +
                                   " no\nsleep 3000\n"
                                   "pages buf 1 rw\nreq op=write id=2 sector=8 seg=buf:0:0:7\npush\n"
                                   "wait 1 10000\nexpect 2 okay\n")
                         .string()},
                    "revoke-mapped");
  REQUIRE(disk.saw("read 1048576 4096"));
  CHECK(r.grant_pins(v.domid, g) == 1);  // mapped for the read, not copied
  CHECK(r.revoke(v.domid, g) == 3);      // EBUSY
  // Let go of with the answer (the script's expect-held, right after it),
  // and so revocable while the guest is still connected (its script sleeps).
  CHECK(eventually([&] { return r.grant_pins(v.domid, g) == 0; }, 5s));
  CHECK(r.revoke(v.domid, g) == 0);
  auto st = guest->wait(30s);
  INFO(guest->output());
  CHECK(st == 0);
  CHECK(r.grant_stats(v)["mapped_requests"].integer() >= 2);
  c.expect_log(v, disconnect_line(2, 4096, 4096, 0, 0));
  bounded(c, v, rss_before);
  c.finish();
}

// A guest kernel may write its grant table at any time. Xen keeps the frame
// it pinned at the first mapping until the last unmap (its active entry),
// so the read in flight lands in the old frame; the next request maps the
// grant afresh and finds the new one. The guest only moves its own data
// around: both requests are answered OKAY.
HOSTILE_CASE("hostile: mapped: a grant entry rewritten to another frame under an in-flight zero-copy read",
             "mapped: rewrite under an in-flight read") {
  auto& r = c.r();
  faulty_disk disk(r, "read 1048576 4096 delay:1500\n", 8 << 20);
  const auto vp = vbd_on(c, disk, true);
  if (!vp) return;
  const vbd_ref& v = *vp;
  r.warm_victim();
  const std::size_t rss_before = r.daemon_rss_kib();
  const auto g = std::to_string(r.grant(v.domid, 0, true)[0]);
  auto guest = r.start_guest(
      v.domid,
      {"--devid", std::to_string(v.devid), "--rw", "none", "--timeout", "10", "--script",
       r.script_file("pages buf 1 rw\nfill buf:0 0x5a\nreq op=write id=1 sector=2048 seg=buf:0:0:7\npush\n"
                     "wait 1 10000\nexpect 1 okay\n"
                     "req op=read id=2 sector=2048 seg=" +
                     g + ":0:7\npush\nwait 1 10000\nexpect 2 okay\nreq op=write id=3 sector=16 seg=" + g +
                     ":0:7\npush\nwait 1 10000\nexpect 3 okay\n")
           .string()},
      "rewrite-mapped");
  REQUIRE(disk.saw("read 1048576 4096"));
  const auto frames = r.retarget(v.domid, static_cast<std::uint32_t>(std::stoul(g)));  // {old, new}
  REQUIRE(r.write_granted(v.domid, static_cast<std::uint32_t>(std::stoul(g)), 0, hex_of(0xc3, 4096)));
  auto st = guest->wait(30s);
  INFO(guest->output());
  CHECK(st == 0);
  CHECK(r.peek(v.domid, frames.first, 0, 16) == hex_of(0x5a, 16));
  CHECK(r.peek(v.domid, frames.second, 0, 16) == hex_of(0xc3, 16));
  CHECK(file_hex(disk.backing, 16 * 512, 16) == hex_of(0xc3, 16));
  c.expect_log(v, disconnect_line(3, 4096, 8192, 0, 0));
  bounded(c, v, rss_before);
  c.finish();
}

// A persistent grant stays mapped after its answer: the guest cannot
// revoke it (EBUSY) until the vbd lets go, at the latest when the ring
// goes. A rewritten entry changes nothing for the page kept: the daemon
// writes from the frame it mapped first, as Xen's active entry keeps it.
// Harmless: both frames are the guest's own.
HOSTILE_CASE("hostile: persistent: a kept grant cannot be revoked until the vbd lets go, nor moved by a rewrite",
             "persistent: revoke and rewrite a kept grant") {
  auto& r = c.r();
  auto v = c.vbd();
  r.warm_victim();
  const std::size_t rss_before = r.daemon_rss_kib();
  const auto ref = r.grant(v.domid, 0, true)[0];
  const auto g = std::to_string(ref);
  REQUIRE(r.write_granted(v.domid, ref, 0, hex_of(0x5a, 4096)));
  auto guest =
      r.start_guest(v.domid,
                    {"--devid", std::to_string(v.devid), "--rw", "none", "--persistent", "--timeout", "10", "--script",
                     r.script_file("req op=write id=1 sector=0 seg=" + g +
                                   ":0:7\npush\nwait 1 10000\nexpect 1 okay\nsleep 5000\n"
                                   "req op=write id=2 sector=8 seg=" +
                                   g + ":0:7\npush\nwait 1 10000\nexpect 2 okay\n")
                         .string()},
                    "revoke-kept");
  REQUIRE(eventually([&] { return r.grant_pins(v.domid, ref) == 1; }, 10s));
  CHECK(r.revoke(v.domid, ref) == 3);
  r.retarget(v.domid, ref);
  REQUIRE(r.write_granted(v.domid, ref, 0, hex_of(0xc3, 4096)));
  auto st = guest->wait(30s);
  INFO(guest->output());
  CHECK(st == 0);
  CHECK(file_hex(v.target, 0, 16) == hex_of(0x5a, 16));
  CHECK(file_hex(v.target, 4096, 16) == hex_of(0x5a, 16));
  const json s = r.grant_stats(v);
  CHECK(s["persistent_maps"].integer() == 1);
  CHECK(s["persistent_hits"].integer() == 1);
  c.expect_log(v, disconnect_line(2, 0, 8192, 0, 0));
  CHECK(eventually([&] { return r.grant_pins(v.domid, ref) == 0; }, 10s));
  CHECK(r.revoke(v.domid, ref) == 0);
  bounded(c, v, rss_before);
  c.finish();
}

namespace {

// The three ways the daemon moves a request's data, and how each shows.
struct data_mode {
  const char* name;
  bool direct;       // direct-io-safe: zero-copy
  bool persistent;   // the guest asks for persistent grants
  const char* verb;  // in "grant VERB for request N failed"
  const char* stat;  // the counter that says the mode was used
};
constexpr data_mode zero_copy_mode{"zero-copy", true, false, "map", "mapped_requests"};
constexpr data_mode persistent_mode{"persistent", false, true, "map", "persistent_maps"};
constexpr data_mode copy_mode{"copy", false, false, "copy", "copy_segments"};

std::vector<std::string> mode_args(const data_mode& m) {
  return m.persistent ? std::vector<std::string>{"--persistent"} : std::vector<std::string>{};
}

}  // namespace

HOSTILE_CASE("hostile: mapped: grants for another domain are ERROR in zero-copy, persistent and copy modes",
             "mapped: grants for another domain") {
  auto& r = c.r();
  r.warm_victim();
  const std::size_t rss_before = r.daemon_rss_kib();
  for (const data_mode& m : {zero_copy_mode, persistent_mode, copy_mode}) {
    const std::string mode = m.name;
    CAPTURE(mode);
    vbd_options o;
    o.direct_io_safe = m.direct;
    auto v = c.vbd(o);
    const auto foreign = std::to_string(r.grant(v.domid, 9, true)[0]);
    const auto ours = std::to_string(r.grant(v.domid, 0, true)[0]);
    // Alone, and next to a good page (in persistent mode one already kept).
    c.requests(v,
               "req op=read id=1 sector=0 seg=" + foreign + ":0:7\nreq op=write id=2 sector=8 seg=" + foreign +
                   ":0:7\nreq op=read id=3 sector=0 seg=" + ours + ":0:7\nreq op=write id=4 sector=8 seg=" + ours +
                   ":0:7 seg=" + foreign + ":0:7\nreq op=write id=5 sector=16 seg=" + ours + ":0:7\n",
               {{1, rsp::error}, {2, rsp::error}, {3, rsp::okay}, {4, rsp::error}, {5, rsp::okay}}, mode_args(m));
    const std::string verb = m.verb;
    c.expect_log(v, "grant " + verb + " for request 1 failed");
    c.expect_log(v, "grant " + verb + " for request 2 failed");
    c.expect_log(v, "grant " + verb + " for request 4 failed");
    c.expect_log(v, disconnect_line(5, 4096, 4096, 0, 3));
    const json s = r.grant_stats(v);
    CHECK(s[m.stat].integer() > 0);
    if (m.direct) CHECK(s["copy_segments"].integer() == 0);
    bounded(c, v, rss_before);
  }
  c.finish();
}

// A read writes into the guest's page: it needs a writable grant, and
// mapping a read-only one writable fails (Xen: GTF_readonly). A write only
// reads the page. A read-only page is never kept as a persistent grant
// (kept pages are mapped writable): it is mapped for its request alone.
HOSTILE_CASE("hostile: mapped: a read into a read-only grant is ERROR, a write from it OKAY, zero-copy and persistent",
             "mapped: read-only grant") {
  auto& r = c.r();
  r.warm_victim();
  const std::size_t rss_before = r.daemon_rss_kib();
  for (const data_mode& m : {zero_copy_mode, persistent_mode}) {
    const std::string mode = m.name;
    CAPTURE(mode);
    vbd_options o;
    o.direct_io_safe = m.direct;
    auto v = c.vbd(o);
    c.requests(v,
               "pages ro 1 ro\npages buf 1 rw\nreq op=read id=1 sector=0 seg=ro:0:0:7\n"
               "req op=write id=2 sector=0 seg=ro:0:0:7\nreq op=read id=3 sector=0 seg=buf:0:0:7 seg=ro:0:0:7\n"
               "req op=read id=4 sector=0 seg=buf:0:0:7\nreq op=write id=5 sector=8 seg=ro:0:0:7 seg=buf:0:0:7\n",
               {{1, rsp::error}, {2, rsp::okay}, {3, rsp::error}, {4, rsp::okay}, {5, rsp::okay}}, mode_args(m));
    c.expect_log(v, "grant map for request 1 failed");
    c.expect_log(v, "grant map for request 3 failed");
    c.expect_log(v, disconnect_line(5, 4096, 4096 + 8192, 0, 2));
    const json s = r.grant_stats(v);
    CHECK(s[m.stat].integer() > 0);
    CHECK(s["copy_segments"].integer() == 0);
    bounded(c, v, rss_before);
  }
  c.finish();
}

// ============================================================ ring index abuse

HOSTILE_CASE("hostile: ring: a producer index far ahead halts that ring only, a reconnect serves again",
             "ring: req_prod far ahead") {
  auto v = c.vbd();
  auto r = c.script(v,
                    "pages buf 1 rw\nreq op=read id=1 sector=0 seg=buf:0:0:7\npush\nwait 1\nexpect 1 okay\n"
                    "req-prod +1000\nexpect-no-response 300\nexpect-state connected\n");
  INFO(r.output);
  CHECK(r.status == 0);
  c.expect_log(v, "frontend published an impossible request index; this ring is halted");
  c.expect_log(v, disconnect_line(1, 4096, 0, 0, 0));
  CHECK(c.r().log_count(v, "this ring is halted") == 1);
  recovers(c, v);
  c.finish();
}

HOSTILE_CASE("hostile: ring: a producer index moving backwards halts the ring", "ring: req_prod backwards") {
  auto v = c.vbd();
  auto r = c.script(v,
                    "pages buf 1 rw\nreq op=read id=1 sector=0 seg=buf:0:0:7\nreq op=read id=2 sector=8 "
                    "seg=buf:0:0:7\npush\nwait 2\nexpect 1 okay\nexpect 2 okay\n"
                    "req-prod -2\nexpect-no-response 300\nexpect-state connected\n");
  INFO(r.output);
  CHECK(r.status == 0);
  c.expect_log(v, "frontend published an impossible request index; this ring is halted");
  c.expect_log(v, disconnect_line(2, 8192, 0, 0, 0));
  c.finish();
}

HOSTILE_CASE("hostile: ring: a producer exactly one ring ahead gets 32 answers, one more halts the ring",
             "ring: req_prod at the ring's size") {
  auto v = c.vbd();
  // The 32 slots of a fresh one-page ring are zeroes: reads of no segment.
  auto r = c.script(v, "req-prod +32\nwait 32 10000\nexpect 0 error\nexpect-state connected\n", {"--ring-order", "0"});
  INFO(r.output);
  CHECK(r.status == 0);
  REQUIRE(r.responses.size() == 32);
  for (const auto& x : r.responses) CHECK(x.status == rsp::error);
  CHECK(c.r().log_count(v, "rejected request 0: segment count out of range") == 32);
  auto over = c.script(v, "req-prod +33\nexpect-no-response 300\nexpect-state connected\n", {"--ring-order", "0"});
  INFO(over.output);
  CHECK(over.status == 0);
  CHECK(over.responses.empty());
  c.expect_log(v, "frontend published an impossible request index; this ring is halted");
  c.finish();
}

HOSTILE_CASE("hostile: ring: an rsp_event rewritten to garbage before every push loses no response",
             "ring: rsp_event abuse") {
  auto v = c.vbd();
  std::string s = "pages buf 1 rw\n";
  std::vector<std::pair<std::uint64_t, int>> want;
  for (int i = 1; i <= 20; ++i) {
    s += "poke ring:0 12 " + le32(i % 2 ? 0x7fffffffu : 0u) + "\nreq op=read id=" + std::to_string(i) +
         " sector=" + std::to_string(8 * i) + " seg=buf:0:0:7\npush\n";
    want.emplace_back(i, rsp::okay);
  }
  c.requests(v, s, want);
  c.expect_log(v, disconnect_line(20, 20 * 4096, 0, 0, 0));
  c.finish();
}

HOSTILE_CASE("hostile: ring: one halted queue of two, and the other still serves", "ring: one queue halted") {
  auto v = c.vbd();
  auto r = c.script(v,
                    "pages buf 1 rw\nqueue 1\nreq-prod +1000\nexpect-no-response 200\nqueue 0\n"
                    "req op=read id=1 sector=0 seg=buf:0:0:7\npush\nwait 1\nexpect 1 okay\nexpect-state connected\n",
                    {"--queues", "2"});
  INFO(r.output);
  CHECK(r.status == 0);
  c.expect_log(v, "connected: 2 queue(s)");
  c.expect_log(v, "this ring is halted");
  CHECK(c.r().log_count(v, "this ring is halted") == 1);
  c.expect_log(v, disconnect_line(1, 4096, 0, 0, 0));
  c.finish();
}

HOSTILE_CASE("hostile: ring: 32 slots of random bytes each get exactly one answer with a blkif status",
             "ring: random slots") {
  auto v = c.vbd();
  std::mt19937_64 gen(13);
  std::string s;
  for (int i = 0; i < 32; ++i) {
    std::string hex;
    for (int b = 0; b < 112; ++b) {
      char x[3];
      std::snprintf(x, sizeof x, "%02x", static_cast<unsigned>(gen() & 0xff));
      hex += x;
    }
    s += "raw " + hex + "\npatch 8 " + le64(1000 + i) + "\n";
  }
  auto r = c.script(v, s + "push\nwait 32 10000\nexpect-state connected\n", {"--ring-order", "0"});
  INFO(r.output);
  CHECK(r.status == 0);
  REQUIRE(r.responses.size() == 32);
  std::vector<int> seen(32, 0);
  for (const auto& x : r.responses) {
    REQUIRE(x.id >= 1000);
    REQUIRE(x.id < 1032);
    ++seen[x.id - 1000];
    CHECK((x.status == rsp::okay || x.status == rsp::error || x.status == rsp::eopnotsupp));
  }
  for (int n : seen) CHECK(n == 1);
  c.expect_log(v, "disconnected after 32 requests");
  c.finish();
}

HOSTILE_CASE("hostile: ring: a read into the ring's own page is answered, and the ring goes on",
             "ring: read into the ring page") {
  auto v = c.vbd();
  // The disk's first page is zeroes, and they land on the ring's header and
  // its first slot. The response is written after them; the next request
  // needs an explicit notify (the zeroed req_event asks for none). Between
  // our copy and the guest's next push its req_prod reads 0, behind our
  // req_cons: a ring that looks then (the final check, a poll) finds an
  // impossible index and halts this ring, as Linux's blkback would; one
  // that looks after the push goes on. Either is right; the request read
  // into the ring is answered in both.
  auto r = c.script(v,
                    "pages buf 1 rw\nreq op=read id=1 sector=0 seg=ring:0:0:7\npush\nwait 1 10000\nexpect 1 okay\n"
                    "req op=read id=2 sector=8 seg=buf:0:0:7\npush\nnotify\nwait 1 3000\n",
                    {"--ring-order", "0"});
  INFO(r.output);
  REQUIRE(r.last(1));
  CHECK(r.last(1)->status == rsp::okay);
  if (r.last(2)) {
    CHECK(r.status == 0);
    CHECK(r.last(2)->status == rsp::okay);
    c.expect_log(v, disconnect_line(2, 8192, 0, 0, 0));
    c.expect_no_log(v, "this ring is halted");
  } else {
    c.expect_log(v, "frontend published an impossible request index; this ring is halted");
  }
  c.finish();
}

// ============================================================ negotiation

HOSTILE_CASE("hostile: negotiation: keys written by hand connect when they are right",
             "negotiation: hand-written keys, right") {
  auto v = c.vbd();
  const auto ring = c.r().grant(v.domid, 0, true)[0];
  auto [port, holder] = c.r().unbound_port(v.domid, 0);
  auto n = negotiate(c, v, {{"ring-ref", std::to_string(ring)}, {"event-channel", std::to_string(port)}});
  CHECK(n.state == xenbus::connected);
  c.expect_log(v, "connected: 1 queue(s) of 1 ring page(s), 32 entries each, event channel " + std::to_string(port));
  c.r().env().toolstack().xs().write(v.frontend + "/state", xenbus::closed);
  c.expect_log(v, "state Connected -> Closed");
  recovers(c, v);
  c.finish();
}

HOSTILE_CASE("hostile: negotiation: a ring-page-order above the maximum closes the vbd with an error",
             "negotiation: ring-page-order too big") {
  auto v = c.vbd();
  refused(c, v, {{"ring-page-order", "5"}, {"ring-ref0", "8"}, {"event-channel", "1"}},
          "ring-page-order 5 is above our maximum 4");
  CHECK_FALSE(c.r().env().read(v.backend + "/error").has_value());  // the recovery cleared it
  c.finish();
}

HOSTILE_CASE("hostile: negotiation: a ring-page-order that is not a number closes the vbd with an error",
             "negotiation: ring-page-order garbage") {
  for (const char* bad : {"four", "-1", "99999999999999999999", "4 "}) {
    auto v = c.vbd();
    INFO("ring-page-order " << bad);
    refused(c, v, {{"ring-page-order", bad}, {"ring-ref", "8"}, {"event-channel", "1"}},
            "ring-page-order: malformed value");
  }
  c.finish();
}

HOSTILE_CASE("hostile: negotiation: zero queues, or more than offered, close the vbd with an error",
             "negotiation: num-queues out of range") {
  auto v = c.vbd();
  refused(c, v, {{"multi-queue-num-queues", "0"}}, "multi-queue-num-queues 0 is not within 1..4");
  auto w = c.vbd();
  refused(c, w, {{"multi-queue-num-queues", "5"}}, "multi-queue-num-queues 5 is not within 1..4");
  c.finish();
}

HOSTILE_CASE("hostile: negotiation: a queue count that is not a number closes the vbd with an error",
             "negotiation: num-queues garbage") {
  auto v = c.vbd();
  refused(c, v, {{"multi-queue-num-queues", "two"}}, "multi-queue-num-queues: malformed value");
  c.finish();
}

HOSTILE_CASE("hostile: negotiation: an event channel that is not a number closes the vbd with an error",
             "negotiation: event-channel garbage") {
  auto v = c.vbd();
  const auto ring = c.r().grant(v.domid, 0, true)[0];
  refused(c, v, {{"ring-ref", std::to_string(ring)}, {"event-channel", "0x10"}}, "/event-channel: malformed value");
  c.finish();
}

HOSTILE_CASE("hostile: negotiation: an event channel that is not open, or open to another domain, is refused",
             "negotiation: event-channel unbound or foreign") {
  auto v = c.vbd();
  const auto ring = c.r().grant(v.domid, 0, true)[0];
  refused(c, v, {{"ring-ref", std::to_string(ring)}, {"event-channel", "4000"}},
          "cannot map the ring or bind its event channel");
  auto w = c.vbd();
  const auto ring2 = c.r().grant(w.domid, 0, true)[0];
  auto [port, holder] = c.r().unbound_port(w.domid, 9);
  refused(c, w, {{"ring-ref", std::to_string(ring2)}, {"event-channel", std::to_string(port)}},
          "cannot map the ring or bind its event channel");
  c.finish();
}

HOSTILE_CASE(
    "hostile: negotiation: a second queue that cannot bind stops the first, already running, and closes the vbd",
    "negotiation: second queue refused") {
  auto v = c.vbd();
  const auto rings = c.r().grant(v.domid, 0, true, 2);
  auto [port, holder] = c.r().unbound_port(v.domid, 0);
  refused(c, v,
          {{"multi-queue-num-queues", "2"},
           {"queue-0/ring-ref", std::to_string(rings[0])},
           {"queue-0/event-channel", std::to_string(port)},
           {"queue-1/ring-ref", std::to_string(rings[1])},
           {"queue-1/event-channel", std::to_string(port)}},
          "cannot map the ring or bind its event channel");
  c.expect_log(v, "stopping 1 queue(s)");
  c.expect_log(v, disconnect_line(0, 0, 0, 0, 0));
  c.finish();
}

HOSTILE_CASE("hostile: negotiation: a ring-ref that is not a number closes the vbd with an error",
             "negotiation: ring-ref garbage") {
  auto v = c.vbd();
  refused(c, v, {{"ring-ref", "ring"}, {"event-channel", "1"}}, "/ring-ref: malformed value");
  c.finish();
}

HOSTILE_CASE("hostile: negotiation: a ring-ref out of range, read-only, or granted to another domain is refused",
             "negotiation: ring-ref bad or foreign") {
  const std::vector<std::string> kinds{"out of range", "read-only", "another domain's"};
  for (const auto& kind : kinds) {
    auto v = c.vbd();
    INFO("ring-ref " << kind);
    std::uint32_t ref = 99999;
    if (kind == "read-only") ref = c.r().grant(v.domid, 0, false)[0];
    if (kind == "another domain's") ref = c.r().grant(v.domid, 9, true)[0];
    auto [port, holder] = c.r().unbound_port(v.domid, 0);
    refused(c, v, {{"ring-ref", std::to_string(ref)}, {"event-channel", std::to_string(port)}},
            "cannot map the ring or bind its event channel");
  }
  c.finish();
}

HOSTILE_CASE("hostile: negotiation: a missing ring-ref of a four-page ring closes the vbd with an error",
             "negotiation: ring-ref missing") {
  auto v = c.vbd();
  const auto refs = c.r().grant(v.domid, 0, true, 3);
  refused(c, v,
          {{"ring-page-order", "2"},
           {"ring-ref0", std::to_string(refs[0])},
           {"ring-ref1", std::to_string(refs[1])},
           {"ring-ref2", std::to_string(refs[2])},
           {"event-channel", "1"}},
          "/ring-ref3: ");
  c.finish();
}

HOSTILE_CASE("hostile: negotiation: a ring handed over with its producer index already beyond it is refused",
             "negotiation: ring with an impossible index") {
  auto v = c.vbd();
  const auto ring = c.r().grant(v.domid, 0, true)[0];
  REQUIRE(c.r().write_granted(v.domid, ring, 0, le32(1000)));
  auto [port, holder] = c.r().unbound_port(v.domid, 0);
  refused(c, v, {{"ring-ref", std::to_string(ring)}, {"event-channel", std::to_string(port)}},
          "producer index beyond the ring size");
  c.finish();
}

HOSTILE_CASE("hostile: negotiation: an unknown protocol closes the vbd with an error naming it",
             "negotiation: protocol unknown") {
  auto v = c.vbd();
  refused(c, v, {{"protocol", "x86_16-abi"}, {"ring-ref", "8"}, {"event-channel", "1"}},
          "unknown protocol \"x86_16-abi\"");
  c.finish();
}

HOSTILE_CASE("hostile: negotiation: a 4000-byte protocol is refused and cut short in the error node and the log",
             "negotiation: protocol overlong") {
  auto v = c.vbd();
  const std::string longest(4000, 'A');
  auto n = negotiate(c, v, {{"protocol", longest}, {"ring-ref", "8"}, {"event-channel", "1"}});
  CHECK(n.state == xenbus::closed);
  INFO("error node: " << n.error);
  CHECK(n.error.find("unknown protocol \"" + std::string(64, 'A') + "\"... (4000 bytes)") != std::string::npos);
  CHECK(n.error.size() < 200);
  c.expect_log(v, "unknown protocol \"" + std::string(64, 'A') + "\"... (4000 bytes)");
  CHECK(c.r().lines_of(v, 1 << 20).find(std::string(65, 'A')) == std::string::npos);
  recovers(c, v);
  c.finish();
}

HOSTILE_CASE("hostile: negotiation: a frontend state that is not a state is logged and ignored",
             "negotiation: state garbage") {
  auto v = c.vbd();
  auto& xs = c.r().env().toolstack().xs();
  // One at a time: the daemon reads the state when its watch fires, and a
  // value overwritten before then is never seen.
  xs.write(v.frontend + "/state", "9");
  c.expect_log(v, "frontend state ignored: 9 is not a state");
  xs.write(v.frontend + "/state", "0");
  c.expect_log(v, "frontend state ignored: 0 is not a state");
  xs.write(v.frontend + "/state", "connected");
  c.expect_log(v, "frontend state ignored: malformed value");
  CHECK(c.r().env().read(v.backend + "/state") == xenbus::init_wait);
  CHECK(c.r().log_count(v, "state InitWait -> ") == 0);
  xs.write(v.frontend + "/state", "1");
  recovers(c, v);
  c.finish();
}

// ============================================================ state flapping

HOSTILE_CASE("hostile: flapping: 1000 connect/close cycles of one vbd give back every descriptor and the memory",
             "flapping: 1000 cycles") {
  auto& r = c.r();
  auto v = c.vbd();
  r.warm_victim();
  const std::size_t fds_before = r.daemon_fds();
  const std::size_t rss_before = r.daemon_rss_kib();
  const std::string kinds_before = r.daemon_fd_kinds();
  auto g = r.run_guest(v.domid,
                       {"--devid", std::to_string(v.devid), "--rw", "none", "--reconnect", "999", "--queues", "2",
                        "--ring-order", "2", "--timeout", "10"},
                       300s);
  INFO(tail(g.output));
  CHECK(g.status == 0);
  CHECK(g.summary["reconnects"].integer() == 999);
  CHECK(r.log_count(v, "disconnected after 0 requests") == 1000);
  CHECK(r.log_count(v, "state Closing -> Closed") == 1000);
  const bool fds_back = eventually([&] { return r.daemon_fds() <= fds_before; }, 30s);
  INFO("descriptors before: " << kinds_before);
  INFO("descriptors after: " << r.daemon_fd_kinds());
  CHECK(fds_back);
#if !defined(__SANITIZE_ADDRESS__)
  const bool rss_back = eventually([&] { return r.daemon_rss_kib() <= rss_before + 8192; }, 10s);
  INFO("RSS " << rss_before << " -> " << r.daemon_rss_kib() << " KiB");
  CHECK(rss_back);
#endif
  MESSAGE("1000 cycles: descriptors " << fds_before << " -> " << r.daemon_fds() << ", RSS " << rss_before << " -> "
                                      << r.daemon_rss_kib() << " KiB");
  c.finish();
}

HOSTILE_CASE("hostile: flapping: 300 frontend states in random order without a pause leave a usable vbd",
             "flapping: random state storm") {
  auto v = c.vbd();
  auto& xs = c.r().env().toolstack().xs();
  std::mt19937 gen(13);
  for (int i = 0; i < 300; ++i) xs.write(v.frontend + "/state", std::to_string(1 + gen() % 6));
  xs.write(v.frontend + "/state", xenbus::closed);
  CHECK(eventually([&] { return c.r().env().read(v.backend + "/state") == xenbus::closed; }));
  c.expect_log(v, "-> Closed");
  recovers(c, v);
  c.finish();
}

HOSTILE_CASE("hostile: flapping: a frontend directory removed under a connected vbd closes it",
             "flapping: frontend gone") {
  auto& r = c.r();
  auto v = c.vbd();
  auto holder = r.start_guest(
      v.domid, {"--devid", std::to_string(v.devid), "--rw", "none", "--hold", "0", "--timeout", "10"}, "frontend-gone");
  REQUIRE(r.log_shows(v, "state InitWait -> Connected"));
  r.env().toolstack().xs().rm(v.frontend);
  c.expect_log(v, "frontend gone");
  c.expect_log(v, "disconnected after 0 requests");
  c.expect_log(v, "state Connected -> Closed");
  CHECK(eventually([&] { return r.env().read(v.backend + "/state") == xenbus::closed; }));
  holder->signal(SIGTERM);
  (void)holder->wait(10s);
  c.finish();
}

// ============================================================ many vbds

HOSTILE_CASE("hostile: many vbds: 100 vbds of one guest connect, do I/O and go with their domain",
             "many vbds: 100 of one guest") {
  auto& r = c.r();
  const unsigned dom = r.next_domid();
  r.warm_victim();
  const std::size_t fds_before = r.daemon_fds();
  const std::size_t rss_before = r.daemon_rss_kib();
  const std::string kinds_before = r.daemon_fd_kinds();
  r.env().create_guest(dom);
  std::vector<vbd_ref> vbds;
  for (int i = 0; i < 100; ++i) {
    vbd_options o;
    o.domid = dom;
    o.bytes = 1 << 20;
    vbds.push_back(r.add_vbd(o));
  }
  // Verified I/O on every one, twenty guests' runs at a time.
  for (std::size_t i = 0; i < vbds.size(); i += 20) {
    std::vector<std::unique_ptr<process>> batch;
    for (std::size_t j = i; j < i + 20; ++j)
      batch.push_back(r.start_guest(dom,
                                    {"--devid", std::to_string(vbds[j].devid), "--rw", "randrw", "--ios", "32",
                                     "--verify", "--ring-order", "0", "--timeout", "20"},
                                    "many-io"));
    for (auto& p : batch) {
      auto st = p->wait(60s);
      INFO(tail(p->output()));
      CHECK(st == 0);
    }
  }
  // Then each is held Connected until the domain dies.
  std::vector<std::unique_ptr<process>> holders;
  for (const auto& v : vbds)
    holders.push_back(r.start_guest(
        dom,
        {"--devid", std::to_string(v.devid), "--rw", "none", "--ring-order", "0", "--hold", "0", "--timeout", "30"},
        "many-hold"));
  auto connected = [&] {
    std::size_t n = 0;
    for (const auto& v : vbds) n += r.log_count(v, "] connected: ") >= 2;
    return n;
  };
  CHECK(eventually([&] { return connected() == vbds.size(); }, 120s));
  for (auto& h : holders) h->signal(SIGKILL);
  for (auto& h : holders) (void)h->wait(10s);
  const std::size_t mark = r.log().size();
  r.env().xenstored().kill_domain(dom);
  auto destroyed = r.env().toolstack().destroy_domain(dom);
  CHECK(destroyed.ok());
  auto closed_since = [&] {
    std::size_t n = 0;
    const std::string& log = r.log();
    for (const auto& v : vbds)
      for (auto pos = log.find(v.prefix, mark); pos != std::string::npos; pos = log.find(v.prefix, pos + 1)) {
        const auto eol = log.find('\n', pos);
        if (log.substr(pos, eol - pos).find("-> Closed") != std::string::npos) {
          ++n;
          break;
        }
      }
    return n;
  };
  CHECK(eventually([&] { return closed_since() == vbds.size(); }, 60s));
  INFO("vbds that logged Closed after the domain died: " << closed_since());
  const bool fds_back = eventually([&] { return r.daemon_fds() <= fds_before; }, 30s);
  INFO("descriptors before: " << kinds_before);
  INFO("descriptors after: " << r.daemon_fd_kinds());
  CHECK(fds_back);
#if !defined(__SANITIZE_ADDRESS__)
  const bool rss_back = eventually([&] { return r.daemon_rss_kib() <= rss_before + 8192; }, 10s);
  INFO("RSS " << rss_before << " -> " << r.daemon_rss_kib() << " KiB");
  CHECK(rss_back);
#endif
  MESSAGE("100 vbds: descriptors " << fds_before << " -> " << r.daemon_fds() << ", RSS " << rss_before << " -> "
                                   << r.daemon_rss_kib() << " KiB");
  c.finish();
}

// ============================================================ backing-store errors

HOSTILE_CASE("hostile: storage: a full file system fails exactly the writes that need new blocks (ENOSPC)",
             "storage: ENOSPC") {
  auto& r = c.r();
  tmpfs_mount fs(r.env().dir() / r.unique("tmpfs-"), "512k");
  if (!fs.ok) {
    MESSAGE("skipped: cannot mount a tmpfs here (not root?)");
    return;
  }
  // An 8 MiB sparse image whose first 64 KiB are written, on a file system
  // then filled to the last block.
  const auto image = fs.dir / "disk.img";
  {
    std::ofstream out(image, std::ios::binary);
    out << std::string(64 << 10, 'x');
  }
  std::filesystem::resize_file(image, 8 << 20);
  {
    std::ofstream filler(fs.dir / "filler", std::ios::binary);
    const std::string block(4096, 'f');
    for (int i = 0; i < 1024 && filler.write(block.data(), block.size()); ++i) filler.flush();
  }
  vbd_options o;
  o.target = image;
  auto v = c.vbd(o);
  c.requests(v,
             "pages buf 1 rw\nreq op=write id=1 sector=8 seg=buf:0:0:7\nreq op=write id=2 sector=8192 "
             "seg=buf:0:0:7\nreq op=read id=3 sector=8192 seg=buf:0:0:7\nreq op=write id=4 sector=16 seg=buf:0:0:7\n",
             {{1, rsp::okay}, {2, rsp::error}, {3, rsp::okay}, {4, rsp::okay}});
  c.expect_log(v, "write at 4194304 failed: No space left on device");
  c.expect_log(v, disconnect_line(4, 4096, 8192, 0, 1));
  c.finish();
}

HOSTILE_CASE("hostile: storage: reads and writes the disk fails with EIO are ERROR, their neighbours OKAY",
             "storage: EIO") {
  auto& r = c.r();
  faulty_disk disk(r, "read 1048576 4096 eio\nwrite 2097152 4096 eio\n", 8 << 20);
  const auto vp = vbd_on(c, disk);
  if (!vp) return;
  const vbd_ref& v = *vp;
  c.requests(v,
             "pages buf 2 rw\n"
             "req op=read id=1 sector=2048 seg=buf:0:0:7\n"                // the bad block
             "req op=read id=2 sector=2040 seg=buf:0:0:7 seg=buf:1:0:7\n"  // across it
             "req op=read id=3 sector=2056 seg=buf:0:0:7\n"                // just after it
             "req op=write id=4 sector=4096 seg=buf:0:0:7\n"
             "req op=write id=5 sector=4104 seg=buf:0:0:7\n",
             {{1, rsp::error}, {2, rsp::error}, {3, rsp::okay}, {4, rsp::error}, {5, rsp::okay}});
  c.expect_log(v, "read at 1048576 failed: Input/output error");
  c.expect_log(v, "read at 1044480 failed: Input/output error");
  c.expect_log(v, "write at 2097152 failed: Input/output error");
  c.expect_log(v, disconnect_line(5, 4096, 4096, 0, 3));
  c.finish();
}

HOSTILE_CASE("hostile: storage: a flush the disk fails is ERROR", "storage: flush EIO") {
  auto& r = c.r();
  faulty_disk disk(r, "flush eio\n", 8 << 20);
  const auto vp = vbd_on(c, disk);
  if (!vp) return;
  const vbd_ref& v = *vp;
  c.requests(v, "pages buf 1 rw\nreq op=flush id=1 nseg=0\nreq op=flush id=2 sector=0 seg=buf:0:0:7\n",
             {{1, rsp::error}, {2, rsp::error}});
  c.expect_log(v, "flush at 0 failed: Input/output error");
  c.finish();
}

HOSTILE_CASE("hostile: storage: a discard the store cannot do is EOPNOTSUPP, one it fails is ERROR",
             "storage: discard failures") {
  auto& r = c.r();
  faulty_disk disk(r, "discard 0 1048576 eopnotsupp\ndiscard 1048576 1048576 eio\n", 8 << 20);
  const auto vp = vbd_on(c, disk);
  if (!vp) return;
  const vbd_ref& v = *vp;
  REQUIRE(r.env().read(v.backend + "/feature-discard") == "1");
  c.requests(v, "dreq id=1 sector=0 nr=8\ndreq id=2 sector=2048 nr=8\ndreq id=3 sector=4096 nr=8\n",
             {{1, rsp::eopnotsupp}, {2, rsp::error}, {3, rsp::okay}});
  c.expect_log(v, "discard at 0 failed: Operation not supported");
  c.expect_log(v, "discard at 1048576 failed: Input/output error");
  c.finish();
}

HOSTILE_CASE("hostile: storage: a read that ends early inside the disk is ERROR, never OKAY with stale data",
             "storage: short read") {
  auto& r = c.r();
  faulty_disk disk(r, "read 1050624 4096 eof\n", 8 << 20);
  const auto vp = vbd_on(c, disk);
  if (!vp) return;
  const vbd_ref& v = *vp;
  // The first read gets 2 KiB of its 4 KiB, then end-of-file.
  c.requests(v, "pages buf 1 rw\nreq op=read id=1 sector=2048 seg=buf:0:0:7\nreq op=read id=2 sector=0 seg=buf:0:0:7\n",
             {{1, rsp::error}, {2, rsp::okay}});
  c.expect_log(v, "read at 1048576 failed: ");
  c.finish();
}

// ============================================================ memory and storms

// A guest that points every segment of every request at one granted page
// needs no memory of its own to make the daemon buffer 4 queues x 512
// entries x 4 MiB. The daemon's budget ([io] buffer-memory = 64MiB in this
// rig) must hold: resident memory stays within the budget and 64 MiB of
// overhead, requests wait rather than fail, and once the burst is over the
// memory goes back although the guest stays connected.
HOSTILE_CASE("hostile: memory: every segment on one granted page cannot take more than the buffer budget",
             "memory: one-page attacker") {
  auto& r = c.r();
  vbd_options o;
  o.bytes = 256 << 20;
  auto v = c.vbd(o);
  r.warm_victim();
  const std::size_t baseline = r.daemon_rss_kib();
  auto attacker = r.start_guest(v.domid, {"--devid",     std::to_string(v.devid),
                                          "--rw",        "randread",
                                          "--same-page", "--queues",
                                          "4",           "--ring-order",
                                          "4",           "--indirect",
                                          "1024",        "--bs",
                                          "4m",          "--qd",
                                          "512",         "--runtime",
                                          "3",           "--hold",
                                          "9",           "--timeout",
                                          "30"},
                                "memory-attacker");
  REQUIRE(r.log_shows(v, "state InitWait -> Connected", 20s));
  const auto burst_start = std::chrono::steady_clock::now();
  std::size_t peak = baseline;
  while (std::chrono::steady_clock::now() - burst_start < 3500ms) {
    peak = std::max(peak, r.daemon_rss_kib());
    std::this_thread::sleep_for(20ms);
  }
  // Five seconds after the burst, the guest still connected and idle.
  std::this_thread::sleep_for(burst_start + 3s + 5s - std::chrono::steady_clock::now());
  const std::size_t after = r.daemon_rss_kib();
  const bool still_connected = attacker->running();
  MESSAGE("memory attacker: daemon RSS " << baseline / 1024 << " MiB idle, peak " << peak / 1024
                                         << " MiB (budget 64 MiB + at most 64 MiB overhead), " << after / 1024
                                         << " MiB 5 s after the burst");
  CHECK(still_connected);
#if !defined(__SANITIZE_ADDRESS__)
  CHECK(peak <= baseline + (64 + 64) * 1024);
  CHECK(after <= baseline + 32 * 1024);
#endif
  REQUIRE(attacker->wait(60s) == 0);
  const std::string out = attacker->output();
  INFO(tail(out));
  // Every request answered OKAY: backpressure, never an error.
  CHECK(out.find("\"errors\":{\"io\":0,\"eopnotsupp\":0,\"protocol\":0") != std::string::npos);
  c.finish();
  CHECK(r.log_shows(v, "disconnected after"));
  // The vbd's own account: never beyond the budget and the one request
  // each of its 4 queues may always start (4 MiB each here).
  const std::string lines = r.lines_of(v, 20000);
  INFO(lines);
  const std::regex peak_line("buffers: peak ([0-9]+)(KiB|MiB)?");
  std::smatch m;
  REQUIRE(std::regex_search(lines, m, peak_line));
  const std::uint64_t unit = m[2] == "MiB" ? 1024 * 1024 : m[2] == "KiB" ? 1024 : 1;
  CHECK(std::stoull(m[1]) * unit <= (64u + 4 * 4) << 20);
}

// A frontend that notifies again and again with nothing in its ring: the
// ring pauses between events (the port stays masked), warns once, and a
// real request afterwards is served.
HOSTILE_CASE("hostile: notify storm: 20000 notifications on an empty ring are paused, and it still serves",
             "notify storm") {
  auto v = c.vbd();
  std::string storm;
  for (int i = 0; i < 20000; ++i) storm += "notify\n";
  // Then paced, so that a daemon descheduled through the burst (a loaded
  // machine: the burst coalesces into a few events) still sees a storm.
  for (int i = 0; i < 100; ++i) storm += "notify\nsleep 2\n";
  c.requests(v, storm + "sleep 300\npages buf 1 rw\nreq op=read id=7 sector=0 seg=buf:0:0:7\npush\nnotify\n",
             {{7, rsp::okay}});
  c.expect_log(v, "frontend notifies without requests");
  c.finish();
  CHECK(c.r().log_shows(v, "notify-storm pause(s)"));
  CHECK(c.r().log_count(v, "; 0 notify-storm pause(s)") == 0);  // not 10, 20, ...
}

// ============================================================ afterwards

TEST_CASE("hostile: afterwards: the daemon idles, and the victim alone is served cleanly") {
  auto& r = rig::get();
  // A ring left spinning, or any loop a hostile guest started, shows here:
  // it would slow the victim's solo windows as much as its case windows, and
  // so hide from the comparison of the two.
  const double busy = r.daemon_cpu_share(1000ms);
  MESSAGE("the daemon used " << busy * 100 << " % of a CPU over 1 s with nothing to do");
  CHECK(busy < 0.05);
  r.start_victim("afterwards");
  const window w = r.stop_victim(r.min_window());
  INFO(w.json_text);
  CHECK(w.clean());
  // Not a check: the machine's other work may differ from the start's.
  MESSAGE("the victim alone at the end: " << w.iops << " IOPS against " << r.solo_iops() << " at the start");
}
