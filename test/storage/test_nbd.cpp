// The NBD driver against real nbdkit servers, each test with its own.
#include "test/storage/nbd_rig.hpp"
#include "test/storage/resolver_shim.hpp"
#include "test/unit/run.hpp"

#include <doctest/doctest.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <fstream>
#include <vector>

using namespace xbd::test::nbd_rig;

// Reads from the start until a read succeeds (the server is back), for
// at most 40 tries 100 ms apart.
template <class Rig, class Buffer>
bool reads_again(Rig& r, Buffer& back) {
  for (int i = 0; i < 40; ++i) {
    op_done again;
    r.read(0, back, again);
    REQUIRE(drive(
        r.io, [&] { return again.finished(); }, 5s));
    if (!again.ec) return true;
    idle(r.io, 100ms);
  }
  return false;
}

TEST_CASE("an NBD export over a unix socket reads back what was written, 32 operations in flight") {
  xbd::test::nbd_server srv({});
  rig r;
  REQUIRE_FALSE(r.open(srv.target(), quick()));
  const properties& p = r.st->props();
  CHECK(p.size == 64ull << 20);
  CHECK(p.writable);
  CHECK_FALSE(p.direct);
  CHECK(p.flush);
  CHECK(p.discard);
  CHECK_FALSE(p.discard_secure);
  CHECK(p.logical_sector == 512);
  CHECK(p.max_queues == 0);  // nbdkit's memory plugin offers multi-conn
  CHECK(r.st->current_size().value() == 64ull << 20);
  r.open_channel();
  write_and_verify(r, 3 << 20, 8 << 20, 1);
}

TEST_CASE("an NBD export over TCP on 127.0.0.1 reads back what was written") {
  xbd::test::nbd_server srv([] {
    server_options o;
    o.tcp = true;
    return o;
  }());
  rig r;
  REQUIRE_FALSE(r.open(srv.target(), quick()));
  CHECK(r.st->name().find("at 127.0.0.1:") != std::string::npos);
  r.open_channel();
  write_and_verify(r, 0, 4 << 20, 2);
}

TEST_CASE("a flush succeeds and a discarded range reads back as zeroes while the rest keeps its data") {
  xbd::test::nbd_server srv({});
  rig r;
  REQUIRE_FALSE(r.open(srv.target(), quick()));
  CHECK(r.st->props().discard_granularity >= 512);
  r.open_channel();
  flush_and_discard_verified(r);
}

TEST_CASE("a discard longer than one NBD command can carry goes out in pieces and zeroes the whole range") {
  xbd::test::nbd_server srv([] {
    server_options o;
    o.plugin = {"memory", "6G"};
    return o;
  }());
  rig r;
  REQUIRE_FALSE(r.open(srv.target(), quick()));
  r.open_channel();
  const std::uint64_t far = (9ull << 29) - 65536;  // just short of 4.5 GiB, past the 32-bit length
  auto data = pattern(65536, 11);
  REQUIRE(r.all_ok(r.transfer(true, far, data, 65536, 1)));
  op_done d;
  r.discard(4096, (5ull << 30) - 4096, d);
  REQUIRE(drive(r.io, [&] { return d.finished(); }));
  CHECK_FALSE(d.ec);
  std::vector<std::byte> back(65536, std::byte{1});
  REQUIRE(r.all_ok(r.transfer(false, far, back, 65536, 1)));
  CHECK(std::all_of(back.begin(), back.end(), [](std::byte b) { return b == std::byte{0}; }));
}

TEST_CASE("a secure discard is not supported and a server without multi-conn allows one ring") {
  xbd::test::nbd_server srv(filtered("multi-conn", {"multi-conn-mode=disable"}));
  rig r;
  REQUIRE_FALSE(r.open(srv.target(), quick()));
  CHECK(r.st->props().max_queues == 1);
  r.open_channel();
  op_done d;
  op_done::in_call = true;
  r.ch->discard(0, 4096, true, d);
  op_done::in_call = false;
  REQUIRE(drive(r.io, [&] { return d.finished(); }));
  CHECK(d.ec == asio::error::operation_not_supported);
  CHECK_FALSE(d.inline_call);
}

