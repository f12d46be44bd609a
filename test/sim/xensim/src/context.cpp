// The per-process context of a simulation: joining it (creating the shared
// files on first use), registering this process, mapping domains, the shared
// locks, and releasing what dead processes held.
#include "internal.hpp"

#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace xensim {

namespace {

constexpr std::uint64_t kSimMagic = 0x4d49534e4558ull + (1ull << 56);  // "XENSIM" v1
constexpr std::uint64_t kDomMagic = 0x4d4f444d4953ull + (1ull << 56);  // "SIMDOM" v1
constexpr std::uint32_t kVersion = 1;

std::mutex g_reg_mu;
std::vector<Ctx*> g_ctxs;  // never freed: handles and mappings may outlive any user
std::atomic<std::uint64_t> g_fork_gen{0};

// A fork child must not inherit a lock held by another thread (the event
// thread holds bg_mu much of the time): hold them all across fork(), in the
// order the library nests them (mu before the others; none of the others
// nests another).
void lock_ctx(Ctx& c) {
  c.mu.lock();
  c.dom_mu.lock();
  c.rec_mu.lock();
  c.fault_mu.lock();
  c.bg_mu.lock();
  for (auto& m : c.wake_mu) m.lock();
}
void unlock_ctx(Ctx& c) {
  for (auto& m : c.wake_mu) m.unlock();
  c.bg_mu.unlock();
  c.fault_mu.unlock();
  c.rec_mu.unlock();
  c.dom_mu.unlock();
  c.mu.unlock();
}
void atfork_prepare() {
  g_reg_mu.lock();
  for (Ctx* c : g_ctxs) lock_ctx(*c);
}
void atfork_parent() {
  for (Ctx* c : g_ctxs) unlock_ctx(*c);
  g_reg_mu.unlock();
}
void atfork_child() {
  for (Ctx* c : g_ctxs) unlock_ctx(*c);
  g_reg_mu.unlock();
  g_fork_gen.fetch_add(1);
}
std::once_flag g_atfork_once;

std::string name_of(const char* base, std::uint32_t n) { return std::string(base) + std::to_string(n); }

// Creates `name` in `dirfd` with `size` bytes, initialised by `init`, so that
// it appears complete or not at all. Returns an fd on the file now named
// `name` (ours or a concurrent creator's), or -1.
template <class Init>
int create_complete(int dirfd, const std::string& name, std::size_t size, Init init) {
  for (int attempt = 0; attempt < 100; ++attempt) {
    int fd = openat(dirfd, name.c_str(), O_RDWR | O_CLOEXEC);
    if (fd >= 0 || errno != ENOENT) return fd;
    std::uint64_t r = 0;
    if (getrandom(&r, sizeof r, 0) != sizeof r) r = static_cast<std::uint64_t>(now_ns());
    char tmp[96];
    std::snprintf(tmp, sizeof tmp, "%s.tmp.%d.%016llx", name.c_str(), getpid(), static_cast<unsigned long long>(r));
    fd = openat(dirfd, tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    void* p = MAP_FAILED;
    if (ftruncate(fd, static_cast<off_t>(size)) == 0)
      p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      close(fd);
      unlinkat(dirfd, tmp, 0);
      errno = e;
      return -1;
    }
    bool ok = init(p);
    munmap(p, size);
    int rc = ok ? linkat(dirfd, tmp, dirfd, name.c_str(), 0) : -1;
    int e = errno;
    unlinkat(dirfd, tmp, 0);
    if (rc == 0) return fd;
    close(fd);
    if (!ok || e != EEXIST) {
      errno = ok ? e : EIO;
      return -1;
    }
    // Someone else won the race: use theirs.
  }
  errno = EAGAIN;
  return -1;
}

bool init_sim(void* p) {
  auto* h = static_cast<SimHeader*>(p);
  h->magic = kSimMagic;
  h->version = kVersion;
  h->size = sizeof(SimHeader);
  if (getrandom(&h->sim_id, sizeof h->sim_id, 0) != sizeof h->sim_id)
    h->sim_id = static_cast<std::uint64_t>(now_ns()) ^ (static_cast<std::uint64_t>(getpid()) << 40);
  h->next_uid = 1;
  pthread_mutexattr_t a;
  pthread_mutexattr_init(&a);
  pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  int rc = pthread_mutex_init(&h->lock, &a);
  pthread_mutexattr_destroy(&a);
  return rc == 0;
}

bool open_sim(Ctx& c) {
  c.dirfd = open(c.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (c.dirfd < 0) return false;
  int fd = create_complete(c.dirfd, "xensim.state", sizeof(SimHeader), init_sim);
  if (fd < 0) return false;
  void* p = mmap(nullptr, sizeof(SimHeader), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int e = errno;
  close(fd);
  if (p == MAP_FAILED) {
    errno = e;
    return false;
  }
  c.hdr = static_cast<SimHeader*>(p);
  if (c.hdr->magic != kSimMagic || c.hdr->version != kVersion || c.hdr->size != sizeof(SimHeader)) {
    log_err("%s/xensim.state: not a state file of this xensim version", c.dir.c_str());
    errno = EPROTO;
    return false;
  }
  c.lockfd = openat(c.dirfd, "xensim.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (c.lockfd < 0) return false;
  c.wake = new WakeFd[kMaxHandles];
  c.doms = new std::atomic<Dom*>[kMaxDomid]();
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&c.bg_cv, &ca);
  pthread_condattr_destroy(&ca);
  if (const char* f = getenv("XENSIM_FAULTS")) {
    std::string err;
    if (!parse_faults(f, c.env_faults, err)) log_err("XENSIM_FAULTS: %s", err.c_str());
  }
  c.faults_on = c.env_faults.any();
  return true;
}

bool lock_byte(int fd, std::uint32_t slot, short type, int cmd, struct flock* out = nullptr) {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = slot;
  fl.l_len = 1;
  if (fcntl(fd, cmd, &fl) != 0) return false;
  if (out) *out = fl;
  return true;
}

Rec* map_recs(int dirfd, std::uint32_t slot, bool fresh) {
  std::string name = name_of("xensim.proc", slot);
  int fd = openat(dirfd, name.c_str(), O_RDWR | O_CLOEXEC | (fresh ? O_CREAT : 0), 0600);
  if (fd < 0) return nullptr;
  std::size_t size = std::size_t{kMaxRecords} * sizeof(Rec);
  // A fresh registration starts from zeroes: truncating drops the last
  // owner's records (already released by the reaper).
  if (fresh && (ftruncate(fd, 0) != 0 || ftruncate(fd, static_cast<off_t>(size)) != 0)) {
    close(fd);
    return nullptr;
  }
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  return p == MAP_FAILED ? nullptr : static_cast<Rec*>(p);
}

// An entry lock's word: the holder's slot + 1 in the low 11 bits, the low
// 21 bits of its registration's generation above. The slot alone is not
// enough: a killed holder's slot is reaped and handed to the next process
// that joins (often its restarted self), which then took the dead holder's
// lock for one of its own threads' and spun on it forever. (Mistaking one
// generation for another would take 2^21 registrations in one slot while a
// lock waits.)
constexpr unsigned kTagSlotBits = 11;
static_assert(kMaxProcs < (1u << kTagSlotBits));

std::uint32_t make_lock_tag(std::uint32_t slot, std::uint32_t gen) { return (gen << kTagSlotBits) | (slot + 1); }

bool holder_alive(Ctx& c, std::uint32_t tag) {
  const std::uint32_t slot = (tag & ((1u << kTagSlotBits) - 1)) - 1;
  if (slot >= kMaxProcs) return false;
  const ProcSlot& ps = c.hdr->procs[slot];
  return ld(&ps.state) == 1 && make_lock_tag(slot, ld(&ps.gen)) == tag && proc_alive(c, slot);
}

// XENSIM_DIE_AT=POINT[:N] (internal.hpp), read at each registration so that
// a fork child can set it before its first call.
void read_die_hook(Ctx& c) {
  c.die_point = kDieNone;
  c.die_left = 0;
  const char* v = getenv("XENSIM_DIE_AT");
  if (!v || !*v) return;
  static constexpr std::pair<const char*, DiePoint> kPoints[] = {
      {"notify_queued", kDieNotifyQueued}, {"notify_counted", kDieNotifyCounted}, {"entry_locked", kDieEntryLocked}};
  std::string spec(v), name = spec.substr(0, spec.find(':'));
  std::uint64_t n = 1;
  if (name.size() < spec.size()) {
    char* end = nullptr;
    n = std::strtoull(spec.c_str() + name.size() + 1, &end, 10);
    if (*end || n == 0) name.clear();
  }
  for (const auto& [key, point] : kPoints)
    if (name == key) {
      c.die_point = point;
      c.die_left = n;
      return;
    }
  log_err("XENSIM_DIE_AT=%s: not POINT[:N] with POINT notify_queued, notify_counted or entry_locked", v);
}

void reap_slot(Ctx& c, std::uint32_t s) {
  ProcSlot& ps = c.hdr->procs[s];
  Rec* r = map_recs(c.dirfd, s, false);
  if (r) {
    std::uint32_t n = kMaxRecords;
    // The kernel's order at process exit: the address space goes first
    // (gntdev clears notify bytes and unmaps, then sends the unmap events),
    // the descriptors after (gntalloc ends its grants, evtchn closes ports).
    for (std::uint32_t i = 0; i < n; ++i) {
      Rec& x = r[i];
      if (x.kind != kRecPin || !(x.flags & kRecActive) || !(x.flags & kRecNotifyClear)) continue;
      if (Dom* d = domain(c, x.domid, false); d && x.frame < kNrFrames)
        d->mem[std::size_t{x.frame} * kPage + x.notify_off] = 0;
    }
    for (std::uint32_t i = 0; i < n; ++i) {
      Rec& x = r[i];
      if (x.kind != kRecPin) continue;
      if (x.flags & kRecActive)
        if (Dom* d = domain(c, x.domid, false)) grant_release(c, *d, x.ref, x.flags & kRecWritable, &x);
      if (x.flags & kRecNotifyEvent)
        if (Dom* d = domain(c, x.notify_dom, false)) port_send(c, *d, x.port, false);
      x = Rec{};
    }
    for (std::uint32_t i = 0; i < n; ++i) {
      Rec& x = r[i];
      if (x.kind != kRecShare) continue;
      if (Dom* d = domain(c, x.domid, false)) {
        if (x.flags & kRecNotifyClear) d->mem[std::size_t{x.frame} * kPage + x.notify_off] = 0;
        if (x.flags & kRecNotifyEvent)
          if (Dom* nd = domain(c, x.notify_dom, false)) port_send(c, *nd, x.port, false);
        if (x.flags & kRecActive) grant_end(c, *d, x.ref, true);
      }
      x = Rec{};
    }
    for (std::uint32_t i = 0; i < n; ++i) {
      Rec& x = r[i];
      if (x.kind != kRecPort) continue;
      if (Dom* d = domain(c, x.domid, false); d && x.port < kNrPorts) {
        Port& p = d->ports[x.port];
        if (p.state != kFree && p.owner_proc == s && p.owner_gen == ps.gen) port_close_locked(c, *d, x.port);
      }
      x = Rec{};
    }
    munmap(r, std::size_t{kMaxRecords} * sizeof(Rec));
  }
  for (auto& h : c.hdr->handles)
    if (h.in_use && h.proc == s) {
      handle_files_gone(c, h.uid);
      st(&h.ready, 0);
      st(&h.in_use, 0u);
    }
  st(&ps.state, 0u);
}

}  // namespace

void log_err(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "xensim: %s\n", buf);
}

std::int64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

std::uint64_t fork_generation() { return g_fork_gen.load(std::memory_order_acquire); }

int env_domid(const char* who) {
  const char* s = getenv("XENSIM_DOMID");
  if (!s || !*s) return 0;
  char* end = nullptr;
  errno = 0;
  unsigned long v = std::strtoul(s, &end, 0);
  if (errno || *end || v >= kMaxDomid) {
    log_err("%s: XENSIM_DOMID=%s is not a domain id (0..%u)", who, s, kMaxDomid - 1);
    errno = EINVAL;
    return -1;
  }
  return static_cast<int>(v);
}

Ctx* context(const char* who) {
  std::call_once(g_atfork_once, [] { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); });
  const char* dir = getenv("XENSIM_DIR");
  if (!dir || !*dir) {
    log_err(
        "%s: XENSIM_DIR is not set: there is no simulated Xen to use "
        "(set it to the simulation's directory)",
        who);
    errno = ENOENT;
    return nullptr;
  }
  char real[PATH_MAX];
  if (!realpath(dir, real)) {
    int e = errno;
    log_err("%s: XENSIM_DIR=%s: %s", who, dir, std::strerror(e));
    errno = e;
    return nullptr;
  }
  Ctx* c = nullptr;
  {
    std::lock_guard lk(g_reg_mu);
    for (Ctx* x : g_ctxs)
      if (x->dir == real) c = x;
    if (!c) {
      auto* n = new Ctx;
      n->dir = real;
      if (!open_sim(*n)) {
        int e = errno;
        log_err("%s: cannot join the simulation in %s: %s", who, real, std::strerror(e));
        // The half-built context is leaked on purpose: its descriptors are
        // few and a retry builds a new one.
        errno = e;
        return nullptr;
      }
      g_ctxs.push_back(n);
      c = n;
    }
  }
  if (!ensure_registered(*c)) {
    int e = errno;
    log_err("%s: cannot register in the simulation in %s: %s", who, real, std::strerror(e));
    errno = e;
    return nullptr;
  }
  return c;
}

