// libxengnttab and libxengntshr: grant mapping and copying (the hypervisor's
// checks, Linux gntdev's errors) and grant sharing (Linux gntalloc).
//
// What Xen decides, and the sim follows (xen/common/grant_table.c, 4.17):
//  - a grant is usable by domain D if its type is GTF_permit_access and its
//    domid is D (and, for a mapping, not GTF_sub_page); writable use of a
//    GTF_readonly grant fails; all three give GNTST_general_error, not
//    permission_denied (which only XSM or a frame-based foreign copy yields);
//  - a ref beyond the table: GNTST_bad_gntref; an unknown domain:
//    GNTST_bad_domain; a frame outside the domain's memory: GNTST_bad_page;
//  - while pinned (mapped, or a copy in flight) the grant entry carries
//    GTF_reading (and GTF_writing for writable pins), which is what makes
//    the guest's end_foreign_access fail;
//  - copy checks offset+len against the page after claiming both sides:
//    GNTST_bad_copy_arg.
// What Linux adds on the way (drivers/xen/gntdev.c, libs/gnttab/linux.c):
//  - any failed grant in a map fails the whole mmap() with EINVAL and nothing
//    stays mapped;
//  - grant copy rejects, before any hypercall, a segment with neither side a
//    grant or with a grant side crossing its page: the whole call fails with
//    EINVAL (knob copy_checks=xen gives Xen's per-segment bad_copy_arg
//    instead);
//  - unmap finds the mapping by its start address and fails with EINVAL if it
//    is unknown or the count differs;
//  - an unmap notification clears its byte before the unmap and sends its
//    event after it; clearing needs a writable mapping, the event a bound
//    port (EINVAL otherwise).
#include "internal.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

using namespace xensim;

namespace {

struct Mapping {
  std::uint8_t* addr;
  std::uint32_t count;
  bool writable;
  std::vector<Dom*> doms;
  std::vector<std::uint32_t> refs, recs;
  std::uint32_t notify_off = ~0u;  // byte offset in the mapping, ~0u: none
  std::uint32_t notify_port = ~0u;
};

struct Share {
  std::uint8_t* addr;
  std::uint32_t count;
  std::vector<std::uint32_t> refs, frames, recs;
  std::vector<bool> ended;
  std::uint32_t live;
  std::uint32_t notify_off = ~0u;
  std::uint32_t notify_port = ~0u;
};

}  // namespace

struct xengntdev_handle {
  Ctx* ctx;
  std::uint32_t domid;
  bool shr;
  std::uint64_t fork_gen;
  int fd;
  std::mutex mu;
  std::uint32_t max_grants = ~0u;
  std::uint64_t mapped = 0;
  std::vector<Mapping> maps;
  std::vector<Share> shares;
};

