// xen-blkbackd: the daemon. Glue only: command line, configuration,
// logging, signals and threads; the protocol lives in blkback/.
#include "app/logging.hpp"
#include "app/service.hpp"
#include "asio_xen/xenstore.hpp"
#include "blkback/config.hpp"
#include "blkback/control/backend.hpp"
#include "blkback/control/commands.hpp"
#include "blkback/control/control_socket.hpp"
#include "blkback/control/home.hpp"
#include "blkback/data/fault.hpp"
#include "blkback/log.hpp"
#include "blkback/storage/image_server.hpp"
#include "blkback/storage/rbd.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <variant>
#include <vector>

namespace asio = boost::asio;
using namespace xbd;

namespace {

constexpr const char* version = "0.1.0";
constexpr const char* default_config = "/etc/xen-blkbackd.toml";

struct options {
  std::string config = default_config;
  bool config_given = false;
  bool foreground = false;
  bool check_config = false;
  std::optional<blkback::severity> log_level;
};

void usage(std::ostream& os) {
  os << "usage: xen-blkbackd [--config FILE] [--foreground] [--log-level LEVEL] [--check-config] [--version]\n"
        "  --config FILE     settings (default "
     << default_config
     << "; a missing default file means defaults)\n"
        "  --foreground      stay attached to the terminal (as under systemd)\n"
        "  --log-level L     trace, debug, info, warning or error (overrides the file)\n"
        "  --check-config    read the configuration, print it, and exit\n"
        "  --version         print the version and exit\n";
}

// Exit status 2 for usage errors, as getopt-style tools do.
std::optional<options> parse_args(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* name) -> std::optional<std::string> {
      if (i + 1 >= argc) {
        std::cerr << "xen-blkbackd: " << name << " needs a value\n";
        return std::nullopt;
      }
      return std::string(argv[++i]);
    };
    if (a == "--config") {
      auto v = value("--config");
      if (!v) return std::nullopt;
      o.config = *v;
      o.config_given = true;
    } else if (a == "--foreground") {
      o.foreground = true;
    } else if (a == "--check-config") {
      o.check_config = true;
    } else if (a == "--log-level") {
      auto v = value("--log-level");
      if (!v) return std::nullopt;
      blkback::severity s;
      if (!blkback::parse_severity(*v, s)) {
        std::cerr << "xen-blkbackd: unknown log level '" << *v << "'\n";
        return std::nullopt;
      }
      o.log_level = s;
    } else if (a == "--version") {
      std::cout << "xen-blkbackd " << version << "\n";
      std::exit(0);
    } else if (a == "--help" || a == "-h") {
      usage(std::cout);
      std::exit(0);
    } else {
      std::cerr << "xen-blkbackd: unknown argument '" << a << "'\n";
      usage(std::cerr);
      return std::nullopt;
    }
  }
  return o;
}

blkback::settings load(const options& o) {
  // The packaged default file is optional; a file named on the command line
  // is not.
  if (!o.config_given && ::access(o.config.c_str(), F_OK) != 0) return blkback::settings{};
  return blkback::load_settings(o.config);
}

// Every in-flight request slot has its own dup of the backing descriptor
// (docs/architecture.md), so a busy host needs far more descriptors than the default soft
// limit of 1024.
void raise_fd_limit(blkback::logger& lg) {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &rl) != 0)
      XBD_LOG(lg, warning) << "cannot raise the descriptor limit: " << std::strerror(errno);
  }
}

void daemonize() {
  if (pid_t p = ::fork(); p < 0) {
    std::perror("xen-blkbackd: fork");
    std::exit(1);
  } else if (p > 0) {
    std::_Exit(0);
  }
  ::setsid();
  if (pid_t p = ::fork(); p > 0) std::_Exit(0);
  (void)!::chdir("/");
  int null = ::open("/dev/null", O_RDWR);
  if (null >= 0) {
    ::dup2(null, 0);
    ::dup2(null, 1);
    ::close(null);
  }
}

const sigset_t& handled_signals() {
  static const sigset_t set = [] {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGTERM);
    sigaddset(&s, SIGINT);
    sigaddset(&s, SIGHUP);
    return s;
  }();
  return set;
}

struct worker_thread {
  asio::io_context ioc{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> guard;
  std::shared_ptr<blkback::aux_ring> aux;
  std::thread thread;
  std::atomic<bool> done{false};
};

// The checks of blkback/control/home.hpp, before anything is served: false
// (logged) when this daemon must not start.
bool take_home(asio_xen::xenstore& xs, const blkback::settings& cfg, unsigned domid, blkback::logger& lg) {
  if (auto why = blkback::check_home(xs, domid, cfg)) {
    XBD_LOG(lg, error) << "cannot serve as domain " << domid << ": " << *why;
    return false;
  }
  auto claim = blkback::claim_home(xs, domid);
  if (!claim.holder.empty())
    XBD_LOG(lg, error) << "another xen-blkbackd (pid " << claim.holder << ") already serves domain " << domid
                       << "'s vbds; leaving them to it and exiting";
  else if (!claim.taken)
    XBD_LOG(lg, error) << "cannot claim domain " << domid << " for this daemon: " << claim.error;
  return claim.taken;
}

// Runs the backend on the control thread; `done` when it has finished.
void start_backend(asio::io_context& control, blkback::backend& be, std::function<void()> done) {
  asio::co_spawn(control, be.run(), [done = std::move(done)](std::exception_ptr e) {
    if (e) {
      blkback::logger lg;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& x) {
        XBD_LOG(lg, error) << "internal error: " << x.what();
      }
    }
    done();
  });
}

}  // namespace

