#include "test/sim/xenstored/xenstored.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include "asio_xen/xen.hpp"
#include "test/sim/xenstored/sim_files.hpp"

extern char** environ;

namespace xbd::sim {

using namespace std::chrono_literals;
using detail::throw_errno;
using detail::unique_fd;
using clock = std::chrono::steady_clock;

void xs_handle_closer::operator()(xs_handle* h) const noexcept { xs_close(h); }

namespace {

std::filesystem::path from_env_or(const char* var, const char* fallback) {
  const char* v = std::getenv(var);
  return v && *v ? std::filesystem::path(v) : std::filesystem::path(fallback);
}

void check_domid(unsigned domid, const char* what) {
  if (domid == 0 || domid >= DOMID_FIRST_RESERVED)
    throw_errno(EINVAL, std::string(what) + ": not a guest domid: " + std::to_string(domid));
}

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

std::filesystem::path default_xenstored_binary() { return from_env_or("XBD_XENSTORED", XBD_SIM_XENSTORED_BINARY); }

std::filesystem::path default_shim() { return from_env_or("XBD_XENSTORED_SHIM", XBD_SIM_XENSTORED_SHIM); }

std::filesystem::path socket_path(const std::filesystem::path& dir) { return dir / "socket"; }

namespace {
// Serialises our own changes of XENSTORED_PATH.
std::mutex env_lock;
}  // namespace

xs_ptr open_dom0(const std::filesystem::path& dir) {
  const std::string socket = socket_path(dir);
  xs_handle* h;
  int e;
  {
    std::lock_guard lock(env_lock);
    const char* old = std::getenv("XENSTORED_PATH");
    std::optional<std::string> saved;
    if (old) saved = old;
    ::setenv("XENSTORED_PATH", socket.c_str(), 1);
    // SOCKETONLY: never fall back to a kernel xenbus device.
    h = xs_open(XS_OPEN_SOCKETONLY);
    e = errno;
    if (saved)
      ::setenv("XENSTORED_PATH", saved->c_str(), 1);
    else
      ::unsetenv("XENSTORED_PATH");
  }
  if (!h) throw_errno(e, "xs_open " + socket);
  return xs_ptr(h);
}

void introduce_domain(const std::filesystem::path& dir, unsigned domid) {
  check_domid(domid, "introduce_domain");

  // A page that served an earlier life of the domain is reused (xenstored
  // may still have it mapped: truncating it could SIGBUS the daemon), but
  // cleared, as a new domain's page would be.
  const auto page = detail::page_file(dir, domid);
  unique_fd fd(::open(page.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd) throw_errno(errno, "open " + page.string());
  static const char zero[XBD_XS_PAGE_SIZE] = {};
  if (::ftruncate(fd.get(), sizeof zero) < 0 ||
      ::pwrite(fd.get(), zero, sizeof zero, 0) != static_cast<ssize_t>(sizeof zero))
    throw_errno(errno, "clear " + page.string());
  fd.reset();

  const auto fifo = detail::notify_fifo(dir, domid);
  if (::mkfifo(fifo.c_str(), 0600) < 0 && errno != EEXIST) throw_errno(errno, "mkfifo " + fifo.string());

  const auto dying = detail::dying_file(dir, domid);
  if (::unlink(dying.c_str()) < 0 && errno != ENOENT) throw_errno(errno, "unlink " + dying.string());

  auto h = open_dom0(dir);
  // The frame number is ignored by xenstored (it maps the domain's
  // GNTTAB_RESERVED_XENSTORE grant instead, i.e. the page file).
  if (!xs_introduce_domain(h.get(), domid, 0, XBD_XS_GUEST_PORT))
    throw_errno(errno, "xs_introduce_domain " + std::to_string(domid));
}

void kill_domain(const std::filesystem::path& dir, unsigned domid) {
  check_domid(domid, "kill_domain");
  const auto dying = detail::dying_file(dir, domid);
  unique_fd fd(::open(dying.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
  if (!fd) throw_errno(errno, "create " + dying.string());
  fd.reset();

  std::error_code ec;
  auto kick = detail::open_kick(dir, ec);
  if (!ec) ec = detail::kick(kick.get(), XBD_XS_KICK_VIRQ);
  if (ec) throw std::system_error(ec, "kill_domain: raise VIRQ_DOM_EXC in " + dir.string());
}

void release_domain(const std::filesystem::path& dir, unsigned domid) {
  check_domid(domid, "release_domain");
  auto h = open_dom0(dir);
  if (!xs_release_domain(h.get(), domid)) throw_errno(errno, "xs_release_domain " + std::to_string(domid));
}

namespace detail {

unique_fd open_kick(const std::filesystem::path& dir, std::error_code& ec) {
  const auto fifo = kick_fifo(dir);
  ec.clear();
  unique_fd probe(::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC));
  if (!probe) {
    ec = errno_code(errno == ENXIO || errno == ENOENT ? ECONNREFUSED : errno);
    return {};
  }
  unique_fd fd(::open(fifo.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC));
  if (!fd) ec = errno_code();
  return fd;
}

std::error_code kick(int fd, std::uint32_t message) {
  const auto deadline = clock::now() + 1s;
  for (;;) {
    const ssize_t n = ::write(fd, &message, sizeof message);
    if (n == static_cast<ssize_t>(sizeof message)) return {};
    if (n >= 0) return errno_code(EIO);  // impossible below PIPE_BUF
    if (errno == EINTR) continue;
    if (errno != EAGAIN) return errno_code();
    if (message != XBD_XS_KICK_VIRQ) return {};
    if (clock::now() >= deadline) return errno_code(ETIMEDOUT);
    std::this_thread::sleep_for(1ms);
  }
}

}  // namespace detail

// --------------------------------------------------------------------------

namespace {

// Everything the child needs, built before fork(): after fork() in a
// possibly multi-threaded process only async-signal-safe calls are allowed.
struct exec_plan {
  std::vector<std::string> args, env;
  std::vector<char*> argv, envp;

  void seal() {
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
  }
};

exec_plan make_plan(const xenstored_options& o, const std::filesystem::path& dir) {
  exec_plan p;
  p.args = {o.binary.string(), "-N", "-P", "-T", (dir / "trace").string()};
  p.args.insert(p.args.end(), o.extra_args.begin(), o.extra_args.end());
  for (char** e = environ; *e; ++e) {
    std::string_view v(*e);
    // Our preload only: the daemon is not instrumented, so a sanitizer
    // runtime preloaded for the tests must not follow it.
    if (v.starts_with("LD_PRELOAD=") || v.starts_with("XENSTORED_RUNDIR=") || v.starts_with("XENSTORED_PATH="))
      continue;  // xenstored binds XENSTORED_PATH: another instance's socket
    p.env.emplace_back(v);
  }
  p.env.push_back("LD_PRELOAD=" + o.shim.string());
  p.env.push_back("XENSTORED_RUNDIR=" + dir.string());
  p.seal();
  return p;
}

}  // namespace

xenstored::xenstored(xenstored_options o) : stop_timeout_(o.stop_timeout) {
  const char* keep = std::getenv("XBD_SIM_KEEP");
  keep_ = o.keep || (keep && std::string_view(keep) == "1");

  if (::access(o.binary.c_str(), X_OK) < 0)
    throw_errno(errno,
                "xenstored binary " + o.binary.string() + " (run scripts/fetch-xen-utils, or set XBD_XENSTORED)");
  if (::access(o.shim.c_str(), R_OK) < 0)
    throw_errno(errno, "xenstored shim " + o.shim.string() + " (or set XBD_XENSTORED_SHIM)");

  // Fixed and short: the socket path must fit in sockaddr_un (108 bytes),
  // which a long $TMPDIR could break.
  char tmpl[] = "/tmp/xbd-XXXXXX";
  if (!::mkdtemp(tmpl)) throw_errno(errno, "mkdtemp /tmp/xbd-XXXXXX");
  dir_ = tmpl;

  try {
    unique_fd log(::open(log_path().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!log) throw_errno(errno, "open " + log_path().string());
    unique_fd devnull(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (!devnull) throw_errno(errno, "open /dev/null");
    int p[2];
    if (::pipe2(p, O_CLOEXEC) < 0) throw_errno(errno, "pipe2");
    unique_fd out_r(p[0]), out_w(p[1]);

    auto plan = make_plan(o, dir_);
    const pid_t parent = ::getpid();
    const pid_t child = ::fork();
    if (child < 0) throw_errno(errno, "fork");
    if (child == 0) {
      // Dies with us even if we crash before the destructor runs.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(126);
      sigset_t none;
      ::sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      ::signal(SIGTERM, SIG_DFL);
      if (::dup2(devnull.get(), 0) < 0 || ::dup2(out_w.get(), 1) < 0 || ::dup2(log.get(), 2) < 0) ::_exit(126);
      ::close_range(3, ~0u, 0);
      ::execve(plan.argv[0], plan.argv.data(), plan.envp.data());
      ::_exit(127);
    }
    pid_ = child;
    out_w.reset();

    // -P prints the pid once the socket listens.
    std::string line;
    const auto deadline = clock::now() + o.start_timeout;
    while (line.find('\n') == std::string::npos) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - clock::now());
      if (left <= 0ms)
        throw_errno(ETIMEDOUT, "xenstored did not become ready in " + std::to_string(o.start_timeout.count()) +
                                   " ms; log:\n" + read_file(log_path()));
      pollfd pfd{out_r.get(), POLLIN, 0};
      const int r = ::poll(&pfd, 1, static_cast<int>(left.count()));
      if (r < 0 && errno != EINTR) throw_errno(errno, "poll");
      if (r <= 0) continue;
      char buf[64];
      const ssize_t n = ::read(out_r.get(), buf, sizeof buf);
      if (n < 0 && errno != EINTR && errno != EAGAIN) throw_errno(errno, "read xenstored stdout");
      if (n == 0) throw_errno(ECHILD, "xenstored exited during start-up; log:\n" + read_file(log_path()));
      if (n > 0) line.append(buf, static_cast<std::size_t>(n));
    }
    if (std::atol(line.c_str()) != pid_) throw_errno(EPROTO, "xenstored printed an unexpected pid: " + line);

    std::ofstream(dir_ / XBD_XS_PID_FILE) << pid_ << '\n';
  } catch (...) {
    stop();
    if (!keep_) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
    throw;
  }
}

xenstored::~xenstored() {
  stop();
  if (keep_) {
    std::fprintf(stderr, "xbd::sim::xenstored: kept %s (request trace: %s, log: %s)\n", dir_.c_str(),
                 trace_path().c_str(), log_path().c_str());
  } else {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

bool xenstored::running() {
  if (pid_ <= 0) return false;
  int status;
  if (::waitpid(pid_, &status, WNOHANG) == pid_) {
    pid_ = -1;
    return false;
  }
  return true;
}

std::string xenstored::env() const { return "XENSTORED_PATH=" + socket_path().string(); }

void xenstored::export_env() const {
  std::lock_guard lock(env_lock);
  ::setenv("XENSTORED_PATH", socket_path().c_str(), 1);
}

std::string xenstored::trace() const { return read_file(trace_path()); }

void xenstored::stop() noexcept {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  const auto deadline = clock::now() + stop_timeout_;
  int status;
  for (;;) {
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_ || (r < 0 && errno == ECHILD)) break;
    if (clock::now() >= deadline) {
      ::kill(pid_, SIGKILL);
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      break;
    }
    std::this_thread::sleep_for(1ms);
  }
  pid_ = -1;
}

}  // namespace xbd::sim
