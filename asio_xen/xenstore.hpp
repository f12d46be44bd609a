// xenstore: a connection to xenstored as an Asio I/O object.
//
// Two layers:
//  - xs_driver is the xs_* call surface of one connection. The real one wraps
//    libxenstore; test/fakes has an in-process one. Protocol code never sees
//    which it has.
//  - xenstore is what protocol code uses: plain and typed reads, writes,
//    transactions with retry, and watches delivered as awaitable events.
//
// Reads and writes are synchronous round trips to xenstored (tens of
// microseconds): they happen on the control plane only, a few per state
// change. Watches are asynchronous.
#pragma once

#include "asio_xen/error.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <charconv>
#include <concepts>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace xbd::asio_xen {

using transaction_id = std::uint32_t;
inline constexpr transaction_id no_transaction = 0;

// One entry of a node's permission list. The first entry names the owner and
// what everyone not listed may do; later entries grant a domain.
struct xs_permission {
  enum class access : std::uint8_t { none, read, write, both };
  unsigned domid = 0;
  access perm = access::none;

  // "n0", "r5", "w3", "b1": the form xenstore-ls and libxl use.
  static result<xs_permission> parse(std::string_view text);
  std::string to_string() const;
  friend bool operator==(const xs_permission&, const xs_permission&) = default;
};

struct xs_watch_event {
  std::string path;
  std::string token;
};

class xs_driver {
 public:
  virtual ~xs_driver() = default;
  virtual result<std::string> read(transaction_id t, const std::string& path) = 0;
  virtual error_code write(transaction_id t, const std::string& path, std::string_view value) = 0;
  virtual error_code mkdir(transaction_id t, const std::string& path) = 0;
  virtual error_code rm(transaction_id t, const std::string& path) = 0;
  virtual result<std::vector<std::string>> directory(transaction_id t, const std::string& path) = 0;
  virtual result<std::vector<xs_permission>> get_permissions(transaction_id t, const std::string& path) = 0;
  virtual error_code set_permissions(transaction_id t, const std::string& path,
                                     std::span<const xs_permission> perms) = 0;
  virtual result<transaction_id> transaction_start() = 0;
  // EAGAIN: the transaction conflicted with another change; start again.
  virtual error_code transaction_end(transaction_id t, bool abort) = 0;
  virtual error_code watch(const std::string& path, const std::string& token) = 0;
  virtual error_code unwatch(const std::string& path, const std::string& token) = 0;
  // Readable whenever check_watch() may have an event.
  virtual int watch_fd() = 0;
  // The next queued watch event, or nullopt when none is queued.
  virtual result<std::optional<xs_watch_event>> check_watch() = 0;
  // Whether xenstored knows domain `domid` (false once it has died and been
  // released: what @releaseDomain watchers check).
  virtual result<bool> is_domain_introduced(unsigned domid) = 0;
};

// libxenstore: xs_open(0), which honours XENSTORED_PATH.
result<std::unique_ptr<xs_driver>> open_libxenstore();

// Strict parsing of a xenstore value: the whole text, nothing around it.
// "12" -> 12; "12x", " 12", "+12", "", "0x10" and out-of-range values are
// errc::malformed_value.
template <class T>
result<T> parse_value(std::string_view text);

template <std::integral T>
requires(!std::same_as<T, bool>) result<T> parse_integer(std::string_view text) {
  T value{};
  if (text.empty() || text.front() == '+') return make_error_code(errc::malformed_value);
  const auto* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value, 10);
  if (ec != std::errc{} || ptr != end) return make_error_code(errc::malformed_value);
  return value;
}

template <class T>
result<T> parse_value(std::string_view text) {
  if constexpr (std::same_as<T, std::string>) {
    return std::string(text);
  } else if constexpr (std::same_as<T, bool>) {
    // xenbus booleans are "0" and "1"; nothing else is accepted.
    if (text == "1") return true;
    if (text == "0") return false;
    return failure<bool>(make_error_code(errc::malformed_value));
  } else {
    return parse_integer<T>(text);
  }
}

