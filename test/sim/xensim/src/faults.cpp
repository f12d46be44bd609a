// Fault knobs: the control file $XENSIM_DIR/xensim.faults (shared counters,
// changeable at run time) and XENSIM_FAULTS (this process only), plus the
// background thread that delivers delayed and spurious events.
//
// The hot paths pay one atomic load and, at most every 50 ms, one fstatat()
// to notice an edited control file; xensim_set_faults() bumps a generation
// number so that its change is seen by the very next operation.
#include "internal.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>

namespace xensim {

namespace {

constexpr std::int64_t kRecheckNs = 50'000'000;

bool parse_u64(const std::string& s, std::uint64_t& v) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  v = std::strtoull(s.c_str(), &end, 0);
  return !errno && *end == 0;
}

bool parse_sel(const std::string& v, Sel& s) {
  if (v == "off" || v == "0" || v == "none") {
    s = Sel{};
    return true;
  }
  if (v == "all") {
    s = Sel{1, 1};
    return true;
  }
  auto slash = v.find('/');
  std::uint64_t a = 0, b = 0;
  if (!parse_u64(v.substr(0, slash), a) || a == 0) return false;
  if (slash != std::string::npos && !parse_u64(v.substr(slash + 1), b)) return false;
  s = Sel{a, b};
  return true;
}

struct Named {
  const char* name;
  int value;
};

constexpr Named kErrnos[] = {{"EINVAL", EINVAL}, {"ENOMEM", ENOMEM}, {"EAGAIN", EAGAIN},
                             {"EFAULT", EFAULT}, {"EPERM", EPERM},   {"ENOSPC", ENOSPC},
                             {"EIO", EIO},       {"E2BIG", E2BIG},   {"ENOENT", ENOENT}};
constexpr Named kStatus[] = {{"general_error", GNTST_general_error},
                             {"bad_domain", GNTST_bad_domain},
                             {"bad_gntref", GNTST_bad_gntref},
                             {"bad_handle", GNTST_bad_handle},
                             {"bad_virt_addr", GNTST_bad_virt_addr},
                             {"bad_dev_addr", GNTST_bad_dev_addr},
                             {"no_device_space", GNTST_no_device_space},
                             {"permission_denied", GNTST_permission_denied},
                             {"bad_page", GNTST_bad_page},
                             {"bad_copy_arg", GNTST_bad_copy_arg},
                             {"address_too_big", GNTST_address_too_big},
                             {"eagain", GNTST_eagain},
                             {"no_space", GNTST_no_space}};

template <std::size_t N>
bool parse_named(const std::string& v, const Named (&table)[N], int& out) {
  for (const auto& n : table)
    if (v == n.name) {
      out = n.value;
      return true;
    }
  char* end = nullptr;
  errno = 0;
  long x = std::strtol(v.c_str(), &end, 0);
  if (v.empty() || errno || *end) return false;
  out = static_cast<int>(x);
  return true;
}

void set_counters_for(Ctx& c, std::uint64_t stamp) {
  std::uint64_t old = ld(&c.hdr->fault_stamp);
  // Whoever moves the shared stamp to this file's resets the counters: the
  // "Nth operation" of a knob counts from when the file was written.
  if (old != stamp && cas(&c.hdr->fault_stamp, old, stamp))
    for (auto& n : c.hdr->counters) st(&n, std::uint64_t{0});
}

bool reload_locked(Ctx& c, bool forced, std::uint32_t g);

void refresh(Ctx& c) {
  std::uint32_t g = ld(&c.hdr->fault_gen);
  bool forced = g != c.fault_seen_gen.load(std::memory_order_relaxed);
  if (!forced) {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    std::int64_t now = std::int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
    if (now < c.fault_next_check_ns.load(std::memory_order_relaxed)) return;
    c.fault_next_check_ns.store(now + kRecheckNs, std::memory_order_relaxed);
  }
  bool spurious;
  {
    std::lock_guard lk(c.fault_mu);
    spurious = reload_locked(c, forced, g);
  }
  // Never nested with fault_mu: lock orders stay trivial (see the fork handler).
  if (spurious) bg_ensure(c);
}

bool reload_locked(Ctx& c, bool forced, std::uint32_t g) {
  struct stat sb {};
  if (fstatat(c.dirfd, "xensim.faults", &sb, 0) != 0) {
    if (c.fault_mtime_ns != -1 || forced) {
      c.file_faults = Faults{};
      c.fault_mtime_ns = -1;
    }
  } else {
    std::int64_t mt = std::int64_t{sb.st_mtim.tv_sec} * 1000000000 + sb.st_mtim.tv_nsec;
    if (forced || mt != c.fault_mtime_ns || sb.st_ino != c.fault_ino ||
        static_cast<std::uint64_t>(sb.st_size) != c.fault_size) {
      std::string text;
      int fd = openat(c.dirfd, "xensim.faults", O_RDONLY | O_CLOEXEC);
      if (fd >= 0) {
        char buf[4096];
        ssize_t n;
        while ((n = read(fd, buf, sizeof buf)) > 0) text.append(buf, static_cast<std::size_t>(n));
        close(fd);
      }
      Faults f;
      std::string err;
      if (!parse_faults(text, f, err)) log_err("%s/xensim.faults: %s", c.dir.c_str(), err.c_str());
      c.file_faults = f;
      c.fault_mtime_ns = mt;
      c.fault_ino = sb.st_ino;
      c.fault_size = static_cast<std::uint64_t>(sb.st_size);
      std::uint64_t stamp =
          (static_cast<std::uint64_t>(mt) * 1000003u) ^ (sb.st_ino << 20) ^ static_cast<std::uint64_t>(sb.st_size);
      set_counters_for(c, stamp | 1);
    }
  }
  c.fault_seen_gen.store(g, std::memory_order_relaxed);
  c.faults_on.store(c.file_faults.any() || c.env_faults.any(), std::memory_order_release);
  return c.file_faults.spurious_us || c.env_faults.spurious_us;
}

// ---------------------------------------------------------- background

void* bg_main(void* arg) {
  Ctx& c = *static_cast<Ctx*>(arg);
  std::int64_t next_spurious = 0;
  pthread_mutex_t* mu = c.bg_mu.native_handle();
  pthread_mutex_lock(mu);
  for (;;) {
    std::uint32_t spurious_us;
    pthread_mutex_unlock(mu);
    // Knobs change under an idle process too (a daemon waiting for events
    // makes no call that would notice): look at least every wake-up.
    refresh(c);
    {
      std::lock_guard lk(c.fault_mu);
      spurious_us = c.file_faults.spurious_us ? c.file_faults.spurious_us : c.env_faults.spurious_us;
    }
    pthread_mutex_lock(mu);
    std::int64_t now = now_ns();
    std::vector<Ctx::Delayed> due;
    std::int64_t wake = now + 100'000'000;
    for (auto it = c.delayed.begin(); it != c.delayed.end();) {
      if (it->due_ns <= now) {
        due.push_back(*it);
        it = c.delayed.erase(it);
      } else {
        wake = std::min(wake, it->due_ns);
        ++it;
      }
    }
    bool spur = false;
    if (spurious_us) {
      if (next_spurious == 0) next_spurious = now + std::int64_t{spurious_us} * 1000;
      if (now >= next_spurious) {
        spur = true;
        next_spurious = now + std::int64_t{spurious_us} * 1000;
      }
      wake = std::min(wake, next_spurious);
    } else {
      next_spurious = 0;
    }
    if (!due.empty() || spur) {
      pthread_mutex_unlock(mu);
      for (auto& d : due)
        if (Dom* dom = domain(c, d.domid, false)) evtchn_deliver(c, *dom, d.port);
      if (spur)
        for (auto [domid, port] : bound_ports(c))
          if (Dom* dom = domain(c, domid, false)) evtchn_deliver(c, *dom, port);
      pthread_mutex_lock(mu);
      continue;
    }
    timespec ts{wake / 1000000000, wake % 1000000000};
    pthread_cond_timedwait(&c.bg_cv, mu, &ts);
  }
  return nullptr;
}

void bg_start_locked(Ctx& c) {
  if (c.bg_running) return;
  pthread_attr_t a;
  pthread_attr_init(&a);
  pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
  pthread_t t;
  if (pthread_create(&t, &a, bg_main, &c) == 0) {
    c.bg_running = true;
    pthread_setname_np(t, "xensim-events");
  } else {
    log_err("cannot start the event thread: delayed events are delivered at once");
  }
  pthread_attr_destroy(&a);
}

}  // namespace

