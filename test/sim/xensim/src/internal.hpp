// The simulated hypervisor's state, shared by every process of one simulation
// through files in XENSIM_DIR, and the per-process context that maps them.
//
// Files (all prefixed "xensim." so that the directory can be shared with
// other parts of the simulation, e.g. xenstored's run directory):
//   xensim.state   SimHeader: the global lock, process and event-channel
//                  handle tables, fault-knob counters.
//   xensim.lock    one byte per process slot, write-locked (fcntl) by the
//                  live process in that slot; the kernel drops the lock when
//                  the process dies, which is how a dead owner is detected
//                  without a daemon and without trusting pids.
//   xensim.dom<N>  domain N: header (frame and grant-ref allocators), the
//                  v1 grant table, Xen's active-grant entries (pin counts),
//                  and the event-channel ports.
//   xensim.mem<N>  domain N's memory, frame f at offset f*4096 (sparse).
//   xensim.proc<S> records of what the process in slot S holds (grant pins,
//                  shared pages, bound ports), so that another process can
//                  release them as the kernel would at exit.
//   xensim.ev<U>   FIFO of event-channel handle U: its wake-up descriptor.
//   xensim.faults  the run-time fault-knob control file (text).
//
// A file is created complete under a temporary name and link()ed into place,
// so a process that can open it sees it initialised.
#pragma once

#include "asio_xen/xen.hpp"

#include <pthread.h>
#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

struct xenevtchn_handle;
struct xengntdev_handle;

