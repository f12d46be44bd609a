// The real xenstored under the shim, and guests with real permissions.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <optional>
#include <string>
#include <thread>

#include "asio_xen/xen.hpp"
#include "test/sim/xenstored/guest_xenstore.hpp"
#include "test/sim/xenstored/xenstored.hpp"

using namespace std::chrono_literals;
using xbd::sim::guest_xenstore;
using xbd::sim::permission;
using xbd::sim::xenstored;
using xbd::sim::xs_ptr;

namespace {

constexpr unsigned guest_domid = 5;
constexpr unsigned devid = 51712;  // xvda
const std::string backend = "/local/domain/0/backend/qdisk/5/51712";
const std::string frontend = "/local/domain/5/device/vbd/51712";

std::string dom0_read(xs_handle* h, const std::string& path) {
  unsigned len = 0;
  void* v = xs_read(h, XBT_NULL, path.c_str(), &len);
  REQUIRE_MESSAGE(v, "dom0 read " << path << ": " << std::string(std::strerror(errno)));
  std::string s(static_cast<char*>(v), len);
  std::free(v);
  return s;
}

bool dom0_exists(xs_handle* h, const std::string& path) {
  unsigned len = 0;
  void* v = xs_read(h, XBT_NULL, path.c_str(), &len);
  std::free(v);
  return v != nullptr;
}

void dom0_write(xs_handle* h, const std::string& path, const std::string& value) {
  REQUIRE_MESSAGE(xs_write(h, XBT_NULL, path.c_str(), value.data(), unsigned(value.size())),
                  "dom0 write " << path << ": " << std::string(std::strerror(errno)));
}

// perms as libxl writes them: the first entry is the owner.
void dom0_set_perms(xs_handle* h, const std::string& path, std::initializer_list<std::pair<unsigned, unsigned>> perms) {
  std::vector<xs_permissions> p;
  for (auto [id, kind] : perms) p.push_back({id, kind});
  REQUIRE(xs_set_permissions(h, XBT_NULL, path.c_str(), p.data(), unsigned(p.size())));
}

std::optional<unsigned> dom0_owner(xs_handle* h, const std::string& path) {
  unsigned n = 0;
  xs_permissions* p = xs_get_permissions(h, XBT_NULL, path.c_str(), &n);
  if (!p) return std::nullopt;
  unsigned owner = n ? p[0].id : ~0u;
  std::free(p);
  return owner;
}

// Waits for a watch event on `path` (earlier events are skipped, e.g. the
// one xenstored sends when a watch is set).
bool dom0_wait_watch(xs_handle* h, const std::string& path, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    while (char** ev = xs_check_watch(h)) {
      const bool match = path == ev[XS_WATCH_PATH];
      std::free(ev);
      if (match) return true;
    }
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left <= 0ms) return false;
    pollfd pfd{xs_fileno(h), POLLIN, 0};
    ::poll(&pfd, 1, int(left.count()));
  }
}

// Skips events until one for `path`.
bool guest_wait_watch(guest_xenstore& g, const std::string& path, const std::string& token,
                      std::chrono::milliseconds timeout = 2s) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left <= 0ms) return false;
    auto ev = g.wait_watch(left);
    if (!ev) return false;
    if (ev->path == path && ev->token == token) return true;
  }
}

void grant_data_dir(const xenstored& xs) {
  auto h = xs.open_dom0();
  dom0_write(h.get(), "/local/domain/5/data", "");
  dom0_set_perms(h.get(), "/local/domain/5/data", {{5, XS_PERM_NONE}});
}

// dom0 and toolstack side of a guest with one vbd, laid out and permitted
// as libxl does it.
struct world {
  xenstored xs;
  xs_ptr dom0 = xs.open_dom0();

