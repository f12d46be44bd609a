// xen-blkbackd-dm: a device-model entry point that lets stock xl drive
// xen-blkbackd (docs/xl.md, docs/driver-domain.md).
//
// libxl (4.17) spawns a device model for every PV guest with a
// backendtype=qdisk disk, and the guest is not started until that device
// model says it is up. In a driver domain, `xl devd` does the same for each
// guest with a qdisk disk there. The disks themselves need no device model:
// they are under /local/domain/<backend domain>/backend/qdisk, where the
// long-lived xen-blkbackd serves them. So this program only does libxl's
// part of the handshake and then waits to be killed:
//
//  - writes "running" to device-model/<domid>/state in its own domain's
//    xenstore home (/local/domain/0 for dom0's libxl, the driver domain's
//    for xl devd, which needs driver_domain=1 for that directory), which is
//    all libxl waits for with device_model_version="qemu-xen-traditional"
//    and for xl devd;
//  - with the default "qemu-xen" it also serves QMP on the -chardev sockets
//    libxl names (qmp-libxl-<domid>, qmp-libxenstat-<domid>, or a socket
//    libxl pre-opened and passed as fd=N), answering the greeting,
//    qmp_capabilities and query-chardev (an empty list) as QEMU would;
//  - exits on SIGHUP/SIGTERM/SIGINT (libxl kills it when the domain goes),
//    on QMP "quit", when xenstored reports the domain released (dom0), or,
//    in a driver domain, where that report does not come, when no disk of
//    the guest is left under its backend directory;
//  - answers xentop's query-blockstats and query-block from xen-blkbackd's
//    live counters (daemon_blocks.hpp), also on qmp-libxenstat-<domid> when
//    libxl named no such socket (qemu-xen-traditional).
//
// Set in the guest config with device_model_override; in a driver domain it
// takes the place of libxl's QEMU. It accepts and ignores every argument
// QEMU would take but it does not need.
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

extern "C" {
#include <xenstore.h>
}

#include "app/ctl/client.hpp"
#include "daemon_blocks.hpp"
#include "qmp.hpp"

namespace {

using xbd::dm::machine_state;
using xbd::dm::qmp_session;

std::string g_tag = "xen-blkbackd-dm";

template <typename... Args>
void say(const char* fmt, Args... args) {
  std::fprintf(stderr, "%s: ", g_tag.c_str());
  if constexpr (sizeof...(Args) == 0)
    std::fputs(fmt, stderr);
  else
    std::fprintf(stderr, fmt, args...);
  std::fputc('\n', stderr);
}

struct chardev_socket {
  std::string id;
  std::string path;  // a path to listen on, or
  int fd = -1;       // a listening socket libxl opened for us
};

struct options {
  std::optional<unsigned> domid;
  std::string name;
  bool start_stopped = false;  // -S
  std::vector<chardev_socket> sockets;
  std::string blkbackd_socket = xbd::ctl::default_socket;  // -blkbackd-socket
  std::optional<std::string> libxenstat_socket;            // -libxenstat-socket
};

std::optional<unsigned> to_uint(std::string_view s) {
  unsigned v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || end != s.data() + s.size()) return std::nullopt;
  return v;
}

// "-chardev socket,id=libxl-cmd,path=/var/run/xen/qmp-libxl-3,server=on,wait=off"
std::optional<chardev_socket> parse_chardev(std::string_view spec) {
  std::vector<std::string_view> parts;
  while (!spec.empty()) {
    const auto comma = spec.find(',');
    parts.push_back(spec.substr(0, comma));
    spec = comma == std::string_view::npos ? std::string_view{} : spec.substr(comma + 1);
  }
  if (parts.empty() || parts[0] != "socket") return std::nullopt;
  chardev_socket c;
  for (std::size_t k = 1; k < parts.size(); ++k) {
    const auto p = parts[k];
    if (p.starts_with("id="))
      c.id = p.substr(3);
    else if (p.starts_with("path="))
      c.path = p.substr(5);
    else if (p.starts_with("fd=")) {
      const auto fd = to_uint(p.substr(3));
      if (!fd) return std::nullopt;
      c.fd = static_cast<int>(*fd);
    }
  }
  if (c.path.empty() && c.fd < 0) return std::nullopt;
  return c;
}

