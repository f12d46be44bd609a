#include "blkfront/stop.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "blkfront/json.hpp"

namespace xbd::sim::blkfront {

namespace {

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

void kick(int fd) {
  const std::uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(fd, &one, sizeof one);
}

}  // namespace

stop_control::stop_control() {
  const sigset_t set = stop_signals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

stop_control::~stop_control() {
  if (thread_.joinable()) {
    kick(wake_fd_);
    thread_.join();
  }
  for (int fd : {signal_fd_, stop_fd_, wake_fd_})
    if (fd >= 0) ::close(fd);
}

bool stop_control::start(std::uint32_t domid, std::uint32_t devid, std::chrono::milliseconds xenstore_limit,
                         std::string& err) {
  domid_ = domid;
  devid_ = devid;
  xenstore_limit_ = xenstore_limit;
  const sigset_t set = stop_signals();
  signal_fd_ = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (signal_fd_ < 0 || stop_fd_ < 0 || wake_fd_ < 0) {
    err = std::string("signalfd/eventfd: ") + std::strerror(errno);
    return false;
  }
  thread_ = std::thread([this] { run(); });
  return true;
}

std::optional<std::chrono::steady_clock::time_point> stop_control::requested_at() const {
  const std::int64_t ns = stop_at_ns_.load(std::memory_order_acquire);
  if (!ns) return std::nullopt;
  return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(ns));
}

void stop_control::xenstore_begin(const char* what) {
  xenstore_what_.store(what, std::memory_order_relaxed);
  xenstore_since_ns_.store(now_ns(), std::memory_order_release);
}

void stop_control::xenstore_end() { xenstore_since_ns_.store(0, std::memory_order_release); }

bool stop_control::claim_output() {
  std::lock_guard lk(output_mu_);
  if (output_claimed_) return false;
  output_claimed_ = true;
  return true;
}

void stop_control::emergency(const std::string& end, const std::string& error) {
  // Holds the lock until the process is gone, so the main thread's summary
  // can never follow this one.
  output_mu_.lock();
  if (output_claimed_) {
    output_mu_.unlock();
    return;
  }
  output_claimed_ = true;
  constexpr int status = 2;
  json_writer j;
  j.begin_object();
  j.field("tool", "blkfront-sim").field("ok", false).field("exit", status).field("end", end).field("error", error);
  j.key("device").begin_object().field("domid", domid_).field("devid", devid_).end_object();
  j.end_object();
  const std::string line = j.str() + "\n";
  [[maybe_unused]] ssize_t n = ::write(STDOUT_FILENO, line.data(), line.size());
  std::fprintf(stderr, "blkfront-sim: %s\n", error.c_str());
  std::fflush(stderr);
  _exit(status);
}

void stop_control::run() {
  constexpr auto tick = std::chrono::milliseconds(1000);
  for (;;) {
    // Without a signal, wake once a tick to look at the xenstore request in
    // progress; after one, at the hard bound.
    auto timeout = tick;
    if (auto at = requested_at()) {
      const auto left = *at + stop_bound::hard - std::chrono::steady_clock::now();
      if (left <= std::chrono::steady_clock::duration::zero()) {
        emergency("interrupted", "did not stop within " + std::to_string(stop_bound::hard.count()) +
                                     " ms of the signal; exiting without the rest of the close");
        return;
      }
      timeout = std::min(tick, std::chrono::ceil<std::chrono::milliseconds>(left));
    }
    pollfd fds[2] = {{signal_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    const int n = ::poll(fds, 2, static_cast<int>(timeout.count()));
    if (n > 0 && (fds[1].revents & POLLIN)) return;
    if (n > 0 && (fds[0].revents & POLLIN)) {
      signalfd_siginfo si;
      while (::read(signal_fd_, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
        const char* name = si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM";
        if (stop_at_ns_.load(std::memory_order_acquire)) {
          emergency("interrupted", std::string("a second ") + name + ": exiting at once");
          return;
        }
        stop_at_ns_.store(now_ns(), std::memory_order_release);
        kick(stop_fd_);
      }
    }
    const std::int64_t since = xenstore_since_ns_.load(std::memory_order_acquire);
    if (since && now_ns() - since > std::chrono::nanoseconds(xenstore_limit_).count()) {
      const char* what = xenstore_what_.load(std::memory_order_relaxed);
      emergency("xenstore_stalled", std::string("xenstored did not answer ") + (what ? what : "a request") +
                                        " within " + std::to_string(xenstore_limit_.count()) + " ms");
      return;
    }
  }
}

}  // namespace xbd::sim::blkfront