TEST_CASE("a read-only export refuses a writable open with EROFS and a reason, and serves reads opened read-only") {
  xbd::test::nbd_server srv([] {
    server_options o;
    o.read_only = true;
    return o;
  }());
  rig r;
  const error_code ec = r.open(srv.target(), quick(true));
  CHECK(ec == boost::system::errc::read_only_file_system);
  CHECK(r.detail.find("read-only") != std::string::npos);
  CHECK_FALSE(r.st);

  REQUIRE_FALSE(r.open(srv.target(), quick(false)));
  CHECK_FALSE(r.st->props().writable);
  CHECK_FALSE(r.st->props().discard);
  r.open_channel();
  std::vector<std::byte> back(1 << 20, std::byte{1});
  CHECK(r.all_ok(r.transfer(false, 0, back, 64 * 1024, 16)));
  CHECK(std::all_of(back.begin(), back.end(), [](std::byte b) { return b == std::byte{0}; }));
  op_done w;
  r.write(0, back, w);
  REQUIRE(drive(r.io, [&] { return w.finished(); }));
  CHECK(w.ec == boost::system::errc::read_only_file_system);
  CHECK_FALSE(w.inline_call);
}

TEST_CASE("an export whose size is not whole sectors is refused with a reason") {
  xbd::test::nbd_server srv([] {
    server_options o;
    o.plugin = {"memory", "1000"};
    return o;
  }());
  rig r;
  CHECK(r.open(srv.target(), quick()) == boost::system::errc::invalid_argument);
  CHECK(r.detail.find("1000 bytes") != std::string::npos);
}

TEST_CASE("a refused connection and an unknown export fail the open at once with libnbd's reason") {
  rig r;
  nbd_target t;
  t.host = "127.0.0.1";
  t.port = std::to_string(xbd::test::free_tcp_port());
  auto start = clock_type::now();
  CHECK(r.open(t, quick()));
  CHECK(r.detail.find("refused") != std::string::npos);
  CHECK(ms_since(start) < 1000);

  xbd::test::nbd_server srv(filtered("exportname", {"exportname-strict=true", "exportname=good"}));
  auto target = srv.target();
  target.export_name = "missing";
  r.detail.clear();
  CHECK(r.open(target, quick()));
  MESSAGE("unknown export: " << r.detail);
  CHECK_FALSE(r.detail.empty());
  target.export_name = "good";
  CHECK_FALSE(r.open(target, quick()));
}

TEST_CASE("an NBD server named by host name is reached: localhost, and the second address of a name with two") {
  xbd::test::nbd_server srv([] {
    server_options o;
    o.tcp = true;
    return o;
  }());
  // two.test: 127.0.0.2 first, where nothing listens (refused), then
  // 127.0.0.1, the server's.
  for (const char* name : {"localhost", xbd::test::resolver::two}) {
    CAPTURE(name);
    auto t = srv.target();
    t.host = name;
    rig r;
    const error_code ec = r.open(t, quick());
    REQUIRE_MESSAGE(!ec, r.detail);
    CHECK(r.st->name().find(std::string("at ") + name + ":") != std::string::npos);
    r.open_channel();
    write_and_verify(r, 1 << 20, 2 << 20, 7);
  }
}

TEST_CASE("a host name that does not resolve, or whose resolver does not answer, fails the open within the timeout") {
  rig r;
  nbd_target t;
  t.host = xbd::test::resolver::absent;
  auto start = clock_type::now();
  CHECK(r.open(t, quick()));
  MESSAGE("absent: " << r.detail);
  CHECK(r.detail.find("cannot resolve host name \"absent.test\"") != std::string::npos);
  CHECK(ms_since(start) < 1000);

  t.host = xbd::test::resolver::hang;
  auto o = quick();
  o.connect_timeout = 500ms;
  r.detail.clear();
  start = clock_type::now();
  CHECK(r.open(t, o) == boost::system::errc::timed_out);
  const double took = ms_since(start);
  MESSAGE("hung resolver: " << r.detail << " after " << took << " ms");
  CHECK(took >= 450);
  CHECK(took < 1500);  // the resolver hangs 3 s
  CHECK(r.detail.find("not resolved within 500 ms") != std::string::npos);
  xbd::test::resolver::release();
}

