#include "blkback/control/vbd.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/channel.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <iomanip>
#include <sstream>

namespace xbd::blkback {

namespace asio = boost::asio;
using asio_xen::error_code;
using asio_xen::result;

namespace {

error_code invalid() { return {EINVAL, boost::system::generic_category()}; }
// A value for a log line or the `error` node: quoted, and cut short when a
// guest or toolstack wrote kilobytes of it.
std::string quote(const std::string& s) {
  constexpr std::size_t shown = 64;
  std::ostringstream os;
  os << std::quoted(s.substr(0, shown));
  if (s.size() > shown) os << "... (" << s.size() << " bytes)";
  return os.str();
}

bool is_enoent(const error_code& ec) { return ec == boost::system::errc::no_such_file_or_directory; }
bool is_eacces(const error_code& ec) { return ec == boost::system::errc::permission_denied; }

}  // namespace

std::string_view to_string(xenbus_state s) {
  switch (s) {
    case xenbus_state::unknown:
      return "Unknown";
    case xenbus_state::initialising:
      return "Initialising";
    case xenbus_state::init_wait:
      return "InitWait";
    case xenbus_state::initialised:
      return "Initialised";
    case xenbus_state::connected:
      return "Connected";
    case xenbus_state::closing:
      return "Closing";
    case xenbus_state::closed:
      return "Closed";
    case xenbus_state::reconfiguring:
      return "Reconfiguring";
    case xenbus_state::reconfigured:
      return "Reconfigured";
  }
  return "?";
}

struct vbd::backend_keys {
  std::string params;  // as written
  storage::disk_spec spec;
  toolstack_choices choices;
  direct_io_key direct_io = direct_io_key::absent;
  std::string frontend;
  std::string dev;
};

// The rings of one connection, each served on a worker thread.
struct vbd::connection {
  std::shared_ptr<vbd_journal> journal;  // outlives the queues' use of it
  std::vector<std::unique_ptr<queue>> queues;
  std::vector<worker> workers;
  // Each queue's run() reports here (on the control thread) when it ends;
  // room for every queue, so that no report can be dropped.
  asio::experimental::channel<void(error_code, error_code)> exited;
  unsigned running = 0;

