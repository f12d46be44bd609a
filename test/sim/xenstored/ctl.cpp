// xbd-xenstored-sim: the simulated hypervisor's controls for scripts, over a
// xenstored run directory (scripts/xenstored-sim starts the daemon).
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <string>
#include <string_view>

#include "test/sim/xenstored/guest_xenstore.hpp"
#include "test/sim/xenstored/xenstored.hpp"

namespace {

constexpr const char* usage =
    "usage: xbd-xenstored-sim COMMAND DIR DOMID [ARGS]\n"
    "dom0 side:\n"
    "  introduce DIR DOMID          create the domain's ring and XS_INTRODUCE it\n"
    "  kill-domain DIR DOMID        mark it dying and raise VIRQ_DOM_EXC\n"
    "  release-domain DIR DOMID     XS_RELEASE it\n"
    "as the guest DOMID (exit status 1 and the errno name on failure):\n"
    "  guest-read DIR DOMID PATH\n"
    "  guest-write DIR DOMID PATH VALUE\n"
    "  guest-rm DIR DOMID PATH\n"
    "  guest-ls DIR DOMID PATH\n";

unsigned parse_domid(const char* s) {
  char* end = nullptr;
  const unsigned long v = std::strtoul(s, &end, 10);
  if (!*s || *end || v > 0xffffu) throw std::invalid_argument(std::string("bad domid: ") + s);
  return static_cast<unsigned>(v);
}

int fail(const std::error_code& ec) {
  std::cerr << "xbd-xenstored-sim: " << ec.message() << '\n';
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << usage;
    return 2;
  }
  const std::string_view cmd = argv[1];
  const std::filesystem::path dir = argv[2];
  try {
    const unsigned domid = parse_domid(argv[3]);
    if (cmd == "introduce" && argc == 4) {
      xbd::sim::introduce_domain(dir, domid);
      return 0;
    }
    if (cmd == "kill-domain" && argc == 4) {
      xbd::sim::kill_domain(dir, domid);
      return 0;
    }
    if (cmd == "release-domain" && argc == 4) {
      xbd::sim::release_domain(dir, domid);
      return 0;
    }
    if (cmd.starts_with("guest-")) {
      xbd::sim::guest_xenstore guest(dir, domid);
      if (cmd == "guest-read" && argc == 5) {
        auto v = guest.read(argv[4]);
        if (!v) return fail(v.error());
        std::cout << *v << '\n';
        return 0;
      }
      if (cmd == "guest-write" && argc == 6) {
        auto ec = guest.write(argv[4], argv[5]);
        return ec ? fail(ec) : 0;
      }
      if (cmd == "guest-rm" && argc == 5) {
        auto ec = guest.rm(argv[4]);
        return ec ? fail(ec) : 0;
      }
      if (cmd == "guest-ls" && argc == 5) {
        auto v = guest.directory(argv[4]);
        if (!v) return fail(v.error());
        for (const auto& e : *v) std::cout << e << '\n';
        return 0;
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "xbd-xenstored-sim: " << e.what() << '\n';
    return 1;
  }
  std::cerr << usage;
  return 2;
}
