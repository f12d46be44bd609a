#include "app/ctl/client.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace xbd::ctl {

namespace {

using clock = std::chrono::steady_clock;

struct descriptor {
  int fd = -1;
  ~descriptor() {
    if (fd >= 0) ::close(fd);
  }
};

failure because(const std::string& what, int err) { return {what + ": " + std::strerror(err)}; }

// Until `events` on `fd`, or the deadline: false (errno ETIMEDOUT) then.
bool ready(int fd, short events, clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
    if (left.count() <= 0) {
      errno = ETIMEDOUT;
      return false;
    }
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, static_cast<int>(left.count()) + 1);
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return false;
  }
}

std::variant<int, failure> connect_to(const std::string& path, clock::time_point deadline) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path) return failure{path + ": longer than a unix socket's path"};
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return because("socket", errno);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0) return fd;
  // A unix socket whose backlog is full says EAGAIN: wait for room.
  int err = errno;
  if (err == EAGAIN || err == EINPROGRESS) {
    socklen_t len = sizeof err;
    if (ready(fd, POLLOUT, deadline) && ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) return fd;
    if (err == EAGAIN || err == EINPROGRESS) err = errno;
  }
  ::close(fd);
  return because("connecting to " + path + " (is xen-blkbackd running?)", err);
}

}  // namespace

std::variant<std::string, failure> ask(const std::string& socket, std::string_view request,
                                       std::chrono::milliseconds limit) {
  const auto deadline = clock::now() + limit;
  auto c = connect_to(socket, deadline);
  if (auto* f = std::get_if<failure>(&c)) return *f;
  descriptor d{std::get<int>(c)};
  std::string line(request);
  line += '\n';
  for (std::string_view out = line; !out.empty();) {
    const ssize_t n = ::send(d.fd, out.data(), out.size(), MSG_NOSIGNAL);
    if (n >= 0) {
      out.remove_prefix(static_cast<std::size_t>(n));
    } else if (errno != EINTR && (errno != EAGAIN || !ready(d.fd, POLLOUT, deadline))) {
      return because("sending the request", errno);
    }
  }
  std::string answer;
  std::size_t scanned = 0;
  char buf[65536];
  for (;;) {
    if (const auto nl = answer.find('\n', scanned); nl != std::string::npos) return answer.substr(0, nl);
    scanned = answer.size();
    if (answer.size() > max_answer)
      return failure{"the answer is longer than " + std::to_string(max_answer) + " bytes"};
    const ssize_t n = ::recv(d.fd, buf, sizeof buf, 0);
    if (n > 0) {
      answer.append(buf, static_cast<std::size_t>(n));
    } else if (n == 0) {
      return failure{"the daemon closed the connection without an answer"};
    } else if (errno != EINTR && (errno != EAGAIN || !ready(d.fd, POLLIN, deadline))) {
      return because("waiting for the answer", errno);
    }
  }
}

}  // namespace xbd::ctl