namespace xensim {

inline constexpr std::uint32_t kPage = 4096;
inline constexpr std::uint32_t kMaxProcs = 1024;
inline constexpr std::uint32_t kMaxHandles = 4096;
// Xen's 2-level event ABI on 64-bit: 64 * 64 ports.
inline constexpr std::uint32_t kNrPorts = 4096;
// Xen's default gnttab_max_frames (64) of v1 entries.
inline constexpr std::uint32_t kNrGrants = 64 * (kPage / sizeof(grant_entry_v1_t));
// 256 MiB of guest memory per domain; the file is sparse.
inline constexpr std::uint32_t kNrFrames = 65536;
// Frames below this are never handed out by the allocator: the toolstack may
// use them (xenstore and console rings live at fixed frames in real guests).
inline constexpr std::uint32_t kFirstFreeFrame = 16;
// GNTTAB_NR_RESERVED_ENTRIES: the toolstack owns refs 0..7.
inline constexpr std::uint32_t kFirstFreeRef = 8;
inline constexpr std::uint32_t kMaxRecords = 1u << 20;
inline constexpr std::uint32_t kNrVirqs = 24;  // NR_VIRQS
inline constexpr std::uint32_t kMaxDomid = DOMID_FIRST_RESERVED;

// ---------------------------------------------------------------- atomics
// The shared files are plain memory mapped by several processes; every field
// that two parties race on is accessed through these (GCC builtins, so that a
// 16-bit flags word and the 32-bit flags+domid word overlapping it can both be
// updated atomically, as Xen and Linux do on the real grant table).
template <class T>
inline T ld(const T* p) {
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
template <class T>
inline void st(T* p, std::type_identity_t<T> v) {
  __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
template <class T>
inline bool cas(T* p, T& expected, std::type_identity_t<T> desired) {
  return __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}
template <class T>
inline T fetch_add(T* p, std::type_identity_t<T> v) {
  return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL);
}
template <class T>
inline T fetch_or(T* p, std::type_identity_t<T> v) {
  return __atomic_fetch_or(p, v, __ATOMIC_ACQ_REL);
}
template <class T>
inline T fetch_and(T* p, std::type_identity_t<T> v) {
  return __atomic_fetch_and(p, v, __ATOMIC_ACQ_REL);
}
template <class T>
inline T xchg(T* p, std::type_identity_t<T> v) {
  return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL);
}

// ------------------------------------------------------------ shared state
enum Counter : unsigned { kCntMap, kCntCopy, kCntNotify, kNrCounters };

struct ProcSlot {
  std::uint32_t state;  // 0 free, 1 live
  std::uint32_t gen;    // bumped at every (re)use, so stale owners are told apart
  std::int32_t pid;     // informational (dumps); liveness comes from the lock
  std::uint32_t pad;
};

struct HandleSlot {    // one event-channel handle (one wake-up FIFO)
  std::uint64_t uid;   // names the handle's FIFO; never reused in a simulation
  std::int32_t ready;  // ports queued for the handle's pending(); see evtchn.cpp
  std::uint32_t proc;  // owning process slot
  std::uint32_t in_use;
  std::uint32_t domid;
  std::uint64_t pad;
};

struct SimHeader {
  std::uint64_t magic;
  std::uint32_t version;
  std::uint32_t size;
  std::uint64_t sim_id;  // random: tells simulations apart (e.g. a stale mapping)
  std::uint64_t next_uid;
  std::uint32_t fault_gen;  // bumped by xensim_set_faults: reload now
  std::uint32_t pad0;
  std::uint64_t fault_stamp;  // which control file the counters count for
  std::uint64_t counters[kNrCounters];
  alignas(64) pthread_mutex_t lock;  // robust, process-shared: slow paths only
  alignas(64) ProcSlot procs[kMaxProcs];
  alignas(64) HandleSlot handles[kMaxHandles];
};

// Xen's active grant entry, plus what the simulated guest kernel keeps about
// refs it allocated.
struct Active {
  std::uint32_t lock;    // 0 or holder's process slot + 1
  std::uint16_t pin_ro;  // read-only pins (maps and copies in flight)
  std::uint16_t pin_rw;  // writable pins
  std::uint32_t frame;   // frame captured at the first pin (Xen's act->mfn)
  std::uint16_t domid;   // domain holding the pins (Xen's act->domid)
  std::uint16_t meta;    // kMeta* below
};
inline constexpr std::uint16_t kMetaOwnsFrame = 1;  // ending access frees the frame
inline constexpr std::uint16_t kMetaDeferred = 2;   // end of access waits for unpin

// Port states (Xen's ECS_*).
enum PortState : std::uint32_t { kFree = 0, kUnbound = 1, kInterdomain = 2, kVirq = 3 };

// Bits of Port::ev (low half); the high half is the handle slot + 1.
inline constexpr std::uint64_t kEvPending = 1;  // Xen's pending bit (latched)
inline constexpr std::uint64_t kEvMasked = 2;   // masked (Linux: irq disabled until unmask)
inline constexpr std::uint64_t kEvQueued = 4;   // in the handle's ring, not yet read

struct Port {
  std::uint64_t ev;
  std::uint32_t state;
  std::uint32_t remote_dom;   // unbound: who may bind; interdomain: peer domain
  std::uint32_t remote_port;  // interdomain: peer port
  std::uint32_t virq;
  std::uint32_t owner_proc;
  std::uint32_t owner_gen;
  std::uint32_t rec;  // record in the owner's xensim.proc file
  std::uint32_t pad[7];
};
static_assert(sizeof(Port) == 64);

struct DomHeader {
  std::uint64_t magic;
  std::uint32_t version;
  std::uint32_t domid;
  std::uint32_t nr_frames, nr_grants, nr_ports, pad;
  std::uint64_t frame_map[kNrFrames / 64];  // allocated frames
  std::uint64_t ref_map[kNrGrants / 64];    // allocated grant refs
};

inline constexpr std::size_t kDomHdrSize = 64 * 1024;
static_assert(sizeof(DomHeader) <= kDomHdrSize);
inline constexpr std::size_t kGntOff = kDomHdrSize;
inline constexpr std::size_t kActOff = kGntOff + std::size_t{kNrGrants} * sizeof(grant_entry_v1_t);
inline constexpr std::size_t kPortOff = kActOff + std::size_t{kNrGrants} * sizeof(Active);
inline constexpr std::size_t kDomFileSize = kPortOff + std::size_t{kNrPorts} * sizeof(Port);
inline constexpr std::size_t kMemSize = std::size_t{kNrFrames} * kPage;

// What a process holds, recorded where a survivor can read it.
enum RecKind : std::uint32_t { kRecFree = 0, kRecPin = 1, kRecShare = 2, kRecPort = 3 };
inline constexpr std::uint32_t kRecWritable = 1;
inline constexpr std::uint32_t kRecActive = 2;       // the pin/grant is in place
inline constexpr std::uint32_t kRecNotifyClear = 4;  // clear byte notify_off at release
inline constexpr std::uint32_t kRecNotifyEvent = 8;  // notify via `port` at release

struct Rec {
  std::uint32_t kind;
  std::uint32_t flags;
  std::uint32_t domid;  // pin: granting domain; share/port: own domain
  std::uint32_t ref;
  std::uint32_t frame;
  std::uint32_t port;        // port record: the port; notify: the port to signal
  std::uint32_t notify_off;  // byte offset within the page
  std::uint32_t notify_dom;  // domain owning `port` for a notify
};
static_assert(sizeof(Rec) == 32);

// ------------------------------------------------------------ fault knobs
struct Sel {  // which operations a knob hits: the first-th, then every period-th
  std::uint64_t first = 0, period = 0;
  bool on() const { return first != 0; }
  bool hit(std::uint64_t n) const {
    if (!first || n < first) return false;
    if (n == first) return true;
    return period && (n - first) % period == 0;
  }
};

struct Faults {
  Sel map_fail, copy_fail, evt_drop, evt_dup, evt_delay;
  int map_errno = ENOMEM;
  int copy_status = GNTST_general_error;
  std::uint32_t delay_us = 1000;
  std::uint32_t spurious_us = 0;
  bool xen_copy_checks = false;  // per-segment bad_copy_arg instead of gntdev's EINVAL
  bool any() const {
    return map_fail.on() || copy_fail.on() || evt_drop.on() || evt_dup.on() || evt_delay.on() || spurious_us ||
           xen_copy_checks;
  }
};
// Parses "key=value ..." (whitespace, commas or newlines between); returns
// false and fills `err` on a bad item (the good ones still apply).
bool parse_faults(const std::string& text, Faults& out, std::string& err);

// What a knob decided for one operation.
struct FaultHit {
  bool fail = false;  // map/copy: fail; notify: drop
  bool dup = false;
  bool delay = false;
};

// ------------------------------------------------------------ death hook
// XENSIM_DIE_AT=POINT[:N]: the process SIGKILLs itself the Nth time (default
// the first) it reaches POINT, for tests of a process killed in the middle
// of an operation (README, "Fault knobs"). Read when the process joins.
enum DiePoint : int {
  kDieNone = 0,
  kDieNotifyQueued,   // an event has queued a port; its handle is not counted nor woken
  kDieNotifyCounted,  // the handle's ready count went 0 -> 1; its FIFO not yet written
  kDieEntryLocked,    // a grant entry's lock was just taken
};

// ------------------------------------------------------- process context
struct Dom {
  std::uint32_t domid;
  DomHeader* hdr;
  grant_entry_v1_t* gnt;
  Active* act;
  Port* ports;
  int mem_fd;
  std::uint8_t* mem;
};

struct WakeFd {  // a descriptor on another handle's FIFO
  std::uint64_t uid = 0;
  int fd = -1;
};

struct Ctx {
  std::string dir;
  int dirfd = -1;
  int lockfd = -1;
  SimHeader* hdr = nullptr;

