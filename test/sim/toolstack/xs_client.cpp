#include "xs_client.hpp"

#include <poll.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "asio_xen/xen.hpp"

namespace xbd::sim {

namespace {

[[noreturn]] void fail(const std::string& what, int err) { throw toolstack_error(what + ": " + std::strerror(err)); }

char access_char(unsigned perms) {
  switch (perms & (XS_PERM_READ | XS_PERM_WRITE)) {
    case XS_PERM_READ:
      return 'r';
    case XS_PERM_WRITE:
      return 'w';
    case XS_PERM_READ | XS_PERM_WRITE:
      return 'b';
    default:
      return 'n';
  }
}

unsigned access_bits(char c) {
  switch (c) {
    case 'n':
      return XS_PERM_NONE;
    case 'r':
      return XS_PERM_READ;
    case 'w':
      return XS_PERM_WRITE;
    case 'b':
      return XS_PERM_READ | XS_PERM_WRITE;
    default:
      throw toolstack_error(std::string("bad permission letter '") + c + "'");
  }
}

struct free_deleter {
  void operator()(void* p) const { std::free(p); }
};

}  // namespace

std::string to_string(const std::vector<xs_perm>& perms) {
  std::string s;
  for (const auto& p : perms) {
    if (!s.empty()) s += ',';
    s += p.access;
    s += std::to_string(p.domid);
  }
  return s;
}

std::vector<xs_perm> parse_perms(std::string_view text) {
  std::vector<xs_perm> out;
  while (!text.empty()) {
    auto comma = text.find(',');
    auto item = text.substr(0, comma);
    if (item.size() < 2) throw toolstack_error("bad permission '" + std::string(item) + "'");
    xs_perm p;
    access_bits(item[0]);  // validates
    p.access = item[0];
    p.domid = 0;
    for (char c : item.substr(1)) {
      if (c < '0' || c > '9') throw toolstack_error("bad permission '" + std::string(item) + "'");
      p.domid = p.domid * 10 + static_cast<unsigned>(c - '0');
    }
    out.push_back(p);
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
  return out;
}

xs_client::xs_client() {
  h_ = xs_open(0);
  if (!h_) {
    const char* p = std::getenv("XENSTORED_PATH");
    fail(std::string("cannot connect to xenstored (xs_open") +
             (p ? std::string(", XENSTORED_PATH=") + p : std::string()) + ")",
         errno);
  }
}

xs_client::~xs_client() { xs_close(h_); }

std::optional<std::string> xs_client::read(const std::string& path, transaction t) {
  unsigned len = 0;
  std::unique_ptr<char, free_deleter> v(static_cast<char*>(xs_read(h_, t, path.c_str(), &len)));
  if (!v) {
    if (errno == ENOENT) return std::nullopt;
    fail("xenstore read " + path, errno);
  }
  return std::string(v.get(), len);
}

bool xs_client::exists(const std::string& path, transaction t) { return read(path, t).has_value(); }

void xs_client::write(const std::string& path, std::string_view value, transaction t) {
  if (!xs_write(h_, t, path.c_str(), value.data(), static_cast<unsigned>(value.size())))
    fail("xenstore write " + path + " = '" + std::string(value) + "'", errno);
}

void xs_client::mkdir(const std::string& path, transaction t) {
  if (!xs_mkdir(h_, t, path.c_str())) fail("xenstore mkdir " + path, errno);
}

bool xs_client::rm(const std::string& path, transaction t) {
  if (xs_rm(h_, t, path.c_str())) return true;
  if (errno == ENOENT) return false;
  fail("xenstore rm " + path, errno);
}

std::optional<std::vector<std::string>> xs_client::directory(const std::string& path, transaction t) {
  unsigned n = 0;
  std::unique_ptr<char*, free_deleter> d(xs_directory(h_, t, path.c_str(), &n));
  if (!d) {
    if (errno == ENOENT) return std::nullopt;
    fail("xenstore directory " + path, errno);
  }
  std::vector<std::string> out;
  out.reserve(n);
  for (unsigned i = 0; i < n; ++i) out.emplace_back(d.get()[i]);
  return out;
}

void xs_client::set_perms(const std::string& path, const std::vector<xs_perm>& perms, transaction t) {
  std::vector<xs_permissions> raw;
  raw.reserve(perms.size());
  for (const auto& p : perms) raw.push_back({p.domid, access_bits(p.access)});
  if (!xs_set_permissions(h_, t, path.c_str(), raw.data(), static_cast<unsigned>(raw.size())))
    fail("xenstore set permissions " + path + " to " + to_string(perms), errno);
}

std::optional<std::vector<xs_perm>> xs_client::perms(const std::string& path, transaction t) {
  unsigned n = 0;
  std::unique_ptr<xs_permissions, free_deleter> p(xs_get_permissions(h_, t, path.c_str(), &n));
  if (!p) {
    if (errno == ENOENT) return std::nullopt;
    fail("xenstore get permissions " + path, errno);
  }
  std::vector<xs_perm> out;
  for (unsigned i = 0; i < n; ++i) out.push_back({p.get()[i].id, access_char(p.get()[i].perms)});
  return out;
}

std::string xs_client::perms_string(const std::string& path) {
  auto p = perms(path);
  return p ? to_string(*p) : std::string();
}

void xs_client::in_transaction(const std::function<void(transaction)>& body) {
  for (;;) {
    transaction t = xs_transaction_start(h_);
    if (!t) fail("xenstore transaction start", errno);
    try {
      body(t);
    } catch (...) {
      xs_transaction_end(h_, t, true);
      throw;
    }
    if (xs_transaction_end(h_, t, false)) return;
    if (errno != EAGAIN) fail("xenstore transaction commit", errno);
  }
}

bool xs_client::wait_for(const std::string& path, const std::function<bool(const std::optional<std::string>&)>& pred,
                         std::chrono::milliseconds timeout) {
  using clock = std::chrono::steady_clock;
  const auto deadline = clock::now() + timeout;
  const std::string token = "xbd-sim-toolstack-" + std::to_string(++next_token_);
  if (!xs_watch(h_, path.c_str(), token.c_str())) fail("xenstore watch " + path, errno);
  struct unwatch {
    xs_handle* h;
    const std::string& p;
    const std::string& t;
    ~unwatch() { xs_unwatch(h, p.c_str(), t.c_str()); }
  } guard{h_, path, token};

  // Look once before any event: the registration event may already have
  // been consumed by nobody, and the value may already be the wanted one.
  if (pred(read(path))) return true;
  const int fd = xs_fileno(h_);
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
    if (left.count() <= 0) return pred(read(path));
    pollfd pfd{fd, POLLIN, 0};
    int r = ::poll(&pfd, 1, static_cast<int>(left.count()) + 1);
    if (r < 0) {
      if (errno == EINTR) continue;
      fail("poll on xenstore watch fd", errno);
    }
    if (r == 0) continue;  // re-checks the deadline
    bool ours = false;
    for (;;) {
      std::unique_ptr<char*, free_deleter> ev(xs_check_watch(h_));
      if (!ev) {
        if (errno == EAGAIN) break;
        fail("xenstore read watch", errno);
      }
      if (token == ev.get()[XS_WATCH_TOKEN]) ours = true;
    }
    if (ours && pred(read(path))) return true;
  }
}

bool xs_client::introduce_domain(unsigned domid, unsigned long mfn, unsigned port) {
  return xs_introduce_domain(h_, domid, mfn, port);
}

bool xs_client::release_domain(unsigned domid) { return xs_release_domain(h_, domid); }

}  // namespace xbd::sim