// Reads and writes, with or without a transaction. xenstore and transaction
// both offer this interface.
class xs_view {
 public:
  result<std::string> read(std::string_view path) const;
  template <class T>
  result<T> read(std::string_view path) const {
    auto text = read(path);
    if (!text) return failure<T>(text.error());
    return parse_value<T>(*text);
  }
  // ENOENT -> nullopt; any other failure stays an error.
  template <class T>
  result<std::optional<T>> read_optional(std::string_view path) const {
    auto text = read(path);
    if (!text) {
      if (text.error() == boost::system::errc::no_such_file_or_directory) return std::optional<T>{};
      return failure<std::optional<T>>(text.error());
    }
    auto v = parse_value<T>(*text);
    if (!v) return failure<std::optional<T>>(v.error());
    return std::optional<T>{std::move(*v)};
  }
  error_code write(std::string_view path, std::string_view value) const;
  template <std::integral T>
  error_code write(std::string_view path, T value) const {
    return write(path, std::string_view(std::to_string(value)));
  }
  error_code mkdir(std::string_view path) const;
  error_code rm(std::string_view path) const;
  result<std::vector<std::string>> directory(std::string_view path) const;
  result<std::vector<xs_permission>> get_permissions(std::string_view path) const;
  error_code set_permissions(std::string_view path, std::span<const xs_permission> perms) const;

 protected:
  xs_view(xs_driver* d, transaction_id t) : driver_(d), tid_(t) {}
  xs_driver* driver_;
  transaction_id tid_;
};

class transaction : public xs_view {
 public:
  transaction(xs_driver& d, transaction_id t) : xs_view(&d, t) {}
  transaction_id id() const { return tid_; }
};

class xenstore;

// A registration of one token on one or more paths. co_await changed() returns
// once something under any of its paths has changed since the last call (or
// since registration: xenstored fires every watch once when it is set). Events
// are coalesced: a thousand writes before the waiter runs are one wake-up, and
// a watch holds at most one pending event whatever a guest writes
// (XSA-349). The waiter re-reads the state it cares about.
class watch {
 public:
  watch(watch&&) noexcept;
  watch& operator=(watch&&) noexcept;
  ~watch();

  // Also watch `path` with this token.
  error_code add(std::string_view path);
  // Wait for the next change. error: errc::closed when the watch or the
  // connection went away, operation_aborted when cancelled.
  boost::asio::awaitable<error_code> changed();
  // Whether a change is pending (changed() would return at once).
  bool pending() const;
  // Wakes the waiter as a change would (for owners that have other reasons
  // to re-read their state: a shutdown, a domain's death).
  void poke();
  const std::string& token() const;

  struct state;

 private:
  friend class xenstore;
  explicit watch(std::shared_ptr<state> s) : state_(std::move(s)) {}
  std::shared_ptr<state> state_;
};

class xenstore : public xs_view {
 public:
  xenstore(boost::asio::any_io_executor ex, std::unique_ptr<xs_driver> driver);
  xenstore(const xenstore&) = delete;
  xenstore& operator=(const xenstore&) = delete;
  ~xenstore();

  // Runs `body(transaction&) -> error_code` in a transaction and commits it;
  // a commit that conflicts (EAGAIN) runs the body again, up to `attempts`
  // times. A body error aborts the transaction and is returned.
  template <class Body>
  error_code transact(Body&& body, unsigned attempts = 32) {
    for (unsigned i = 0; i < attempts; ++i) {
      auto t = driver_->transaction_start();
      if (!t) return t.error();
      transaction tx(*driver_, *t);
      if (error_code ec = body(tx)) {
        (void)driver_->transaction_end(*t, true);
        return ec;
      }
      error_code ec = driver_->transaction_end(*t, false);
      if (ec != boost::system::errc::resource_unavailable_try_again) return ec;
    }
    return make_error_code(errc::too_many_retries);
  }

  // A new watch on `path`.
  result<watch> watch_path(std::string_view path);

  result<bool> is_domain_introduced(unsigned domid) { return driver_->is_domain_introduced(domid); }

  // Number of watch events read from the connection so far (for tests and
  // statistics).
  std::uint64_t events_read() const;

  xs_driver& driver() { return *driver_; }

  struct impl;

 private:
  std::unique_ptr<xs_driver> owned_driver_;
  std::shared_ptr<impl> impl_;
};

}  // namespace xbd::asio_xen
