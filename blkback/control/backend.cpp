#include "blkback/control/backend.hpp"

#include <algorithm>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <set>

namespace xbd::blkback {

namespace asio = boost::asio;
using asio_xen::error_code;

namespace {

logger& backend_log() {
  static logger lg;
  return lg;
}

// Directory entries that are numbers; anything else a toolstack (or worse)
// put there is ignored.
std::vector<unsigned> numeric_children(asio_xen::xenstore& xs, const std::string& path) {
  std::vector<unsigned> out;
  auto names = xs.directory(path);
  if (!names) {
    // ENOENT: the directory went between two listings. Anything else hides
    // the devices below it until the next scan, so it is said.
    if (names.error() != boost::system::errc::no_such_file_or_directory)
      XBD_LOG(backend_log(), warning) << "cannot list " << path << ": " << names.error().what();
    return out;
  }
  for (const auto& n : *names) {
    auto v = asio_xen::parse_value<unsigned>(n);
    if (v) out.push_back(*v);
  }
  return out;
}

}  // namespace

std::size_t backend::active() const {
  std::size_t n = 0;
  for (const auto& [id, e] : devices_) n += e.finished ? 0 : 1;
  return n;
}

std::vector<vbd_report> backend::reports() const {
  std::vector<vbd_report> out;
  out.reserve(devices_.size());
  for (const auto& [id, e] : devices_) {
    out.push_back(e.device->report());
    out.back().served = !e.finished;
  }
  return out;
}

backend::limits_answer backend::limits(const vbd_id& id, const std::optional<throttle_settings>& change) {
  const auto it = devices_.find(id);
  if (it == devices_.end()) return {{}, "no such vbd"};
  vbd& v = *it->second.device;
  if (change) {
    if (std::string e = v.change_limits(*change); !e.empty()) return {{}, std::move(e)};
    // The other vbds of a named group take the same numbers (not the
    // group: that is each vbd's own choice).
    throttle_settings numbers = *change;
    numbers.group.reset();
    const std::string& key = v.throttle_key();
    if (!key.empty() && !numbers.empty()) {
      for (auto& [other, e] : devices_)
        if (other != id && e.device->throttle_key() == key) (void)e.device->change_limits(numbers);
      // The group's limits are the last set: this vbd's, as asked.
      (void)v.change_limits({});
    }
  }
  vbd_report r = v.report();
  r.served = !it->second.finished;
  return {limits_json(r, v.limits()), {}};
}

void backend::shutdown() {
  shutdown_ = true;
  for (auto& [id, e] : devices_)
    if (!e.finished) e.device->shutdown();
  if (watch_) watch_->poke();
}

void backend::check_sizes() {
  for (auto& [id, e] : devices_)
    if (!e.finished) e.device->poll_size(ex_);
}

asio::awaitable<void> backend::poll_sizes() {
  asio::steady_timer timer(ex_);
  while (!shutdown_) {
    timer.expires_after(std::chrono::seconds(ctx_.cfg.resize_poll_seconds));
    co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    // The cheap look (vbd::poll_size): with a thousand idle vbds a step of
    // each through xenstore every second was most of the daemon's idle CPU.
    if (!shutdown_) check_sizes();
  }
}

void backend::start(const vbd_id& id) {
  auto& e = devices_[id];
  e.device = std::make_unique<vbd>(ctx_, id);
  e.finished = false;
  vbd* v = e.device.get();
  v->on_settled = [this] {
    if (watch_) watch_->poke();
  };
  asio::co_spawn(ex_, v->run(), [this, id](std::exception_ptr ex) {
    auto it = devices_.find(id);
    if (it != devices_.end()) it->second.finished = true;
    if (ex) {
      try {
        std::rethrow_exception(ex);
      } catch (const std::exception& x) {
        XBD_LOG(backend_log(), error) << "device " << id.type << "/" << id.frontend_domid << "/" << id.devid
                                      << " ended with an internal error: " << x.what();
      }
    }
    if (watch_) watch_->poke();  // rescan: the directory may be gone already
  });
}

// Readiness once every device of the first scan has been picked up, and
// the count whenever it changes.
void backend::report() {
  const bool all_settled = std::all_of(devices_.begin(), devices_.end(),
                                       [](const auto& d) { return d.second.finished || d.second.device->settled(); });
  const std::size_t n = active();
  if (!ready_ && all_settled) {
    ready_ = true;
    if (on_ready) on_ready(n);
  }
  if (ready_ && n != last_count_) {
    last_count_ = n;
    if (on_count) on_count(n);
  }
}

void backend::scan() {
  const std::string base = "/local/domain/" + std::to_string(ctx_.own_domid) + "/backend/";
  std::set<vbd_id> present;
  for (const auto& type : ctx_.cfg.backend_types)
    for (unsigned dom : numeric_children(ctx_.xs, base + type))
      for (unsigned dev : numeric_children(ctx_.xs, base + type + "/" + std::to_string(dom)))
        present.insert(vbd_id{type, dom, dev});
  for (auto it = devices_.begin(); it != devices_.end();) {
    // A finished device is forgotten once its directory is gone, so that a
    // new one at the same place starts afresh.
    if (it->second.finished && !present.count(it->first))
      it = devices_.erase(it);
    else
      ++it;
  }
  for (const auto& id : present)
    if (!devices_.count(id)) start(id);
}

asio::awaitable<void> backend::run() {
  using namespace asio::experimental::awaitable_operators;
  auto& lg = backend_log();
  ex_ = co_await asio::this_coro::executor;
  const std::string base = "/local/domain/" + std::to_string(ctx_.own_domid) + "/backend/";
  auto w = ctx_.xs.watch_path(base + ctx_.cfg.backend_types.at(0));
  if (!w) {
    XBD_LOG(lg, error) << "cannot watch " << base << ctx_.cfg.backend_types[0] << ": " << w.error().what();
    co_return;
  }
  watch_.emplace(std::move(*w));
  for (std::size_t i = 1; i < ctx_.cfg.backend_types.size(); ++i)
    if (error_code ec = watch_->add(base + ctx_.cfg.backend_types[i]))
      XBD_LOG(lg, error) << "cannot watch " << base << ctx_.cfg.backend_types[i] << ": " << ec.what();
  auto released = ctx_.xs.watch_path("@releaseDomain");
  if (!released) XBD_LOG(lg, warning) << "cannot watch @releaseDomain: " << released.error().what();

  XBD_LOG(lg, info) << "serving " << base << "{" << [&] {
    std::string s;
    for (const auto& t : ctx_.cfg.backend_types) s += (s.empty() ? "" : ",") + t;
    return s;
  }() << "}";

  if (ctx_.cfg.resize_poll_seconds > 0) asio::co_spawn(ex_, poll_sizes(), asio::detached);
  while (!shutdown_) {
    scan();
    report();
    if (released) {
      auto which = co_await (watch_->changed() || released->changed());
      if (which.index() == 1) {
        for (auto& [id, e] : devices_)
          if (!e.finished) e.device->check_domain();
      }
    } else {
      co_await watch_->changed();
    }
  }
  // Shutdown: every vbd answers what it has in flight and lets go.
  while (active() > 0) co_await watch_->changed();
  XBD_LOG(lg, info) << "all devices released";
}

}  // namespace xbd::blkback
