// libxenevtchn: Xen's event channels as seen through Linux's evtchn device.
//
// A port's delivery state is one 64-bit word in the domain file (Port::ev):
// Xen's pending and mask bits, a "queued" bit standing for the port sitting
// in the evtchn device's ring, and the handle it is bound to. Linux masks a
// port when it queues it (lateeoi: the port stays masked until the user
// unmasks it), so:
//   event on an unmasked port  -> masked + queued, handle woken
//   event on a masked port     -> pending latched (coalesced)
//   unmask with pending        -> stays masked, queued again, handle woken
//   unmask without pending     -> unmasked
// No event is lost: whatever arrives while masked is seen at unmask.
//
// Each handle owns a FIFO in the simulation directory (xensim.ev<uid>),
// opened O_RDWR as its xenevtchn_fd() (so it never reports HUP when writers
// come and go). HandleSlot::ready counts its queued ports; the producer that
// takes it from 0 to 1 writes one byte (the only syscall on the notify path:
// ~0.6 us here, against ~1.3 us for a datagram socket) and the consumer that
// takes it back to 0 drains the FIFO, so the descriptor is readable exactly
// while a port is queued. No daemon sits on the path. Producers keep an
// O_RDWR descriptor on each FIFO they wake, so a vanished reader can never
// raise SIGPIPE; a stale one is noticed by the handle's uid changing.
//
// Unbinding a queued port: Linux's evtchn device leaves the port in the
// handle's ring, and read() still returns it (a stale port, which callers
// ignore). So does the sim: unbind keeps the port's count in `ready` and
// remembers the port in the handle (`stale`), and pending() hands it out
// like any queued port. The count and the descriptor's readiness stay
// exact, and a caller woken for that port is never left blocking.
//
// pending() never blocks after finding the count above zero with no port
// behind it. Linux cannot get there (its ring is the count); the sim can
// through a producer racing a close (it marks a port queued, the
// port is closed and its handle slot reused, then it counts the wake-up
// against the new handle), and after a repair (below). The stray count is
// dropped and pending() answers -1/EAGAIN even on a blocking descriptor:
// the caller was woken by that count, and waiting on would wait for an
// event nobody sent. Likewise for a byte in the FIFO with nothing counted.
//
// A producer killed in the middle of a delivery. Xen's send is a hypercall
// and Linux queues from the interrupt: neither can be cut. Here a delivery
// is three steps in the producer (the port's CAS, the count, the FIFO
// byte), and SIGKILL can land between them: a port queued but not counted,
// or counted (0 -> 1) without the byte. Either strands the handle for good:
// the port stays masked, so later events only latch on it, and nobody
// writes the byte that would wake the consumer (seen in the daemon's
// recovery soak: a frontend's two queues unanswered, its port masked,
// pending and queued, the count at 2, the FIFO empty). So when dead
// processes are reaped, every live handle is repaired: its queued ports are
// counted again (too many counts are harmless, dropped as stray ones; too
// few are not), and it is woken if anything is counted. Reaping is lazy
// (a process joining or binding, xensim_reap()), as a restarted backend
// does at once. XENSIM_DIE_AT=notify_queued / notify_counted kills a
// producer at either step, for the tests.
#include "internal.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <deque>

using namespace xensim;

struct xenevtchn_handle {
  Ctx* ctx;
  std::uint32_t domid;
  std::uint32_t hslot;
  std::uint64_t uid;
  std::uint64_t fork_gen;
  int fd;   // the user's: blocking or not as they set it
  int pfd;  // ours, on the same FIFO: non-blocking drains and self-wakes
  int restrict_domid = -1;
  std::mutex mu;  // ports, cursor, stale
  std::vector<std::uint32_t> ports;
  // Ports unbound while queued, still to be returned by pending(), oldest
  // first (Linux's ring keeps them); each is counted in HandleSlot::ready.
  std::deque<std::uint32_t> stale;
  std::size_t cursor = 0;
  std::uint64_t bound[kNrPorts / 64] = {};  // atomically read by notify/unmask
};

