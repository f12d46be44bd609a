#include "asio_xen/xenstore.hpp"
#include "test/fakes/fake_xenstore.hpp"
#include "test/unit/run.hpp"

#include <doctest/doctest.h>
#include <boost/asio/io_context.hpp>

using namespace xbd::asio_xen;
using xbd::fakes::fake_xenstore;
namespace asio = boost::asio;

TEST_CASE("values parse strictly: the whole text is the number") {
  CHECK(parse_value<unsigned>("12").value() == 12u);
  CHECK(parse_value<unsigned>("0").value() == 0u);
  for (const char* bad : {"12x", " 12", "12 ", "+12", "", "0x10", "-1", "4294967296", "1.5"}) {
    CAPTURE(bad);
    auto r = parse_value<unsigned>(bad);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error() == make_error_code(errc::malformed_value));
  }
  CHECK(parse_value<int>("-1").value() == -1);
  CHECK(parse_value<std::uint64_t>("18446744073709551615").value() == UINT64_MAX);
  CHECK_FALSE(parse_value<std::uint8_t>("256").has_value());
}

TEST_CASE("booleans are \"0\" and \"1\" only") {
  CHECK(parse_value<bool>("1").value());
  CHECK_FALSE(parse_value<bool>("0").value());
  for (const char* bad : {"yes", "true", "2", "", "01", " 1"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_value<bool>(bad).has_value());
  }
}

TEST_CASE("permissions round-trip through their text form") {
  auto p = xs_permission::parse("r5");
  REQUIRE(p.has_value());
  CHECK(p->domid == 5u);
  CHECK(p->perm == xs_permission::access::read);
  CHECK(p->to_string() == "r5");
  CHECK(xs_permission{0, xs_permission::access::none}.to_string() == "n0");
  CHECK(xs_permission{7, xs_permission::access::both}.to_string() == "b7");
  CHECK_FALSE(xs_permission::parse("x5").has_value());
  CHECK_FALSE(xs_permission::parse("r").has_value());
  CHECK_FALSE(xs_permission::parse("r5x").has_value());
}

TEST_CASE("typed reads: a malformed value is an error, a missing key is ENOENT or nullopt") {
  asio::io_context ioc;
  fake_xenstore db;
  xenstore xs(ioc.get_executor(), db.connect());
  db.write("/a/num", "12");
  db.write("/a/bad", "12x");
  CHECK(xs.read<unsigned>("/a/num").value() == 12u);
  CHECK(xs.read<unsigned>("/a/bad").error() == make_error_code(errc::malformed_value));
  CHECK(xs.read<unsigned>("/a/none").error() == boost::system::errc::no_such_file_or_directory);
  auto opt = xs.read_optional<unsigned>("/a/none");
  REQUIRE(opt.has_value());
  CHECK_FALSE(opt->has_value());
  CHECK(xs.read_optional<unsigned>("/a/bad").error() == make_error_code(errc::malformed_value));
  CHECK(xs.read_optional<unsigned>("/a/num").value().value() == 12u);
}

TEST_CASE("write, directory, permissions and rm through the wrapper") {
  asio::io_context ioc;
  fake_xenstore db;
  xenstore xs(ioc.get_executor(), db.connect());
  REQUIRE_FALSE(xs.write("/d/x", "1"));
  REQUIRE_FALSE(xs.write("/d/y", 7u));
  REQUIRE_FALSE(xs.mkdir("/d/z"));
  auto dir = xs.directory("/d");
  REQUIRE(dir.has_value());
  CHECK(*dir == std::vector<std::string>{"x", "y", "z"});
  CHECK(xs.read("/d/y").value() == "7");
  std::vector<xs_permission> perms{{0, xs_permission::access::none}, {5, xs_permission::access::read}};
  REQUIRE_FALSE(xs.set_permissions("/d", perms));
  CHECK(xs.get_permissions("/d").value() == perms);
  REQUIRE_FALSE(xs.rm("/d"));
  CHECK_FALSE(db.exists("/d/x"));
}

