#include "asio_xen/xenstore.hpp"

#include "asio_xen/wakeable.hpp"
#include "asio_xen/xen.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/channel.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <unistd.h>
#include <algorithm>
#include <cstdlib>
#include <map>

namespace xbd::asio_xen {

namespace asio = boost::asio;

// ---------------------------------------------------------------------------
// permissions

result<xs_permission> xs_permission::parse(std::string_view text) {
  if (text.size() < 2) return make_error_code(errc::malformed_value);
  xs_permission p;
  switch (text[0]) {
    case 'n':
      p.perm = access::none;
      break;
    case 'r':
      p.perm = access::read;
      break;
    case 'w':
      p.perm = access::write;
      break;
    case 'b':
      p.perm = access::both;
      break;
    default:
      return make_error_code(errc::malformed_value);
  }
  auto id = parse_integer<unsigned>(text.substr(1));
  if (!id) return id.error();
  p.domid = *id;
  return p;
}

std::string xs_permission::to_string() const {
  static constexpr char letters[] = {'n', 'r', 'w', 'b'};
  return letters[static_cast<int>(perm)] + std::to_string(domid);
}

// ---------------------------------------------------------------------------
// libxenstore

namespace {

struct free_deleter {
  void operator()(void* p) const noexcept { std::free(p); }
};

class libxenstore_driver final : public xs_driver {
 public:
  explicit libxenstore_driver(xs_handle* h) : h_(h) {}
  ~libxenstore_driver() override { xs_close(h_); }

  result<std::string> read(transaction_id t, const std::string& path) override {
    unsigned len = 0;
    std::unique_ptr<char, free_deleter> v(static_cast<char*>(xs_read(h_, t, path.c_str(), &len)));
    if (!v) return xen_error(call::xs_read);
    return std::string(v.get(), len);
  }
  error_code write(transaction_id t, const std::string& path, std::string_view value) override {
    if (!xs_write(h_, t, path.c_str(), value.data(), static_cast<unsigned>(value.size())))
      return xen_error(call::xs_write);
    return {};
  }
  error_code mkdir(transaction_id t, const std::string& path) override {
    if (!xs_mkdir(h_, t, path.c_str())) return xen_error(call::xs_mkdir);
    return {};
  }
  error_code rm(transaction_id t, const std::string& path) override {
    if (!xs_rm(h_, t, path.c_str())) return xen_error(call::xs_rm);
    return {};
  }
  // A list longer than one 4 KiB reply: xs_directory gets E2BIG and lists
  // again with XS_DIRECTORY_PART, within the transaction too, as xenstored
  // 4.17 allows (test/integration/test_xenstore.cpp holds it to that).
  result<std::vector<std::string>> directory(transaction_id t, const std::string& path) override {
    unsigned n = 0;
    std::unique_ptr<char*, free_deleter> v(xs_directory(h_, t, path.c_str(), &n));
    if (!v) return xen_error(call::xs_directory);
    return std::vector<std::string>(v.get(), v.get() + n);
  }
  result<std::vector<xs_permission>> get_permissions(transaction_id t, const std::string& path) override {
    unsigned n = 0;
    std::unique_ptr<xs_permissions, free_deleter> v(xs_get_permissions(h_, t, path.c_str(), &n));
    if (!v) return xen_error(call::xs_get_permissions);
    std::vector<xs_permission> out;
    for (unsigned i = 0; i < n; ++i) {
      auto bits = static_cast<unsigned>(v.get()[i].perms) & (XS_PERM_READ | XS_PERM_WRITE);
      out.push_back({v.get()[i].id, static_cast<xs_permission::access>(bits)});
    }
    return out;
  }
  error_code set_permissions(transaction_id t, const std::string& path, std::span<const xs_permission> perms) override {
    std::vector<xs_permissions> raw;
    for (const auto& p : perms) raw.push_back({p.domid, static_cast<unsigned>(p.perm)});
    if (!xs_set_permissions(h_, t, path.c_str(), raw.data(), static_cast<unsigned>(raw.size())))
      return xen_error(call::xs_set_permissions);
    return {};
  }
  result<transaction_id> transaction_start() override {
    xs_transaction_t t = xs_transaction_start(h_);
    if (t == XBT_NULL) return xen_error(call::xs_transaction_start);
    return t;
  }
  error_code transaction_end(transaction_id t, bool abort) override {
    if (!xs_transaction_end(h_, t, abort)) return xen_error(call::xs_transaction_end);
    return {};
  }
  error_code watch(const std::string& path, const std::string& token) override {
    if (!xs_watch(h_, path.c_str(), token.c_str())) return xen_error(call::xs_watch);
    return {};
  }
  error_code unwatch(const std::string& path, const std::string& token) override {
    if (!xs_unwatch(h_, path.c_str(), token.c_str())) return xen_error(call::xs_unwatch);
    return {};
  }
  int watch_fd() override { return xs_fileno(h_); }
  result<bool> is_domain_introduced(unsigned domid) override {
    errno = 0;
    bool known = xs_is_domain_introduced(h_, domid);
    // false with errno set is a failed call, not an answer.
    if (!known && errno != 0 && errno != ENOENT)
      return result<bool>(boost::system::in_place_error, xen_error(call::xs_is_domain_introduced));
    return known;
  }
  result<std::optional<xs_watch_event>> check_watch() override {
    std::unique_ptr<char*, free_deleter> v(xs_check_watch(h_));
    if (!v) {
      if (errno == EAGAIN) return std::optional<xs_watch_event>{};
      return xen_error(call::xs_check_watch);
    }
    return std::optional<xs_watch_event>{xs_watch_event{v.get()[XS_WATCH_PATH], v.get()[XS_WATCH_TOKEN]}};
  }

