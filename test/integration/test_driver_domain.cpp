// The real daemon as a driver domain: an unprivileged domain (3) that libxl
// created with driver_domain=1, whose xenstore connection is that domain's
// (xbd-xenbus-sim), whose grants and event channels are that domain's
// (XENSIM_DOMID), and beside which the simulated xl devd runs with
// xen-blkbackd-dm as its device model. Guests' disks are added in dom0 with
// backend=3, as `xl create` with `backend=storage` does.
#include "test/integration/sim_env.hpp"
#include "test/sim/xenstored/guest_xenstore.hpp"

#include <doctest/doctest.h>

#include <csignal>
#include <thread>

using namespace xbd::test;
using namespace std::chrono_literals;

namespace {

constexpr unsigned storage = 3;  // the driver domain
constexpr unsigned xvda = 51712, xvdb = 51728;

std::string backend(unsigned guest, unsigned devid = xvda, unsigned dd = storage) {
  return "/local/domain/" + std::to_string(dd) + "/backend/qdisk/" + std::to_string(guest) + "/" +
         std::to_string(devid);
}
std::string frontend(unsigned guest, unsigned devid = xvda) {
  return "/local/domain/" + std::to_string(guest) + "/device/vbd/" + std::to_string(devid);
}

// A driver domain in the simulation: its home as libxl makes it, its kernel's
// xenstore device, and (optionally) its xl devd.
class driver_domain {
 public:
  driver_domain(sim_env& env, unsigned domid = storage, bool driver_domain_flag = true) : env_(env), domid_(domid) {
    xbd::sim::domain_spec spec;
    spec.domid = domid;
    spec.name = "storage" + std::to_string(domid);
    spec.driver_domain = driver_domain_flag;
    spec.introduce = [&](unsigned d) { env.xenstored().introduce_domain(d); };
    env.toolstack().create_domain(spec);
    socket_ = env.dir() / ("dom" + std::to_string(domid) + ".sock");
    bus_ = std::make_unique<process>(
        std::vector<std::string>{XBD_XENBUS_SIM_BIN, env.dir().string(), std::to_string(domid), socket_.string()},
        std::vector<std::string>{}, env.dir() / ("xenbus-" + std::to_string(domid) + ".log"));
    REQUIRE(eventually([&] { return bus_->output().find("xbd-xenbus-sim: domain") != std::string::npos; }));
  }

  // xl devd ends the device models it started when asked to stop (a
  // SIGKILL from the process's destructor would leave them to end by
  // themselves).
  ~driver_domain() {
    if (devd_ && devd_->running()) {
      devd_->resume();  // if a failed check left it paused
      devd_->signal(SIGTERM);
      (void)devd_->wait(10s);
    }
  }
  driver_domain(const driver_domain&) = delete;
  driver_domain& operator=(const driver_domain&) = delete;

  // What a process needs to run in this domain.
  std::vector<std::string> env() const {
    return {"XENSTORED_PATH=" + socket_.string(), "XENSIM_DOMID=" + std::to_string(domid_)};
  }

  // xl devd, with xen-blkbackd-dm as libxl's device model.
  void start_devd() {
    devd_ = std::make_unique<process>(std::vector<std::string>{XBD_TOOLSTACK_SIM_BIN, "devd", "--device-model",
                                                               XBD_DM_BIN, "--log-dir", env_.dir().string()},
                                      env(), env_.dir() / "devd.log");
    REQUIRE(eventually([&] { return devd_->output().find("devd: watching") != std::string::npos; }));
  }
  std::string devd_log() const { return devd_ ? devd_->output() : std::string(); }
  bool devd_shows(const std::string& text, std::chrono::milliseconds limit = 10s) const {
    return eventually([&] { return devd_log().find(text) != std::string::npos; }, limit);
  }

  void start_daemon() { env_.start_daemon({}, env()); }

  // `xl block-detach` (safe remove) of a guest's disk served here. libxl
  // reads the backend state only after a watch event, and xl devd removes
  // the directory as soon as it reads Closed with online 0: when devd wins
  // (a loaded machine), libxl finds the node gone and fails, real libxl as
  // well. Holding devd until libxl has read Closed gives the order libxl
  // counts on, and leaves it to the daemon alone to reach Closed.
  xbd::sim::remove_result block_detach(unsigned guest, unsigned devid) {
    REQUIRE(devd_);
    REQUIRE(devd_->pause());
    xbd::sim::remove_options o{10s, xbd::sim::remove_mode::safe};
    o.on_closed = [&] { devd_->resume(); };
    auto r = env_.toolstack().remove_disk(guest, devid, o);
    devd_->resume();  // also when the wait failed
    return r;
  }