TEST_CASE("an unprivileged domain is refused where xenstored would refuse it") {
  asio::io_context ioc;
  fake_xenstore db;
  db.write("/local/domain/0/backend/qdisk/5/51712/params", "raw:/img");
  db.set_permissions("/local/domain/0/backend/qdisk/5/51712",
                     {{0, xs_permission::access::none}, {5, xs_permission::access::read}});
  db.set_permissions("/local/domain/0/backend/qdisk/5/51712/params",
                     {{0, xs_permission::access::none}, {5, xs_permission::access::read}});
  db.write("/local/domain/5/device/vbd/51712/state", "1");
  db.set_permissions("/local/domain/5", {{5, xs_permission::access::none}, {0, xs_permission::access::read}});
  db.set_permissions("/local/domain/5/device", {{5, xs_permission::access::none}, {0, xs_permission::access::read}});
  db.set_permissions("/local/domain/5/device/vbd",
                     {{5, xs_permission::access::none}, {0, xs_permission::access::read}});
  db.set_permissions("/local/domain/5/device/vbd/51712",
                     {{5, xs_permission::access::none}, {0, xs_permission::access::read}});
  db.set_permissions("/local/domain/5/device/vbd/51712/state",
                     {{5, xs_permission::access::none}, {0, xs_permission::access::read}});
  xenstore guest(ioc.get_executor(), db.connect(5));
  CHECK(guest.read("/local/domain/0/backend/qdisk/5/51712/params").value() == "raw:/img");
  CHECK(guest.write("/local/domain/0/backend/qdisk/5/51712/params", "raw:/etc/shadow") ==
        boost::system::errc::permission_denied);
  CHECK(guest.write("/local/domain/0/backend/qdisk/5/51712/state", "4") == boost::system::errc::permission_denied);
  CHECK_FALSE(guest.write("/local/domain/5/device/vbd/51712/state", "3"));
  CHECK_FALSE(guest.write("/local/domain/5/device/vbd/51712/ring-ref", "8"));
  // A node the guest creates is its own.
  CHECK(guest.get_permissions("/local/domain/5/device/vbd/51712/ring-ref").value().at(0).domid == 5u);
  CHECK(db.read("/local/domain/0/backend/qdisk/5/51712/params") == "raw:/img");
}

TEST_CASE("a transaction that conflicts is run again until it commits") {
  asio::io_context ioc;
  fake_xenstore db;
  xenstore xs(ioc.get_executor(), db.connect());
  db.fail_next_commits(3);
  int runs = 0;
  error_code ec = xs.transact([&](transaction& t) {
    ++runs;
    if (auto e = t.write("/t/a", "1")) return e;
    return t.write("/t/b", std::to_string(runs));
  });
  CHECK_FALSE(ec);
  CHECK(runs == 4);
  CHECK(db.conflicts() == 3u);
  CHECK(db.read("/t/b") == "4");
}

TEST_CASE("a transaction that keeps conflicting gives up and writes nothing") {
  asio::io_context ioc;
  fake_xenstore db;
  xenstore xs(ioc.get_executor(), db.connect());
  db.fail_next_commits(1000);
  int runs = 0;
  error_code ec = xs.transact(
      [&](transaction& t) {
        ++runs;
        return t.write("/t/a", "1");
      },
      5);
  CHECK(ec == make_error_code(errc::too_many_retries));
  CHECK(runs == 5);
  CHECK_FALSE(db.exists("/t/a"));
}

TEST_CASE("a transaction body that fails aborts: none of its writes land") {
  asio::io_context ioc;
  fake_xenstore db;
  xenstore xs(ioc.get_executor(), db.connect());
  error_code ec = xs.transact([&](transaction& t) -> error_code {
    (void)t.write("/t/a", "1");
    return make_error_code(errc::malformed_value);
  });
  CHECK(ec == make_error_code(errc::malformed_value));
  CHECK_FALSE(db.exists("/t/a"));
}

TEST_CASE("a conflicting change by someone else makes the commit retry with fresh reads") {
  asio::io_context ioc;
  fake_xenstore db;
  xenstore xs(ioc.get_executor(), db.connect());
  db.write("/c/n", "1");
  int runs = 0;
  error_code ec = xs.transact([&](transaction& t) -> error_code {
    ++runs;
    auto n = t.read<unsigned>("/c/n");
    if (!n) return n.error();
    if (runs == 1) db.write("/c/n", "10");  // a concurrent writer
    return t.write("/c/n", *n + 1);
  });
  CHECK_FALSE(ec);
  CHECK(runs == 2);
  CHECK(db.read("/c/n") == "11");
}

TEST_CASE("a watch fires once when it is set, then on a change under its path") {
  asio::io_context ioc;
  fake_xenstore db;
  xenstore xs(ioc.get_executor(), db.connect());
  auto w = xs.watch_path("/w");
  REQUIRE(w.has_value());
  CHECK_FALSE(xbd::test::run(ioc, w->changed()));  // the registration event
  CHECK_FALSE(xbd::test::finishes(ioc, w->changed()));
  db.write("/w/x/y", "1");
  CHECK_FALSE(xbd::test::run(ioc, w->changed()));
  db.write("/other", "1");
  CHECK_FALSE(xbd::test::finishes(ioc, w->changed()));
}

TEST_CASE("a thousand changes before the waiter runs are one wake-up, and nothing piles up (XSA-349)") {
  asio::io_context ioc;
  fake_xenstore db;
  xenstore xs(ioc.get_executor(), db.connect());
  auto w = xs.watch_path("/local/domain/5/device");
  REQUIRE(w.has_value());
  CHECK_FALSE(xbd::test::run(ioc, w->changed()));
  // A guest writes ten thousand distinct nodes under the watched path.
  auto guest = db.connect(0);
  for (int i = 0; i < 10000; ++i)
    (void)guest->write(no_transaction, "/local/domain/5/device/junk" + std::to_string(i), "x");
  CHECK_FALSE(xbd::test::run(ioc, w->changed()));
  // All of them were taken off the connection and folded into that one wake-up.
  CHECK(db.queued_events() == 0u);
  CHECK(xs.events_read() == 10001u);
  CHECK_FALSE(w->pending());
  CHECK_FALSE(xbd::test::finishes(ioc, w->changed()));
}