namespace xensim {

namespace {

constexpr std::uint16_t kPinMax = 0x7f;  // Xen refuses pins that risk its 8-bit counters

std::uint32_t* combo(grant_entry_v1_t& e) { return reinterpret_cast<std::uint32_t*>(&e); }

// Xen's _set_status_v1: checks the entry (unless already pinned) and sets
// GTF_reading/GTF_writing in it with a cmpxchg on flags+domid, racing a guest
// that may be ending access at the same time.
int set_status(grant_entry_v1_t& e, bool pinned, bool writable, bool mapping, std::uint32_t ldom) {
  std::uint16_t mask = GTF_type_mask | (mapping ? GTF_sub_page : 0);
  std::uint32_t cur = ld(combo(e));
  for (int retries = 0;; ++retries) {
    std::uint16_t flags = static_cast<std::uint16_t>(cur & 0xffff);
    std::uint16_t domid = static_cast<std::uint16_t>(cur >> 16);
    if (!pinned && ((flags & mask) != GTF_permit_access || domid != ldom)) return GNTST_general_error;
    std::uint32_t n = cur | GTF_reading;
    if (writable) {
      n |= GTF_writing;
      if (flags & GTF_readonly) return GNTST_general_error;
    }
    if (cas(combo(e), cur, n)) return GNTST_okay;
    if (retries == 4) return GNTST_general_error;  // "Shared grant entry is unstable"
  }
}

// Ends access if nothing holds the grant: Linux's
// gnttab_end_foreign_access_ref (cmpxchg the flags to 0 unless the hypervisor
// has GTF_reading/GTF_writing set). Under the entry lock.
bool end_locked(Dom& d, std::uint32_t ref, std::uint32_t* frame_to_free) {
  Active& a = d.act[ref];
  if (a.pin_ro || a.pin_rw) return false;
  std::uint16_t* fl = &d.gnt[ref].flags;
  std::uint16_t f = ld(fl);
  do {
    if (f & (GTF_reading | GTF_writing)) return false;
  } while (!cas(fl, f, std::uint16_t{0}));
  *frame_to_free = (a.meta & kMetaOwnsFrame) ? d.gnt[ref].frame : ~0u;
  a.meta = 0;
  return true;
}

void after_end(Dom& d, std::uint32_t ref, std::uint32_t frame) {
  if (frame != ~0u) frame_free(d, frame);
  ref_free(d, ref);
}

}  // namespace

int grant_acquire(Ctx& c, Dom& d, std::uint32_t ref, bool writable, bool mapping, std::uint32_t caller_dom,
                  std::uint32_t* frame, Rec* rec) {
  if (ref >= kNrGrants) return GNTST_bad_gntref;
  Active& a = d.act[ref];
  grant_entry_v1_t& e = d.gnt[ref];
  entry_lock(c, a);
  int rc = GNTST_okay;
  const bool pinned = a.pin_ro || a.pin_rw;
  if (pinned && (a.domid != caller_dom || (writable ? a.pin_rw : a.pin_ro) >= kPinMax)) {
    rc = GNTST_general_error;
  } else if (!pinned || (writable && !a.pin_rw)) {
    rc = set_status(e, pinned, writable, mapping, caller_dom);
    if (rc == GNTST_okay && !pinned) {
      std::uint32_t f = ld(&e.frame);
      if (f >= kNrFrames) {
        rc = GNTST_bad_page;
        std::uint16_t clear = GTF_reading | (writable ? GTF_writing : 0);
        fetch_and(&e.flags, static_cast<std::uint16_t>(~clear));
      } else {
        a.frame = f;
        a.domid = static_cast<std::uint16_t>(caller_dom);
      }
    }
  }
  if (rc == GNTST_okay) {
    if (writable)
      ++a.pin_rw;
    else
      ++a.pin_ro;
    *frame = a.frame;
    if (rec) {
      // Inside the entry lock, so that a survivor reaping us sees the pin
      // and its record together.
      rec->domid = d.domid;
      rec->ref = ref;
      rec->frame = a.frame;
      rec->flags = (rec->flags & ~kRecWritable) | (writable ? kRecWritable : 0) | kRecActive;
      st(&rec->kind, std::uint32_t{kRecPin});
    }
  }
  entry_unlock(a);
  return rc;
}

void grant_release(Ctx& c, Dom& d, std::uint32_t ref, bool writable, Rec* rec) {
  if (ref >= kNrGrants) return;
  Active& a = d.act[ref];
  entry_lock(c, a);
  std::uint16_t& pins = writable ? a.pin_rw : a.pin_ro;
  if (pins) --pins;
  std::uint16_t clear = 0;
  if (writable && !a.pin_rw) clear |= GTF_writing;
  if (!a.pin_ro && !a.pin_rw) clear |= GTF_reading;
  if (clear) fetch_and(&d.gnt[ref].flags, static_cast<std::uint16_t>(~clear));
  if (rec) st(&rec->flags, rec->flags & ~kRecActive);
  // The guest tried to end access while we held the grant: Linux retries
  // from a timer (gnttab_handle_deferred); the sim completes it at once.
  std::uint32_t frame = ~0u;
  bool ended = (a.meta & kMetaDeferred) && end_locked(d, ref, &frame);
  entry_unlock(a);
  if (ended) after_end(d, ref, frame);
}

bool grant_end(Ctx& c, Dom& d, std::uint32_t ref, bool defer) {
  if (ref >= kNrGrants) return false;
  Active& a = d.act[ref];
  entry_lock(c, a);
  std::uint32_t frame = ~0u;
  bool ended = end_locked(d, ref, &frame);
  if (!ended && defer) a.meta |= kMetaDeferred;
  entry_unlock(a);
  if (ended) after_end(d, ref, frame);
  return ended;
}

}  // namespace xensim

