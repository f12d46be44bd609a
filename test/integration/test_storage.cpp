// Disks on NBD servers and in image formats, through the real daemon on
// simulated Xen: real nbdkit and qemu-storage-daemon / qemu-img, started
// and stopped by each test.
#include "test/integration/sim_env.hpp"

#include <doctest/doctest.h>

#include <unistd.h>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <thread>

using namespace xbd::test;
using namespace std::chrono_literals;

namespace {

constexpr unsigned xvda = 51712;
constexpr unsigned xvdb = 51728;

std::string backend(unsigned domid, unsigned devid = xvda) {
  return "/local/domain/0/backend/qdisk/" + std::to_string(domid) + "/" + std::to_string(devid);
}

void check_clean(const frontend_result& r) {
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(json_field(r.json, "ok") == "true");
  CHECK(json_field(r.json, "mismatches") == "0");
}

// A program by name, from PATH (process() runs argv[0] as given).
std::string bin(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/bin:/bin";
  std::size_t start = 0;
  while (start <= dirs.size()) {
    const std::size_t end = std::min(dirs.find(':', start), dirs.size());
    auto candidate = std::filesystem::path(dirs.substr(start, end - start)) / name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
    start = end + 1;
  }
  return name;
}

// nbdkit serving `plugin_args` on a unix socket in the test directory, for
// as long as the object lives (and never longer than the test process).
class nbdkit {
 public:
  nbdkit(sim_env& env, const std::string& name, std::vector<std::string> plugin_args)
      : env_(env), name_(name), args_(std::move(plugin_args)), sock_(env.dir() / (name + ".sock")) {
    start();
  }
  void start() {
    std::filesystem::remove(sock_);
    std::vector<std::string> argv{bin("nbdkit"), "--foreground", "--exit-with-parent", "-U", sock_.string()};
    argv.insert(argv.end(), args_.begin(), args_.end());
    proc_ = std::make_unique<process>(argv, std::vector<std::string>{}, env_.dir() / (name_ + ".log"));
    REQUIRE_MESSAGE(eventually([&] { return std::filesystem::exists(sock_); }, 10s), proc_->output());
  }
  void kill() {
    proc_->signal(SIGKILL);
    (void)proc_->wait(5s);
  }
  std::string uri() const { return "nbd+unix:///?socket=" + sock_.string(); }

 private:
  sim_env& env_;
  std::string name_;
  std::vector<std::string> args_;
  std::filesystem::path sock_;
  std::unique_ptr<process> proc_;
};

run_result tool(sim_env& env, std::vector<std::string> argv) {
  argv[0] = bin(argv[0]);
  return run(std::move(argv), {}, env.dir() / "tool.log", 60s);
}

// A PSK file ("USER:KEY", the key in hex) with a new random key; the key.
std::string write_psk_file(const std::filesystem::path& file, const std::string& user) {
  std::ifstream random("/dev/urandom", std::ios::binary);
  std::string key;
  for (int i = 0; i < 32; ++i) {
    const auto b = static_cast<unsigned char>(random.get());
    key += "0123456789abcdef"[b >> 4];
    key += "0123456789abcdef"[b & 0xf];
  }
  std::ofstream(file) << user << ":" << key << "\n";
  return key;
}

}  // namespace

TEST_CASE("storage: verified reads, writes, flushes and discards through an NBD export on a unix socket") {
  sim_env env;
  env.create_guest(5);
  nbdkit server(env, "mem", {"memory", "64M"});
  env.add_disk(5, "nbd+unix:///?socket=" + (env.dir() / "mem.sock").string());
  env.start_daemon();
  auto r = env.run_frontend(5, {"--devid", "51712", "--rw", "randrw", "--bs", "4096", "--qd", "32", "--ios", "4000",
                                "--flush-every", "16", "--discard-pct", "10", "--verify"});
  check_clean(r);
  CHECK(r.json.find("\"discarded\":0}") == std::string::npos);  // some bytes were discarded
  CHECK(env.log_shows("NBD: the server's own caching"));
  CHECK(env.stop_daemon() == 0);
}

