#include "blkback/storage/nbd_link.hpp"

#include "blkback/storage/nbd_tls.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>

namespace xbd::blkback::storage::nbd {

namespace asio = boost::asio;
using asio_xen::error_code;

const asio_xen::xen_call_category connect_call{"nbd_aio_connect_uri"};
const asio_xen::xen_call_category resolve_call{"getaddrinfo"};
const asio_xen::xen_call_category tls_call{"TLS credentials"};

namespace {

const asio_xen::xen_call_category epoll_call{"epoll"};

std::uint32_t epoll_events(unsigned direction) {
  std::uint32_t ev = 0;
  if (direction & LIBNBD_AIO_DIRECTION_READ) ev |= EPOLLIN;
  if (direction & LIBNBD_AIO_DIRECTION_WRITE) ev |= EPOLLOUT;
  return ev;
}

}  // namespace

asio_xen::result<std::shared_ptr<socket_watch>> socket_watch::create(const asio::any_io_executor& ex) {
  const int inner = ::epoll_create1(EPOLL_CLOEXEC);
  if (inner < 0) return asio_xen::xen_error(epoll_call);
  auto outer = asio_xen::wakeable_wait::create(ex, inner);
  if (!outer) {
    ::close(inner);
    return outer.error();
  }
  return std::make_shared<socket_watch>(inner, std::move(*outer));
}

void socket_watch::watch(int fd, unsigned direction, bool again) {
  if (inner_ < 0) return;
  if (fd != fd_ || again) forget();
  fd_ = fd;
  direction &= LIBNBD_AIO_DIRECTION_BOTH;
  if (fd < 0 || direction == direction_) return;
  epoll_event ev{};
  ev.events = epoll_events(direction);
  ev.data.fd = fd;
  if (direction == 0) {
    ::epoll_ctl(inner_, EPOLL_CTL_DEL, fd, &ev);
  } else if (direction_ == 0) {
    if (::epoll_ctl(inner_, EPOLL_CTL_ADD, fd, &ev) != 0 && errno == EEXIST)
      ::epoll_ctl(inner_, EPOLL_CTL_MOD, fd, &ev);
  } else if (::epoll_ctl(inner_, EPOLL_CTL_MOD, fd, &ev) != 0 && errno == ENOENT) {
    // libnbd closed and reopened the socket under the same number.
    ::epoll_ctl(inner_, EPOLL_CTL_ADD, fd, &ev);
  }
  direction_ = direction;
}

void socket_watch::forget() {
  // A socket libnbd has closed already left the set by itself (ENOENT).
  if (inner_ >= 0 && fd_ >= 0 && direction_ != 0) ::epoll_ctl(inner_, EPOLL_CTL_DEL, fd_, nullptr);
  fd_ = -1;
  direction_ = 0;
}

unsigned socket_watch::ready() {
  if (inner_ < 0 || fd_ < 0 || direction_ == 0) return 0;
  epoll_event ev[2];
  const int n = ::epoll_wait(inner_, ev, 2, 0);
  unsigned dir = 0;
  for (int i = 0; i < n; ++i) {
    if (ev[i].data.fd != fd_) continue;
    // A hang-up or an error is news for whichever way libnbd is going: it
    // reads the end of the stream or the socket's error from there.
    if (ev[i].events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP | EPOLLERR)) dir |= LIBNBD_AIO_DIRECTION_READ;
    if (ev[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) dir |= LIBNBD_AIO_DIRECTION_WRITE;
  }
  return dir;
}

void socket_watch::close() {
  outer_.close();
  if (inner_ >= 0) ::close(inner_);
  inner_ = -1;
  fd_ = -1;
  direction_ = 0;
}

link::link() : h_(nbd_create()) {
  if (!h_) note_error();
}

bool link::up() const { return h_ && (nbd_aio_is_ready(h_) == 1 || nbd_aio_is_processing(h_) == 1); }

bool link::down() const { return !h_ || nbd_aio_is_dead(h_) == 1 || nbd_aio_is_closed(h_) == 1; }

void link::step(unsigned ready) {
  if (!h_) return;
  const unsigned want = static_cast<unsigned>(nbd_aio_get_direction(h_));
  // Both ready: reading first, as libnbd advises (a reply may change what
  // there is left to write).
  int r = 0;
  if (ready & want & LIBNBD_AIO_DIRECTION_READ)
    r = nbd_aio_notify_read(h_);
  else if (ready & want & LIBNBD_AIO_DIRECTION_WRITE)
    r = nbd_aio_notify_write(h_);
  if (r == -1) note_error();
}

void link::note_error() {
  if (!why_.empty()) return;
  const char* msg = nbd_get_error();
  note_error(msg ? msg : "", nbd_get_errno());
}

void link::note_error(const std::string& why, int err) {
  if (!why_.empty()) return;
  errno_ = err;
  why_ = why.empty() ? "libnbd gave no reason" : why;
}

void link::close() {
  if (h_) nbd_close(h_);
  h_ = nullptr;
}

void link::renew() {
  close();
  why_.clear();
  errno_ = 0;
  h_ = nbd_create();
  if (!h_) note_error();
}

namespace {

// Host name resolution. getaddrinfo blocks (a DNS server that does not
// answer costs seconds per try, times its attempts), and libnbd would call
// it inside nbd_aio_connect_uri, on the ring's thread, which other vbds'
// rings share. So a name is resolved here first, on a thread of its own per
// name being looked up (different names never queue behind each other, and
// a thread still stuck in getaddrinfo at exit holds nothing up: it is
// detached), and libnbd is given the numeric addresses. The lookup tells
// its end through an eventfd, which the waiting coroutine watches in its
// socket_watch: the thread never touches the io_context, which may be gone
// by the time a late answer comes.
class lookup {
 public:
  struct address {
    std::string host;  // numeric
    std::string port;  // numeric
  };

