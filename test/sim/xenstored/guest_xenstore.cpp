#include "test/sim/xenstored/guest_xenstore.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <deque>
#include <random>

#include "asio_xen/xen.hpp"
#include "test/sim/xenstored/sim_files.hpp"

namespace xbd::sim {

using detail::errno_code;
using detail::throw_errno;
using detail::unique_fd;
using clock = std::chrono::steady_clock;

std::string permission::to_string() const { return static_cast<char>(access) + std::to_string(domid); }

std::optional<permission> permission::parse(std::string_view s) {
  if (s.size() < 2 || s.size() > 6) return std::nullopt;
  permission p;
  switch (s[0]) {
    case 'n':
      p.access = none;
      break;
    case 'r':
      p.access = read;
      break;
    case 'w':
      p.access = write;
      break;
    case 'b':
      p.access = both;
      break;
    default:
      return std::nullopt;
  }
  unsigned id = 0;
  for (char c : s.substr(1)) {
    if (c < '0' || c > '9') return std::nullopt;
    id = id * 10 + static_cast<unsigned>(c - '0');
  }
  p.domid = id;
  return p;
}

namespace {

constexpr std::size_t header_size = sizeof(xsd_sockmsg);

// The ring indexes are shared with another process: every access is atomic,
// with acquire/release pairing so that the ring bytes they cover are seen.
XENSTORE_RING_IDX load(XENSTORE_RING_IDX& idx) {
  return std::atomic_ref<XENSTORE_RING_IDX>(idx).load(std::memory_order_acquire);
}
void store(XENSTORE_RING_IDX& idx, XENSTORE_RING_IDX v) {
  std::atomic_ref<XENSTORE_RING_IDX>(idx).store(v, std::memory_order_release);
}

std::error_code error_from_reply(std::string_view body) {
  const auto name = body.substr(0, body.find('\0'));
  for (const auto& e : xsd_errors)
    if (name == e.errstring) return errno_code(e.errnum);
  return errno_code(EIO);
}

std::vector<std::string> split_nul(std::string_view body) {
  std::vector<std::string> out;
  while (!body.empty()) {
    const auto end = body.find('\0');
    auto item = body.substr(0, end);
    if (!item.empty()) out.emplace_back(item);
    if (end == std::string_view::npos) break;
    body.remove_prefix(end + 1);
  }
  return out;
}

std::string with_nul(std::string_view s) {
  std::string r(s);
  r.push_back('\0');
  return r;
}

}  // namespace

struct guest_xenstore::impl {
  struct message {
    xsd_sockmsg header{};
    std::string body;
  };

  unsigned domid = 0;
  duration timeout{};
  unique_fd page_fd;  // holds the one-guest-per-domain flock
  unique_fd notify_fd;
  unique_fd kick_fd;
  xenstore_domain_interface* intf = nullptr;

  std::uint32_t next_req_id = 1;
  std::uint32_t awaited_req_id = 0;
  std::optional<message> reply;
  std::string tx;  // request bytes not yet in the ring
  std::string rx;  // response bytes not yet parsed into messages
  std::deque<watch_event> events;

  ~impl() {
    if (intf) ::munmap(intf, XBD_XS_PAGE_SIZE);
  }

  std::error_code kick() { return detail::kick(kick_fd.get(), domid); }

  std::error_code flush_tx() {
    bool moved = false;
    while (!tx.empty()) {
      const XENSTORE_RING_IDX cons = load(intf->req_cons);
      const XENSTORE_RING_IDX prod = load(intf->req_prod);
      if (prod - cons > XENSTORE_RING_SIZE) return errno_code(EIO);
      const std::size_t room = XENSTORE_RING_SIZE - (prod - cons);
      if (room == 0) break;
      const std::size_t n = std::min({room, std::size_t{XENSTORE_RING_SIZE} - MASK_XENSTORE_IDX(prod), tx.size()});
      std::memcpy(intf->req + MASK_XENSTORE_IDX(prod), tx.data(), n);
      store(intf->req_prod, prod + static_cast<XENSTORE_RING_IDX>(n));
      tx.erase(0, n);
      moved = true;
    }
    return moved ? kick() : std::error_code{};
  }

