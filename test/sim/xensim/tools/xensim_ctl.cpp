// xensim-ctl: controls a running simulation from a shell.
#include "asio_xen/xen.hpp"
#include "xensim.h"

#include <dirent.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

namespace {

int usage() {
  std::fprintf(stderr,
               "usage: xensim-ctl [-d DIR] COMMAND\n"
               "  (DIR defaults to $XENSIM_DIR)\n"
               "  faults [SPEC...]   set the fault knobs (no SPEC: clear them)\n"
               "  show-faults        print the fault control file\n"
               "  raise DOMID PORT   raise an event on a port (spurious event)\n"
               "  virq DOMID VIRQ    raise a VIRQ\n"
               "  reap               release what dead processes held\n"
               "  create DOMID       create a domain\n"
               "  dump [DOMID...]    ports and grants in use\n");
  return 2;
}

unsigned num(const char* s) {
  char* end = nullptr;
  unsigned long v = std::strtoul(s, &end, 0);
  if (!*s || *end) {
    std::fprintf(stderr, "xensim-ctl: not a number: %s\n", s);
    std::exit(2);
  }
  return static_cast<unsigned>(v);
}

int check(int rc, const char* what) {
  if (rc < 0) {
    std::fprintf(stderr, "xensim-ctl: %s: %s\n", what, std::strerror(errno));
    return 1;
  }
  return 0;
}

const char* state_name(unsigned s) {
  switch (s) {
    case XENSIM_PORT_UNBOUND:
      return "unbound";
    case XENSIM_PORT_INTERDOMAIN:
      return "interdomain";
    case XENSIM_PORT_VIRQ:
      return "virq";
    default:
      return "free";
  }
}

void dump(unsigned domid) {
  std::printf("domain %u\n", domid);
  for (unsigned p = 1; p < XENSIM_NR_PORTS; ++p) {
    xensim_port_info_t i{};
    if (xensim_port_info(domid, p, &i) != 0 || i.state == XENSIM_PORT_FREE) continue;
    std::printf("  port %u: %s", p, state_name(i.state));
    if (i.state == XENSIM_PORT_UNBOUND) std::printf(" (open to %u)", i.remote_dom);
    if (i.state == XENSIM_PORT_INTERDOMAIN) std::printf(" -> %u:%u", i.remote_dom, i.remote_port);
    if (i.state == XENSIM_PORT_VIRQ) std::printf(" %u", i.virq);
    std::printf("%s%s%s%s", i.bound ? "" : " (owner dead)", i.masked ? " masked" : "", i.pending ? " pending" : "",
                i.queued ? " queued" : "");
    if (i.bound) std::printf(" (handle ready %d)", i.handle_ready);
    std::printf("\n");
  }
  grant_entry_v1_t* g = xensim_grant_table(domid, nullptr);
  if (!g) return;
  for (unsigned r = 0; r < XENSIM_NR_GRANTS; ++r) {
    if (!g[r].flags) continue;
    std::uint32_t ro = 0, rw = 0;
    int f = xensim_grant_status(domid, r, &ro, &rw);
    std::printf("  ref %u: frame %u to d%u flags %#x%s pins ro %u rw %u\n", r, g[r].frame, g[r].domid, f,
                (f & GTF_readonly) ? " (read-only)" : "", ro, rw);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int i = 1;
  if (i + 1 < argc && std::strcmp(argv[i], "-d") == 0) {
    setenv("XENSIM_DIR", argv[i + 1], 1);
    i += 2;
  }
  if (i >= argc) return usage();
  std::string cmd = argv[i++];
  int left = argc - i;
  if (cmd == "faults") {
    std::string spec;
    for (; i < argc; ++i) spec += std::string(argv[i]) + "\n";
    return check(xensim_set_faults(spec.c_str()), "faults");
  }
  if (cmd == "show-faults") {
    const char* dir = getenv("XENSIM_DIR");
    if (!dir) return usage();
    std::ifstream f(std::string(dir) + "/xensim.faults");
    std::stringstream ss;
    ss << f.rdbuf();
    std::fputs(ss.str().c_str(), stdout);
    return 0;
  }
  if (cmd == "raise" && left == 2) return check(xensim_raise(num(argv[i]), num(argv[i + 1])), "raise");
  if (cmd == "virq" && left == 2) return check(xensim_send_virq(num(argv[i]), num(argv[i + 1])), "virq");
  if (cmd == "create" && left == 1) return check(xensim_domain_create(num(argv[i])), "create");
  if (cmd == "reap" && left == 0) {
    int n = xensim_reap();
    if (n >= 0) std::printf("%d process(es) reaped\n", n);
    return check(n, "reap");
  }
  if (cmd == "dump") {
    std::set<unsigned> doms;
    for (; i < argc; ++i) doms.insert(num(argv[i]));
    if (doms.empty()) {
      const char* dir = getenv("XENSIM_DIR");
      DIR* d = dir ? opendir(dir) : nullptr;
      if (!d) return usage();
      while (dirent* e = readdir(d)) {
        unsigned n = 0;
        char tail = 0;
        if (std::sscanf(e->d_name, "xensim.dom%u%c", &n, &tail) == 1) doms.insert(n);
      }
      closedir(d);
    }
    for (unsigned d : doms) dump(d);
    return 0;
  }
  return usage();
}