  // A disk of `guest` served here: `xl block-attach guest 'backend=storage, ...'`.
  void add_disk(unsigned guest, const std::filesystem::path& image, const std::string& vdev = "xvda") {
    xbd::sim::disk_spec d;
    d.domid = guest;
    d.vdev = vdev;
    d.target = image;
    d.backend_domid = domid_;
    env_.toolstack().add_disk(d);
  }

 private:
  sim_env& env_;
  unsigned domid_;
  std::filesystem::path socket_;
  std::unique_ptr<process> bus_;
  std::unique_ptr<process> devd_;
};

bool both_connected(sim_env& env, unsigned guest, unsigned devid = xvda) {
  return eventually([&] {
    return env.read(backend(guest, devid) + "/state") == xenbus::connected &&
           env.read(frontend(guest, devid) + "/state") == xenbus::connected;
  });
}

void check_clean(const std::string& output) {
  INFO(output);
  CHECK(output.find("\"ok\":true") != std::string::npos);
  CHECK(output.find("\"mismatches\":0") != std::string::npos);
}

std::vector<std::string> verified(unsigned devid, const std::string& seconds) {
  return {"--devid",  std::to_string(devid), "--rw", "randrw", "--qd", "16", "--runtime", seconds,
          "--verify", "--timeout",           "60"};
}

// Guests 5 and 6 with a disk each in the driver domain, and its daemon.
struct two_guests {
  sim_env env;
  driver_domain dd{env};
  two_guests() {
    dd.start_devd();
    env.create_guest(5);
    env.create_guest(6);
    dd.add_disk(5, env.make_image("a.img", 32 << 20));
    dd.add_disk(6, env.make_image("b.img", 32 << 20));
    dd.start_daemon();
  }
};

}  // namespace

TEST_CASE("a driver domain serves two guests their verified I/O, under libxl's permissions") {
  two_guests t;
  auto& env = t.env;
  auto a = env.start_frontend(5, verified(xvda, "2"), "a");
  auto b = env.start_frontend(6, verified(xvda, "2"), "b");
  REQUIRE(a->wait(60s) == 0);
  REQUIRE(b->wait(60s) == 0);
  check_clean(a->output());
  check_clean(b->output());
  CHECK(a->output().find("\"backend_id\":3") != std::string::npos);
  CHECK(env.log_shows("starting as domain 3"));
  CHECK(env.log_shows("serving /local/domain/3/backend/{qdisk}"));
  CHECK_FALSE(env.read("/local/domain/0/backend").has_value());
  // What the daemon wrote inherits the directory's permissions: the driver
  // domain owns it, the guest may read it, dom0 is privileged.
  auto& xs = env.toolstack().xs();
  CHECK(xs.perms_string(backend(5)) == "n3,r5");
  CHECK(xs.perms_string(backend(5) + "/feature-persistent") == "n3,r5");
  CHECK(xs.perms_string(backend(5) + "/hotplug-status") == "n3,r5");
  xbd::sim::guest_xenstore guest(env.dir(), 5);
  CHECK(guest.read(backend(5) + "/sectors").value() == std::to_string((32 << 20) / 512));
  CHECK(guest.write(backend(5) + "/sectors", "1") == std::errc::permission_denied);
  CHECK(guest.read(backend(6) + "/sectors") == std::errc::permission_denied);
  // xl devd's device model for each guest, in the driver domain's own tree.
  CHECK(env.read("/local/domain/3/device-model/5/state") == "running");
  CHECK(env.read("/local/domain/3/device-model/6/state") == "running");
}

