// Directory listings larger than one xenstore reply, against the real
// xenstored: one XS_DIRECTORY reply holds at most XENSTORE_PAYLOAD_MAX
// (4096) bytes, and a longer list is refused with E2BIG. The daemon lists
// through libxenstore (asio_xen/xenstore.cpp), whose xs_directory then lists
// again with XS_DIRECTORY_PART, piece by piece. These tests hold the
// daemon's client, and the daemon itself, to complete listings there.
#include "asio_xen/xenstore.hpp"
#include "test/integration/process.hpp"
#include "test/integration/sim_env.hpp"
#include "test/sim/xenstored/domain_xenbus.hpp"

#include <doctest/doctest.h>
#include <boost/asio/io_context.hpp>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <thread>

using namespace xbd::test;
namespace xs = xbd::asio_xen;

namespace {

// 1200 five-digit names (6 bytes each with the NUL: 7200 bytes, two
// XS_DIRECTORY_PART replies), in the order they are written.
std::vector<std::string> many_names() {
  std::vector<std::string> out;
  for (unsigned i = 0; i < 1200; ++i) out.push_back(std::to_string(30000 + i));
  return out;
}

xs::error_code write_children(xs::xenstore& store, const std::string& dir, const std::vector<std::string>& names) {
  return store.transact([&](xs::transaction& t) -> xs::error_code {
    for (const auto& n : names)
      if (auto ec = t.write(dir + "/" + n, "1")) return ec;
    return {};
  });
}

// The daemon's client on the connection `socket` (libxenstore takes it from
// XENSTORED_PATH only when the connection opens).
std::unique_ptr<xs::xs_driver> connect_to(const std::filesystem::path& socket) {
  ::setenv("XENSTORED_PATH", socket.c_str(), 1);
  auto d = xs::open_libxenstore();
  ::unsetenv("XENSTORED_PATH");
  REQUIRE(d.has_value());
  return std::move(*d);
}

// Exactly `want`, each once (xenstored keeps no particular order).
void check_listing(const xs::result<std::vector<std::string>>& got, std::vector<std::string> want) {
  REQUIRE_MESSAGE(got.has_value(), got.error().message());
  std::vector<std::string> sorted = *got;
  std::sort(sorted.begin(), sorted.end());
  std::sort(want.begin(), want.end());
  CHECK(sorted.size() == want.size());
  CHECK(sorted == want);
}

std::size_t count_in(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto p = text.find(what); p != std::string::npos; p = text.find(what, p + what.size())) ++n;
  return n;
}

}  // namespace

TEST_CASE("xenstore: 1200 children are listed whole, with and without a transaction") {
  xbd::sim::xenstored xsd;
  boost::asio::io_context ioc;
  xs::xenstore store(ioc.get_executor(), connect_to(xsd.socket_path()));
  const std::string dir = "/local/domain/0/backend/qdisk";
  const auto names = many_names();
  REQUIRE_FALSE(write_children(store, dir, names));

  check_listing(store.directory(dir), names);
  std::vector<std::string> in_tx;
  REQUIRE_FALSE(store.transact([&](xs::transaction& t) -> xs::error_code {
    auto r = t.directory(dir);
    if (!r) return r.error();
    in_tx = std::move(*r);
    return {};
  }));
  check_listing(in_tx, names);
  // The listings went the long way: one refused XS_DIRECTORY each, then
  // parts (a request and a reply each in the trace).
  const std::string trace = xsd.trace();
  CHECK(count_in(trace, "DIRECTORY_PART") >= 2 * 2 * 2);
}

TEST_CASE("xenstore: a driver domain lists 1200 children through its xenstore ring") {
  sim_env env;
  constexpr unsigned dd = 3;
  env.xenstored().introduce_domain(dd);
  const std::string home = "/local/domain/" + std::to_string(dd);
  const std::string dir = home + "/backend/qdisk/5";
  const auto names = many_names();
  boost::asio::io_context ioc;
  {
    xs::xenstore dom0(ioc.get_executor(), connect_to(env.xenstored().socket_path()));
    REQUIRE_FALSE(write_children(dom0, dir, names));
    const std::vector<xs::xs_permission> theirs{{dd, xs::xs_permission::access::none}};
    for (const std::string& p : {home, home + "/backend", home + "/backend/qdisk", dir})
      REQUIRE_FALSE(dom0.set_permissions(p, theirs));
  }
  // The domain's kernel xenstore device, relaying its processes' requests
  // onto the domain's ring.
  const auto socket = env.dir() / "dd.sock";
  xbd::sim::domain_xenbus bus(env.dir(), dd, socket);
  std::atomic<bool> stop{false};
  std::thread relay([&] { bus.run(stop); });
  xs::xenstore store(ioc.get_executor(), connect_to(socket));
  auto listing = store.directory(dir);
  stop = true;
  relay.join();
  check_listing(listing, names);
}

TEST_CASE("xenstore: the daemon picks up all 450 disks of one guest (its listing is longer than 4 KiB)") {
  // d<N>p0 vdevs have nine-digit devids: 450 of them are 4500 bytes.
  sim_env env;
  env.create_guest(5);
  const auto image = env.make_image("disk.img", 1 << 20);
  for (unsigned i = 0; i < 450; ++i) {
    xbd::sim::disk_spec d;
    d.domid = 5;
    d.vdev = "d" + std::to_string(i) + "p0";
    d.target = image;
    d.writable = false;
    env.toolstack().add_disk(d);
  }
  env.start_daemon();
  REQUIRE(env.log_shows("ready: ", std::chrono::seconds(60)));
  const std::string log = env.daemon_log();
  CHECK(log.find("ready: 450 device(s) picked up") != std::string::npos);
  CHECK(log.find("cannot list /") == std::string::npos);  // not "cannot listen"
  CHECK(env.stop_daemon() == 0);
}
