// toolstack-sim: the simulated toolstack from the command line (an `xl` for
// the simulated Xen). Talks to the xenstored named by XENSTORED_PATH.
//
// Exit status: 0 success, 1 the operation failed (as libxl would report),
// 2 bad usage.
#include <signal.h>
#include <sys/prctl.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "devd.hpp"
#include "toolstack.hpp"

#ifdef XBD_HAVE_SIM_XENSTORED
#include <unistd.h>

#include "layout.h"
#include "xenstored.hpp"
#endif

namespace {

using xbd::sim::toolstack_error;

#ifdef XBD_HAVE_SIM_XENSTORED
// The simulator's run directory: the one holding the socket XENSTORED_PATH
// names (xbd::sim::socket_path(dir) = dir/socket).
std::filesystem::path sim_dir() {
  const char* p = std::getenv("XENSTORED_PATH");
  if (!p || !*p) throw toolstack_error("XENSTORED_PATH is not set: cannot find the simulator's run directory");
  return std::filesystem::path(p).parent_path();
}

bool was_introduced(const std::filesystem::path& dir, unsigned domid) {
  char name[64];
  std::snprintf(name, sizeof name, XBD_XS_PAGE_FMT, domid);
  return ::access((dir / name).c_str(), F_OK) == 0;
}
#endif

constexpr const char* usage_text =
    R"(usage: toolstack-sim COMMAND [OPTIONS]

Writes and removes xenstore entries exactly as libxl 4.17 (xl) does, in the
xenstored named by XENSTORED_PATH.

commands:
  create-domain --domid N [--name NAME] [--uuid UUID] [--type pv|pvh|hvm]
                [--vcpus N] [--memory MIB] [--kernel PATH]
                [--store-port P] [--store-mfn M] [--introduce]
                [--driver-domain]
      The domain's xenstore home, as libxl__domain_make and
      libxl__build_post write it. Prints the uuid. --introduce: introduce
      the domain to the simulated xenstored (a guest can then connect).
  destroy-domain --domid N [--timeout SEC] [--bodge-timeout SEC]
                [--no-kill]
      Removes every device (forced), then the domain's nodes, then (unless
      --no-kill) kills the domain in the simulated hypervisor if it was
      introduced: xenstored then fires @releaseDomain.
  add-disk --domid N --vdev VDEV --target PATH [--mode r|w] [--cdrom]
           [--format raw|qcow|qcow2|vhd|qed] [--direct-io-safe]
           [--discard-enable 0|1] [--untrusted] [--removable]
           [--type qdisk] [--backend-domid N] [--protocol ABI]
      Prints the devid (e.g. 51712 for xvda).
  remove-disk --domid N (--devid D | --vdev VDEV) [--timeout SEC]
              [--safe | --force]
      Default: libxl_device_disk_remove (online=0, state=5, wait for
      Closed; on timeout a forced pass, then the nodes are removed anyway).
      --safe: as `xl block-detach` (on timeout fail, leave the nodes).
      --force: as `xl block-detach -f` (libxl_device_disk_destroy).
      Exits 1 with a message if the backend did not reach Closed.
  wait-backend-state --domid N (--devid D | --vdev VDEV) --state S
              [--timeout SEC]
      Exits 1 if the backend state is not S within the timeout.
  devd [--device-model PATH] [--log-dir DIR] [--spawn-timeout SEC]
       [--for SEC]
      `xl devd` in a driver domain (devd.hpp): run it with XENSTORED_PATH
      at the domain's xenstore device (xbd-xenbus-sim). Serves until
      SIGTERM or SIGINT, or --for seconds (default 3600); ends the device
      models it started.
  devid VDEV...     Prints libxl's devid for each vdev name.
  init-dom0         What xen-init-dom0 writes (domid, name of dom0).
)";

struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Parses "--key value", "--key=value" and bare flags.
class args {
 public:
  args(int argc, char** argv, int first, const std::set<std::string>& with_value, const std::set<std::string>& flags) {
    for (int i = first; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("--", 0) != 0) {
        positional_.push_back(a);
        continue;
      }
      std::string key = a.substr(2), value;
      bool has_value = false;
      if (auto eq = key.find('='); eq != std::string::npos) {
        value = key.substr(eq + 1);
        key.resize(eq);
        has_value = true;
      }
      if (flags.count(key)) {
        if (has_value) throw usage_error("option --" + key + " takes no value");
        flags_.insert(key);
      } else if (with_value.count(key)) {
        if (!has_value) {
          if (i + 1 >= argc) throw usage_error("option --" + key + " needs a value");
          value = argv[++i];
        }
        if (values_.count(key)) throw usage_error("option --" + key + " given twice");
        values_[key] = value;
      } else {
        throw usage_error("unknown option --" + key);
      }
    }
  }

  bool flag(const std::string& k) const { return flags_.count(k) != 0; }
  std::optional<std::string> get(const std::string& k) const {
    auto it = values_.find(k);
    if (it == values_.end()) return std::nullopt;
    return it->second;
  }
  std::string need(const std::string& k) const {
    auto v = get(k);
    if (!v) throw usage_error("missing required option --" + k);
    return *v;
  }
  const std::vector<std::string>& positional() const { return positional_; }
  void no_positional() const {
    if (!positional_.empty()) throw usage_error("unexpected argument '" + positional_[0] + "'");
  }

 private:
  std::map<std::string, std::string> values_;
  std::set<std::string> flags_;
  std::vector<std::string> positional_;
};

