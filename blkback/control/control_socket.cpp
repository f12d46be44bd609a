#include "blkback/control/control_socket.hpp"

#include "blkback/control/json_writer.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace xbd::blkback {

namespace asio = boost::asio;
using asio_xen::error_code;
using asio_xen::wakeable_wait;

namespace {

std::string why(const std::string& what) { return what + ": " + std::strerror(errno); }

std::optional<sockaddr_un> address(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path) return std::nullopt;
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  return a;
}

// The pid of the process answering at `a`, when one does; nullopt when
// nobody listens (a stale socket); an error when that cannot be told.
std::variant<std::optional<pid_t>, std::string> who_answers(const sockaddr_un& a) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return why("socket");
  std::variant<std::optional<pid_t>, std::string> result = std::optional<pid_t>{};
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0) {
    ucred cred{};
    socklen_t len = sizeof cred;
    result = std::optional<pid_t>(::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 ? cred.pid : 0);
  } else if (errno != ECONNREFUSED) {
    result = why("connecting to the socket already there");
  }
  ::close(fd);
  return result;
}

// Makes way for a new socket at `path`: nothing there, or a stale socket
// removed. An error string when something else is in the way.
std::optional<std::string> make_way(const std::string& path, const sockaddr_un& a) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return errno == ENOENT ? std::nullopt : std::optional(why("lstat"));
  if (!S_ISSOCK(st.st_mode)) return "it exists and is not a socket";
  auto who = who_answers(a);
  if (auto* e = std::get_if<std::string>(&who)) return *e;
  if (auto pid = std::get<std::optional<pid_t>>(who))
    return "a running daemon answers on it (pid " + std::to_string(*pid) + "); is another xen-blkbackd running?";
  if (::unlink(path.c_str()) != 0) return why("removing the stale socket");
  return std::nullopt;
}

std::optional<std::string> make_directory(const std::string& path) {
  const auto dir = std::filesystem::path(path).parent_path();
  std::error_code ec;
  if (std::filesystem::exists(dir, ec)) return std::nullopt;
  std::filesystem::create_directories(dir, ec);
  if (!ec) std::filesystem::permissions(dir, std::filesystem::perms::owner_all, ec);
  if (ec) return "creating " + dir.string() + ": " + ec.message();
  return std::nullopt;
}

std::variant<control_listener, std::string> listen_at(const std::string& path, const sockaddr_un& a) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return why("socket");
  // Mode 0600 from the start: no moment where others could connect.
  const mode_t old = ::umask(0177);
  const int bound = ::bind(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a);
  const int bind_errno = errno;
  ::umask(old);
  struct stat st {};
  if (bound != 0 || ::listen(fd, 16) != 0 || ::stat(path.c_str(), &st) != 0) {
    if (bound != 0) errno = bind_errno;
    std::string e = why(bound != 0 ? "bind" : "listen");
    ::close(fd);
    return e;
  }
  return control_listener{fd, path, st.st_dev, st.st_ino};
}

// Root, or the user the daemon runs as: whoever may read its journals.
bool trusted(int fd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return false;
  return cred.uid == 0 || cred.uid == ::geteuid();
}

}  // namespace

std::variant<control_listener, std::string> bind_control_socket(const std::string& path) {
  const auto a = address(path);
  if (!a) return "the path is longer than a unix socket's (" + std::to_string(sizeof(sockaddr_un::sun_path) - 1) + ")";
  if (auto e = make_directory(path)) return *e;
  if (auto e = make_way(path, *a)) return *e;
  return listen_at(path, *a);
}

// ---------------------------------------------------------------- serving

struct control_socket::client {
  client(asio::any_io_executor ex, int f) : fd(f), timer(ex) {}
  ~client() {
    if (fd >= 0) ::close(fd);
  }
  int fd;
  std::optional<wakeable_wait> watch;
  asio::steady_timer timer;  // the deadline of the wait in progress
  bool timed_out = false;
};

