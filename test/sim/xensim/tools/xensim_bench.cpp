// xensim-bench: what the simulator itself costs, so that a benchmark of the
// backend can subtract it. Prints medians (and p99 for wake-ups) of:
//  - a notify into a sleeping peer process: one-way wake latency and round
//    trip, with both processes on one CPU and on two CPUs;
//  - the notifying side's cost: a notify that wakes (one sendto) and one
//    that is latched on a masked port (no syscall);
//  - grant copy of 4 KiB (and 11 x 4 KiB, a full blkif request), map+unmap.
//
// Usage: xensim-bench [iterations]   (runs in a private simulation under
// /dev/shm unless XENSIM_DIR is set)
#include "asio_xen/xen.hpp"
#include "xensim.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

namespace {

constexpr unsigned kGuest = 5;
constexpr std::size_t kPg = 4096;

std::int64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

void pin(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  sched_setaffinity(0, sizeof s, &s);
}

void unpin() {
  cpu_set_t s;
  CPU_ZERO(&s);
  for (int i = 0; i < CPU_SETSIZE; ++i) CPU_SET(i, &s);
  sched_setaffinity(0, sizeof s, &s);
}

void as_dom(unsigned d) { setenv("XENSIM_DOMID", std::to_string(d).c_str(), 1); }

[[noreturn]] void die(const char* what) {
  std::perror(what);
  std::exit(1);
}

struct Stats {
  double median, p99;
};
Stats stats(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v[std::min(v.size() - 1, v.size() * 99 / 100)]};
}

void wait_fd(int fd) {
  pollfd p{fd, POLLIN, 0};
  while (poll(&p, 1, -1) != 1) {
  }
}

// Takes what fired and unmasks it.
void consume(xenevtchn_handle* h) {
  int p;
  while ((p = xenevtchn_pending(h)) >= 0) xenevtchn_unmask(h, static_cast<evtchn_port_t>(p));
}

struct Shared {  // between the two processes
  volatile int guest_port;
  volatile std::int64_t sent_ns;
  double one_way_us[1];  // really [n]
};

