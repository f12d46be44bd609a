// A domain's xenstore device: libxenstore programs on its socket are that
// domain to xenstored.
#include <doctest/doctest.h>

#include <poll.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "asio_xen/xen.hpp"
#include "test/sim/xenstored/domain_xenbus.hpp"
#include "test/sim/xenstored/xenstored.hpp"

using namespace std::chrono_literals;

namespace {

constexpr unsigned domid = 5;

// The relay on its own thread for the test's duration.
struct relay {
  std::atomic<bool> stop{false};
  xbd::sim::domain_xenbus bus;
  std::thread thread;
  relay(const xbd::sim::xenstored& xsd, const std::filesystem::path& socket)
      : bus(xsd.dir(), domid, socket), thread([this] { bus.run(stop); }) {}
  ~relay() {
    stop = true;
    thread.join();
  }
};

// libxenstore on `socket` (XENSTORED_PATH is read by xs_open).
xbd::sim::xs_ptr open_at(const std::filesystem::path& socket) {
  static std::mutex m;
  std::lock_guard lock(m);
  const char* old = std::getenv("XENSTORED_PATH");
  const std::string saved = old ? old : "";
  ::setenv("XENSTORED_PATH", socket.c_str(), 1);
  xbd::sim::xs_ptr h(xs_open(0));
  if (old)
    ::setenv("XENSTORED_PATH", saved.c_str(), 1);
  else
    ::unsetenv("XENSTORED_PATH");
  REQUIRE_MESSAGE(h, "xs_open on " << socket << ": " << std::strerror(errno));
  return h;
}

std::optional<std::string> read_node(xs_handle* h, const std::string& path) {
  unsigned len = 0;
  char* v = static_cast<char*>(xs_read(h, XBT_NULL, path.c_str(), &len));
  if (!v) return std::nullopt;
  std::string s(v, len);
  std::free(v);
  return s;
}

// The home libxl makes: readable by the domain, and a data directory of its own.
void make_home(xs_handle* dom0) {
  const std::string home = "/local/domain/" + std::to_string(domid);
  xs_permissions ro[] = {{0, XS_PERM_NONE}, {domid, XS_PERM_READ}};
  xs_permissions own[] = {{domid, XS_PERM_NONE}};
  REQUIRE(xs_write(dom0, XBT_NULL, home.c_str(), "", 0));
  REQUIRE(xs_set_permissions(dom0, XBT_NULL, home.c_str(), ro, 2));
  REQUIRE(xs_write(dom0, XBT_NULL, (home + "/domid").c_str(), "5", 1));
  REQUIRE(xs_write(dom0, XBT_NULL, (home + "/data").c_str(), "", 0));
  REQUIRE(xs_set_permissions(dom0, XBT_NULL, (home + "/data").c_str(), own, 1));
}

// The next watch event's (path, token), within `limit`.
std::optional<std::pair<std::string, std::string>> next_event(xs_handle* h, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (char** ev = xs_check_watch(h)) {
      std::pair<std::string, std::string> e{ev[XS_WATCH_PATH], ev[XS_WATCH_TOKEN]};
      std::free(ev);
      return e;
    }
    pollfd p{xs_fileno(h), POLLIN, 0};
    ::poll(&p, 1, 50);
  }
  return std::nullopt;
}

template <class Pred>
bool eventually_true(Pred pred) {
  for (int i = 0; i < 100; ++i) {
    if (pred()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

}  // namespace

TEST_CASE("a program on a domain's xenstore device is that domain: its home and its permissions") {
  xbd::sim::xenstored xsd;
  auto dom0 = xsd.open_dom0();
  make_home(dom0.get());
  xsd.introduce_domain(domid);
  relay r(xsd, xsd.dir() / "dom5.sock");
  auto h = open_at(xsd.dir() / "dom5.sock");
  CHECK(read_node(h.get(), "domid") == "5");  // relative to its own home
  CHECK(xs_write(h.get(), XBT_NULL, "data/x", "1", 1));
  CHECK(read_node(dom0.get(), "/local/domain/5/data/x") == "1");
  errno = 0;
  CHECK_FALSE(xs_write(h.get(), XBT_NULL, "/local/domain/0/x", "1", 1));
  CHECK(errno == EACCES);
  errno = 0;
  CHECK_FALSE(xs_is_domain_introduced(h.get(), 7));  // privileged
  CHECK(errno == EACCES);
}

TEST_CASE("the watches of two programs in one domain are kept apart") {
  xbd::sim::xenstored xsd;
  auto dom0 = xsd.open_dom0();
  make_home(dom0.get());
  xsd.introduce_domain(domid);
  relay r(xsd, xsd.dir() / "dom5.sock");
  auto a = open_at(xsd.dir() / "dom5.sock");
  auto b = open_at(xsd.dir() / "dom5.sock");
  REQUIRE(xs_watch(a.get(), "/local/domain/5/data/w", "tok"));
  REQUIRE(xs_watch(b.get(), "/local/domain/5/data/w", "tok"));
  // The event each gets when its watch is set.
  CHECK(next_event(a.get(), 2s) == std::pair<std::string, std::string>{"/local/domain/5/data/w", "tok"});
  CHECK(next_event(b.get(), 2s) == std::pair<std::string, std::string>{"/local/domain/5/data/w", "tok"});
  REQUIRE(xs_write(dom0.get(), XBT_NULL, "/local/domain/5/data/w", "1", 1));
  CHECK(next_event(a.get(), 2s).has_value());
  CHECK(next_event(b.get(), 2s).has_value());
  CHECK_FALSE(next_event(a.get(), 200ms).has_value());  // one event each, not two
}

TEST_CASE("a domain program's watches and transactions end with it as the kernel ends a closed file's") {
  xbd::sim::xenstored xsd;
  auto dom0 = xsd.open_dom0();
  make_home(dom0.get());
  xsd.introduce_domain(domid);
  relay r(xsd, xsd.dir() / "dom5.sock");
  auto a = open_at(xsd.dir() / "dom5.sock");
  // Up to the domain's quotas (xenstored's defaults: 10 transactions, 128
  // watches), which then bind every program of the domain.
  int tx = 0, watches = 0;
  while (tx < 64 && xs_transaction_start(a.get()) != XBT_NULL) ++tx;
  while (watches < 512 && xs_watch(a.get(), ("data/w" + std::to_string(watches)).c_str(), "t")) ++watches;
  CHECK(tx < 64);
  CHECK(watches < 512);
  auto b = open_at(xsd.dir() / "dom5.sock");
  CHECK(xs_transaction_start(b.get()) == XBT_NULL);
  a.reset();
  // The relay notices the closed socket at its next turn.
  CHECK(eventually_true([&] {
    const xs_transaction_t t = xs_transaction_start(b.get());
    if (t != XBT_NULL) xs_transaction_end(b.get(), t, true);
    return t != XBT_NULL;
  }));
  CHECK(xs_watch(b.get(), "data/again", "t"));
}
