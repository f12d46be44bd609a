// The vbd state machine against the fakes: each transition of docs/protocol.md's state machine.
#include "asio_xen/ring.hpp"
#include "blkback/control/vbd.hpp"
#include "blkback/storage/local.hpp"
#include "test/fakes/fake_evtchn.hpp"
#include "test/fakes/fake_gnttab.hpp"
#include "test/fakes/fake_xenstore.hpp"
#include "test/support/front_ring.hpp"
#include "test/unit/run.hpp"

#include <doctest/doctest.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <filesystem>
#include <fstream>

#include <fcntl.h>
#include <unistd.h>
#include <functional>
#include <thread>

using namespace xbd;
using namespace xbd::blkback;
namespace asio = boost::asio;
namespace bb = xbd::blkback;  // bb::xenbus_state: xenbus.h has a C enum of that name

namespace {

constexpr unsigned guest = 5;
const std::string be = "/local/domain/0/backend/qdisk/5/51712";
const std::string fe = "/local/domain/5/device/vbd/51712";

struct image {
  std::string path;
  explicit image(std::uint64_t size = 1 << 20) {
    char tmpl[] = "/tmp/xbd-vbd-XXXXXX";
    int fd = ::mkstemp(tmpl);
    path = tmpl;
    (void)!::ftruncate(fd, static_cast<off_t>(size));
    ::close(fd);
  }
  ~image() { ::unlink(path.c_str()); }
};

// Each rig's own directory for the in-flight journal.
struct journal_dir {
  std::string path;
  journal_dir() {
    char tmpl[] = "/tmp/xbd-vbd-journal-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~journal_dir() { std::filesystem::remove_all(path); }
  settings with(settings s) const {
    s.journal_directory = path;
    return s;
  }
};

struct rig {
  journal_dir jdir;
  asio::io_context ioc;
  fakes::fake_xenstore db;
  fakes::fake_evtchn_bus bus;
  fakes::fake_grant_tables tables;
  fakes::fake_guest& mem = tables.add_guest(guest, 32);
  image img;
  asio_xen::xenstore xs{ioc.get_executor(), db.connect(0)};
  std::shared_ptr<aux_ring> aux = *aux_ring::create(ioc.get_executor());
  vbd_context ctx{
      xs,
      xen_platform{[this] { return asio_xen::result<std::unique_ptr<asio_xen::evtchn_driver>>(bus.open(0)); },
                   [this] { return asio_xen::result<std::unique_ptr<asio_xen::gnttab_driver>>(tables.open(0)); }},
      jdir.with(settings{}),
      0,
      1,
      {},
      std::make_shared<memory_budget>(settings{}.buffer_memory),
      std::make_shared<fair_share>(std::uint64_t{1} << 20, std::chrono::milliseconds(2)),
      std::make_shared<throttle_registry>()};
  std::unique_ptr<vbd> dev;
  std::future<void> done;
  std::optional<asio_xen::event_channel> fe_port;

  rig() {
    ctx.pick_worker = [this] { return worker{ioc.get_executor(), aux}; };
    // What libxl writes (test/sim/toolstack has the full layout).
    db.write(be + "/frontend", fe);
    db.write(be + "/frontend-id", "5");
    db.write(be + "/online", "1");
    db.write(be + "/state", "1");
    db.write(be + "/params", "aio:" + img.path);
    db.write(be + "/mode", "w");
    db.write(be + "/device-type", "disk");
    db.write(be + "/dev", "xvda");
    db.write(fe + "/state", "1");
  }
  ~rig() {
    // The coroutine must be over before the vbd it runs in goes away.
    if (dev && done.valid()) {
      dev->shutdown();
      for (int i = 0; i < 2500 && !finished(); ++i) {
        ioc.restart();
        xbd::test::run_for(ioc, std::chrono::milliseconds(2));
      }
    }
  }

