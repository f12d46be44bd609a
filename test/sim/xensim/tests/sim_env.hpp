// Helpers for the xensim tests: a private simulation directory per test,
// acting as a given domain, and a connected guest/backend event channel.
#pragma once

#include "asio_xen/xen.hpp"
#include "xensim.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

namespace xst {

inline constexpr unsigned kGuest = 5;
inline constexpr unsigned kBack = 0;

// A fresh simulation under /dev/shm, made current (XENSIM_DIR) for its life.
struct SimDir {
  std::string path;
  SimDir() {
    char t[] = "/dev/shm/xst.XXXXXX";
    REQUIRE(mkdtemp(t) != nullptr);
    path = t;
    use();
  }
  ~SimDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  SimDir(const SimDir&) = delete;
  SimDir& operator=(const SimDir&) = delete;
  void use() const { setenv("XENSIM_DIR", path.c_str(), 1); }
};

// Handles opened while it lives belong to domain `domid`.
struct AsDom {
  explicit AsDom(unsigned domid) { setenv("XENSIM_DOMID", std::to_string(domid).c_str(), 1); }
  ~AsDom() { unsetenv("XENSIM_DOMID"); }
};

inline xenevtchn_handle* evtchn_as(unsigned domid) {
  AsDom as(domid);
  auto* h = xenevtchn_open(nullptr, 0);
  REQUIRE(h != nullptr);
  return h;
}
inline xengnttab_handle* gnttab_as(unsigned domid) {
  AsDom as(domid);
  auto* h = xengnttab_open(nullptr, 0);
  REQUIRE(h != nullptr);
  return h;
}
inline xengntshr_handle* gntshr_as(unsigned domid) {
  AsDom as(domid);
  auto* h = xengntshr_open(nullptr, 0);
  REQUIRE(h != nullptr);
  return h;
}

inline bool readable(int fd, int timeout_ms = 0) {
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, timeout_ms) == 1 && (p.revents & POLLIN);
}

inline void set_nonblock(int fd, bool on = true) {
  int fl = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

inline xensim_port_info_t port_info(unsigned domid, unsigned port) {
  xensim_port_info_t i{};
  REQUIRE(xensim_port_info(domid, port, &i) == 0);
  return i;
}

// A guest (kGuest) port bound to a backend (kBack) port. The backend's
// bind-time event (Xen sets the new port pending) is consumed and the port
// unmasked, so both ends start quiet; both descriptors are non-blocking.
struct Channel {
  xenevtchn_handle* guest = nullptr;
  xenevtchn_handle* back = nullptr;
  int gport = -1, bport = -1;
  Channel() {
    guest = evtchn_as(kGuest);
    back = evtchn_as(kBack);
    gport = xenevtchn_bind_unbound_port(guest, kBack);
    REQUIRE(gport > 0);
    bport = xenevtchn_bind_interdomain(back, kGuest, static_cast<evtchn_port_t>(gport));
    REQUIRE(bport > 0);
    set_nonblock(xenevtchn_fd(guest));
    set_nonblock(xenevtchn_fd(back));
    REQUIRE(xenevtchn_pending(back) == bport);
    REQUIRE(xenevtchn_unmask(back, static_cast<evtchn_port_t>(bport)) == 0);
    REQUIRE(xenevtchn_pending(back) == -1);
  }
  ~Channel() {
    if (guest) xenevtchn_close(guest);
    if (back) xenevtchn_close(back);
  }
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;
};

// Runs `f` in a fork child and returns its exit status (or 128+signal).
inline int in_child(const std::function<int()>& f) {
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) _exit(f());
  int st = 0;
  REQUIRE(waitpid(pid, &st, 0) == pid);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

// Kills and reaps a forked child when the test ends, failed or not.
struct ChildGuard {
  pid_t pid;
  explicit ChildGuard(pid_t p) : pid(p) {}
  ~ChildGuard() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
  // Kills it now; returns once it is gone.
  void kill_now() {
    kill(pid, SIGKILL);
    int st = 0;
    REQUIRE(waitpid(pid, &st, 0) == pid);
    pid = -1;
  }
  ChildGuard(const ChildGuard&) = delete;
  ChildGuard& operator=(const ChildGuard&) = delete;
};

// A byte pipe for a child to say "ready".
struct Pipe {
  int fd[2] = {-1, -1};
  Pipe() { REQUIRE(pipe2(fd, O_CLOEXEC) == 0); }
  ~Pipe() {
    for (int f : fd)
      if (f >= 0) close(f);
  }
  void say(char c) { REQUIRE(write(fd[1], &c, 1) == 1); }
  char hear(int timeout_ms = 5000) {
    if (!readable(fd[0], timeout_ms)) return 0;
    char c = 0;
    return read(fd[0], &c, 1) == 1 ? c : 0;
  }
};

inline double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Runs a call that might block for good (a blocking pending()) with a bound:
// after `limit_ms` the calling thread gets SIGUSR1, again every 10 ms until
// the call returns, through a handler without SA_RESTART, so a poll() inside
// returns EINTR and a regression fails the test instead of hanging it.
// Returns the call's result, its errno, and how long it took.
struct bounded_result {
  int value = 0;
  int err = 0;
  double ms = 0;
};
inline bounded_result bounded_call(int limit_ms, const std::function<int()>& call) {
  struct sigaction sa {
  }, old{};
  sa.sa_handler = [](int) {};
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART
  sigaction(SIGUSR1, &sa, &old);
  const pthread_t self = pthread_self();
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::thread guard([&] {
    std::unique_lock lk(mu);
    if (cv.wait_for(lk, std::chrono::milliseconds(limit_ms), [&] { return done; })) return;
    while (!cv.wait_for(lk, std::chrono::milliseconds(10), [&] { return done; })) pthread_kill(self, SIGUSR1);
  });
  const auto t0 = std::chrono::steady_clock::now();
  bounded_result r;
  errno = 0;
  r.value = call();
  r.err = errno;
  r.ms = ms_since(t0);
  {
    std::lock_guard lk(mu);
    done = true;
  }
  cv.notify_all();
  guard.join();
  sigaction(SIGUSR1, &old, nullptr);
  return r;
}

}  // namespace xst