 private:
  xs_handle* h_;
};

}  // namespace

result<std::unique_ptr<xs_driver>> open_libxenstore() {
  // XS_UNWATCH_FILTER: after xs_unwatch no event for that watch is delivered,
  // so a token can be reused safely.
  xs_handle* h = xs_open(XS_UNWATCH_FILTER);
  if (!h) return xen_error(call::xs_open);
  return std::unique_ptr<xs_driver>(new libxenstore_driver(h));
}

// ---------------------------------------------------------------------------
// xs_view

result<std::string> xs_view::read(std::string_view path) const { return driver_->read(tid_, std::string(path)); }
error_code xs_view::write(std::string_view path, std::string_view value) const {
  return driver_->write(tid_, std::string(path), value);
}
error_code xs_view::mkdir(std::string_view path) const { return driver_->mkdir(tid_, std::string(path)); }
error_code xs_view::rm(std::string_view path) const { return driver_->rm(tid_, std::string(path)); }
result<std::vector<std::string>> xs_view::directory(std::string_view path) const {
  return driver_->directory(tid_, std::string(path));
}
result<std::vector<xs_permission>> xs_view::get_permissions(std::string_view path) const {
  return driver_->get_permissions(tid_, std::string(path));
}
error_code xs_view::set_permissions(std::string_view path, std::span<const xs_permission> perms) const {
  return driver_->set_permissions(tid_, std::string(path), perms);
}

// ---------------------------------------------------------------------------
// watches

using signal_channel = asio::experimental::channel<void(error_code)>;

struct watch::state {
  std::shared_ptr<xenstore::impl> owner;
  std::string token;
  std::vector<std::string> paths;
  // Capacity one: a full channel is a pending change, and further events
  // are coalesced into it.
  signal_channel signal;

  state(std::shared_ptr<xenstore::impl> o, std::string t, asio::any_io_executor ex)
      : owner(std::move(o)), token(std::move(t)), signal(ex, 1) {}
};

struct xenstore::impl : std::enable_shared_from_this<xenstore::impl> {
  std::unique_ptr<xs_driver> driver;
  asio::any_io_executor ex;
  std::optional<wakeable_wait> wake;             // readable with watch events; see wakeable.hpp
  std::map<std::string, watch::state*> watches;  // by token
  std::vector<watch::state*> fired;              // drain()'s scratch
  std::uint64_t next_token = 0;
  std::uint64_t events_read = 0;
  bool pumping = false;
  bool closed = false;

  impl(asio::any_io_executor e, std::unique_ptr<xs_driver> d) : driver(std::move(d)), ex(std::move(e)) {}

