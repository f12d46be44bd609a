#include "test/sim/xenstored/domain_xenbus.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "asio_xen/xen.hpp"
#include "test/sim/xenstored/guest_xenstore.hpp"
#include "test/sim/xenstored/sim_files.hpp"

namespace xbd::sim {

using detail::throw_errno;
using detail::unique_fd;

namespace {

constexpr std::size_t header_size = sizeof(xsd_sockmsg);

// The name xenstored puts in an XS_ERROR reply for an errno value.
std::string error_name(const std::error_code& ec) {
  for (const auto& e : xsd_errors)
    if (e.errnum == ec.value()) return std::string(e.errstring) + '\0';
  return std::string("EIO") + '\0';
}

unique_fd listen_on(const std::filesystem::path& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.native().size() >= sizeof addr.sun_path) throw_errno(ENAMETOOLONG, "socket " + path.string());
  std::memcpy(addr.sun_path, path.c_str(), path.native().size() + 1);
  ::unlink(path.c_str());
  unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw_errno(errno, "socket");
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) < 0)
    throw_errno(errno, "bind " + path.string());
  // Like /dev/xen/xenbus: root's (the test's user's) only.
  ::chmod(path.c_str(), 0600);
  if (::listen(fd.get(), 16) < 0) throw_errno(errno, "listen " + path.string());
  return fd;
}

// The NUL-separated fields of a request body.
std::vector<std::string> fields(std::string_view body) {
  std::vector<std::string> out;
  while (!body.empty()) {
    const auto end = body.find('\0');
    out.emplace_back(body.substr(0, end));
    if (end == std::string_view::npos) break;
    body.remove_prefix(end + 1);
  }
  return out;
}

}  // namespace

struct domain_xenbus::impl {
  struct client {
    unique_fd fd;
    std::string in;                                         // bytes not yet parsed into requests
    std::set<std::pair<std::string, std::string>> watches;  // (path, token on the ring)
    std::set<std::uint32_t> transactions;
  };

  guest_xenstore ring;
  std::filesystem::path socket;
  unique_fd listener;
  std::map<unsigned, client> clients;
  unsigned next_id = 1;

  impl(const std::filesystem::path& dir, unsigned domid, const std::filesystem::path& sock)
      : ring(dir, domid), socket(sock), listener(listen_on(sock)) {}
  ~impl() { ::unlink(socket.c_str()); }

  static std::string ring_token(unsigned id, std::string_view token) {
    return "c" + std::to_string(id) + ":" + std::string(token);
  }