TEST_CASE("two watches are signalled independently") {
  asio::io_context ioc;
  fake_xenstore db;
  xenstore xs(ioc.get_executor(), db.connect());
  auto a = xs.watch_path("/a");
  auto b = xs.watch_path("/b");
  REQUIRE(a.has_value());
  REQUIRE(b.has_value());
  CHECK_FALSE(xbd::test::run(ioc, a->changed()));
  CHECK_FALSE(xbd::test::run(ioc, b->changed()));
  db.write("/b/1", "x");
  CHECK_FALSE(xbd::test::finishes(ioc, a->changed()));
  CHECK_FALSE(xbd::test::run(ioc, b->changed()));
}

TEST_CASE("one watch can cover several paths") {
  asio::io_context ioc;
  fake_xenstore db;
  xenstore xs(ioc.get_executor(), db.connect());
  auto w = xs.watch_path("/fe/state");
  REQUIRE(w.has_value());
  REQUIRE_FALSE(w->add("/be/online"));
  CHECK_FALSE(xbd::test::run(ioc, w->changed()));  // both registration events, coalesced
  CHECK_FALSE(xbd::test::finishes(ioc, w->changed()));
  db.write("/be/online", "0");
  CHECK_FALSE(xbd::test::run(ioc, w->changed()));
}

TEST_CASE("removing an ancestor fires a watch on a node below it") {
  asio::io_context ioc;
  fake_xenstore db;
  db.write("/local/domain/5/device/vbd/51712/state", "4");
  xenstore xs(ioc.get_executor(), db.connect());
  auto w = xs.watch_path("/local/domain/5/device/vbd/51712/state");
  REQUIRE(w.has_value());
  CHECK_FALSE(xbd::test::run(ioc, w->changed()));
  auto c = db.connect(0);
  REQUIRE_FALSE(c->rm(no_transaction, "/local/domain/5"));
  CHECK_FALSE(xbd::test::run(ioc, w->changed()));
}

TEST_CASE("a special watch fires on its event only") {
  asio::io_context ioc;
  fake_xenstore db;
  xenstore xs(ioc.get_executor(), db.connect());
  auto w = xs.watch_path("@releaseDomain");
  REQUIRE(w.has_value());
  CHECK_FALSE(xbd::test::run(ioc, w->changed()));
  db.write("/x", "1");
  CHECK_FALSE(xbd::test::finishes(ioc, w->changed()));
  db.fire_special("@releaseDomain");
  CHECK_FALSE(xbd::test::run(ioc, w->changed()));
}

TEST_CASE("a destroyed watch is unregistered: later changes queue nothing") {
  asio::io_context ioc;
  fake_xenstore db;
  xenstore xs(ioc.get_executor(), db.connect());
  {
    auto w = xs.watch_path("/gone");
    REQUIRE(w.has_value());
    CHECK_FALSE(xbd::test::run(ioc, w->changed()));
  }
  db.write("/gone/x", "1");
  CHECK(db.queued_events() == 0u);
}

TEST_CASE("transaction writes are invisible until commit, and watches fire at commit") {
  asio::io_context ioc;
  fake_xenstore db;
  xenstore xs(ioc.get_executor(), db.connect());
  auto w = xs.watch_path("/tx");
  REQUIRE(w.has_value());
  CHECK_FALSE(xbd::test::run(ioc, w->changed()));
  bool seen_inside = false;
  error_code ec = xs.transact([&](transaction& t) -> error_code {
    if (auto e = t.write("/tx/sectors", "2048")) return e;
    seen_inside = t.read("/tx/sectors").value() == "2048";
    // Not visible outside yet, and nothing fired.
    CHECK_FALSE(db.exists("/tx/sectors"));
    CHECK(db.queued_events() == 0u);
    return {};
  });
  CHECK_FALSE(ec);
  CHECK(seen_inside);
  CHECK(db.read("/tx/sectors") == "2048");
  CHECK_FALSE(xbd::test::run(ioc, w->changed()));
}

TEST_CASE("waiting on a watch of a closed connection ends with errc::closed") {
  asio::io_context ioc;
  fake_xenstore db;
  auto xs = std::make_unique<xenstore>(ioc.get_executor(), db.connect());
  auto w = xs->watch_path("/c");
  REQUIRE(w.has_value());
  CHECK_FALSE(xbd::test::run(ioc, w->changed()));
  xs.reset();
  CHECK(xbd::test::run(ioc, w->changed()) == make_error_code(errc::closed));
}