unsigned long long parse_uint(const std::string& what, const std::string& s, unsigned long long max) {
  if (s.empty() || s[0] == '-' || s[0] == '+' || s[0] == ' ')
    throw usage_error("bad " + what + " '" + s + "' (want a non-negative integer)");
  errno = 0;
  char* end = nullptr;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (errno || *end) throw usage_error("bad " + what + " '" + s + "' (want a non-negative integer)");
  if (v > max) throw usage_error(what + " " + s + " is too large (max " + std::to_string(max) + ")");
  return v;
}

std::chrono::milliseconds parse_seconds(const std::string& what, const std::string& s) {
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (s.empty() || errno || *end || !std::isfinite(v) || v < 0 || v > 86400)
    throw usage_error("bad " + what + " '" + s + "' (want seconds, 0..86400, e.g. 10 or 0.5)");
  return std::chrono::milliseconds(static_cast<long long>(std::llround(v * 1000)));
}

unsigned parse_domid(const args& a) { return static_cast<unsigned>(parse_uint("domid", a.need("domid"), 0x7FEF)); }

std::uint32_t parse_device(const args& a) {
  auto devid = a.get("devid");
  auto vdev = a.get("vdev");
  if (devid && vdev) throw usage_error("give --devid or --vdev, not both");
  if (devid) return static_cast<std::uint32_t>(parse_uint("devid", *devid, 0x7FFFFFFF));
  if (vdev) {
    auto d = xbd::sim::vdev_to_devid(*vdev);
    if (!d) throw usage_error("invalid or unsupported virtual disk identifier '" + *vdev + "'");
    return *d;
  }
  throw usage_error("missing required option --devid (or --vdev)");
}

int cmd_create_domain(int argc, char** argv) {
  args a(argc, argv, 2, {"domid", "name", "uuid", "type", "vcpus", "memory", "kernel", "store-port", "store-mfn"},
         {"introduce", "driver-domain"});
  a.no_positional();
  xbd::sim::domain_spec spec;
  spec.domid = parse_domid(a);
  if (spec.domid == 0) throw usage_error("domid 0 is dom0; a guest needs 1..32751");
  spec.name = a.get("name").value_or("");
  spec.uuid = a.get("uuid").value_or("");
  if (auto t = a.get("type")) {
    if (*t == "pv")
      spec.type = xbd::sim::domain_type::pv;
    else if (*t == "pvh")
      spec.type = xbd::sim::domain_type::pvh;
    else if (*t == "hvm")
      spec.type = xbd::sim::domain_type::hvm;
    else
      throw usage_error("bad --type '" + *t + "' (want pv, pvh or hvm)");
  }
  if (auto v = a.get("vcpus")) {
    spec.max_vcpus = static_cast<unsigned>(parse_uint("vcpus", *v, 512));
    if (!spec.max_vcpus) throw usage_error("--vcpus must be at least 1");
  }
  if (auto v = a.get("memory")) spec.max_memkb = spec.target_memkb = parse_uint("memory", *v, 1u << 24) * 1024;
  if (auto v = a.get("kernel")) spec.kernel = *v;
  if (auto v = a.get("store-port")) spec.store_port = static_cast<unsigned>(parse_uint("store-port", *v, 0xFFFFFFFF));
  if (auto v = a.get("store-mfn")) spec.store_mfn = parse_uint("store-mfn", *v, ~0ull);
  if (a.flag("introduce")) {
#ifdef XBD_HAVE_SIM_XENSTORED
    const auto dir = sim_dir();
    spec.introduce = [dir](unsigned d) { xbd::sim::introduce_domain(dir, d); };
#else
    spec.introduce = [](unsigned d) {
      throw toolstack_error("--introduce: built without the xenstored simulator (domain " + std::to_string(d) +
                            " not introduced)");
    };
#endif
  }
  spec.driver_domain = a.flag("driver-domain");
  if (spec.type == xbd::sim::domain_type::hvm) spec.video_memkb = 8192;
  xbd::sim::toolstack ts;
  auto info = ts.create_domain(spec);
  std::cout << info.uuid << '\n';
  return 0;
}