  // Starts resolving; null (with `why`) if it cannot.
  static std::shared_ptr<lookup> start(const std::string& host, const std::string& port, std::string& why);
  explicit lookup(int efd) : efd_(efd) {}
  ~lookup() { ::close(efd_); }
  lookup(const lookup&) = delete;
  lookup& operator=(const lookup&) = delete;

  int fd() const { return efd_; }
  bool done() {
    const std::lock_guard g(m_);
    return done_;
  }
  // Once done(): getaddrinfo's result (0: found), and the addresses.
  int status() {
    const std::lock_guard g(m_);
    return status_;
  }
  std::vector<address> addresses() {
    const std::lock_guard g(m_);
    return addresses_;
  }

 private:
  static void run(const std::shared_ptr<lookup>& self, const std::string& host, const std::string& port);

  // Threads stuck in getaddrinfo are bounded in number: past this many
  // names, a lookup fails at once (and its channel retries later) rather
  // than piling up threads behind a dead server.
  static constexpr unsigned max_pending = 64;
  static inline std::atomic<unsigned> pending_{0};

  struct registry {
    std::mutex m;
    std::map<std::pair<std::string, std::string>, std::weak_ptr<lookup>> pending;
  };

  const int efd_;
  std::mutex m_;
  bool done_ = false;
  int status_ = 0;
  std::vector<address> addresses_;
};

std::shared_ptr<lookup> lookup::start(const std::string& host, const std::string& port, std::string& why) {
  // A name being looked up already is waited for, not looked up again: the
  // rings of the vbds on one name that does not answer share one thread.
  // (The registry is never destroyed: a thread may still end after exit.)
  static auto* const reg = new registry;
  const std::lock_guard g(reg->m);
  auto& slot = reg->pending[{host, port}];
  if (auto l = slot.lock(); l && !l->done()) return l;
  if (pending_.fetch_add(1) >= max_pending) {
    --pending_;
    why = std::to_string(max_pending) + " host name lookups are pending already (the resolver does not answer)";
    return nullptr;
  }
  const int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd < 0) {
    --pending_;
    why = std::string("eventfd: ") + std::strerror(errno);
    return nullptr;
  }
  auto l = std::make_shared<lookup>(efd);
  try {
    std::thread([l, host, port] { run(l, host, port); }).detach();
  } catch (const std::system_error& e) {
    --pending_;
    why = std::string("cannot start a thread to resolve the host name: ") + e.what();
    return nullptr;
  }
  slot = l;
  // Names no longer looked up leave the registry.
  std::erase_if(reg->pending, [](const auto& e) { return e.second.expired(); });
  return l;
}

void lookup::run(const std::shared_ptr<lookup>& self, const std::string& host, const std::string& port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int r = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
  std::vector<address> found;
  for (const addrinfo* p = r == 0 ? res : nullptr; p; p = p->ai_next) {
    char h[NI_MAXHOST];
    char s[NI_MAXSERV];
    // Numeric only: no lookup here. An IPv6 address with a zone
    // (fe80::1%eth0) cannot be written in an NBD URI: skipped.
    if (::getnameinfo(p->ai_addr, p->ai_addrlen, h, sizeof h, s, sizeof s, NI_NUMERICHOST | NI_NUMERICSERV) == 0 &&
        std::strchr(h, '%') == nullptr)
      found.push_back({h, s});
  }
  if (res) ::freeaddrinfo(res);
  {
    const std::lock_guard g(self->m_);
    self->done_ = true;
    self->status_ = r;
    self->addresses_ = std::move(found);
  }
  const std::uint64_t one = 1;
  (void)!::write(self->efd_, &one, sizeof one);
  --pending_;
}

// A name rather than an address: libnbd would look it up.
bool needs_lookup(const nbd_target& t) {
  if (t.via != nbd_target::transport::tcp) return false;
  unsigned char buf[sizeof(in6_addr)];
  return ::inet_pton(AF_INET, t.host.c_str(), buf) != 1 && ::inet_pton(AF_INET6, t.host.c_str(), buf) != 1;
}

// libnbd checks a server's certificate against the host name it was given
// to connect to; since libnbd 1.22 it can be told the name apart from the
// address. Without that, a certificate over TLS is checked against the name
// only if libnbd resolves it itself. Certificates are used whenever the URI
// names no PSK file (from tls-certificates, or libnbd's default directory);
// a PSK has no host name to check.
bool lookup_keeps_tls_name(const nbd_target& t) {
#ifdef LIBNBD_HAVE_NBD_SET_TLS_HOSTNAME
  (void)t;
  return true;
#else
  return !t.tls || !t.tls_psk_file.empty();
#endif
}

struct connect_state {
  std::shared_ptr<link> l;
  std::shared_ptr<socket_watch> w;
  std::shared_ptr<bool> expired;
  std::chrono::milliseconds limit;
  std::string* detail;
};

// The URIs to try in turn: the target's own, or one per address of its
// host name once resolved (its port, export and query kept).
asio::awaitable<error_code> resolve(const connect_state& s, const nbd_target& t, std::vector<std::string>& uris) {
  if (!needs_lookup(t) || !lookup_keeps_tls_name(t)) {
    uris.push_back(t.uri());
    co_return error_code{};
  }
  const std::string host = t.host.empty() ? "localhost" : t.host;  // as libnbd does
  std::string why;
  auto lk = lookup::start(host, t.port, why);
  if (!lk) {
    *s.detail = why;
    co_return asio_xen::xen_error(resolve_call, EAGAIN);
  }
  while (!lk->done()) {
    s.w->watch(lk->fd(), LIBNBD_AIO_DIRECTION_READ, true);
    const error_code ec = co_await s.w->wait();
    s.w->forget();
    if (ec == asio_xen::errc::closed) co_return asio::error::operation_aborted;
    if (*s.expired && !lk->done()) {
      *s.detail = "host name \"" + host + "\" not resolved within " + std::to_string(s.limit.count()) + " ms";
      co_return asio_xen::xen_error(resolve_call, ETIMEDOUT);
    }
  }
  if (const int r = lk->status(); r != 0) {
    *s.detail = "cannot resolve host name \"" + host + "\": " + ::gai_strerror(r);
    co_return asio_xen::xen_error(resolve_call, r == EAI_NONAME || r == EAI_NODATA ? EHOSTUNREACH : EAGAIN);
  }
  for (const auto& a : lk->addresses()) {
    nbd_target numeric = t;
    numeric.host = a.host;
    numeric.port = a.port;
    uris.push_back(numeric.uri());
  }
  if (uris.empty()) {
    *s.detail = "host name \"" + host + "\" has no address an NBD URI can name";
    co_return asio_xen::xen_error(resolve_call, EHOSTUNREACH);
  }
  co_return error_code{};
}

// One connection attempt to `uri`, until negotiated, lost, expired or closed.
asio::awaitable<error_code> attempt(const connect_state& s, const std::string& uri, const nbd_target& t,
                                    bool local_files) {
  link& l = *s.l;
  auto fail = [&l, &s, &t](int fallback) {
    *s.detail = explain_failure(t, l.why());
    return asio_xen::xen_error(connect_call, l.error_number() ? l.error_number() : fallback);
  };
  if (!l.handle()) co_return fail(ENOMEM);
  nbd_set_request_structured_replies(l.handle(), true);
  // libnbd zeroes every read buffer before the read by default, so that a
  // careless caller cannot leak old heap contents. Ours never shows a failed
  // read's buffer to anyone, and a read buffer only ever held data of the
  // same ring's guest (queue buffers are per ring; unmapped memory comes
  // back zeroed): the zeroing would cost 8 % of the CPU of 1 MiB reads.
  nbd_set_pread_initialize(l.handle(), false);
  if (local_files) nbd_set_uri_allow_local_file(l.handle(), true);
#ifdef LIBNBD_HAVE_NBD_SET_TLS_HOSTNAME
  // The certificate is the name's, whichever address it was reached at.
  if (t.tls && !t.host.empty()) nbd_set_tls_hostname(l.handle(), t.host.c_str());
#endif
  if (nbd_aio_connect_uri(l.handle(), uri.c_str()) == -1) {
    l.note_error();
    co_return fail(EIO);
  }
  for (;;) {
    if (l.up()) co_return error_code{};
    if (l.down()) {
      l.note_error();
      co_return fail(ECONNRESET);
    }
    s.w->watch(nbd_aio_get_fd(l.handle()), static_cast<unsigned>(nbd_aio_get_direction(l.handle())), true);
    const error_code ec = co_await s.w->wait();
    if (ec == asio_xen::errc::closed || !l.handle()) co_return asio::error::operation_aborted;
    if (*s.expired) {
      *s.detail = "no NBD handshake with the server within " + std::to_string(s.limit.count()) + " ms";
      co_return asio_xen::xen_error(connect_call, ETIMEDOUT);
    }
    l.step(s.w->ready());
  }
}

}  // namespace