namespace {

bool usable(xengntdev_handle* h, bool shr) {
  if (!h || h->shr != shr) {
    errno = EINVAL;
    return false;
  }
  if (h->fork_gen != fork_generation()) {
    errno = EBADF;
    return false;
  }
  return true;
}

xengntdev_handle* open_common(const char* who, bool shr) {
  Ctx* c = context(who);
  if (!c) return nullptr;
  int domid = env_domid(who);
  if (domid < 0) return nullptr;
  if (!domain(*c, static_cast<std::uint32_t>(domid), true)) {
    int e = errno;
    log_err("%s: domain %d: %s", who, domid, std::strerror(e));
    errno = e;
    return nullptr;
  }
  // Stands for /dev/xen/gntdev (gntalloc): the fd exists, selecting on it is
  // as useless as the header says.
  int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (fd < 0) return nullptr;
  auto* h = new xengntdev_handle;
  h->ctx = c;
  h->domid = static_cast<std::uint32_t>(domid);
  h->shr = shr;
  h->fork_gen = fork_generation();
  h->fd = fd;
  return h;
}

bool notify_port_ok(Ctx& c, std::uint32_t domid, std::uint32_t port) {
  // gntdev/gntalloc take a reference with evtchn_get(), which only works on
  // a port bound through some evtchn handle of the domain.
  Dom* d = domain(c, domid, false);
  return d && port < kNrPorts && ld(&d->ports[port].state) != kFree && (ld(&d->ports[port].ev) >> 32) != 0;
}

void* map_common(xengntdev_handle* h, std::uint32_t count, const std::uint32_t* domids, bool one_domid,
                 const std::uint32_t* refs, int prot, std::uint32_t notify_off, std::uint32_t notify_port) {
  if (!usable(h, false)) return nullptr;
  if (count == 0 || !refs || !domids) {
    errno = EINVAL;
    return nullptr;
  }
  Ctx& c = *h->ctx;
  if (fault_check(c, kCntMap).fail) {
    errno = fault_map_errno(c);
    return nullptr;
  }
  const bool writable = prot & PROT_WRITE;
  const bool clear = notify_off != ~0u && notify_off < count * std::uint64_t{kPage};
  const bool event = notify_port != ~0u;
  std::lock_guard lk(h->mu);
  if (h->mapped + count > h->max_grants) {
    errno = ENOMEM;
    return nullptr;
  }
  if ((clear && !writable) || (event && !notify_port_ok(c, h->domid, notify_port))) {
    errno = EINVAL;
    return nullptr;
  }
  Mapping m;
  m.count = count;
  m.writable = writable;
  m.doms.resize(count);
  m.refs.assign(refs, refs + count);
  m.recs.assign(count, ~0u);
  std::vector<std::uint32_t> frames(count);
  std::uint32_t done = 0;
  int err = 0;
  for (; done < count; ++done) {
    std::uint32_t domid = domids[one_domid ? 0 : done];
    Dom* d = domain(c, domid, false);
    std::uint32_t rec = rec_alloc(c);
    if (!d || rec == ~0u) {
      rec_free(c, rec);
      err = d ? ENOMEM : EINVAL;  // an unknown domain: GNTST_bad_domain -> EINVAL
      break;
    }
    m.doms[done] = d;
    m.recs[done] = rec;
    c.recs[rec].flags = writable ? kRecWritable : 0;
    int rc = grant_acquire(c, *d, refs[done], writable, true, h->domid, &frames[done], &c.recs[rec]);
    if (rc != GNTST_okay) {
      rec_free(c, rec);
      m.recs[done] = ~0u;
      err = EINVAL;
      break;
    }
  }
  std::uint8_t* addr = nullptr;
  if (!err) {
    addr = static_cast<std::uint8_t*>(
        stitch(m.doms.data(), frames.data(), count, writable ? PROT_READ | PROT_WRITE : PROT_READ));
    if (!addr) err = errno;
  }
  if (err) {
    for (std::uint32_t i = 0; i < done; ++i) {
      grant_release(c, *m.doms[i], refs[i], writable, &c.recs[m.recs[i]]);
      rec_free(c, m.recs[i]);
    }
    errno = err;
    return nullptr;
  }
  // PV dom0's gntdev mappings are VM_DONTCOPY: a fork child does not get them.
  madvise(addr, std::size_t{count} * kPage, MADV_DONTFORK);
  if (clear) {
    m.notify_off = notify_off;
    Rec& r = c.recs[m.recs[notify_off / kPage]];
    r.notify_off = notify_off % kPage;
    fetch_or(&r.flags, kRecNotifyClear);
  }
  if (event) {
    m.notify_port = notify_port;
    Rec& r = c.recs[m.recs[0]];
    r.port = notify_port;
    r.notify_dom = h->domid;
    fetch_or(&r.flags, kRecNotifyEvent);
  }
  m.addr = addr;
  h->mapped += count;
  h->maps.push_back(std::move(m));
  return addr;
}

// Unmaps `m` (under h->mu); returns the notify port to signal, or ~0u.
std::uint32_t unmap_locked(xengntdev_handle* h, Mapping& m) {
  Ctx& c = *h->ctx;
  if (m.notify_off != ~0u) m.addr[m.notify_off] = 0;
  munmap(m.addr, std::size_t{m.count} * kPage);
  for (std::uint32_t i = 0; i < m.count; ++i) {
    grant_release(c, *m.doms[i], m.refs[i], m.writable, &c.recs[m.recs[i]]);
    rec_free(c, m.recs[i]);
  }
  h->mapped -= m.count;
  return m.notify_port;
}

void send_notify(xengntdev_handle* h, std::uint32_t port) {
  if (port == ~0u) return;
  if (Dom* d = domain(*h->ctx, h->domid, false)) port_send(*h->ctx, *d, port, false);
}

// gntalloc's __del_gref for page i of `s`: notify, then end access, deferred
// while the peer still holds the grant. Under h->mu.
std::uint32_t end_share_page_locked(xengntdev_handle* h, Share& s, std::uint32_t i) {
  Ctx& c = *h->ctx;
  Dom* d = domain(c, h->domid, false);
  std::uint32_t port = ~0u;
  if (s.notify_off != ~0u && s.notify_off / kPage == i) s.addr[s.notify_off] = 0;
  if (s.notify_port != ~0u && i == 0) port = s.notify_port;
  if (d && !grant_end(c, *d, s.refs[i], false)) {
    // Held by a process that died? The kernel would have dropped its
    // mappings at exit; do that now and try again before deferring.
    reap_dead(c);
    grant_end(c, *d, s.refs[i], true);
  }
  rec_free(c, s.recs[i]);
  s.ended[i] = true;
  --s.live;
  return port;
}

void* share_common(xengntshr_handle* h, std::uint32_t domid, int count_in, std::uint32_t* refs, int writable,
                   std::uint32_t notify_off, std::uint32_t notify_port) {
  if (!usable(h, true)) return nullptr;
  if (count_in <= 0 || !refs || domid >= kMaxDomid) {
    errno = EINVAL;
    return nullptr;
  }
  auto count = static_cast<std::uint32_t>(count_in);
  Ctx& c = *h->ctx;
  Dom* d = domain(c, h->domid, false);
  if (!d) return nullptr;
  const bool clear = notify_off != ~0u && notify_off < count * std::uint64_t{kPage};
  const bool event = notify_port != ~0u;
  if (event && !notify_port_ok(c, h->domid, notify_port)) {
    errno = EINVAL;
    return nullptr;
  }
  Share s;
  s.count = s.live = count;
  s.refs.resize(count);
  s.frames.resize(count);
  s.recs.assign(count, ~0u);
  s.ended.assign(count, false);
  if (!frames_alloc(*d, count, s.frames.data())) {
    errno = ENOMEM;
    return nullptr;
  }
  if (!refs_alloc(*d, count, s.refs.data())) {
    for (auto f : s.frames) frame_free(*d, f);
    errno = ENOSPC;
    return nullptr;
  }
  for (auto& r : s.recs) r = rec_alloc(c);
  if (std::find(s.recs.begin(), s.recs.end(), ~0u) != s.recs.end()) {
    for (auto r : s.recs) rec_free(c, r);
    for (auto f : s.frames) frame_free(*d, f);
    for (auto r : s.refs) ref_free(*d, r);
    errno = ENOMEM;
    return nullptr;
  }
  for (std::uint32_t i = 0; i < count; ++i) {
    Rec& r = c.recs[s.recs[i]];
    r.domid = h->domid;
    r.ref = s.refs[i];
    r.frame = s.frames[i];
    r.flags = kRecActive;
    st(&r.kind, std::uint32_t{kRecShare});
    // Linux's gnttab_update_entry_v1: frame and domid first, then the flags
    // that make the entry valid.
    grant_entry_v1_t& e = d->gnt[s.refs[i]];
    d->act[s.refs[i]].meta = kMetaOwnsFrame;
    e.frame = s.frames[i];
    e.domid = static_cast<domid_t>(domid);
    st(&e.flags, static_cast<std::uint16_t>(GTF_permit_access | (writable ? 0 : GTF_readonly)));
  }
  std::vector<Dom*> doms(count, d);
  auto* addr = static_cast<std::uint8_t*>(stitch(doms.data(), s.frames.data(), count, PROT_READ | PROT_WRITE));
  if (!addr) {
    int e = errno;
    for (std::uint32_t i = 0; i < count; ++i) {
      grant_end(c, *d, s.refs[i], true);
      rec_free(c, s.recs[i]);
    }
    errno = e;
    return nullptr;
  }
  s.addr = addr;
  if (clear) {
    s.notify_off = notify_off;
    Rec& r = c.recs[s.recs[notify_off / kPage]];
    r.notify_off = notify_off % kPage;
    fetch_or(&r.flags, kRecNotifyClear);
  }
  if (event) {
    s.notify_port = notify_port;
    Rec& r = c.recs[s.recs[0]];
    r.port = notify_port;
    r.notify_dom = h->domid;
    fetch_or(&r.flags, kRecNotifyEvent);
  }
  std::copy(s.refs.begin(), s.refs.end(), refs);
  std::lock_guard lk(h->mu);
  h->shares.push_back(std::move(s));
  return addr;
}

// The records of a copy in flight, one pair per thread, so that a process
// killed mid-copy does not leave the grants pinned.
struct CopyRecs {
  Ctx* ctx = nullptr;
  std::uint64_t fork_gen = 0;
  std::uint32_t rec[2] = {~0u, ~0u};
  ~CopyRecs() { reset(); }
  void reset() {
    if (ctx && fork_gen == fork_generation())
      for (auto& r : rec) rec_free(*ctx, r);
    rec[0] = rec[1] = ~0u;
    ctx = nullptr;
  }
  Rec* get(Ctx& c, int i) {
    if (ctx != &c || fork_gen != fork_generation()) {
      reset();
      ctx = &c;
      fork_gen = fork_generation();
      rec[0] = rec_alloc(c);
      rec[1] = rec_alloc(c);
    }
    return rec[i] == ~0u ? nullptr : &c.recs[rec[i]];
  }
};
thread_local CopyRecs t_copy;

std::int16_t copy_one(xengntdev_handle* h, xengnttab_grant_copy_segment_t& s) {
  Ctx& c = *h->ctx;
  if (fault_check(c, kCntCopy).fail) return static_cast<std::int16_t>(fault_copy_status(c));
  const bool sg = s.flags & GNTCOPY_source_gref, dg = s.flags & GNTCOPY_dest_gref;
  auto dom_of = [&](std::uint16_t domid) { return domain(c, domid == DOMID_SELF ? h->domid : domid, false); };
  // Xen's order: both domains, then the source grant, then the destination
  // grant, then the page bounds.
  Dom* sd = sg ? dom_of(s.source.foreign.domid) : nullptr;
  Dom* dd = dg ? dom_of(s.dest.foreign.domid) : nullptr;
  if ((sg && !sd) || (dg && !dd)) return GNTST_bad_domain;
  const std::uint8_t* src = static_cast<const std::uint8_t*>(s.source.virt);
  std::uint8_t* dst = static_cast<std::uint8_t*>(s.dest.virt);
  Rec* srec = sg ? t_copy.get(c, 0) : nullptr;
  Rec* drec = dg ? t_copy.get(c, 1) : nullptr;
  std::uint32_t frame = 0;
  if (sg) {
    if (srec) srec->flags = 0;
    int rc = grant_acquire(c, *sd, s.source.foreign.ref, false, false, h->domid, &frame, srec);
    if (rc != GNTST_okay) return static_cast<std::int16_t>(rc);
    src = sd->mem + std::size_t{frame} * kPage + s.source.foreign.offset;
  }
  if (dg) {
    if (drec) drec->flags = kRecWritable;
    int rc = grant_acquire(c, *dd, s.dest.foreign.ref, true, false, h->domid, &frame, drec);
    if (rc != GNTST_okay) {
      if (sg) grant_release(c, *sd, s.source.foreign.ref, false, srec);
      return static_cast<std::int16_t>(rc);
    }
    dst = dd->mem + std::size_t{frame} * kPage + s.dest.foreign.offset;
  }
  std::int16_t rc = GNTST_okay;
  if ((sg && s.source.foreign.offset + std::uint32_t{s.len} > kPage) ||
      (dg && s.dest.foreign.offset + std::uint32_t{s.len} > kPage))
    rc = GNTST_bad_copy_arg;
  else
    std::memcpy(dst, src, s.len);
  if (dg) grant_release(c, *dd, s.dest.foreign.ref, true, drec);
  if (sg) grant_release(c, *sd, s.source.foreign.ref, false, srec);
  return rc;
}

}  // namespace