  world() {
    REQUIRE(dom0);
    xs.introduce_domain(guest_domid);
    // The domain's home: dom0's, readable by the guest.
    dom0_write(dom0.get(), "/local/domain/5/name", "guest");
    dom0_set_perms(dom0.get(), "/local/domain/5", {{0, XS_PERM_NONE}, {5, XS_PERM_READ}});
    dom0_set_perms(dom0.get(), "/local/domain/5/name", {{0, XS_PERM_NONE}, {5, XS_PERM_READ}});
    // The guest's own scratch space (libxl makes data/, device/... its own).
    dom0_write(dom0.get(), "/local/domain/5/data", "");
    dom0_set_perms(dom0.get(), "/local/domain/5/data", {{5, XS_PERM_NONE}});
    // Frontend: owned by the guest, readable by the backend's domain.
    dom0_write(dom0.get(), frontend + "/backend", backend);
    dom0_set_perms(dom0.get(), "/local/domain/5/device", {{5, XS_PERM_NONE}, {0, XS_PERM_READ}});
    dom0_set_perms(dom0.get(), "/local/domain/5/device/vbd", {{5, XS_PERM_NONE}, {0, XS_PERM_READ}});
    dom0_set_perms(dom0.get(), frontend, {{5, XS_PERM_NONE}, {0, XS_PERM_READ}});
    dom0_set_perms(dom0.get(), frontend + "/backend", {{5, XS_PERM_NONE}, {0, XS_PERM_READ}});
    // Backend: owned by dom0, readable by the guest.
    REQUIRE(xs_mkdir(dom0.get(), XBT_NULL, backend.c_str()));
    dom0_set_perms(dom0.get(), backend, {{0, XS_PERM_NONE}, {5, XS_PERM_READ}});
    dom0_write(dom0.get(), backend + "/state", "1");  // inherits n0,r5
    dom0_write(dom0.get(), backend + "/frontend", frontend);
    // dom0-private.
    dom0_write(dom0.get(), "/local/domain/0/private", "secret");
  }

  ~world();
};

// Knows whether the running test case has failed, so that a failing test
// keeps its xenstored trace for the log.
struct failure_listener : doctest::IReporter {
  static inline std::atomic<bool> failed{false};
  explicit failure_listener(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats&) override {}
  void test_case_start(const doctest::TestCaseData&) override { failed = false; }
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats&) override {}
  void test_case_exception(const doctest::TestCaseException&) override { failed = true; }
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData& a) override {
    if (a.m_failed) failed = true;
  }
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};
REGISTER_LISTENER("xenstored-trace", 1, failure_listener);

world::~world() {
  if (failure_listener::failed) xs.keep_trace();
}

bool process_gone(pid_t pid) { return ::kill(pid, 0) < 0 && errno == ESRCH; }

}  // namespace

TEST_SUITE_BEGIN("sim");

TEST_CASE("xenstored starts under the shim and serves dom0 until its destructor stops it") {
  std::filesystem::path dir;
  pid_t pid;
  {
    xenstored xs;
    dir = xs.dir();
    pid = xs.pid();
    CHECK(xs.running());
    CHECK(dir.string().starts_with("/tmp/xbd-"));
    CHECK(std::filesystem::is_socket(xs.socket_path()));
    CHECK(xs.env() == "XENSTORED_PATH=" + xs.socket_path().string());

    auto h = xs.open_dom0();
    dom0_write(h.get(), "/test/hello", "world");
    CHECK(dom0_read(h.get(), "/test/hello") == "world");
    // The trace (-T) records the requests.
    CHECK(xs.trace().find("/test/hello") != std::string::npos);
  }
  CHECK(process_gone(pid));
  CHECK_FALSE(std::filesystem::exists(dir));
}