TEST_CASE("storage: an NBD export over TCP in QEMU's nbd:HOST:PORT spelling") {
  sim_env env;
  env.create_guest(5);
  // A port the kernel found free (one derived from the pid once collided).
  const std::string port = std::to_string(free_tcp_port());
  process server({bin("nbdkit"), "--foreground", "--exit-with-parent", "-i", "127.0.0.1", "-p", port, "memory", "32M"},
                 {}, env.dir() / "tcp.log");
  REQUIRE(eventually([&] { return tool(env, {"nbdinfo", "--size", "nbd://127.0.0.1:" + port}).status == 0; }, 10s));
  env.add_disk(5, "nbd:127.0.0.1:" + port);
  env.start_daemon();
  auto r = env.run_frontend(
      5, {"--devid", "51712", "--rw", "randrw", "--bs", "4096", "--qd", "16", "--ios", "2000", "--verify"});
  check_clean(r);
}

TEST_CASE("storage: a disk on nbds:// with a PSK serves verified I/O, a wrong key is refused, no key is logged") {
  sim_env env;  // the log at debug: everything the daemon might say
  env.create_guest(5);
  const auto psk = env.dir() / "server.psk";
  const std::string key = write_psk_file(psk, "xen");
  const auto wrong = env.dir() / "wrong.psk";
  const std::string wrong_key = write_psk_file(wrong, "xen");
  const std::string port = std::to_string(free_tcp_port());
  process server({bin("nbdkit"), "--foreground", "--exit-with-parent", "-i", "127.0.0.1", "-p", port, "--tls=require",
                  "--tls-psk=" + psk.string(), "memory", "32M"},
                 {}, env.dir() / "tls.log");
  const std::string uri = "nbds://xen@127.0.0.1:" + port + "/?tls-psk-file=";
  REQUIRE(eventually([&] { return tool(env, {"nbdinfo", "--size", uri + psk.string()}).status == 0; }, 10s));
  env.add_disk(5, uri + psk.string());
  env.add_disk(5, uri + wrong.string(), "xvdb");
  env.start_daemon();
  auto r = env.run_frontend(5, {"--devid", "51712", "--rw", "randrw", "--bs", "4096", "--qd", "16", "--ios", "2000",
                                "--flush-every", "16", "--discard-pct", "10", "--verify"});
  check_clean(r);
  std::optional<std::string> refused;
  REQUIRE(eventually([&] { return (refused = env.read(backend(5, xvdb) + "/error")).has_value(); }, 15s));
  CHECK(refused->find("TLS with a pre-shared key failed") != std::string::npos);
  CHECK(env.stop_daemon() == 0);
  const std::string log = env.daemon_log();
  CHECK(log.find("over TLS") != std::string::npos);
  CHECK(log.find("pre-shared key failed") != std::string::npos);
  CHECK(log.find(key) == std::string::npos);
  CHECK(log.find(wrong_key) == std::string::npos);
  // Nor a piece of either key long enough to matter.
  for (const auto& k : {key, wrong_key})
    for (std::size_t at = 0; at + 16 <= k.size(); at += 8) CHECK(log.find(k.substr(at, 16)) == std::string::npos);
}

TEST_CASE("storage: an NBD server killed mid-workload and restarted: requests wait and the guest sees no error") {
  sim_env env;
  env.create_guest(5);
  // A file-backed export, so that what was written survives the restart.
  auto img = env.make_image("backing.img", 32 << 20);
  nbdkit server(env, "file", {"file", img.string()});
  env.add_disk(5, server.uri());
  env.start_daemon();
  auto guest = env.start_frontend(5,
                                  {"--devid", "51712", "--rw", "randrw", "--bs", "4096", "--qd", "16", "--runtime", "4",
                                   "--flush-every", "8", "--verify", "--timeout", "30"},
                                  "guest");
  std::this_thread::sleep_for(1s);
  server.kill();
  std::this_thread::sleep_for(1s);
  server.start();
  auto status = guest->wait(60s);
  INFO(guest->output());
  REQUIRE(status.has_value());
  CHECK(*status == 0);
  CHECK(guest->output().find("\"mismatches\":0") != std::string::npos);
  CHECK(env.log_shows("lost"));
}

