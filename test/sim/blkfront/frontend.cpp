#include "blkfront/frontend.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "blkfront/stop.hpp"

namespace xbd::sim::blkfront {

namespace {
const char* const state_token = "blkfront-sim-backend-state";

std::string state_name(std::optional<unsigned> s) {
  static const char* names[] = {"Unknown", "Initialising", "InitWait",      "Initialised", "Connected",
                                "Closing", "Closed",       "Reconfiguring", "Reconfigured"};
  if (!s) return "absent";
  if (*s < 9) return std::to_string(*s) + " (" + names[*s] + ")";
  return std::to_string(*s);
}
}  // namespace

std::vector<ring_queue*> connection::queue_ptrs() const {
  std::vector<ring_queue*> out;
  for (const auto& q : queues) out.push_back(q.get());
  return out;
}

bool frontend::discover(std::string& err) {
  frontend_dir_ = "/local/domain/" + std::to_string(o_.domid) + "/device/vbd/" + std::to_string(o_.devid);
  if (o_.backend_path) {
    backend_dir_ = *o_.backend_path;
  } else if (auto b = xs_.read(frontend_dir_ + "/backend")) {
    backend_dir_ = *b;
  } else {
    err = "cannot read " + frontend_dir_ + "/backend (does the device exist?)";
    return false;
  }
  if (o_.backend_id) {
    backend_id_ = *o_.backend_id;
  } else {
    auto raw = xs_.read(frontend_dir_ + "/backend-id");
    auto id = raw ? parse_u64(*raw) : std::nullopt;
    if (!id || *id > 0x7fef) {
      err = "cannot read a domain id from " + frontend_dir_ + "/backend-id";
      return false;
    }
    backend_id_ = static_cast<std::uint32_t>(*id);
  }
  if (!xs_.watch(backend_dir_ + "/state", state_token)) {
    err = "cannot watch " + backend_dir_ + "/state";
    return false;
  }
  return true;
}

std::optional<unsigned> frontend::backend_state() {
  auto raw = xs_.read(backend_dir_ + "/state");
  std::optional<unsigned> s;
  if (raw) {
    if (auto v = parse_u64(*raw); v && *v < 1000)
      s = static_cast<unsigned>(*v);
    else
      s = 0;  // present but garbage: XenbusStateUnknown
  }
  if (s && (seen_.empty() || seen_.back() != *s)) seen_.push_back(*s);
  return s;
}

bool frontend::backend_left() {
  const auto s = backend_state();
  return !s || *s == xenbus::closing || *s == xenbus::closed;
}

bool frontend::set_state(unsigned s, std::string& err) {
  if (!xs_.write(frontend_dir_ + "/state", std::to_string(s))) {
    err = "cannot write " + frontend_dir_ + "/state: " + std::strerror(errno);
    return false;
  }
  return true;
}

bool frontend::wait_backend(const std::function<bool(std::optional<unsigned>)>& pred, const char* what,
                            std::string& err, std::chrono::milliseconds limit, bool closing) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    const auto s = backend_state();
    if (pred(s)) return true;
    const auto stop = p_.stop_requested();
    if (stop && !closing) {
      err = std::string("interrupted while waiting for the backend to ") + what;
      return false;
    }
    if (stop) deadline = std::min(deadline, *stop + stop_bound::close);
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      err = std::string(stop ? "stopping after a signal, gave up waiting for the backend to "
                             : "timed out waiting for the backend to ") +
            what + "; its state is " + state_name(s);
      if (auto e = xs_.read(backend_dir_ + "/error")) err += "; backend error: " + *e;
      return false;
    }
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - now);
    // Watches wake us; the cap only bounds a missed wake-up.
    p_.wait(std::min(left, std::chrono::milliseconds(500)));
  }
}

