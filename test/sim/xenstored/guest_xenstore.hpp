// The guest side of a simulated domain's xenstore connection: speaks the
// xenstore ring protocol (xen/io/xs_wire.h) as that domain, through the ring
// page and FIFOs in the xenstored run directory (layout.h). xenstored sees an
// ordinary introduced domain, so permissions, quotas and watches apply to it
// exactly as to a real unprivileged guest.
//
// It needs only the run directory and the domid, so it works from any
// process once dom0 has introduced the domain (introduce_domain()).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <variant>
#include <vector>

namespace xbd::sim {

// A value or the error (errno in std::generic_category()) that prevented it.
template <class T>
class [[nodiscard]] result {
 public:
  result(T value) : v_(std::move(value)) {}
  result(std::error_code ec) : v_(ec) {}

  bool has_value() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }
  // The error; empty (false) when there is a value.
  std::error_code error() const noexcept { return has_value() ? std::error_code{} : std::get<1>(v_); }
  // Throws std::system_error when there is no value.
  T& value() & {
    check();
    return std::get<0>(v_);
  }
  const T& value() const& {
    check();
    return std::get<0>(v_);
  }
  T&& value() && {
    check();
    return std::get<0>(std::move(v_));
  }
  // r == std::errc::permission_denied, as for std::error_code.
  friend bool operator==(const result& r, std::errc e) { return r.error() == e; }

  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  void check() const {
    if (!has_value()) throw std::system_error(std::get<1>(v_));
  }
  std::variant<T, std::error_code> v_;
};

// One entry of a node's permission list ("n0", "r5", ...). The first entry
// names the owner (who may do anything) and the access of everyone else.
struct permission {
  enum access_t : char { none = 'n', read = 'r', write = 'w', both = 'b' };
  unsigned domid = 0;
  access_t access = none;

  std::string to_string() const;
  // Accepts the wire form: one of n/r/w/b then a decimal domid.
  static std::optional<permission> parse(std::string_view s);
  friend bool operator==(const permission&, const permission&) = default;
};

struct watch_event {
  std::string path;
  std::string token;
  friend bool operator==(const watch_event&, const watch_event&) = default;
};

// Not thread-safe; one object per domain at a time (a second one, in any
// process, gets EBUSY until the first is destroyed). Every call is bounded
// by a timeout and fails with ETIMEDOUT if xenstored does not answer; a late
// answer is recognised by its request id and dropped, so the connection
// stays usable.
class guest_xenstore {
 public:
  using duration = std::chrono::milliseconds;

  // Throws std::system_error: ENOENT if the domain was never introduced in
  // `sim_dir`, ECONNREFUSED if no xenstored serves it, EBUSY as above.
  guest_xenstore(const std::filesystem::path& sim_dir, unsigned domid, duration timeout = std::chrono::seconds(5));
  ~guest_xenstore();
  guest_xenstore(guest_xenstore&&) noexcept;
  guest_xenstore& operator=(guest_xenstore&&) noexcept;

  unsigned domid() const noexcept;
  // "/local/domain/<domid>", where relative paths resolve.
  std::string home() const;
  duration timeout() const noexcept;
  void set_timeout(duration timeout) noexcept;

  // txn is a transaction id from transaction_start(), or 0 for none.
  result<std::string> read(std::string_view path, std::uint32_t txn = 0);
  std::error_code write(std::string_view path, std::string_view value, std::uint32_t txn = 0);
  std::error_code mkdir(std::string_view path, std::uint32_t txn = 0);
  std::error_code rm(std::string_view path, std::uint32_t txn = 0);
  result<std::vector<std::string>> directory(std::string_view path, std::uint32_t txn = 0);
  result<std::vector<permission>> get_permissions(std::string_view path, std::uint32_t txn = 0);
  std::error_code set_permissions(std::string_view path, std::span<const permission> perms, std::uint32_t txn = 0);

  // xenstored fires a new watch once right away (with the watched path).
  std::error_code watch(std::string_view path, std::string_view token);
  std::error_code unwatch(std::string_view path, std::string_view token);
  // The next watch event, in order of arrival; ETIMEDOUT if none arrives in
  // time (events that arrive during other calls are kept for later).
  result<watch_event> wait_watch(duration timeout);
  result<watch_event> wait_watch() { return wait_watch(timeout()); }
  // Events already received and not yet returned by wait_watch().
  std::size_t pending_watch_events() const noexcept;
  // Readable when xenstored has notified this domain since the descriptor
  // was last drained: poll it, drain it (read until EAGAIN), then take what
  // arrived with wait_watch(0ms). For a loop that waits on other
  // descriptors too (domain_xenbus).
  int notify_fd() const noexcept;

  result<std::uint32_t> transaction_start();
  // EAGAIN when a commit conflicts with a concurrent change: start again.
  std::error_code transaction_end(std::uint32_t txn, bool commit = true);

  result<std::string> get_domain_path(unsigned domid);

  // Any request, e.g. a privileged one (XS_INTRODUCE, XS_RELEASE...), to
  // check that xenstored refuses it. `type` is an xsd_sockmsg_type; the
  // payload goes out byte for byte (include the NULs the request needs).
  // Returns the reply payload.
  result<std::string> request(std::uint32_t type, std::string_view payload, std::uint32_t txn = 0);

 private:
  struct impl;
  std::unique_ptr<impl> p_;
};

}  // namespace xbd::sim
