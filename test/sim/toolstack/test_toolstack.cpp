// The simulated toolstack against a real xenstored (the xenstored fixture):
// every key libxl 4.17 writes, its value and its permissions; removal with
// and without a (fake) backend; domain destruction; the CLI.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "asio_xen/xen.hpp"
#include "guest_xenstore.hpp"
#include "toolstack.hpp"
#include "xenstored.hpp"

using namespace std::chrono_literals;
using xbd::sim::disk_spec;
using xbd::sim::domain_spec;
using xbd::sim::domain_type;
using xbd::sim::remove_mode;
using xbd::sim::remove_options;
using xbd::sim::toolstack;
using xbd::sim::toolstack_error;
using xbd::sim::xs_client;

namespace {

constexpr const char* uuid5 = "0b5a5c2e-8f43-4d7e-9a51-3c2d1e0f9a87";

// One xenstored per test, exported to this process (and its children), and
// a toolstack connected to it.
struct sim {
  // A XENSTORED_PATH left by an earlier test would reach the new daemon,
  // which binds its socket there (the fixture passes the environment on).
  int unexported = (::unsetenv("XENSTORED_PATH"), 0);
  xbd::sim::xenstored xsd;
  int exported = (xsd.export_env(), 0);
  toolstack ts;
  xs_client& xs() { return ts.xs(); }

  xbd::sim::domain_info make_domain(unsigned domid, domain_type type = domain_type::pv, bool introduce = false) {
    domain_spec s;
    s.domid = domid;
    s.name = "guest" + std::to_string(domid);
    s.uuid = domid == 5 ? uuid5 : "";
    s.type = type;
    if (introduce) s.introduce = [this](unsigned d) { xsd.introduce_domain(d); };
    return ts.create_domain(s);
  }
};

std::set<std::string> children(xs_client& xs, const std::string& path) {
  auto d = xs.directory(path);
  REQUIRE_MESSAGE(d, path << " does not exist");
  return {d->begin(), d->end()};
}

// Value and permissions of one node.
void check_node(xs_client& xs, const std::string& path, const std::string& value, const std::string& perms) {
  CAPTURE(path);
  auto v = xs.read(path);
  REQUIRE_MESSAGE(v, path << " missing");
  CHECK(*v == value);
  CHECK(xs.perms_string(path) == perms);
}

// A directory holding exactly `kv` (no more, no less), each key with
// `perms`.
void check_dir(xs_client& xs, const std::string& dir, const std::vector<std::pair<std::string, std::string>>& kv,
               const std::string& perms) {
  std::set<std::string> want;
  for (const auto& [k, v] : kv) {
    want.insert(k);
    check_node(xs, dir + "/" + k, v, perms);
  }
  CHECK(children(xs, dir) == want);
}

// A fake backend on its own connection: waits for the toolstack's
// online=0/state=5, records what it saw, then writes Closed.
struct fake_backend {
  std::string be;
  std::atomic<bool> saw_closing{false};
  std::string online_at_closing;
  std::thread th;