int run(int argc, char** argv);

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "xen-blkbackd: internal error: " << e.what() << "\n";
  } catch (...) {
    std::cerr << "xen-blkbackd: internal error\n";
  }
  return 1;
}

int run(int argc, char** argv) {
  auto opts = parse_args(argc, argv);
  if (!opts) return 2;
  // Before any thread exists, so that every thread inherits the mask.
  ::pthread_sigmask(SIG_BLOCK, &handled_signals(), nullptr);
  // A peer that goes away (journald restarting, xenstored) must not kill us.
  ::signal(SIGPIPE, SIG_IGN);

  blkback::settings cfg;
  try {
    cfg = load(*opts);
  } catch (const std::exception& e) {
    std::cerr << "xen-blkbackd: " << e.what() << "\n";
    return 1;
  }
  if (opts->log_level) cfg.log.level = *opts->log_level;
  if (opts->check_config) {
    std::cout << blkback::describe(cfg) << "\n";
    // Image formats other than raw need it; everything else works without.
    std::cout << "image formats: " << blkback::storage::describe_image_server_program(cfg.images.program) << "\n";
    return 0;
  }

  try {
    app::setup_logging(cfg.log);
  } catch (const std::exception& e) {
    std::cerr << "xen-blkbackd: cannot set up logging: " << e.what() << "\n";
    return 1;
  }
  blkback::logger lg;
  if (!opts->foreground) daemonize();
  raise_fd_limit(lg);
  if (!blkback::fault::arm_from_environment()) return 2;
  if (cfg.journal) {
    // Private: the journals hold guests' requests.
    std::error_code ec;
    std::filesystem::create_directories(cfg.journal_directory, ec);
    if (!ec) std::filesystem::permissions(cfg.journal_directory, std::filesystem::perms::owner_all, ec);
    if (ec) {
      XBD_LOG(lg, error) << "cannot use the journal directory " << cfg.journal_directory << ": " << ec.message();
      return 1;
    }
  }

  asio::io_context control(1);
  auto driver = asio_xen::open_libxenstore();
  if (!driver) {
    XBD_LOG(lg, error) << "cannot connect to xenstore: " << driver.error().what();
    return 1;
  }
  asio_xen::xenstore xs(control.get_executor(), std::move(*driver));
  const unsigned own_domid = blkback::resolve_own_domid(xs, cfg, lg);
  if (!take_home(xs, cfg, own_domid, lg)) return 1;
  // Once the domain is ours: a second daemon is refused above, naming the
  // first; the socket's own check covers a daemon of another domain.
  std::optional<blkback::control_listener> listener;
  if (!cfg.control.socket.empty()) {
    auto l = blkback::bind_control_socket(cfg.control.socket);
    if (auto* problem = std::get_if<std::string>(&l)) {
      XBD_LOG(lg, error) << "control socket " << cfg.control.socket << ": " << *problem;
      blkback::release_home(xs, own_domid);
      return 1;
    }
    listener = std::get<blkback::control_listener>(std::move(l));
  }

  const unsigned threads = cfg.worker_threads ? cfg.worker_threads : std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::unique_ptr<worker_thread>> workers;
  for (unsigned i = 0; i < threads; ++i) {
    auto w = std::make_unique<worker_thread>();
    w->guard.emplace(w->ioc.get_executor());
    auto aux = blkback::aux_ring::create(w->ioc.get_executor());
    if (!aux) {
      XBD_LOG(lg, error) << "cannot create an io_uring: " << aux.error().what();
      return 1;
    }
    w->aux = *aux;
    workers.push_back(std::move(w));
  }
  for (auto& w : workers)
    w->thread = std::thread([w = w.get()] {
      w->ioc.run();
      w->done = true;
    });

  std::atomic<unsigned> next{0};
  blkback::vbd_context ctx{xs, blkback::xen_platform::real(), cfg, own_domid, 1, {}, {}, {}, {}};
  ctx.throttle_groups = std::make_shared<blkback::throttle_registry>();
  // One queue per worker thread is what multi-queue can use.
  ctx.max_queues = cfg.max_queues ? cfg.max_queues : threads;
  ctx.memory = std::make_shared<blkback::memory_budget>(cfg.buffer_memory);
  // CPU fairness (blkback/data/fair_share.hpp): one vbd may run 2 MiB of
  // cost ahead of another that competes, about a millisecond of copying; a
  // vbd competes for 2 ms after each request it starts, far longer than a
  // busy frontend takes to answer its responses with new requests.
  ctx.fair = std::make_shared<blkback::fair_share>(std::uint64_t{2} << 20, std::chrono::milliseconds(2));
  ctx.pick_worker = [&]() {
    auto& w = *workers[next++ % workers.size()];
    return blkback::worker{w.ioc.get_executor(), w.aux};
  };
  XBD_LOG(lg, info) << "xen-blkbackd " << version << " starting as domain " << ctx.own_domid << ", " << threads
                    << " worker thread(s); " << blkback::describe(cfg);

  blkback::backend be(ctx);
  const blkback::control_context commands{
      [&] { return be.reports(); }, app::log_level,
      [&](blkback::severity s) {
        app::set_log_level(s);
        XBD_LOG(lg, info) << "log level " << s << " (control socket)";
      },
      [&](const blkback::vbd_report& v, const std::optional<blkback::throttle_settings>& change) {
        auto a = be.limits({v.type, v.domid, v.devid}, change);
        return blkback::control_context::limits_answer{std::move(a.json), std::move(a.error)};
      }};
  std::optional<blkback::control_socket> ctl;
  if (listener) {
    ctl.emplace(control.get_executor(), std::move(*listener), blkback::control_bounds{},
                [&](std::string_view line) { return blkback::answer_request(commands, line); });
    ctl->start();
  }
  app::service svc;
  be.on_ready = [&](std::size_t n) {
    XBD_LOG(lg, info) << "ready: " << n << " device(s) picked up";
    svc.ready("serving " + std::to_string(n) + " vbd(s)");
  };
  be.on_count = [&](std::size_t n) { svc.status("serving " + std::to_string(n) + " vbd(s)"); };
  if (const auto interval = app::service::watchdog_interval(); interval.count() > 0) {
    std::vector<std::shared_ptr<app::service::worker_beat>> beats;
    for (auto& w : workers) {
      beats.push_back(std::make_shared<app::service::worker_beat>());
      beats.back()->ex = w->ioc.get_executor();
    }
    asio::co_spawn(control, svc.watchdog(std::move(beats), interval), asio::detached);
  }
  // Signals arrive through a signalfd on the control thread: they are
  // blocked in every thread (see main's start), so none interrupts a worker
  // or libxenstore's reader thread, and none is lost between waits.
  asio::posix::stream_descriptor signals(control, ::signalfd(-1, &handled_signals(), SFD_CLOEXEC | SFD_NONBLOCK));
  std::function<void()> arm = [&] {
    signals.async_wait(asio::posix::descriptor_base::wait_read, [&](const boost::system::error_code& ec) {
      if (ec) return;
      signalfd_siginfo info{};
      while (::read(signals.native_handle(), &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
        const int sig = static_cast<int>(info.ssi_signo);
        if (sig == SIGHUP) {
          try {
            auto fresh = load(*opts);
            if (opts->log_level) fresh.log.level = *opts->log_level;
            app::reload_logging(fresh.log);
            XBD_LOG(lg, info) << "SIGHUP: logging settings reloaded; checking backing sizes";
            be.check_sizes();
          } catch (const std::exception& e) {
            XBD_LOG(lg, error) << "SIGHUP: keeping the running settings: " << e.what();
          }
        } else {
          XBD_LOG(lg, info) << (sig == SIGTERM ? "SIGTERM" : "SIGINT")
                            << ": answering requests in flight, then exiting";
          svc.stopping();
          be.shutdown();
        }
      }
      arm();
    });
  };
  arm();
  // The signal wait is left pending, not cancelled: the control context
  // stops here and never runs again (asio_xen/wakeable.hpp says why we never
  // cancel on io_uring).
  start_backend(control, be, [&] {
    if (ctl)
      ctl->stop([&] { control.stop(); });
    else
      control.stop();
  });
  control.run();

  // Let each worker finish what was posted to it (the rings' last clean-up)
  // and end by itself; one that does not within a few seconds is stopped.
  // Every vbd is gone by now: nothing is in flight on a worker's io_uring,
  // whose reaper would otherwise wait for the next completion.
  for (auto& w : workers) {
    if (w->aux) asio::post(w->ioc, [aux = w->aux] { aux->close(); });
    w->guard.reset();
  }
  for (auto& w : workers) {
    for (int i = 0; i < 500 && !w->done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (!w->done) {
      XBD_LOG(lg, warning) << "a worker thread did not finish by itself; stopping it";
      w->ioc.stop();
    }
    w->thread.join();
  }
  // Images whose close ran out of time are still being let go of by
  // librbd's threads: give them a moment, never for ever.
  const bool rbd_idle = blkback::storage::rbd_quiesce(std::chrono::seconds(5));
  if (!rbd_idle) XBD_LOG(lg, warning) << "an RBD image or cluster connection is still closing; exiting anyway";
  blkback::release_home(xs, own_domid);
  XBD_LOG(lg, info) << "exiting";
  if (!rbd_idle) {
    // librados's threads still run (and may log): the static destructors
    // that a return runs (the logging core's among them) must not run
    // under them. Our own state is released; leave now.
    std::cout.flush();
    std::cerr.flush();
    std::fflush(nullptr);
    ::_exit(0);
  }
  return 0;
}