bool parse_faults(const std::string& text, Faults& out, std::string& err) {
  bool ok = true;
  std::string t;
  // Comments run to the end of the line.
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '#') {
      while (i < text.size() && text[i] != '\n') ++i;
      t += ' ';
    } else {
      t += text[i];
    }
  }
  std::size_t i = 0;
  while (i < t.size()) {
    while (i < t.size() && std::strchr(" \t\r\n,;", t[i])) ++i;
    std::size_t j = i;
    while (j < t.size() && !std::strchr(" \t\r\n,;", t[j])) ++j;
    if (j == i) break;
    std::string item = t.substr(i, j - i);
    i = j;
    auto eq = item.find('=');
    std::string k = item.substr(0, eq), v = eq == std::string::npos ? "" : item.substr(eq + 1);
    bool good = eq != std::string::npos;
    std::uint64_t n = 0;
    if (!good) {
    } else if (k == "map_fail") {
      good = parse_sel(v, out.map_fail);
    } else if (k == "copy_fail") {
      good = parse_sel(v, out.copy_fail);
    } else if (k == "evt_drop") {
      good = parse_sel(v, out.evt_drop);
    } else if (k == "evt_dup") {
      good = parse_sel(v, out.evt_dup);
    } else if (k == "evt_delay") {
      good = parse_sel(v, out.evt_delay);
    } else if (k == "map_errno") {
      good = parse_named(v, kErrnos, out.map_errno) && out.map_errno > 0;
    } else if (k == "copy_status") {
      good = parse_named(v, kStatus, out.copy_status) && out.copy_status < 0;
    } else if (k == "evt_delay_us") {
      good = parse_u64(v, n) && n <= 60'000'000;
      out.delay_us = static_cast<std::uint32_t>(n);
    } else if (k == "evt_spurious_us") {
      good = parse_u64(v, n) && n <= 60'000'000;
      out.spurious_us = static_cast<std::uint32_t>(n);
    } else if (k == "copy_checks") {
      good = v == "linux" || v == "xen";
      out.xen_copy_checks = v == "xen";
    } else {
      good = false;
    }
    if (!good) {
      if (!err.empty()) err += "; ";
      err += "bad item '" + item + "'";
      ok = false;
    }
  }
  return ok;
}

