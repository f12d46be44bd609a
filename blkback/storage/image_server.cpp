#include "blkback/storage/image_server.hpp"

#include "asio_xen/wakeable.hpp"

#include "blkback/log.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>
#include <vector>

// glibc 2.36's header lacks the C++ guards (fixed in 2.37).
extern "C" {
#include <sys/pidfd.h>
}

namespace xbd::blkback::storage {

namespace asio = boost::asio;
using asio_xen::error_code;
using namespace std::chrono_literals;

namespace {

const asio_xen::xen_call_category qsd_call{"qemu-storage-daemon"};
const asio_xen::xen_call_category mkdir_call{"mkdir"};
const asio_xen::xen_call_category socket_call{"socket"};
const asio_xen::xen_call_category open_call{"open"};
const asio_xen::xen_call_category fork_call{"fork"};
const asio_xen::xen_call_category pidfd_call{"pidfd_open"};

constexpr auto term_grace = 2s;  // SIGTERM to SIGKILL: qsd flushes and closes the image meanwhile
constexpr auto kill_grace = 1s;  // SIGKILL to giving up on reaping (a child stuck in the kernel)
constexpr auto first_backoff = 100ms;
constexpr auto max_backoff = 5s;
constexpr auto stable_run = 60s;  // a qsd that ran this long starts the back-off afresh
constexpr auto log_window = 60s;  // restarts logged at most log_burst times per window
constexpr unsigned log_burst = 3;
constexpr std::size_t detail_max = 300;

logger& server_log() {
  static logger lg;
  return lg;
}

// QEMU's option syntax: a ',' inside a value is written twice.
std::string opt_value(std::string_view v) {
  std::string out;
  for (char c : v) {
    out += c;
    if (c == ',') out += ',';
  }
  return out;
}

bool valid_name(std::string_view n) {
  if (n.empty() || n.size() > 64 || n == "." || n == "..") return false;
  for (char c : n) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.';
    if (!ok) return false;
  }
  return true;
}

bool executable_file(const std::filesystem::path& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(p.c_str(), X_OK) == 0;
}

// The program as exec will run it: a path with a '/' as given, a bare
// name looked up in PATH.
std::optional<std::filesystem::path> find_program(const std::filesystem::path& program) {
  if (program.empty()) return std::nullopt;
  if (program.native().find('/') != std::string::npos) {
    if (executable_file(program)) return program;
    return std::nullopt;
  }
  const char* env = ::getenv("PATH");
  const std::string path = env && *env ? env : "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  std::size_t pos = 0;
  for (;;) {
    const auto colon = path.find(':', pos);
    const std::string dir = path.substr(pos, colon == std::string::npos ? std::string::npos : colon - pos);
    const std::filesystem::path candidate = std::filesystem::path(dir.empty() ? "." : dir) / program;
    if (executable_file(candidate)) return candidate;
    if (colon == std::string::npos) return std::nullopt;
    pos = colon + 1;
  }
}

std::string missing_program(const std::filesystem::path& program) {
  if (program == "qemu-storage-daemon")
    return "qemu-storage-daemon is not installed (Debian: apt-get install qemu-system-common)";
  if (program.native().find('/') == std::string::npos)
    return program.string() + " is not found in PATH (it serves images that are not raw)";
  return program.string() + " is not an executable file";
}

std::string exit_description(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const char* abbrev = ::sigabbrev_np(WTERMSIG(status));
    return std::string("was killed by SIG") + (abbrev ? abbrev : std::to_string(WTERMSIG(status)).c_str());
  }
  return "ended (status " + std::to_string(status) + ")";
}

std::string cut(std::string s) {
  if (s.size() > detail_max) s = s.substr(0, detail_max) + "...";
  return s;
}

}  // namespace

struct image_server::state {
  asio::any_io_executor ex;
  image_format format = image_format::raw;
  std::filesystem::path image;
  image_server_options opt;
  std::filesystem::path program;  // resolved
  std::filesystem::path dir;
  std::filesystem::path nbd_path;
  std::filesystem::path qmp_path;
  std::filesystem::path stderr_path;
  nbd_target target;
  bool block_device = false;
  bool io_uring = true;  // tried first when direct; off once qsd refuses it