control_socket::control_socket(asio::any_io_executor ex, control_listener l, control_bounds b, answer_fn answer)
    : ex_(std::move(ex)), listener_(std::move(l)), bounds_(b), answer_(std::move(answer)), pause_(ex_) {}

control_socket::~control_socket() {
  if (listener_.fd >= 0 && !accepting_) ::close(listener_.fd);
  remove_file();
}

void control_socket::remove_file() {
  struct stat st {};
  if (!listener_.path.empty() && ::stat(listener_.path.c_str(), &st) == 0 && st.st_dev == listener_.dev &&
      st.st_ino == listener_.ino)
    ::unlink(listener_.path.c_str());
  listener_.path.clear();
}

void control_socket::start() {
  auto w = wakeable_wait::create(ex_, listener_.fd);
  if (!w) {
    XBD_LOG(log_, error) << "control socket " << listener_.path << ": " << w.error().what() << "; not served";
    return;
  }
  listen_wait_.emplace(std::move(*w));
  accepting_ = true;
  XBD_LOG(log_, info) << "control socket " << listener_.path << " (xen-blkbackctl)";
  asio::co_spawn(ex_, accept_loop(), asio::detached);
}

void control_socket::stop(std::function<void()> done) {
  stopping_ = true;
  done_ = std::move(done);
  if (listen_wait_) listen_wait_->wake();
  pause_.cancel();
  for (const auto& c : clients_)
    if (c->watch) c->watch->wake();
  maybe_done();
}

void control_socket::maybe_done() {
  if (!stopping_ || accepting_ || !clients_.empty() || !done_) return;
  remove_file();
  asio::post(ex_, std::exchange(done_, nullptr));
}

asio::awaitable<void> control_socket::accept_loop() {
  while (!stopping_) {
    const error_code ec = co_await listen_wait_->wait();
    if (stopping_) break;
    if (ec && ec != asio::error::operation_aborted) {
      XBD_LOG(log_, error) << "control socket: " << ec.what() << "; no longer served";
      break;
    }
    if (accept_all()) continue;
    // Out of descriptors: the socket stays readable, so wait a little.
    pause_.expires_after(std::chrono::milliseconds(100));
    co_await pause_.async_wait(asio::as_tuple(asio::use_awaitable));
  }
  // The wait has returned: the descriptors can go.
  listen_wait_.reset();
  ::close(std::exchange(listener_.fd, -1));
  accepting_ = false;
  maybe_done();
}

