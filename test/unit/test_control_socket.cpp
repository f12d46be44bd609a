// The control socket's server: one JSON line per request line, and bounds
// on everything a client could hold (blkback/control/control_socket.hpp).
// The server runs on its own thread, as on the daemon's control thread;
// the test's clients are plain blocking sockets.
#include "blkback/control/control_socket.hpp"
#include "blkback/control/json_writer.hpp"

#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

using namespace xbd::blkback;
namespace asio = boost::asio;
using namespace std::chrono_literals;

namespace {

std::filesystem::path short_temp_dir() {
  char tmpl[] = "/tmp/xbdctl.XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  return tmpl;
}

control_bounds quick() {
  control_bounds b;
  b.max_line = 64;
  b.max_clients = 3;
  b.idle = 400ms;
  b.answer = 300ms;
  return b;
}

// A control socket served on a thread of its own.
struct server {
  std::filesystem::path dir = short_temp_dir();
  std::string path = (dir / "ctl.sock").string();
  asio::io_context ioc;
  std::optional<control_socket> srv;
  std::thread thread;

  explicit server(control_bounds b = quick()) {
    auto l = bind_control_socket(path);
    REQUIRE(std::holds_alternative<control_listener>(l));
    srv.emplace(ioc.get_executor(), std::get<control_listener>(std::move(l)), b, [](std::string_view line) {
      // "big": an answer larger than any socket buffer.
      if (line == "big") return std::string(4 << 20, 'x');
      return json_writer().begin_object().field("echo", line).end_object().take();
    });
    asio::post(ioc, [this] { srv->start(); });
    thread = std::thread([this] { ioc.run(); });
  }
  // Stops it; whether it stopped in time.
  bool stop() {
    if (!thread.joinable()) return true;
    std::promise<void> done;
    asio::post(ioc, [&] { srv->stop([&] { done.set_value(); }); });
    const bool in_time = done.get_future().wait_for(5s) == std::future_status::ready;
    if (in_time) thread.join();
    return in_time;
  }
  std::size_t clients() {
    std::promise<std::size_t> n;
    asio::post(ioc, [&] { n.set_value(srv->clients()); });
    return n.get_future().get();
  }
  ~server() {
    if (!stop()) {
      ioc.stop();
      thread.join();
    }
    srv.reset();
    std::filesystem::remove_all(dir);
  }
};

struct client {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  explicit client(const std::string& path) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  }
  ~client() { ::close(fd); }
  void send(std::string_view s) const {
    while (!s.empty()) {
      const ssize_t n = ::send(fd, s.data(), s.size(), MSG_NOSIGNAL);
      REQUIRE(n > 0);
      s.remove_prefix(static_cast<std::size_t>(n));
    }
  }
  // Up to and without the next newline; "" at the end or after `limit`.
  std::string line(std::chrono::milliseconds limit = 2000ms) const {
    std::string s;
    char c;
    while (poll_in(limit) && ::recv(fd, &c, 1, 0) == 1) {
      if (c == '\n') return s;
      s += c;
    }
    return {};
  }
  bool poll_in(std::chrono::milliseconds limit) const {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, static_cast<int>(limit.count())) == 1;
  }
  // Reads until the server closes; the bytes read, or -1 after `limit`.
  long drain(std::chrono::milliseconds limit = 2000ms) const {
    long total = 0;
    char buf[65536];
    for (;;) {
      if (!poll_in(limit)) return -1;
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) return total;
      total += n;
    }
  }
};

template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = 3000ms) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return pred();
}

}  // namespace

TEST_CASE("control socket: each request line gets one JSON answer line, many on one connection") {
  server s;
  client c(s.path);
  c.send("list\n");
  CHECK(c.line() == R"({"echo":"list"})");
  c.send("show 5/51712\r\nstats\n");  // CRLF as netcat may send it
  CHECK(c.line() == R"({"echo":"show 5/51712"})");
  CHECK(c.line() == R"({"echo":"stats"})");
  c.send("sta");
  c.send("ts --json\n");  // a line in pieces
  CHECK(c.line() == R"({"echo":"stats --json"})");
}

TEST_CASE("control socket: the file is mode 0600 and is removed when the server stops") {
  server s;
  struct stat st {};
  REQUIRE(::stat(s.path.c_str(), &st) == 0);
  CHECK(S_ISSOCK(st.st_mode));
  CHECK((st.st_mode & 0777) == 0600);
  CHECK(s.stop());
  CHECK_FALSE(std::filesystem::exists(s.path));
}

TEST_CASE("control socket: a line past the bound gets one error answer and the connection closes") {
  server s;
  client c(s.path);
  // A megabyte without a newline, written from a thread: the server stops
  // reading it after the bound.
  std::thread writer([fd = c.fd] {
    const std::string junk(1 << 20, 'g');
    (void)!::send(fd, junk.data(), junk.size(), MSG_NOSIGNAL);
  });
  CHECK(c.line() == R"({"error":"request longer than 64 bytes"})");
  CHECK(c.drain() == 0);  // then closed
  writer.join();
  client next(s.path);
  next.send("list\n");
  CHECK(next.line() == R"({"echo":"list"})");
}

