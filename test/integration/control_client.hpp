// The integration tests' way to the daemon's control socket: the socket
// sim_env's configuration names, a start that waits for it, and
// xen-blkbackctl run against it (bounded).
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <vector>

#include "app/ctl/json.hpp"
#include "test/integration/process.hpp"
#include "test/integration/sim_env.hpp"

namespace xbd::test {

inline std::string socket_of(sim_env& env) { return (env.dir() / "control.sock").string(); }

// The daemon's socket is there once it listens.
inline void start(sim_env& env) {
  env.start_daemon();
  REQUIRE(env.log_shows("control socket " + socket_of(env)));
}

struct ctl_result {
  int status = -1;
  std::string out;
};

// The last run's output stays in ctl.log.
inline ctl_result ctl(sim_env& env, const std::vector<std::string>& args) {
  std::vector<std::string> argv{XBD_CTL_BIN, "--socket", socket_of(env)};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = run(argv, {}, env.dir() / "ctl.log", std::chrono::seconds(20));
  return {r.status, r.output};
}

// One vbd's object of `stats --json`, and the whole answer (for INFO).
struct vbd_stats_answer {
  ctl::json vbd;
  std::string text;
};

inline vbd_stats_answer vbd_stats_of(sim_env& env, unsigned domid, unsigned devid) {
  auto r = ctl(env, {"stats", "--json", std::to_string(domid) + "/" + std::to_string(devid)});
  REQUIRE(r.status == 0);
  std::string why;
  auto doc = ctl::json::parse(r.out, &why);
  INFO(r.out);
  REQUIRE_MESSAGE(doc.has_value(), why);
  REQUIRE((*doc)["vbds"].items().size() == 1u);
  return {(*doc)["vbds"].items()[0], r.out};
}

}  // namespace xbd::test