// ------------------------------------------------------------- gnttab API

XENSIM_API xengnttab_handle* xengnttab_open(struct xentoollog_logger*, unsigned) {
  return open_common("xengnttab_open", false);
}

XENSIM_API int xengnttab_close(xengnttab_handle* h) {
  if (!h) return 0;
  if (h->fork_gen == fork_generation() && !h->shr) {
    std::vector<std::uint32_t> ports;
    {
      std::lock_guard lk(h->mu);
      for (auto& m : h->maps) ports.push_back(unmap_locked(h, m));
      h->maps.clear();
    }
    for (auto p : ports) send_notify(h, p);
  }
  close(h->fd);
  delete h;
  return 0;
}

XENSIM_API int xengnttab_fd(xengnttab_handle* h) {
  if (!h) {
    errno = EINVAL;
    return -1;
  }
  return h->fd;
}

XENSIM_API void* xengnttab_map_grant_ref(xengnttab_handle* h, uint32_t domid, uint32_t ref, int prot) {
  return map_common(h, 1, &domid, true, &ref, prot, ~0u, ~0u);
}

XENSIM_API void* xengnttab_map_grant_refs(xengnttab_handle* h, uint32_t count, uint32_t* domids, uint32_t* refs,
                                          int prot) {
  return map_common(h, count, domids, false, refs, prot, ~0u, ~0u);
}