// Every connection waiting; false when accept() ran out of descriptors.
bool control_socket::accept_all() {
  for (;;) {
    const int fd = ::accept4(listener_.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      admit(fd);
      continue;
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
    XBD_LOG(log_, warning) << "control socket: accept: " << std::strerror(errno);
    return false;
  }
}

void control_socket::admit(int fd) {
  std::string refusal;
  if (!trusted(fd))
    refusal = "only root may use this socket";
  else if (clients_.size() >= bounds_.max_clients)
    refusal = "too many clients (" + std::to_string(bounds_.max_clients) + "); try again";
  if (!refusal.empty()) {
    XBD_LOG(log_, info) << "control socket: a client turned away: " << refusal;
    const std::string line = json_error(refusal) + "\n";
    (void)!::send(fd, line.data(), line.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    ::close(fd);
    return;
  }
  auto c = std::make_shared<client>(ex_, fd);
  auto w = wakeable_wait::create(ex_, fd);
  if (!w) {
    XBD_LOG(log_, warning) << "control socket: " << w.error().what() << "; a client turned away";
    return;  // ~client closes fd
  }
  c->watch.emplace(std::move(*w));
  clients_.push_back(c);
  asio::co_spawn(ex_, serve(std::move(c)), asio::detached);
}

// Requests and answers until the client leaves or breaks a bound.
asio::awaitable<void> control_socket::serve(std::shared_ptr<client> c) {
  std::string in;
  for (;;) {
    const auto nl = in.find('\n');
    if (nl == std::string::npos && in.size() <= bounds_.max_line) {
      arm(c, bounds_.idle);
      const outcome got = co_await receive(*c, in);
      if (got == outcome::timed_out) XBD_LOG(log_, debug) << "control socket: an idle client closed";
      if (got != outcome::data) break;
      continue;
    }
    if (nl == std::string::npos || nl > bounds_.max_line) {
      XBD_LOG(log_, info) << "control socket: a request longer than " << bounds_.max_line
                          << " bytes; answered with an error and closed";
      arm(c, bounds_.answer);
      (void)co_await send(*c, json_error("request longer than " + std::to_string(bounds_.max_line) + " bytes") + "\n");
      break;
    }
    std::string_view line(in.data(), nl);
    if (line.ends_with('\r')) line.remove_suffix(1);
    const std::string answer = answer_or_error(line) + "\n";
    in.erase(0, nl + 1);
    arm(c, bounds_.answer);
    const outcome sent = co_await send(*c, answer);
    if (sent == outcome::timed_out)
      XBD_LOG(log_, info) << "control socket: a client did not take its answer within " << bounds_.answer.count()
                          << " ms; closed";
    else if (sent == outcome::failed)
      XBD_LOG(log_, debug) << "control socket: a client left before its answer was written";
    if (sent != outcome::data) break;
  }
  finish(c);
}

// A request's answer; an internal failure is an answer too, never the
// daemon's end.
std::string control_socket::answer_or_error(std::string_view line) {
  try {
    return answer_(line);
  } catch (const std::exception& e) {
    XBD_LOG(log_, error) << "control socket: answering a request failed: " << e.what();
    return json_error(std::string("internal error: ") + e.what());
  }
}

// At least one more byte of the client's into `in`.
asio::awaitable<control_socket::outcome> control_socket::receive(client& c, std::string& in) {
  for (;;) {
    char buf[4096];
    const ssize_t n = ::recv(c.fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) {
      in.append(buf, static_cast<std::size_t>(n));
      co_return outcome::data;
    }
    if (n == 0) co_return outcome::closed;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) co_return outcome::failed;
    if (const outcome o = co_await wait(c); o != outcome::data) co_return o;
  }
}

asio::awaitable<control_socket::outcome> control_socket::send(client& c, std::string_view data) {
  bool watching_writes = false;
  outcome result = outcome::data;
  while (!data.empty()) {
    const ssize_t n = ::send(c.fd, data.data(), data.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n >= 0) {
      data.remove_prefix(static_cast<std::size_t>(n));
      continue;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      result = outcome::failed;
      break;
    }
    if (!watching_writes) {
      watching_writes = true;
      (void)c.watch->watch_for(wakeable_wait::readiness::writable);
    }
    if (result = co_await wait(c); result != outcome::data) break;
  }
  if (watching_writes) (void)c.watch->watch_for(wakeable_wait::readiness::readable);
  co_return result;
}

// Until the descriptor is ready, the deadline armed last passes, or stop().
asio::awaitable<control_socket::outcome> control_socket::wait(client& c) {
  const error_code ec = co_await c.watch->wait();
  if (stopping_) co_return outcome::stopped;
  if (c.timed_out) co_return outcome::timed_out;
  if (ec && ec != asio::error::operation_aborted) co_return outcome::failed;
  co_return outcome::data;  // ready, or a stale wake-up: look again
}

// A deadline `d` from now for the client's waits.
void control_socket::arm(const std::shared_ptr<client>& c, std::chrono::milliseconds d) {
  c->timed_out = false;
  c->timer.expires_after(d);
  c->timer.async_wait([w = std::weak_ptr<client>(c)](const error_code& ec) {
    auto c = w.lock();
    if (ec || !c || c->timer.expiry() > asio::steady_timer::clock_type::now()) return;
    c->timed_out = true;
    if (c->watch) c->watch->wake();
  });
}

void control_socket::finish(const std::shared_ptr<client>& c) {
  c->timer.cancel();
  c->watch.reset();  // its wait has returned
  clients_.remove(c);
  maybe_done();
}

}  // namespace xbd::blkback