TEST_CASE("a channel whose host name lookup hangs holds up no other channel's I/O on the same thread") {
  xbd::test::nbd_server good({});
  xbd::test::nbd_server named([] {
    server_options o;
    o.tcp = true;
    return o;
  }());
  rig r;  // one io_context, one thread: a worker's rings
  REQUIRE_FALSE(r.open(good.target(), quick()));
  r.open_channel();
  auto slow_target = named.target();
  slow_target.host = xbd::test::resolver::slow;
  auto o = quick();
  o.connect_timeout = 1s;
  auto slow_store = xbd::test::run(r.io, open_nbd(slow_target, o, r.detail), 5s);
  REQUIRE(slow_store);
  REQUIRE(*slow_store);

  // From now on slow.test hangs; the slow channel starts connecting.
  xbd::test::resolver::hold(true);
  auto slow_channel = (*slow_store)->open_channel(xbd::blkback::worker{r.io.get_executor(), nullptr}, 8);
  REQUIRE(slow_channel);
  // A second ring on the same name waits for the same lookup.
  auto slow_second = (*slow_store)->open_channel(xbd::blkback::worker{r.io.get_executor(), nullptr}, 8);
  REQUIRE(slow_second);
  // Meanwhile the other channel's I/O goes on as usual: rounds of it, each
  // quick, until 20 of them ended while the lookup hung (it hangs 3 s).
  double worst = 0;
  int rounds_while_hung = 0;
  const auto give_up = clock_type::now() + 2s;
  for (std::uint64_t round = 0; rounds_while_hung < 20 && clock_type::now() < give_up; ++round) {
    const auto start = clock_type::now();
    write_and_verify(r, 0, 256 << 10, 100 + round);
    worst = std::max(worst, ms_since(start));
    if (xbd::test::resolver::hanging() > 0) ++rounds_while_hung;
  }
  MESSAGE(rounds_while_hung << " rounds of I/O while a lookup hung, the slowest " << worst << " ms");
  CHECK(rounds_while_hung >= 20);
  CHECK(worst < 500);
  CHECK(xbd::test::resolver::hanging() == 1);

  // Attempts end at the connect timeout and start again; once the name
  // resolves, the slow channel serves.
  xbd::test::resolver::hold(false);
  xbd::test::resolver::release();
  std::vector<std::byte> back(4096);
  op_done d;
  (*slow_channel)->read(0, back, d);
  REQUIRE(drive(
      r.io, [&] { return d.finished(); }, 5s));
  CHECK_FALSE(d.ec);
  slow_second->reset();
  slow_channel->reset();
  (*slow_store).reset();
}

TEST_CASE("a server that accepts but never answers fails the open within the connect timeout") {
  xbd::test::temp_dir dir;
  const int u = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un ua{};
  ua.sun_family = AF_UNIX;
  const auto path = (dir.path() / "silent").string();
  std::strncpy(ua.sun_path, path.c_str(), sizeof ua.sun_path - 1);
  REQUIRE(::bind(u, reinterpret_cast<sockaddr*>(&ua), sizeof ua) == 0);
  REQUIRE(::listen(u, 8) == 0);
  const int tcp = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in ta{};
  ta.sin_family = AF_INET;
  ta.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof ta;
  REQUIRE(::bind(tcp, reinterpret_cast<sockaddr*>(&ta), sizeof ta) == 0);
  REQUIRE(::listen(tcp, 8) == 0);
  REQUIRE(::getsockname(tcp, reinterpret_cast<sockaddr*>(&ta), &len) == 0);

  nbd_target over_unix;
  over_unix.via = nbd_target::transport::unix_socket;
  over_unix.socket = path;
  nbd_target over_tcp;
  over_tcp.host = "127.0.0.1";
  over_tcp.port = std::to_string(ntohs(ta.sin_port));
  for (const auto& t : {over_unix, over_tcp}) {
    rig r;
    auto o = quick();
    o.connect_timeout = 500ms;
    const auto start = clock_type::now();
    CHECK(r.open(t, o) == boost::system::errc::timed_out);
    const double took = ms_since(start);
    CHECK(took >= 450);
    CHECK(took < 2000);
    CHECK(r.detail.find("500 ms") != std::string::npos);
  }
  ::close(u);
  ::close(tcp);
}