  // Wake-up descriptors by handle slot (evtchn.cpp), under striped locks.
  static constexpr unsigned kWakeLocks = 64;
  std::mutex wake_mu[kWakeLocks];
  WakeFd* wake = nullptr;  // [kMaxHandles]

  // This process's registration (redone in a fork child).
  std::uint32_t slot = ~0u;
  std::uint32_t gen = 0;
  std::uint32_t lock_tag = 0;  // entry lock word of this registration (entry_lock)
  int die_point = kDieNone;    // XENSIM_DIE_AT
  std::atomic<std::uint64_t> die_left{0};
  std::uint64_t fork_gen = ~0ull;
  Rec* recs = nullptr;
  std::mutex rec_mu;
  std::vector<std::uint32_t> rec_free;
  std::uint32_t rec_hwm = 0;

  std::atomic<Dom*>* doms = nullptr;  // [kMaxDomid]
  std::mutex dom_mu;

  std::mutex mu;  // the lists below, registration
  std::vector<xenevtchn_handle*> evtchns;

  // Fault knobs: the control file's (counters shared by the simulation) and
  // XENSIM_FAULTS's (counters of this process).
  std::mutex fault_mu;
  Faults file_faults, env_faults;
  std::uint64_t env_counters[kNrCounters] = {};
  std::atomic<bool> faults_on{false};
  std::atomic<std::uint32_t> fault_seen_gen{~0u};
  std::atomic<std::int64_t> fault_next_check_ns{0};
  std::int64_t fault_mtime_ns = -1;
  std::uint64_t fault_ino = 0, fault_size = ~0ull;

  // Background thread for delayed and spurious events (started on demand).
  std::mutex bg_mu;
  pthread_cond_t bg_cv;
  bool bg_running = false;
  struct Delayed {
    std::int64_t due_ns;
    std::uint32_t domid, port;
  };
  std::vector<Delayed> delayed;
};

// Returns the context of XENSIM_DIR (registering this process in it), or
// nullptr with errno set and a message on stderr naming `who`.
Ctx* context(const char* who);
// The caller's domid from XENSIM_DOMID (default 0); -1 and errno if invalid.
int env_domid(const char* who);
// Makes sure the process is registered (again, after fork). Caller must not
// hold the global lock.
bool ensure_registered(Ctx& c);

// Domain N's mapping, or nullptr (errno ESRCH) if it does not exist and
// `create` is false.
Dom* domain(Ctx& c, std::uint32_t domid, bool create);

// The global (robust, process-shared) lock.
class GlobalLock {
 public:
  explicit GlobalLock(Ctx& c);
  ~GlobalLock();
  GlobalLock(const GlobalLock&) = delete;
  GlobalLock& operator=(const GlobalLock&) = delete;