bool ensure_registered(Ctx& c) {
  std::uint64_t fg = g_fork_gen.load(std::memory_order_acquire);
  if (c.fork_gen == fg && c.slot != ~0u) return true;
  std::lock_guard lk(c.mu);
  if (c.fork_gen == fg && c.slot != ~0u) return true;
  if (c.slot != ~0u) {
    // A fork child: the parent's registration, handles, records and thread
    // are the parent's. Start afresh (the mapping of the parent's record
    // file must not be written by us).
    munmap(c.recs, std::size_t{kMaxRecords} * sizeof(Rec));
    c.recs = nullptr;
    c.slot = ~0u;
    c.rec_free.clear();
    c.rec_hwm = 0;
    c.evtchns.clear();
    c.bg_running = false;
    c.delayed.clear();
  }
  GlobalLock g(c);
  reap_dead_locked(c);
  for (std::uint32_t s = 0; s < kMaxProcs; ++s) {
    ProcSlot& ps = c.hdr->procs[s];
    if (ld(&ps.state) != 0) continue;
    if (!lock_byte(c.lockfd, s, F_WRLCK, F_SETLK)) continue;
    Rec* r = map_recs(c.dirfd, s, true);
    if (!r) {
      int e = errno;
      lock_byte(c.lockfd, s, F_UNLCK, F_SETLK);
      errno = e;
      return false;
    }
    ps.pid = getpid();
    ps.gen += 1;
    st(&ps.state, 1u);
    c.slot = s;
    c.gen = ps.gen;
    c.lock_tag = make_lock_tag(s, c.gen);
    read_die_hook(c);
    c.recs = r;
    c.fork_gen = fg;
    return true;
  }
  errno = EMFILE;
  return false;
}