TEST_CASE("reads the server fails complete with EIO at once while the others succeed and the channel stays usable") {
  xbd::test::nbd_server srv(filtered("error", {"error-pread=EIO", "error-pread-rate=50%"}));
  rig r;
  REQUIRE_FALSE(r.open(srv.target(), quick()));
  r.open_channel();
  auto data = pattern(2 << 20, 4);
  REQUIRE(r.all_ok(r.transfer(true, 0, data, 32 * 1024, 32)));
  std::vector<std::byte> back(data.size());
  const auto start = clock_type::now();
  auto results = r.transfer(false, 0, back, 32 * 1024, 32);
  CHECK(ms_since(start) < 5000);
  std::size_t failed = 0;
  for (std::size_t i = 0; i < results.size(); ++i) {
    if (results[i]) {
      CHECK(results[i] == boost::system::errc::io_error);
      ++failed;
    } else {
      CHECK(std::memcmp(back.data() + i * 32 * 1024, data.data() + i * 32 * 1024, 32 * 1024) == 0);
    }
  }
  CHECK(failed > 0);
  CHECK(failed < results.size());
  CHECK(r.all_ok(r.transfer(true, 0, data, 32 * 1024, 32)));
}

TEST_CASE("32 reads the server delays by 200 ms each finish in well under 32 times the delay") {
  xbd::test::nbd_server srv(filtered("delay", {"delay-read=200ms"}));
  rig r;
  REQUIRE_FALSE(r.open(srv.target(), quick()));
  r.open_channel();
  std::vector<std::byte> back(32 * 4096);
  const auto start = clock_type::now();
  CHECK(r.all_ok(r.transfer(false, 0, back, 4096, 32)));
  const double took = ms_since(start);
  MESSAGE("32 delayed reads took " << took << " ms");
  CHECK(took >= 190);
  CHECK(took < 1600);
}

TEST_CASE("a server killed mid-workload and restarted: the operations wait, then all succeed with the data") {
  xbd::test::temp_dir disk;
  const auto image = (disk.path() / "disk.img").string();
  std::ofstream(image).close();
  std::filesystem::resize_file(image, 16 << 20);
  auto opts = filtered("delay", {"delay-write=200ms"});
  opts.plugin = {"file", "file=" + image};
  xbd::test::nbd_server srv(opts);
  rig r;
  REQUIRE_FALSE(r.open(srv.target(), quick()));
  r.open_channel();
  auto before = pattern(2 << 20, 5);
  REQUIRE(r.all_ok(r.transfer(true, 0, before, 64 * 1024, 32)));

  // 32 writes on the wire (the server holds each 200 ms) when it dies.
  auto after = pattern(2 << 20, 6);
  std::vector<op_done> writes(32);
  for (std::size_t i = 0; i < writes.size(); ++i)
    r.write((4 << 20) + i * 65536, std::span(after).subspan(i * 65536, 65536), writes[i]);
  idle(r.io, 50ms);
  srv.kill();
  std::vector<std::byte> back(before.size());
  std::vector<op_done> reads(32);
  for (std::size_t i = 0; i < reads.size(); ++i) r.read(i * 65536, std::span(back).subspan(i * 65536, 65536), reads[i]);
  idle(r.io, 400ms);
  CHECK(std::none_of(writes.begin(), writes.end(), [](const op_done& d) { return d.finished(); }));
  CHECK(std::none_of(reads.begin(), reads.end(), [](const op_done& d) { return d.finished(); }));

  srv.start();
  const auto start = clock_type::now();
  REQUIRE(r.all_finished(writes));
  REQUIRE(r.all_finished(reads));
  MESSAGE("back " << ms_since(start) << " ms after the restart");
  for (const auto& d : writes) CHECK_FALSE(d.ec);
  for (const auto& d : reads) CHECK_FALSE(d.ec);
  CHECK(back == before);
  std::vector<std::byte> written(after.size());
  CHECK(r.all_ok(r.transfer(false, 4 << 20, written, 64 * 1024, 32)));
  CHECK(written == after);
}