  explicit fake_backend(std::string backend_path) : be(std::move(backend_path)) {
    th = std::thread([this] {
      xs_client xs;
      if (!xs.wait_for(
              be + "/state", [](const std::optional<std::string>& v) { return v && *v == "5"; }, 10s))
        return;
      online_at_closing = xs.read(be + "/online").value_or("<none>");
      saw_closing = true;
      xs.write(be + "/state", "6");
    });
  }
  ~fake_backend() {
    if (th.joinable()) th.join();
  }
};

struct cmd_result {
  int status;
  std::string out;
};

// Runs the CLI (XENSTORED_PATH is inherited), capturing stdout.
cmd_result run_cli(const std::string& args) {
  std::string cmd = std::string(TOOLSTACK_SIM_BIN) + " " + args + " 2>/dev/null";
  FILE* f = ::popen(cmd.c_str(), "r");
  REQUIRE(f);
  std::string out;
  std::array<char, 256> buf;
  while (std::fgets(buf.data(), buf.size(), f)) out += buf.data();
  int st = ::pclose(f);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

// One request line of xenstored's -T trace ("IN <conn> <date> <time> OP
// (args)"), or nullopt for any other line.
struct traced_request {
  std::string conn, op, args;
};
std::optional<traced_request> parse_request(const std::string& line) {
  if (line.rfind("IN ", 0) != 0) return std::nullopt;
  std::size_t f = 0;
  for (int i = 0; i < 4 && f != std::string::npos; ++i) f = line.find(' ', f + 1);
  if (f == std::string::npos) return std::nullopt;
  traced_request r;
  r.conn = line.substr(3, line.find(' ', 3) - 3);
  std::string req = line.substr(f + 1);
  auto paren = req.find(" (");
  r.op = req.substr(0, paren);
  r.args = paren == std::string::npos ? "" : req.substr(paren + 2);
  if (!r.args.empty() && r.args.back() == ')') r.args.pop_back();
  while (!r.args.empty() && r.args.back() == ' ') r.args.pop_back();
  return r;
}

std::vector<std::string> trace_lines(const std::string& trace) {
  std::vector<std::string> lines;
  std::size_t pos = 0;
  while (pos < trace.size()) {
    auto eol = trace.find('\n', pos);
    if (eol == std::string::npos) eol = trace.size();
    lines.push_back(trace.substr(pos, eol - pos));
    pos = eol + 1;
  }
  return lines;
}

bool modifies(const std::string& op) { return op != "READ" && op != "GET_PERMS" && op != "DIRECTORY"; }

// The modifying requests of the transaction (in xenstored's -T trace) that
// contains a request mentioning `marker`, as "OP args".
std::vector<std::string> transaction_ops(const std::string& trace, const std::string& marker) {
  std::vector<std::string> ops;  // of the current transaction
  bool in_txn = false, found = false;
  std::string txn_conn;
  for (const auto& line : trace_lines(trace)) {
    auto r = parse_request(line);
    if (!r) continue;
    if (in_txn && r->conn != txn_conn) continue;  // another connection
    if (r->op == "TRANSACTION_START") {
      txn_conn = r->conn;
      in_txn = true;
      found = false;
      ops.clear();
      continue;
    }
    if (r->op == "TRANSACTION_END") {
      if (in_txn && found) return ops;
      in_txn = false;
      continue;
    }
    if (!in_txn) continue;
    if ((r->op + " " + r->args).find(marker) != std::string::npos) found = true;
    if (modifies(r->op)) ops.push_back(r->op + " " + r->args);
  }
  return {};
}

// Every change (write, removal, mkdir, permissions) of one of `paths`, in
// the order xenstored received them, as "OP args", with "txn " in front
// when made inside a transaction: what a watcher cannot reliably read back
// (a watch event names a path, and the value may be gone by the read).
std::vector<std::string> changes_of(const std::string& trace, const std::set<std::string>& paths) {
  std::vector<std::string> out;
  std::set<std::string> in_txn;  // connections with a transaction open
  for (const auto& line : trace_lines(trace)) {
    auto r = parse_request(line);
    if (!r) continue;
    if (r->op == "TRANSACTION_START") in_txn.insert(r->conn);
    if (r->op == "TRANSACTION_END") in_txn.erase(r->conn);
    if (r->op != "WRITE" && r->op != "RM" && r->op != "MKDIR" && r->op != "SET_PERMS") continue;
    if (!paths.count(r->args.substr(0, r->args.find(' ')))) continue;
    out.push_back((in_txn.count(r->conn) ? "txn " : "") + r->op + " " + r->args);
  }
  return out;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

// ------------------------------------------------------------------ domains

TEST_CASE("create_domain: libxl's PV domain skeleton, key by key") {
  sim s;
  auto info = s.make_domain(5);
  auto& xs = s.xs();
  CHECK(info.dom_path == "/local/domain/5");
  CHECK(info.vm_path == std::string("/vm/") + uuid5);
  CHECK(info.libxl_path == "/libxl/5");

  // xen-init-dom0.
  check_node(xs, "/local/domain/0/domid", "0", "n0");
  check_node(xs, "/local/domain/0/name", "Domain-0", "n0");

  const std::string d = "/local/domain/5";
  const std::string ro = "n0,r5", rw = "n5";
  check_node(xs, d, "", ro);
  CHECK(children(xs, d) == std::set<std::string>{"vm", "name", "cpu", "memory", "device", "control", "data", "drivers",
                                                 "feature", "attr", "error", "domid", "store"});
  check_node(xs, d + "/vm", info.vm_path, ro);
  check_node(xs, d + "/name", "guest5", ro);
  check_node(xs, d + "/domid", "5", ro);
  check_node(xs, d + "/cpu", "", ro);
  check_dir(xs, d + "/cpu/0", {{"availability", "online"}}, ro);
  check_node(xs, d + "/memory", "", ro);
  check_dir(xs, d + "/memory", {{"static-max", "131072"}, {"target", "131072"}, {"videoram", "0"}}, ro);
  check_dir(xs, d + "/store", {{"port", "1"}, {"ring-ref", "0"}}, ro);
  check_node(xs, d + "/device", "", ro);
  CHECK(children(xs, d + "/device") == std::set<std::string>{"suspend"});
  check_node(xs, d + "/device/suspend", "", ro);  // made by xenstored: inherits
  check_dir(xs, d + "/device/suspend", {{"event-channel", ""}}, rw);
  check_node(xs, d + "/control", "", ro);
  CHECK(children(xs, d + "/control") ==
        std::set<std::string>{"shutdown", "feature-poweroff", "feature-reboot", "feature-suspend", "sysrq",
                              "platform-feature-multiprocessor-suspend", "platform-feature-xs_reset_watches"});
  for (const char* k : {"shutdown", "feature-poweroff", "feature-reboot", "feature-suspend", "sysrq"})
    check_node(xs, d + "/control/" + k, "", rw);
  check_node(xs, d + "/control/platform-feature-multiprocessor-suspend", "1", ro);
  check_node(xs, d + "/control/platform-feature-xs_reset_watches", "1", ro);
  for (const char* k : {"data", "drivers", "feature", "attr", "error"}) check_node(xs, d + "/" + k, "", rw);

  const std::string vm = info.vm_path;
  check_node(xs, vm, "", ro);
  CHECK(children(xs, vm) == std::set<std::string>{"uuid", "name", "image", "start_time"});
  check_node(xs, vm + "/uuid", uuid5, ro);
  check_node(xs, vm + "/name", "guest5", ro);
  check_dir(xs, vm + "/image", {{"ostype", "linux"}, {"kernel", "/boot/vmlinuz-sim"}}, ro);
  auto start = xs.read(vm + "/start_time");
  REQUIRE(start);
  CHECK(start->find('.') == start->size() - 3);

  check_node(xs, "/libxl/5", "", "n0");
  check_dir(xs, "/libxl/5", {{"device", ""}, {"type", "pv"}, {"dm-version", "qemu_xen"}}, "n0");
  CHECK(children(xs, "/libxl/5/device").empty());
}

TEST_CASE("create_domain: HVM extras, random uuid, driver domain") {
  sim s;
  auto& xs = s.xs();
  domain_spec spec;
  spec.domid = 7;
  spec.type = domain_type::hvm;
  spec.max_vcpus = 2;
  spec.max_memkb = 262144;
  spec.target_memkb = 131072;
  spec.video_memkb = 8192;
  spec.driver_domain = true;
  auto info = s.ts.create_domain(spec);
  CHECK(info.name == "sim-7");
  CHECK(info.uuid.size() == 36);
  const std::string d = "/local/domain/7", ro = "n0,r7", rw = "n7";
  check_node(xs, d + "/hvmloader", "", ro);
  check_node(xs, d + "/control/feature-s3", "", rw);
  check_node(xs, d + "/control/feature-s4", "", rw);
  check_node(xs, d + "/libxl", "", rw);
  check_node(xs, d + "/device-model", "", rw);
  check_dir(
      xs, d + "/platform",
      {{"acpi", "1"}, {"acpi_s3", "1"}, {"acpi_s4", "1"}, {"acpi_laptop_slate", "0"}, {"device-model", "qemu_xen"}},
      ro);
  check_node(xs, d + "/memory/target", std::to_string(131072 - 1024), ro);
  check_node(xs, d + "/cpu/1/availability", "online", ro);
  check_node(xs, info.vm_path + "/image/ostype", "hvm", ro);
  check_node(xs, info.vm_path + "/rtc/timeoffset", "", ro);
  check_node(xs, "/libxl/7/type", "hvm", "n0");
}

TEST_CASE("create_domain: refusals") {
  sim s;
  s.make_domain(5);
  domain_spec dup;
  dup.domid = 6;
  dup.name = "guest5";
  CHECK_THROWS_WITH_AS(s.ts.create_domain(dup), doctest::Contains("Domain with name \"guest5\" already exists."),
                       toolstack_error);
  CHECK_FALSE(s.xs().exists("/local/domain/6"));  // the transaction was aborted
  domain_spec again;
  again.domid = 5;
  CHECK_THROWS_AS(s.ts.create_domain(again), toolstack_error);
  domain_spec bad;
  bad.domid = 0;
  CHECK_THROWS_AS(s.ts.create_domain(bad), toolstack_error);
  bad.domid = 0x7FF0;
  CHECK_THROWS_AS(s.ts.create_domain(bad), toolstack_error);
  bad.domid = 8;
  bad.uuid = "not-a-uuid";
  CHECK_THROWS_AS(s.ts.create_domain(bad), toolstack_error);
}

// -------------------------------------------------------------------- disks

TEST_CASE("add_disk: libxl's qdisk vbd, key by key") {
  sim s;
  s.make_domain(5);
  auto& xs = s.xs();
  disk_spec d;
  d.domid = 5;
  d.vdev = "xvda";
  d.target = "/images/a.img";
  CHECK(s.ts.add_disk(d) == 51712u);

  const std::string be = "/local/domain/0/backend/qdisk/5/51712";
  const std::string fe = "/local/domain/5/device/vbd/51712";
  const std::string lp = "/libxl/5/device/vbd/51712";
  const std::vector<std::pair<std::string, std::string>> back = {
      {"frontend", fe},        {"params", "aio:/images/a.img"},
      {"frontend-id", "5"},    {"online", "1"},
      {"removable", "0"},      {"bootable", "1"},
      {"state", "1"},          {"dev", "xvda"},
      {"type", "qdisk"},       {"mode", "w"},
      {"device-type", "disk"}, {"discard-enable", "1"},
      {"specification", "xen"}};
  check_node(xs, be, "", "n0,r5");
  check_dir(xs, be, back, "n0,r5");

  check_node(xs, fe, "", "n5,r0");
  check_dir(xs, fe,
            {{"backend", be},
             {"backend-id", "0"},
             {"state", "1"},
             {"virtual-device", "51712"},
             {"device-type", "disk"},
             {"trusted", "1"},
             {"protocol", "x86_64-abi"}},
            "n5,r0");

  // libxl's private copy: the backend keys (not its `frontend`), plus
  // `frontend` and `backend` paths, all dom0-only.
  auto copy = back;
  copy.erase(copy.begin());
  copy.emplace_back("frontend", fe);
  copy.emplace_back("backend", be);
  check_node(xs, lp, "", "n0");
  check_dir(xs, lp, copy, "n0");
}

TEST_CASE("add_disk: one transaction, libxl's order of requests (xenstored trace)") {
  sim s;
  s.make_domain(5);
  disk_spec d;
  d.domid = 5;
  d.target = "/i.img";
  d.direct_io_safe = true;
  s.ts.add_disk(d);
  const std::string be = "/local/domain/0/backend/qdisk/5/51712";
  const std::string fe = "/local/domain/5/device/vbd/51712";
  const std::string lp = "/libxl/5/device/vbd/51712";
  std::vector<std::string> want = {
      "RM " + lp,    "WRITE " + lp + "/frontend " + fe, "WRITE " + lp + "/backend " + be, "RM " + fe,
      "MKDIR " + fe, "SET_PERMS " + fe + " n5 r0",      "WRITE " + fe + "/backend " + be};
  for (auto [k, v] : std::vector<std::pair<std::string, std::string>>{{"backend-id", "0"},
                                                                      {"state", "1"},
                                                                      {"virtual-device", "51712"},
                                                                      {"device-type", "disk"},
                                                                      {"trusted", "1"},
                                                                      {"protocol", "x86_64-abi"}}) {
    want.push_back("WRITE " + fe + "/" + k + " " + v);
    want.push_back("SET_PERMS " + fe + "/" + k + " n5 r0");
  }
  want.push_back("RM " + be);
  want.push_back("MKDIR " + be);
  want.push_back("SET_PERMS " + be + " n0 r5");
  want.push_back("WRITE " + be + "/frontend " + fe);
  const std::vector<std::pair<std::string, std::string>> back = {
      {"params", "aio:/i.img"}, {"frontend-id", "5"},    {"online", "1"},
      {"removable", "0"},       {"bootable", "1"},       {"state", "1"},
      {"dev", "xvda"},          {"type", "qdisk"},       {"mode", "w"},
      {"device-type", "disk"},  {"direct-io-safe", "1"}, {"discard-enable", "1"},
      {"specification", "xen"}};
  for (const auto& [k, v] : back) want.push_back("WRITE " + be + "/" + k + " " + v);
  for (const auto& [k, v] : back) want.push_back("WRITE " + lp + "/" + k + " " + v);
  CHECK(transaction_ops(s.xsd.trace(), lp) == want);
}

TEST_CASE("remove_disk: online=0 then state=5, in one transaction (xenstored trace)") {
  sim s;
  s.make_domain(5);
  disk_spec d;
  d.domid = 5;
  d.target = "/i.img";
  s.ts.add_disk(d);
  const std::string be = "/local/domain/0/backend/qdisk/5/51712";
  fake_backend fb(be);
  CHECK(s.ts.remove_disk(5, 51712, {}).ok());
  fb.th.join();
  CHECK(transaction_ops(s.xsd.trace(), be + "/online 0") ==
        std::vector<std::string>{"WRITE " + be + "/online 0", "WRITE " + be + "/state 5"});
}

TEST_CASE("add_disk: flags, read-only, cdrom, HVM guest, other backend type") {
  sim s;
  s.make_domain(5);
  s.make_domain(6, domain_type::hvm);
  auto& xs = s.xs();

  disk_spec d;
  d.domid = 5;
  d.vdev = "xvdb";
  d.target = "/images/b.img";
  d.direct_io_safe = true;
  d.writable = false;
  REQUIRE(s.ts.add_disk(d) == 51728u);
  const std::string be = "/local/domain/0/backend/qdisk/5/51728";
  check_node(xs, be + "/direct-io-safe", "1", "n0,r5");
  check_node(xs, be + "/mode", "r", "n0,r5");
  check_node(xs, be + "/discard-enable", "0", "n0,r5");  // default: = writable

  d.vdev = "xvdc";
  d.direct_io_safe = false;
  d.writable = true;
  d.discard_enable = false;
  d.trusted = false;
  REQUIRE(s.ts.add_disk(d) == 51744u);
  CHECK_FALSE(xs.exists("/local/domain/0/backend/qdisk/5/51744/direct-io-safe"));
  check_node(xs, "/local/domain/0/backend/qdisk/5/51744/discard-enable", "0", "n0,r5");
  check_node(xs, "/local/domain/5/device/vbd/51744/trusted", "0", "n5,r0");

  disk_spec cd;
  cd.domid = 5;
  cd.vdev = "hdc";
  cd.cdrom = true;
  REQUIRE(s.ts.add_disk(cd) == 5632u);
  const std::string cbe = "/local/domain/0/backend/qdisk/5/5632";
  check_node(xs, cbe + "/params", "aio:", "n0,r5");
  check_node(xs, cbe + "/device-type", "cdrom", "n0,r5");
  check_node(xs, cbe + "/removable", "1", "n0,r5");
  check_node(xs, cbe + "/mode", "r", "n0,r5");
  check_node(xs, "/local/domain/5/device/vbd/5632/device-type", "cdrom", "n5,r0");

  disk_spec h;
  h.domid = 6;
  h.vdev = "xvda";
  h.target = "/images/h.img";
  h.backend_type = "xbd";
  REQUIRE(s.ts.add_disk(h) == 51712u);
  CHECK_FALSE(xs.exists("/local/domain/6/device/vbd/51712/protocol"));  // not PV
  check_node(xs, "/local/domain/0/backend/xbd/6/51712/type", "xbd", "n0,r6");
  check_node(xs, "/local/domain/6/device/vbd/51712/backend", "/local/domain/0/backend/xbd/6/51712", "n6,r0");
}

TEST_CASE("add_disk: refusals") {
  sim s;
  s.make_domain(5);
  disk_spec d;
  d.domid = 5;
  d.vdev = "xvda";
  d.target = "/images/a.img";
  s.ts.add_disk(d);
  CHECK_THROWS_WITH_AS(s.ts.add_disk(d), doctest::Contains("device already exists in xenstore"), toolstack_error);
  d.vdev = "xvda0";
  CHECK_THROWS_WITH_AS(s.ts.add_disk(d), doctest::Contains("Invalid or unsupported virtual disk identifier"),
                       toolstack_error);
  d.vdev = "xvdb";
  d.domid = 9;
  CHECK_THROWS_AS(s.ts.add_disk(d), toolstack_error);
  d.domid = 5;
  d.target.clear();
  CHECK_THROWS_WITH_AS(s.ts.add_disk(d), doctest::Contains("no target specified"), toolstack_error);
}

TEST_CASE("the permissions work for a real guest: it reads its vbd, cannot touch the backend") {
  sim s;
  s.make_domain(5, domain_type::pv, /*introduce=*/true);
  disk_spec d;
  d.domid = 5;
  d.target = "/images/a.img";
  s.ts.add_disk(d);
  xbd::sim::guest_xenstore g(s.xsd.dir(), 5);
  const std::string be = "/local/domain/0/backend/qdisk/5/51712";
  const std::string fe = "/local/domain/5/device/vbd/51712";
  CHECK(g.read(be + "/params").value() == "aio:/images/a.img");
  CHECK(g.read(fe + "/backend").value() == be);
  CHECK(g.write(be + "/state", "4") == std::errc::permission_denied);
  CHECK_FALSE(g.write(fe + "/state", "3"));
  CHECK_FALSE(g.write(fe + "/ring-ref", "8"));  // the guest owns its dir
  CHECK(g.read("/libxl/5/device/vbd/51712/params").error() == std::errc::permission_denied);
  CHECK_FALSE(g.write("/local/domain/5/control/shutdown", "poweroff"));
  CHECK(g.write("/local/domain/5/name", "evil") == std::errc::permission_denied);
}

// ------------------------------------------------------------------ removal

namespace {
struct attached {
  sim s;
  std::string be = "/local/domain/0/backend/qdisk/5/51712";
  std::string fe = "/local/domain/5/device/vbd/51712";
  std::string lp = "/libxl/5/device/vbd/51712";
  attached() {
    s.make_domain(5);
    disk_spec d;
    d.domid = 5;
    d.target = "/images/a.img";
    s.ts.add_disk(d);
  }
  bool all_gone() { return !s.xs().exists(be) && !s.xs().exists(fe) && !s.xs().exists(lp); }
};
}  // namespace

TEST_CASE("remove_disk with a backend that closes: success, nodes gone as libxl cleans them") {
  attached a;
  fake_backend fb(a.be);
  auto t0 = std::chrono::steady_clock::now();
  auto r = a.s.ts.remove_disk(5, 51712, {});
  CHECK(seconds_since(t0) < 5);
  fb.th.join();
  CHECK(fb.saw_closing);
  CHECK(fb.online_at_closing == "0");  // online=0 and state=5: one transaction
  CHECK(r.ok());
  CHECK(r.closed);
  CHECK_FALSE(r.forced);
  CHECK(r.nodes_removed);
  CHECK(a.all_gone());
  // libxl__xs_path_cleanup also removes the parents it emptied.
  auto& xs = a.s.xs();
  CHECK_FALSE(xs.exists("/local/domain/0/backend"));
  CHECK(xs.exists("/local/domain/0/domid"));
  CHECK_FALSE(xs.exists("/local/domain/5/device/vbd"));
  CHECK(xs.exists("/local/domain/5/device/suspend/event-channel"));
  CHECK_FALSE(xs.exists("/libxl/5/device"));
  CHECK(xs.exists("/libxl/5/type"));
}

TEST_CASE("remove_disk without a backend (libxl_device_disk_remove): two bounded waits, then removed") {
  attached a;
  remove_options o;
  o.timeout = 300ms;
  auto t0 = std::chrono::steady_clock::now();
  auto r = a.s.ts.remove_disk(5, 51712, o);
  double el = seconds_since(t0);
  CHECK(el >= 0.6);  // the normal wait, then the forced pass's wait
  CHECK(el < 5);
  CHECK_FALSE(r.ok());
  CHECK(r.error.find("unable to remove device") != std::string::npos);
  CHECK_FALSE(r.closed);
  CHECK(r.timed_out);
  CHECK(r.forced);
  CHECK(r.nodes_removed);
  CHECK(a.all_gone());
}

TEST_CASE("remove_disk, safe mode (xl block-detach) without a backend: fails, nodes stay") {
  attached a;
  remove_options o;
  o.timeout = 200ms;
  o.mode = remove_mode::safe;
  auto t0 = std::chrono::steady_clock::now();
  auto r = a.s.ts.remove_disk(5, 51712, o);
  double el = seconds_since(t0);
  CHECK(el >= 0.2);
  CHECK(el < 3);
  CHECK_FALSE(r.ok());
  CHECK(r.timed_out);
  CHECK_FALSE(r.forced);
  CHECK_FALSE(r.nodes_removed);
  auto& xs = a.s.xs();
  check_node(xs, a.be + "/online", "0", "n0,r5");
  check_node(xs, a.be + "/state", "5", "n0,r5");
  CHECK(xs.exists(a.fe));
  CHECK(xs.exists(a.lp));
}

TEST_CASE("remove_disk, destroy mode (xl block-detach -f): frontend first, one wait, removed") {
  attached a;
  // A backend that closes only once the frontend is gone, like one that
  // treats a vanished frontend as a dead guest.
  std::thread backend([&] {
    xs_client xs;
    if (xs.wait_for(
            a.fe, [](const std::optional<std::string>& v) { return !v; }, 10s))
      xs.write(a.be + "/state", "6");
  });
  auto r = a.s.ts.remove_disk(5, 51712, {10s, remove_mode::destroy});
  backend.join();
  CHECK(r.ok());
  CHECK(r.forced);
  CHECK(r.closed);
  CHECK(a.all_gone());
}

TEST_CASE("remove_disk: the forced pass lets a frontend-watching backend close") {
  attached a;
  std::thread backend([&] {
    xs_client xs;
    if (xs.wait_for(
            a.fe, [](const std::optional<std::string>& v) { return !v; }, 10s))
      xs.write(a.be + "/state", "6");
  });
  auto t0 = std::chrono::steady_clock::now();
  auto r = a.s.ts.remove_disk(5, 51712, {300ms, remove_mode::remove});
  backend.join();
  CHECK(seconds_since(t0) >= 0.3);
  CHECK(r.ok());  // libxl reports success: Closed in the forced pass
  CHECK(r.forced);
  CHECK(r.closed);
  CHECK(a.all_gone());
}

TEST_CASE("remove_disk: backend state already gone -> frontend-only cleanup, success") {
  attached a;
  a.s.xs().rm(a.be + "/state");
  auto t0 = std::chrono::steady_clock::now();
  auto r = a.s.ts.remove_disk(5, 51712, {});
  CHECK(seconds_since(t0) < 1);
  CHECK(r.ok());
  CHECK(r.backend_missing);
  CHECK(a.all_gone());
}

TEST_CASE("remove_disk: state already Closed is not rewritten, no wait") {
  attached a;
  a.s.xs().write(a.be + "/state", "6");
  auto t0 = std::chrono::steady_clock::now();
  auto r = a.s.ts.remove_disk(5, 51712, {});
  CHECK(seconds_since(t0) < 1);
  CHECK(r.ok());
  CHECK(r.closed);
  CHECK(a.all_gone());
}

TEST_CASE("remove_disk: a backend deleting its state node while libxl waits is an error") {
  attached a;
  std::thread backend([&] {
    xs_client xs;
    if (xs.wait_for(
            a.be + "/state", [](const std::optional<std::string>& v) { return v && *v == "5"; }, 10s))
      xs.rm(a.be);
  });
  auto r = a.s.ts.remove_disk(5, 51712, {5s, remove_mode::remove});
  backend.join();
  CHECK_FALSE(r.ok());
  CHECK(r.backend_vanished);
  CHECK_FALSE(r.nodes_removed);  // libxl leaves frontend and private copy
  CHECK(a.s.xs().exists(a.fe));
  CHECK(a.s.xs().exists(a.lp));
}

TEST_CASE("remove_disk: unknown device") {
  attached a;
  CHECK_THROWS_WITH_AS(a.s.ts.remove_disk(5, 51728, {}), doctest::Contains("not connected"), toolstack_error);
}

// ------------------------------------------------------------ destroy_domain

TEST_CASE("destroy_domain: qdisk gets the QEMU bodge (state=6 by the toolstack), all removed") {
  attached a;
  auto& xs = a.s.xs();
  const std::string vm = *xs.read("/local/domain/5/vm");
  std::vector<unsigned> destroyed;
  xbd::sim::destroy_options o;
  o.qemu_bodge_timeout = 300ms;
  o.on_destroyed = [&](unsigned d) { destroyed.push_back(d); };
  auto t0 = std::chrono::steady_clock::now();
  auto r = a.s.ts.destroy_domain(5, o);
  double el = seconds_since(t0);
  CHECK(el >= 0.3);
  CHECK(el < 4);
  CHECK(r.ok());
  CHECK(r.removed_devices == std::vector<std::string>{a.be});
  // libxl's device_qemu_timeout: Closed written on its own (XBT_NULL), so
  // a watcher gets an event for it, then the nodes removed in one
  // transaction. The backend is never asked to close (no online=0, no
  // state=5). A watcher may read the node only after the removal, so the
  // requests xenstored received are what is checked.
  const std::string be = a.be;
  const auto changes = changes_of(a.s.xsd.trace(), {be, be + "/state", be + "/online"});
  std::string seen;
  for (const auto& c : changes) seen += c + "\n";
  INFO(seen);
  CHECK(changes == std::vector<std::string>{"txn RM " + be, "txn MKDIR " + be, "txn SET_PERMS " + be + " n0 r5",
                                            "txn WRITE " + be + "/online 1",
                                            "txn WRITE " + be + "/state 1",  // add_disk
                                            "WRITE " + be + "/state 6", "txn RM " + be});
  CHECK(a.all_gone());
  CHECK_FALSE(xs.exists("/local/domain/5"));
  CHECK_FALSE(xs.exists(vm));
  CHECK_FALSE(xs.exists("/libxl/5"));
  CHECK(destroyed == std::vector<unsigned>{5});
  CHECK_THROWS_WITH_AS(a.s.ts.destroy_domain(5, o), doctest::Contains("Non-existant domain"), toolstack_error);
}

TEST_CASE("destroy_domain: a non-QEMU backend is asked to close (forced) and waited for") {
  sim s;
  s.make_domain(5);
  disk_spec d;
  d.domid = 5;
  d.target = "/images/a.img";
  d.backend_type = "vbd";
  s.ts.add_disk(d);
  const std::string be = "/local/domain/0/backend/vbd/5/51712";
  fake_backend fb(be);
  auto r = s.ts.destroy_domain(5, {});
  fb.th.join();
  CHECK(r.ok());
  CHECK(fb.saw_closing);
  CHECK(fb.online_at_closing == "0");
  CHECK_FALSE(s.xs().exists(be));
  CHECK_FALSE(s.xs().exists("/local/domain/5"));
}

TEST_CASE("destroy_domain: a backend kind libxl does not know is skipped, as libxl does") {
  sim s;
  s.make_domain(5);
  disk_spec d;
  d.domid = 5;
  d.target = "/images/a.img";
  d.backend_type = "xbd";
  s.ts.add_disk(d);
  auto r = s.ts.destroy_domain(5, {});
  CHECK(r.removed_devices.empty());
  CHECK(r.skipped_devices == std::vector<std::string>{"/libxl/5/device/vbd/51712"});
  CHECK(s.xs().exists("/local/domain/0/backend/xbd/5/51712"));  // leaked, as by libxl
  CHECK_FALSE(s.xs().exists("/local/domain/5"));
}

TEST_CASE("destroy_domain with the simulated hypervisor: @releaseDomain fires") {
  sim s;
  s.make_domain(5, domain_type::pv, /*introduce=*/true);
  xs_client w;
  REQUIRE(xs_watch(w.handle(), "@releaseDomain", "rel"));
  xbd::sim::destroy_options o;
  o.on_destroyed = [&](unsigned dom) { s.xsd.kill_domain(dom); };
  s.ts.destroy_domain(5, o);
  // Wait for a second @releaseDomain event (the first is the registration).
  int events = 0;
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (events < 2 && std::chrono::steady_clock::now() < deadline) {
    char** ev = xs_check_watch(w.handle());
    if (ev) {
      ++events;
      std::free(ev);
    } else {
      std::this_thread::sleep_for(5ms);
    }
  }
  CHECK(events >= 2);
  CHECK_THROWS(xbd::sim::guest_xenstore(s.xsd.dir(), 5, 500ms).read("name").value());
}

// ---------------------------------------------------------------------- CLI

TEST_CASE("CLI: create-domain, add-disk, remove-disk, destroy-domain") {
  sim s;
  auto& xs = s.xs();
  auto c = run_cli("create-domain --domid 5 --name cli");
  CHECK(c.status == 0);
  CHECK(c.out.size() == 37);  // uuid + newline
  check_node(xs, "/local/domain/5/name", "cli", "n0,r5");

  c = run_cli("add-disk --domid 5 --vdev xvda --target /images/a.img --direct-io-safe");
  CHECK(c.status == 0);
  CHECK(c.out == "51712\n");
  check_node(xs, "/local/domain/0/backend/qdisk/5/51712/direct-io-safe", "1", "n0,r5");
  check_node(xs, "/local/domain/0/backend/qdisk/5/51712/params", "aio:/images/a.img", "n0,r5");

  c = run_cli("add-disk --domid 5 --vdev xvdb --target /images/b.img --mode r --discard-enable 1");
  CHECK(c.out == "51728\n");
  check_node(xs, "/local/domain/0/backend/qdisk/5/51728/mode", "r", "n0,r5");
  check_node(xs, "/local/domain/0/backend/qdisk/5/51728/discard-enable", "1", "n0,r5");

  c = run_cli("add-disk --domid 5 --vdev xvda --target /images/a.img");
  CHECK(c.status == 1);  // already exists

  // No backend: non-zero exit, nodes removed after the (two) waits.
  c = run_cli("remove-disk --domid 5 --devid 51712 --timeout 0.2");
  CHECK(c.status == 1);
  CHECK_FALSE(xs.exists("/local/domain/0/backend/qdisk/5/51712"));
  // --safe leaves them.
  c = run_cli("remove-disk --domid 5 --vdev xvdb --timeout 0.2 --safe");
  CHECK(c.status == 1);
  check_node(xs, "/local/domain/0/backend/qdisk/5/51728/state", "5", "n0,r5");

  {
    // State is still 5 from the safe attempt: the fake backend closes.
    fake_backend fb("/local/domain/0/backend/qdisk/5/51728");
    c = run_cli("remove-disk --domid 5 --vdev xvdb --timeout 5");
  }
  CHECK(c.status == 0);
  CHECK_FALSE(xs.exists("/libxl/5/device/vbd/51728"));

  c = run_cli("destroy-domain --domid 5 --bodge-timeout 0.1");
  CHECK(c.status == 0);
  CHECK_FALSE(xs.exists("/local/domain/5"));

  c = run_cli("devid xvda hdc xvdq");
  CHECK(c.out == "51712\n5632\n268439552\n");
}

TEST_CASE("CLI: bad arguments exit 2, failures exit 1") {
  sim s;
  CHECK(run_cli("").status == 2);
  CHECK(run_cli("frobnicate").status == 2);
  CHECK(run_cli("create-domain").status == 2);
  CHECK(run_cli("create-domain --domid x").status == 2);
  CHECK(run_cli("create-domain --domid 5 --type xen").status == 2);
  CHECK(run_cli("create-domain --domid 5 --bogus 1").status == 2);
  CHECK(run_cli("add-disk --domid 5 --vdev xvda").status == 2);  // no target
  CHECK(run_cli("add-disk --domid 5 --vdev xvda0 --target /x").status == 2);
  CHECK(run_cli("add-disk --domid 5 --vdev xvda --target /x --mode x").status == 2);
  CHECK(run_cli("add-disk --domid 5 --vdev xvda --target /x --discard-enable 2").status == 2);
  CHECK(run_cli("add-disk --domid 5 --vdev xvda --target /x").status == 1);  // no domain
  CHECK(run_cli("remove-disk --domid 5").status == 2);
  CHECK(run_cli("remove-disk --domid 5 --devid 1 --timeout -1").status == 2);
  CHECK(run_cli("remove-disk --domid 5 --devid 1 --safe --force").status == 2);
  CHECK(run_cli("remove-disk --domid 5 --devid 51712").status == 1);  // not connected
  CHECK(run_cli("destroy-domain --domid 5").status == 1);             // no such domain
  CHECK(run_cli("devid xvd").status == 1);
}