XENSIM_API void* xengnttab_map_domain_grant_refs(xengnttab_handle* h, uint32_t count, uint32_t domid, uint32_t* refs,
                                                 int prot) {
  return map_common(h, count, &domid, true, refs, prot, ~0u, ~0u);
}

XENSIM_API void* xengnttab_map_grant_ref_notify(xengnttab_handle* h, uint32_t domid, uint32_t ref, int prot,
                                                uint32_t notify_offset, evtchn_port_t notify_port) {
  return map_common(h, 1, &domid, true, &ref, prot, notify_offset, notify_port);
}

XENSIM_API int xengnttab_unmap(xengnttab_handle* h, void* start_address, uint32_t count) {
  if (!usable(h, false)) return -1;
  std::uint32_t port;
  {
    std::lock_guard lk(h->mu);
    auto it = std::find_if(h->maps.begin(), h->maps.end(), [&](const Mapping& m) { return m.addr == start_address; });
    // gntdev's GET_OFFSET_FOR_VADDR, then libxengnttab's count check.
    if (!start_address || it == h->maps.end() || it->count != count) {
      errno = EINVAL;
      return -1;
    }
    port = unmap_locked(h, *it);
    h->maps.erase(it);
  }
  send_notify(h, port);
  return 0;
}

XENSIM_API int xengnttab_set_max_grants(xengnttab_handle* h, uint32_t nr_grants) {
  if (!usable(h, false)) return -1;
  std::lock_guard lk(h->mu);
  h->max_grants = nr_grants;
  return 0;
}