TEST_CASE(
    "storage: with the NBD server gone past reconnect-seconds, requests fail with an I/O error and the vbd stays") {
  sim_env env("[nbd]\nreconnect-seconds = 1\n");
  env.create_guest(5);
  nbdkit server(env, "mem", {"memory", "32M"});
  env.add_disk(5, server.uri());
  env.start_daemon();
  REQUIRE(env.log_shows(" opened "));
  server.kill();
  auto r = env.run_frontend(5, {"--devid", "51712", "--rw", "randread", "--bs", "4096", "--qd", "4", "--ios", "8",
                                "--allow-io-errors", "--timeout", "20"});
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.json.find("\"errors\":{\"io\":8,") != std::string::npos);
  CHECK(env.read(backend(5) + "/state") != std::nullopt);
}

TEST_CASE(
    "storage: an NBD server failing a share of reads: each such read is ERROR, the others succeed, the vbd stays") {
  sim_env env;
  env.create_guest(5);
  nbdkit server(env, "flaky", {"--filter=error", "memory", "32M", "error-pread-rate=20%", "error-pread=EIO"});
  env.add_disk(5, server.uri());
  env.start_daemon();
  auto r = env.run_frontend(
      5, {"--devid", "51712", "--rw", "randread", "--bs", "4096", "--qd", "16", "--ios", "2000", "--allow-io-errors"});
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.json.find("\"errors\":{\"io\":0,") == std::string::npos);  // some failed
  CHECK(r.json.find("\"read\":0,") == std::string::npos);            // and some succeeded
  CHECK(env.log_shows("failed: Input/output error"));
  // The same vbd serves the next guest run cleanly once the server does.
  auto again = env.run_frontend(5, {"--devid", "51712", "--rw", "write", "--bs", "4096", "--qd", "8", "--ios", "200"});
  CHECK(again.status == 0);
}

TEST_CASE("storage: a daemon stopped while requests wait for a lost NBD server stops at once") {
  sim_env env("[nbd]\nreconnect-seconds = 120\n");
  env.create_guest(5);
  nbdkit server(env, "mem", {"memory", "32M"});
  env.add_disk(5, server.uri());
  env.start_daemon();
  auto guest = env.start_frontend(5,
                                  {"--devid", "51712", "--rw", "randread", "--bs", "4096", "--qd", "8", "--runtime",
                                   "60", "--allow-io-errors", "--timeout", "90"},
                                  "guest");
  REQUIRE(env.log_shows("connected: 1 queue(s)"));
  server.kill();
  REQUIRE(env.log_shows("lost"));
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(env.stop_daemon() == 0);
  const auto took = std::chrono::steady_clock::now() - t0;
  CHECK(took < 10s);  // not the 120 s of the reconnect window
  guest->signal(SIGTERM);
  (void)guest->wait(10s);
}

TEST_CASE("storage: a qcow2 image over a raw backing file, through qemu-storage-daemon, equals the same I/O on raw") {
  sim_env env;
  env.create_guest(5);
  // The backing file has content of its own, which the guest's unwritten
  // half must still show through the overlay.
  const auto base = env.dir() / "base.raw";
  REQUIRE(tool(env, {"sh", "-c", "head -c 16777216 /dev/urandom > " + base.string()}).status == 0);
  const auto overlay = env.dir() / "overlay.qcow2";
  REQUIRE(tool(env, {"qemu-img", "create", "-q", "-f", "qcow2", "-b", base.string(), "-F", "raw", overlay.string()})
              .status == 0);
  const auto expected = env.dir() / "expected.raw";
  std::filesystem::copy_file(base, expected);
  env.add_disk(5, overlay.string(), "xvda", xbd::sim::disk_format::qcow2);
  env.add_disk(5, expected.string(), "xvdb", xbd::sim::disk_format::raw);
  env.start_daemon();
  // The same stream of writes to both disks (same run id: same stamps),
  // over the first half, then everything read back and verified: the
  // stamps where the guest wrote, the backing file's bytes elsewhere.
  for (unsigned dev : {xvda, xvdb}) {
    auto w = env.run_frontend(5, {"--devid", std::to_string(dev), "--rw", "write", "--bs", "65536", "--qd", "8",
                                  "--size", "8M", "--bytes", "8M", "--run-id", "7", "--verify"});
    check_clean(w);
  }
  auto r = env.run_frontend(5, {"--devid", std::to_string(xvda), "--rw", "randread", "--bs", "4096", "--qd", "16",
                                "--ios", "4000", "--verify"});
  check_clean(r);
  CHECK(env.log_shows("qcow2 through qemu-storage-daemon"));
  REQUIRE(env.stop_daemon() == 0);
  auto check = tool(env, {"qemu-img", "check", "-q", overlay.string()});
  INFO(check.output);
  CHECK(check.status == 0);
  // The overlay and the raw copy hold the same bytes, the backing file's
  // half included.
  auto cmp = tool(env, {"qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", overlay.string(), expected.string()});
  INFO(cmp.output);
  CHECK(cmp.status == 0);
}

