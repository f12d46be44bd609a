// xen-blkbackd-dm's QMP responder: what libxl 4.17 says to a qemu-xen device
// model at start-up, answered as QEMU would.
#include "app/dm/qmp.hpp"

#include <doctest/doctest.h>

using xbd::dm::machine_state;
using xbd::dm::qmp_session;

TEST_CASE("QMP: the greeting announces QMP with a version") {
  auto g = qmp_session::greeting();
  CHECK(g.find("\"QMP\"") != std::string::npos);
  CHECK(g.find("\"version\"") != std::string::npos);
  CHECK(g.ends_with("\r\n"));
}

TEST_CASE("QMP: libxl's start-up conversation is answered, ids echoed") {
  machine_state m;
  qmp_session s(m);
  auto caps = s.feed("{\"execute\":\"qmp_capabilities\",\"id\":1}\r\n");
  CHECK(caps.find("\"return\"") != std::string::npos);
  CHECK(caps.find("\"id\": 1") != std::string::npos);
  auto chardev = s.feed("{\"execute\":\"query-chardev\",\"id\":2}");
  CHECK(chardev.find("\"return\": []") != std::string::npos);
  CHECK(chardev.find("\"id\": 2") != std::string::npos);
  CHECK_FALSE(s.broken());
}

TEST_CASE("QMP: a command split across reads is answered once it is whole") {
  machine_state m;
  qmp_session s(m);
  CHECK(s.feed("{\"execute\":\"qmp_capa").empty());
  CHECK(s.feed("bilities\"}").find("\"return\"") != std::string::npos);
}

TEST_CASE("QMP: garbage breaks the session instead of being guessed at") {
  machine_state m;
  qmp_session s(m);
  (void)s.feed("this is not json}\r\n");
  CHECK(s.broken());
}