 private:
  Ctx& c_;
};

// Per-active-entry spin lock, tagged with the holder's registration (slot
// and generation) so that a lock left by a killed process can be taken
// over, even by the next process registered in the same slot.
void entry_lock(Ctx& c, Active& a);
void entry_unlock(Active& a);

// The death hook: SIGKILLs the process when XENSIM_DIE_AT names `p` and its
// count is reached. One compare when the hook is off.
void die_slow(Ctx& c);
inline void die_at(Ctx& c, DiePoint p) {
  if (c.die_point == p) [[unlikely]]
    die_slow(c);
}

bool proc_alive(Ctx& c, std::uint32_t slot);
// Releases everything held by dead processes. Caller holds the global lock.
unsigned reap_dead_locked(Ctx& c);
unsigned reap_dead(Ctx& c);

// Records.
std::uint32_t rec_alloc(Ctx& c);  // ~0u if full
void rec_free(Ctx& c, std::uint32_t i);

// Allocators (lock-free on the domain's bitmaps).
bool frames_alloc(Dom& d, std::uint32_t count, std::uint32_t* out);
void frame_free(Dom& d, std::uint32_t frame);  // zeroes it (fresh pages are zero)
bool refs_alloc(Dom& d, std::uint32_t count, std::uint32_t* out);
void ref_free(Dom& d, std::uint32_t ref);

// Grants, the hypervisor side. acquire() returns a GNTST code; on success the
// entry is pinned (and the caller's record, if any, marked active) and
// *frame is the granted frame.
// `mapping` adds Xen's map-only check (no sub-page grants).
int grant_acquire(Ctx& c, Dom& d, std::uint32_t ref, bool writable, bool mapping, std::uint32_t caller_dom,
                  std::uint32_t* frame, Rec* rec);
void grant_release(Ctx& c, Dom& d, std::uint32_t ref, bool writable, Rec* rec);
// The guest side: gnttab_end_foreign_access. Returns true if access ended
// now; with `defer`, a grant still in use is left for the last unpin to end.
bool grant_end(Ctx& c, Dom& d, std::uint32_t ref, bool defer);

// Event channels.
void evtchn_deliver(Ctx& c, Dom& d, std::uint32_t port);  // set pending, wake
// Sends on local port `port` of `d` (to its interdomain peer), as
// EVTCHNOP_send, with the notify fault knobs if `faults`.
void port_send(Ctx& c, Dom& d, std::uint32_t port, bool faults);
// EVTCHNOP_close; returns the port's delivery word as it was. `uncount`: a
// queued port leaves its handle's ready count (unbind keeps it counted).
std::uint64_t port_close_locked(Ctx& c, Dom& d, std::uint32_t port, bool uncount = true);
void wake_handle(Ctx& c, std::uint32_t hslot);
// After processes died: a producer killed inside a delivery may have left a
// port queued but not counted, or counted without the FIFO written. Every
// live handle with a queued port or a count is counted and woken again
// (evtchn.cpp). Caller holds the global lock.
void rewake_handles_locked(Ctx& c);
// Removes the files of a closed or dead handle.
void handle_files_gone(Ctx& c, std::uint64_t uid);
// (domid, port) of every port bound by this process's handles.
std::vector<std::pair<std::uint32_t, std::uint32_t>> bound_ports(Ctx& c);
// Bumped in every fork child: handles opened before the fork are the parent's.
std::uint64_t fork_generation();

#define XENSIM_API extern "C" __attribute__((visibility("default")))

// Fault knobs.
FaultHit fault_check(Ctx& c, Counter which);
// Re-reads the control file if it changed (cheap when it did not).
void fault_refresh(Ctx& c);
int fault_copy_status(Ctx& c);
int fault_map_errno(Ctx& c);
bool fault_xen_copy_checks(Ctx& c);
std::uint32_t fault_delay_us(Ctx& c);
void schedule_delayed(Ctx& c, std::uint32_t domid, std::uint32_t port, std::uint32_t us);
void bg_ensure(Ctx& c);
std::int64_t now_ns();

// Stitches `count` frames into one contiguous range (reserve PROT_NONE, then
// one MAP_FIXED|MAP_SHARED mapping per run of adjacent frames of a domain).
void* stitch(Dom* const* doms, const std::uint32_t* frames, std::uint32_t count, int prot);

void log_err(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

}  // namespace xensim