asio::awaitable<error_code> connect(std::shared_ptr<link> l, std::shared_ptr<socket_watch> w, nbd_target t,
                                    bool local_files, std::chrono::milliseconds limit, std::string& detail) {
  // The deadline wakes the wait; the flag is this attempt's own, so a late
  // timer of an attempt that has finished changes nothing but a spurious
  // wake-up (which the waits all tolerate).
  // Credentials that cannot be used fail here, before a connection that
  // libnbd would make without them (nbd_tls.hpp says why).
  if (int err = 0; !(detail = check_tls_credentials(t, err)).empty()) co_return asio_xen::xen_error(tls_call, err);
  connect_state s{std::move(l), std::move(w), std::make_shared<bool>(false), limit, &detail};
  asio::steady_timer deadline(co_await asio::this_coro::executor, limit);
  deadline.async_wait([expired = s.expired, weak = std::weak_ptr<socket_watch>(s.w)](const error_code& ec) {
    if (ec) return;
    *expired = true;
    if (auto sw = weak.lock()) sw->wake();
  });
  std::vector<std::string> uris;
  error_code result = co_await resolve(s, t, uris);
  for (std::size_t i = 0; i < uris.size(); ++i) {
    if (i > 0) {
      // The previous address failed before the deadline (refused,
      // unreachable): the next one, on a new handle (a failed one is
      // dead), within the same deadline.
      s.w->forget();
      s.l->renew();
    }
    const error_code ec = co_await attempt(s, uris[i], t, local_files);
    result = ec;
    if (!ec || ec == asio::error::operation_aborted || ec == boost::system::errc::timed_out) break;
  }
  if (result && uris.size() > 1 && result != asio::error::operation_aborted)
    detail += " (the last of " + std::to_string(uris.size()) + " addresses of \"" + t.host + "\")";
  deadline.cancel();
  co_return result;
}

}  // namespace xbd::blkback::storage::nbd
