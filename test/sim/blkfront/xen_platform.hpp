// The platform on the public Xen libraries: libxenstore, libxenevtchn,
// libxengnttab's gntshr. The same binary drives a backend from dom0 on real
// Xen, or from a simulated guest under libxensim (XENSIM_DIR/XENSIM_DOMID)
// against the xenstored at XENSTORED_PATH.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "blkfront/platform.hpp"
#include "blkfront/stop.hpp"

struct xs_handle;
struct xenevtchn_handle;
struct xengntdev_handle;

namespace xbd::sim::blkfront {

class xenstore {
 public:
  xenstore() = default;
  ~xenstore();
  xenstore(const xenstore&) = delete;
  xenstore& operator=(const xenstore&) = delete;

  bool open(std::string& err);
  // Every request from then on is bracketed for the watchdog, which ends the
  // run if xenstored leaves one unanswered too long.
  void set_watchdog(stop_control* w) { watchdog_ = w; }
  std::optional<std::string> read(const std::string& path) const;
  std::vector<std::string> directory(const std::string& path) const;
  bool write(const std::string& path, const std::string& value) const;
  // Retries the whole body while xenstored answers EAGAIN (a concurrent
  // change); the body gets the transaction id and returns false to abort.
  bool transaction(const std::function<bool(unsigned)>& body, std::string& err) const;
  bool write_in(unsigned t, const std::string& path, const std::string& value) const;
  bool remove_in(unsigned t, const std::string& path) const;
  std::vector<std::string> directory_in(unsigned t, const std::string& path) const;

  bool watch(const std::string& path, const std::string& token);
  void unwatch(const std::string& path, const std::string& token);
  int fd() const;
  // Reads every queued watch event; true if there was any.
  bool drain_watches();
  // From now on, remember the paths of the watch events drained (for a
  // program watching many devices); take_watch_paths() hands them over.
  void collect_watch_paths() { collect_ = true; }
  std::vector<std::string> take_watch_paths() { return std::exchange(paths_, {}); }

 private:
  class request;
  xs_handle* h_ = nullptr;
  stop_control* watchdog_ = nullptr;
  bool collect_ = false;
  std::vector<std::string> paths_;
};

class xen_platform final : public platform {
 public:
  // `xs` (may be null) is polled for watch events; `stop` (may be null) for
  // signals.
  xen_platform(xenstore* xs, const stop_control* stop) : xs_(xs), stop_(stop) {}
  ~xen_platform() override;

  bool open(std::string& err);
  // A descriptor every wait also polls (-1: none); readable, it ends the
  // wait with `wake` set. Never read here: the owner drains it, or not.
  void set_wake_fd(int fd) { wake_fd_ = fd; }
  shared_pages share(std::uint32_t domid, unsigned count, bool writable) override;
  bound_port bind_unbound_port(std::uint32_t domid) override;
  bool notify(std::uint32_t port) override;
  wait_result wait(std::chrono::milliseconds timeout) override;
  std::string last_error() const override { return last_error_; }
  std::string describe_port(std::uint32_t port) override;
  std::optional<bool> backend_holds(std::uint32_t ref) override;
  std::optional<std::chrono::steady_clock::time_point> stop_requested() const override {
    return stop_ ? stop_->requested_at() : std::nullopt;
  }

 protected:
  void unshare(std::byte* addr, std::size_t count) override;
  void unbind(std::uint32_t port) override;

 private:
  void set_error(const char* what);

  xenstore* xs_;
  const stop_control* stop_;
  xenevtchn_handle* evtchn_ = nullptr;
  xengntdev_handle* gntshr_ = nullptr;
  int wake_fd_ = -1;
  std::string last_error_;
};

}  // namespace xbd::sim::blkfront
