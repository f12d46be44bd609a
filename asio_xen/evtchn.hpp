// evtchn: one bound event channel port as an Asio I/O object.
//
// Each ring gets its own handle (its own open of the event-channel device) so
// that its descriptor becomes readable only for its own port and the ring's
// coroutine can wait on it alone.
#pragma once

#include "asio_xen/error.hpp"
#include "asio_xen/wakeable.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <memory>
#include <optional>

namespace xbd::asio_xen {

using evtchn_port = std::uint32_t;

// The xenevtchn_* call surface of one handle. The real one wraps
// libxenevtchn; test/fakes has an in-process one with the same semantics:
// a delivered event leaves the port masked until unmask(), and an event that
// arrives while masked is latched and delivered at unmask().
class evtchn_driver {
 public:
  virtual ~evtchn_driver() = default;
  // Readable whenever pending() has a port to return.
  virtual int fd() = 0;
  virtual result<evtchn_port> bind_interdomain(unsigned remote_domid, evtchn_port remote_port) = 0;
  virtual result<evtchn_port> bind_unbound_port(unsigned remote_domid) = 0;
  virtual error_code unbind(evtchn_port port) = 0;
  virtual error_code notify(evtchn_port port) = 0;
  // The next port with a delivered event (now masked), or nullopt if none.
  virtual result<std::optional<evtchn_port>> pending() = 0;
  virtual error_code unmask(evtchn_port port) = 0;
};

// libxenevtchn: xenevtchn_open().
result<std::unique_ptr<evtchn_driver>> open_libxenevtchn();

class event_channel {
 public:
  // The backend side: bind to the port a frontend allocated.
  static result<event_channel> bind_interdomain(boost::asio::any_io_executor ex, std::unique_ptr<evtchn_driver> driver,
                                                unsigned remote_domid, evtchn_port remote_port);
  // The frontend side (tests, simulators): allocate a port for `remote_domid`.
  static result<event_channel> bind_unbound(boost::asio::any_io_executor ex, std::unique_ptr<evtchn_driver> driver,
                                            unsigned remote_domid);

  event_channel(event_channel&&) noexcept = default;
  event_channel& operator=(event_channel&&) noexcept;
  ~event_channel();

  evtchn_port local_port() const { return port_; }
  error_code notify();

  // Waits for the next event on the port and re-arms it before returning:
  // pending() takes the event (the port is now masked), unmask() re-enables
  // delivery. Anything the peer signals after this returns wakes the next
  // wait(), and anything signalled between pending() and unmask() is latched
  // by the mask and delivered at unmask(), so no event is lost. The caller
  // then drains its ring with a final check (ring.h), so events that
  // overlap the drain cost at most one spurious wake-up.
  boost::asio::awaitable<error_code> wait();

  // Ends a wait() in progress (or the next one) with operation_aborted.
  // A wake-up, not an Asio cancel: see wakeable.hpp for why.
  void cancel();
  // Unbinds and closes now (the destructor does the same).
  void close();

  // Events taken so far (statistics and tests).
  std::uint64_t events() const { return events_; }

 private:
  event_channel(std::unique_ptr<evtchn_driver> d, evtchn_port port, wakeable_wait w);
  static result<event_channel> make(boost::asio::any_io_executor ex, std::unique_ptr<evtchn_driver> d,
                                    evtchn_port port);

  std::unique_ptr<evtchn_driver> driver_;
  evtchn_port port_ = 0;
  std::optional<wakeable_wait> wait_;
  std::uint64_t events_ = 0;
};

}  // namespace xbd::asio_xen