  connection(asio::any_io_executor control, std::size_t queues) : exited(control, queues) {}
};

vbd::vbd(vbd_context& ctx, vbd_id id)
    : ctx_(ctx),
      id_(std::move(id)),
      be_("/local/domain/" + std::to_string(ctx.own_domid) + "/backend/" + id_.type + "/" +
          std::to_string(id_.frontend_domid) + "/" + std::to_string(id_.devid)),
      log_(device_logger(id_.frontend_domid, id_.devid)),
      memory_(ctx.memory ? ctx.memory->open_account() : nullptr),
      fair_(ctx.fair ? ctx.fair->join() : nullptr),
      journal_path_(std::filesystem::path(ctx.cfg.journal_directory) /
                    (id_.type + "-" + std::to_string(id_.frontend_domid) + "-" + std::to_string(id_.devid))) {}

vbd::~vbd() = default;

void vbd::shutdown() {
  shutdown_ = true;
  open_stop_.stop();
  if (watch_) watch_->poke();
}

void vbd::check_domain() {
  check_domain_ = true;
  if (watch_) watch_->poke();
}

// A toolstack key we cannot accept: the reason goes to the log and to the
// error node.
vbd::problem vbd::bad_key(std::string reason, error_code ec) { return {std::move(reason), ec}; }

namespace {

// A toolstack key that could not be read at all (not a bad value).
vbd::problem unreadable(error_code ec) { return {"reading the toolstack's keys", ec}; }

}  // namespace

vbd::outcome<vbd::backend_keys> vbd::read_backend_keys() {
  auto& xs = ctx_.xs;
  backend_keys k;
  // params: "<format>:<target>" as libxl writes it for qdisk, or a plain
  // path as other toolstacks write it (storage/spec.hpp).
  auto params = xs.read(be_ + "/params");
  if (!params) return unreadable(params.error());
  k.params = *params;
  auto parsed = storage::parse_params(*params);
  if (!parsed.spec)
    return bad_key(parsed.problem.message, error_code(EPROTONOSUPPORT, boost::system::generic_category()));
  k.spec = std::move(*parsed.spec);

  auto mode = xs.read_optional<std::string>(be_ + "/mode");
  if (!mode) return unreadable(mode.error());
  if (*mode && **mode != "w" && **mode != "r") {
    return bad_key(std::string("mode ") + quote(**mode) + " is neither w nor r", invalid());
  }
  k.choices.writable = !*mode || **mode == "w";

  auto type = xs.read_optional<std::string>(be_ + "/device-type");
  if (!type) return unreadable(type.error());
  if (*type && **type != "disk" && **type != "cdrom") {
    return bad_key(std::string("device-type ") + quote(**type) + " is neither disk nor cdrom", invalid());
  }
  k.choices.cdrom = *type && **type == "cdrom";
  if (k.choices.cdrom) k.choices.writable = false;  // blkif.h: a cdrom is read-only

  auto removable = xs.read_optional<bool>(be_ + "/removable");
  k.choices.removable = removable && *removable && **removable;

  auto dio = xs.read_optional<std::string>(be_ + "/direct-io-safe");
  if (!dio) return unreadable(dio.error());
  k.direct_io = parse_direct_io_safe(*dio);
  if (k.direct_io == direct_io_key::malformed)
    XBD_LOG(log_, warning) << "direct-io-safe " << std::quoted(**dio) << " is not 0 or 1; treated as absent";

  // blkif.h: discard-enable defaults to 1; the toolstack may forbid it.
  auto discard = xs.read_optional<std::string>(be_ + "/discard-enable");
  if (!discard) return unreadable(discard.error());
  if (*discard) {
    auto v = asio_xen::parse_value<bool>(**discard);
    if (!v) XBD_LOG(log_, warning) << "discard-enable " << quote(**discard) << " is not 0 or 1; discard stays off";
    k.choices.discard_enable = v && *v;
  }

  auto fe = xs.read(be_ + "/frontend");
  if (!fe) return unreadable(fe.error());
  k.frontend = *fe;
  // The frontend must be the domain this directory is for.
  auto fe_id = xs.read_optional<unsigned>(be_ + "/frontend-id");
  if (!fe_id) return unreadable(fe_id.error());
  if (*fe_id && **fe_id != id_.frontend_domid) {
    return bad_key(std::string("frontend-id ") + std::to_string(**fe_id) + " does not match the directory's domain",
                   invalid());
  }
  auto dev = xs.read_optional<std::string>(be_ + "/dev");
  if (dev && *dev) k.dev = **dev;
  return k;
}

// The state node is rewritten only while it exists: after the toolstack
// removed our directory (domain destroyed, device detached) a write would
// bring a piece of it back for good. The transition is logged either way.
error_code vbd::switch_state(xenbus_state s) {
  bool gone = false;
  error_code ec = ctx_.xs.transact([&](asio_xen::transaction& t) -> error_code {
    gone = false;
    if (auto cur = t.read(be_ + "/state"); !cur) {
      if (!is_enoent(cur.error())) return cur.error();
      gone = true;
      return {};
    }
    return t.write(be_ + "/state", static_cast<unsigned>(s));
  });
  if (ec) return ec;
  if (s != state_)
    XBD_LOG(log_, info) << "state " << to_string(state_) << " -> " << to_string(s)
                        << (gone ? " (the backend directory is gone)" : "");
  state_ = s;
  return {};
}

void vbd::fail(const problem& p) {
  const std::string& what = p.what;
  const error_code& ec = p.ec;
  XBD_LOG(log_, error) << what << ": " << ec.message() << " (" << ec.category().name() << " " << ec.value()
                       << "); the device is closed";
  // xenbus convention: the reason where the toolstack looks for it.
  std::ostringstream msg;
  msg << ec.value() << " " << what << ": " << ec.message();
  (void)ctx_.xs.write(be_ + "/error", msg.str());
  (void)switch_state(xenbus_state::closed);
}

// Persistent grants only help where the store can work on the guest's
// pages (docs/architecture.md, "Moving the data").
bool vbd::offers_persistent() const { return ctx_.cfg.persistent_grants && store_ && store_->props().vectored; }

error_code vbd::publish_features() {
  const unsigned order = ctx_.cfg.max_ring_page_order;
  error_code ec = ctx_.xs.transact([&](asio_xen::transaction& t) -> error_code {
    if (auto e = t.write(be_ + "/feature-persistent", offers_persistent() ? "1" : "0")) return e;
    if (auto e = t.write(be_ + "/feature-flush-cache", offer_.limits.flush ? "1" : "0")) return e;
    if (auto e = t.write(be_ + "/feature-barrier", offer_.limits.barrier ? "1" : "0")) return e;
    if (auto e = t.write(be_ + "/feature-discard", offer_.limits.discard ? "1" : "0")) return e;
    if (offer_.limits.discard) {
      if (auto e = t.write(be_ + "/discard-granularity", offer_.limits.discard_granularity)) return e;
      if (auto e = t.write(be_ + "/discard-alignment", offer_.discard_alignment)) return e;
      if (auto e = t.write(be_ + "/discard-secure", offer_.limits.discard_secure ? "1" : "0")) return e;
    }
    if (offer_.limits.max_indirect_segments > 0)
      if (auto e = t.write(be_ + "/feature-max-indirect-segments", offer_.limits.max_indirect_segments)) return e;
    if (auto e = t.write(be_ + "/max-ring-page-order", order)) return e;
    if (auto e = t.write(be_ + "/multi-queue-max-queues", max_queues_)) return e;
    // We run no hotplug script; libxl and others wait for this key.
    if (auto e = t.write(be_ + "/hotplug-status", "connected")) return e;
    return {};
  });
  if (ec) return ec;
  return switch_state(xenbus_state::init_wait);
}

// The frontend's state; unknown only when its node is gone. A value that is
// not a state is logged (within the vbd's budget) and ignored: the frontend
// keeps the state it had, and a guest cannot end its vbd by writing garbage.
xenbus_state vbd::frontend_state() {
  auto s = ctx_.xs.read<unsigned>(fe_ + "/state");
  // Gone. In a driver domain a removed node reads as EACCES, not ENOENT:
  // xenstored says ENOENT only to a reader of the parent, and the
  // frontend's parents are not ours to read. libxl grants us the frontend
  // directory itself, so losing access means it went (or the guest took
  // its own disk away).
  if (!s && (is_enoent(s.error()) || is_eacces(s.error()))) return xenbus_state::unknown;
  if (s && *s >= static_cast<unsigned>(xenbus_state::initialising) &&
      *s <= static_cast<unsigned>(xenbus_state::reconfigured)) {
    fe_seen_ = static_cast<xenbus_state>(*s);
    return fe_seen_;
  }
  const std::string why = s ? std::to_string(*s) + " is not a state" : s.error().what();
  if (guest_log_->spend(failure_kind::rejected))
    XBD_LOG(log_, warning) << "frontend state ignored: " << why;
  else
    XBD_LOG(log_, debug) << "frontend state ignored: " << why;
  return fe_seen_;
}

void vbd::settle() {
  if (std::exchange(settled_, true)) return;
  if (on_settled) on_settled();
}

asio::awaitable<void> vbd::run() {
  struct settle_on_exit {
    vbd& v;
    ~settle_on_exit() { v.settle(); }
  } guard{*this};
  auto complete = co_await complete_backend_keys();
  if (!complete) co_return;  // removed before it was complete, or shut down
  auto& keys = *complete;
  if (!keys) {
    fail(keys.error());
    co_return;
  }
  fe_ = keys->frontend;
  params_ = keys->params;
  dev_ = keys->dev;
  if (!keys->dev.empty()) log_ = device_logger(id_.frontend_domid, id_.devid, keys->dev);
  limit_keys_ = read_limit_keys();
  if (!watch_keys()) co_return;
  auto known = ctx_.xs.is_domain_introduced(id_.frontend_domid);
  domain_was_known_ = known && *known;
  if (auto p = co_await open_store(*keys)) {
    if (!shutdown_) fail(*p);  // at shutdown the guest-visible state stays as it is
    co_return;
  }
  if (auto p = co_await resume_or_publish()) {
    fail(*p);
  } else {
    settle();
    // One step per change of the frontend's state, of `online`, of our own
    // directory, or per request from the daemon (shutdown, guest death,
    // resize), until the device ends.
    for (;;) {
      const error_code ec = co_await watch_->changed();
      if (!co_await step(ec)) break;
    }
  }
  // The rings are gone: what the store runs of its own goes too.
  if (store_) co_await store_->close();
}

// libxl writes a vbd's directory in one transaction, but a toolstack may
// write it in several (the directory first, the keys later): until the
// keys we need are there, wait for the directory to change, as Linux's
// xenbus probes a device again on each change. Readiness does not wait for
// such a directory. nullopt: it was removed meanwhile, or the daemon stops.
asio::awaitable<std::optional<vbd::outcome<vbd::backend_keys>>> vbd::complete_backend_keys() {
  bool said = false;
  for (;;) {
    auto keys = read_backend_keys();
    if (keys || !is_enoent(keys.error().ec)) co_return keys;
    auto dir = ctx_.xs.read(be_);
    if (!dir || shutdown_) co_return std::nullopt;
    if (!watch_) {
      auto w = ctx_.xs.watch_path(be_);
      if (!w) co_return outcome<backend_keys>(problem{"watching the incomplete directory", w.error()});
      watch_.emplace(std::move(*w));
    }
    if (!std::exchange(said, true)) {
      XBD_LOG(log_, debug) << "directory without params or frontend yet: waiting for the toolstack";
      settle();
    }
    co_await watch_->changed();
  }
}

// Our state and `online`, and the frontend's state.
bool vbd::watch_keys() {
  auto w = ctx_.xs.watch_path(be_ + "/state");
  if (!w) {
    XBD_LOG(log_, error) << "cannot watch " << be_ << ": " << w.error().what();
    return false;
  }
  watch_.emplace(std::move(*w));
  for (const auto& p : {be_ + "/online", fe_ + "/state"}) {
    if (error_code ec = watch_->add(p)) {
      XBD_LOG(log_, error) << "cannot watch " << p << ": " << ec.what();
      return false;
    }
  }
  return true;
}

// Opens the store the way its key and our policy allow, and works out what
// the frontend is offered.
asio::awaitable<std::optional<vbd::problem>> vbd::open_store(const backend_keys& keys) {
  storage::open_request req{keys.spec, std::to_string(id_.frontend_domid) + "-" + std::to_string(id_.devid),
                            keys.choices.writable, ctx_.cfg.direct_io, keys.direct_io};
  req.stop = &open_stop_;
  opened_with_ = req;
  const std::string what = storage::describe(keys.spec);
  std::string detail;
  auto opened = co_await storage::open(std::move(req), ctx_.cfg, detail);
  if (!opened)
    co_return problem{"opening " + what + (detail.empty() ? "" : ": " + detail.substr(0, 256)), opened.error()};
  store_ = std::move(opened->st);
  const auto& props = store_->props();
  if (!opened->warning.empty()) XBD_LOG(log_, warning) << store_->name() << ": " << opened->warning;
  XBD_LOG(log_, info) << "opened " << store_->name() << (keys.choices.writable ? " read-write" : " read-only")
                      << (props.direct ? " with O_DIRECT" : " buffered") << " (" << opened->mode << "), " << props.size
                      << " bytes, sector " << props.logical_sector << "/" << props.physical_sector;
  offer_ = make_offer(keys.choices, props, ctx_.cfg);
  // (The executor in a statement of its own: GCC 12 destroys a lambda built
  // around a co_await twice.)
  const auto ex = co_await asio::this_coro::executor;
  store_->watch_size([ex, self = std::weak_ptr<vbd*>(self_)] {
    asio::post(ex, [self] {
      if (auto v = self.lock()) (*v)->check_size();
    });
  });
  // A store that cannot serve several rings at once (an NBD server
  // without multi-conn) is offered one queue.
  max_queues_ = props.max_queues ? std::min(ctx_.max_queues, props.max_queues) : ctx_.max_queues;
  co_return std::nullopt;
}

// A daemon that restarts finds its devices as the previous one left them:
// a connected one is re-attached without the guest noticing, a closed one
// waits for the frontend to start over; anything else starts afresh.
asio::awaitable<std::optional<vbd::problem>> vbd::resume_or_publish() {
  auto current = ctx_.xs.read_optional<unsigned>(be_ + "/state");
  const unsigned cur = current && *current ? **current : 0;
  const xenbus_state fe_now = frontend_state();
  if (cur == static_cast<unsigned>(xenbus_state::connected) &&
      (fe_now == xenbus_state::connected || fe_now == xenbus_state::initialised)) {
    state_ = xenbus_state::connected;
    if (auto p = co_await connect(true)) {
      co_await disconnect();
      co_return p;
    }
    co_return std::nullopt;
  }
  if (cur == static_cast<unsigned>(xenbus_state::closed) && fe_now != xenbus_state::initialising) {
    state_ = xenbus_state::closed;
    co_return std::nullopt;
  }
  if (error_code ec = publish_features()) co_return problem{"publishing features", ec};
  co_return std::nullopt;
}

// Acts on a change (or the end of the watch, `ec`); false when the device
// ends.
asio::awaitable<bool> vbd::step(error_code ec) {
  if (ec) {
    XBD_LOG(log_, debug) << "watch ended: " << ec.message();
    co_await disconnect();
    if (!shutdown_) (void)switch_state(xenbus_state::closed);
    co_return false;
  }
  if (shutdown_) {
    // Daemon shutdown: guest-visible state stays as it is.
    co_await disconnect();
    co_return false;
  }
  if (std::exchange(check_domain_, false) && guest_died()) {
    XBD_LOG(log_, info) << "guest domain died";
    co_return co_await close_for_good();
  }
  if (std::exchange(check_size_, false)) apply_resize();
  if (std::exchange(withdraw_flush_, false)) withdraw_flush();
  auto be_state = ctx_.xs.read_optional<unsigned>(be_ + "/state");
  if (be_state && !*be_state) {
    XBD_LOG(log_, info) << "backend directory removed";
    co_return co_await close_for_good();  // logged, not written
  }
  if (be_state && **be_state == static_cast<unsigned>(xenbus_state::closed) && state_ != xenbus_state::closed) {
    // libxl does this to a qdisk vbd of a dying or paused guest instead of
    // asking (LIBXL_QEMU_BODGE_TIMEOUT), then waits for the backend
    // directory to go.
    XBD_LOG(log_, info) << "the toolstack wrote Closed over our state " << to_string(state_);
    co_return co_await close_for_good();
  }
  auto online_key = ctx_.xs.read_optional<bool>(be_ + "/online");
  const bool online = !online_key || !*online_key || **online_key;
  const xenbus_state fe = frontend_state();
  if (fe == xenbus_state::unknown) {
    XBD_LOG(log_, info) << "frontend gone";
    co_return co_await close_for_good();
  }
  if (!online &&
      (fe == xenbus_state::initialising || fe == xenbus_state::init_wait || fe == xenbus_state::closed || !conn_)) {
    // Unplugged and nobody is using the ring.
    XBD_LOG(log_, info) << "unplugged by the toolstack";
    co_return co_await close_for_good();
  }
  co_return co_await follow(fe, online);
}

bool vbd::guest_died() {
  auto alive = ctx_.xs.is_domain_introduced(id_.frontend_domid);
  return domain_was_known_ && alive && !*alive;
}

asio::awaitable<bool> vbd::close_for_good() {
  co_await disconnect();
  (void)switch_state(xenbus_state::closed);
  if (ctx_.own_domid != 0) leave_directory();
  co_return false;
}

// A driver domain removes its own backend directories: libxl, in dom0,
// waits for that after every removal, and xl devd does it only after an
// unplug (online = 0). A vbd that ended still online (its guest died, or
// libxl closed it over our head) is left to nobody else, so it goes here;
// an unplugged one is xl devd's, which also ends the guest's device model.
void vbd::leave_directory() {
  auto online = ctx_.xs.read_optional<bool>(be_ + "/online");
  if (!online || !*online || !**online) return;
  if (error_code ec = ctx_.xs.rm(be_))
    XBD_LOG(log_, warning) << "cannot remove the backend directory of a vbd still online: " << ec.message();
  else
    XBD_LOG(log_, info) << "removed the backend directory (still online: nobody else removes it in a driver domain)";
}

// The frontend's state decides ours (docs/protocol.md, the state machine).
asio::awaitable<bool> vbd::follow(xenbus_state fe, bool online) {
  // After a failed connect, wait for the frontend to move (it sees our
  // Closed and closes or starts over) rather than retry the same keys.
  if (fe != xenbus_state::initialised && fe != xenbus_state::connected) connect_failed_ = false;
  switch (fe) {
    case xenbus_state::initialising:
      // The guest starts over (reboot, kexec, driver reload).
      if (state_ == xenbus_state::closed) {
        XBD_LOG(log_, info) << "frontend reinitialising";
        (void)ctx_.xs.rm(be_ + "/error");
        if (error_code ec = publish_features()) fail({"publishing features", ec});
      }
      break;
    case xenbus_state::initialised:
    case xenbus_state::connected:
      if (!conn_ && state_ != xenbus_state::closing && !connect_failed_) {
        if (state_ == xenbus_state::closed) (void)ctx_.xs.rm(be_ + "/error");
        if (auto p = co_await connect(false)) {
          co_await disconnect();
          fail(*p);
          connect_failed_ = true;
        }
      }
      break;
    case xenbus_state::closing:
      // Keep serving: the frontend may still have requests in the ring.
      if (state_ != xenbus_state::closing && state_ != xenbus_state::closed) (void)switch_state(xenbus_state::closing);
      break;
    case xenbus_state::closed:
      co_await disconnect();
      if (state_ != xenbus_state::closed) (void)switch_state(xenbus_state::closed);
      if (!online) {
        XBD_LOG(log_, info) << "unplugged by the toolstack";
        co_return false;
      }
      break;
    default:
      break;
  }
  co_return true;
}

// The ring of one queue: its grant refs and event channel, under `dir`
// (the frontend's directory, or its queue-<i> subdirectory).
vbd::outcome<vbd::ring_keys> vbd::read_ring_keys(const std::string& dir, unsigned order, bool has_order) {
  auto& xs = ctx_.xs;
  ring_keys k;
  if (has_order) {
    for (unsigned i = 0; i < (1u << order); ++i) {
      auto ref = xs.read<asio_xen::grant_ref>(dir + "/ring-ref" + std::to_string(i));
      if (!ref && i == 0 && order == 0) ref = xs.read<asio_xen::grant_ref>(dir + "/ring-ref");
      if (!ref) return bad_key(dir + "/ring-ref" + std::to_string(i) + ": " + ref.error().message(), ref.error());
      k.refs.push_back(*ref);
    }
  } else {
    auto ref = xs.read<asio_xen::grant_ref>(dir + "/ring-ref");
    if (!ref) return bad_key(dir + "/ring-ref: " + ref.error().message(), ref.error());
    k.refs.push_back(*ref);
  }
  auto port = xs.read<asio_xen::evtchn_port>(dir + "/event-channel");
  if (!port) return bad_key(dir + "/event-channel: " + port.error().message(), port.error());
  k.port = *port;
  return k;
}

// What the frontend published for this connection, each key read once
// (XSA-155 applies to xenstore too).
vbd::outcome<vbd::transport> vbd::read_transport() {
  auto& xs = ctx_.xs;
  transport t;
  auto order = xs.read_optional<unsigned>(fe_ + "/ring-page-order");
  if (!order) return bad_key("ring-page-order: " + order.error().message(), order.error());
  const bool has_order = order->has_value();
  t.ring_order = order->value_or(0);
  if (t.ring_order > ctx_.cfg.max_ring_page_order)
    return bad_key("ring-page-order " + std::to_string(t.ring_order) + " is above our maximum " +
                       std::to_string(ctx_.cfg.max_ring_page_order),
                   invalid());
  auto nq = xs.read_optional<unsigned>(fe_ + "/multi-queue-num-queues");
  if (!nq) return bad_key("multi-queue-num-queues: " + nq.error().message(), nq.error());
  const unsigned queues = nq->value_or(1);
  if (queues == 0 || queues > max_queues_)
    return bad_key(
        "multi-queue-num-queues " + std::to_string(queues) + " is not within 1.." + std::to_string(max_queues_),
        invalid());
  auto proto = xs.read_optional<std::string>(fe_ + "/protocol");
  if (!proto) return bad_key("protocol: " + proto.error().message(), proto.error());
  if (*proto) {
    auto a = parse_protocol(**proto);
    if (!a)
      return bad_key("unknown protocol " + quote(**proto),
                     error_code(EPROTONOSUPPORT, boost::system::generic_category()));
    t.layout = *a;
  } else if (ctx_.cfg.default_protocol == ring_protocol::x86_32) {
    t.layout = abi::x86_32;  // what Linux's blkback assumes of an x86 guest
  }
  // blkif.h: a boolean; anything but "1" (Linux writes nothing) leaves the
  // frontend at 512-byte sectors.
  auto large = xs.read_optional<std::string>(fe_ + "/feature-large-sector-size");
  if (!large) return bad_key("feature-large-sector-size: " + large.error().message(), large.error());
  t.large_sectors = *large && **large == "1";
  // blkif.h: persistent grants are used when both ends set the key.
  auto persistent = xs.read_optional<std::string>(fe_ + "/feature-persistent");
  if (!persistent) return bad_key("feature-persistent: " + persistent.error().message(), persistent.error());
  t.persistent = offers_persistent() && *persistent && **persistent == "1";
  // Linux's blkfront puts a single queue's keys at the top, several under
  // queue-<i>/.
  for (unsigned i = 0; i < queues; ++i) {
    auto k = read_ring_keys(queues == 1 ? fe_ : fe_ + "/queue-" + std::to_string(i), t.ring_order, has_order);
    if (!k) return k.error();
    t.rings.push_back(std::move(*k));
  }
  return t;
}

// The in-flight journal of this connection: a new one, or on re-attach the
// one the previous process left, which must be there and be this
// connection's (docs/architecture.md, "Crash recovery").
vbd::outcome<std::shared_ptr<vbd_journal>> vbd::open_journal(const transport& t, bool reattach) {
  journal_identity id;
  id.frontend_domid = id_.frontend_domid;
  id.devid = id_.devid;
  id.layout = t.layout;
  id.ring_order = t.ring_order;
  for (const auto& r : t.rings) {
    id.ring_refs.emplace_back(r.refs.begin(), r.refs.end());
    id.ports.push_back(r.port);
  }
  const std::uint32_t ring_size = abi_ring::entries(t.layout, std::size_t{1} << t.ring_order);
  const std::uint32_t segments = offer_.limits.max_indirect_segments;
  auto j = reattach ? vbd_journal::open(journal_path_, id, ring_size, segments)
                    : vbd_journal::create(journal_path_, id, ring_size, segments);
  if (j) return std::make_shared<vbd_journal>(std::move(*j));
  if (reattach && is_enoent(j.error()))
    return problem{"re-attaching after a restart: the previous daemon left no in-flight journal (" +
                       journal_path_.string() + "), so which requests it answered is unknown",
                   j.error()};
  return problem{
      std::string(reattach ? "re-attaching after a restart: " : "") + "in-flight journal " + journal_path_.string(),
      j.error()};
}

// Maps each ring and makes its queue on a worker, taking up the journal on
// re-attach; only when every ring is ready do they start. On failure the
// queues made so far are in conn_, for disconnect() to release.
std::optional<vbd::problem> vbd::start_queues(const transport& t, asio::any_io_executor control, bool reattach) {
  auto c = std::make_shared<connection>(control, t.rings.size());
  conn_ = c;
  ring_order_ = t.ring_order;
  layout_ = t.layout;
  if (ctx_.cfg.journal) {
    auto j = open_journal(t, reattach);
    if (!j) return j.error();
    c->journal = std::move(*j);
  }
  // The toolstack may have changed its keys since the last connection; a
  // change from the control socket stays in force over them.
  limit_keys_ = read_limit_keys();
  if (std::string e = apply_limits(limits_live_); !e.empty()) {
    XBD_LOG(log_, warning) << "I/O limits: the control socket's change (" << limits_live_.describe()
                           << ") no longer fits the toolstack's keys: " << e << "; it is set aside";
    limits_live_ = {};
    if (e = apply_limits(limits_live_); !e.empty()) {
      // read_limit_keys() checked the keys with [limits]: not reached.
      XBD_LOG(log_, warning) << "I/O limits: " << e << "; the toolstack's keys are set aside";
      limit_keys_ = {};
      (void)apply_limits(limits_live_);
    }
  }
  if (const auto in_force = throttle_->limits(); in_force.any())
    XBD_LOG(log_, info) << "I/O limits in force: " << describe(in_force) << in_group();
  for (std::size_t i = 0; i < t.rings.size(); ++i) {
    const auto& k = t.rings[i];
    queue_params qp;
    qp.frontend_domid = id_.frontend_domid;
    qp.layout = t.layout;
    qp.ring_refs = k.refs;
    qp.remote_port = k.port;
    qp.limits = offer_.limits;
    qp.budget = guest_log_;
    qp.memory = memory_;
    qp.fair = fair_;
    qp.throttle = throttle_;
    qp.poll = std::chrono::microseconds(ctx_.cfg.poll_microseconds);
    qp.journal = c->journal ? &c->journal->ring(i) : nullptr;
    qp.recover = reattach;
    if (ctx_.cfg.zero_copy) qp.zero_copy_min = ctx_.cfg.zero_copy_min_bytes;
    qp.persistent_grants = t.persistent ? ctx_.cfg.persistent_grants_per_ring : 0;
    qp.flush_unsupported = [control, self = std::weak_ptr<vbd*>(self_)] {
      asio::post(control, [self] {
        if (auto v = self.lock()) (*v)->flush_unsupported();
      });
    };
    worker w = ctx_.pick_worker();
    auto q = queue::connect(w, ctx_.xen, qp, *store_, log_);
    if (!q && (q.error() == asio_xen::errc::journal_corrupt || q.error() == asio_xen::errc::journal_stale))
      return problem{"re-attaching after a restart: ring " + std::to_string(i) +
                         " of the in-flight journal: " + c->journal->ring(i).problem(),
                     q.error()};
    if (!q) return bad_key("cannot map the ring or bind its event channel: " + q.error().what(), q.error());
    live_.push_back({(*q)->counters(), (*q)->ring_size(), k.port});
    c->queues.push_back(std::move(*q));
    c->workers.push_back(w);
  }
  for (std::size_t i = 0; i < c->queues.size(); ++i) {
    ++c->running;
    asio::co_spawn(c->workers[i].ex, c->queues[i]->run(), [c, control](std::exception_ptr e, error_code ec) {
      if (e) ec = error_code(EFAULT, boost::system::generic_category());
      asio::post(control, [c, ec] { (void)c->exited.try_send(error_code{}, ec); });
    });
  }
  return std::nullopt;
}

// The disk's size and properties, in one transaction, then Connected.
std::optional<vbd::problem> vbd::publish_disk() {
  error_code ec = ctx_.xs.transact([&](asio_xen::transaction& t) -> error_code {
    if (auto e = t.write(be_ + "/sectors", published_sectors_)) return e;  // always 512-byte units
    if (auto e = t.write(be_ + "/info", offer_.info)) return e;
    if (auto e = t.write(be_ + "/sector-size", offer_.limits.sector_size)) return e;
    if (auto e = t.write(be_ + "/physical-sector-size", physical_sector_)) return e;
    if (offer_.limits.discard)
      if (auto e = t.write(be_ + "/discard-secure", offer_.limits.discard_secure ? "1" : "0")) return e;
    return {};
  });
  if (ec) return bad_key("publishing the disk: " + ec.message(), ec);
  if (ec = switch_state(xenbus_state::connected); ec) return problem{"connecting to the frontend", ec};
  return std::nullopt;
}

asio::awaitable<std::optional<vbd::problem>> vbd::connect(bool reattach) {
  auto t = read_transport();
  if (!t) co_return t.error();
  if (auto p = co_await choose_sectors(reattach, t->large_sectors)) co_return p;
  choose_discard_secure(reattach);
  // The size now: the image may have grown while no frontend was connected.
  if (auto size = store_->current_size()) offer_.limits.sectors = whole_sectors(*size);
  published_sectors_ = offer_.limits.sectors;
  if (auto p = start_queues(*t, co_await asio::this_coro::executor, reattach)) co_return p;
  if (reattach && conn_->journal) {
    recovery_counts total;
    for (const auto& q : conn_->queues) {
      total.reissued += q->recovery().reissued;
      total.answered_unfreed += q->recovery().answered_unfreed;
      total.pushed += q->recovery().pushed;
    }
    XBD_LOG(log_, info) << "took up the previous daemon's in-flight journal: " << total.reissued
                        << " request(s) executed again, " << total.answered_unfreed
                        << " answered just before it stopped, " << total.pushed << " response(s) pushed again";
  }
  if (!reattach) {
    if (auto p = publish_disk()) co_return p;
  } else if (auto s = ctx_.xs.read<std::uint64_t>(be_ + "/sectors")) {
    published_sectors_ = *s;
  }
  ++connections_;
  XBD_LOG(log_, info) << (reattach ? "re-attached" : "connected") << ": " << t->rings.size() << " queue(s) of "
                      << (1u << t->ring_order) << " ring page(s), " << conn_->queues.front()->ring_size()
                      << " entries each, event channel " << t->rings.front().port << ", " << to_string(t->layout)
                      << (offer_.limits.max_indirect_segments ? ", indirect" : "") << ", sector "
                      << offer_.limits.sector_size << sector_reason_;
  co_return std::nullopt;
}

// The logical sector size of this connection (docs/protocol.md, "Sector
// size"), and a store that can serve it. A re-attached frontend keeps the
// size it was given; otherwise the operator's force-sector-size (read now,
// so that a toolstack may write it after the vbd appeared), else
// [io] sector-size, else what the frontend can take.
asio::awaitable<std::optional<vbd::problem>> vbd::choose_sectors(bool reattach, bool frontend_large) {
  std::uint32_t size = 0;
  std::string why;
  if (reattach) {
    auto published = ctx_.xs.read<unsigned>(be_ + "/sector-size");
    if (published && valid_sector_size(*published)) {
      size = *published;
      why = "as published before the restart";
    }
  }
  if (size == 0) {
    auto key = ctx_.xs.read_optional<std::string>(be_ + "/force-sector-size");
    if (!key) co_return unreadable(key.error());
    const auto forced = parse_forced_sector_size(*key, ctx_.cfg.sector_size);
    if (!forced)
      co_return bad_key("force-sector-size " + quote(**key) + " is not 0, 512, 1024, 2048 or 4096", invalid());
    const auto choice = choose_sector_size(*forced, frontend_large, store_->props());
    size = choice.size;
    why = choice.why;
    if (*forced != 0) why = *key ? "force-sector-size" : "[io] sector-size";
  }
  switch (fit_sector_size(size, store_->props())) {
    case sector_fit::fits:
      break;
    case sector_fit::without_direct:
      if (auto p = co_await reopen_buffered(size)) co_return p;
      break;
    case sector_fit::impossible:
      co_return problem{std::to_string(size) + "-byte sectors (" + why + ") cannot be served by " + store_->name() +
                            ", whose smallest unit is " + std::to_string(store_->props().io_alignment) +
                            " bytes; set force-sector-size for a frontend that takes larger sectors",
                        error_code(EOPNOTSUPP, boost::system::generic_category())};
  }
  // For the connect line: why, when it is not simply the store's own.
  sector_reason_ = size == store_->props().logical_sector && why.starts_with("the ") ? "" : " (" + why + ")";
  offer_.limits.sector_size = size;
  physical_sector_ = std::max(store_->props().physical_sector, size);
  co_return std::nullopt;
}

// discard-secure for this connection: what the toolstack's
// discard-secure-enable says now (read at connect, like
// force-sector-size), or on re-attach what the frontend was told.
// Frontends read discard-secure when the backend is Connected, so the key
// is written with the disk (publish_disk).
void vbd::choose_discard_secure(bool reattach) {
  const std::string key = be_ + (reattach ? "/discard-secure" : "/discard-secure-enable");
  auto v = ctx_.xs.read_optional<std::string>(key);
  bool vouched = false;
  if (v && *v) {
    auto b = asio_xen::parse_value<bool>(**v);
    if (!b && !reattach)
      XBD_LOG(log_, warning) << "discard-secure-enable " << quote(**v) << " is not 0 or 1; secure discard stays off";
    vouched = b && *b;
  }
  offer_.limits.discard_secure = offer_discard_secure(offer_.limits, vouched, store_->props());
}

// O_DIRECT needs the store's alignment; the page cache serves any sector
// and does the read-modify-write itself, safely between rings, and a flush
// is still an fdatasync. So a store opened with O_DIRECT is opened again
// without it, for the rest of the vbd's life, before the old one goes
// (nothing uses it: no ring is connected).
asio::awaitable<std::optional<vbd::problem>> vbd::reopen_buffered(std::uint32_t sector) {
  storage::open_request req = opened_with_;
  req.policy = direct_io_policy::never;
  std::string detail;
  auto opened = co_await storage::open(req, ctx_.cfg, detail);
  if (!opened)
    co_return problem{"reopening " + store_->name() + " without O_DIRECT" + (detail.empty() ? "" : ": " + detail),
                      opened.error()};
  XBD_LOG(log_, warning) << store_->name() << ": O_DIRECT dropped: it needs " << store_->props().io_alignment
                         << "-byte units and the frontend gets " << sector << "-byte sectors";
  auto old = std::exchange(store_, std::move(opened->st));
  opened_with_ = req;
  co_await old->close();
  co_return std::nullopt;
}

// A size in 512-byte units (blkif.h), whole logical sectors only.
std::uint64_t vbd::whole_sectors(std::uint64_t bytes) const {
  const std::uint64_t unit = std::max<std::uint32_t>(offer_.limits.sector_size, 512);
  return (bytes - bytes % unit) / 512;
}

// Linux's blkback does the same: a store that turns out unable to flush
// (EOPNOTSUPP) makes the backend withdraw the features, so the frontend
// stops asking. xenstore is written here, on the control thread, never by
// the ring that saw it.
void vbd::flush_unsupported() {
  withdraw_flush_ = true;
  if (watch_) watch_->poke();
}

void vbd::withdraw_flush() {
  if (!offer_.limits.flush && !offer_.limits.barrier) return;  // done already
  const bool barrier = offer_.limits.barrier;
  offer_.limits.flush = false;
  offer_.limits.barrier = false;
  error_code ec = ctx_.xs.transact([&](asio_xen::transaction& t) -> error_code {
    if (auto e = t.write(be_ + "/feature-flush-cache", "0")) return e;
    if (barrier)
      if (auto e = t.write(be_ + "/feature-barrier", "0")) return e;
    return {};
  });
  XBD_LOG(log_, warning) << store_->name() << " cannot flush (EOPNOTSUPP): feature-flush-cache"
                         << (barrier ? " and feature-barrier" : "") << " withdrawn"
                         << (ec ? " (writing them failed: " + ec.message() + ")" : "");
}

// I/O limits (docs/limits.md, "I/O limits") from the toolstack: the
// backend keys `throttle-<name>` by QEMU's names, and `throttle-group`.
// Read when the vbd starts and at each connection. A value that does not
// parse, or limits that do not add up with [limits], set the keys aside as
// a whole (nothing of them applies) with one warning: the vbd serves with
// the other sources' limits.
throttle_settings vbd::read_limit_keys() {
  throttle_settings keys;
  std::string problem;
  auto one = [&](std::string_view name) {
    const std::string key = "throttle-" + std::string(name);
    auto v = ctx_.xs.read_optional<std::string>(be_ + "/" + key);
    if (!v) {
      problem = key + " cannot be read: " + v.error().message();
    } else if (*v) {
      if (std::string e = keys.set(name, **v); !e.empty()) problem = key + ": " + e;
    }
  };
  for (const std::string_view name : throttle_settings::names()) {
    if (problem.empty()) one(name);
  }
  if (problem.empty()) one("group");
  if (problem.empty()) {
    throttle_settings all = ctx_.cfg.io_limits;
    all.overlay(keys);
    if (std::string e = validate(all.limits()); !e.empty()) problem = "the throttle-* keys: " + e;
  }
  if (problem.empty()) {
    limit_keys_problem_.clear();
    return keys;
  }
  if (problem != limit_keys_problem_)
    XBD_LOG(log_, warning) << "I/O limits: " << problem << "; the toolstack's throttle-* keys are ignored";
  limit_keys_problem_ = problem;
  return {};
}

// The group a vbd's `group` setting names: "" a group of its own, "domain"
// the one its guest's vbds share, any other name one shared across guests.
std::string vbd::group_key(const std::string& group) const {
  if (group.empty()) return {};
  if (group == "domain") return "domain/" + std::to_string(id_.frontend_domid);
  return group;
}

// [limits], then the toolstack's keys, then `live` (the control socket's):
// checked together, then put in force in the group they name. An error
// text, with nothing changed.
std::string vbd::apply_limits(const throttle_settings& live) {
  throttle_settings all = ctx_.cfg.io_limits;
  all.overlay(limit_keys_);
  all.overlay(live);
  const throttle_limits l = all.limits();
  if (std::string e = validate(l); !e.empty()) return e;
  const std::string key = group_key(all.group_name());
  if (!throttle_ || key != throttle_key_) {
    throttle_ = key.empty() ? std::make_shared<throttle_group>("") : ctx_.throttle_groups->get(key);
    throttle_key_ = key;
    // The rings of the connection move to the new group.
    if (conn_) {
      for (std::size_t i = 0; i < conn_->queues.size(); ++i) {
        queue* q = conn_->queues[i].get();
        asio::post(conn_->workers[i].ex, [q, g = throttle_] { q->set_throttle(g); });
      }
    }
  }
  // A group's limits are the last ones set by any of its vbds.
  throttle_->configure(l, std::chrono::steady_clock::now());
  return {};
}

limits_view vbd::limits() const {
  limits_view v;
  v.file = ctx_.cfg.io_limits;
  v.toolstack = limit_keys_;
  v.live = limits_live_;
  v.effective = v.file;
  v.effective.overlay(v.toolstack);
  v.effective.overlay(v.live);
  v.toolstack_problem = limit_keys_problem_;
  v.group = v.effective.group_name();
  v.in_force = throttle_ ? throttle_->limits() : v.effective.limits();
  v.group_rings = throttle_ ? throttle_->members() : 0;
  return v;
}

std::string vbd::change_limits(const throttle_settings& change) {
  throttle_settings live = limits_live_;
  live.overlay(change);
  if (std::string e = apply_limits(live); !e.empty()) return e;
  limits_live_ = live;
  if (change.empty()) return {};
  const std::string now = describe(throttle_->limits());
  XBD_LOG(log_, info) << "I/O limits changed through the control socket (" << change.describe()
                      << "); in force: " << (now.empty() ? "none" : now) << in_group();
  return {};
}

// For the log: " (group NAME)" when the vbd shares its limits.
std::string vbd::in_group() const {
  const std::string g = limits().group;
  return g.empty() ? std::string() : " (group " + g + ")";
}

// Online resize (docs/protocol.md, the state machine): new `sectors`, then `state` rewritten in the
// same transaction so the frontend's watch fires, as Linux and QEMU do.
void vbd::check_size() {
  check_size_ = true;
  if (watch_) watch_->poke();
}

void vbd::poll_size(const asio::any_io_executor& ex) {
  if (!conn_ || !store_ || check_size_) return;
  auto read = store_->size_reader();
  if (!read) {
    size_read(store_->current_size());
    return;
  }
  const std::chrono::seconds bound(ctx_.cfg.open_timeout_seconds);
  if (probe_busy_->exchange(true)) {
    if (!std::exchange(probe_stall_said_, true))
      XBD_LOG(log_, warning) << "the size of " << store_->name()
                             << " is still being read: its file system does not answer";
    return;
  }
  probe_stall_said_ = false;
  auto call = [read = std::move(read), busy = probe_busy_] {
    auto size = read();
    busy->store(false);
    return size;
  };
  asio::co_spawn(ex, probe_size(self_, std::move(call), bound), asio::detached);
}

asio::awaitable<void> vbd::probe_size(std::weak_ptr<vbd*> self, std::function<asio_xen::result<std::uint64_t>()> read,
                                      std::chrono::seconds bound) {
  auto [end, size] =
      co_await storage::run_off_thread<asio_xen::result<std::uint64_t>>(std::move(read), bound, nullptr, false);
  auto v = self.lock();
  if (!v) co_return;  // the vbd is gone meanwhile
  vbd& d = **v;
  if (end == storage::off_thread_end::timed_out && !std::exchange(d.probe_stall_said_, true))
    XBD_LOG(d.log_, warning) << "reading the size of " << (d.store_ ? d.store_->name() : std::string("the store"))
                             << ": " << storage::describe_stall(end, bound);
  if (size && d.conn_ && d.store_) d.size_read(std::move(*size));
}

// A size read: the device's coroutine is woken only for news.
void vbd::size_read(asio_xen::result<std::uint64_t> size) {
  const bool news = size ? size_unreadable_ || whole_sectors(*size) != published_sectors_ : !size_unreadable_;
  if (!news || check_size_) return;
  probed_size_ = std::move(size);
  check_size();
}

void vbd::apply_resize() {
  if (!conn_ || !store_) return;
  // Read off the control thread when it may block; asked now when not.
  auto size = probed_size_ ? std::move(*probed_size_) : store_->current_size();
  probed_size_.reset();
  if (!size) {
    if (!std::exchange(size_unreadable_, true))
      XBD_LOG(log_, warning) << "cannot read the size of " << store_->name() << ": " << size.error().what();
    return;
  }
  if (std::exchange(size_unreadable_, false)) XBD_LOG(log_, info) << "the size of " << store_->name() << " reads again";
  const std::uint64_t sectors = whole_sectors(*size);
  if (sectors == published_sectors_) return;
  XBD_LOG(log_, info) << "resized: " << published_sectors_ << " -> " << sectors << " sectors";
  offer_.limits.sectors = sectors;
  for (std::size_t i = 0; i < conn_->queues.size(); ++i) {
    queue* q = conn_->queues[i].get();
    asio::post(conn_->workers[i].ex, [q, sectors] { q->set_sectors(sectors); });
  }
  error_code ec = ctx_.xs.transact([&](asio_xen::transaction& t) -> error_code {
    if (auto e = t.write(be_ + "/sectors", sectors)) return e;
    return t.write(be_ + "/state", static_cast<unsigned>(state_));
  });
  if (ec) XBD_LOG(log_, warning) << "cannot publish the new size: " << ec.what();
  published_sectors_ = sectors;
}

// The lifetime rule of the data plane. A queue is destroyed only after its
// run() has returned, on its own thread, and run() returns only when nothing
// can call back into the queue any more:
//  - every request in flight holds a slot, and its slot is released only
//    when its coroutine has had its last storage completion, so
//    in_flight == 0 means no operation of the queue's storage channel is
//    outstanding;
//  - the queue's Asio objects (its event channel, its slots' files) are
//    never cancelled and never closed with an operation pending: on Boost
//    1.81's io_uring backend either would deliver a completion to another
//    object, possibly another guest's (asio_xen/wakeable.hpp);
//  - its report reaches the control thread through a channel with room for
//    every queue of the connection.
// The backing store the queues use outlives them: it belongs to the vbd,
// which waits here for every queue to report before it goes on.
asio::awaitable<void> vbd::disconnect() {
  auto c = std::move(conn_);
  if (!c) co_return;
  XBD_LOG(log_, debug) << "stopping " << c->queues.size() << " queue(s)";
  for (std::size_t i = 0; i < c->queues.size(); ++i) {
    queue* q = c->queues[i].get();
    asio::post(c->workers[i].ex, [q] { q->stop(); });
  }
  while (c->running > 0) {
    auto [ec, result] = co_await c->exited.async_receive(asio::as_tuple(asio::use_awaitable));
    if (ec) break;
    --c->running;
    if (result && result != asio_xen::make_error_code(asio_xen::errc::ring_overflow))
      XBD_LOG(log_, warning) << "ring ended with " << result.what();
  }
  connection_ended(*c);
  co_await release_queues(c);
}

// Each queue goes away on its own thread, where its I/O objects live, and
// with it its mappings of the guest's pages (ring, persistent grants): only
// then may the vbd say Closed, as Linux's blkback unmaps before it does (a
// frontend ends access to its pages at Closed). Its slots are many small
// allocations that malloc would keep for reuse; the memory goes back so
// that a daemon's RSS follows what it serves. Bounded: a worker that no
// longer runs (not seen) cannot hold the vbd for more than ten seconds.
asio::awaitable<void> vbd::release_queues(std::shared_ptr<connection> c) {
  const auto control = co_await asio::this_coro::executor;
  std::size_t pending = c->queues.size();
  for (std::size_t i = 0; i < c->queues.size(); ++i)
    asio::post(c->workers[i].ex, [c, control, q = std::shared_ptr<queue>(std::move(c->queues[i]))]() mutable {
      q.reset();
      return_free_heap();
      asio::post(control, [c] { (void)c->exited.try_send(error_code{}, error_code{}); });
    });
  asio::steady_timer bound(control, std::chrono::seconds(10));
  bound.async_wait([c](const error_code& ec) {
    if (!ec) (void)c->exited.try_send(make_error_code(asio::error::timed_out), error_code{});
  });
  while (pending > 0) {
    auto [ec, why] = co_await c->exited.async_receive(asio::as_tuple(asio::use_awaitable));
    if (ec) break;
    if (why == asio::error::timed_out) {
      XBD_LOG(log_, warning) << pending << " queue(s) not released after 10 s; going on";
      break;
    }
    --pending;
  }
  bound.cancel();
}

// What a connection whose queues have all ended leaves: its counters to
// the vbd's totals, its journal to the next daemon (or nobody), and one
// line in the log. Not a coroutine: the sums are large.
void vbd::connection_ended(const connection& c) {
  ring_stats total;
  std::uint32_t in_flight_at_stop = 0;
  for (const auto& q : c.queues) {
    total += q->stats();
    in_flight_at_stop += q->in_flight_at_stop();
  }
  retire_rings();
  // The journal is kept for the next daemon only when this one stops; a
  // connection that ended has nothing in flight and nothing to take up.
  if (shutdown_)
    XBD_LOG(log_, info) << "drained for shutdown: " << in_flight_at_stop
                        << " request(s) in flight at the stop were answered"
                        << (c.journal ? "; the in-flight journal is kept for the next start" : "");
  else if (c.journal)
    vbd_journal::remove(journal_path_);
  if (auto line = guest_log_->take_unlogged(); !line.empty()) XBD_LOG(log_, warning) << line;
  const std::uint64_t peak = memory_ ? memory_->usage().peak : 0;
  XBD_LOG(log_, info) << "disconnected after " << total.requests() << " requests (" << total.rd_bytes << " bytes read, "
                      << total.wr_bytes << " written, " << total.err_rejected << " rejected, " << total.failed()
                      << " failed); buffers: peak " << format_size(peak) << ", waited for memory " << total.oo_req
                      << " time(s), for other vbds " << total.fair_waits << " time(s); " << total.storm_pauses
                      << " notify-storm pause(s)";
}

// The counters of a connection whose queues have all ended stay with the
// vbd: its statistics cover its whole life, as xentop and Prometheus expect
// of a counter.
void vbd::retire_rings() {
  for (const live_ring& r : live_) retired_ += snapshot(*r.counters).retired();
  live_.clear();
}

vbd_report vbd::report() const {
  vbd_report r;
  r.type = id_.type;
  r.domid = id_.frontend_domid;
  r.devid = id_.devid;
  r.dev = dev_;
  r.state = to_string(state_);
  r.frontend_state = to_string(fe_seen_);
  r.params = params_;
  if (store_) {
    r.backing = store_->name();
    r.direct = store_->props().direct;
    r.sector_size = offer_.limits.sector_size;
    r.writable = !offer_.limits.readonly;
  }
  r.sectors = offer_.limits.sectors;
  r.connections = connections_;
  r.connected = !live_.empty();
  if (r.connected) {
    r.protocol = to_string(layout_);
    r.ring_order = ring_order_;
  }
  if (memory_) {
    const auto u = memory_->usage();
    r.buffer_committed = u.committed;
    r.buffer_peak = u.peak;
  }
  ring_stats total = retired_;
  for (std::size_t i = 0; i < live_.size(); ++i) {
    const ring_stats ring = snapshot(*live_[i].counters);
    total += ring;
    r.queues.push_back({static_cast<unsigned>(i), live_[i].entries, live_[i].port, view(ring)});
  }
  r.total = view(total);
  return r;
}

}  // namespace xbd::blkback
