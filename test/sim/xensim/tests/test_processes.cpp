// Several processes: a guest and a backend in separate processes through a
// binary linked against the real libraries (LD_PRELOAD / LD_LIBRARY_PATH),
// processes killed while holding ports and grants, simulations side by side.
#include "sim_env.hpp"

#include <link.h>

#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

extern char** environ;

using namespace xst;

namespace {

constexpr std::size_t kPg = 4096;

// The ASan runtime this (sanitized) test runs with: an ASan program must
// have it first in the preload list, before libxensim.so.
std::string asan_runtime() {
  std::string found;
  dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t, void* out) {
        if (info->dlpi_name && std::strstr(info->dlpi_name, "libasan.so")) {
          *static_cast<std::string*>(out) = info->dlpi_name;
          return 1;
        }
        return 0;
      },
      &found);
  return found;
}

enum class Load { preload, libpath, none };

pid_t spawn(const std::vector<std::string>& args, const std::string& dir, unsigned domid, Load how) {
  std::vector<std::string> env;
  auto overridden = [](const char* e) {
    for (const char* k : {"XENSIM_DIR=", "XENSIM_DOMID=", "LD_PRELOAD=", "LD_LIBRARY_PATH="})
      if (std::strncmp(e, k, std::strlen(k)) == 0) return true;
    return false;
  };
  for (char** e = environ; *e; ++e)
    if (!overridden(*e)) env.emplace_back(*e);
  env.push_back("XENSIM_DIR=" + dir);
  env.push_back("XENSIM_DOMID=" + std::to_string(domid));
  std::string preload;
  if (XENSIM_SANITIZED) preload = asan_runtime();
  if (how == Load::preload) preload += (preload.empty() ? "" : " ") + std::string(XENSIM_LIB_PATH);
  if (!preload.empty()) env.push_back("LD_PRELOAD=" + preload);
  if (how == Load::libpath) env.push_back(std::string("LD_LIBRARY_PATH=") + XENSIM_LIBDIR_PATH);
  std::vector<char*> argv, envp;
  for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  return pid;
}

// Exit status of `pid`, killing it after `timeout_ms` (then -1); the pid is
// reset, being no longer ours.
int wait_exit(pid_t& pid_ref, int timeout_ms = 20000) {
  pid_t pid = std::exchange(pid_ref, -1);
  auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    int st = 0;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (ms_since(t0) > timeout_ms) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

int wait_exit(pid_t&& pid, int timeout_ms = 20000) {
  pid_t p = pid;
  return wait_exit(p, timeout_ms);
}

struct Pair {
  pid_t guest = -1, back = -1;
  Pair() = default;
  Pair(Pair&& o) noexcept : guest(std::exchange(o.guest, -1)), back(std::exchange(o.back, -1)) {}
  Pair(const Pair&) = delete;
  Pair& operator=(const Pair&) = delete;
  ~Pair() {
    // Normally already reaped (and reset) by wait_exit; a failed REQUIRE
    // leaves them running.
    for (pid_t p : {guest, back})
      if (p > 0) {
        kill(p, SIGKILL);
        waitpid(p, nullptr, 0);
      }
  }
};

// Starts a guest, waits for its refs, starts the backend.
Pair start_pair(const SimDir& sim, Load how, int requests) {
  Pair p;
  std::string out = sim.path + "/guest.out";
  p.guest = spawn({XENSIM_PEER_PATH, "guest", std::to_string(requests), out}, sim.path, kGuest, how);
  unsigned ring = 0, data = 0, port = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    std::ifstream f(out);
    if (f >> ring >> data >> port) break;
    REQUIRE(ms_since(t0) < 10000);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  p.back = spawn({XENSIM_PEER_PATH, "backend", std::to_string(kGuest), std::to_string(ring), std::to_string(port),
                  std::to_string(requests)},
                 sim.path, kBack, how);
  return p;
}

}  // namespace