bool frontend::publish(connection& c, std::string& err) {
  std::vector<queue_keys> keys;
  for (const auto& q : c.queues) keys.push_back({q->ring_pages.refs(), q->port.port()});
  key_plan_options kopts;
  if (o_.protocol_key)
    kopts.protocol = *o_.protocol_key;
  else if (o_.write_protocol_key)
    kopts.protocol = std::string(c.layout->name());
  kopts.persistent = o_.persistent;
  kopts.large_sectors = o_.large_sectors;
  kopts.always_write_ring_page_order = o_.always_write_ring_page_order;

  std::string body_err;
  const bool ok = xs_.transaction(
      [&](unsigned t) {
        const auto existing = xs_.directory_in(t, frontend_dir_);
        for (const auto& op : frontend_key_plan(frontend_dir_, c.neg, keys, kopts, existing)) {
          const bool done =
              op.what == key_op::kind::write ? xs_.write_in(t, op.path, op.value) : xs_.remove_in(t, op.path);
          if (!done) {
            body_err = "writing " + op.path;
            return false;
          }
        }
        return true;
      },
      err);
  if (!ok && !body_err.empty()) err = body_err + ": " + err;
  return ok;
}

bool frontend::connect(connection& c, std::string& err, std::vector<std::string>& protocol_errors) {
  // A previous run may have left the device Initialised/Connected (killed,
  // or --no-close): close it first, so the backend starts from scratch.
  auto own = xs_.read(frontend_dir_ + "/state");
  const auto own_state = own ? parse_u64(*own) : std::nullopt;
  if (own_state && *own_state >= xenbus::initialised && *own_state <= xenbus::closing) {
    connection stale;
    std::string ignored;
    close(stale, ignored, std::min(o_.timeout, close_grace));
  }
  if (!own_state || *own_state != xenbus::initialising)
    if (!set_state(xenbus::initialising, err)) return false;

  if (!wait_backend([](auto s) { return s == xenbus::init_wait; }, "reach InitWait", err, o_.timeout)) return false;

  const std::string bdir = backend_dir_;
  key_reader read = [&](std::string_view key) { return xs_.read(bdir + "/" + std::string(key)); };
  c.features = read_backend_features(read, protocol_errors);
  frontend_wishes wishes = o_.wishes;
  c.neg = negotiate(c.features, wishes);

  std::string why;
  c.layout = make_abi(o_.protocol, &why);
  if (!c.layout) {
    err = why;
    return false;
  }
  c.queues.clear();
  for (unsigned i = 0; i < c.neg.queues; ++i) {
    platform& qp = i < queue_platforms_.size() ? *queue_platforms_[i] : p_;
    auto q = make_ring_queue(qp, backend_id_, i, c.neg.ring_pages, c.layout->slot_size(), err);
    if (!q) return false;
    c.queues.push_back(std::move(q));
  }
  if (!publish(c, err)) return false;
  if (!set_state(xenbus::initialised, err)) return false;

  std::optional<unsigned> last;
  if (!wait_backend(
          [&](auto s) {
            last = s;
            return s == xenbus::connected || !s || *s >= xenbus::closing;
          },
          "reach Connected", err, o_.timeout))
    return false;
  if (last != xenbus::connected) {
    err = "the backend went to state " + state_name(last) + " instead of Connected";
    if (auto e = xs_.read(backend_dir_ + "/error")) err += "; backend error: " + *e;
    return false;
  }
  auto disk = read_disk_properties(read, protocol_errors);
  if (!disk) {
    err = "the backend is Connected but its device properties are unusable";
    return false;
  }
  c.disk = *disk;
  return set_state(xenbus::connected, err);
}

namespace {

// How many of the connection's ring pages the backend holds.
std::optional<unsigned> held(platform& p, const connection& c) {
  unsigned n = 0;
  for (const auto& q : c.queues)
    for (std::uint32_t ref : q->ring_pages.refs()) {
      const auto h = p.backend_holds(ref);
      if (!h) return std::nullopt;
      n += *h ? 1 : 0;
    }
  return n;
}

}  // namespace

bool frontend::close(connection& c, std::string& err, std::chrono::milliseconds limit) {
  bool ok = set_state(xenbus::closing, err);
  // A backend that is already gone (directory removed, daemon dead) cannot
  // answer; the bounded waits below then fail and are reported.
  ok = ok && wait_backend([](auto s) { return !s || *s == xenbus::closing || *s == xenbus::closed; },
                          "follow to Closing", err, limit, true);
  ok = set_state(xenbus::closed, err) && ok;
  if (ok) ok = wait_backend([](auto s) { return !s || *s == xenbus::closed; }, "reach Closed", err, limit, true);
  // Only now has the backend unmapped the rings and unbound its ports.
  rings_held_ = ok ? held(p_, c) : std::nullopt;
  c.queues.clear();
  return ok;
}

}  // namespace xbd::sim::blkfront