  int listen_fd = -1;
  pid_t pid = -1;      // the current child, until reaped
  int exec_pipe = -1;  // read end: errno from a failed exec
  // The child's pidfd, ours to close (reap() does). Watched only through
  // supervise()'s wakeable_wait, `death` while it waits: on io_uring no Asio
  // wait is ever cancelled (asio_xen/wakeable.hpp), so waits that must end
  // early are wakeable, and bounded waits poll with a timer.
  int pidfd = -1;
  asio_xen::wakeable_wait* death = nullptr;
  std::chrono::steady_clock::time_point started_at{};
  asio::steady_timer timer;  // back-off

  unsigned restarts = 0;
  bool stopping = false;
  bool stopped = false;
  bool supervising = false;

  // Restart lines: log_burst per log_window, then a count.
  std::chrono::steady_clock::time_point window_start{};
  unsigned logged_in_window = 0;
  unsigned suppressed = 0;

  explicit state(asio::any_io_executor e) : ex(e), timer(e) {}
  ~state() {
    close_fds();
    if (pidfd >= 0) ::close(pidfd);
  }

  void close_fds() {
    if (listen_fd >= 0) ::close(listen_fd);
    listen_fd = -1;
    if (exec_pipe >= 0) ::close(exec_pipe);
    exec_pipe = -1;
  }

  std::vector<std::string> args() const {
    const bool ro = !opt.writable;
    std::string file = std::string("driver=") + (block_device ? "host_device" : "file") +
                       ",node-name=file,filename=" + opt_value(image.string());
    if (opt.direct) file += std::string(",cache.direct=on,aio=") + (io_uring ? "io_uring" : "threads");
    if (ro) file += ",read-only=on";
    if (opt.discard) file += ",discard=unmap";
    std::string fmt = "driver=" + std::string(to_string(format)) + ",node-name=format,file=file";
    if (ro) fmt += ",read-only=on";
    if (opt.discard) fmt += ",discard=unmap";
    return {program.string(),
            "--blockdev",
            file,
            "--blockdev",
            fmt,
            "--nbd-server",
            "addr.type=fd,addr.str=3",
            "--export",
            "type=nbd,id=export,node-name=format,name=" + opt_value(opt.name) + ",writable=" + (ro ? "off" : "on"),
            "--chardev",
            "socket,id=qmp,path=" + opt_value(qmp_path.string()) + ",server=on,wait=off",
            "--monitor",
            "chardev=qmp"};
  }

  // The last thing qsd said, without its name or the option it quotes.
  std::string last_words() const {
    std::ifstream in(stderr_path, std::ios::binary);
    if (!in) return {};
    in.seekg(0, std::ios::end);
    const auto size = static_cast<std::streamoff>(in.tellg());
    const std::streamoff from = size > 4096 ? size - 4096 : 0;
    in.seekg(from);
    std::string text((std::istreambuf_iterator<char>(in)), {});
    std::string line;
    std::size_t end = text.size();
    while (end > 0) {
      const auto nl = text.rfind('\n', end - 1);
      const std::size_t begin = nl == std::string::npos ? 0 : nl + 1;
      line = text.substr(begin, end - begin);
      if (!line.empty() && line.find_first_not_of(" \t\r") != std::string::npos) break;
      if (nl == std::string::npos) break;
      end = nl;
    }
    constexpr std::string_view prefix = "qemu-storage-daemon: ";
    if (line.starts_with(prefix)) line.erase(0, prefix.size());
    const auto a = args();
    for (std::size_t i = 1; i + 1 < a.size(); i += 2) {
      const std::string echo = a[i] + " " + a[i + 1] + ": ";
      if (line.starts_with(echo)) {
        line.erase(0, echo.size());
        break;
      }
    }
    for (char& c : line)
      if (static_cast<unsigned char>(c) < 0x20) c = ' ';
    return cut(line);
  }