namespace xensim {

namespace {

std::string fifo_name(std::uint64_t uid) {
  char n[48];
  std::snprintf(n, sizeof n, "xensim.ev%llx", static_cast<unsigned long long>(uid));
  return n;
}

void poke(int fd) {
  char b = 0;
  // EAGAIN: the FIFO is full, hence readable anyway.
  [[maybe_unused]] ssize_t n = write(fd, &b, 1);
}

// Empties the FIFO; true if there was anything in it (a wake-up).
bool drain(int pfd) {
  char buf[64];
  bool any = false;
  for (;;) {
    const ssize_t n = read(pfd, buf, sizeof buf);
    any |= n > 0;
    if (n != static_cast<ssize_t>(sizeof buf)) return any;
  }
}

bool is_bound(xenevtchn_handle* h, std::uint32_t port) {
  return port < kNrPorts && (ld(&h->bound[port / 64]) >> (port % 64) & 1);
}

void mark_bound(xenevtchn_handle* h, std::uint32_t port, bool on) {
  if (on)
    fetch_or(&h->bound[port / 64], 1ull << (port % 64));
  else
    fetch_and(&h->bound[port / 64], ~(1ull << (port % 64)));
}

bool usable(xenevtchn_handle* h) {
  if (!h) {
    errno = EINVAL;
    return false;
  }
  if (h->fork_gen != fork_generation()) {
    // The header forbids using a parent's handle after fork.
    errno = EBADF;
    return false;
  }
  return true;
}

// Lowest free port (port 0 is reserved, as in Xen). Under the global lock.
std::uint32_t port_alloc_locked(Dom& d) {
  for (std::uint32_t p = 1; p < kNrPorts; ++p)
    if (ld(&d.ports[p].state) == kFree) return p;
  return 0;
}

void port_own_locked(Ctx& c, xenevtchn_handle* h, Dom& d, std::uint32_t port, std::uint32_t rec) {
  Port& p = d.ports[port];
  p.owner_proc = c.slot;
  p.owner_gen = c.gen;
  p.rec = rec;
  Rec& r = c.recs[rec];
  r.domid = d.domid;
  r.port = port;
  st(&r.kind, std::uint32_t{kRecPort});
  st(&p.ev, std::uint64_t{h->hslot + 1} << 32);
}

void add_port(xenevtchn_handle* h, std::uint32_t port) {
  std::lock_guard lk(h->mu);
  h->ports.push_back(port);
  mark_bound(h, port, true);
}

// Writes one byte to the FIFO of handle `hslot`, through our descriptor on it.
void poke_handle(Ctx& c, std::uint32_t hslot) {
  HandleSlot& hs = c.hdr->handles[hslot];
  std::uint64_t uid = ld(&hs.uid);
  std::lock_guard lk(c.wake_mu[hslot % Ctx::kWakeLocks]);
  WakeFd& w = c.wake[hslot];
  if (w.uid != uid) {
    if (w.fd >= 0) close(w.fd);
    // ENOENT: the handle is gone; nothing to wake.
    w.fd = openat(c.dirfd, fifo_name(uid).c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
    w.uid = uid;
  }
  if (w.fd >= 0) poke(w.fd);
}

}  // namespace

void wake_handle(Ctx& c, std::uint32_t hslot) {
  if (fetch_add(&c.hdr->handles[hslot].ready, 1) != 0) return;
  die_at(c, kDieNotifyCounted);
  poke_handle(c, hslot);
}

void rewake_handles_locked(Ctx& c) {
  for (std::uint32_t i = 0; i < kMaxHandles; ++i) {
    HandleSlot& hs = c.hdr->handles[i];
    if (!ld(&hs.in_use)) continue;
    Dom* d = domain(c, hs.domid, false);
    if (!d) continue;
    const std::uint64_t mine = std::uint64_t{i + 1} << 32;
    std::int32_t queued = 0;
    for (std::uint32_t p = 1; p < kNrPorts; ++p) {
      const std::uint64_t e = ld(&d->ports[p].ev);
      if ((e & ~0xffffffffull) == mine && (e & kEvQueued)) ++queued;
    }
    // Counted again: an extra count is dropped by pending() as a stray one,
    // a missing one would strand the port. Woken whenever something is
    // counted: an extra byte only makes pending() answer EAGAIN once.
    if (queued) fetch_add(&hs.ready, queued);
    if (ld(&hs.ready) > 0) poke_handle(c, i);
  }
}

void handle_files_gone(Ctx& c, std::uint64_t uid) { unlinkat(c.dirfd, fifo_name(uid).c_str(), 0); }

void evtchn_deliver(Ctx& c, Dom& d, std::uint32_t port) {
  if (port >= kNrPorts) return;
  Port& p = d.ports[port];
  std::uint64_t e = ld(&p.ev);
  for (;;) {
    std::uint64_t slot = e >> 32;
    if (!slot || (e & kEvPending)) return;  // nobody to tell, or already latched
    std::uint64_t n;
    bool queue = false;
    if (e & kEvMasked) {
      n = e | kEvPending;
    } else {
      n = e | kEvMasked | kEvQueued;
      queue = !(e & kEvQueued);
    }
    if (cas(&p.ev, e, n)) {
      if (queue) {
        die_at(c, kDieNotifyQueued);
        wake_handle(c, static_cast<std::uint32_t>(slot - 1));
      }
      return;
    }
  }
}

void port_send(Ctx& c, Dom& d, std::uint32_t port, bool faults) {
  if (port >= kNrPorts) return;
  Port& p = d.ports[port];
  if (ld(&p.state) != kInterdomain) return;  // Xen drops a send on an unbound port
  std::uint32_t rdom = p.remote_dom, rport = p.remote_port;
  Dom* rd = domain(c, rdom, false);
  if (!rd) return;
  FaultHit f;
  if (faults) f = fault_check(c, kCntNotify);
  if (f.fail) return;
  if (f.delay) {
    std::uint32_t us = fault_delay_us(c);
    schedule_delayed(c, rdom, rport, us);
    if (f.dup) schedule_delayed(c, rdom, rport, us);
    return;
  }
  evtchn_deliver(c, *rd, rport);
  // A second event right behind the first: latched while the port is masked
  // from the first, so the peer sees it again after unmasking.
  if (f.dup) evtchn_deliver(c, *rd, rport);
}

// Our descriptors on FIFOs of handles that are gone (closed, or their
// process died) are closed, so that a long-lived process such as a backend
// does not keep one for every peer it ever woke. Runs when a port closes.
void forget_stale_wakes(Ctx& c) {
  for (std::uint32_t i = 0; i < kMaxHandles; ++i) {
    WakeFd& w = c.wake[i];
    if (w.fd < 0) continue;
    std::lock_guard lk(c.wake_mu[i % Ctx::kWakeLocks]);
    HandleSlot& hs = c.hdr->handles[i];
    if (w.fd >= 0 && (!ld(&hs.in_use) || ld(&hs.uid) != w.uid)) {
      close(w.fd);
      w = WakeFd{};
    }
  }
}

std::uint64_t port_close_locked(Ctx& c, Dom& d, std::uint32_t port, bool uncount) {
  Port& p = d.ports[port];
  std::uint64_t old = xchg(&p.ev, std::uint64_t{0});
  if (uncount && (old & kEvQueued) && (old >> 32)) fetch_add(&c.hdr->handles[(old >> 32) - 1].ready, -1);
  if (p.state == kInterdomain) {
    // Xen's EVTCHNOP_close: the peer goes back to unbound, open to us, so
    // that it can be bound again (a restarted backend).
    if (Dom* rd = domain(c, p.remote_dom, false); rd && p.remote_port < kNrPorts) {
      Port& rp = rd->ports[p.remote_port];
      if (rp.state == kInterdomain && rp.remote_dom == d.domid && rp.remote_port == port) {
        rp.remote_dom = d.domid;
        rp.remote_port = 0;
        st(&rp.state, std::uint32_t{kUnbound});
      }
    }
  }
  p.remote_dom = p.remote_port = p.virq = 0;
  p.owner_proc = p.owner_gen = p.rec = 0;
  st(&p.state, std::uint32_t{kFree});
  forget_stale_wakes(c);
  return old;
}

std::vector<std::pair<std::uint32_t, std::uint32_t>> bound_ports(Ctx& c) {
  std::vector<std::pair<std::uint32_t, std::uint32_t>> out;
  std::lock_guard lk(c.mu);
  for (xenevtchn_handle* h : c.evtchns) {
    std::lock_guard hl(h->mu);
    for (std::uint32_t p : h->ports) out.emplace_back(h->domid, p);
  }
  return out;
}

}  // namespace xensim

// ------------------------------------------------------------------ API

XENSIM_API xenevtchn_handle* xenevtchn_open(struct xentoollog_logger*, unsigned flags) {
  Ctx* c = context("xenevtchn_open");
  if (!c) return nullptr;
  int domid = env_domid("xenevtchn_open");
  if (domid < 0) return nullptr;
  if (!domain(*c, static_cast<std::uint32_t>(domid), true)) {
    int e = errno;
    log_err("xenevtchn_open: domain %d: %s", domid, std::strerror(e));
    errno = e;
    return nullptr;
  }
  std::uint32_t slot = ~0u;
  std::uint64_t uid = 0;
  {
    GlobalLock g(*c);
    for (std::uint32_t s = 0; s < kMaxHandles; ++s) {
      HandleSlot& hs = c->hdr->handles[s];
      if (hs.in_use) continue;
      uid = c->hdr->next_uid++;
      hs.uid = uid;
      hs.ready = 0;
      hs.proc = c->slot;
      hs.domid = static_cast<std::uint32_t>(domid);
      st(&hs.in_use, 1u);
      slot = s;
      break;
    }
  }
  if (slot == ~0u) {
    errno = EMFILE;
    return nullptr;
  }
  std::string name = fifo_name(uid);
  int fd = -1, pfd = -1;
  if (mkfifoat(c->dirfd, name.c_str(), 0600) == 0) {
    fd = openat(c->dirfd, name.c_str(), O_RDWR | ((flags & XENEVTCHN_NO_CLOEXEC) ? 0 : O_CLOEXEC));
    pfd = openat(c->dirfd, name.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
  }
  if (fd < 0 || pfd < 0) {
    int e = errno;
    if (fd >= 0) close(fd);
    if (pfd >= 0) close(pfd);
    unlinkat(c->dirfd, name.c_str(), 0);
    st(&c->hdr->handles[slot].in_use, 0u);
    errno = e;
    return nullptr;
  }
  auto* h = new xenevtchn_handle;
  h->ctx = c;
  h->domid = static_cast<std::uint32_t>(domid);
  h->hslot = slot;
  h->uid = uid;
  h->fork_gen = fork_generation();
  h->fd = fd;
  h->pfd = pfd;
  {
    std::lock_guard lk(c->mu);
    c->evtchns.push_back(h);
  }
  // The thread that delivers delayed and spurious events and notices knob
  // changes in a process that only waits.
  bg_ensure(*c);
  return h;
}

XENSIM_API xenevtchn_handle* xenevtchn_fdopen(struct xentoollog_logger*, int, unsigned) {
  log_err(
      "xenevtchn_fdopen: not simulated (the descriptor of a simulated handle "
      "cannot be adopted)");
  errno = EOPNOTSUPP;
  return nullptr;
}

XENSIM_API int xenevtchn_close(xenevtchn_handle* h) {
  if (!h) return 0;
  if (h->fork_gen != fork_generation()) {
    // A fork child closing its parent's handle: only the descriptors are ours.
    close(h->fd);
    close(h->pfd);
    delete h;
    return 0;
  }
  Ctx& c = *h->ctx;
  Dom* d = domain(c, h->domid, false);
  {
    std::lock_guard lk(h->mu);  // handle before global lock, as in unbind
    GlobalLock g(c);
    for (std::uint32_t p : h->ports) {
      if (!d) break;
      std::uint32_t rec = d->ports[p].rec;
      port_close_locked(c, *d, p);
      rec_free(c, rec);
    }
    h->ports.clear();
    h->stale.clear();
    handle_files_gone(c, h->uid);
    st(&c.hdr->handles[h->hslot].in_use, 0u);
  }
  {
    std::lock_guard lk(c.mu);
    c.evtchns.erase(std::remove(c.evtchns.begin(), c.evtchns.end(), h), c.evtchns.end());
  }
  close(h->fd);
  close(h->pfd);
  delete h;
  return 0;
}

XENSIM_API int xenevtchn_fd(xenevtchn_handle* h) {
  if (!h) {
    errno = EINVAL;
    return -1;
  }
  return h->fd;
}

XENSIM_API int xenevtchn_notify(xenevtchn_handle* h, evtchn_port_t port) {
  if (!usable(h)) return -1;
  if (!is_bound(h, port)) {
    errno = ENOTCONN;
    return -1;
  }
  Ctx& c = *h->ctx;
  if (Dom* d = domain(c, h->domid, false)) port_send(c, *d, port, true);
  return 0;
}

XENSIM_API xenevtchn_port_or_error_t xenevtchn_bind_unbound_port(xenevtchn_handle* h, uint32_t domid) {
  if (!usable(h)) return -1;
  if (h->restrict_domid >= 0) {
    errno = EACCES;
    return -1;
  }
  if (domid == DOMID_SELF) domid = h->domid;
  if (domid >= kMaxDomid) {
    errno = EINVAL;
    return -1;
  }
  Ctx& c = *h->ctx;
  Dom* d = domain(c, h->domid, false);
  std::uint32_t rec = rec_alloc(c);
  if (!d || rec == ~0u) {
    rec_free(c, rec);
    errno = ENOMEM;
    return -1;
  }
  std::uint32_t port;
  {
    GlobalLock g(c);
    port = port_alloc_locked(*d);
    if (port) {
      Port& p = d->ports[port];
      p.remote_dom = domid;
      p.remote_port = 0;
      st(&p.state, std::uint32_t{kUnbound});
      port_own_locked(c, h, *d, port, rec);
    }
  }
  if (!port) {
    rec_free(c, rec);
    errno = ENOSPC;
    return -1;
  }
  add_port(h, port);
  return static_cast<int>(port);
}

XENSIM_API xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle* h, uint32_t domid,
                                                                evtchn_port_t remote_port) {
  if (!usable(h)) return -1;
  if (h->restrict_domid >= 0 && static_cast<std::uint32_t>(h->restrict_domid) != domid) {
    errno = EACCES;
    return -1;
  }
  Ctx& c = *h->ctx;
  if (domid == DOMID_SELF) domid = h->domid;
  Dom* d = domain(c, h->domid, false);
  Dom* rd = domain(c, domid, false);
  if (!d || !rd) {
    errno = ESRCH;  // Xen: rcu_lock_domain_by_id() failed
    return -1;
  }
  std::uint32_t rec = rec_alloc(c);
  if (rec == ~0u) {
    errno = ENOMEM;
    return -1;
  }
  std::uint32_t port = 0;
  int err = 0;
  {
    GlobalLock g(c);
    // A peer killed while bound still holds the remote port: the kernel
    // would have closed it at exit, returning the remote port to unbound.
    reap_dead_locked(c);
    if (remote_port == 0 || remote_port >= kNrPorts) {
      err = EINVAL;
    } else {
      Port& rp = rd->ports[remote_port];
      if (rp.state != kUnbound || rp.remote_dom != h->domid) {
        err = EINVAL;
      } else if (!(port = port_alloc_locked(*d))) {
        err = ENOSPC;
      } else {
        Port& lp = d->ports[port];
        lp.remote_dom = domid;
        lp.remote_port = remote_port;
        st(&lp.state, std::uint32_t{kInterdomain});
        port_own_locked(c, h, *d, port, rec);
        rp.remote_dom = h->domid;
        rp.remote_port = port;
        st(&rp.state, std::uint32_t{kInterdomain});
      }
    }
  }
  if (err) {
    rec_free(c, rec);
    errno = err;
    return -1;
  }
  add_port(h, port);
  // Xen's evtchn_bind_interdomain sets the new local port pending, in case
  // the peer notified while it was unbound; Linux delivers it on binding.
  evtchn_deliver(c, *d, port);
  return static_cast<int>(port);
}

XENSIM_API xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle* h, unsigned int virq) {
  if (!usable(h)) return -1;
  if (h->restrict_domid >= 0) {
    errno = EACCES;
    return -1;
  }
  if (virq >= kNrVirqs) {
    errno = EINVAL;
    return -1;
  }
  Ctx& c = *h->ctx;
  Dom* d = domain(c, h->domid, false);
  std::uint32_t rec = rec_alloc(c);
  if (!d || rec == ~0u) {
    rec_free(c, rec);
    errno = ENOMEM;
    return -1;
  }
  std::uint32_t port = 0;
  int err = 0;
  {
    GlobalLock g(c);
    reap_dead_locked(c);
    for (std::uint32_t p = 1; p < kNrPorts && !err; ++p)
      if (d->ports[p].state == kVirq && d->ports[p].virq == virq) err = EEXIST;
    if (!err && !(port = port_alloc_locked(*d))) err = ENOSPC;
    if (!err) {
      Port& p = d->ports[port];
      p.virq = virq;
      st(&p.state, std::uint32_t{kVirq});
      port_own_locked(c, h, *d, port, rec);
    }
  }
  if (err) {
    rec_free(c, rec);
    errno = err;
    return -1;
  }
  add_port(h, port);
  return static_cast<int>(port);
}