void usage(FILE* to) {
  std::fputs(
      "usage: xen-blkbackd-dm -xen-domid DOMID [QEMU arguments...]\n"
      "       xen-blkbackd-dm -d DOMID [qemu-dm arguments...]\n"
      "A device model for libxl that emulates nothing: it tells libxl it is running\n"
      "(xenstore device-model state, and QMP on the -chardev sockets it is given)\n"
      "so that xen-blkbackd can serve the guest's backendtype=qdisk disks.\n"
      "Use it with device_model_override in the guest config; see docs/xl.md.\n"
      "  -blkbackd-socket PATH    xen-blkbackd's control socket, for xentop's disk counters\n"
      "                           (default /run/xen-blkbackd/control.sock)\n"
      "  -libxenstat-socket PATH  where xentop asks when libxl names no socket for it\n"
      "                           (default /var/run/xen/qmp-libxenstat-DOMID)\n",
      to);
}

std::optional<options> parse_args(int argc, char** argv) {
  options o;
  for (int k = 1; k < argc; ++k) {
    const std::string_view a = argv[k];
    const bool has_value = k + 1 < argc;
    if (a == "-h" || a == "--help") {
      usage(stdout);
      std::exit(0);
    }
    if ((a == "-xen-domid" || a == "--xen-domid" || a == "-d") && has_value) {
      o.domid = to_uint(argv[++k]);
      if (!o.domid) {
        say("bad domid '%s'", argv[k]);
        return std::nullopt;
      }
    } else if ((a == "-name" || a == "-domain-name") && has_value) {
      o.name = argv[++k];
    } else if (a == "-chardev" && has_value) {
      if (auto c = parse_chardev(argv[++k])) o.sockets.push_back(std::move(*c));
    } else if (a == "-S") {
      o.start_stopped = true;
    } else if ((a == "-blkbackd-socket" || a == "--blkbackd-socket") && has_value) {
      o.blkbackd_socket = argv[++k];
    } else if ((a == "-libxenstat-socket" || a == "--libxenstat-socket") && has_value) {
      o.libxenstat_socket = argv[++k];
    }
  }
  if (!o.domid) {
    usage(stderr);
    return std::nullopt;
  }
  return o;
}

struct xs_closer {
  void operator()(xs_handle* h) const { xs_close(h); }
};

int listen_on(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) {
    errno = ENAMETOOLONG;
    return -1;
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(path.c_str());
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) < 0 || ::listen(fd, 8) < 0) {
    const int e = errno;
    ::close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

// Whether libxl gave us xentop's socket (it does for qemu-xen).
bool names_libxenstat_socket(const options& o, unsigned domid) {
  const std::string name = "/qmp-libxenstat-" + std::to_string(domid);
  for (const auto& c : o.sockets)
    if (c.id == "libxenstat-cmd" || c.path.ends_with(name)) return true;
  return false;
}

bool write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        pollfd p{fd, POLLOUT, 0};
        if (::poll(&p, 1, 1000) <= 0) return false;
        continue;
      }
      return false;
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

struct client {
  int fd;
  qmp_session session;
};

// The domain this program runs in: its xenstore home's `domid` (dom0 has
// one from xen-init-dom0).
unsigned own_domid(xs_handle* xs) {
  unsigned len = 0;
  std::unique_ptr<char, decltype(&std::free)> v(static_cast<char*>(xs_read(xs, XBT_NULL, "domid", &len)), &std::free);
  return v ? to_uint(std::string_view(v.get(), len)).value_or(0) : 0;
}

