#include "asio_xen/error.hpp"
#include "asio_xen/evtchn.hpp"
#include "asio_xen/gnttab.hpp"
#include "asio_xen/xenstore.hpp"

#include <doctest/doctest.h>

#include <cstdlib>

using namespace xbd::asio_xen;

TEST_CASE("a failed Xen call names the call and the errno, and compares as a generic errno") {
  error_code ec = xen_error(call::xengnttab_grant_copy, EPERM);
  CHECK(std::string(ec.category().name()) == "xengnttab_grant_copy");
  CHECK(ec.value() == EPERM);
  CHECK(ec == boost::system::errc::operation_not_permitted);
  CHECK(ec.what().find("xengnttab_grant_copy") != std::string::npos);
  CHECK(ec.what().find("Operation not permitted") != std::string::npos);
}

TEST_CASE("a failure reported with errno 0 still reads as a failure") {
  error_code ec = xen_error(call::xs_read, 0);
  CHECK(ec.failed());
  CHECK(ec.value() == EIO);
}

TEST_CASE("grant status codes have their own messages") {
  CHECK(grant_status_error(GNTST_bad_copy_arg).message() == "copy beyond the page");
  CHECK(grant_status_error(GNTST_permission_denied).failed());
  CHECK(grant_status_error(-99).message().find("-99") != std::string::npos);
}

TEST_CASE("without a hypervisor the real event channel and grant table fail to open with ENOENT, naming the call") {
  // This machine has no /dev/xen: the real libraries must fail cleanly.
  auto e = open_libxenevtchn();
  REQUIRE_FALSE(e.has_value());
  CHECK(std::string(e.error().category().name()) == "xenevtchn_open");
  CHECK(e.error() == boost::system::errc::no_such_file_or_directory);
  auto g = open_libxengnttab();
  REQUIRE_FALSE(g.has_value());
  CHECK(std::string(g.error().category().name()) == "xengnttab_open");
}

TEST_CASE("a xenstore connection to a socket that does not exist fails, naming xs_open") {
  ::setenv("XENSTORED_PATH", "/nonexistent/xbd-test/socket", 1);
  auto s = open_libxenstore();
  ::unsetenv("XENSTORED_PATH");
  REQUIRE_FALSE(s.has_value());
  CHECK(std::string(s.error().category().name()) == "xs_open");
}