TEST_SUITE("xensim") {
  TEST_CASE("a binary linked against the real libraries gets the simulator") {
    SimDir sim;
    CHECK(wait_exit(spawn({XENSIM_PEER_PATH, "which"}, sim.path, 0, Load::preload)) == 0);
    CHECK(wait_exit(spawn({XENSIM_PEER_PATH, "which"}, sim.path, 0, Load::libpath)) == 0);
    // Without either, the real libraries answer (and the check says so).
    CHECK(wait_exit(spawn({XENSIM_PEER_PATH, "which"}, sim.path, 0, Load::none)) == 3);
  }

  TEST_CASE("two processes exchange a ring, grants and events (LD_PRELOAD on the real binary)") {
    SimDir sim;
    Pair p = start_pair(sim, Load::preload, 300);
    CHECK(wait_exit(p.back) == 0);
    CHECK(wait_exit(p.guest) == 0);
  }

  TEST_CASE("simulations side by side do not interfere") {
    SimDir a, b;
    // Two pairs at once, same domids, same ports and refs, one per simulation;
    // one pair through LD_PRELOAD, the other through LD_LIBRARY_PATH.
    Pair pa = start_pair(a, Load::preload, 200);
    Pair pb = start_pair(b, Load::libpath, 200);
    CHECK(wait_exit(pa.back) == 0);
    CHECK(wait_exit(pb.back) == 0);
    CHECK(wait_exit(pa.guest) == 0);
    CHECK(wait_exit(pb.guest) == 0);

    // In this process too: same numbers, separate worlds.
    a.use();
    Channel ca;
    b.use();
    Channel cb;
    CHECK(ca.gport == cb.gport);
    a.use();
    REQUIRE(xenevtchn_notify(ca.guest, static_cast<evtchn_port_t>(ca.gport)) == 0);
    CHECK(readable(xenevtchn_fd(ca.back), 1000));
    CHECK_FALSE(readable(xenevtchn_fd(cb.back), 50));
    auto* sa = gntshr_as(kGuest);
    std::uint32_t ra = 0;
    auto* pa_page = static_cast<char*>(xengntshr_share_pages(sa, kBack, 1, &ra, 1));
    REQUIRE(pa_page != nullptr);
    pa_page[0] = 'A';
    b.use();
    auto* sb = gntshr_as(kGuest);
    std::uint32_t rb = 0;
    auto* pb_page = static_cast<char*>(xengntshr_share_pages(sb, kBack, 1, &rb, 1));
    REQUIRE(pb_page != nullptr);
    pb_page[0] = 'B';
    CHECK(ra == rb);
    auto* gt = gnttab_as(kBack);  // in b
    auto* m = static_cast<char*>(xengnttab_map_grant_ref(gt, kGuest, rb, PROT_READ));
    REQUIRE(m != nullptr);
    CHECK(m[0] == 'B');
    xengnttab_unmap(gt, m, 1);
    xengnttab_close(gt);
    xengntshr_close(sb);
    a.use();
    xengntshr_close(sa);
  }

  TEST_CASE("XENSIM_FAULTS affects its own process only") {
    setenv("XENSIM_FAULTS", "map_fail=all", 1);
    SimDir sim;
    REQUIRE(xensim_domain_create(kGuest) == 0);
    int ref = xensim_grant_access(kGuest, kBack, 100, 0);
    REQUIRE(ref > 0);
    auto* gt = gnttab_as(kBack);
    unsetenv("XENSIM_FAULTS");
    CHECK(xengnttab_map_grant_ref(gt, kGuest, static_cast<std::uint32_t>(ref), PROT_READ) == nullptr);
    CHECK(xengnttab_map_grant_ref(gt, kGuest, static_cast<std::uint32_t>(ref), PROT_READ) == nullptr);
    // Meanwhile another pair in the same simulation maps its ring fine.
    Pair p = start_pair(sim, Load::preload, 20);
    CHECK(wait_exit(p.back) == 0);
    CHECK(wait_exit(p.guest) == 0);
    xengnttab_close(gt);
  }

  TEST_CASE("a backend killed while bound and mapping: its port and grants are released") {
    SimDir sim;
    auto* gev = evtchn_as(kGuest);
    auto* gs = gntshr_as(kGuest);
    set_nonblock(xenevtchn_fd(gev));
    int gp = xenevtchn_bind_unbound_port(gev, kBack);
    REQUIRE(gp > 0);
    std::uint32_t ref = 0;
    auto* page = static_cast<std::uint8_t*>(xengntshr_share_pages(gs, kBack, 1, &ref, 1));
    REQUIRE(page != nullptr);
    page[16] = 0x77;
    Pipe ready;
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      setenv("XENSIM_DOMID", "0", 1);
      auto* ev = xenevtchn_open(nullptr, 0);
      auto* gt = xengnttab_open(nullptr, 0);
      if (!ev || !gt) _exit(2);
      int bp = xenevtchn_bind_interdomain(ev, kGuest, static_cast<evtchn_port_t>(gp));
      if (bp < 0) _exit(3);
      if (!xengnttab_map_grant_ref_notify(gt, kGuest, ref, PROT_READ | PROT_WRITE, 16, static_cast<evtchn_port_t>(bp)))
        _exit(4);
      char c = 'r';
      if (write(ready.fd[1], &c, 1) != 1) _exit(5);
      for (;;) pause();
    }
    ChildGuard child(pid);
    REQUIRE(ready.hear() == 'r');
    CHECK(port_info(kGuest, static_cast<unsigned>(gp)).state == XENSIM_PORT_INTERDOMAIN);
    std::uint32_t ro = 0, rw = 0;
    xensim_grant_status(kGuest, ref, &ro, &rw);
    CHECK(rw == 1);
    child.kill_now();

    // A restarted backend binds the same port: the dead one is detected, and
    // what its kernel would have done at exit is done.
    auto* b2 = evtchn_as(kBack);
    int bp2 = xenevtchn_bind_interdomain(b2, kGuest, static_cast<evtchn_port_t>(gp));
    CHECK(bp2 > 0);
    xensim_grant_status(kGuest, ref, &ro, &rw);
    CHECK(ro + rw == 0);
    CHECK(page[16] == 0);                 // its unmap notification: byte cleared...
    CHECK(xenevtchn_pending(gev) == gp);  // ...and event sent
    xenevtchn_close(b2);
    xengntshr_close(gs);
    xenevtchn_close(gev);
  }

  TEST_CASE("a guest killed while sharing: reap notifies the backend and ends access after unmap") {
    SimDir sim;
    Pipe ready;
    struct Info {
      std::uint32_t ref;
      int port;
    };
    int info_pipe[2];
    REQUIRE(pipe(info_pipe) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      setenv("XENSIM_DOMID", "5", 1);
      auto* ev = xenevtchn_open(nullptr, 0);
      auto* gs = xengntshr_open(nullptr, 0);
      if (!ev || !gs) _exit(2);
      Info in{};
      in.port = xenevtchn_bind_unbound_port(ev, kBack);
      auto* p = static_cast<std::uint8_t*>(
          xengntshr_share_page_notify(gs, kBack, &in.ref, 1, 8, static_cast<evtchn_port_t>(in.port)));
      if (!p || in.port < 0) _exit(3);
      p[8] = 1;
      if (write(info_pipe[1], &in, sizeof in) != sizeof in) _exit(4);
      for (;;) pause();
    }
    ChildGuard child(pid);
    Info in{};
    REQUIRE(read(info_pipe[0], &in, sizeof in) == sizeof in);
    close(info_pipe[0]);
    close(info_pipe[1]);
    auto* ev = evtchn_as(kBack);
    set_nonblock(xenevtchn_fd(ev));
    int bp = xenevtchn_bind_interdomain(ev, kGuest, static_cast<evtchn_port_t>(in.port));
    REQUIRE(bp > 0);
    REQUIRE(xenevtchn_pending(ev) == bp);
    xenevtchn_unmask(ev, static_cast<evtchn_port_t>(bp));
    auto* gt = gnttab_as(kBack);
    auto* m = static_cast<std::uint8_t*>(xengnttab_map_grant_ref(gt, kGuest, in.ref, PROT_READ));
    REQUIRE(m != nullptr);
    CHECK(m[8] == 1);
    child.kill_now();

    CHECK(xensim_reap() == 1);
    CHECK(m[8] == 0);                    // gntalloc's notify byte...
    CHECK(xenevtchn_pending(ev) == bp);  // ...and event
    auto bi = port_info(kBack, static_cast<unsigned>(bp));
    CHECK(bi.state == XENSIM_PORT_UNBOUND);  // the guest's port closed
    CHECK(bi.remote_dom == kGuest);
    grant_entry_v1_t* gnt = xensim_grant_table(kGuest, nullptr);
    CHECK((gnt[in.ref].flags & GTF_permit_access) != 0);  // deferred: still mapped
    REQUIRE(xengnttab_unmap(gt, m, 1) == 0);
    CHECK(gnt[in.ref].flags == 0);
    CHECK(xensim_reap() == 0);
    xengnttab_close(gt);
    xenevtchn_close(ev);
  }

  TEST_CASE("a fork child cannot use its parent's handles, and closing them is harmless") {
    SimDir sim;
    Channel ch;
    int rc = in_child([&] {
      errno = 0;
      if (xenevtchn_notify(ch.back, static_cast<evtchn_port_t>(ch.bport)) != -1 || errno != EBADF) return 1;
      xenevtchn_close(ch.back);
      // Its own handles work.
      auto* mine = xenevtchn_open(nullptr, 0);
      if (!mine) return 2;
      xenevtchn_close(mine);
      return 0;
    });
    CHECK(rc == 0);
    CHECK(port_info(kBack, static_cast<unsigned>(ch.bport)).state == XENSIM_PORT_INTERDOMAIN);
    REQUIRE(xenevtchn_notify(ch.back, static_cast<evtchn_port_t>(ch.bport)) == 0);
    CHECK(readable(xenevtchn_fd(ch.guest), 1000));
  }

  // Xen's send cannot be cut; the sim's delivery is steps in the producer.
  // A backend SIGKILLed between them stranded its frontend's whole handle:
  // in the daemon's recovery soak, both queues of a guest went unanswered
  // for good (evtchn.cpp, "A producer killed in the middle of a delivery").
  TEST_CASE("a producer killed in the middle of a notify: once it is reaped, the consumer gets every event") {
    std::string point;
    SUBCASE("after queueing the port") { point = "notify_queued"; }
    SUBCASE("after counting it, before the wake-up") { point = "notify_counted"; }
    CAPTURE(point);
    SimDir sim;
    // A guest handle with two ports, as a two-queue frontend has.
    auto* g = evtchn_as(kGuest);
    const int fd = xenevtchn_fd(g);
    set_nonblock(fd);
    const int gp1 = xenevtchn_bind_unbound_port(g, kBack), gp2 = xenevtchn_bind_unbound_port(g, kBack);
    REQUIRE(gp1 > 0);
    REQUIRE(gp2 > 0);
    auto* b = evtchn_as(kBack);
    const int bp1 = xenevtchn_bind_interdomain(b, kGuest, static_cast<evtchn_port_t>(gp1));
    const int bp2 = xenevtchn_bind_interdomain(b, kGuest, static_cast<evtchn_port_t>(gp2));
    REQUIRE(bp1 > 0);
    REQUIRE(bp2 > 0);
    REQUIRE_FALSE(readable(fd));

    // The producer dies inside its first delivery, to gp1.
    const int st = in_child([&] {
      setenv("XENSIM_DIE_AT", point.c_str(), 1);
      xensim_raise(kGuest, static_cast<std::uint32_t>(gp1));
      return 0;
    });
    REQUIRE(st == 128 + SIGKILL);
    CHECK(port_info(kGuest, static_cast<unsigned>(gp1)).queued);

    // What a restarted backend does: it joins (which reaps the dead one),
    // then notifies the other queue.
    CHECK(xensim_reap() == 1);
    CHECK(readable(fd, 1000));
    REQUIRE(xenevtchn_notify(b, static_cast<evtchn_port_t>(bp2)) == 0);
    std::set<int> got;
    for (int i = 0; i < 10 && readable(fd, 200); ++i) {
      const int p = xenevtchn_pending(g);
      if (p < 0) continue;  // a stray count, dropped
      got.insert(p);
      REQUIRE(xenevtchn_unmask(g, static_cast<evtchn_port_t>(p)) == 0);
    }
    CHECK(got == std::set<int>{gp1, gp2});
    CHECK_FALSE(readable(fd, 50));
    // Both ports work as before.
    for (int bp : {bp1, bp2}) {
      REQUIRE(xenevtchn_notify(b, static_cast<evtchn_port_t>(bp)) == 0);
      REQUIRE(readable(fd, 1000));
      CHECK(xenevtchn_pending(g) == (bp == bp1 ? gp1 : gp2));
      REQUIRE(xenevtchn_unmask(g, static_cast<evtchn_port_t>(bp == bp1 ? gp1 : gp2)) == 0);
    }
    xenevtchn_close(b);
    xenevtchn_close(g);
  }

  // A grant entry's lock was tagged with the holder's process slot only.
  // A backend killed while holding one (mid-copy) left it to its slot, the
  // restarted backend was given that slot, and took the lock for its own:
  // it spun on it forever, with every queue of that worker thread.
  TEST_CASE("a process killed holding a grant entry's lock: the next process in its slot copies that grant") {
    SimDir sim;
    auto* gs = gntshr_as(kGuest);
    std::uint32_t ref = 0;
    auto* page = static_cast<std::uint8_t*>(xengntshr_share_pages(gs, kBack, 1, &ref, 1));
    REQUIRE(page != nullptr);
    page[0] = 0x5a;
    // A backend process: copies the first byte of the page, exit 0 if right.
    auto backend = [&](const char* die_at) {
      pid_t pid = fork();
      REQUIRE(pid >= 0);
      if (pid == 0) {
        if (die_at) setenv("XENSIM_DIE_AT", die_at, 1);
        setenv("XENSIM_DOMID", "0", 1);
        auto* gt = xengnttab_open(nullptr, 0);
        if (!gt) _exit(2);
        std::uint8_t byte = 0;
        xengnttab_grant_copy_segment_t seg{};
        seg.source.foreign.ref = ref;
        seg.source.foreign.domid = kGuest;
        seg.dest.virt = &byte;
        seg.len = 1;
        seg.flags = GNTCOPY_source_gref;
        if (xengnttab_grant_copy(gt, 1, &seg) != 0 || seg.status != GNTST_okay) _exit(3);
        _exit(byte == 0x5a ? 0 : 4);
      }
      return wait_exit(pid, 5000);  // -1: still running after 5 s, killed
    };
    REQUIRE(backend("entry_locked") == 128 + SIGKILL);
    CHECK(backend(nullptr) == 0);
    CHECK(backend(nullptr) == 0);
    xengntshr_close(gs);
  }

}  // TEST_SUITE
