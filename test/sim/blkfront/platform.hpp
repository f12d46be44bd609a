// What the frontend needs from Xen besides xenstore: pages shared with the
// backend domain, an event channel per queue, and a way to sleep until
// something happens. The real implementation (xen_platform) sits on
// libxengnttab's gntshr and libxenevtchn; unit tests put an in-process fake
// backend behind the same interface.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace xbd::sim::blkfront {

class platform;

// Pages granted to the backend; unshared on destruction.
class shared_pages {
 public:
  shared_pages() = default;
  shared_pages(platform* owner, std::byte* addr, std::vector<std::uint32_t> refs, bool writable)
      : owner_(owner), addr_(addr), refs_(std::move(refs)), writable_(writable) {}
  shared_pages(shared_pages&& o) noexcept { *this = std::move(o); }
  shared_pages& operator=(shared_pages&& o) noexcept;
  shared_pages(const shared_pages&) = delete;
  shared_pages& operator=(const shared_pages&) = delete;
  ~shared_pages() { reset(); }

  void reset();
  explicit operator bool() const { return addr_ != nullptr; }
  std::size_t count() const { return refs_.size(); }
  bool writable() const { return writable_; }
  std::uint32_t ref(std::size_t i) const { return refs_.at(i); }
  const std::vector<std::uint32_t>& refs() const { return refs_; }
  std::span<std::byte> bytes() const { return {addr_, refs_.size() * 4096}; }
  std::span<std::byte> page(std::size_t i) const { return bytes().subspan(i * 4096, 4096); }

 private:
  platform* owner_ = nullptr;
  std::byte* addr_ = nullptr;
  std::vector<std::uint32_t> refs_;
  bool writable_ = false;
};

// A local port bound to an unbound port of ours, waiting for the backend's
// bind_interdomain; unbound on destruction.
class bound_port {
 public:
  bound_port() = default;
  bound_port(platform* owner, std::uint32_t port) : owner_(owner), port_(port) {}
  bound_port(bound_port&& o) noexcept { *this = std::move(o); }
  bound_port& operator=(bound_port&& o) noexcept;
  bound_port(const bound_port&) = delete;
  bound_port& operator=(const bound_port&) = delete;
  ~bound_port() { reset(); }

  void reset();
  explicit operator bool() const { return owner_ != nullptr; }
  std::uint32_t port() const { return port_; }

 private:
  platform* owner_ = nullptr;
  std::uint32_t port_ = 0;
};

struct wait_result {
  std::vector<std::uint32_t> ports;  // fired event channels, already unmasked
  bool xenstore = false;             // a xenstore watch fired
  bool signal = false;               // SIGINT/SIGTERM has asked us to stop (in every wait from then on)
  bool wake = false;                 // the platform's wake descriptor is readable (another thread calls)
};

class platform {
 public:
  virtual ~platform() = default;
  // An empty result on failure; last_error() says why.
  virtual shared_pages share(std::uint32_t domid, unsigned count, bool writable) = 0;
  virtual bound_port bind_unbound_port(std::uint32_t domid) = 0;
  virtual bool notify(std::uint32_t port) = 0;
  // Sleeps until an event, a watch, a signal, or the timeout. Once a stop
  // was asked for, it no longer returns early for that alone.
  virtual wait_result wait(std::chrono::milliseconds timeout) = 0;
  virtual std::string last_error() const = 0;
  // When SIGINT/SIGTERM asked us to stop; the bounds in stop.hpp count from
  // there. Nullopt until then.
  virtual std::optional<std::chrono::steady_clock::time_point> stop_requested() const { return std::nullopt; }
  // For a stall report: what the platform knows of `port` (empty: nothing).
  virtual std::string describe_port(std::uint32_t) { return {}; }
  // Whether the backend still holds our grant `ref` (mapped, or a copy in
  // flight): ending our access to it would fail (Linux's
  // gnttab_try_end_foreign_access). Nullopt: this platform cannot tell
  // (gntshr on real Xen hides the grant table from user space).
  virtual std::optional<bool> backend_holds(std::uint32_t) { return std::nullopt; }

 protected:
  friend class shared_pages;
  friend class bound_port;
  virtual void unshare(std::byte* addr, std::size_t count) = 0;
  virtual void unbind(std::uint32_t port) = 0;
};

inline shared_pages& shared_pages::operator=(shared_pages&& o) noexcept {
  if (this != &o) {
    reset();
    owner_ = std::exchange(o.owner_, nullptr);
    addr_ = std::exchange(o.addr_, nullptr);
    refs_ = std::move(o.refs_);
    o.refs_.clear();
    writable_ = o.writable_;
  }
  return *this;
}

inline void shared_pages::reset() {
  if (owner_ && addr_) owner_->unshare(addr_, refs_.size());
  owner_ = nullptr;
  addr_ = nullptr;
  refs_.clear();
}

inline bound_port& bound_port::operator=(bound_port&& o) noexcept {
  if (this != &o) {
    reset();
    owner_ = std::exchange(o.owner_, nullptr);
    port_ = o.port_;
  }
  return *this;
}

inline void bound_port::reset() {
  if (owner_) owner_->unbind(port_);
  owner_ = nullptr;
}

}  // namespace xbd::sim::blkfront