TEST_CASE("control socket: a client that does not read its answer is dropped, and others are served meanwhile") {
  auto b = quick();
  b.idle = 5000ms;
  server s(b);
  client lazy(s.path);
  lazy.send("big\n");
  client other(s.path);
  other.send("list\n");
  CHECK(other.line() == R"({"echo":"list"})");  // while `lazy` holds its answer
  std::this_thread::sleep_for(700ms);           // past the 300 ms bound
  const long got = lazy.drain();
  CHECK(got >= 0);              // closed by the server...
  CHECK(got < (4l << 20) + 1);  // ...before the whole answer was written
  CHECK(s.clients() == 1u);     // `other` only
  other.send("list\n");
  CHECK(other.line() == R"({"echo":"list"})");
}

TEST_CASE("control socket: a client that leaves mid-answer costs nothing") {
  server s;
  {
    client c(s.path);
    c.send("big\nbig\n");
    char buf[1000];
    REQUIRE(c.poll_in(2000ms));
    CHECK(::recv(c.fd, buf, sizeof buf, 0) > 0);
  }  // closed with most of the answer unread
  client next(s.path);
  next.send("list\n");
  CHECK(next.line() == R"({"echo":"list"})");
  CHECK(eventually([&] { return s.clients() == 1; }));
}

TEST_CASE("control socket: an idle client is closed after the idle bound") {
  server s;
  client c(s.path);
  c.send("list\n");
  CHECK(c.line() == R"({"echo":"list"})");
  CHECK(c.drain(2000ms) == 0);  // 400 ms later
  CHECK(eventually([&] { return s.clients() == 0; }));
}

TEST_CASE("control socket: past the bound on clients the next one is answered with an error and closed") {
  server s;
  client a(s.path), b(s.path), c(s.path);
  for (const client* x : {&a, &b, &c}) {
    x->send("list\n");
    CHECK(x->line() == R"({"echo":"list"})");
  }
  client d(s.path);
  CHECK(d.line() == R"({"error":"too many clients (3); try again"})");
  CHECK(d.drain() == 0);
  a.send("list\n");  // the others go on
  CHECK(a.line() == R"({"echo":"list"})");
}

TEST_CASE("control socket: stop() ends connected clients and reports when all have gone") {
  server s;
  client c(s.path);
  c.send("list\n");
  CHECK(c.line() == R"({"echo":"list"})");
  CHECK(s.stop());
  CHECK(c.drain() == 0);
}

TEST_CASE("control socket: a stale socket is replaced, a live one is not taken, anything else is refused") {
  SUBCASE("a daemon answers on it") {
    server s;
    auto l = bind_control_socket(s.path);
    REQUIRE(std::holds_alternative<std::string>(l));
    CHECK(std::get<std::string>(l).find("a running daemon answers on it (pid ") != std::string::npos);
    client c(s.path);  // still the first one's
    c.send("list\n");
    CHECK(c.line() == R"({"echo":"list"})");
  }
  SUBCASE("a socket nobody listens on, as a killed daemon leaves it") {
    const auto dir = short_temp_dir();
    const std::string path = (dir / "ctl.sock").string();
    auto first = bind_control_socket(path);
    REQUIRE(std::holds_alternative<control_listener>(first));
    ::close(std::get<control_listener>(first).fd);  // the file stays
    REQUIRE(std::filesystem::exists(path));
    auto second = bind_control_socket(path);
    REQUIRE(std::holds_alternative<control_listener>(second));
    ::close(std::get<control_listener>(second).fd);
    std::filesystem::remove_all(dir);
  }
  SUBCASE("a file that is not a socket, a path too long, a missing directory") {
    const auto dir = short_temp_dir();
    std::ofstream(dir / "file") << "x";
    auto l = bind_control_socket((dir / "file").string());
    REQUIRE(std::holds_alternative<std::string>(l));
    CHECK(std::get<std::string>(l) == "it exists and is not a socket");
    CHECK(std::filesystem::exists(dir / "file"));
    auto longer = bind_control_socket("/" + std::string(120, 'a'));
    REQUIRE(std::holds_alternative<std::string>(longer));
    CHECK(std::get<std::string>(longer).find("longer than a unix socket") != std::string::npos);
    auto nested = bind_control_socket((dir / "run" / "ctl.sock").string());
    REQUIRE(std::holds_alternative<control_listener>(nested));
    ::close(std::get<control_listener>(nested).fd);
    CHECK((std::filesystem::status(dir / "run").permissions() & std::filesystem::perms::all) ==
          std::filesystem::perms::owner_all);
    std::filesystem::remove_all(dir);
  }
}