TEST_CASE("a server killed for good: waiting operations fail with EIO once the reconnect window has passed") {
  xbd::test::nbd_server srv({});
  rig r;
  auto o = quick();
  o.reconnect = 1000ms;
  REQUIRE_FALSE(r.open(srv.target(), o));
  r.open_channel();
  write_and_verify(r, 0, 256 * 1024, 7);

  srv.kill();
  const auto lost = clock_type::now();
  std::vector<std::byte> back(256 * 1024);
  std::vector<op_done> reads(8);
  for (std::size_t i = 0; i < reads.size(); ++i) r.read(i * 32768, std::span(back).subspan(i * 32768, 32768), reads[i]);
  idle(r.io, 700ms);
  CHECK(std::none_of(reads.begin(), reads.end(), [](const op_done& d) { return d.finished(); }));
  REQUIRE(r.all_finished(reads, 5s));
  const double took = ms_since(lost);
  MESSAGE("failed " << took << " ms after the loss");
  CHECK(took >= 900);
  CHECK(took < 3000);
  for (const auto& d : reads) CHECK(d.ec == boost::system::errc::io_error);

  // Past the window, new operations fail at once, until the server is back.
  op_done late;
  const auto asked = clock_type::now();
  r.read(0, back, late);
  REQUIRE(drive(
      r.io, [&] { return late.finished(); }, 1s));
  CHECK(late.ec == boost::system::errc::io_error);
  CHECK(ms_since(asked) < 200);
  CHECK_FALSE(late.inline_call);

  srv.start();  // an empty export again: reads return zeroes
  CHECK(reads_again(r, back));
}

