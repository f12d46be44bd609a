// The daemon under a service manager (systemd's Type=notify protocol, played
// by the test through NOTIFY_SOCKET): readiness after start-up's devices are
// picked up, a status line, a watchdog fed only while every worker runs,
// and STOPPING at SIGTERM.
#include <doctest/doctest.h>

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <csignal>
#include <cstring>
#include <string>
#include <vector>

#include "test/integration/sim_env.hpp"

using namespace xbd::test;
using namespace std::chrono_literals;

namespace {

// A datagram socket the daemon's sd_notify() writes to.
class notify_socket {
 public:
  explicit notify_socket(const std::filesystem::path& path) : path_(path) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    REQUIRE(path.string().size() < sizeof a.sun_path);
    std::strcpy(a.sun_path, path.c_str());
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  }
  ~notify_socket() {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
  // The messages that arrive within `limit`.
  std::vector<std::string> collect(std::chrono::milliseconds limit) {
    std::vector<std::string> out;
    const auto end = std::chrono::steady_clock::now() + limit;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
      char buf[4096];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n > 0) out.emplace_back(buf, static_cast<std::size_t>(n));
    }
    return out;
  }
  // Waits (bounded) for a message containing `text`.
  bool wait_for(const std::string& text, std::chrono::milliseconds limit) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end)
      for (const auto& m : collect(100ms))
        if (m.find(text) != std::string::npos) return true;
    return false;
  }

 private:
  std::filesystem::path path_;
  int fd_ = -1;
};

std::size_t count(const std::vector<std::string>& msgs, const std::string& text) {
  std::size_t n = 0;
  for (const auto& m : msgs) n += m.find(text) != std::string::npos ? 1 : 0;
  return n;
}

void add_disk(sim_env& env, unsigned domid, const std::filesystem::path& image) {
  xbd::sim::disk_spec d;
  d.domid = domid;
  d.vdev = "xvda";
  d.target = image;
  env.toolstack().add_disk(d);
}

}  // namespace

TEST_CASE("systemd: READY once start-up's devices are picked up, the watchdog fed, STOPPING at SIGTERM") {
  sim_env env;
  notify_socket sock(env.dir() / "notify");
  env.create_guest(5);
  add_disk(env, 5, env.make_image("disk.img", 16 << 20));
  env.start_daemon({}, {"NOTIFY_SOCKET=" + (env.dir() / "notify").string(), "WATCHDOG_USEC=400000"});
  CHECK(sock.wait_for("READY=1\nSTATUS=serving 1 vbd(s)", 10s));
  const auto msgs = sock.collect(1s);
  CHECK(count(msgs, "WATCHDOG=1") >= 3);
  env.daemon().signal(SIGTERM);
  CHECK(sock.wait_for("STOPPING=1", 10s));
  CHECK(env.daemon().wait(60s) == 0);
}

TEST_CASE("systemd: a wedged worker thread stops the watchdog's keep-alives") {
  sim_env env;
  notify_socket sock(env.dir() / "notify");
  env.create_guest(5);
  add_disk(env, 5, env.make_image("disk.img", 16 << 20));
  env.start_daemon(
      {}, {"NOTIFY_SOCKET=" + (env.dir() / "notify").string(), "WATCHDOG_USEC=400000", "XBD_FAULT=consumed:20:stall"});
  REQUIRE(sock.wait_for("READY=1", 10s));
  CHECK(count(sock.collect(600ms), "WATCHDOG=1") >= 1);
  auto fe =
      env.start_frontend(5, {"--devid", "51712", "--rw", "randread", "--runtime", "30", "--timeout", "5"}, "reader");
  CHECK(env.log_shows("no longer feeding systemd's watchdog", 20s));
  sock.collect(300ms);  // what was on its way
  CHECK(count(sock.collect(1s), "WATCHDOG=1") == 0);
  env.daemon().signal(SIGKILL);
  CHECK(fe->wait(60s).has_value());
}