  void start() {
    dev = std::make_unique<vbd>(ctx, vbd_id{"qdisk", guest, 51712});
    done = asio::co_spawn(ioc, dev->run(), asio::use_future);
    // Started: it has left Initialising (or ended).
    (void)until([&] { return state() != bb::xenbus_state::initialising || finished(); });
  }
  // Runs the vbd until `pred` holds; false if it does not within `limit`
  // (a loaded machine slows the test down rather than failing it).
  bool until(const std::function<bool()>& pred, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      ioc.restart();
      if (ioc.poll() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
  }
  bool reaches(bb::xenbus_state s) {
    return until([&] { return state() == s; });
  }
  // For checks that something does NOT happen: runs until nothing has been
  // ready to run for 10 ms (bounded).
  void quiet() {
    int idle = 0;
    for (int i = 0; i < 2000 && idle < 10; ++i) {
      ioc.restart();
      if (ioc.poll() == 0) {
        ++idle;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      } else {
        idle = 0;
      }
    }
  }
  bool finished() { return done.wait_for(std::chrono::seconds(0)) == std::future_status::ready; }
  // Our state as we last wrote it (unknown when there is none).
  bb::xenbus_state state() {
    auto v = db.read(be + "/state");
    if (!v || v->size() != 1 || (*v)[0] < '0' || (*v)[0] > '8') return bb::xenbus_state::unknown;
    return static_cast<bb::xenbus_state>((*v)[0] - '0');
  }
  void set_frontend(bb::xenbus_state s) { db.write(fe + "/state", std::to_string(static_cast<unsigned>(s))); }

  // The frontend publishes a one-page ring and an event channel.
  void frontend_ready(bb::xenbus_state fe_state = bb::xenbus_state::initialised) {
    auto ref = mem.grant(0, 0);
    (void)asio_xen::front_ring<blkif_request, blkif_response>::init({mem.page(0).data(), xen::page_size});
    fe_port.emplace(*asio_xen::event_channel::bind_unbound(ioc.get_executor(), bus.open(guest), 0));
    db.write(fe + "/ring-ref", std::to_string(ref));
    db.write(fe + "/event-channel", std::to_string(fe_port->local_port()));
    db.write(fe + "/protocol", "x86_64-abi");
    set_frontend(fe_state);
    // The outcome of a connect: Connected, or Closed with a reason.
    if (dev) (void)until([&] { return state() == bb::xenbus_state::connected || state() == bb::xenbus_state::closed; });
  }
};

}  // namespace

TEST_CASE("a new vbd opens its image, publishes its features and waits in InitWait") {
  rig r;
  r.start();
  CHECK(r.state() == bb::xenbus_state::init_wait);
  CHECK(r.db.read(be + "/feature-flush-cache") == "1");
  CHECK(r.db.read(be + "/feature-persistent") == "1");  // a file can take the guest's pages
  CHECK(r.db.read(be + "/max-ring-page-order") == "4");
  CHECK(r.db.read(be + "/hotplug-status") == "connected");
  CHECK_FALSE(r.db.exists(be + "/sectors"));  // published at connect
  CHECK_FALSE(r.finished());
}

TEST_CASE("persistent grants off in the configuration: feature-persistent is 0, and a frontend asking is served") {
  rig r;
  r.ctx.cfg.persistent_grants = false;
  r.start();
  CHECK(r.db.read(be + "/feature-persistent") == "0");
  r.db.write(fe + "/feature-persistent", "1");
  r.frontend_ready();
  CHECK(r.state() == bb::xenbus_state::connected);
}

TEST_CASE("frontend Initialised: map, bind, publish the disk in one go, then Connected") {
  rig r;
  r.start();
  r.frontend_ready();
  CHECK(r.state() == bb::xenbus_state::connected);
  CHECK(r.db.read(be + "/sectors") == "2048");
  CHECK(r.db.read(be + "/info") == "0");
  CHECK(r.db.read(be + "/sector-size") == "512");
  CHECK(r.db.read(be + "/physical-sector-size").has_value());
  CHECK(r.tables.mapped_pages() == 1u);
}

TEST_CASE("frontend Closing -> Closing while still serving, Closed -> released and Closed") {
  rig r;
  r.start();
  r.frontend_ready();
  REQUIRE(r.state() == bb::xenbus_state::connected);
  r.set_frontend(bb::xenbus_state::closing);
  CHECK(r.reaches(bb::xenbus_state::closing));
  CHECK(r.tables.mapped_pages() == 1u);  // the ring stays until the frontend is Closed
  r.set_frontend(bb::xenbus_state::closed);
  CHECK(r.reaches(bb::xenbus_state::closed));
  CHECK(r.tables.mapped_pages() == 0u);
  CHECK_FALSE(r.finished());  // online: waits for the guest to come back
}

TEST_CASE("a frontend that initialises again after Closed gets InitWait and can reconnect") {
  rig r;
  r.start();
  r.frontend_ready();
  r.set_frontend(bb::xenbus_state::closed);
  REQUIRE(r.reaches(bb::xenbus_state::closed));
  r.set_frontend(bb::xenbus_state::initialising);
  CHECK(r.reaches(bb::xenbus_state::init_wait));
  r.frontend_ready(bb::xenbus_state::connected);
  CHECK(r.state() == bb::xenbus_state::connected);
}

TEST_CASE("online=0 with an idle frontend: Closed and the vbd ends") {
  rig r;
  r.start();
  r.db.write(be + "/online", "0");
  r.db.write(be + "/state", "5");  // what libxl writes
  CHECK(r.reaches(bb::xenbus_state::closed));
  CHECK(r.until([&] { return r.finished(); }));
}

TEST_CASE("online=0 while connected waits for the frontend to close, then ends") {
  rig r;
  r.start();
  r.frontend_ready();
  r.db.write(be + "/online", "0");
  r.db.write(be + "/state", "5");
  r.quiet();  // it must not end while the guest still uses the ring
  CHECK_FALSE(r.finished());
  CHECK(r.tables.mapped_pages() == 1u);
  r.set_frontend(bb::xenbus_state::closed);
  CHECK(r.reaches(bb::xenbus_state::closed));
  CHECK(r.until([&] { return r.finished(); }));
  CHECK(r.tables.mapped_pages() == 0u);
}

TEST_CASE("an unknown protocol is refused with an error node and Closed") {
  rig r;
  r.start();
  r.frontend_ready();
  r.set_frontend(bb::xenbus_state::closed);
  REQUIRE(r.reaches(bb::xenbus_state::closed));
  r.set_frontend(bb::xenbus_state::initialising);
  REQUIRE(r.reaches(bb::xenbus_state::init_wait));
  r.db.write(fe + "/protocol", "arm-abi");
  r.set_frontend(bb::xenbus_state::initialised);
  CHECK(r.reaches(bb::xenbus_state::closed));
  CHECK(r.db.read(be + "/error").has_value());
  CHECK(r.tables.mapped_pages() == 0u);
}

TEST_CASE("a ring-page-order above our maximum is refused") {
  rig r;
  r.start();
  r.db.write(fe + "/ring-page-order", "5");
  r.db.write(fe + "/event-channel", "1");
  r.set_frontend(bb::xenbus_state::initialised);
  CHECK(r.reaches(bb::xenbus_state::closed));
  CHECK(r.db.read(be + "/error").has_value());
}

TEST_CASE("a malformed ring-ref or event-channel is refused, not guessed") {
  rig r;
  r.start();
  r.db.write(fe + "/ring-ref", "12x");
  r.db.write(fe + "/event-channel", "3");
  r.set_frontend(bb::xenbus_state::initialised);
  CHECK(r.reaches(bb::xenbus_state::closed));
}

TEST_CASE("the frontend directory vanishing ends the vbd") {
  rig r;
  r.start();
  r.frontend_ready();
  auto c = r.db.connect(0);
  REQUIRE_FALSE(c->rm(asio_xen::no_transaction, "/local/domain/5"));
  CHECK(r.until([&] { return r.finished(); }));
  CHECK(r.tables.mapped_pages() == 0u);
}

TEST_CASE("the guest's death (@releaseDomain) tears the vbd down without waiting for the guest") {
  rig r;
  r.start();
  r.frontend_ready();
  r.db.kill_domain(guest);
  r.dev->check_domain();  // what the backend does on @releaseDomain
  CHECK(r.until([&] { return r.finished(); }));
  CHECK(r.state() == bb::xenbus_state::closed);
  CHECK(r.tables.mapped_pages() == 0u);
}

TEST_CASE("shutdown releases the ring but leaves xenstore as it was") {
  rig r;
  r.start();
  r.frontend_ready();
  r.dev->shutdown();
  CHECK(r.until([&] { return r.finished(); }));
  CHECK(r.state() == bb::xenbus_state::connected);
  CHECK(r.tables.mapped_pages() == 0u);
  CHECK(r.bus.bound(guest, r.fe_port->local_port()) == false);  // unbound: a new backend can bind
}

TEST_CASE("a backend found Connected at start-up re-attaches without touching xenstore") {
  rig r;
  r.start();
  r.frontend_ready();
  CHECK(r.reaches(bb::xenbus_state::connected));
  r.dev->shutdown();
  CHECK(r.until([&] { return r.finished(); }));
  // The next daemon finds it Connected, and the journal the first left.
  CHECK(std::filesystem::exists(r.jdir.path + "/qdisk-5-51712"));
  r.start();
  CHECK(r.until([&] { return r.tables.mapped_pages() == 1u; }));
  CHECK(r.state() == bb::xenbus_state::connected);
  CHECK_FALSE(r.db.exists(be + "/error"));
}

TEST_CASE("without the journal of the daemon before, a Connected backend is closed with a reason, not guessed at") {
  rig r;
  r.frontend_ready(bb::xenbus_state::connected);
  r.db.write(be + "/state", "4");
  r.db.write(be + "/sectors", "2048");
  r.start();
  CHECK(r.reaches(bb::xenbus_state::closed));
  CHECK(r.db.read(be + "/error").value_or("").find("no in-flight journal") != std::string::npos);
  CHECK(r.until([&] { return r.finished(); }));
}

TEST_CASE("with the journal turned off, a Connected backend re-attaches as after a clean stop") {
  rig r;
  r.ctx.cfg.journal = false;
  r.frontend_ready(bb::xenbus_state::connected);
  r.db.write(be + "/state", "4");
  r.db.write(be + "/sectors", "2048");
  r.start();
  CHECK(r.until([&] { return r.tables.mapped_pages() == 1u; }));
  CHECK(r.state() == bb::xenbus_state::connected);
  CHECK_FALSE(r.db.exists(be + "/hotplug-status"));  // nothing was re-published
}

TEST_CASE("a connection that ends removes its journal, a shutdown keeps it") {
  rig r;
  r.start();
  r.frontend_ready();
  CHECK(r.reaches(bb::xenbus_state::connected));
  const std::string file = r.jdir.path + "/qdisk-5-51712";
  CHECK(std::filesystem::exists(file));
  r.set_frontend(bb::xenbus_state::closing);
  CHECK(r.reaches(bb::xenbus_state::closing));
  r.set_frontend(bb::xenbus_state::closed);
  CHECK(r.until([&] { return !std::filesystem::exists(file); }));
}

TEST_CASE("bad toolstack keys close the vbd with a reason") {
  SUBCASE("a format we do not serve") {
    rig r;
    r.db.write(be + "/params", "qcow3:" + r.img.path);
    r.start();
    CHECK(r.state() == bb::xenbus_state::closed);
    CHECK(r.db.read(be + "/error").value_or("").find("params") != std::string::npos);
    CHECK(r.until([&] { return r.finished(); }));
  }
  SUBCASE("a relative path") {
    rig r;
    r.db.write(be + "/params", "raw:disk.img");
    r.start();
    CHECK(r.state() == bb::xenbus_state::closed);
  }
  SUBCASE("a missing image") {
    rig r;
    r.db.write(be + "/params", "raw:/nonexistent/xbd.img");
    r.start();
    CHECK(r.state() == bb::xenbus_state::closed);
    CHECK(r.db.read(be + "/error").value_or("").find("No such file") != std::string::npos);
  }
  SUBCASE("a frontend-id that is not the directory's domain") {
    rig r;
    r.db.write(be + "/frontend-id", "7");
    r.start();
    CHECK(r.state() == bb::xenbus_state::closed);
  }
  SUBCASE("a mode that is neither w nor r") {
    rig r;
    r.db.write(be + "/mode", "rw");
    r.start();
    CHECK(r.state() == bb::xenbus_state::closed);
  }
}

TEST_CASE("mode r and device-type cdrom are published in info") {
  rig r;
  r.db.write(be + "/device-type", "cdrom");
  r.start();
  r.frontend_ready();
  CHECK(r.db.read(be + "/info") == std::to_string(VDISK_CDROM | VDISK_READONLY));
}

TEST_CASE("direct-io-safe: only \"1\" gives permission for O_DIRECT") {
  CHECK(parse_direct_io_safe(std::string("1")) == direct_io_key::set);
  CHECK(parse_direct_io_safe(std::string("0")) == direct_io_key::unset);
  CHECK(parse_direct_io_safe(std::nullopt) == direct_io_key::absent);
  for (const char* bad : {"yes", "2", "", " 1", "01", "true"}) {
    CAPTURE(bad);
    CHECK(parse_direct_io_safe(std::string(bad)) == direct_io_key::malformed);
  }
  auto with = [](direct_io_policy p, std::optional<std::string> v) {
    return choose_open_mode(p, parse_direct_io_safe(v)).direct;
  };
  CHECK(with(direct_io_policy::follow_key, "1"));
  CHECK_FALSE(with(direct_io_policy::follow_key, "0"));
  CHECK_FALSE(with(direct_io_policy::follow_key, std::nullopt));
  CHECK_FALSE(with(direct_io_policy::follow_key, "yes"));
  CHECK_FALSE(with(direct_io_policy::follow_key, "2"));
  CHECK_FALSE(with(direct_io_policy::follow_key, ""));
  CHECK_FALSE(with(direct_io_policy::never, "1"));
  CHECK(with(direct_io_policy::always, std::nullopt));
}

namespace {

// The open flags of this process's one descriptor on `path`, from
// /proc/self/fdinfo (-1 if there is none).
int open_flags(const std::filesystem::path& path) {
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    if (std::filesystem::read_symlink(e.path(), ec) != path) continue;
    std::ifstream info("/proc/self/fdinfo/" + e.path().filename().string());
    for (std::string line; std::getline(info, line);)
      if (line.rfind("flags:", 0) == 0) return static_cast<int>(std::stoul(line.substr(6), nullptr, 8));
  }
  return -1;
}

}  // namespace

TEST_CASE("the open mode reaches the descriptor: O_DIRECT exactly when chosen") {
  image img;
  {
    auto direct = storage::open_local(img.path, {true, true});
    REQUIRE(direct.has_value());
    CHECK((open_flags(img.path) & O_DIRECT) != 0);
    CHECK((*direct)->props().direct);
  }
  {
    auto buffered = storage::open_local(img.path, {true, false});
    REQUIRE(buffered.has_value());
    CHECK((open_flags(img.path) & O_DIRECT) == 0);
    CHECK_FALSE((*buffered)->props().direct);
  }
  auto ro = storage::open_local(img.path, {false, false});
  REQUIRE(ro.has_value());
  CHECK((open_flags(img.path) & O_ACCMODE) == O_RDONLY);
  CHECK_FALSE((*ro)->props().writable);
}

TEST_CASE("multi-queue: the offer is published and a request beyond it is refused") {
  rig r;
  r.ctx.max_queues = 4;
  r.start();
  CHECK(r.db.read(be + "/multi-queue-max-queues") == "4");
  CHECK(r.db.read(be + "/feature-max-indirect-segments") == "256");
  r.db.write(fe + "/multi-queue-num-queues", "5");
  r.db.write(fe + "/ring-ref", "8");
  r.db.write(fe + "/event-channel", "1");
  r.set_frontend(bb::xenbus_state::initialised);
  CHECK(r.reaches(bb::xenbus_state::closed));
  CHECK(r.db.read(be + "/error").value_or("").find("multi-queue-num-queues 5") != std::string::npos);
}

TEST_CASE("multi-queue: two queues read their keys under queue-0 and queue-1") {
  rig r;
  r.ctx.max_queues = 2;
  r.start();
  std::vector<asio_xen::event_channel> ports;
  for (int q = 0; q < 2; ++q) {
    auto ref = r.mem.grant(q, 0);
    (void)asio_xen::front_ring<blkif_request, blkif_response>::init({r.mem.page(q).data(), xen::page_size});
    ports.push_back(*asio_xen::event_channel::bind_unbound(r.ioc.get_executor(), r.bus.open(guest), 0));
    r.db.write(fe + "/queue-" + std::to_string(q) + "/ring-ref", std::to_string(ref));
    r.db.write(fe + "/queue-" + std::to_string(q) + "/event-channel", std::to_string(ports.back().local_port()));
  }
  r.db.write(fe + "/multi-queue-num-queues", "2");
  r.set_frontend(bb::xenbus_state::initialised);
  CHECK(r.reaches(bb::xenbus_state::connected));
  CHECK(r.tables.mapped_pages() == 2u);
}

TEST_CASE("discard is offered on a writable file unless the toolstack says discard-enable=0") {
  SUBCASE("default") {
    rig r;
    r.start();
    CHECK(r.db.read(be + "/feature-discard") == "1");
    CHECK(r.db.read(be + "/discard-granularity").has_value());
    CHECK(r.db.read(be + "/feature-barrier") == "1");
  }
  SUBCASE("discard-enable=0") {
    rig r;
    r.db.write(be + "/discard-enable", "0");
    r.start();
    CHECK(r.db.read(be + "/feature-discard") == "0");
  }
  SUBCASE("read-only") {
    rig r;
    r.db.write(be + "/mode", "r");
    r.start();
    CHECK(r.db.read(be + "/feature-discard") == "0");
    CHECK(r.db.read(be + "/feature-barrier") == "0");
  }
}

TEST_CASE("a frontend state that is not a state is ignored, not taken for the frontend's end") {
  rig r;
  r.start();
  r.frontend_ready();
  REQUIRE(r.state() == bb::xenbus_state::connected);
  for (const char* junk : {"banana", "", "9", "0", "-1", "4 "}) {
    r.db.write(fe + "/state", junk);
    r.quiet();
    CHECK(r.state() == bb::xenbus_state::connected);
    CHECK_FALSE(r.finished());
    CHECK(r.tables.mapped_pages() == 1u);
  }
  // A real state is still followed.
  r.set_frontend(bb::xenbus_state::closing);
  CHECK(r.reaches(bb::xenbus_state::closing));
}

TEST_CASE("a kilobyte-long protocol value is cut short in the error node") {
  rig r;
  r.start();
  r.db.write(fe + "/protocol", std::string(4096, 'x'));
  r.db.write(fe + "/ring-ref", "8");
  r.db.write(fe + "/event-channel", "1");
  r.set_frontend(bb::xenbus_state::initialised);
  REQUIRE(r.reaches(bb::xenbus_state::closed));
  const auto error = r.db.read(be + "/error").value_or("");
  CHECK(error.find("unknown protocol") != std::string::npos);
  CHECK(error.find("(4096 bytes)") != std::string::npos);
  CHECK(error.size() < 256);
}
