// xbd-xenbus-sim: the xenstore device of a simulated domain's kernel, for
// the programs that run "in" that domain (domain_xenbus.hpp): point them at
// SOCKET with XENSTORED_PATH and xenstored treats them as domain DOMID.
#include <signal.h>
#include <sys/prctl.h>

#include <atomic>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <string>

#include "test/sim/xenstored/domain_xenbus.hpp"

namespace {

std::atomic<bool> stop{false};

void on_signal(int) { stop = true; }

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: xbd-xenbus-sim RUN_DIR DOMID SOCKET\n"
                 "Relays the clients of SOCKET to the xenstored of RUN_DIR on domain DOMID's ring\n"
                 "(the domain must be introduced) until SIGTERM or SIGINT.\n";
    return 2;
  }
  // A test that dies takes its relay with it.
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
  try {
    const auto domid = static_cast<unsigned>(std::stoul(argv[2]));
    xbd::sim::domain_xenbus bus(argv[1], domid, argv[3]);
    std::cout << "xbd-xenbus-sim: domain " << domid << " on " << argv[3] << std::endl;
    bus.run(stop);
  } catch (const std::exception& e) {
    std::cerr << "xbd-xenbus-sim: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