TEST_CASE("stop() ends the daemon and keep_trace() keeps the directory with the trace") {
  std::filesystem::path dir;
  {
    xenstored xs;
    dir = xs.dir();
    const pid_t pid = xs.pid();
    {
      auto h = xs.open_dom0();
      dom0_write(h.get(), "/test/kept", "1");
    }
    xs.keep_trace();
    xs.stop();
    CHECK_FALSE(xs.running());
    CHECK(process_gone(pid));
  }
  CHECK(std::filesystem::exists(dir / "trace"));
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

TEST_CASE("several instances run side by side without sharing anything") {
  std::vector<std::unique_ptr<xenstored>> all;
  for (int i = 0; i < 3; ++i) all.push_back(std::make_unique<xenstored>());
  CHECK(all[0]->dir() != all[1]->dir());
  CHECK(all[0]->pid() != all[1]->pid());

  for (int i = 0; i < 3; ++i) {
    auto h = all[i]->open_dom0();
    dom0_write(h.get(), "/test/id", std::to_string(i));
  }
  for (int i = 0; i < 3; ++i) {
    auto h = all[i]->open_dom0();
    CHECK(dom0_read(h.get(), "/test/id") == std::to_string(i));
  }

  // The same domid in two instances: two independent guests.
  for (int i = 0; i < 2; ++i) {
    all[i]->introduce_domain(guest_domid);
    grant_data_dir(*all[i]);
  }
  guest_xenstore g0(all[0]->dir(), guest_domid), g1(all[1]->dir(), guest_domid);
  CHECK_FALSE(g0.write("data/x", "zero"));
  CHECK_FALSE(g1.write("data/x", "one"));
  CHECK(g0.read("data/x").value() == "zero");
  CHECK(g1.read("data/x").value() == "one");

  // export_env() points libxenstore (and children) at one of them.
  const char* old = std::getenv("XENSTORED_PATH");
  std::optional<std::string> saved;
  if (old) saved = old;
  all[2]->export_env();
  {
    xs_ptr h(xs_open(XS_OPEN_SOCKETONLY));
    REQUIRE(h);
    CHECK(dom0_read(h.get(), "/test/id") == "2");
  }
  if (saved)
    ::setenv("XENSTORED_PATH", saved->c_str(), 1);
  else
    ::unsetenv("XENSTORED_PATH");
}

TEST_CASE("a guest can read the backend dir granted to it but not write it") {
  world w;
  guest_xenstore g(w.xs.dir(), guest_domid);

  CHECK(g.read(backend + "/state").value() == "1");
  CHECK(g.read(backend + "/frontend").value() == frontend);
  auto entries = g.directory(backend);
  REQUIRE(entries);
  CHECK(std::find(entries->begin(), entries->end(), "state") != entries->end());
  auto perms = g.get_permissions(backend);
  REQUIRE(perms);
  CHECK(*perms == std::vector<permission>{{0, permission::none}, {5, permission::read}});

  CHECK(g.write(backend + "/state", "6") == std::errc::permission_denied);
  CHECK(g.write(backend + "/new", "x") == std::errc::permission_denied);
  CHECK(g.mkdir(backend + "/newdir") == std::errc::permission_denied);
  CHECK(g.rm(backend + "/state") == std::errc::permission_denied);
  const permission mine[] = {{5, permission::none}};
  CHECK(g.set_permissions(backend, mine) == std::errc::permission_denied);

  CHECK(dom0_read(w.dom0.get(), backend + "/state") == "1");
  CHECK_FALSE(dom0_exists(w.dom0.get(), backend + "/new"));
  CHECK(dom0_owner(w.dom0.get(), backend) == 0u);
}

TEST_CASE("a guest writes its own device tree and owns the nodes it creates") {
  world w;
  guest_xenstore g(w.xs.dir(), guest_domid);

  CHECK(g.home() == "/local/domain/5");
  CHECK(g.get_domain_path(guest_domid).value() == "/local/domain/5");
  CHECK_FALSE(g.write(frontend + "/ring-ref", "8"));
  CHECK_FALSE(g.write("device/vbd/51712/event-channel", "11"));  // relative to home
  CHECK_FALSE(g.write(frontend + "/state", "3"));
  CHECK(g.read(frontend + "/event-channel").value() == "11");

  CHECK(dom0_read(w.dom0.get(), frontend + "/ring-ref") == "8");
  CHECK(dom0_read(w.dom0.get(), frontend + "/state") == "3");
  CHECK(dom0_owner(w.dom0.get(), frontend + "/ring-ref") == guest_domid);

  // Its home itself is dom0's: read-only for it.
  CHECK(g.read("/local/domain/5/name").value() == "guest");
  CHECK(g.write("/local/domain/5/name", "evil") == std::errc::permission_denied);
  CHECK(g.write("/local/domain/5/other", "x") == std::errc::permission_denied);
  CHECK(g.read(frontend + "/missing") == std::errc::no_such_file_or_directory);
  CHECK(g.rm(frontend + "/ring-ref") == std::error_code{});
  CHECK_FALSE(dom0_exists(w.dom0.get(), frontend + "/ring-ref"));
}

TEST_CASE("a guest cannot read dom0-private nodes or another domain's") {
  world w;
  dom0_write(w.dom0.get(), "/local/domain/7/secret", "s7");
  guest_xenstore g(w.xs.dir(), guest_domid);

  CHECK(g.read("/local/domain/0/private") == std::errc::permission_denied);
  CHECK(g.directory("/local/domain/0") == std::errc::permission_denied);
  CHECK(g.get_permissions("/local/domain/0/private") == std::errc::permission_denied);
  CHECK(g.read("/local/domain/7/secret") == std::errc::permission_denied);
  CHECK(g.read("/tool/xenstored") == std::errc::permission_denied);
  CHECK(g.write("/tool/xenstored", "x") == std::errc::permission_denied);
  // dom0 reads it all (the same nodes exist).
  CHECK(dom0_read(w.dom0.get(), "/local/domain/0/private") == "secret");
}

TEST_CASE("privileged operations from a guest are refused") {
  world w;
  guest_xenstore g(w.xs.dir(), guest_domid);
  using namespace std::string_view_literals;

  CHECK(g.request(XS_INTRODUCE,
                  "9\0"
                  "0\0"
                  "1\0"sv) == std::errc::permission_denied);
  CHECK(g.request(XS_RELEASE, "5\0"sv) == std::errc::permission_denied);
  CHECK(g.request(XS_SET_TARGET,
                  "5\0"
                  "0\0"sv) == std::errc::permission_denied);
  CHECK(g.request(XS_RESUME, "5\0"sv) == std::errc::permission_denied);
  CHECK_FALSE(xs_is_domain_introduced(w.dom0.get(), 9));
  CHECK(xs_is_domain_introduced(w.dom0.get(), guest_domid));
}

TEST_CASE("a dom0 watch fires on a guest write") {
  world w;
  guest_xenstore g(w.xs.dir(), guest_domid);
  REQUIRE(xs_watch(w.dom0.get(), frontend.c_str(), "fe"));
  REQUIRE(dom0_wait_watch(w.dom0.get(), frontend, 2s));  // fired on registration

  CHECK_FALSE(dom0_wait_watch(w.dom0.get(), frontend + "/state", 50ms));
  CHECK_FALSE(g.write(frontend + "/state", "4"));
  CHECK(dom0_wait_watch(w.dom0.get(), frontend + "/state", 2s));
}

TEST_CASE("a guest watch fires on a dom0 write where the guest may read") {
  world w;
  guest_xenstore g(w.xs.dir(), guest_domid);
  CHECK_FALSE(g.watch(backend, "be"));
  auto first = g.wait_watch(2s);
  REQUIRE(first);
  CHECK(*first == xbd::sim::watch_event{backend, "be"});  // fired on registration

  dom0_write(w.dom0.get(), backend + "/state", "2");
  CHECK(guest_wait_watch(g, backend + "/state", "be"));

  // Writes the guest may not read are not reported to it.
  CHECK_FALSE(g.watch("/local/domain/0", "dom0"));
  REQUIRE(guest_wait_watch(g, "/local/domain/0", "dom0"));
  dom0_write(w.dom0.get(), "/local/domain/0/private", "changed");
  {
    auto ev = g.wait_watch(100ms);
    if (ev) MESSAGE("unexpected event " << ev->path << " " << ev->token);
    CHECK(ev == std::errc::timed_out);
  }

  CHECK_FALSE(g.unwatch(backend, "be"));
  CHECK_FALSE(g.unwatch("/local/domain/0", "dom0"));
  dom0_write(w.dom0.get(), backend + "/state", "3");
  CHECK(g.wait_watch(100ms) == std::errc::timed_out);
}

TEST_CASE("killing a domain makes xenstored fire @releaseDomain for dom0") {
  world w;
  {
    guest_xenstore g(w.xs.dir(), guest_domid);
    CHECK_FALSE(g.write(frontend + "/state", "4"));
  }
  REQUIRE(xs_watch(w.dom0.get(), "@releaseDomain", "rel"));
  REQUIRE(dom0_wait_watch(w.dom0.get(), "@releaseDomain", 2s));  // fired on registration
  // Nothing dies on its own.
  CHECK_FALSE(dom0_wait_watch(w.dom0.get(), "@releaseDomain", 50ms));

  w.xs.kill_domain(guest_domid);
  CHECK(dom0_wait_watch(w.dom0.get(), "@releaseDomain", 2s));
  CHECK_FALSE(xs_is_domain_introduced(w.dom0.get(), guest_domid));
  // xenstored 4.17 deletes what the dead domain owned (unless -K).
  CHECK_FALSE(dom0_exists(w.dom0.get(), frontend + "/state"));
  CHECK_FALSE(dom0_exists(w.dom0.get(), "/local/domain/5/data"));
  CHECK(dom0_exists(w.dom0.get(), backend + "/state"));

  // The dead guest's ring is no longer served: bounded failure.
  guest_xenstore g(w.xs.dir(), guest_domid, 100ms);
  CHECK(g.read(frontend + "/state") == std::errc::timed_out);

  // A new life of the same domid works again.
  w.xs.introduce_domain(guest_domid);
  grant_data_dir(w.xs);
  guest_xenstore g2 = std::move(g);
  g2.set_timeout(5s);
  CHECK_FALSE(g2.write("data/alive", "1"));
}

TEST_CASE("xs_release_domain from dom0 fires @releaseDomain") {
  world w;
  REQUIRE(xs_watch(w.dom0.get(), "@releaseDomain", "rel"));
  REQUIRE(dom0_wait_watch(w.dom0.get(), "@releaseDomain", 2s));
  CHECK_FALSE(dom0_wait_watch(w.dom0.get(), "@releaseDomain", 50ms));

  w.xs.release_domain(guest_domid);
  CHECK(dom0_wait_watch(w.dom0.get(), "@releaseDomain", 2s));
  CHECK_FALSE(xs_is_domain_introduced(w.dom0.get(), guest_domid));
}

TEST_CASE("a guest in a forked child process gets the same treatment") {
  world w;
  const auto dir = w.xs.dir();
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // No doctest and no destructors of the parent's objects here.
    int fails = 0;
    try {
      guest_xenstore g(dir, guest_domid);
      if (g.write(frontend + "/state", "3")) fails |= 1;
      auto state = g.read(backend + "/state");
      if (!state || *state != "1") fails |= 2;
      if (g.write(backend + "/state", "5") != std::errc::permission_denied) fails |= 4;
      if (g.read("/local/domain/0/private") != std::errc::permission_denied) fails |= 8;
    } catch (...) {
      fails |= 16;
    }
    ::_exit(fails);
  }
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  pid_t r;
  while ((r = ::waitpid(child, &status, WNOHANG)) == 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(2ms);
  if (r == 0) {
    ::kill(child, SIGKILL);
    ::waitpid(child, &status, 0);
    FAIL("the child guest hung");
  }
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(dom0_read(w.dom0.get(), frontend + "/state") == "3");
  CHECK(dom0_owner(w.dom0.get(), frontend + "/state") == guest_domid);
  CHECK(dom0_read(w.dom0.get(), backend + "/state") == "1");
}

TEST_CASE("one guest connection per domain at a time") {
  world w;
  std::optional<guest_xenstore> g(std::in_place, w.xs.dir(), guest_domid);
  try {
    guest_xenstore second(w.xs.dir(), guest_domid);
    FAIL("a second connection to the same ring was allowed");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::device_or_resource_busy);
  }
  g.reset();
  guest_xenstore again(w.xs.dir(), guest_domid);
  CHECK(again.read(backend + "/state").value() == "1");
}