TEST_CASE("dom0 unplugs a driver domain's disks, idle and connected: the daemon closes, xl devd removes") {
  sim_env env;
  driver_domain dd(env);
  dd.start_devd();
  env.create_guest(5);
  dd.add_disk(5, env.make_image("a.img", 8 << 20), "xvda");
  dd.add_disk(5, env.make_image("b.img", 8 << 20), "xvdb");
  dd.start_daemon();
  auto fe = env.start_frontend(5, {"--devid", std::to_string(xvdb), "--rw", "none", "--hold", "0"}, "hold");
  REQUIRE(both_connected(env, 5, xvdb));
  REQUIRE(eventually([&] { return env.read(backend(5, xvda) + "/state") == xenbus::init_wait; }));
  // xl devd has taken up both disks. It reads state and online when it
  // handles an event, not when the event fired: events still queued behind
  // its spawn for xvda would read as the unplug, and xvda removed while it
  // counted one disk of the guest would end the guest's device model.
  REQUIRE(dd.devd_shows("added " + backend(5, xvdb)));

  auto idle = dd.block_detach(5, xvda);
  CHECK_MESSAGE(idle.ok(), idle.error);
  CHECK(idle.closed);
  CHECK_FALSE(env.read(backend(5, xvda)).has_value());
  CHECK(dd.devd_shows("removed " + backend(5, xvda)));
  CHECK(env.read("/local/domain/3/device-model/5/state") == "running");  // xvdb still needs it

  auto connected = dd.block_detach(5, xvdb);
  CHECK_MESSAGE(connected.ok(), connected.error);
  CHECK(fe->wait(10s) == 0);
  CHECK_FALSE(env.read(backend(5, xvdb)).has_value());
  CHECK(env.log_shows("[d5/51728 xvdb] unplugged by the toolstack"));
  // The last qdisk of the guest took its device model with it.
  CHECK(dd.devd_shows("device model of domain 5"));
  CHECK_FALSE(env.read("/local/domain/3/device-model/5").has_value());
  // A new disk for the guest is served again.
  dd.add_disk(5, env.dir() / "a.img", "xvda");
  check_clean(
      env.run_frontend(5, {"--devid", std::to_string(xvda), "--rw", "randrw", "--ios", "300", "--verify"}).output);
}

TEST_CASE("a guest that dies under its driver-domain disk is let go of, and the other guest is unaffected") {
  two_guests t;
  auto& env = t.env;
  auto b = env.start_frontend(6, verified(xvda, "4"), "b");
  auto a = env.start_frontend(5, {"--devid", std::to_string(xvda), "--rw", "none", "--hold", "0"}, "dying");
  REQUIRE(both_connected(env, 5));
  a->signal(SIGKILL);  // the guest stops dead
  (void)a->wait(5s);
  SUBCASE("xl destroy: libxl writes Closed over the backend after 2 s and waits for the directory to go") {
    const auto start = std::chrono::steady_clock::now();
    xbd::sim::destroy_options opts;
    opts.on_destroyed = [&](unsigned d) { env.xenstored().kill_domain(d); };
    auto r = env.toolstack().destroy_domain(5, opts);
    const auto took = std::chrono::steady_clock::now() - start;
    const std::string first_error = r.errors.empty() ? std::string() : r.errors.front();
    INFO(first_error);
    CHECK(r.ok());
    CHECK(took < 6s);  // not libxl's 10 s wait for a directory nobody removes
    CHECK(env.log_shows("[d5/51712 xvda] the toolstack wrote Closed over our state Connected"));
  }
  SUBCASE("the guest crashes: xenstored drops its nodes, which a driver domain reads as EACCES") {
    env.xenstored().kill_domain(5);
    CHECK(env.log_shows("[d5/51712 xvda] frontend gone"));
    CHECK(env.toolstack().destroy_domain(5).ok());
  }
  CHECK(env.log_shows("[d5/51712 xvda] removed the backend directory"));
  CHECK(env.log_shows("[d5/51712 xvda] disconnected after"));
  CHECK_FALSE(env.read(backend(5)).has_value());
  // Its device model saw no disk left and ended by itself.
  CHECK(t.dd.devd_shows("device model of domain 5"));
  REQUIRE(b->wait(60s) == 0);
  check_clean(b->output());
  CHECK(env.daemon().running());
}