  std::error_code pump_rx() {
    bool moved = false;
    for (;;) {
      const XENSTORE_RING_IDX prod = load(intf->rsp_prod);
      const XENSTORE_RING_IDX cons = load(intf->rsp_cons);
      if (prod - cons > XENSTORE_RING_SIZE) return errno_code(EIO);
      if (prod == cons) break;
      const std::size_t n =
          std::min<std::size_t>(prod - cons, std::size_t{XENSTORE_RING_SIZE} - MASK_XENSTORE_IDX(cons));
      rx.append(intf->rsp + MASK_XENSTORE_IDX(cons), n);
      store(intf->rsp_cons, cons + static_cast<XENSTORE_RING_IDX>(n));
      moved = true;
    }
    // xenstored may be holding output until the ring has room again.
    if (moved)
      if (auto ec = kick()) return ec;

    while (rx.size() >= header_size) {
      message m;
      std::memcpy(&m.header, rx.data(), header_size);
      if (m.header.len > XENSTORE_PAYLOAD_MAX) return errno_code(EIO);
      if (rx.size() < header_size + m.header.len) break;
      m.body = rx.substr(header_size, m.header.len);
      rx.erase(0, header_size + m.header.len);
      if (m.header.type == XS_WATCH_EVENT) {
        auto parts = split_nul(m.body);
        if (parts.size() >= 2) events.push_back({std::move(parts[0]), std::move(parts[1])});
      } else if (awaited_req_id != 0 && m.header.req_id == awaited_req_id && !reply) {
        reply = std::move(m);
      }
      // Anything else answers a request that timed out earlier: dropped.
    }
    return {};
  }

  // Drains the notification FIFO after sleeping on it, so that a notify
  // arriving after the drain leaves a byte and wakes the next poll.
  template <class Pred>
  std::error_code wait_until(Pred done, clock::time_point deadline) {
    for (;;) {
      if (auto ec = flush_tx()) return ec;
      if (auto ec = pump_rx()) return ec;
      if (done()) return {};
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - clock::now());
      if (left.count() <= 0) return errno_code(ETIMEDOUT);
      pollfd pfd{notify_fd.get(), POLLIN, 0};
      if (::poll(&pfd, 1, static_cast<int>(std::min<long long>(left.count(), 1 << 30))) < 0 && errno != EINTR)
        return errno_code();
      char buf[256];
      while (::read(notify_fd.get(), buf, sizeof buf) > 0) {
      }
    }
  }

  result<std::string> transact(std::uint32_t type, std::string_view payload, std::uint32_t txn) {
    if (payload.size() > XENSTORE_PAYLOAD_MAX) return errno_code(E2BIG);
    xsd_sockmsg h{};
    h.type = type;
    h.req_id = next_req_id++;
    if (next_req_id == 0) next_req_id = 1;
    h.tx_id = txn;
    h.len = static_cast<std::uint32_t>(payload.size());
    tx.append(reinterpret_cast<const char*>(&h), header_size);
    tx.append(payload);

    awaited_req_id = h.req_id;
    reply.reset();
    auto ec = wait_until([&] { return reply.has_value(); }, clock::now() + timeout);
    awaited_req_id = 0;
    if (ec) return ec;
    message m = std::move(*reply);
    reply.reset();
    if (m.header.type == XS_ERROR) return error_from_reply(m.body);
    if (m.header.type != type) return errno_code(EIO);
    return std::move(m.body);
  }

  std::error_code ack(std::uint32_t type, std::string_view payload, std::uint32_t txn) {
    return transact(type, payload, txn).error();
  }
};

guest_xenstore::guest_xenstore(const std::filesystem::path& sim_dir, unsigned domid, duration timeout)
    : p_(std::make_unique<impl>()) {
  p_->domid = domid;
  p_->timeout = timeout;

  const auto page = detail::page_file(sim_dir, domid);
  p_->page_fd = unique_fd(::open(page.c_str(), O_RDWR | O_CLOEXEC));
  if (!p_->page_fd) throw_errno(errno, "guest " + std::to_string(domid) + ": open " + page.string());
  if (::flock(p_->page_fd.get(), LOCK_EX | LOCK_NB) < 0)
    throw_errno(errno == EWOULDBLOCK ? EBUSY : errno,
                "guest " + std::to_string(domid) + ": another guest_xenstore holds the ring");
  void* m = ::mmap(nullptr, XBD_XS_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, p_->page_fd.get(), 0);
  if (m == MAP_FAILED) throw_errno(errno, "mmap " + page.string());
  p_->intf = static_cast<xenstore_domain_interface*>(m);

  // Read-write: see layout.h (no EOF/HUP when xenstored closes its end).
  const auto fifo = detail::notify_fifo(sim_dir, domid);
  p_->notify_fd = unique_fd(::open(fifo.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC));
  if (!p_->notify_fd) throw_errno(errno, "open " + fifo.string());
  char buf[256];
  while (::read(p_->notify_fd.get(), buf, sizeof buf) > 0) {
  }

  std::error_code ec;
  p_->kick_fd = detail::open_kick(sim_dir, ec);
  if (ec) throw std::system_error(ec, "guest " + std::to_string(domid) + ": xenstored in " + sim_dir.string());

  // Request ids of an earlier guest object may still have answers in flight;
  // start somewhere else so that none of them is taken for ours.
  p_->next_req_id = std::random_device{}() | 1u;
}