GlobalLock::GlobalLock(Ctx& c) : c_(c) {
  int rc = pthread_mutex_lock(&c_.hdr->lock);
  if (rc == EOWNERDEAD) {
    // The holder died inside a slow path; the tables are still usable
    // (every update there is a few stores), so carry on.
    pthread_mutex_consistent(&c_.hdr->lock);
  } else if (rc != 0) {
    log_err("global lock: %s", std::strerror(rc));
    abort();
  }
}

GlobalLock::~GlobalLock() { pthread_mutex_unlock(&c_.hdr->lock); }

bool proc_alive(Ctx& c, std::uint32_t slot) {
  if (slot == c.slot && c.fork_gen == g_fork_gen.load(std::memory_order_acquire)) return true;
  struct flock fl {};
  // F_GETLK cannot see our own locks: only ever asked about other slots.
  if (!lock_byte(c.lockfd, slot, F_WRLCK, F_GETLK, &fl)) return true;
  return fl.l_type != F_UNLCK;
}

unsigned reap_dead_locked(Ctx& c) {
  unsigned n = 0;
  for (std::uint32_t s = 0; s < kMaxProcs; ++s)
    if (ld(&c.hdr->procs[s].state) == 1 && !proc_alive(c, s)) {
      reap_slot(c, s);
      ++n;
    }
  // What a notify cut short by the death left undone (evtchn.cpp).
  if (n) rewake_handles_locked(c);
  return n;
}