  error_code start_pump() {
    if (!wake) {
      auto w = wakeable_wait::create(ex, driver->watch_fd());
      if (!w) return w.error();
      wake.emplace(std::move(*w));
    }
    if (!pumping) {
      pumping = true;
      asio::co_spawn(ex, pump(shared_from_this()), asio::detached);
    }
    return {};
  }

  // Moves events from the connection into the watches' one-slot channels as
  // fast as they come, so that libxenstore's own (unbounded) queue stays
  // short whatever a guest writes.
  static asio::awaitable<void> pump(std::shared_ptr<impl> self) {
    while (!self->closed && !self->watches.empty()) {
      error_code ec = co_await self->wake->wait();
      if (self->closed) break;
      if (ec && ec != asio::error::operation_aborted) break;
      self->drain();
    }
    self->pumping = false;
  }

  // Takes every queued event, then signals each watch that had one once:
  // a waiter woken mid-batch would otherwise be woken again for the rest of
  // the same batch, whose changes it is about to read anyway.
  void drain() {
    fired.clear();
    for (;;) {
      auto ev = driver->check_watch();
      if (!ev || !*ev) break;
      ++events_read;
      auto it = watches.find((*ev)->token);
      if (it != watches.end() && std::find(fired.begin(), fired.end(), it->second) == fired.end())
        fired.push_back(it->second);
    }
    for (auto* s : fired) (void)s->signal.try_send(error_code{});
  }

  void remove(watch::state& s) {
    if (!closed) {
      for (const auto& p : s.paths) (void)driver->unwatch(p, s.token);
    }
    watches.erase(s.token);
    s.signal.close();
    // The pump ends by itself once it sees no watch left.
    if (watches.empty() && wake) wake->wake();
  }

  // After this nothing touches the driver: watches skip unwatch and the
  // pump stops at its next wake-up. The driver goes now rather than with
  // the last watch or the pump's frame.
  void close() {
    closed = true;
    for (auto& [token, s] : watches) s->signal.close();
    watches.clear();
    // A pending pump is woken and lets go of the descriptor itself.
    if (wake) {
      wake->close();
      wake.reset();
    }
    driver.reset();
  }
};

watch::watch(watch&&) noexcept = default;
watch& watch::operator=(watch&& other) noexcept {
  if (this != &other) {
    if (state_) state_->owner->remove(*state_);
    state_ = std::move(other.state_);
  }
  return *this;
}
watch::~watch() {
  if (state_) state_->owner->remove(*state_);
}

const std::string& watch::token() const { return state_->token; }

bool watch::pending() const { return state_->signal.ready(); }

void watch::poke() {
  if (state_) (void)state_->signal.try_send(error_code{});
}

error_code watch::add(std::string_view path) {
  if (state_->owner->closed) return make_error_code(errc::closed);
  std::string p(path);
  if (error_code ec = state_->owner->driver->watch(p, state_->token)) return ec;
  state_->paths.push_back(std::move(p));
  return {};
}

asio::awaitable<error_code> watch::changed() {
  // Keep the state alive even if the watch object is moved from meanwhile.
  auto s = state_;
  auto [ec] = co_await s->signal.async_receive(asio::as_tuple(asio::use_awaitable));
  if (ec == asio::experimental::error::channel_closed) co_return make_error_code(errc::closed);
  co_return ec;
}

xenstore::xenstore(asio::any_io_executor ex, std::unique_ptr<xs_driver> driver)
    : xs_view(driver.get(), no_transaction), impl_(std::make_shared<impl>(std::move(ex), std::move(driver))) {}

xenstore::~xenstore() { impl_->close(); }

result<watch> xenstore::watch_path(std::string_view path) {
  if (impl_->closed) return make_error_code(errc::closed);
  auto s = std::make_shared<watch::state>(impl_, "xbd/" + std::to_string(impl_->next_token++), impl_->ex);
  impl_->watches.emplace(s->token, s.get());
  watch w(s);  // from here on, its destructor unregisters
  if (error_code ec = w.add(path)) return ec;
  if (error_code ec = impl_->start_pump()) return ec;
  return w;
}

std::uint64_t xenstore::events_read() const { return impl_->events_read; }

}  // namespace xbd::asio_xen
