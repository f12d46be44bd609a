// A hostile guest against the real daemon, while another guest's verified
// workload runs beside it (hostile_rig.hpp): every case checks the answer
// the hostile guest gets, the line the daemon logs, and that the victim saw
// nothing (no error, no wrong block, at least half its solo throughput).
//
// Run it alone: xbd_integration_tests -tc='hostile*' (ctest: one test, the
// whole suite in one process).
#include <doctest/doctest.h>

#include "test/integration/hostile_rig.hpp"

using namespace xbd::test;
using namespace xbd::test::hostile;
using namespace std::chrono_literals;

// ============================================================ malformed requests

TEST_CASE("hostile: requests: an unknown operation is answered EOPNOTSUPP") {
  hostile_case c("requests: unknown operation");
  auto v = c.vbd();
  c.requests(v, "req op=0x63 id=1\n", {{1, rsp::eopnotsupp}});
  c.expect_log(v, "rejected request 1: unknown operation");
  c.finish();
}

TEST_CASE("hostile: requests: a read with no segment is answered ERROR") {
  hostile_case c("requests: read with nr_segments 0");
  auto v = c.vbd();
  c.requests(v, "req op=read id=1 nseg=0\n", {{1, rsp::error}});
  c.expect_log(v, "rejected request 1: segment count out of range");
  c.finish();
}