void fault_refresh(Ctx& c) { refresh(c); }

FaultHit fault_check(Ctx& c, Counter which) {
  refresh(c);
  FaultHit h;
  if (!c.faults_on.load(std::memory_order_acquire)) return h;
  std::lock_guard lk(c.fault_mu);
  auto eval = [&](const Faults& f, std::uint64_t* counter, bool shared) {
    const Sel* fail = which == kCntMap ? &f.map_fail : which == kCntCopy ? &f.copy_fail : &f.evt_drop;
    bool relevant = fail->on() || (which == kCntNotify && (f.evt_dup.on() || f.evt_delay.on()));
    if (!relevant) return;
    std::uint64_t n = shared ? fetch_add(counter, std::uint64_t{1}) + 1 : ++*counter;
    h.fail |= fail->hit(n);
    if (which == kCntNotify) {
      h.dup |= f.evt_dup.hit(n);
      h.delay |= f.evt_delay.hit(n);
    }
  };
  eval(c.file_faults, &c.hdr->counters[which], true);
  eval(c.env_faults, &c.env_counters[which], false);
  return h;
}

int fault_copy_status(Ctx& c) {
  std::lock_guard lk(c.fault_mu);
  return c.file_faults.copy_fail.on() ? c.file_faults.copy_status : c.env_faults.copy_status;
}

int fault_map_errno(Ctx& c) {
  std::lock_guard lk(c.fault_mu);
  return c.file_faults.map_fail.on() ? c.file_faults.map_errno : c.env_faults.map_errno;
}

bool fault_xen_copy_checks(Ctx& c) {
  refresh(c);
  if (!c.faults_on.load(std::memory_order_acquire)) return false;
  std::lock_guard lk(c.fault_mu);
  return c.file_faults.xen_copy_checks || c.env_faults.xen_copy_checks;
}

std::uint32_t fault_delay_us(Ctx& c) {
  std::lock_guard lk(c.fault_mu);
  return c.file_faults.evt_delay.on() ? c.file_faults.delay_us : c.env_faults.delay_us;
}

void schedule_delayed(Ctx& c, std::uint32_t domid, std::uint32_t port, std::uint32_t us) {
  std::lock_guard lk(c.bg_mu);
  c.delayed.push_back({now_ns() + std::int64_t{us} * 1000, domid, port});
  bg_start_locked(c);
  pthread_cond_signal(&c.bg_cv);
}

void bg_ensure(Ctx& c) {
  std::lock_guard lk(c.bg_mu);
  bg_start_locked(c);
  pthread_cond_signal(&c.bg_cv);
}

}  // namespace xensim