TEST_CASE("storage: discards on a qcow2 image leave it consistent") {
  sim_env env;
  env.create_guest(5);
  const auto img = env.dir() / "disk.qcow2";
  REQUIRE(tool(env, {"qemu-img", "create", "-q", "-f", "qcow2", img.string(), "32M"}).status == 0);
  env.add_disk(5, img.string(), "xvda", xbd::sim::disk_format::qcow2);
  env.start_daemon();
  auto r =
      env.run_frontend(5, {"--devid", "51712", "--rw", "randrw", "--bs", "65536", "--qd", "16", "--ios", "1500",
                           "--discard-pct", "20", "--flush-every", "32", "--verify", "--verify-discard", "unknown"});
  check_clean(r);
  CHECK(r.json.find("\"discarded\":0}") == std::string::npos);  // some bytes were discarded
  REQUIRE(env.stop_daemon() == 0);
  auto check = tool(env, {"qemu-img", "check", "-q", img.string()});
  INFO(check.output);
  CHECK(check.status == 0);
}

TEST_CASE("storage: malformed and unsupported disk specs each close their vbd with a reason, the others serve") {
  sim_env env("[images]\nqemu-storage-daemon = \"/nonexistent/qemu-storage-daemon\"\n");
  env.create_guest(5);
  const auto good = env.make_image("good.img", 8 << 20);
  env.add_disk(5, good.string(), "xvda", xbd::sim::disk_format::raw);
  env.add_disk(5, "nbd://[::1", "xvdb", xbd::sim::disk_format::raw);
  env.add_disk(5, "rbd:pool/image", "xvdc", xbd::sim::disk_format::raw);
  env.add_disk(5, (env.dir() / "x.qcow2").string(), "xvdd", xbd::sim::disk_format::qcow2);
  env.add_disk(5, "nbd+unix:///?socket=" + (env.dir() / "nobody.sock").string(), "xvde", xbd::sim::disk_format::raw);
  env.start_daemon();
  const auto error_of = [&](unsigned devid) {
    std::optional<std::string> e;
    eventually([&] { return (e = env.read(backend(5, devid) + "/error")).has_value(); }, 15s);
    return e.value_or("");
  };
  CHECK(error_of(xvdb).find("nbd://[::1") != std::string::npos);
  CHECK(error_of(51744).find("RBD image \"pool/image\"") != std::string::npos);
  CHECK(error_of(51760).find("qemu-storage-daemon") != std::string::npos);
  CHECK(error_of(51776).find("nobody.sock") != std::string::npos);
  auto r = env.run_frontend(
      5, {"--devid", "51712", "--rw", "randrw", "--bs", "4096", "--qd", "8", "--ios", "500", "--verify"});
  check_clean(r);
}

TEST_CASE("storage: --check-config says whether qemu-storage-daemon can serve image formats") {
  sim_env env;
  const auto good = env.dir() / "good.toml";
  const auto bad = env.dir() / "bad.toml";
  std::ofstream(good) << "";
  std::ofstream(bad) << "[images]\nqemu-storage-daemon = \"/nonexistent/qsd\"\n";
  auto ok = run({XBD_DAEMON_BIN, "--config", good.string(), "--check-config"}, {}, env.dir() / "check.log", 30s);
  CHECK(ok.status == 0);
  CHECK(ok.output.find("image formats: ") != std::string::npos);
  CHECK(ok.output.find("qemu-storage-daemon version") != std::string::npos);
  auto missing = run({XBD_DAEMON_BIN, "--config", bad.string(), "--check-config"}, {}, env.dir() / "check2.log", 30s);
  CHECK(missing.status == 0);
  CHECK(missing.output.find("image formats: /nonexistent/qsd is not an executable file") != std::string::npos);
}