TEST_CASE("the driver domain's daemon restarted under a connected guest re-attaches and the guest notices nothing") {
  two_guests t;
  auto& env = t.env;
  auto fe = env.start_frontend(5, verified(xvda, "4"), "long");
  REQUIRE(both_connected(env, 5));
  std::this_thread::sleep_for(700ms);
  const auto first = std::to_string(env.daemon().pid());
  CHECK(env.read("/local/domain/3/data/xen-blkbackd").value_or("").starts_with(first + " "));
  CHECK(env.stop_daemon() == 0);
  CHECK_FALSE(env.read("/local/domain/3/data/xen-blkbackd").has_value());  // given up at a clean exit
  CHECK(env.read(backend(5) + "/state") == xenbus::connected);
  t.dd.start_daemon();
  CHECK(env.log_shows("[d5/51712 xvda] re-attached"));
  REQUIRE(fe->wait(90s) == 0);
  check_clean(fe->output());
  CHECK(fe->output().find("\"protocol\":0") != std::string::npos);
  CHECK(
      env.read("/local/domain/3/data/xen-blkbackd").value_or("").starts_with(std::to_string(env.daemon().pid()) + " "));
}

TEST_CASE("a second daemon in the driver domain says so and exits, the first keeps its vbds") {
  two_guests t;
  auto& env = t.env;
  auto fe = env.start_frontend(5, verified(xvda, "3"), "a");
  REQUIRE(both_connected(env, 5));
  std::vector<std::string> env2 = t.dd.env();
  env2.push_back("LD_LIBRARY_PATH=" XENSIM_LIBDIR_PATH);
  process second({XBD_DAEMON_BIN, "--config", env.config_path().string(), "--foreground"}, env2,
                 env.dir() / "second-daemon.log");
  CHECK(second.wait(30s) == 1);
  CHECK(second.output().find("another xen-blkbackd (pid " + std::to_string(env.daemon().pid()) +
                             ") already serves domain 3's vbds") != std::string::npos);
  REQUIRE(fe->wait(60s) == 0);
  check_clean(fe->output());
  check_clean(
      env.run_frontend(6, {"--devid", std::to_string(xvda), "--rw", "randrw", "--ios", "300", "--verify"}).output);
  CHECK(env.daemon().running());
}

TEST_CASE("a daemon that cannot serve its domain is refused at start-up, naming the cause") {
  SUBCASE("a driver domain created without driver_domain=1") {
    sim_env env;
    driver_domain dd(env, 4, /*driver_domain_flag*/ false);
    env.create_guest(5);
    dd.add_disk(5, env.make_image("a.img", 8 << 20));
    dd.start_daemon();
    CHECK(env.daemon().wait(30s) == 1);
    CHECK(
        env.log_shows("cannot serve as domain 4: /local/domain/4/device-model is missing: is driver_domain=1 set "
                      "in this domain's xl config?"));
    CHECK(env.read(backend(5, xvda, 4) + "/state") == xenbus::initialising);  // untouched
  }
  SUBCASE("a driver domain's daemon configured as dom0") {
    sim_env env("[backend]\ndomid = 0\n");
    driver_domain dd(env);
    dd.start_daemon();
    CHECK(env.daemon().wait(30s) == 1);
    CHECK(
        env.log_shows("cannot serve as domain 0: cannot read /local/domain/0/backend/qdisk (Permission denied): "
                      "this daemon's xenstore connection is not domain 0's"));
  }
}

TEST_CASE("a guest's disk in a domain that runs no daemon: every wait in dom0 ends") {
  sim_env env;
  driver_domain dd(env);  // neither xl devd nor a daemon
  env.create_guest(5);
  dd.add_disk(5, env.make_image("a.img", 8 << 20));
  auto r = env.run_frontend(5, {"--devid", std::to_string(xvda), "--rw", "read", "--ios", "10", "--timeout", "2"}, 30s);
  CHECK(r.status != 0);
  const auto start = std::chrono::steady_clock::now();
  auto res = env.toolstack().remove_disk(5, xvda, {1s, xbd::sim::remove_mode::remove});
  CHECK(std::chrono::steady_clock::now() - start < 5s);
  CHECK(res.timed_out);
  CHECK(res.nodes_removed);  // libxl_device_disk_remove gives up and cleans up its part
  CHECK_FALSE(env.read(frontend(5)).has_value());
  CHECK(env.read(backend(5) + "/state") == xenbus::closing);  // the driver domain's part stays
  const auto before_destroy = std::chrono::steady_clock::now();
  xbd::sim::destroy_options quick;
  quick.destroy_timeout = 1s;
  (void)env.toolstack().destroy_domain(5, quick);
  CHECK(std::chrono::steady_clock::now() - before_destroy < 5s);
}