unsigned reap_dead(Ctx& c) {
  GlobalLock g(c);
  return reap_dead_locked(c);
}

void entry_lock(Ctx& c, Active& a) {
  const std::uint32_t me = c.lock_tag;
  for (std::uint64_t spins = 1;; ++spins) {
    std::uint32_t cur = 0;
    if (ld(&a.lock) == 0 && cas(&a.lock, cur, me)) break;
    cur = ld(&a.lock);
    if (spins % 4096 == 0) {
      // Long wait: the holder may have been killed inside its critical
      // section (a few instructions), or is just descheduled.
      if (cur && !holder_alive(c, cur) && cas(&a.lock, cur, me)) break;
      sched_yield();
    }
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
  die_at(c, kDieEntryLocked);
}

void entry_unlock(Active& a) { st(&a.lock, 0u); }

void die_slow(Ctx& c) {
  std::uint64_t left = c.die_left.load(std::memory_order_relaxed);
  while (left && !c.die_left.compare_exchange_weak(left, left - 1, std::memory_order_acq_rel)) {
  }
  if (left == 1) kill(getpid(), SIGKILL);
}

std::uint32_t rec_alloc(Ctx& c) {
  std::lock_guard lk(c.rec_mu);
  std::uint32_t i;
  if (!c.rec_free.empty()) {
    i = c.rec_free.back();
    c.rec_free.pop_back();
  } else if (c.rec_hwm < kMaxRecords) {
    i = c.rec_hwm++;
  } else {
    return ~0u;
  }
  c.recs[i] = Rec{};
  return i;
}

void rec_free(Ctx& c, std::uint32_t i) {
  if (i == ~0u) return;
  std::lock_guard lk(c.rec_mu);
  st(&c.recs[i].kind, std::uint32_t{kRecFree});
  c.recs[i] = Rec{};
  c.rec_free.push_back(i);
}

Dom* domain(Ctx& c, std::uint32_t domid, bool create) {
  if (domid >= kMaxDomid) {
    errno = ESRCH;
    return nullptr;
  }
  if (Dom* d = c.doms[domid].load(std::memory_order_acquire)) return d;
  std::lock_guard lk(c.dom_mu);
  if (Dom* d = c.doms[domid].load(std::memory_order_acquire)) return d;
  std::string dname = name_of("xensim.dom", domid);
  std::string mname = name_of("xensim.mem", domid);
  int fd = openat(c.dirfd, dname.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) {
    if (!create) {
      errno = ESRCH;
      return nullptr;
    }
    int mfd = openat(c.dirfd, mname.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    struct stat st {};
    if (mfd < 0 || fstat(mfd, &st) != 0 ||
        (st.st_size < static_cast<off_t>(kMemSize) && ftruncate(mfd, kMemSize) != 0)) {
      int e = errno;
      if (mfd >= 0) close(mfd);
      errno = e;
      return nullptr;
    }
    close(mfd);
    fd = create_complete(c.dirfd, dname, kDomFileSize, [domid](void* p) {
      auto* h = static_cast<DomHeader*>(p);
      h->magic = kDomMagic;
      h->version = kVersion;
      h->domid = domid;
      h->nr_frames = kNrFrames;
      h->nr_grants = kNrGrants;
      h->nr_ports = kNrPorts;
      for (std::uint32_t f = 0; f < kFirstFreeFrame; ++f) h->frame_map[f / 64] |= 1ull << (f % 64);
      for (std::uint32_t r = 0; r < kFirstFreeRef; ++r) h->ref_map[r / 64] |= 1ull << (r % 64);
      return true;
    });
  }
  if (fd < 0) return nullptr;
  void* p = mmap(nullptr, kDomFileSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int e = errno;
  close(fd);
  if (p == MAP_FAILED) {
    errno = e;
    return nullptr;
  }
  auto* h = static_cast<DomHeader*>(p);
  if (h->magic != kDomMagic || h->version != kVersion || h->domid != domid) {
    munmap(p, kDomFileSize);
    log_err("%s/%s: not a domain file of this xensim version", c.dir.c_str(), dname.c_str());
    errno = EPROTO;
    return nullptr;
  }
  int mfd = openat(c.dirfd, mname.c_str(), O_RDWR | O_CLOEXEC);
  void* m = mfd < 0 ? MAP_FAILED : mmap(nullptr, kMemSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, mfd, 0);
  if (m == MAP_FAILED) {
    e = errno;
    if (mfd >= 0) close(mfd);
    munmap(p, kDomFileSize);
    errno = e;
    return nullptr;
  }
  auto* base = static_cast<std::uint8_t*>(p);
  auto* d = new Dom{domid,
                    h,
                    reinterpret_cast<grant_entry_v1_t*>(base + kGntOff),
                    reinterpret_cast<Active*>(base + kActOff),
                    reinterpret_cast<Port*>(base + kPortOff),
                    mfd,
                    static_cast<std::uint8_t*>(m)};
  c.doms[domid].store(d, std::memory_order_release);
  return d;
}

namespace {

bool bits_alloc(std::uint64_t* map, std::uint32_t nbits, std::uint32_t first, std::uint32_t count, std::uint32_t* out) {
  std::uint32_t got = 0;
  for (std::uint32_t w = first / 64; w < nbits / 64 && got < count; ++w) {
    std::uint64_t v = ld(&map[w]);
    while (~v && got < count) {
      unsigned b = static_cast<unsigned>(__builtin_ctzll(~v));
      std::uint64_t bit = 1ull << b;
      std::uint64_t old = fetch_or(&map[w], bit);
      if (!(old & bit)) out[got++] = w * 64 + b;
      v = old | bit;
    }
  }
  if (got == count) return true;
  for (std::uint32_t i = 0; i < got; ++i) fetch_and(&map[out[i] / 64], ~(1ull << (out[i] % 64)));
  return false;
}

}  // namespace

bool frames_alloc(Dom& d, std::uint32_t count, std::uint32_t* out) {
  return bits_alloc(d.hdr->frame_map, kNrFrames, kFirstFreeFrame, count, out);
}

void frame_free(Dom& d, std::uint32_t frame) {
  if (frame >= kNrFrames) return;
  // Fresh pages are zero (gntalloc allocates zeroed pages); punching also
  // gives the memory back.
  if (fallocate(d.mem_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(frame) * kPage, kPage) != 0)
    std::memset(d.mem + std::size_t{frame} * kPage, 0, kPage);
  fetch_and(&d.hdr->frame_map[frame / 64], ~(1ull << (frame % 64)));
}

bool refs_alloc(Dom& d, std::uint32_t count, std::uint32_t* out) {
  return bits_alloc(d.hdr->ref_map, kNrGrants, kFirstFreeRef, count, out);
}

void ref_free(Dom& d, std::uint32_t ref) {
  if (ref < kFirstFreeRef || ref >= kNrGrants) return;
  fetch_and(&d.hdr->ref_map[ref / 64], ~(1ull << (ref % 64)));
}

void* stitch(Dom* const* doms, const std::uint32_t* frames, std::uint32_t count, int prot) {
  std::size_t len = std::size_t{count} * kPage;
  void* base = mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) return nullptr;
  auto* b = static_cast<std::uint8_t*>(base);
  for (std::uint32_t i = 0; i < count;) {
    std::uint32_t j = i + 1;
    while (j < count && doms[j] == doms[i] && frames[j] == frames[j - 1] + 1) ++j;
    void* p = mmap(b + std::size_t{i} * kPage, std::size_t{j - i} * kPage, prot, MAP_SHARED | MAP_FIXED,
                   doms[i]->mem_fd, static_cast<off_t>(frames[i]) * kPage);
    if (p == MAP_FAILED) {
      int e = errno;
      munmap(base, len);
      errno = e;
      return nullptr;
    }
    i = j;
  }
  return base;
}

}  // namespace xensim
