// The xensim_* extension API (include/xensim.h): the guest kernel's side of
// grants, direct views for tests, and simulation controls.
#include "internal.hpp"

#include "xensim.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

using namespace xensim;

namespace {

Dom* dom_of(const char* who, std::uint32_t domid, bool create, Ctx** out = nullptr) {
  Ctx* c = context(who);
  if (!c) return nullptr;
  if (out) *out = c;
  return domain(*c, domid, create);
}

}  // namespace

XENSIM_API int xensim_domain_create(uint32_t domid) {
  if (domid >= kMaxDomid) {
    errno = EINVAL;
    return -1;
  }
  return dom_of("xensim_domain_create", domid, true) ? 0 : -1;
}

XENSIM_API void* xensim_domain_memory(uint32_t domid, uint32_t* nr_frames) {
  Dom* d = dom_of("xensim_domain_memory", domid, false);
  if (!d) return nullptr;
  if (nr_frames) *nr_frames = kNrFrames;
  return d->mem;
}

XENSIM_API grant_entry_v1_t* xensim_grant_table(uint32_t domid, uint32_t* nr_entries) {
  Dom* d = dom_of("xensim_grant_table", domid, false);
  if (!d) return nullptr;
  if (nr_entries) *nr_entries = kNrGrants;
  return d->gnt;
}

XENSIM_API int xensim_frames_alloc(uint32_t domid, uint32_t count, uint32_t* frames) {
  Dom* d = dom_of("xensim_frames_alloc", domid, false);
  if (!d) return -1;
  if (!frames_alloc(*d, count, frames)) {
    errno = ENOMEM;
    return -1;
  }
  return 0;
}

XENSIM_API int xensim_frames_free(uint32_t domid, uint32_t count, const uint32_t* frames) {
  Dom* d = dom_of("xensim_frames_free", domid, false);
  if (!d) return -1;
  for (uint32_t i = 0; i < count; ++i)
    if (frames[i] >= kFirstFreeFrame) frame_free(*d, frames[i]);
  return 0;
}

XENSIM_API int xensim_grant_access(uint32_t domid, uint32_t to_domid, uint32_t frame, int readonly) {
  Dom* d = dom_of("xensim_grant_access", domid, false);
  if (!d) return -1;
  if (to_domid >= kMaxDomid) {
    errno = EINVAL;
    return -1;
  }
  std::uint32_t ref;
  if (!refs_alloc(*d, 1, &ref)) {
    errno = ENOSPC;
    return -1;
  }
  grant_entry_v1_t& e = d->gnt[ref];
  d->act[ref].meta = 0;  // the frame stays the caller's
  e.frame = frame;
  e.domid = static_cast<domid_t>(to_domid);
  st(&e.flags, static_cast<std::uint16_t>(GTF_permit_access | (readonly ? GTF_readonly : 0)));
  return static_cast<int>(ref);
}

XENSIM_API int xensim_end_access(uint32_t domid, uint32_t ref) {
  Ctx* c = nullptr;
  Dom* d = dom_of("xensim_end_access", domid, false, &c);
  if (!d) return -1;
  if (ref >= kNrGrants) {
    errno = EINVAL;
    return -1;
  }
  if (grant_end(*c, *d, ref, false)) return 0;
  if (reap_dead(*c) && grant_end(*c, *d, ref, false)) return 0;
  errno = EBUSY;
  return -1;
}

XENSIM_API int xensim_grant_status(uint32_t domid, uint32_t ref, uint32_t* pins_ro, uint32_t* pins_rw) {
  Ctx* c = nullptr;
  Dom* d = dom_of("xensim_grant_status", domid, false, &c);
  if (!d) return -1;
  if (ref >= kNrGrants) {
    errno = EINVAL;
    return -1;
  }
  Active& a = d->act[ref];
  entry_lock(*c, a);
  if (pins_ro) *pins_ro = a.pin_ro;
  if (pins_rw) *pins_rw = a.pin_rw;
  int flags = ld(&d->gnt[ref].flags);
  entry_unlock(a);
  return flags;
}

XENSIM_API int xensim_port_info(uint32_t domid, uint32_t port, xensim_port_info_t* out) {
  Ctx* c = nullptr;
  Dom* d = dom_of("xensim_port_info", domid, false, &c);
  if (!d) return -1;
  if (port >= kNrPorts || !out) {
    errno = EINVAL;
    return -1;
  }
  GlobalLock g(*c);
  const Port& p = d->ports[port];
  std::uint64_t e = ld(&p.ev);
  out->state = p.state;
  out->remote_dom = p.remote_dom;
  out->remote_port = p.remote_port;
  out->virq = p.virq;
  out->pending = (e & kEvPending) != 0;
  out->masked = (e & kEvMasked) != 0;
  out->queued = (e & kEvQueued) != 0;
  out->bound = (e >> 32) != 0 && p.state != kFree && proc_alive(*c, p.owner_proc) &&
               c->hdr->procs[p.owner_proc].gen == p.owner_gen;
  out->handle_ready = (e >> 32) != 0 && (e >> 32) <= kMaxHandles ? ld(&c->hdr->handles[(e >> 32) - 1].ready) : 0;
  return 0;
}

XENSIM_API int xensim_raise(uint32_t domid, uint32_t port) {
  Ctx* c = nullptr;
  Dom* d = dom_of("xensim_raise", domid, false, &c);
  if (!d) return -1;
  if (port == 0 || port >= kNrPorts || ld(&d->ports[port].state) == kFree) {
    errno = EINVAL;
    return -1;
  }
  evtchn_deliver(*c, *d, port);
  return 0;
}

XENSIM_API int xensim_send_virq(uint32_t domid, uint32_t virq) {
  Ctx* c = nullptr;
  Dom* d = dom_of("xensim_send_virq", domid, false, &c);
  if (!d) return -1;
  if (virq >= kNrVirqs) {
    errno = EINVAL;
    return -1;
  }
  for (std::uint32_t p = 1; p < kNrPorts; ++p)
    if (ld(&d->ports[p].state) == kVirq && d->ports[p].virq == virq) evtchn_deliver(*c, *d, p);
  return 0;
}

XENSIM_API int xensim_reap(void) {
  Ctx* c = context("xensim_reap");
  if (!c) return -1;
  return static_cast<int>(reap_dead(*c));
}

XENSIM_API int xensim_set_faults(const char* spec) {
  Ctx* c = context("xensim_set_faults");
  if (!c) return -1;
  if (spec && *spec) {
    Faults f;
    std::string err;
    if (!parse_faults(spec, f, err)) {
      log_err("xensim_set_faults: %s", err.c_str());
      errno = EINVAL;
      return -1;
    }
    char tmp[64];
    std::snprintf(tmp, sizeof tmp, "xensim.faults.tmp.%d", getpid());
    int fd = openat(c->dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    std::size_t len = std::strlen(spec);
    bool ok = write(fd, spec, len) == static_cast<ssize_t>(len);
    int e = errno;
    close(fd);
    // rename: readers see the old file or the new one, never half of it.
    if (!ok || renameat(c->dirfd, tmp, c->dirfd, "xensim.faults") != 0) {
      if (ok) e = errno;
      unlinkat(c->dirfd, tmp, 0);
      errno = e;
      return -1;
    }
  } else if (unlinkat(c->dirfd, "xensim.faults", 0) != 0 && errno != ENOENT) {
    return -1;
  }
  fetch_add(&c->hdr->fault_gen, 1u);
  fault_refresh(*c);
  return 0;
}
