#include "asio_xen/evtchn.hpp"

#include "asio_xen/xen.hpp"

#include <boost/asio/use_awaitable.hpp>

#include <fcntl.h>
#include <unistd.h>

namespace xbd::asio_xen {

namespace asio = boost::asio;

namespace {

class libxenevtchn_driver final : public evtchn_driver {
 public:
  explicit libxenevtchn_driver(xenevtchn_handle* h) : h_(h) {}
  ~libxenevtchn_driver() override { xenevtchn_close(h_); }

  int fd() override { return xenevtchn_fd(h_); }
  result<evtchn_port> bind_interdomain(unsigned remote_domid, evtchn_port remote_port) override {
    xenevtchn_port_or_error_t p = xenevtchn_bind_interdomain(h_, remote_domid, remote_port);
    if (p < 0) return xen_error(call::xenevtchn_bind_interdomain);
    return static_cast<evtchn_port>(p);
  }
  result<evtchn_port> bind_unbound_port(unsigned remote_domid) override {
    xenevtchn_port_or_error_t p = xenevtchn_bind_unbound_port(h_, remote_domid);
    if (p < 0) return xen_error(call::xenevtchn_bind_unbound_port);
    return static_cast<evtchn_port>(p);
  }
  error_code unbind(evtchn_port port) override {
    if (xenevtchn_unbind(h_, port) < 0) return xen_error(call::xenevtchn_unbind);
    return {};
  }
  error_code notify(evtchn_port port) override {
    if (xenevtchn_notify(h_, port) < 0) return xen_error(call::xenevtchn_notify);
    return {};
  }
  result<std::optional<evtchn_port>> pending() override {
    xenevtchn_port_or_error_t p = xenevtchn_pending(h_);
    if (p < 0) {
      if (errno == EAGAIN) return std::optional<evtchn_port>{};
      return xen_error(call::xenevtchn_pending);
    }
    return std::optional<evtchn_port>{static_cast<evtchn_port>(p)};
  }
  error_code unmask(evtchn_port port) override {
    if (xenevtchn_unmask(h_, port) < 0) return xen_error(call::xenevtchn_unmask);
    return {};
  }

 private:
  xenevtchn_handle* h_;
};

}  // namespace

result<std::unique_ptr<evtchn_driver>> open_libxenevtchn() {
  xenevtchn_handle* h = xenevtchn_open(nullptr, 0);
  if (!h) return xen_error(call::xenevtchn_open);
  return std::unique_ptr<evtchn_driver>(new libxenevtchn_driver(h));
}

event_channel::event_channel(std::unique_ptr<evtchn_driver> d, evtchn_port port, wakeable_wait w)
    : driver_(std::move(d)), port_(port), wait_(std::move(w)) {}

// pending() reads the device: it must answer EAGAIN rather than block when
// the readiness was spurious. The flag is on the open file description.
result<event_channel> event_channel::make(asio::any_io_executor ex, std::unique_ptr<evtchn_driver> d,
                                          evtchn_port port) {
  const int fd = d->fd();
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    error_code ec = xen_error(call::xenevtchn_open);
    (void)d->unbind(port);
    return ec;
  }
  auto w = wakeable_wait::create(std::move(ex), fd);
  if (!w) {
    (void)d->unbind(port);
    return w.error();
  }
  return event_channel(std::move(d), port, std::move(*w));
}

result<event_channel> event_channel::bind_interdomain(asio::any_io_executor ex, std::unique_ptr<evtchn_driver> driver,
                                                      unsigned remote_domid, evtchn_port remote_port) {
  auto port = driver->bind_interdomain(remote_domid, remote_port);
  if (!port) return port.error();
  return make(std::move(ex), std::move(driver), *port);
}

result<event_channel> event_channel::bind_unbound(asio::any_io_executor ex, std::unique_ptr<evtchn_driver> driver,
                                                  unsigned remote_domid) {
  auto port = driver->bind_unbound_port(remote_domid);
  if (!port) return port.error();
  return make(std::move(ex), std::move(driver), *port);
}

event_channel& event_channel::operator=(event_channel&& other) noexcept {
  if (this != &other) {
    close();
    driver_ = std::move(other.driver_);
    port_ = other.port_;
    wait_ = std::move(other.wait_);
    other.wait_.reset();
    events_ = other.events_;
  }
  return *this;
}

event_channel::~event_channel() { close(); }

// The wait's descriptors go first (a pending wait is woken and lets go of
// them itself), then the binding and the handle.
void event_channel::close() {
  if (wait_) {
    wait_->close();
    wait_.reset();
  }
  if (driver_) {
    (void)driver_->unbind(port_);
    driver_.reset();
  }
}

error_code event_channel::notify() {
  if (!driver_) return make_error_code(errc::closed);
  return driver_->notify(port_);
}

void event_channel::cancel() {
  if (wait_) wait_->wake();
}

asio::awaitable<error_code> event_channel::wait() {
  for (;;) {
    if (!driver_ || !wait_) co_return make_error_code(errc::closed);
    // The descriptor is readable for as long as an event is pending, so an
    // event that came before this wait completes it at once.
    if (error_code ec = co_await wait_->wait()) co_return ec;
    if (!driver_) co_return make_error_code(errc::closed);
    auto p = driver_->pending();
    if (!p) co_return p.error();
    if (!*p) continue;  // spurious readiness
    // Re-arm first, then let the caller drain: see the header.
    if (error_code e = driver_->unmask(**p)) co_return e;
    // A handle serves one port; another one here would be a stale event
    // from an earlier binding, which the unmask above cleared.
    if (**p != port_) continue;
    ++events_;
    co_return error_code{};
  }
}

}  // namespace xbd::asio_xen
