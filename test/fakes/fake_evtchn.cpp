#include "test/fakes/fake_evtchn.hpp"

#include <sys/eventfd.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <vector>

namespace xbd::fakes {

using asio_xen::error_code;
using asio_xen::evtchn_port;
using asio_xen::result;

namespace {
error_code err(int e) { return {e, boost::system::generic_category()}; }
}  // namespace

class fake_evtchn_bus::handle final : public asio_xen::evtchn_driver {
 public:
  handle(fake_evtchn_bus& bus, unsigned domid) : bus_(bus), domid_(domid), efd_(::eventfd(0, EFD_NONBLOCK)) {}

  ~handle() override {
    std::vector<evtchn_port> mine;
    {
      std::lock_guard lock(bus_.mu_);
      for (auto& [k, p] : bus_.ports_)
        if (p.owner == this) mine.push_back(k.second);
    }
    for (auto p : mine) (void)unbind(p);
    ::close(efd_);
  }

  int fd() override { return efd_; }

  result<evtchn_port> bind_unbound_port(unsigned remote_domid) override {
    std::lock_guard lock(bus_.mu_);
    evtchn_port p = allocate();
    auto& s = bus_.ports_[{domid_, p}];
    s.st = state::unbound;
    s.remote_domid = remote_domid;
    s.owner = this;
    return p;
  }

  result<evtchn_port> bind_interdomain(unsigned remote_domid, evtchn_port remote_port) override {
    std::lock_guard lock(bus_.mu_);
    auto* r = bus_.find_locked({remote_domid, remote_port});
    if (!r || r->st != state::unbound || r->remote_domid != domid_) return err(EINVAL);
    evtchn_port p = allocate();
    auto& s = bus_.ports_[{domid_, p}];
    s.st = state::interdomain;
    s.remote_domid = remote_domid;
    s.remote_port = remote_port;
    s.owner = this;
    r->st = state::interdomain;
    r->remote_port = p;
    return p;
  }

  error_code unbind(evtchn_port port) override {
    std::lock_guard lock(bus_.mu_);
    auto it = bus_.ports_.find({domid_, port});
    if (it == bus_.ports_.end() || it->second.owner != this) return err(EINVAL);
    if (it->second.st == state::interdomain) {
      if (auto* peer = bus_.find_locked({it->second.remote_domid, it->second.remote_port})) {
        peer->st = state::unbound;
        peer->remote_domid = domid_;
      }
    }
    bus_.ports_.erase(it);
    std::erase(queue_, port);
    if (queue_.empty()) drain_fd();
    return {};
  }

  error_code notify(evtchn_port port) override {
    std::lock_guard lock(bus_.mu_);
    auto* s = bus_.find_locked({domid_, port});
    if (!s || s->owner != this) return err(EINVAL);
    ++bus_.notifications_;
    if (s->st != state::interdomain) return {};  // nobody there yet: lost, as on Xen
    if (bus_.drop_ > 0) {
      --bus_.drop_;
      return {};
    }
    bus_.deliver_locked({s->remote_domid, s->remote_port});
    return {};
  }

  result<std::optional<evtchn_port>> pending() override {
    std::lock_guard lock(bus_.mu_);
    if (queue_.empty()) return std::optional<evtchn_port>{};
    evtchn_port p = queue_.front();
    queue_.pop_front();
    if (queue_.empty()) drain_fd();
    return std::optional<evtchn_port>{p};
  }

  error_code unmask(evtchn_port port) override {
    std::lock_guard lock(bus_.mu_);
    auto* s = bus_.find_locked({domid_, port});
    if (!s || s->owner != this) return err(EINVAL);
    s->masked = false;
    if (s->latched) {
      s->latched = false;
      bus_.deliver_locked({domid_, port});
    }
    return {};
  }

  // With the bus locked.
  void enqueue(evtchn_port p) {
    if (queue_.empty()) {
      std::uint64_t one = 1;
      (void)!::write(efd_, &one, sizeof one);
    }
    queue_.push_back(p);
  }

 private:
  evtchn_port allocate() {
    auto& n = bus_.next_port_[domid_];
    if (n == 0) n = 1;  // port 0 is never valid
    return n++;
  }
  void drain_fd() {
    std::uint64_t v;
    (void)!::read(efd_, &v, sizeof v);
  }

  fake_evtchn_bus& bus_;
  unsigned domid_;
  int efd_;
  std::deque<evtchn_port> queue_;
};

std::unique_ptr<asio_xen::evtchn_driver> fake_evtchn_bus::open(unsigned domid) {
  return std::make_unique<handle>(*this, domid);
}

fake_evtchn_bus::port_state* fake_evtchn_bus::find_locked(const key& k) {
  auto it = ports_.find(k);
  return it == ports_.end() ? nullptr : &it->second;
}

void fake_evtchn_bus::deliver_locked(const key& k) {
  auto* s = find_locked(k);
  if (!s) return;
  if (s->masked) {
    s->latched = true;
    return;
  }
  s->masked = true;
  s->owner->enqueue(k.second);
}

void fake_evtchn_bus::drop_next_notifications(unsigned n) {
  std::lock_guard lock(mu_);
  drop_ = n;
}

void fake_evtchn_bus::raise(unsigned domid, evtchn_port port) {
  std::lock_guard lock(mu_);
  deliver_locked({domid, port});
}

std::uint64_t fake_evtchn_bus::notifications() const {
  std::lock_guard lock(mu_);
  return notifications_;
}

bool fake_evtchn_bus::bound(unsigned domid, evtchn_port port) const {
  std::lock_guard lock(mu_);
  auto it = ports_.find({domid, port});
  return it != ports_.end() && it->second.st == state::interdomain;
}

bool fake_evtchn_bus::masked(unsigned domid, evtchn_port port) const {
  std::lock_guard lock(mu_);
  auto it = ports_.find({domid, port});
  return it != ports_.end() && it->second.masked;
}

bool fake_evtchn_bus::latched(unsigned domid, evtchn_port port) const {
  std::lock_guard lock(mu_);
  auto it = ports_.find({domid, port});
  return it != ports_.end() && it->second.latched;
}

}  // namespace xbd::fakes
