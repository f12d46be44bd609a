#include "devd.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include "asio_xen/xen.hpp"
#include "xs_client.hpp"

namespace xbd::sim {

namespace {

using clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr int state_closed = XenbusStateClosed;

void say(const std::string& line) { std::cout << "devd: " << line << std::endl; }

struct free_deleter {
  void operator()(void* p) const { std::free(p); }
};

// libxl__parse_backend_path: "/local/domain/%d/backend/%15[^/]/%u/%d".
struct backend_device {
  std::string kind;
  unsigned guest = 0;
  int devid = 0;
  std::string path;
};

std::optional<backend_device> parse_backend(const std::string& path) {
  int bdom = 0, devid = 0;
  unsigned guest = 0;
  char kind[16] = {};
  if (std::sscanf(path.c_str(), "/local/domain/%d/backend/%15[^/]/%u/%d", &bdom, kind, &guest, &devid) != 4)
    return std::nullopt;
  return backend_device{kind, guest, devid, path};
}

class devd {
 public:
  explicit devd(const devd_options& o) : o_(o) {
    auto id = read("domid");
    if (!id) throw toolstack_error("devd: no domid key in this domain's home (libxl__get_domid)");
    own_ = static_cast<unsigned>(std::strtoul(id->c_str(), nullptr, 10));
    home_ = "/local/domain/" + *id;
    root_ = home_ + "/backend";
  }

  void run(const std::atomic<bool>& stop) {
    if (!xs_watch(xs_.handle(), root_.c_str(), "devd")) throw toolstack_error("devd: cannot watch " + root_);
    say("watching " + root_ + " as domain " + std::to_string(own_));
    take_up_initwait();
    while (!stop) {
      pollfd p{xs_fileno(xs_.handle()), POLLIN, 0};
      if (::poll(&p, 1, 100) > 0) drain_events();
      reap();
    }
    stop_device_models();
  }

 private:
  struct guest {
    std::set<std::pair<std::string, int>> devices;
    int qemu_refcnt = 0;  // libxl's pvqemu_refcnt
  };

  // libxl__xs_read_checked: absent and unreadable both count as absent here.
  std::optional<std::string> read(const std::string& path) {
    try {
      return xs_.read(path);
    } catch (const toolstack_error&) {
      return std::nullopt;
    }
  }

  void drain_events() {
    for (;;) {
      std::unique_ptr<char*, free_deleter> ev(xs_check_watch(xs_.handle()));
      if (!ev) return;
      on_event(ev.get()[XS_WATCH_PATH]);
    }
  }

  // libxl_device_events_handler: devices already in InitWait.
  void take_up_initwait() {
    for (const auto& kind : dir(root_))
      for (const auto& dom : dir(root_ + "/" + kind))
        for (const auto& dev : dir(root_ + "/" + kind + "/" + dom)) {
          const std::string state = root_ + "/" + kind + "/" + dom + "/" + dev + "/state";
          if (read(state) == std::to_string(XenbusStateInitWait)) on_event(state);
        }
  }

  std::vector<std::string> dir(const std::string& path) {
    try {
      return xs_.directory(path).value_or(std::vector<std::string>{});
    } catch (const toolstack_error&) {
      return {};
    }
  }

  // backend_watch_callback.
  void on_event(const std::string& event_path) {
    const auto slash = event_path.rfind('/');
    if (slash == std::string::npos) return;
    const std::string leaf = event_path.substr(slash);
    if (leaf != "/state" && leaf != "/online") return;
    const std::string path = event_path.substr(0, slash);
    auto state = read(path + "/state");
    auto online = read(path + "/online");
    auto dev = parse_backend(path);
    if (!state || !online || !dev) return;
    const bool closed = std::atoi(state->c_str()) == state_closed;
    auto it = guests_.find(dev->guest);
    if (it == guests_.end() && closed) return;  // spurious
    guest& g = guests_[dev->guest];
    const bool known = g.devices.count({dev->kind, dev->devid}) != 0;
    if (!known && !closed)
      add_device(g, *dev);
    else if (known && closed && std::atoi(online->c_str()) == 0)
      remove_device(g, *dev);
    maybe_forget(dev->guest);
  }

  void add_device(guest& g, const backend_device& dev) {
    g.devices.insert({dev.kind, dev.devid});
    say("added " + dev.path);
    if (dev.kind != "qdisk") {
      say(dev.kind + " devices are not modelled (hotplug scripts): " + dev.path);
      return;
    }
    if (g.qemu_refcnt == 0) spawn(dev.guest);
    ++g.qemu_refcnt;
  }

  // remove_device: on a failed device-model kill libxl returns before
  // removing the device from its list or its directory.
  void remove_device(guest& g, const backend_device& dev) {
    if (dev.kind == "qdisk" && --g.qemu_refcnt == 0 && !destroy_device_model(dev.guest)) return;
    path_cleanup(dev.path);
    g.devices.erase({dev.kind, dev.devid});
    say("removed " + dev.path);
  }

  // check_and_maybe_remove_guest.
  void maybe_forget(unsigned domid) {
    auto it = guests_.find(domid);
    if (it == guests_.end() || !it->second.devices.empty()) return;
    guests_.erase(it);
    try {
      xs_.rm("libxl/" + std::to_string(domid));
    } catch (const toolstack_error&) {
    }
  }