XENSIM_API int xengnttab_grant_copy(xengnttab_handle* h, uint32_t count, xengnttab_grant_copy_segment_t* segs) {
  if (!usable(h, false)) return -1;
  Ctx& c = *h->ctx;
  if (!fault_xen_copy_checks(c)) {
    for (std::uint32_t i = 0; i < count; ++i) {
      auto& s = segs[i];
      bool sg = s.flags & GNTCOPY_source_gref, dg = s.flags & GNTCOPY_dest_gref;
      if ((!sg && !dg) || (sg && s.source.foreign.offset + std::uint32_t{s.len} > kPage) ||
          (dg && s.dest.foreign.offset + std::uint32_t{s.len} > kPage)) {
        errno = EINVAL;
        return -1;
      }
    }
  }
  for (std::uint32_t i = 0; i < count; ++i) segs[i].status = copy_one(h, segs[i]);
  return 0;
}

XENSIM_API int xengnttab_dmabuf_exp_from_refs(xengnttab_handle*, uint32_t, uint32_t, uint32_t, const uint32_t*,
                                              uint32_t*) {
  errno = EOPNOTSUPP;
  return -1;
}

XENSIM_API int xengnttab_dmabuf_exp_wait_released(xengnttab_handle*, uint32_t, uint32_t) {
  errno = EOPNOTSUPP;
  return -1;
}

