// throttle: I/O limits per vbd or per group of vbds, with QEMU's throttle
// semantics (docs/limits.md, "I/O limits").
//
// Six leaky buckets (bytes and operations; total, read, write). A bucket
// fills with what the requests it counts carry and leaks at its rate
// (`avg` per second). A request may be taken from its ring while the
// buckets of its direction are not over their size; when one is, the ring
// leaves the request where it is and waits for the bucket to leak, as it
// waits for memory. A bucket's size is what allows bursts:
//  - without a burst rate (`max`) it holds a tenth of a second at `avg`;
//  - with one it holds `max` x `max_length` seconds, and a second bucket of
//    a tenth of `max` leaking at `max` keeps the burst to that rate.
// `iops_size` counts a larger request as several operations.
//
// Everything here is pure and takes the time from its caller, so the unit
// tests run on a virtual clock. A group's state is shared by the rings of
// its vbds on several worker threads: one small mutex, taken once per
// request that a limit applies to, and not at all while the group has no
// limits.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace xbd::blkback {

enum class throttle_kind : unsigned { bps_total, bps_read, bps_write, iops_total, iops_read, iops_write };
inline constexpr std::size_t throttle_kinds = 6;

struct throttle_bucket_limits {
  std::uint64_t avg = 0;         // per second; 0: no limit
  std::uint64_t max = 0;         // the burst rate; 0: none
  std::uint64_t max_length = 1;  // seconds a burst at `max` may last
  friend bool operator==(const throttle_bucket_limits&, const throttle_bucket_limits&) = default;
};

struct throttle_limits {
  std::array<throttle_bucket_limits, throttle_kinds> buckets{};
  std::uint64_t iops_size = 0;  // 0: every request is one operation
  bool any() const;
  throttle_bucket_limits& operator[](throttle_kind k) { return buckets[static_cast<unsigned>(k)]; }
  const throttle_bucket_limits& operator[](throttle_kind k) const { return buckets[static_cast<unsigned>(k)]; }
  friend bool operator==(const throttle_limits&, const throttle_limits&) = default;
};

// The largest rate, burst rate or burst size accepted (QEMU's bound too).
inline constexpr std::uint64_t throttle_value_max = 1'000'000'000'000'000;

// Limits by QEMU's names, as one source (the settings file, the
// toolstack's keys, the control socket) gives them: a name not given is
// left to the sources below it. Values are as given: `0` removes a limit,
// and a `-max-length` of 0 means the default, 1.
struct throttle_settings {
  // bps-total, bps-read, bps-write, iops-total, iops-read, iops-write, the
  // same with -max, then with -max-length, then iops-size.
  static constexpr std::size_t count = 3 * throttle_kinds + 1;
  std::array<std::optional<std::uint64_t>, count> values{};
  std::optional<std::string> group;  // "": a group of the vbd's own

  // The names, in the order of `values`; "group" is not among them.
  static const std::array<std::string_view, count>& names();
  bool empty() const;
  // `over`'s values replace ours where it has them.
  void overlay(const throttle_settings& over);
  // NAME=VALUE: an error text, or empty when set.
  std::string set(std::string_view name, std::string_view value);
  throttle_limits limits() const;
  std::string group_name() const { return group.value_or(""); }
  // Written as NAME=VALUE words, the given ones only.
  std::string describe() const;
  friend bool operator==(const throttle_settings&, const throttle_settings&) = default;
};

// The limits in force as NAME=VALUE words (none: empty).
std::string describe(const throttle_limits& l);

// What is wrong with `l` (empty: nothing). QEMU's rules: total and
// read/write limits of one unit exclude each other, a burst rate needs a
// rate and is not below it, a burst length needs a burst rate, iops-size
// needs an operations limit, and nothing exceeds throttle_value_max.
std::string validate(const throttle_limits& l);
// A group's name: letters, digits, '.', '_', '-', at most 64; "" and
// "domain" are the two with a meaning (docs/limits.md).
bool valid_group_name(std::string_view name);

// The buckets of one set of limits.
class throttle_state {
 public:
  using clock = std::chrono::steady_clock;