  bool child_alive() const { return pid > 0; }

  // Reaps the child if it has ended; its status, or nullopt if it runs.
  std::optional<int> reap() {
    if (pid <= 0) return std::nullopt;
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == 0) return std::nullopt;
    if (r < 0) status = -1;  // someone else reaped it (SIGCHLD ignored?): gone all the same
    pid = -1;
    if (pidfd >= 0) ::close(pidfd);
    pidfd = -1;
    return status;
  }

  // Why exec failed, if it did.
  std::string exec_failure() {
    if (exec_pipe < 0) return {};
    int err = 0;
    const auto n = ::read(exec_pipe, &err, sizeof err);
    ::close(exec_pipe);
    exec_pipe = -1;
    if (n != static_cast<ssize_t>(sizeof err)) return {};
    return "cannot run " + program.string() + ": " + std::strerror(err);
  }

  error_code spawn(std::string& detail);
  void remove_dir() {
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
  bool log_restart_allowed();
};

// fork/exec rather than posix_spawn: the child must ask for
// PR_SET_PDEATHSIG before exec. Everything the child touches is prepared
// before fork, and the child calls only async-signal-safe functions.
error_code image_server::state::spawn(std::string& detail) {
  const auto a = args();
  std::vector<char*> argv;
  argv.reserve(a.size() + 1);
  for (const auto& s : a) argv.push_back(const_cast<char*>(s.c_str()));
  argv.push_back(nullptr);
  // Nothing of the daemon's environment (LD_PRELOAD, credentials in
  // variables) reaches a process that parses guest-written images.
  std::string path_env = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  std::string lang_env = "LC_ALL=C";
  std::array<char*, 3> envp = {path_env.data(), lang_env.data(), nullptr};

  const int err_fd = ::open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOCTTY, 0600);
  if (err_fd < 0) {
    const error_code ec = asio_xen::xen_error(open_call);
    detail = "cannot create " + stderr_path.string() + ": " + ec.message();
    return ec;
  }
  const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC | O_NOCTTY);
  int pipe_fds[2] = {-1, -1};
  if (null_fd < 0 || ::pipe2(pipe_fds, O_CLOEXEC) != 0) {
    const error_code ec = asio_xen::xen_error(open_call);
    ::close(err_fd);
    if (null_fd >= 0) ::close(null_fd);
    detail = "cannot prepare qemu-storage-daemon's descriptors: " + ec.message();
    return ec;
  }
  const pid_t parent = ::getpid();
  const int lfd = listen_fd;
  // Until the child has put its signal handlers back to the defaults it
  // runs ours (Asio's signal_set writes to a pipe it shares with us): a
  // SIGTERM sent meanwhile would look like one to the daemon. So signals
  // wait, blocked, across the fork.
  sigset_t all;
  sigset_t old;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_BLOCK, &all, &old);
  const pid_t child = ::fork();
  if (child == 0) {
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; ++sig) ::sigaction(sig, &dfl, nullptr);  // SIG_IGN would survive exec
    sigset_t none;
    ::sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    // Dies with us; the check after prctl catches a parent that died first.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    ::setsid();  // the terminal's signals are the daemon's to pass on
    // Everything out of the way of 0-3 first, then into place (dup2
    // clears CLOEXEC); only the pipe that reports a failed exec stays.
    const int report = ::fcntl(pipe_fds[1], F_DUPFD_CLOEXEC, 10);
    const int in = ::fcntl(null_fd, F_DUPFD, 10);
    const int out = ::fcntl(err_fd, F_DUPFD, 10);
    const int lis = ::fcntl(lfd, F_DUPFD, 10);
    if (report < 0 || in < 0 || out < 0 || lis < 0 || ::dup2(in, 0) < 0 || ::dup2(out, 1) < 0 || ::dup2(out, 2) < 0 ||
        ::dup2(lis, 3) < 0) {
      const int e = errno;
      (void)!::write(report >= 0 ? report : pipe_fds[1], &e, sizeof e);
      ::_exit(127);
    }
    ::close_range(4, static_cast<unsigned>(report) - 1, 0);
    ::close_range(static_cast<unsigned>(report) + 1, ~0U, 0);
    ::execve(argv[0], argv.data(), envp.data());
    const int e = errno;
    (void)!::write(report, &e, sizeof e);
    ::_exit(127);
  }
  const int fork_errno = errno;
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  ::close(err_fd);
  ::close(null_fd);
  ::close(pipe_fds[1]);
  if (child < 0) {
    ::close(pipe_fds[0]);
    detail = std::string("cannot start qemu-storage-daemon: fork: ") + std::strerror(fork_errno);
    return asio_xen::xen_error(fork_call, fork_errno);
  }
  if (exec_pipe >= 0) ::close(exec_pipe);
  exec_pipe = pipe_fds[0];
  pid = child;
  started_at = std::chrono::steady_clock::now();
  const int pfd = ::pidfd_open(child, 0);
  if (pfd < 0) {
    const error_code ec = asio_xen::xen_error(pidfd_call);
    ::kill(child, SIGKILL);
    int status = 0;
    ::waitpid(child, &status, 0);  // SIGKILLed before it could exec anything: immediate
    pid = -1;
    detail = "cannot watch qemu-storage-daemon: pidfd_open: " + ec.message();
    return ec;
  }
  if (pidfd >= 0) ::close(pidfd);
  pidfd = pfd;
  return {};
}