// Whether the guest has gone, asked after every xenstore event. dom0 hears
// of a released domain (@releaseDomain); a driver domain does not
// (xenstored sends it to privileged domains only), so there the guest is
// gone once no disk of it is left under this domain's backend directory:
// xen-blkbackd removes a dead guest's vbds, xl devd an unplugged one's.
class guest_watch {
 public:
  guest_watch(xs_handle* xs, unsigned own, unsigned guest)
      : xs_(xs),
        own_(own),
        guest_(guest),
        disks_("/local/domain/" + std::to_string(own) + "/backend/qdisk/" + std::to_string(guest)) {
    const char* path = own_ == 0 ? "@releaseDomain" : disks_.c_str();
    if (!xs_watch(xs_, path, "guest")) say("cannot watch %s: %s", path, std::strerror(errno));
  }

  // Why the device model should end now; empty while the guest is there.
  std::string gone() {
    if (own_ != 0) return has_disks() ? "" : "no disk of the domain is left in this driver domain";
    const bool introduced = xs_is_domain_introduced(xs_, guest_);
    seen_ = seen_ || introduced;
    return seen_ && !introduced ? "domain released" : "";
  }

 private:
  bool has_disks() {
    unsigned n = 0;
    std::unique_ptr<char*, decltype(&std::free)> d(xs_directory(xs_, XBT_NULL, disks_.c_str(), &n), &std::free);
    return d && n > 0;
  }

  xs_handle* xs_;
  unsigned own_;
  unsigned guest_;
  std::string disks_;
  bool seen_ = false;
};

}  // namespace

