// The integration tests' way to the daemon's control socket: the socket
// sim_env's configuration names, a start that waits for it, and
// xen-blkbackctl run against it (bounded).
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <vector>

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

}  // namespace xbd::test
