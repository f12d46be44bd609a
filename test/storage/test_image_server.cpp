// The image server against the real qemu-storage-daemon: images made by
// qemu-img, read and written through the export with libnbd, checked with
// qemu-img afterwards.
#include "blkback/storage/image_server.hpp"
#include "test/integration/process.hpp"

#include <doctest/doctest.h>
#include <libnbd.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace asio = boost::asio;
namespace fs = std::filesystem;
using namespace xbd::blkback::storage;
using namespace std::chrono_literals;

namespace {

constexpr std::size_t image_size = 4 << 20;

// A directory of its own per test, removed afterwards.
struct scratch {
  fs::path dir;
  scratch() {
    dir =
        fs::temp_directory_path() / ("xbd-qsd-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter()++));
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~scratch() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  static int& counter() {
    static int n = 0;
    return n;
  }
};

xbd::test::run_result run(std::vector<std::string> argv, const scratch& s) {
  return xbd::test::run(std::move(argv), {}, s.dir / "tool.out", 30s);
}

std::vector<char> pattern(std::size_t size, char seed) {
  std::vector<char> v(size);
  for (std::size_t i = 0; i < size; ++i) v[i] = static_cast<char>(seed + static_cast<char>(i / 512) * 7 + (i % 251));
  return v;
}

void write_file(const fs::path& p, const std::vector<char>& data) {
  std::ofstream out(p, std::ios::binary);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

// Runs the io_context until `f` is ready (bounded).
template <class T>
T wait_for(asio::io_context& io, std::future<T>& f, std::chrono::milliseconds limit = 30s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (f.wait_for(0s) != std::future_status::ready) {
    if (std::chrono::steady_clock::now() > deadline) FAIL("not ready within ", limit.count(), " ms");
    if (io.stopped()) io.restart();  // it ran out of work before this was posted
    io.run_one_for(10ms);
  }
  return f.get();
}

// Runs the io_context for a while, whether or not it has work.
void run_for(asio::io_context& io, std::chrono::milliseconds d) {
  if (io.stopped()) io.restart();
  io.run_for(d);
}

struct started {
  std::unique_ptr<image_server> server;
  xbd::asio_xen::error_code ec;
  std::string detail;
};

started start(asio::io_context& io, image_format f, const fs::path& image, const image_server_options& o) {
  auto detail = std::make_shared<std::string>();
  auto fut = asio::co_spawn(io, image_server::start(f, image, o, *detail), asio::use_future);
  auto r = wait_for(io, fut);
  started s;
  s.detail = *detail;
  if (r)
    s.server = std::move(*r);
  else
    s.ec = r.error();
  return s;
}

void stop(asio::io_context& io, image_server& server) {
  auto fut = asio::co_spawn(io, server.stop(), asio::use_future);
  wait_for(io, fut, 10s);
}

image_server_options options(const scratch& s, std::string name = "5-51712") {
  image_server_options o;
  o.runtime_dir = s.dir / "run";
  o.name = std::move(name);
  o.start_timeout = 10s;
  return o;
}

// A libnbd connection to the server's export.
struct client {
  nbd_handle* h = nbd_create();
  explicit client(const nbd_target& t) {
    REQUIRE(h);
    REQUIRE(nbd_set_export_name(h, t.export_name.c_str()) == 0);
    const int rc = nbd_connect_unix(h, t.socket.c_str());
    INFO("libnbd: ", (nbd_get_error() ? nbd_get_error() : ""));
    REQUIRE(rc == 0);
  }
  ~client() {
    nbd_shutdown(h, 0);
    nbd_close(h);
  }
  std::vector<char> read(std::uint64_t offset, std::size_t size) {
    std::vector<char> v(size);
    const int rc = nbd_pread(h, v.data(), size, offset, 0);
    INFO("libnbd: ", (nbd_get_error() ? nbd_get_error() : ""));
    REQUIRE(rc == 0);
    return v;
  }
  int write(std::uint64_t offset, const std::vector<char>& data) {
    return nbd_pwrite(h, data.data(), data.size(), offset, 0);
  }
};

bool process_gone(int pid) { return pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH; }

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// The first line QMP sends on a new connection.
std::string qmp_greeting(const fs::path& sock) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, sock.c_str(), sizeof addr.sun_path - 1);
  std::string line;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char c = 0;
    while (line.size() < 4096 && ::read(fd, &c, 1) == 1 && c != '\n') line += c;
  }
  ::close(fd);
  return line;
}

}  // namespace