XENSIM_API int xenevtchn_unbind(xenevtchn_handle* h, evtchn_port_t port) {
  if (!usable(h)) return -1;
  if (port >= kNrPorts) {
    errno = EINVAL;
    return -1;
  }
  Ctx& c = *h->ctx;
  Dom* d = domain(c, h->domid, false);
  {
    std::lock_guard lk(h->mu);
    auto it = std::find(h->ports.begin(), h->ports.end(), port);
    if (it == h->ports.end() || !d) {
      errno = ENOTCONN;
      return -1;
    }
    h->ports.erase(it);
    mark_bound(h, port, false);
    GlobalLock g(c);
    std::uint32_t rec = d->ports[port].rec;
    // A queued port stays in the handle's queue, counted, as it stays in
    // Linux's ring: pending() returns it.
    const std::uint64_t old = port_close_locked(c, *d, port, false);
    if ((old & kEvQueued) && (old >> 32) == std::uint64_t{h->hslot} + 1) h->stale.push_back(port);
    rec_free(c, rec);
  }
  if (ld(&c.hdr->handles[h->hslot].ready) <= 0) drain(h->pfd);
  return 0;
}

XENSIM_API xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle* h) {
  if (!usable(h)) return -1;
  Ctx& c = *h->ctx;
  Dom* d = domain(c, h->domid, false);
  HandleSlot& hs = c.hdr->handles[h->hslot];
  const std::uint64_t mine = std::uint64_t{h->hslot + 1} << 32;
  // One queued port taken off the count; the descriptor stays readable
  // exactly while the count is above zero.
  auto taken = [&](std::uint32_t port) {
    if (fetch_add(&hs.ready, -1) - 1 <= 0) {
      drain(h->pfd);
      // A producer may have queued another port between our decrement and
      // the drain: keep the descriptor readable.
      if (ld(&hs.ready) > 0) poke(h->pfd);
    }
    return static_cast<int>(port);
  };
  for (;;) {
    {
      std::lock_guard lk(h->mu);
      int r = ld(&hs.ready);
      if (r > 0) {
        // Ports unbound while queued come first: they were queued before
        // anything queued since.
        if (!h->stale.empty()) {
          const std::uint32_t port = h->stale.front();
          h->stale.pop_front();
          return taken(port);
        }
        std::size_t n = d ? h->ports.size() : 0;
        for (std::size_t k = 0; k < n; ++k) {
          std::size_t idx = (h->cursor + k) % n;
          std::uint32_t port = h->ports[idx];
          Port& p = d->ports[port];
          std::uint64_t e = ld(&p.ev);
          while ((e & kEvQueued) && (e & ~0xffffffffull) == mine) {
            if (cas(&p.ev, e, e & ~kEvQueued)) {
              h->cursor = idx + 1;  // round robin: a busy port cannot starve the others
              return taken(port);
            }
          }
        }
        // Counted but not found (see the top of this file): forget the
        // stray count and answer at once; never wait after a wake-up.
        if (cas(&hs.ready, r, 0)) {
          drain(h->pfd);
          if (ld(&hs.ready) > 0) {
            poke(h->pfd);
            continue;
          }
          errno = EAGAIN;
          return -1;
        }
        continue;  // the count moved under us: look again
      }
      const bool woken = drain(h->pfd);
      if (ld(&hs.ready) > 0) continue;
      // A wake-up with nothing counted (a handle woken again after a
      // producer died, see the top of this file): answer, never wait.
      if (woken) {
        errno = EAGAIN;
        return -1;
      }
    }
    int fl = fcntl(h->fd, F_GETFL);
    if (fl >= 0 && (fl & O_NONBLOCK)) {
      errno = EAGAIN;
      return -1;
    }
    pollfd pfd{h->pfd, POLLIN, 0};
    if (poll(&pfd, 1, -1) < 0) return -1;  // EINTR, as the device's read()
  }
}