TEST_CASE("a server answering ESHUTDOWN is reconnected to with back-off and the operations succeed once it stops") {
  xbd::test::temp_dir flag_dir;
  const auto flag = flag_dir.path() / "shutting-down";
  std::ofstream(flag).close();
  xbd::test::nbd_server srv(
      filtered("error", {"error=ESHUTDOWN", "error-pread-rate=100%", "error-pread-file=" + flag.string()}));
  rig r;
  REQUIRE_FALSE(r.open(srv.target(), quick()));
  r.open_channel();
  std::vector<std::byte> back(64 * 1024);
  op_done d;
  r.read(0, back, d);
  rusage before{};
  ::getrusage(RUSAGE_SELF, &before);
  idle(r.io, 1000ms);
  rusage after{};
  ::getrusage(RUSAGE_SELF, &after);
  CHECK_FALSE(d.finished());
  const auto cpu_us = [](const rusage& u) {
    return (u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1000000ll + u.ru_utime.tv_usec + u.ru_stime.tv_usec;
  };
  MESSAGE("CPU while the server said ESHUTDOWN for 1 s: " << (cpu_us(after) - cpu_us(before)) / 1000 << " ms");
  CHECK(cpu_us(after) - cpu_us(before) < 200000);
  std::filesystem::remove(flag);
  REQUIRE(drive(
      r.io, [&] { return d.finished(); }, 5s));
  CHECK_FALSE(d.ec);
}

TEST_CASE("an operation every connection loses fails with EIO after the reconnect window however often it reconnects") {
  xbd::test::nbd_server srv(filtered("error", {"error=ESHUTDOWN", "error-pread-rate=100%"}));
  rig r;
  auto o = quick();
  o.reconnect = 1000ms;
  REQUIRE_FALSE(r.open(srv.target(), o));
  r.open_channel();
  std::vector<std::byte> back(4096);
  op_done d;
  const auto start = clock_type::now();
  r.read(0, back, d);
  REQUIRE(drive(
      r.io, [&] { return d.finished(); }, 6s));
  const double took = ms_since(start);
  MESSAGE("failed after " << took << " ms");
  CHECK(d.ec == boost::system::errc::io_error);
  CHECK(took >= 950);
  CHECK(took < 4000);
  op_done w;  // writes are not affected
  r.write(0, back, w);
  REQUIRE(drive(
      r.io, [&] { return w.finished(); }, 5s));
  CHECK_FALSE(w.ec);
}

TEST_CASE("a server that stops answering is given up on: its operations fail with EIO within twice the window") {
  xbd::test::nbd_server srv({});
  rig r;
  auto o = quick();
  o.reconnect = 1000ms;
  o.connect_timeout = 500ms;
  REQUIRE_FALSE(r.open(srv.target(), o));
  r.open_channel();
  write_and_verify(r, 0, 64 * 1024, 10);
  srv.pause();
  std::vector<std::byte> back(64 * 1024);
  op_done d;
  const auto start = clock_type::now();
  r.read(0, back, d);
  REQUIRE(drive(
      r.io, [&] { return d.finished(); }, 6s));
  const double took = ms_since(start);
  MESSAGE("failed after " << took << " ms");
  CHECK(d.ec == boost::system::errc::io_error);
  CHECK(took >= 1900);
  CHECK(took < 4000);
  srv.resume();
  CHECK(reads_again(r, back));
}

TEST_CASE("cancel finishes the operations waiting for a lost server at once with operation_aborted") {
  xbd::test::nbd_server srv({});
  rig r;
  REQUIRE_FALSE(r.open(srv.target(), quick()));
  r.open_channel();
  write_and_verify(r, 0, 64 * 1024, 8);
  srv.kill();
  std::vector<std::byte> back(64 * 1024);
  std::vector<op_done> ops(4);
  r.read(0, back, ops[0]);
  r.write(0, back, ops[1]);
  r.flush(ops[2]);
  r.discard(0, 4096, ops[3]);
  idle(r.io, 200ms);
  CHECK(std::none_of(ops.begin(), ops.end(), [](const op_done& d) { return d.finished(); }));
  const auto start = clock_type::now();
  r.ch->cancel();
  CHECK(std::none_of(ops.begin(), ops.end(), [](const op_done& d) { return d.finished(); }));
  REQUIRE(r.all_finished(ops, 1s));
  CHECK(ms_since(start) < 200);
  for (const auto& d : ops) CHECK(d.ec == asio::error::operation_aborted);
}

TEST_CASE("more operations than the channel's depth: the extra one fails with EBUSY, later") {
  xbd::test::nbd_server srv(filtered("delay", {"delay-read=100ms"}));
  rig r;
  REQUIRE_FALSE(r.open(srv.target(), quick()));
  r.open_channel(2);
  std::vector<std::byte> back(3 * 4096);
  std::vector<op_done> ops(3);
  for (std::size_t i = 0; i < ops.size(); ++i) r.read(i * 4096, std::span(back).subspan(i * 4096, 4096), ops[i]);
  REQUIRE(r.all_finished(ops));
  CHECK_FALSE(ops[0].ec);
  CHECK_FALSE(ops[1].ec);
  CHECK(ops[2].ec == boost::system::errc::device_or_resource_busy);
  for (const auto& d : ops) CHECK_FALSE(d.inline_call);
}

TEST_CASE("channels and stores destroyed with their server gone leave no descriptor behind") {
  rig r;
  {
    // Asio opens its io_uring on first use: not ours to count.
    xbd::test::nbd_server srv({});
    REQUIRE_FALSE(r.open(srv.target(), quick()));
    r.st.reset();
  }
  const std::size_t baseline = xbd::test::open_descriptors(::getpid());
  {
    xbd::test::nbd_server srv({});
    REQUIRE_FALSE(r.open(srv.target(), quick()));
    r.open_channel();
    auto other = r.st->open_channel(xbd::blkback::worker{r.io.get_executor(), nullptr}, 8);
    REQUIRE(other);
    write_and_verify(r, 0, 128 * 1024, 9);
    srv.kill();
    idle(r.io, 300ms);  // both reconnecting now
    r.ch.reset();
    other->reset();
    r.st.reset();
  }
  // A channel that never connects, destroyed while it tries.
  {
    xbd::test::nbd_server srv({});
    REQUIRE_FALSE(r.open(srv.target(), quick()));
    srv.kill();
    r.open_channel();
    idle(r.io, 100ms);
    r.ch.reset();
    r.st.reset();
  }
  idle(r.io, 100ms);
  CHECK(xbd::test::open_descriptors(::getpid()) == baseline);
  if (xbd::test::open_descriptors(::getpid()) != baseline) MESSAGE(xbd::test::descriptor_kinds(::getpid()));
}