int cmd_destroy_domain(int argc, char** argv) {
  args a(argc, argv, 2, {"domid", "timeout", "bodge-timeout"}, {"no-kill"});
  a.no_positional();
  unsigned domid = parse_domid(a);
  xbd::sim::destroy_options opts;
  if (auto v = a.get("timeout")) opts.destroy_timeout = parse_seconds("timeout", *v);
  if (auto v = a.get("bodge-timeout")) opts.qemu_bodge_timeout = parse_seconds("bodge-timeout", *v);
#ifdef XBD_HAVE_SIM_XENSTORED
  // xc_domain_destroy: the simulated hypervisor marks the domain dead and
  // raises VIRQ_DOM_EXC, if the domain was ever introduced to xenstored.
  if (!a.flag("no-kill")) {
    opts.on_destroyed = [](unsigned d) {
      const auto dir = sim_dir();
      if (was_introduced(dir, d)) xbd::sim::kill_domain(dir, d);
    };
  }
#endif
  xbd::sim::toolstack ts;
  auto r = ts.destroy_domain(domid, opts);
  for (const auto& s : r.skipped_devices)
    std::cerr << "toolstack-sim: warning: device " << s
              << " skipped (unknown kind, libxl would leave its backend behind)\n";
  for (const auto& e : r.errors) std::cerr << "toolstack-sim: " << e << '\n';
  return r.ok() ? 0 : 1;
}

int cmd_add_disk(int argc, char** argv) {
  args a(argc, argv, 2,
         {"domid", "vdev", "target", "mode", "format", "discard-enable", "type", "backend-domid", "protocol"},
         {"cdrom", "direct-io-safe", "untrusted", "removable"});
  a.no_positional();
  xbd::sim::disk_spec d;
  d.domid = parse_domid(a);
  d.vdev = a.need("vdev");
  if (!xbd::sim::vdev_to_devid(d.vdev))
    throw usage_error("invalid or unsupported virtual disk identifier '" + d.vdev + "'");
  d.cdrom = a.flag("cdrom");
  if (auto t = a.get("target"))
    d.target = *t;
  else if (!d.cdrom)
    throw usage_error("missing required option --target (only a cdrom may be empty)");
  if (auto m = a.get("mode")) {
    if (*m == "w" || *m == "rw")
      d.writable = true;
    else if (*m == "r" || *m == "ro")
      d.writable = false;
    else
      throw usage_error("bad --mode '" + *m + "' (want r or w)");
    if (d.cdrom && d.writable) throw usage_error("a cdrom is always read-only (xl forces mode r)");
  }
  if (auto f = a.get("format")) {
    using xbd::sim::disk_format;
    if (*f == "raw")
      d.format = disk_format::raw;
    else if (*f == "qcow")
      d.format = disk_format::qcow;
    else if (*f == "qcow2")
      d.format = disk_format::qcow2;
    else if (*f == "vhd")
      d.format = disk_format::vhd;
    else if (*f == "qed")
      d.format = disk_format::qed;
    else
      throw usage_error("bad --format '" + *f + "' (want raw, qcow, qcow2, vhd or qed)");
  }
  d.direct_io_safe = a.flag("direct-io-safe");
  d.removable = a.flag("removable");
  d.trusted = !a.flag("untrusted");
  if (auto v = a.get("discard-enable")) {
    if (*v == "1")
      d.discard_enable = true;
    else if (*v == "0")
      d.discard_enable = false;
    else
      throw usage_error("bad --discard-enable '" + *v + "' (want 0 or 1)");
  }
  if (auto t = a.get("type")) {
    if (t->empty() || t->find('/') != std::string::npos) throw usage_error("bad --type '" + *t + "'");
    d.backend_type = *t;
  }
  if (auto b = a.get("backend-domid")) d.backend_domid = static_cast<unsigned>(parse_uint("backend-domid", *b, 0x7FEF));
  if (auto p = a.get("protocol")) d.pv_protocol = *p;
  xbd::sim::toolstack ts;
  std::cout << ts.add_disk(d) << '\n';
  return 0;
}