bool image_server::state::log_restart_allowed() {
  const auto now = std::chrono::steady_clock::now();
  if (now - window_start >= log_window) {
    if (suppressed > 0)
      XBD_LOG(server_log(), warning) << "image server " << opt.name << ": qemu-storage-daemon restarted " << suppressed
                                     << " more times in the last minute (not logged one by one)";
    window_start = now;
    logged_in_window = 0;
    suppressed = 0;
  }
  if (logged_in_window < log_burst) {
    ++logged_in_window;
    return true;
  }
  ++suppressed;
  return false;
}

namespace {

using state_ptr = std::shared_ptr<image_server::state>;

enum class readiness { ready, exited, timed_out, stopped };

// Whether the child has ended, without reaping it (its status is for
// whoever reaps).
bool ended(const image_server::state& st) {
  if (!st.child_alive()) return true;
  siginfo_t info{};
  return ::waitid(P_PID, static_cast<id_t>(st.pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid != 0;
}

// One NBD handshake up to the greeting, then NBD_OPT_ABORT, so that qsd
// sees a client that left politely (a bare close makes it log an error).
// Non-blocking socket calls polled every few milliseconds: the connect goes
// into the backlog of the socket we listen on, and qsd answers within
// milliseconds once it runs.
class greeter {
 public:
  explicit greeter(const std::filesystem::path& sock) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    const std::string p = sock.string();
    if (fd_ < 0 || p.size() >= sizeof a.sun_path) return;
    std::memcpy(a.sun_path, p.c_str(), p.size() + 1);
    if (::connect(fd_, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~greeter() {
    if (fd_ >= 0) ::close(fd_);
  }
  greeter(const greeter&) = delete;
  greeter& operator=(const greeter&) = delete;

  bool connected() const { return fd_ >= 0; }
  // True once the greeting is in and the abort sent; false meanwhile.
  // `failed` when the server closed or spoke something else.
  bool step(bool& failed) {
    while (got_ < hello_.size()) {
      const ssize_t n = ::recv(fd_, hello_.data() + got_, hello_.size() - got_, MSG_DONTWAIT);
      if (n > 0) {
        got_ += static_cast<std::size_t>(n);
        continue;
      }
      failed = n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
      return false;
    }
    if (std::string_view(hello_.data(), 16) != "NBDMAGICIHAVEOPT") {
      failed = true;
      return false;
    }
    // Client flags (fixed newstyle, no zeroes), then NBD_OPT_ABORT with no data.
    static constexpr std::array<char, 20> abort = {0,   0,   0, 3, 'I', 'H', 'A', 'V', 'E', 'O',
                                                   'P', 'T', 0, 0, 0,   2,   0,   0,   0,   0};
    (void)::send(fd_, abort.data(), abort.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    return true;
  }

 private:
  int fd_ = -1;
  std::array<char, 18> hello_{};
  std::size_t got_ = 0;
};

asio::awaitable<void> pause_for(asio::steady_timer& t, std::chrono::milliseconds d) {
  t.expires_after(d);
  co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
}

// Until the export answers, the child ends, or the deadline: polled.
asio::awaitable<readiness> wait_ready(state_ptr st) {
  asio::steady_timer tick(st->ex);
  const auto deadline = std::chrono::steady_clock::now() + st->opt.start_timeout;
  std::optional<greeter> g;
  for (;;) {
    if (st->stopping) co_return readiness::stopped;
    if (!g || !g->connected()) g.emplace(st->nbd_path);
    bool failed = false;
    if (g->connected() && g->step(failed)) {
      // Give qsd a moment to read the abort before the close.
      co_await pause_for(tick, 5ms);
      co_return readiness::ready;
    }
    if (failed) g.reset();  // try a new connection
    if (ended(*st)) co_return readiness::exited;
    if (std::chrono::steady_clock::now() >= deadline) co_return readiness::timed_out;
    co_await pause_for(tick, 5ms);
  }
}

// Waits (bounded, polled) for the child to end after a signal, and reaps it.
asio::awaitable<std::optional<int>> wait_end(state_ptr st, std::chrono::milliseconds limit) {
  asio::steady_timer tick(st->ex);
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    if (auto s = st->reap()) co_return s;
    if (!st->child_alive() || std::chrono::steady_clock::now() >= deadline) co_return std::nullopt;
    co_await pause_for(tick, 10ms);
  }
}

// SIGTERM (or straight SIGKILL), bounded waits, reaped.
asio::awaitable<std::optional<int>> end_child(state_ptr st, bool gently) {
  if (!st->child_alive()) co_return std::nullopt;
  const int pfd = st->pidfd;
  if (gently) {
    if (pfd >= 0) ::pidfd_send_signal(pfd, SIGTERM, nullptr, 0);
    if (auto s = co_await wait_end(st, term_grace)) co_return s;
  }
  if (!st->child_alive()) co_return std::nullopt;
  if (st->pidfd >= 0) ::pidfd_send_signal(st->pidfd, SIGKILL, nullptr, 0);
  auto s = co_await wait_end(st, kill_grace);
  if (!s && st->child_alive())
    XBD_LOG(server_log(), error) << "image server " << st->opt.name << ": qemu-storage-daemon (pid " << st->pid
                                 << ") did not end after SIGKILL";
  co_return s;
}

// Starts a child and waits for its export; on failure the child is gone
// and `detail` says why.
asio::awaitable<error_code> launch(state_ptr st, std::string& detail) {
  for (;;) {
    if (error_code ec = st->spawn(detail)) co_return ec;
    const readiness r = co_await wait_ready(st);
    if (r == readiness::ready) {
      st->exec_failure();  // exec succeeded: the pipe has nothing to say
      co_return error_code{};
    }
    if (r == readiness::stopped) co_return asio::error::operation_aborted;
    const auto status = co_await end_child(st, false);
    const std::string said = st->last_words();
    const std::string exec_error = st->exec_failure();
    if (r == readiness::exited && st->opt.direct && st->io_uring && said.find("io_uring") != std::string::npos) {
      XBD_LOG(server_log(), warning) << "image server " << st->opt.name << ": qemu-storage-daemon refused io_uring ("
                                     << said << "); using aio=threads";
      st->io_uring = false;
      continue;
    }
    if (!exec_error.empty()) {
      detail = exec_error;
    } else if (r == readiness::timed_out) {
      detail = "qemu-storage-daemon did not serve " + st->image.string() + " within " +
               std::to_string(st->opt.start_timeout.count()) + " ms" + (said.empty() ? "" : ": " + said);
    } else if (!said.empty()) {
      // "Image is not in qcow2 format" says nothing of which image.
      detail = said.find(st->image.string()) == std::string::npos ? st->image.string() + ": " + said : said;
    } else {
      detail = "qemu-storage-daemon " + (status ? exit_description(*status) : std::string("ended")) +
               " before serving " + st->image.string();
    }
    detail = cut(detail);
    co_return r == readiness::timed_out ? error_code(ETIMEDOUT, qsd_call) : error_code(EIO, qsd_call);
  }
}

// Restarts the child each time it dies, with back-off, until stopped.
asio::awaitable<void> supervise(state_ptr st) {
  struct done_on_exit {
    image_server::state& s;
    ~done_on_exit() { s.supervising = false; }
  } done{*st};
  auto token = asio::as_tuple(asio::use_awaitable);
  auto backoff = std::chrono::milliseconds(first_backoff);
  asio::steady_timer tick(st->ex);
  for (;;) {
    if (auto w = asio_xen::wakeable_wait::create(st->ex, st->pidfd)) {
      st->death = &*w;
      (void)co_await w->wait();  // the child's end, or stop()'s wake-up
      st->death = nullptr;
    } else {
      co_await pause_for(tick, 100ms);  // no epoll set to be had: look now and then
    }
    if (st->stopping) co_return;
    const auto status = st->reap();
    if (!status) continue;  // not ended (or not yet reapable): look again
    const auto ran = std::chrono::steady_clock::now() - st->started_at;
    if (ran >= stable_run) backoff = first_backoff;
    ++st->restarts;
    if (st->log_restart_allowed()) {
      const std::string said = st->last_words();
      XBD_LOG(server_log(), warning) << "image server " << st->opt.name << ": qemu-storage-daemon serving "
                                     << st->image.string() << " " << exit_description(*status)
                                     << (said.empty() ? "" : " (" + said + ")") << "; restarting in " << backoff.count()
                                     << " ms";
    }
    for (;;) {
      st->timer.expires_after(backoff);
      co_await st->timer.async_wait(token);
      if (st->stopping) co_return;
      backoff = std::min<std::chrono::milliseconds>(backoff * 2, max_backoff);
      std::string detail;
      const error_code ec = co_await launch(st, detail);
      if (st->stopping) co_return;
      if (!ec) break;
      if (st->log_restart_allowed())
        XBD_LOG(server_log(), warning) << "image server " << st->opt.name << ": restarting qemu-storage-daemon failed ("
                                       << detail << "); next attempt in " << backoff.count() << " ms";
    }
  }
}

// How a child ended that we stopped, for the log.
void log_end(const image_server::state& st, int pid, const std::optional<int>& status,
             std::chrono::steady_clock::time_point since) {
  if (!status) return;  // not reaped: end_child/end_child_now said so already
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - since);
  XBD_LOG(server_log(), info) << "image server " << st.opt.name << ": qemu-storage-daemon (pid " << pid << ") "
                              << exit_description(*status) << " " << ms.count() << " ms after it was told to stop";
}

// The same as stop(), synchronously, for a destructor: poll() on the pidfd.
std::optional<int> end_child_now(image_server::state& st) {
  if (!st.child_alive()) return std::nullopt;
  const int pfd = st.pidfd;
  auto wait = [&](std::chrono::milliseconds limit) {
    if (pfd < 0) return;
    struct pollfd p {
      pfd, POLLIN, 0
    };
    ::poll(&p, 1, static_cast<int>(limit.count()));
  };
  if (pfd >= 0) ::pidfd_send_signal(pfd, SIGTERM, nullptr, 0);
  wait(term_grace);
  if (auto s = st.reap()) return s;
  if (pfd >= 0) ::pidfd_send_signal(pfd, SIGKILL, nullptr, 0);
  wait(kill_grace);
  auto s = st.reap();
  if (!s)
    XBD_LOG(server_log(), error) << "image server " << st.opt.name << ": qemu-storage-daemon (pid " << st.pid
                                 << ") did not end after SIGKILL";
  return s;
}

}  // namespace

image_server::image_server(std::shared_ptr<state> s) : s_(std::move(s)) {}

asio::awaitable<asio_xen::result<std::unique_ptr<image_server>>> image_server::start(image_format f,
                                                                                     std::filesystem::path image,
                                                                                     image_server_options o,
                                                                                     std::string& detail) {
  using out = asio_xen::result<std::unique_ptr<image_server>>;
  auto st = std::make_shared<state>(co_await asio::this_coro::executor);
  st->format = f;
  st->image = image;
  st->opt = o;
  st->target.via = nbd_target::transport::unix_socket;
  st->target.export_name = o.name;

  if (!valid_name(o.name)) {
    detail = "image server name \"" + cut(o.name) + "\" must be 1 to 64 of A-Z a-z 0-9 . _ -";
    co_return asio_xen::failure<std::unique_ptr<image_server>>(error_code(EINVAL, qsd_call));
  }
  if (!o.runtime_dir.is_absolute()) {
    detail = "the image server's runtime directory \"" + cut(o.runtime_dir.string()) + "\" is not an absolute path";
    co_return asio_xen::failure<std::unique_ptr<image_server>>(error_code(EINVAL, qsd_call));
  }
  if (!image.is_absolute()) {
    detail = "the image path " + cut(image.string()) + " is not absolute";
    co_return asio_xen::failure<std::unique_ptr<image_server>>(error_code(EINVAL, qsd_call));
  }
  auto program = find_program(o.program);
  if (!program) {
    detail = missing_program(o.program);
    co_return asio_xen::failure<std::unique_ptr<image_server>>(error_code(ENOENT, qsd_call));
  }
  st->program = *program;
  struct stat ist {};
  st->block_device = ::stat(image.c_str(), &ist) == 0 && S_ISBLK(ist.st_mode);

  // A private directory; what a previous daemon left there is stale.
  st->dir = o.runtime_dir / ("qsd-" + o.name);
  st->nbd_path = st->dir / "nbd.sock";
  st->qmp_path = st->dir / "qmp.sock";
  st->stderr_path = st->dir / "stderr";
  st->target.socket = st->nbd_path;
  if (st->qmp_path.native().size() >= sizeof(sockaddr_un::sun_path)) {
    detail = "the socket path " + cut(st->qmp_path.string()) + " is longer than " +
             std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " bytes; choose a shorter runtime directory";
    co_return asio_xen::failure<std::unique_ptr<image_server>>(error_code(ENAMETOOLONG, qsd_call));
  }
  std::error_code fs_ec;
  std::filesystem::create_directories(o.runtime_dir, fs_ec);
  std::filesystem::remove_all(st->dir, fs_ec);
  if (::mkdir(st->dir.c_str(), 0700) != 0) {
    const error_code ec = asio_xen::xen_error(mkdir_call);
    detail = "cannot create " + st->dir.string() + ": " + ec.message();
    co_return asio_xen::failure<std::unique_ptr<image_server>>(ec);
  }

  // The listening socket outlives every qsd (see the header).
  st->listen_fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, st->nbd_path.c_str(), st->nbd_path.native().size());
  if (st->listen_fd < 0 || ::bind(st->listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(st->listen_fd, SOMAXCONN) != 0) {
    const error_code ec = asio_xen::xen_error(socket_call);
    detail = "cannot listen on " + st->nbd_path.string() + ": " + ec.message();
    st->close_fds();
    st->remove_dir();
    co_return asio_xen::failure<std::unique_ptr<image_server>>(ec);
  }

  if (error_code ec = co_await launch(st, detail)) {
    st->close_fds();
    st->remove_dir();
    co_return asio_xen::failure<std::unique_ptr<image_server>>(ec);
  }
  XBD_LOG(server_log(), info) << "image server " << o.name << ": qemu-storage-daemon (pid " << st->pid << ") serves "
                              << to_string(f) << " image " << image.string()
                              << (o.writable ? " read-write" : " read-only") << " on " << st->nbd_path.string();
  st->supervising = true;
  asio::co_spawn(st->ex, supervise(st), asio::detached);
  co_return out(std::unique_ptr<image_server>(new image_server(std::move(st))));
}

asio::awaitable<void> image_server::stop() {
  auto st = s_;
  if (st->stopped || st->stopping) co_return;
  st->stopping = true;
  st->timer.cancel();
  if (st->death) st->death->wake();
  const int pid = st->pid;
  const auto t0 = std::chrono::steady_clock::now();
  log_end(*st, pid, co_await end_child(st, true), t0);
  // supervise() holds the state and its timer: it must have returned
  // before the io_context can be destroyed under it.
  asio::steady_timer tick(st->ex);
  for (int i = 0; i < 200 && st->supervising; ++i) co_await pause_for(tick, 5ms);
  st->close_fds();
  st->remove_dir();
  st->stopped = true;
}

image_server::~image_server() {
  if (!s_ || s_->stopped) return;
  try {
    s_->stopping = true;
    s_->timer.cancel();
    // supervise() ends the next time the io_context runs; stop() waits for it.
    if (s_->death) s_->death->wake();
    const int pid = s_->pid;
    const auto t0 = std::chrono::steady_clock::now();
    log_end(*s_, pid, end_child_now(*s_), t0);
    s_->close_fds();
    s_->remove_dir();
    s_->stopped = true;
  } catch (...) {
    // Only logging or a path could throw (bad_alloc); the child is signalled
    // and reaped before either, and PR_SET_PDEATHSIG covers the rest.
  }
}

const nbd_target& image_server::target() const { return s_->target; }
const std::filesystem::path& image_server::qmp_socket() const { return s_->qmp_path; }
unsigned image_server::restarts() const { return s_->restarts; }
int image_server::pid() const { return s_->pid; }

std::string describe_image_server_program(const std::filesystem::path& program) {
  auto found = find_program(program);
  if (!found) return missing_program(program);
  // qemu-storage-daemon --version, bounded.
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return found->string() + ": cannot run it: " + std::strerror(errno);
  const std::string prog = found->string();
  char* argv[] = {const_cast<char*>(prog.c_str()), const_cast<char*>("--version"), nullptr};
  std::string path_env = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";
  std::array<char*, 2> envp = {path_env.data(), nullptr};
  sigset_t all;
  sigset_t old;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_BLOCK, &all, &old);  // see spawn()
  const pid_t child = ::fork();
  if (child == 0) {
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; ++sig) ::sigaction(sig, &dfl, nullptr);
    sigset_t none;
    ::sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    const int null_fd = ::open("/dev/null", O_RDWR);
    if (null_fd >= 0) ::dup2(null_fd, 0);
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    ::close_range(3, ~0U, 0);
    ::execve(argv[0], argv, envp.data());
    ::_exit(127);
  }
  const int fork_errno = errno;
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  ::close(fds[1]);
  if (child < 0) {
    ::close(fds[0]);
    return prog + ": cannot run it: " + std::strerror(fork_errno);
  }
  std::string out;
  const auto deadline = std::chrono::steady_clock::now() + 2s;
  auto left = [&] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
  };
  while (left() > 0 && out.size() < 4096) {
    struct pollfd p {
      fds[0], POLLIN, 0
    };
    if (::poll(&p, 1, static_cast<int>(left())) <= 0) break;
    char buf[512];
    const auto n = ::read(fds[0], buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  pid_t reaped = 0;
  while ((reaped = ::waitpid(child, &status, WNOHANG)) == 0 && left() > 0) ::usleep(5000);
  if (reaped == 0) {
    ::kill(child, SIGKILL);
    ::waitpid(child, &status, 0);
  }
  const std::string first = out.substr(0, out.find('\n'));
  if (first.empty() || !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
    return prog + ": unusable (" + exit_description(status) + (first.empty() ? "" : ": " + cut(first)) + ")";
  return prog + ": " + cut(first);
}

}  // namespace xbd::blkback::storage