TEST_SUITE("image server") {
  TEST_CASE("a qcow2 image over a raw backing file is read and written through the export and stays consistent") {
    scratch s;
    const auto base = pattern(image_size, 1);
    write_file(s.dir / "base.raw", base);
    REQUIRE(run({"/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", "-b", (s.dir / "base.raw").string(), "-F", "raw",
                 (s.dir / "top.qcow2").string()},
                s)
                .status == 0);
    asio::io_context io;
    auto o = options(s);
    const auto t0 = std::chrono::steady_clock::now();
    auto st = start(io, image_format::qcow2, s.dir / "top.qcow2", o);
    INFO("detail: ", st.detail);
    REQUIRE(st.server);
    MESSAGE("started in ",
            std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count(),
            " ms");
    const auto& t = st.server->target();
    CHECK(t.via == nbd_target::transport::unix_socket);
    CHECK(t.export_name == "5-51712");
    CHECK(t.socket == o.runtime_dir / "qsd-5-51712" / "nbd.sock");
    CHECK(qmp_greeting(st.server->qmp_socket()).starts_with("{\"QMP\""));
    CHECK((fs::status(o.runtime_dir / "qsd-5-51712").permissions() & fs::perms::all) == fs::perms::owner_all);
    CHECK(st.server->restarts() == 0);

    auto expected = base;
    const auto update = pattern(64 << 10, 99);
    {
      client c(t);
      CHECK(nbd_get_size(c.h) == static_cast<std::int64_t>(image_size));
      CHECK(nbd_is_read_only(c.h) == 0);
      CHECK(c.read(0, image_size) == base);
      REQUIRE(c.write(1 << 20, update) == 0);
      REQUIRE(nbd_flush(c.h, 0) == 0);
      std::copy(update.begin(), update.end(), expected.begin() + (1 << 20));
      CHECK(c.read(0, image_size) == expected);
    }
    stop(io, *st.server);
    write_file(s.dir / "expected.raw", expected);
    auto check = run({"/usr/bin/qemu-img", "check", "-q", (s.dir / "top.qcow2").string()}, s);
    INFO("qemu-img check: ", check.output);
    CHECK(check.status == 0);
    auto cmp = run({"/usr/bin/qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", (s.dir / "top.qcow2").string(),
                    (s.dir / "expected.raw").string()},
                   s);
    INFO("qemu-img compare: ", cmp.output);
    CHECK(cmp.status == 0);
    // The backing file was only read.
    std::ifstream in(s.dir / "base.raw", std::ios::binary);
    std::vector<char> after((std::istreambuf_iterator<char>(in)), {});
    CHECK(after == base);
  }

  TEST_CASE("a read-only export refuses writes and serves reads") {
    scratch s;
    const auto base = pattern(image_size, 3);
    write_file(s.dir / "base.raw", base);
    REQUIRE(run({"/usr/bin/qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", (s.dir / "base.raw").string(),
                 (s.dir / "x.qcow2").string()},
                s)
                .status == 0);
    asio::io_context io;
    auto o = options(s);
    o.writable = false;
    auto st = start(io, image_format::qcow2, s.dir / "x.qcow2", o);
    INFO("detail: ", st.detail);
    REQUIRE(st.server);
    {
      client c(st.server->target());
      CHECK(nbd_is_read_only(c.h) == 1);
      CHECK(c.read(0, 65536) == std::vector<char>(base.begin(), base.begin() + 65536));
      CHECK(c.write(0, pattern(4096, 7)) == -1);
    }
    stop(io, *st.server);
    auto cmp = run({"/usr/bin/qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", (s.dir / "x.qcow2").string(),
                    (s.dir / "base.raw").string()},
                   s);
    CHECK(cmp.status == 0);
  }

  TEST_CASE("a qemu-storage-daemon killed with SIGKILL is restarted behind the same socket") {
    scratch s;
    REQUIRE(run({"/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", (s.dir / "x.qcow2").string(), "4M"}, s).status ==
            0);
    asio::io_context io;
    auto o = options(s);
    auto st = start(io, image_format::qcow2, s.dir / "x.qcow2", o);
    INFO("detail: ", st.detail);
    REQUIRE(st.server);
    auto& server = *st.server;
    const auto data = pattern(8192, 5);
    {
      client c(server.target());
      REQUIRE(c.write(0, data) == 0);
      REQUIRE(nbd_flush(c.h, 0) == 0);
    }
    const int first = server.pid();
    REQUIRE(first > 0);
    REQUIRE(::kill(first, SIGKILL) == 0);
    const auto t0 = std::chrono::steady_clock::now();
    const auto deadline = t0 + 15s;
    while (!(server.restarts() == 1 && server.pid() > 0 && server.pid() != first) &&
           std::chrono::steady_clock::now() < deadline)
      run_for(io, 10ms);
    REQUIRE(server.restarts() == 1);
    CHECK(server.pid() != first);
    CHECK(process_gone(first));
    // A client connecting now waits in the listening socket's backlog if
    // the new qsd is not serving yet; the flushed data is there.
    {
      client c(server.target());
      CHECK(c.read(0, 8192) == data);
    }
    // Its QMP socket is back too (qsd replaces the stale one), once the new
    // qsd has got that far: the NBD socket is ours and answered before.
    std::string greeting;
    for (int i = 0; i < 100 && !greeting.starts_with("{\"QMP\""); ++i) {
      greeting = qmp_greeting(server.qmp_socket());
      if (!greeting.starts_with("{\"QMP\"")) std::this_thread::sleep_for(20ms);
    }
    CHECK(greeting.starts_with("{\"QMP\""));
    MESSAGE("back in ",
            std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count(),
            " ms");
    stop(io, server);
    // SIGKILL may leave leaked clusters (status 3), never corruption (2).
    auto check = run({"/usr/bin/qemu-img", "check", "-q", (s.dir / "x.qcow2").string()}, s);
    CHECK((check.status == 0 || check.status == 3));
  }

  TEST_CASE("the destructor alone ends qemu-storage-daemon and removes the directory") {
    scratch s;
    REQUIRE(run({"/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", (s.dir / "x.qcow2").string(), "4M"}, s).status ==
            0);
    asio::io_context io;
    auto o = options(s);
    auto st = start(io, image_format::qcow2, s.dir / "x.qcow2", o);
    INFO("detail: ", st.detail);
    REQUIRE(st.server);
    const int pid = st.server->pid();
    const fs::path dir = o.runtime_dir / "qsd-5-51712";
    REQUIRE(fs::exists(dir));
    const auto t0 = std::chrono::steady_clock::now();
    st.server.reset();
    const auto took = std::chrono::steady_clock::now() - t0;
    CHECK(took < 3500ms);
    CHECK(process_gone(pid));
    CHECK_FALSE(fs::exists(dir));
    run_for(io, 50ms);  // the supervisor notices and ends
    auto check = run({"/usr/bin/qemu-img", "check", "-q", (s.dir / "x.qcow2").string()}, s);
    CHECK(check.status == 0);  // SIGTERM: qsd closed the image cleanly
  }

  TEST_CASE("stop ends qemu-storage-daemon, removes the directory, and is idempotent") {
    scratch s;
    REQUIRE(run({"/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", (s.dir / "x.qcow2").string(), "4M"}, s).status ==
            0);
    asio::io_context io;
    auto o = options(s, "stop-test");
    auto st = start(io, image_format::qcow2, s.dir / "x.qcow2", o);
    REQUIRE(st.server);
    const int pid = st.server->pid();
    const auto t0 = std::chrono::steady_clock::now();
    stop(io, *st.server);
    CHECK(std::chrono::steady_clock::now() - t0 < 3500ms);
    CHECK(process_gone(pid));
    CHECK_FALSE(fs::exists(o.runtime_dir / "qsd-stop-test"));
    stop(io, *st.server);
    CHECK(st.server->restarts() == 0);
    st.server.reset();
  }

  TEST_CASE("a missing image fails with qemu-storage-daemon's own words and leaves nothing behind") {
    scratch s;
    asio::io_context io;
    auto o = options(s);
    const auto t0 = std::chrono::steady_clock::now();
    auto st = start(io, image_format::qcow2, s.dir / "missing.qcow2", o);
    const auto took = std::chrono::steady_clock::now() - t0;
    CHECK_FALSE(st.server);
    CHECK(st.ec);
    INFO("detail: ", st.detail);
    CHECK(st.detail.find("Could not open") != std::string::npos);
    CHECK(st.detail.find("missing.qcow2") != std::string::npos);
    CHECK(st.detail.find("No such file or directory") != std::string::npos);
    CHECK(st.detail.find("--blockdev") == std::string::npos);
    CHECK(took < o.start_timeout);
    CHECK_FALSE(fs::exists(o.runtime_dir / "qsd-5-51712"));
  }

  TEST_CASE("an image in another format than named fails with qemu-storage-daemon's reason") {
    scratch s;
    write_file(s.dir / "plain.raw", pattern(image_size, 0));
    asio::io_context io;
    auto st = start(io, image_format::qcow2, s.dir / "plain.raw", options(s));
    CHECK_FALSE(st.server);
    INFO("detail: ", st.detail);
    CHECK(st.detail.find("plain.raw: Image is not in qcow2 format") != std::string::npos);
  }

  TEST_CASE("a missing program fails at once, saying what to install") {
    scratch s;
    asio::io_context io;
    auto o = options(s);
    o.program = "/nonexistent/qemu-storage-daemon";
    auto st = start(io, image_format::qcow2, s.dir / "x.qcow2", o);
    CHECK_FALSE(st.server);
    CHECK(st.ec == std::errc::no_such_file_or_directory);
    CHECK(st.detail.find("/nonexistent/qemu-storage-daemon is not an executable file") != std::string::npos);
    o.program = "xbd-no-such-qemu-storage-daemon";
    st = start(io, image_format::qcow2, s.dir / "x.qcow2", o);
    CHECK(st.detail.find("not found in PATH") != std::string::npos);
    CHECK(describe_image_server_program("/nonexistent/qsd").find("not an executable") != std::string::npos);
  }

  TEST_CASE("a program that never serves fails after the start timeout") {
    scratch s;
    write_file(s.dir / "fake-qsd", {});
    {
      std::ofstream out(s.dir / "fake-qsd");
      out << "#!/bin/sh\necho 'waiting forever' >&2\nexec sleep 60\n";
    }
    fs::permissions(s.dir / "fake-qsd", fs::perms::owner_all);
    asio::io_context io;
    auto o = options(s);
    o.program = s.dir / "fake-qsd";
    o.start_timeout = 500ms;
    const auto t0 = std::chrono::steady_clock::now();
    auto st = start(io, image_format::qcow2, s.dir / "x.qcow2", o);
    const auto took = std::chrono::steady_clock::now() - t0;
    CHECK_FALSE(st.server);
    CHECK(st.ec == std::errc::timed_out);
    INFO("detail: ", st.detail);
    CHECK(st.detail.find("within 500 ms") != std::string::npos);
    CHECK(st.detail.find("waiting forever") != std::string::npos);
    CHECK(took < 2s);
  }

  TEST_CASE("a vhd image is served through the vpc driver") {
    scratch s;
    REQUIRE(run({"/usr/bin/qemu-img", "create", "-q", "-f", "vpc", (s.dir / "x.vhd").string(), "4M"}, s).status == 0);
    asio::io_context io;
    auto o = options(s, "vhd-test");
    o.direct = true;
    auto st = start(io, image_format::vpc, s.dir / "x.vhd", o);
    INFO("detail: ", st.detail);
    REQUIRE(st.server);
    const auto data = pattern(128 << 10, 11);
    std::int64_t size = 0;
    {
      client c(st.server->target());
      size = nbd_get_size(c.h);
      REQUIRE(size >= static_cast<std::int64_t>(data.size() + (256 << 10)));
      REQUIRE(c.write(256 << 10, data) == 0);
      REQUIRE(nbd_flush(c.h, 0) == 0);
      CHECK(c.read(256 << 10, data.size()) == data);
    }
    stop(io, *st.server);
    std::vector<char> expected(static_cast<std::size_t>(size), 0);
    std::copy(data.begin(), data.end(), expected.begin() + (256 << 10));
    write_file(s.dir / "expected.raw", expected);
    auto cmp = run({"/usr/bin/qemu-img", "compare", "-q", "-f", "vpc", "-F", "raw", (s.dir / "x.vhd").string(),
                    (s.dir / "expected.raw").string()},
                   s);
    INFO("qemu-img compare: ", cmp.output);
    CHECK(cmp.status == 0);
  }

  TEST_CASE("describe_image_server_program names the program and its version") {
    const auto d = describe_image_server_program();
    INFO(d);
    CHECK(d.find("/qemu-storage-daemon: qemu-storage-daemon version ") != std::string::npos);
    CHECK(describe_image_server_program("xbd-no-such-qemu-storage-daemon").find("not found in PATH") !=
          std::string::npos);
  }

  TEST_CASE("qemu-storage-daemon inherits no descriptor and no environment of the daemon") {
    scratch s;
    REQUIRE(run({"/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", (s.dir / "x.qcow2").string(), "4M"}, s).status ==
            0);
    // Neither close-on-exec nor in the environment: only a clean start
    // keeps them from the child.
    const fs::path marker = s.dir / "marker";
    const int leak = ::open(marker.c_str(), O_WRONLY | O_CREAT, 0600);
    REQUIRE(leak >= 0);
    ::setenv("XBD_SECRET_FOR_TEST", "1", 1);
    asio::io_context io;
    auto st = start(io, image_format::qcow2, s.dir / "x.qcow2", options(s));
    ::unsetenv("XBD_SECRET_FOR_TEST");
    ::close(leak);
    INFO("detail: ", st.detail);
    REQUIRE(st.server);
    const int pid = st.server->pid();
    const fs::path fds = "/proc/" + std::to_string(pid) + "/fd";
    bool stdin_null = false;
    for (const auto& e : fs::directory_iterator(fds)) {
      std::error_code ec;
      const auto target = fs::read_symlink(e.path(), ec).string();
      CHECK(target != marker.string());
      if (e.path().filename() == "0") stdin_null = target == "/dev/null";
      if (e.path().filename() == "3") CHECK(target.starts_with("socket:"));
    }
    CHECK(stdin_null);
    const auto env = read_all("/proc/" + std::to_string(pid) + "/environ");
    CHECK(env.find("XBD_SECRET_FOR_TEST") == std::string::npos);
    CHECK(env.find("PATH=") != std::string::npos);
    stop(io, *st.server);
  }

  TEST_CASE("where qemu-storage-daemon refuses io_uring, direct access falls back to aio=threads") {
    scratch s;
    REQUIRE(run({"/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", (s.dir / "x.qcow2").string(), "4M"}, s).status ==
            0);
    {
      std::ofstream out(s.dir / "no-uring-qsd");
      out << "#!/bin/sh\n"
             "case \"$*\" in *aio=io_uring*)\n"
             "  echo \"qemu-storage-daemon: --blockdev x: Unable to use io_uring: failed to init linux io_uring ring: "
             "Operation not permitted\" >&2; exit 1;;\n"
             "esac\n"
             "exec /usr/bin/qemu-storage-daemon \"$@\"\n";
    }
    fs::permissions(s.dir / "no-uring-qsd", fs::perms::owner_all);
    asio::io_context io;
    auto o = options(s);
    o.program = s.dir / "no-uring-qsd";
    o.direct = true;
    auto st = start(io, image_format::qcow2, s.dir / "x.qcow2", o);
    INFO("detail: ", st.detail);
    REQUIRE(st.server);
    auto cmdline = read_all("/proc/" + std::to_string(st.server->pid()) + "/cmdline");
    CHECK(cmdline.find("cache.direct=on,aio=threads") != std::string::npos);
    {
      client c(st.server->target());
      CHECK(c.read(0, 4096) == std::vector<char>(4096, 0));
    }
    stop(io, *st.server);
  }

  TEST_CASE("qemu-storage-daemon dies with the process that started it") {
    scratch s;
    REQUIRE(run({"/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", (s.dir / "x.qcow2").string(), "4M"}, s).status ==
            0);
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    const pid_t daemon = ::fork();
    REQUIRE(daemon >= 0);
    if (daemon == 0) {
      // A stand-in daemon: starts a server, says which qsd it got, waits.
      ::close(fds[0]);
      asio::io_context io;
      auto detail = std::make_shared<std::string>();
      auto fut = asio::co_spawn(io, image_server::start(image_format::qcow2, s.dir / "x.qcow2", options(s), *detail),
                                asio::use_future);
      while (fut.wait_for(0s) != std::future_status::ready) io.run_one_for(10ms);
      auto r = fut.get();
      const int pid = r ? (*r)->pid() : -1;
      (void)!::write(fds[1], &pid, sizeof pid);
      ::pause();
      ::_exit(0);
    }
    ::close(fds[1]);
    int qsd = -1;
    REQUIRE(::read(fds[0], &qsd, sizeof qsd) == static_cast<ssize_t>(sizeof qsd));
    ::close(fds[0]);
    REQUIRE(qsd > 0);
    ::kill(daemon, SIGKILL);
    int status = 0;
    ::waitpid(daemon, &status, 0);
    // qsd was the stand-in's child, reparented and reaped by init (or a
    // subreaper) once it is killed.
    CHECK(xbd::test::eventually(
        [&] {
          return process_gone(qsd) ||
                 read_all("/proc/" + std::to_string(qsd) + "/stat").find(" Z ") != std::string::npos;
        },
        5s));
  }
}