XENSIM_API int xenevtchn_unmask(xenevtchn_handle* h, evtchn_port_t port) {
  if (!usable(h)) return -1;
  // Linux's evtchn write() ignores ports that are not the handle's.
  if (!is_bound(h, port)) return 0;
  Ctx& c = *h->ctx;
  Dom* d = domain(c, h->domid, false);
  if (!d) return 0;
  Port& p = d->ports[port];
  const std::uint64_t mine = std::uint64_t{h->hslot + 1} << 32;
  std::uint64_t e = ld(&p.ev);
  for (;;) {
    if (!(e & kEvMasked) || (e & ~0xffffffffull) != mine) return 0;
    std::uint64_t n;
    bool queue = false;
    if (e & kEvPending) {
      n = (e & ~kEvPending) | kEvQueued;  // latched event: deliver it now
      queue = !(e & kEvQueued);
    } else {
      n = e & ~kEvMasked;
    }
    if (cas(&p.ev, e, n)) {
      if (queue) wake_handle(c, h->hslot);
      return 0;
    }
  }
}

XENSIM_API int xenevtchn_restrict(xenevtchn_handle* h, domid_t domid) {
  if (!usable(h)) return -1;
  if (h->restrict_domid >= 0) {
    errno = EACCES;
    return -1;
  }
  if (domid == 0 || domid >= DOMID_FIRST_RESERVED) {
    errno = EINVAL;
    return -1;
  }
  h->restrict_domid = domid;
  return 0;
}