TEST_CASE("guest transactions commit and abort and conflict") {
  world w;
  guest_xenstore g(w.xs.dir(), guest_domid);
  const std::string node = frontend + "/state";
  REQUIRE_FALSE(g.write(node, "1"));

  auto t = g.transaction_start();
  REQUIRE(t);
  CHECK_FALSE(g.write(node, "2", *t));
  CHECK(g.read(node, *t).value() == "2");
  CHECK(g.read(node).value() == "1");
  CHECK_FALSE(g.transaction_end(*t));
  CHECK(g.read(node).value() == "2");

  t = g.transaction_start();
  REQUIRE(t);
  CHECK_FALSE(g.write(node, "9", *t));
  CHECK_FALSE(g.transaction_end(*t, false));
  CHECK(g.read(node).value() == "2");

  t = g.transaction_start();
  REQUIRE(t);
  CHECK(g.read(node, *t).value() == "2");
  dom0_write(w.dom0.get(), node, "7");
  CHECK_FALSE(g.write(node, "3", *t));
  CHECK(g.transaction_end(*t) == std::errc::resource_unavailable_try_again);
  CHECK(dom0_read(w.dom0.get(), node) == "7");
}

TEST_CASE("messages larger than the 1 KiB rings go through in pieces") {
  world w;
  guest_xenstore g(w.xs.dir(), guest_domid);
  auto text = [](std::size_t n) {
    std::string s(n, 'x');
    for (std::size_t i = 0; i < n; ++i) s[i] = char('a' + i % 26);
    return s;
  };
  // Guest to xenstored: below the 2 KiB node-size quota of guests.
  const std::string two = text(2000);
  CHECK_FALSE(g.write(frontend + "/big", two));
  CHECK(dom0_read(w.dom0.get(), frontend + "/big") == two);
  // xenstored to guest: a value only dom0 may write that large.
  const std::string four = text(4000);
  dom0_write(w.dom0.get(), backend + "/big", four);
  CHECK(g.read(backend + "/big").value() == four);
  // The quota applies to the guest, as on real Xen.
  CHECK(g.write(frontend + "/huge", four) == std::errc::no_space_on_device);
  CHECK(g.write(frontend + "/huge", std::string(5000, 'x')) == std::errc::argument_list_too_long);
  // The connection is still in step after all that.
  CHECK(g.read(frontend + "/big").value() == two);
}

TEST_CASE("guest errors are bounded when xenstored is gone or the domain unknown") {
  std::filesystem::path dir;
  {
    xenstored xs;
    dir = xs.dir();
    xs.keep_trace();  // keep the files after the daemon has gone
    xs.introduce_domain(guest_domid);
    grant_data_dir(xs);
    guest_xenstore g(dir, guest_domid, 100ms);
    CHECK_FALSE(g.write("data/x", "1"));
    xs.stop();
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(g.read("data/x") == std::errc::timed_out);
    CHECK(std::chrono::steady_clock::now() - t0 < 2s);
    CHECK_THROWS_AS(guest_xenstore(dir, 6), std::system_error);  // never introduced
  }
  try {
    guest_xenstore g(dir, guest_domid);
    FAIL("connected without a xenstored");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::connection_refused);
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);

  xenstored xs;
  CHECK_THROWS_AS(xs.introduce_domain(0), std::system_error);
  CHECK_THROWS_AS(xs.kill_domain(DOMID_FIRST_RESERVED), std::system_error);
}

TEST_SUITE_END();