int cmd_remove_disk(int argc, char** argv) {
  args a(argc, argv, 2, {"domid", "devid", "vdev", "timeout"}, {"safe", "force"});
  a.no_positional();
  unsigned domid = parse_domid(a);
  std::uint32_t devid = parse_device(a);
  xbd::sim::remove_options opts;
  if (auto v = a.get("timeout")) opts.timeout = parse_seconds("timeout", *v);
  if (a.flag("safe") && a.flag("force")) throw usage_error("--safe and --force exclude each other");
  if (a.flag("safe")) opts.mode = xbd::sim::remove_mode::safe;
  if (a.flag("force")) opts.mode = xbd::sim::remove_mode::destroy;
  xbd::sim::toolstack ts;
  auto r = ts.remove_disk(domid, devid, opts);
  if (r.backend_missing) std::cerr << "toolstack-sim: backend already removed, cleaned up frontend only\n";
  if (r.forced && opts.mode == xbd::sim::remove_mode::remove)
    std::cerr << "toolstack-sim: backend did not reach Closed in time; forced removal"
              << (r.closed ? " (then it closed)" : "") << '\n';
  if (!r.ok()) {
    std::cerr << "toolstack-sim: " << r.error << '\n';
    std::cerr << "toolstack-sim: nodes " << (r.nodes_removed ? "removed" : "left in place") << '\n';
    return 1;
  }
  return 0;
}

int cmd_wait_backend_state(int argc, char** argv) {
  args a(argc, argv, 2, {"domid", "devid", "vdev", "state", "timeout"}, {});
  a.no_positional();
  unsigned domid = parse_domid(a);
  std::uint32_t devid = parse_device(a);
  int state = static_cast<int>(parse_uint("state", a.need("state"), 6));
  auto timeout = std::chrono::milliseconds(10000);
  if (auto v = a.get("timeout")) timeout = parse_seconds("timeout", *v);
  xbd::sim::toolstack ts;
  if (ts.wait_backend_state(domid, devid, state, timeout)) return 0;
  std::cerr << "toolstack-sim: backend of vbd " << devid << " of domain " << domid << " did not reach state " << state
            << '\n';
  return 1;
}

std::atomic<bool> devd_stop{false};

int cmd_devd(int argc, char** argv) {
  args a(argc, argv, 2, {"device-model", "log-dir", "spawn-timeout", "for"}, {});
  a.no_positional();
  xbd::sim::devd_options o;
  if (auto v = a.get("device-model")) o.device_model = *v;
  if (auto v = a.get("log-dir")) o.log_dir = *v;
  if (auto v = a.get("spawn-timeout")) o.spawn_timeout = parse_seconds("spawn-timeout", *v);
  const auto limit = parse_seconds("for", a.get("for").value_or("3600"));
  // A test that dies takes its devd with it.
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);
  struct sigaction sa {};
  sa.sa_handler = [](int) { devd_stop = true; };
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
  std::thread timer([limit] {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!devd_stop && std::chrono::steady_clock::now() < end)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    devd_stop = true;
  });
  try {
    xbd::sim::run_devd(o, devd_stop);
  } catch (...) {
    devd_stop = true;
    timer.join();
    throw;
  }
  timer.join();
  return 0;
}

int cmd_devid(int argc, char** argv) {
  if (argc < 3) throw usage_error("devid needs at least one vdev name");
  int rc = 0;
  for (int i = 2; i < argc; ++i) {
    if (auto d = xbd::sim::vdev_to_devid(argv[i])) {
      std::cout << *d << '\n';
    } else {
      std::cerr << "toolstack-sim: invalid or unsupported virtual disk identifier '" << argv[i] << "'\n";
      rc = 1;
    }
  }
  return rc;
}

int cmd_init_dom0(int argc, char** argv) {
  args a(argc, argv, 2, {}, {});
  a.no_positional();
  xbd::sim::toolstack ts;
  ts.init_dom0();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << usage_text;
    return 2;
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "-h" || cmd == "--help" || cmd == "help") {
      std::cout << usage_text;
      return 0;
    }
    if (cmd == "create-domain") return cmd_create_domain(argc, argv);
    if (cmd == "destroy-domain") return cmd_destroy_domain(argc, argv);
    if (cmd == "add-disk") return cmd_add_disk(argc, argv);
    if (cmd == "remove-disk") return cmd_remove_disk(argc, argv);
    if (cmd == "wait-backend-state") return cmd_wait_backend_state(argc, argv);
    if (cmd == "devd") return cmd_devd(argc, argv);
    if (cmd == "devid") return cmd_devid(argc, argv);
    if (cmd == "init-dom0") return cmd_init_dom0(argc, argv);
    throw usage_error("unknown command '" + cmd + "'");
  } catch (const usage_error& e) {
    std::cerr << "toolstack-sim: " << e.what() << "\n(see toolstack-sim --help)\n";
    return 2;
  } catch (const toolstack_error& e) {
    std::cerr << "toolstack-sim: " << e.what() << '\n';
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "toolstack-sim: " << e.what() << '\n';
    return 1;
  }
}