// Ping-pong between this process (dom0, on cpu_back) and a forked guest
// (on cpu_guest), each sleeping in poll() on its event-channel descriptor.
void wakeups(int n, int cpu_back, int cpu_guest, Stats& one_way, Stats& rtt) {
  std::size_t shsize = sizeof(Shared) + sizeof(double) * static_cast<std::size_t>(n);
  auto* sh = static_cast<Shared*>(mmap(nullptr, shsize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  sh->guest_port = 0;
  const int warm = n / 10;
  pid_t pid = fork();
  if (pid == 0) {
    pin(cpu_guest);
    as_dom(kGuest);
    auto* g = xenevtchn_open(nullptr, 0);
    if (!g) _exit(1);
    int gp = xenevtchn_bind_unbound_port(g, 0);
    fcntl(xenevtchn_fd(g), F_SETFL, O_NONBLOCK);
    __atomic_store_n(&sh->guest_port, gp, __ATOMIC_RELEASE);
    for (int i = 0; i < n + warm; ++i) {
      wait_fd(xenevtchn_fd(g));
      std::int64_t t = now_ns();
      if (i >= warm) sh->one_way_us[i - warm] = static_cast<double>(t - sh->sent_ns) / 1e3;
      consume(g);
      xenevtchn_notify(g, static_cast<evtchn_port_t>(gp));
    }
    xenevtchn_close(g);
    _exit(0);
  }
  pin(cpu_back);
  int gp;
  while ((gp = __atomic_load_n(&sh->guest_port, __ATOMIC_ACQUIRE)) == 0) sched_yield();
  as_dom(0);
  auto* b = xenevtchn_open(nullptr, 0);
  if (!b || gp < 0) die("guest/backend open");
  int bp = xenevtchn_bind_interdomain(b, kGuest, static_cast<evtchn_port_t>(gp));
  if (bp < 0) die("bind_interdomain");
  fcntl(xenevtchn_fd(b), F_SETFL, O_NONBLOCK);
  consume(b);  // Xen's bind-time event
  std::vector<double> rt;
  for (int i = 0; i < n + warm; ++i) {
    std::int64_t t0 = now_ns();
    sh->sent_ns = t0;
    xenevtchn_notify(b, static_cast<evtchn_port_t>(bp));
    wait_fd(xenevtchn_fd(b));
    std::int64_t t1 = now_ns();
    consume(b);
    if (i >= warm) rt.push_back(static_cast<double>(t1 - t0) / 1e3);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  unpin();
  one_way = stats(std::vector<double>(sh->one_way_us, sh->one_way_us + n));
  rtt = stats(rt);
  xenevtchn_close(b);
  munmap(sh, shsize);
}

// The same ping-pong over two plain pipes: the kernel's own wake-up cost,
// which the simulator cannot go below.
Stats raw_pipe_rtt(int n, int cpu_a, int cpu_b) {
  int ab[2], ba[2];
  if (pipe(ab) || pipe(ba)) die("pipe");
  const int warm = n / 10;
  pid_t pid = fork();
  if (pid == 0) {
    pin(cpu_b);
    char c;
    for (int i = 0; i < n + warm; ++i) {
      wait_fd(ab[0]);
      if (read(ab[0], &c, 1) != 1 || write(ba[1], &c, 1) != 1) _exit(1);
    }
    _exit(0);
  }
  pin(cpu_a);
  std::vector<double> rt;
  char c = 0;
  for (int i = 0; i < n + warm; ++i) {
    std::int64_t t0 = now_ns();
    if (write(ab[1], &c, 1) != 1) die("write");
    wait_fd(ba[0]);
    std::int64_t t1 = now_ns();
    if (read(ba[0], &c, 1) != 1) die("read");
    if (i >= warm) rt.push_back(static_cast<double>(t1 - t0) / 1e3);
  }
  waitpid(pid, nullptr, 0);
  unpin();
  for (int f : {ab[0], ab[1], ba[0], ba[1]}) close(f);
  return stats(rt);
}

template <class F>
double per_op_ns(int n, F f) {
  std::vector<double> runs;
  for (int r = 0; r < 5; ++r) {
    std::int64_t t0 = now_ns();
    for (int i = 0; i < n; ++i) f(i);
    runs.push_back(static_cast<double>(now_ns() - t0) / n);
  }
  return stats(runs).median;
}

}  // namespace

int main(int argc, char** argv) {
  int n = argc > 1 ? std::atoi(argv[1]) : 2000;
  if (n < 10) n = 10;
  std::string dir;
  if (!getenv("XENSIM_DIR")) {
    char t[] = "/dev/shm/xensim-bench.XXXXXX";
    if (!mkdtemp(t)) die("mkdtemp");
    dir = t;
    setenv("XENSIM_DIR", t, 1);
  }
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  std::printf("xensim-bench: %d iterations, %ld CPUs\n\n", n, cpus);

  std::printf("%-52s %10s %10s\n", "notify into a sleeping peer process", "median", "p99");
  for (int two = 0; two <= (cpus > 1 ? 1 : 0); ++two) {
    Stats ow{}, rt{};
    wakeups(n, 0, two, ow, rt);
    std::printf("  %-50s %8.1f us %8.1f us\n", two ? "one-way wake, two CPUs" : "one-way wake, one CPU", ow.median,
                ow.p99);
    std::printf("  %-50s %8.1f us %8.1f us\n", two ? "round trip, two CPUs" : "round trip, one CPU", rt.median, rt.p99);
    Stats raw = raw_pipe_rtt(n, 0, two);
    std::printf("  %-50s %8.1f us %8.1f us\n",
                two ? "(reference: raw pipe round trip, two CPUs)" : "(reference: raw pipe round trip, one CPU)",
                raw.median, raw.p99);
  }

  // The notifying side.
  {
    as_dom(kGuest);
    auto* g = xenevtchn_open(nullptr, 0);
    as_dom(0);
    auto* b = xenevtchn_open(nullptr, 0);
    int gp = xenevtchn_bind_unbound_port(g, 0);
    if (xenevtchn_bind_interdomain(b, kGuest, static_cast<evtchn_port_t>(gp)) < 0) die("bind");
    fcntl(xenevtchn_fd(g), F_SETFL, O_NONBLOCK);
    fcntl(xenevtchn_fd(b), F_SETFL, O_NONBLOCK);
    consume(b);
    std::vector<double> wake;
    for (int i = 0; i < n; ++i) {
      std::int64_t t0 = now_ns();
      xenevtchn_notify(g, static_cast<evtchn_port_t>(gp));
      wake.push_back(static_cast<double>(now_ns() - t0));
      consume(b);
    }
    double cycle = per_op_ns(n, [&](int) {
      xenevtchn_notify(g, static_cast<evtchn_port_t>(gp));
      consume(b);
    });
    xenevtchn_notify(g, static_cast<evtchn_port_t>(gp));  // delivered: port now masked
    double latched = per_op_ns(n * 10, [&](int) { xenevtchn_notify(g, static_cast<evtchn_port_t>(gp)); });
    consume(b);
    std::printf("\n%-52s %10s\n", "notify, caller's cost", "median");
    std::printf("  %-50s %8.2f us\n", "notify that wakes the peer (one write)", stats(wake).median / 1e3);
    std::printf("  %-50s %8.2f us\n", "notify on a masked peer port (latched)", latched / 1e3);
    std::printf("  %-50s %8.2f us\n", "notify + pending + unmask, same thread", cycle / 1e3);
    xenevtchn_close(b);
    xenevtchn_close(g);
  }

  // Grants.
  {
    if (xensim_domain_create(kGuest) != 0) die("domain");
    std::uint32_t frames[11];
    if (xensim_frames_alloc(kGuest, 11, frames) != 0) die("frames");
    std::uint32_t refs[11];
    for (int i = 0; i < 11; ++i) refs[i] = static_cast<std::uint32_t>(xensim_grant_access(kGuest, 0, frames[i], 0));
    auto* mem = static_cast<std::uint8_t*>(xensim_domain_memory(kGuest, nullptr));
    for (auto f : frames) std::memset(mem + f * kPg, 0x33, kPg);
    as_dom(0);
    auto* gt = xengnttab_open(nullptr, 0);
    if (!gt) die("xengnttab_open");
    static std::uint8_t buf[11 * kPg];
    static std::uint8_t other[kPg];
    xengnttab_grant_copy_segment_t seg[11]{};
    for (int i = 0; i < 11; ++i) {
      seg[i].source.foreign = {refs[i], 0, static_cast<std::uint16_t>(kGuest)};
      seg[i].dest.virt = buf + i * kPg;
      seg[i].len = kPg;
      seg[i].flags = GNTCOPY_source_gref;
    }
    double memcpy_ns = per_op_ns(n * 10, [&](int) {
      std::memcpy(buf, other, kPg);
      asm volatile("" ::: "memory");
    });
    double copy1 = per_op_ns(n * 10, [&](int) { xengnttab_grant_copy(gt, 1, seg); });
    double copy11 = per_op_ns(n, [&](int) { xengnttab_grant_copy(gt, 11, seg); });
    double map1 = per_op_ns(n, [&](int) {
      void* p = xengnttab_map_grant_ref(gt, kGuest, refs[0], PROT_READ | PROT_WRITE);
      xengnttab_unmap(gt, p, 1);
    });
    double map11 = per_op_ns(n, [&](int) {
      void* p = xengnttab_map_domain_grant_refs(gt, 11, kGuest, refs, PROT_READ | PROT_WRITE);
      xengnttab_unmap(gt, p, 11);
    });
    std::printf("\n%-52s %10s\n", "grants (in cache)", "median");
    std::printf("  %-50s %8.2f us\n", "memcpy 4 KiB (reference)", memcpy_ns / 1e3);
    std::printf("  %-50s %8.2f us\n", "grant copy 4 KiB, 1 segment", copy1 / 1e3);
    std::printf("  %-50s %8.2f us\n", "grant copy 11 x 4 KiB (one call)", copy11 / 1e3);
    std::printf("  %-50s %8.2f us\n", "map + unmap 1 page", map1 / 1e3);
    std::printf("  %-50s %8.2f us\n", "map + unmap 11 pages", map11 / 1e3);
    xengnttab_close(gt);
  }
  if (!dir.empty()) std::filesystem::remove_all(dir);
  return 0;
}