guest_xenstore::~guest_xenstore() = default;
guest_xenstore::guest_xenstore(guest_xenstore&&) noexcept = default;
guest_xenstore& guest_xenstore::operator=(guest_xenstore&&) noexcept = default;

unsigned guest_xenstore::domid() const noexcept { return p_->domid; }
std::string guest_xenstore::home() const { return "/local/domain/" + std::to_string(p_->domid); }
guest_xenstore::duration guest_xenstore::timeout() const noexcept { return p_->timeout; }
void guest_xenstore::set_timeout(duration timeout) noexcept { p_->timeout = timeout; }

result<std::string> guest_xenstore::read(std::string_view path, std::uint32_t txn) {
  return p_->transact(XS_READ, with_nul(path), txn);
}

std::error_code guest_xenstore::write(std::string_view path, std::string_view value, std::uint32_t txn) {
  // The value is not NUL-terminated on the wire: it ends with the message.
  std::string payload = with_nul(path);
  payload.append(value);
  return p_->ack(XS_WRITE, payload, txn);
}

std::error_code guest_xenstore::mkdir(std::string_view path, std::uint32_t txn) {
  return p_->ack(XS_MKDIR, with_nul(path), txn);
}

std::error_code guest_xenstore::rm(std::string_view path, std::uint32_t txn) {
  return p_->ack(XS_RM, with_nul(path), txn);
}

result<std::vector<std::string>> guest_xenstore::directory(std::string_view path, std::uint32_t txn) {
  auto r = p_->transact(XS_DIRECTORY, with_nul(path), txn);
  if (!r) return r.error();
  return split_nul(*r);
}

result<std::vector<permission>> guest_xenstore::get_permissions(std::string_view path, std::uint32_t txn) {
  auto r = p_->transact(XS_GET_PERMS, with_nul(path), txn);
  if (!r) return r.error();
  std::vector<permission> perms;
  for (const auto& s : split_nul(*r)) {
    auto p = permission::parse(s);
    if (!p) return errno_code(EIO);
    perms.push_back(*p);
  }
  return perms;
}

std::error_code guest_xenstore::set_permissions(std::string_view path, std::span<const permission> perms,
                                                std::uint32_t txn) {
  std::string payload = with_nul(path);
  for (const auto& p : perms) payload += with_nul(p.to_string());
  return p_->ack(XS_SET_PERMS, payload, txn);
}

std::error_code guest_xenstore::watch(std::string_view path, std::string_view token) {
  return p_->ack(XS_WATCH, with_nul(path) + with_nul(token), 0);
}

std::error_code guest_xenstore::unwatch(std::string_view path, std::string_view token) {
  return p_->ack(XS_UNWATCH, with_nul(path) + with_nul(token), 0);
}

result<watch_event> guest_xenstore::wait_watch(duration timeout) {
  auto ec = p_->wait_until([&] { return !p_->events.empty(); }, clock::now() + timeout);
  if (p_->events.empty()) return ec ? ec : errno_code(ETIMEDOUT);
  watch_event e = std::move(p_->events.front());
  p_->events.pop_front();
  return e;
}

std::size_t guest_xenstore::pending_watch_events() const noexcept { return p_->events.size(); }

int guest_xenstore::notify_fd() const noexcept { return p_->notify_fd.get(); }

result<std::uint32_t> guest_xenstore::transaction_start() {
  auto r = p_->transact(XS_TRANSACTION_START, std::string_view("", 1), 0);
  if (!r) return r.error();
  const std::string_view id(r->data(), std::min(r->find('\0'), r->size()));
  std::uint32_t txn = 0;
  const auto [end, err] = std::from_chars(id.data(), id.data() + id.size(), txn);
  if (err != std::errc{} || end != id.data() + id.size() || txn == 0) return errno_code(EIO);
  return txn;
}

std::error_code guest_xenstore::transaction_end(std::uint32_t txn, bool commit) {
  return p_->ack(XS_TRANSACTION_END, commit ? std::string_view("T", 2) : std::string_view("F", 2), txn);
}

result<std::string> guest_xenstore::get_domain_path(unsigned domid) {
  auto r = p_->transact(XS_GET_DOMAIN_PATH, with_nul(std::to_string(domid)), 0);
  if (!r) return r.error();
  return r->substr(0, r->find('\0'));
}

result<std::string> guest_xenstore::request(std::uint32_t type, std::string_view payload, std::uint32_t txn) {
  return p_->transact(type, payload, txn);
}

}  // namespace xbd::sim