XENSIM_API int xengnttab_dmabuf_imp_to_refs(xengnttab_handle*, uint32_t, uint32_t, uint32_t, uint32_t*) {
  errno = EOPNOTSUPP;
  return -1;
}

XENSIM_API int xengnttab_dmabuf_imp_release(xengnttab_handle*, uint32_t) {
  errno = EOPNOTSUPP;
  return -1;
}

// ------------------------------------------------------------- gntshr API

XENSIM_API xengntshr_handle* xengntshr_open(struct xentoollog_logger*, unsigned) {
  return open_common("xengntshr_open", true);
}

XENSIM_API int xengntshr_close(xengntshr_handle* h) {
  if (!h) return 0;
  if (h->fork_gen == fork_generation() && h->shr) {
    std::vector<std::uint32_t> ports;
    {
      std::lock_guard lk(h->mu);
      for (auto& s : h->shares) {
        for (std::uint32_t i = 0; i < s.count; ++i)
          if (!s.ended[i]) ports.push_back(end_share_page_locked(h, s, i));
        munmap(s.addr, std::size_t{s.count} * kPage);
      }
      h->shares.clear();
    }
    for (auto p : ports) send_notify(h, p);
  }
  close(h->fd);
  delete h;
  return 0;
}

XENSIM_API int xengntshr_fd(xengntshr_handle* h) {
  if (!h) {
    errno = EINVAL;
    return -1;
  }
  return h->fd;
}

XENSIM_API void* xengntshr_share_pages(xengntshr_handle* h, uint32_t domid, int count, uint32_t* refs, int writable) {
  return share_common(h, domid, count, refs, writable, ~0u, ~0u);
}

XENSIM_API void* xengntshr_share_page_notify(xengntshr_handle* h, uint32_t domid, uint32_t* ref, int writable,
                                             uint32_t notify_offset, evtchn_port_t notify_port) {
  return share_common(h, domid, 1, ref, writable, notify_offset, notify_port);
}

XENSIM_API int xengntshr_unshare(xengntshr_handle* h, void* start_address, uint32_t count) {
  if (!usable(h, true)) return -1;
  auto* lo = static_cast<std::uint8_t*>(start_address);
  std::uint8_t* hi = lo + std::size_t{count} * kPage;
  std::vector<std::uint32_t> ports;
  int rc = 0;
  {
    std::lock_guard lk(h->mu);
    // The real library just munmap()s; gntalloc then ends the grants of the
    // pages unmapped. Refuse ranges that are not ours rather than unmapping
    // unrelated memory of the caller.
    std::size_t covered = 0;
    for (auto& s : h->shares) {
      std::uint8_t* e = s.addr + std::size_t{s.count} * kPage;
      if (s.addr < hi && lo < e) covered += static_cast<std::size_t>(std::min(e, hi) - std::max(s.addr, lo));
    }
    if (!count || reinterpret_cast<std::uintptr_t>(lo) % kPage || covered != std::size_t{count} * kPage) {
      errno = EINVAL;
      return -1;
    }
    for (auto& s : h->shares)
      for (std::uint32_t i = 0; i < s.count; ++i) {
        std::uint8_t* p = s.addr + std::size_t{i} * kPage;
        if (p >= lo && p < hi && !s.ended[i]) ports.push_back(end_share_page_locked(h, s, i));
      }
    rc = munmap(lo, std::size_t{count} * kPage);
    h->shares.erase(std::remove_if(h->shares.begin(), h->shares.end(), [](const Share& s) { return s.live == 0; }),
                    h->shares.end());
  }
  for (auto p : ports) send_notify(h, p);
  return rc;
}
