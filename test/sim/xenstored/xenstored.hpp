// A real xenstored (Debian's C daemon, unmodified) per test, made to run
// without a hypervisor by the LD_PRELOAD shim (shim.c), plus the dom0-side
// controls of the simulated hypervisor: introducing a guest domain whose ring
// lives in a file of the run directory, and killing it.
//
// Everything a second process needs is in the run directory (see layout.h),
// so the free functions below take only that directory: the CLI
// (xbd-xenstored-sim) and other simulators use them from other processes.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

struct xs_handle;

namespace xbd::sim {

struct xs_handle_closer {
  void operator()(xs_handle* h) const noexcept;
};
// A libxenstore connection (dom0, privileged: a Unix-socket client).
using xs_ptr = std::unique_ptr<xs_handle, xs_handle_closer>;

// Paths of the daemon and the shim: $XBD_XENSTORED / $XBD_XENSTORED_SHIM if
// set, else the ones this build knows (build/deps/... from
// scripts/fetch-xen-utils, and the shim built next to this library).
std::filesystem::path default_xenstored_binary();
std::filesystem::path default_shim();

// The socket clients use: <dir>/socket.
std::filesystem::path socket_path(const std::filesystem::path& dir);

// A libxenstore connection to the xenstored of `dir`. libxenstore only takes
// the socket from $XENSTORED_PATH, so this sets it for the duration of the
// call and restores it (under a lock: call it from any thread, but do not
// read the variable concurrently from elsewhere). Throws std::system_error.
xs_ptr open_dom0(const std::filesystem::path& dir);

// Creates the domain's ring page and notification FIFO, clears a previous
// death, and introduces the domain to xenstored (XS_INTRODUCE, as libxl
// does). Afterwards a guest_xenstore for (dir, domid) can connect, from any
// process. Throws std::system_error (EINVAL for domid 0 or >= 0x7FF0).
void introduce_domain(const std::filesystem::path& dir, unsigned domid);

// Marks the domain dying (xc_domain_getinfo says so from now on) and raises
// VIRQ_DOM_EXC: xenstored then drops the domain's connection and fires
// @releaseDomain itself, as on real Xen. Asynchronous, like the real thing:
// watch @releaseDomain to know when xenstored has noticed.
void kill_domain(const std::filesystem::path& dir, unsigned domid);

// XS_RELEASE from dom0 (xs_release_domain): xenstored forgets the domain and
// fires @releaseDomain, without the domain being dead.
void release_domain(const std::filesystem::path& dir, unsigned domid);

struct xenstored_options {
  std::filesystem::path binary = default_xenstored_binary();
  std::filesystem::path shim = default_shim();
  // Extra daemon arguments (e.g. quotas: "-Q", "outstanding=4").
  std::vector<std::string> extra_args;
  // Readiness is xenstored printing its pid (-P), which it does once its
  // socket listens.
  std::chrono::milliseconds start_timeout{5000};
  // SIGTERM, then SIGKILL after this long.
  std::chrono::milliseconds stop_timeout{2000};
  // Keep the run directory (and so the -T trace) after destruction; also
  // forced by the environment variable XBD_SIM_KEEP=1.
  bool keep = false;
};

// One running xenstored in its own short temporary directory
// (/tmp/xbd-XXXXXX: socket paths must fit in 108 bytes). Instances are
// independent and can run side by side. The destructor always stops the
// daemon (by pid) and removes the directory unless kept. The daemon also
// dies with the thread that created the object (PR_SET_PDEATHSIG), so a
// crashed test leaves nothing behind: create it on a thread that outlives
// it (e.g. the test's main thread). Not copyable, not movable.
//
// A forked child that uses the instance must leave with _exit(): running
// the destructor there would stop the parent's daemon.
class xenstored {
 public:
  explicit xenstored(xenstored_options options = {});
  ~xenstored();
  xenstored(const xenstored&) = delete;
  xenstored& operator=(const xenstored&) = delete;

  const std::filesystem::path& dir() const noexcept { return dir_; }
  std::filesystem::path socket_path() const { return sim::socket_path(dir_); }
  std::filesystem::path trace_path() const { return dir_ / "trace"; }
  // The daemon's stderr.
  std::filesystem::path log_path() const { return dir_ / "xenstored.log"; }
  pid_t pid() const noexcept { return pid_; }
  // False once the daemon has exited (reaps it).
  bool running();

  // "XENSTORED_PATH=<socket>", for the environment of child processes.
  std::string env() const;
  // setenv("XENSTORED_PATH", socket) in this process: later xs_open() calls,
  // and children started afterwards, talk to this instance.
  void export_env() const;

  xs_ptr open_dom0() const { return sim::open_dom0(dir_); }
  void introduce_domain(unsigned domid) const { sim::introduce_domain(dir_, domid); }
  void kill_domain(unsigned domid) const { sim::kill_domain(dir_, domid); }
  void release_domain(unsigned domid) const { sim::release_domain(dir_, domid); }

  // Keep the directory, with the request trace, when this object is
  // destroyed; the destructor then prints where it is (stderr). Call it
  // when a test fails.
  void keep_trace(bool keep = true) noexcept { keep_ = keep; }
  // The request trace so far (-T), e.g. to print it on failure.
  std::string trace() const;

  // Stops the daemon now (SIGTERM, bounded wait, SIGKILL); idempotent.
  void stop() noexcept;

 private:
  std::filesystem::path dir_;
  pid_t pid_ = -1;
  std::chrono::milliseconds stop_timeout_;
  bool keep_ = false;
};

}  // namespace xbd::sim