  // libxl__xs_path_cleanup: the node, then each parent while it is empty
  // and ours to remove.
  void path_cleanup(std::string path) {
    try {
      if (!xs_.rm(path)) return;
      for (auto last = path.rfind('/'); last != std::string::npos && last > 0; last = path.rfind('/')) {
        path.resize(last);
        if (read(path) != "" || !dir(path).empty()) return;
        xs_.rm(path);
      }
    } catch (const toolstack_error& e) {
      say(std::string("path cleanup stopped: ") + e.what());
    }
  }

  pid_t start_child(unsigned domid) {
    const std::string d = std::to_string(domid);
    const std::string name = "domain-" + d;
    const auto log = o_.log_dir / ("qemu-dm-qdisk-" + d + ".log");
    const std::string dm = o_.device_model.empty() ? "/nonexistent/qemu-system-i386" : o_.device_model.string();
    std::vector<std::string> args{dm,          "-xen-domid", d,           "-xen-attach", "-name",
                                  name,        "-nographic", "-M",        "xenpv",       "-monitor",
                                  "/dev/null", "-serial",    "/dev/null", "-parallel",   "/dev/null"};
    const pid_t pid = ::fork();
    if (pid != 0) return pid;
    ::setsid();
    const int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    const int in = ::open("/dev/null", O_RDONLY);
    if (out >= 0) {
      ::dup2(out, 1);
      ::dup2(out, 2);
    }
    if (in >= 0) ::dup2(in, 0);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    std::fprintf(stderr, "libxl: cannot execute %s: %s\n", argv[0], std::strerror(errno));
    ::_exit(255);
  }

  // libxl__spawn_qdisk_backend, and the outcome logged as libxl does.
  void spawn(unsigned domid) {
    const std::string d = std::to_string(domid);
    const pid_t pid = start_child(domid);
    if (pid < 0) {
      say("domain " + d + " qdisk backend: spawn failed (fork)");
      return;
    }
    children_[pid] = domid;
    try {
      xs_.write("libxl/" + d + "/qdisk-backend-pid", std::to_string(pid));
    } catch (const toolstack_error& e) {
      ::kill(pid, SIGKILL);
      say("domain " + d + " qdisk backend: spawn failed: " + e.what());
      return;
    }
    const bool up = wait_running(domid, pid);
    if (!up) ::kill(pid, SIGKILL);
    say("domain " + d + " qdisk backend spawn " + (up ? "succeeded (pid " + std::to_string(pid) + ")" : "failed"));
  }

  // device_model_confirm: "running" in device-model/<G>/state, while the
  // child lives, within the start timeout.
  bool wait_running(unsigned domid, pid_t pid) {
    const std::string state = home_ + "/device-model/" + std::to_string(domid) + "/state";
    const auto deadline = clock::now() + o_.spawn_timeout;
    while (clock::now() < deadline) {
      try {
        if (waiter_.wait_for(
                state, [](const auto& v) { return v == "running"; }, 200ms))
          return true;
      } catch (const toolstack_error&) {
      }
      int status = 0;
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        children_.erase(pid);
        return false;
      }
    }
    return false;
  }

  // libxl__destroy_qdisk_backend and kill_device_model.
  bool destroy_device_model(unsigned domid) {
    const std::string d = std::to_string(domid);
    const std::string pid_path = "libxl/" + d + "/qdisk-backend-pid";
    auto pid = read(pid_path);
    if (!pid) {
      say("unable to find device model pid in " + pid_path);
      return false;
    }
    if (::kill(static_cast<pid_t>(std::atoi(pid->c_str())), SIGHUP) < 0) {
      if (errno != ESRCH) {
        say("failed to kill Device Model [" + *pid + "]: " + std::strerror(errno));
        return false;
      }
      say("Device Model already exited");
    }
    try {
      xs_.rm(pid_path);
      xs_.rm("device-model/" + d);
    } catch (const toolstack_error&) {
    }
    return true;
  }

  void reap() {
    for (auto it = children_.begin(); it != children_.end();) {
      int status = 0;
      if (::waitpid(it->first, &status, WNOHANG) != it->first) {
        ++it;
        continue;
      }
      say("device model of domain " + std::to_string(it->second) + " (pid " + std::to_string(it->first) +
          ") ended with status " + std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status)));
      it = children_.erase(it);
    }
  }

  // Not xl devd's behaviour (it leaves them running): a test leaves nothing.
  void stop_device_models() {
    for (const auto& [pid, domid] : children_) ::kill(pid, SIGHUP);
    const auto deadline = clock::now() + 2s;
    while (!children_.empty() && clock::now() < deadline) {
      reap();
      std::this_thread::sleep_for(20ms);
    }
    for (const auto& [pid, domid] : children_) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }

  devd_options o_;
  xs_client xs_;      // the watch and every read, write and removal
  xs_client waiter_;  // the spawn's wait (its own watch, so no event of xs_ is lost)
  unsigned own_ = 0;
  std::string home_;  // /local/domain/<own>
  std::string root_;  // its backend directory
  std::map<unsigned, guest> guests_;
  std::map<pid_t, unsigned> children_;
};

}  // namespace

void run_devd(const devd_options& opts, const std::atomic<bool>& stop) { devd(opts).run(stop); }

}  // namespace xbd::sim