  // New limits; the buckets start empty.
  void reset(const throttle_limits& l, clock::time_point now);
  const throttle_limits& limits() const { return lim_; }
  // The buckets leak what they have since the last call.
  void leak(clock::time_point now);
  // How long until the buckets of this direction allow a request; zero:
  // now. Call after leak().
  clock::duration wait(bool write) const;
  // A request of `bytes` and `ops` operations (negative: given back).
  void charge(bool write, double bytes, double ops);
  // What `bytes` of one request count as operations (iops-size).
  double ops_of(std::uint64_t bytes) const;
  // The fill of a bucket, for tests.
  double level(throttle_kind k) const { return b_[static_cast<unsigned>(k)].level; }

 private:
  struct bucket {
    double level = 0;  // what the bucket holds
    double burst = 0;  // the burst bucket's, with a burst length above 1
  };
  throttle_limits lim_;
  std::array<bucket, throttle_kinds> b_{};
  clock::time_point last_{};
};

// Told when a group's limits change, from any thread: a ring waiting for
// them looks again.
class throttle_waiter {
 public:
  virtual void limits_changed() = 0;

 protected:
  ~throttle_waiter() = default;
};

// The buckets shared by one or more vbds, and so by rings on several
// threads. Always held by a shared_ptr: its members keep it alive.
//
// Rings that wait are served in turn, as QEMU serves a group's disks
// round-robin: a ring told to wait gets a ticket, and when the buckets
// allow a request, it goes to the oldest ticket whose wait is over. A ring
// that does not use its turn within `grace` of the end of its wait (it
// waits for memory, or it stopped) loses it.
class throttle_group : public std::enable_shared_from_this<throttle_group> {
 public:
  using clock = std::chrono::steady_clock;
  static constexpr clock::duration grace = std::chrono::milliseconds(2);

  explicit throttle_group(std::string name) : name_(std::move(name)) {}
  throttle_group(const throttle_group&) = delete;
  throttle_group& operator=(const throttle_group&) = delete;

  const std::string& name() const { return name_; }
  // New limits: the buckets start empty, and every waiting ring looks
  // again. The same limits again change nothing (a guest reconnecting
  // gains no burst).
  void configure(const throttle_limits& l, clock::time_point now);
  throttle_limits limits() const;
  std::size_t members() const;

  // One ring.
  class member {
   public:
    member(std::shared_ptr<throttle_group> g, std::weak_ptr<throttle_waiter> w);
    ~member();
    member(const member&) = delete;
    member& operator=(const member&) = delete;

    // The next request of the ring, a write (or a read) of `bytes`: zero
    // when it may be taken now, and it is charged; otherwise how long to
    // wait before asking again.
    clock::duration take(clock::time_point now, bool write, std::uint64_t bytes);
    // Whether its group has any limit now (a relaxed read: a change is
    // seen by the next request).
    bool enabled() const;
    // A charge corrected: the request turned out to carry `actual` bytes
    // where `charged` were counted (validation), or was not taken after
    // all (`actual` = 0, `taken` = false).
    void correct(bool write, std::uint64_t charged, std::uint64_t actual, bool taken);
    throttle_group& group() const { return *group_; }

   private:
    friend class throttle_group;
    std::shared_ptr<throttle_group> group_;
    std::weak_ptr<throttle_waiter> waiter_;
    std::uint64_t ticket_ = 0;  // under the group's lock; 0: not waiting
    clock::time_point due_{};   // when its wait ends
  };

  // A ring, told about changes through `w` (from any thread, while it lives).
  std::shared_ptr<member> join(std::weak_ptr<throttle_waiter> w = {}) {
    return std::make_shared<member>(shared_from_this(), std::move(w));
  }

 private:
  // Whether `m` may go now, or another waiting ring's turn comes first.
  bool first_in_line_locked(const member& m, clock::time_point now) const;

  const std::string name_;
  std::atomic<bool> enabled_{false};  // any limit: read without the lock
  mutable std::mutex mu_;
  throttle_state state_;
  std::vector<member*> members_;
  std::uint64_t tickets_ = 0;
};

// The named groups, shared by every vbd that names one (control thread).
class throttle_registry {
 public:
  // The group for `key`, made if no vbd holds it now.
  std::shared_ptr<throttle_group> get(const std::string& key);

 private:
  std::mutex mu_;
  std::map<std::string, std::weak_ptr<throttle_group>> groups_;
};

}  // namespace xbd::blkback
