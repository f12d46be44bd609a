#include "blkfront/xen_platform.hpp"

#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "asio_xen/xen.hpp"
#include "xensim.h"

namespace xbd::sim::blkfront {

// A xenstore request in progress, for the watchdog.
class xenstore::request {
 public:
  request(stop_control* w, const char* what) : w_(w) {
    if (w_) w_->xenstore_begin(what);
  }
  ~request() {
    if (w_) w_->xenstore_end();
  }
  request(const request&) = delete;
  request& operator=(const request&) = delete;

 private:
  stop_control* w_;
};

xenstore::~xenstore() {
  if (h_) xs_close(h_);
}

bool xenstore::open(std::string& err) {
  h_ = xs_open(0);
  if (!h_) {
    err = std::string("xs_open: ") + std::strerror(errno) + " (is xenstored running, or XENSTORED_PATH set?)";
    return false;
  }
  return true;
}

std::optional<std::string> xenstore::read(const std::string& path) const {
  unsigned len = 0;
  request rq(watchdog_, "a read");
  void* v = xs_read(h_, XBT_NULL, path.c_str(), &len);
  if (!v) return std::nullopt;
  std::string s(static_cast<const char*>(v), len);
  std::free(v);
  return s;
}

namespace {
std::vector<std::string> take_list(char** list, unsigned n) {
  std::vector<std::string> out;
  if (!list) return out;
  for (unsigned i = 0; i < n; ++i) out.emplace_back(list[i]);
  std::free(list);
  return out;
}
}  // namespace

std::vector<std::string> xenstore::directory(const std::string& path) const { return directory_in(XBT_NULL, path); }

std::vector<std::string> xenstore::directory_in(unsigned t, const std::string& path) const {
  unsigned n = 0;
  request rq(watchdog_, "a directory listing");
  // Two statements: as one call's arguments, `n` could be read before
  // xs_directory() sets it (the order is unspecified; GCC reads it first).
  char** list = xs_directory(h_, t, path.c_str(), &n);
  return take_list(list, n);
}

bool xenstore::write(const std::string& path, const std::string& value) const {
  return write_in(XBT_NULL, path, value);
}

bool xenstore::write_in(unsigned t, const std::string& path, const std::string& value) const {
  request rq(watchdog_, "a write");
  return xs_write(h_, t, path.c_str(), value.data(), static_cast<unsigned>(value.size()));
}

bool xenstore::remove_in(unsigned t, const std::string& path) const {
  request rq(watchdog_, "a removal");
  return xs_rm(h_, t, path.c_str()) || errno == ENOENT;
}

bool xenstore::transaction(const std::function<bool(unsigned)>& body, std::string& err) const {
  for (int attempt = 0; attempt < 100; ++attempt) {
    xs_transaction_t t;
    {
      request rq(watchdog_, "a transaction start");
      t = xs_transaction_start(h_);
    }
    if (t == XBT_NULL) {
      err = std::string("xs_transaction_start: ") + std::strerror(errno);
      return false;
    }
    if (!body(t)) {
      const int saved = errno;
      request rq(watchdog_, "a transaction abort");
      xs_transaction_end(h_, t, true);
      err = std::string("transaction body failed: ") + std::strerror(saved);
      return false;
    }
    bool committed;
    {
      request rq(watchdog_, "a transaction commit");
      committed = xs_transaction_end(h_, t, false);
    }
    if (committed) return true;
    if (errno != EAGAIN) {
      err = std::string("xs_transaction_end: ") + std::strerror(errno);
      return false;
    }
  }
  err = "transaction kept conflicting (EAGAIN 100 times)";
  return false;
}

bool xenstore::watch(const std::string& path, const std::string& token) {
  request rq(watchdog_, "a watch");
  return xs_watch(h_, path.c_str(), token.c_str());
}

void xenstore::unwatch(const std::string& path, const std::string& token) {
  request rq(watchdog_, "an unwatch");
  xs_unwatch(h_, path.c_str(), token.c_str());
}

int xenstore::fd() const { return xs_fileno(h_); }

bool xenstore::drain_watches() {
  bool any = false;
  while (char** ev = xs_check_watch(h_)) {
    if (collect_) paths_.emplace_back(ev[XS_WATCH_PATH]);
    std::free(ev);
    any = true;
  }
  return any;
}

xen_platform::~xen_platform() {
  if (gntshr_) xengntshr_close(gntshr_);
  if (evtchn_) xenevtchn_close(evtchn_);
}

void xen_platform::set_error(const char* what) { last_error_ = std::string(what) + ": " + std::strerror(errno); }

bool xen_platform::open(std::string& err) {
  evtchn_ = xenevtchn_open(nullptr, 0);
  if (!evtchn_) {
    err = std::string("xenevtchn_open: ") + std::strerror(errno) +
          " (no /dev/xen: run under libxensim with XENSIM_DIR/XENSIM_DOMID)";
    return false;
  }
  // Non-blocking: pending() then answers EAGAIN when a readiness had no
  // port behind it (a port closed under a producer) instead of waiting
  // forever inside the library, which hung a run for good.
  if (int fl = ::fcntl(xenevtchn_fd(evtchn_), F_GETFL);
      fl < 0 || ::fcntl(xenevtchn_fd(evtchn_), F_SETFL, fl | O_NONBLOCK) < 0) {
    err = std::string("xenevtchn_fd: ") + std::strerror(errno);
    return false;
  }
  gntshr_ = xengntshr_open(nullptr, 0);
  if (!gntshr_) {
    err = std::string("xengntshr_open: ") + std::strerror(errno);
    return false;
  }
  return true;
}

shared_pages xen_platform::share(std::uint32_t domid, unsigned count, bool writable) {
  std::vector<std::uint32_t> refs(count);
  void* addr = xengntshr_share_pages(gntshr_, domid, static_cast<int>(count), refs.data(), writable ? 1 : 0);
  if (!addr) {
    set_error("xengntshr_share_pages");
    return {};
  }
  return shared_pages(this, static_cast<std::byte*>(addr), std::move(refs), writable);
}

void xen_platform::unshare(std::byte* addr, std::size_t count) {
  xengntshr_unshare(gntshr_, addr, static_cast<std::uint32_t>(count));
}

bound_port xen_platform::bind_unbound_port(std::uint32_t domid) {
  const xenevtchn_port_or_error_t p = xenevtchn_bind_unbound_port(evtchn_, domid);
  if (p < 0) {
    set_error("xenevtchn_bind_unbound_port");
    return {};
  }
  return bound_port(this, static_cast<std::uint32_t>(p));
}

void xen_platform::unbind(std::uint32_t port) { xenevtchn_unbind(evtchn_, port); }

bool xen_platform::notify(std::uint32_t port) {
  if (xenevtchn_notify(evtchn_, port) < 0) {
    set_error("xenevtchn_notify");
    return false;
  }
  return true;
}

std::string xen_platform::describe_port(std::uint32_t port) {
  pollfd pfd{xenevtchn_fd(evtchn_), POLLIN, 0};
  std::string out = ::poll(&pfd, 1, 0) > 0 ? "descriptor readable" : "descriptor not readable";
  // Under libxensim, its view of the port too; found at run time, since this
  // binary is linked against the real libraries and also runs on real Xen.
  using port_info_fn = int (*)(std::uint32_t, std::uint32_t, xensim_port_info_t*);
  if (auto* info = reinterpret_cast<port_info_fn>(::dlsym(RTLD_DEFAULT, "xensim_port_info"))) {
    const char* env = std::getenv("XENSIM_DOMID");
    xensim_port_info_t i{};
    if (info(env ? static_cast<std::uint32_t>(std::atoi(env)) : 0, port, &i) == 0)
      out += std::string(", xensim: state ") + std::to_string(i.state) + " peer " + std::to_string(i.remote_dom) + ":" +
             std::to_string(i.remote_port) + (i.bound ? "" : " unbound") + (i.masked ? " masked" : "") +
             (i.pending ? " pending" : "") + (i.queued ? " queued" : "") + ", handle ready " +
             std::to_string(i.handle_ready);
  }
  return out;
}

// Under libxensim, the hypervisor's pins on our grant (found with dlsym, as
// in describe_port). On real Xen the grant table is the guest kernel's, and
// gntalloc defers an end it cannot do without telling us: nullopt.
std::optional<bool> xen_platform::backend_holds(std::uint32_t ref) {
  using status_fn = int (*)(std::uint32_t, std::uint32_t, std::uint32_t*, std::uint32_t*);
  static auto* status = reinterpret_cast<status_fn>(::dlsym(RTLD_DEFAULT, "xensim_grant_status"));
  const char* env = std::getenv("XENSIM_DOMID");
  if (!status || !env) return std::nullopt;
  std::uint32_t ro = 0, rw = 0;
  if (status(static_cast<std::uint32_t>(std::atoi(env)), ref, &ro, &rw) < 0) return std::nullopt;
  return ro + rw > 0;
}

wait_result xen_platform::wait(std::chrono::milliseconds timeout) {
  wait_result r;
  // The stop descriptor stays readable once a signal came: poll it only
  // until then, so that the bounded waits of a stopping run still sleep.
  const bool stopping = stop_requested().has_value();
  pollfd fds[4] = {{xenevtchn_fd(evtchn_), POLLIN, 0}, {-1, POLLIN, 0}, {-1, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
  if (xs_) fds[1].fd = xs_->fd();
  if (stop_ && !stopping) fds[2].fd = stop_->stop_fd();
  int n = ::poll(fds, 4, static_cast<int>(timeout.count()));
  r.signal = stop_requested().has_value();
  if (n <= 0) return r;
  r.wake = (fds[3].revents & POLLIN) != 0;

  // One pending() per readable poll: the descriptor may block when nothing
  // is pending, so never call it unprompted. Unmask right away; ring.h's
  // final check makes an event that lands meanwhile harmless.
  for (int i = 0; i < 1024 && (fds[0].revents & POLLIN); ++i) {
    const xenevtchn_port_or_error_t p = xenevtchn_pending(evtchn_);
    if (p < 0) break;
    xenevtchn_unmask(evtchn_, static_cast<evtchn_port_t>(p));
    r.ports.push_back(static_cast<std::uint32_t>(p));
    pollfd again{fds[0].fd, POLLIN, 0};
    if (::poll(&again, 1, 0) <= 0) break;
    fds[0].revents = again.revents;
  }
  if (xs_ && (fds[1].revents & POLLIN)) {
    // Readable without a parsed event still means "look again": the
    // callers re-read the state they care about either way.
    xs_->drain_watches();
    r.xenstore = true;
  }
  return r;
}

}  // namespace xbd::sim::blkfront