  bool send(client& c, std::uint32_t type, std::uint32_t req_id, std::uint32_t tx_id, std::string_view body) {
    xsd_sockmsg h{};
    h.type = type;
    h.req_id = req_id;
    h.tx_id = tx_id;
    h.len = static_cast<std::uint32_t>(body.size());
    std::string msg(reinterpret_cast<const char*>(&h), header_size);
    msg.append(body);
    std::string_view left = msg;
    while (!left.empty()) {
      const ssize_t n = ::send(c.fd.get(), left.data(), left.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      left.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }

  void answer(client& c, const xsd_sockmsg& req, const result<std::string>& r) {
    if (r)
      send(c, req.type, req.req_id, req.tx_id, *r);
    else
      send(c, XS_ERROR, req.req_id, req.tx_id, error_name(r.error()));
  }

  // XS_WATCH and XS_UNWATCH: the token on the ring names the client.
  void relay_watch(unsigned id, client& c, const xsd_sockmsg& req, std::string_view body) {
    const auto f = fields(body);
    if (f.size() < 2) {
      answer(c, req, std::error_code(EINVAL, std::generic_category()));
      return;
    }
    const auto token = ring_token(id, f[1]);
    std::string payload = f[0] + '\0' + token + '\0';
    auto r = ring.request(req.type, payload);
    if (r && req.type == XS_WATCH) c.watches.emplace(f[0], token);
    if (r && req.type == XS_UNWATCH) c.watches.erase({f[0], token});
    answer(c, req, r);
  }

  void relay(client& c, const xsd_sockmsg& req, std::string_view body) {
    auto r = ring.request(req.type, body, req.tx_id);
    if (r && req.type == XS_TRANSACTION_START) {
      const auto f = fields(*r);
      if (!f.empty()) c.transactions.insert(static_cast<std::uint32_t>(std::strtoul(f[0].c_str(), nullptr, 10)));
    }
    // xenstored ends a transaction on any XS_TRANSACTION_END, even a failed one.
    if (req.type == XS_TRANSACTION_END) c.transactions.erase(req.tx_id);
    answer(c, req, r);
  }

  // Every complete request the client has sent; false if it must go.
  bool serve(unsigned id, client& c) {
    while (c.in.size() >= header_size) {
      xsd_sockmsg h{};
      std::memcpy(&h, c.in.data(), header_size);
      if (h.len > XENSTORE_PAYLOAD_MAX) return false;
      if (c.in.size() < header_size + h.len) break;
      const std::string body = c.in.substr(header_size, h.len);
      c.in.erase(0, header_size + h.len);
      if (h.type == XS_WATCH || h.type == XS_UNWATCH)
        relay_watch(id, c, h, body);
      else
        relay(c, h, body);
      deliver_events();
    }
    return true;
  }

  bool read_from(unsigned id, client& c) {
    char buf[4096];
    const ssize_t n = ::recv(c.fd.get(), buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0) return false;
    if (n < 0) return errno == EAGAIN || errno == EINTR;
    c.in.append(buf, static_cast<std::size_t>(n));
    return serve(id, c);
  }

  // What the kernel does when a xenbus file is closed.
  void drop(client& c) {
    for (const auto& [path, token] : c.watches) (void)ring.unwatch(path, token);
    for (auto tx : c.transactions) (void)ring.transaction_end(tx, false);
  }

  void deliver_events() {
    for (;;) {
      auto e = ring.wait_watch(std::chrono::milliseconds(0));
      if (!e) return;
      const auto colon = e->token.find(':');
      if (e->token.size() < 2 || e->token[0] != 'c' || colon == std::string::npos) continue;
      const auto id = static_cast<unsigned>(std::strtoul(e->token.c_str() + 1, nullptr, 10));
      auto it = clients.find(id);
      if (it == clients.end()) continue;  // a client that has gone
      const std::string body = e->path + '\0' + e->token.substr(colon + 1) + '\0';
      (void)send(it->second, XS_WATCH_EVENT, 0, 0, body);
    }
  }

  void accept_client() {
    unique_fd fd(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!fd) return;
    // A client that stops reading its events cannot stall the others.
    timeval tv{1, 0};
    ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    clients[next_id++].fd = std::move(fd);
  }

  void drain_notify() {
    char buf[256];
    while (::read(ring.notify_fd(), buf, sizeof buf) > 0) {
    }
  }

  void turn() {
    std::vector<pollfd> fds{{listener.get(), POLLIN, 0}, {ring.notify_fd(), POLLIN, 0}};
    std::vector<unsigned> ids;
    for (auto& [id, c] : clients) {
      fds.push_back({c.fd.get(), POLLIN, 0});
      ids.push_back(id);
    }
    if (::poll(fds.data(), fds.size(), 100) < 0) return;
    if (fds[1].revents) drain_notify();
    deliver_events();
    if (fds[0].revents) accept_client();
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (!fds[i + 2].revents) continue;
      auto it = clients.find(ids[i]);
      if (read_from(ids[i], it->second)) continue;
      drop(it->second);
      clients.erase(it);
    }
  }
};

domain_xenbus::domain_xenbus(const std::filesystem::path& sim_dir, unsigned domid, const std::filesystem::path& socket)
    : p_(std::make_unique<impl>(sim_dir, domid, socket)) {}

domain_xenbus::~domain_xenbus() = default;

void domain_xenbus::run(const std::atomic<bool>& stop) {
  while (!stop) p_->turn();
  for (auto& [id, c] : p_->clients) p_->drop(c);
  p_->clients.clear();
}

}  // namespace xbd::sim