int main(int argc, char** argv) {
  const auto opts = parse_args(argc, argv);
  if (!opts) return 2;
  const unsigned domid = *opts->domid;
  g_tag = "xen-blkbackd-dm[d" + std::to_string(domid) + "]";

  sigset_t sigs;
  sigemptyset(&sigs);
  for (const int s : {SIGHUP, SIGTERM, SIGINT, SIGQUIT}) sigaddset(&sigs, s);
  sigprocmask(SIG_BLOCK, &sigs, nullptr);
  const int sigfd = ::signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
  ::signal(SIGPIPE, SIG_IGN);

  std::unique_ptr<xs_handle, xs_closer> xs(xs_open(0));
  if (!xs) {
    say("cannot connect to xenstore: %s", std::strerror(errno));
    return 1;
  }

  // Listen before saying "running": libxl connects as soon as it reads it.
  std::vector<int> listeners;
  std::vector<std::string> created;
  for (const auto& c : opts->sockets) {
    if (c.fd >= 0) {
      struct stat st {};
      if (::fstat(c.fd, &st) < 0 || !S_ISSOCK(st.st_mode)) {
        say("chardev %s: fd=%d is not a socket", c.id.c_str(), c.fd);
        return 1;
      }
      listeners.push_back(c.fd);
      continue;
    }
    const int fd = listen_on(c.path);
    if (fd < 0) {
      say("chardev %s: cannot listen on %s: %s", c.id.c_str(), c.path.c_str(), std::strerror(errno));
      return 1;
    }
    listeners.push_back(fd);
    created.push_back(c.path);
  }

  // xentop asks qmp-libxenstat-<domid> for the disks' counters; libxl
  // names that socket only for qemu-xen.
  if (!names_libxenstat_socket(*opts, domid)) {
    const std::string path = opts->libxenstat_socket.value_or("/var/run/xen/qmp-libxenstat-" + std::to_string(domid));
    if (const int fd = listen_on(path); fd >= 0) {
      listeners.push_back(fd);
      created.push_back(path);
    } else {
      say("cannot listen on %s for xentop: %s; xentop will not see the disks' counters", path.c_str(),
          std::strerror(errno));
    }
  }

  // Exit when the domain is gone even if nobody kills us (xl itself killed).
  const unsigned own = own_domid(xs.get());
  guest_watch guest(xs.get(), own, domid);

  // libxl waits here: dom0's under /local/domain/0, xl devd's in the driver
  // domain's own home.
  const std::string state_path =
      "/local/domain/" + std::to_string(own) + "/device-model/" + std::to_string(domid) + "/state";
  if (!xs_write(xs.get(), XBT_NULL, state_path.c_str(), "running", 7)) {
    say("cannot write %s: %s", state_path.c_str(), std::strerror(errno));
    return 1;
  }
  say("domain %u%s%s: device model up (%zu QMP socket(s)); xen-blkbackd serves the disks", domid,
      opts->name.empty() ? "" : " ", opts->name.c_str(), listeners.size());

  machine_state machine;
  if (opts->start_stopped) {
    machine.running = false;
    machine.prelaunch = true;
  }
  const auto blocks = xbd::dm::daemon_blocks(opts->blkbackd_socket, domid, std::chrono::seconds(2));
  std::vector<client> clients;
  std::string why = "?";

  for (;;) {
    std::vector<pollfd> fds;
    fds.push_back({sigfd, POLLIN, 0});
    fds.push_back({xs_fileno(xs.get()), POLLIN, 0});
    for (const int l : listeners) fds.push_back({l, POLLIN, 0});
    for (const auto& c : clients) fds.push_back({c.fd, POLLIN, 0});
    // A second at most: the guest is looked at again even without an event.
    const int ready = ::poll(fds.data(), fds.size(), 1000);
    if (ready < 0) {
      if (errno == EINTR) continue;
      say("poll: %s", std::strerror(errno));
      why = "poll failed";
      break;
    }
    if (ready == 0) {
      if (auto gone = guest.gone(); !gone.empty()) {
        why = gone;
        break;
      }
      continue;
    }
    if (fds[0].revents) {
      signalfd_siginfo si{};
      if (::read(sigfd, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
        why = std::string("signal ") + strsignal(static_cast<int>(si.ssi_signo));
        break;
      }
    }
    if (fds[1].revents) {
      unsigned n = 0;
      if (char** ev = xs_read_watch(xs.get(), &n)) std::free(ev);
      if (auto gone = guest.gone(); !gone.empty()) {
        why = gone;
        break;
      }
    }
    std::size_t k = 2;
    for (const int l : listeners) {
      if (fds[k++].revents & POLLIN) {
        const int c = ::accept4(l, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (c < 0) continue;
        if (write_all(c, qmp_session::greeting()))
          clients.push_back({c, qmp_session(machine, blocks)});
        else
          ::close(c);
      }
    }
    // Clients are checked against the revents of the fds polled this round,
    // which are the first clients.size() entries before any were accepted.
    const std::size_t polled = fds.size() - k;
    std::vector<bool> drop(clients.size(), false);
    for (std::size_t c = 0; c < polled; ++c) {
      if (!fds[k + c].revents) continue;
      char buf[4096];
      const ssize_t n = ::recv(clients[c].fd, buf, sizeof buf, 0);
      if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        drop[c] = true;
        continue;
      }
      const std::string out = clients[c].session.feed(std::string_view(buf, static_cast<std::size_t>(n)));
      if (const auto done = clients[c].session.take_log(); !done.empty()) say("QMP %s", done.c_str());
      if (!out.empty() && !write_all(clients[c].fd, out)) drop[c] = true;
      if (clients[c].session.broken()) drop[c] = true;
    }
    for (std::size_t c = clients.size(); c-- > 0;) {
      if (c < drop.size() && drop[c]) {
        ::close(clients[c].fd);
        clients.erase(clients.begin() + static_cast<std::ptrdiff_t>(c));
      }
    }
    if (machine.quit) {
      why = "QMP quit";
      break;
    }
  }

  for (const auto& c : clients) ::close(c.fd);
  for (const int l : listeners) ::close(l);
  for (const auto& p : created) ::unlink(p.c_str());
  say("exiting (%s)", why.c_str());
  return 0;
}
