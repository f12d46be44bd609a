// An in-process event channel for unit tests.
//
// One fake_evtchn_bus plays the hypervisor's event-channel table; open(domid)
// gives an evtchn_driver acting as that domain. Semantics are those of Xen
// plus Linux's evtchn device, which is what libxenevtchn exposes:
//  - a port is bound unmasked; an event on an unmasked port is queued for its
//    handle (the descriptor becomes readable) and masks the port;
//  - an event on a masked port is latched and delivered at unmask(), once
//    however many arrived (event channels are level, not counting);
//  - bind_interdomain needs a port of the remote domain that is unbound and
//    open to the caller, else EINVAL; unbinding one end returns the other to
//    unbound, open to the same domain, so a restarted peer can bind again.
#pragma once

#include "asio_xen/evtchn.hpp"

#include <deque>
#include <map>
#include <memory>
#include <mutex>

namespace xbd::fakes {

class fake_evtchn_bus {
 public:
  fake_evtchn_bus() = default;
  fake_evtchn_bus(const fake_evtchn_bus&) = delete;
  fake_evtchn_bus& operator=(const fake_evtchn_bus&) = delete;

  std::unique_ptr<asio_xen::evtchn_driver> open(unsigned domid);

  // Fault knobs: the next `n` notifications are lost.
  void drop_next_notifications(unsigned n);
  // Raises an event on (domid, port) as if its peer had notified.
  void raise(unsigned domid, asio_xen::evtchn_port port);

  // Notifications sent so far (delivered, latched or dropped).
  std::uint64_t notifications() const;
  // Whether (domid, port) exists / is masked / has a latched event.
  bool bound(unsigned domid, asio_xen::evtchn_port port) const;
  bool masked(unsigned domid, asio_xen::evtchn_port port) const;
  bool latched(unsigned domid, asio_xen::evtchn_port port) const;

  class handle;

 private:
  friend class handle;
  enum class state { unbound, interdomain };
  struct port_state {
    state st = state::unbound;
    unsigned remote_domid = 0;
    asio_xen::evtchn_port remote_port = 0;
    bool masked = false;
    bool latched = false;
    handle* owner = nullptr;
  };
  using key = std::pair<unsigned, asio_xen::evtchn_port>;

  void deliver_locked(const key& k);
  port_state* find_locked(const key& k);

  mutable std::mutex mu_;
  std::map<key, port_state> ports_;
  std::map<unsigned, asio_xen::evtchn_port> next_port_;
  unsigned drop_ = 0;
  std::uint64_t notifications_ = 0;
};

}  // namespace xbd::fakes
