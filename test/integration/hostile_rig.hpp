// The rig of the hostile-guest suite (test_hostile.cpp): one simulated host,
// one daemon and one victim guest for the whole suite, and a fresh vbd of a
// hostile guest for each case.
//
// The victim (domain 5, xvda: direct-io-safe, with persistent grants, so
// that its data moves on pages the daemon keeps mapped) runs a verified
// random read/write workload in windows: one window per case, started before the case does anything and
// stopped (SIGINT, so that blkfront-sim answers what is in flight and prints
// its summary) when the case is done, at least `min_window` long (1 s;
// XBD_HOSTILE_WINDOW_MS). Each window must be clean (no I/O error, no
// protocol error, no verify mismatch) and keep at least half
// (XBD_HOSTILE_MIN_RATIO) of the victim's solo throughput, the best of three
// solo windows measured once when the rig starts. The machine is shared and
// its other work comes in bursts, so a window that falls short is compared
// once more with a solo window run right after the case (a burst slows both,
// a hostile guest only the case's window: its case is over by then); if it
// still falls short, the whole case runs again and only the second run
// decides (a burst seldom hits the same case twice, a hostile guest always
// does). Every ratio is printed. A hostile guest that slowed the daemon for
// good would slow the solo windows too: the last case checks that the
// daemon idles once the suite is done.
//
// Priorities stand in for the separate CPUs of real guests: the hostile
// guest's blkfront-sim runs at nice 5 (its own CPU time is not the daemon's
// to share out), the victim's and the daemon's threads at nice -10, ahead of
// whatever else this shared machine runs (XBD_HOSTILE_NICE_GUEST and
// XBD_HOSTILE_NICE_VICTIM change them). The daemon's work for the hostile
// guest competes with the victim's on equal terms.
//
// A case is a few lines:
//
//   HOSTILE_CASE("hostile: requests: an unknown operation", "requests: unknown operation") {
//     auto v = c.vbd();
//     c.requests(v, "req op=0x63 id=1\n", {{1, rsp::eopnotsupp}});
//     c.expect_log(v, "rejected request 1: unknown operation");
//     c.finish();
//   }
//
// The daemon's side is at hand too: rig::daemon_rss_kib(), daemon_fds() and
// daemon_cpu_share() (a notify storm is a script of `notify` lines; a memory
// attacker a vbd with --queues 4 --ring-order 4 and what it makes the
// daemon hold), and a vbd's grant counters (grant_stats()). The guest
// kernel's grant table is reached through xbd-hostile-xen: grant, revoke,
// grant_pins, retarget (rewrite an entry's frame), peek, write_granted.
#pragma once

#include "test/integration/sim_env.hpp"

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace xbd::test::hostile {

// blkif.h's response statuses.
namespace rsp {
inline constexpr int okay = 0, error = -1, eopnotsupp = -2;
}

// ---------------------------------------------------------------- JSON

// Just enough JSON for blkfront-sim's summary line.
struct json {
  enum class kind { null, boolean, number, string, array, object };
  kind k = kind::null;
  bool b = false;
  double n = 0;
  std::string s;  // a string, or a number's text (ids need all 64 bits)
  std::vector<json> items;
  std::vector<std::pair<std::string, json>> members;

  // A member or element, or a null value when there is none.
  const json& operator[](std::string_view key) const;
  const json& operator[](std::size_t i) const;
  std::size_t size() const { return k == kind::array ? items.size() : members.size(); }
  bool is_null() const { return k == kind::null; }
  double num() const { return n; }
  std::int64_t integer() const { return static_cast<std::int64_t>(n); }
  std::uint64_t u64() const;
};
std::optional<json> parse_json(std::string_view text);

// ---------------------------------------------------------------- guests

struct response {
  unsigned queue = 0;
  std::uint64_t id = 0;
  int op = 0;
  int status = 0;
};

// One blkfront-sim run.
struct guest_run {
  int status = -1;  // exit status; -1: killed after its time limit
  std::string output;
  std::string json_text;  // the summary line
  json summary;
  std::vector<response> responses;     // raw.responses
  std::vector<std::string> failures;   // raw.failures
  std::vector<std::string> anomalies;  // raw.anomalies
  // The last response with `id` on `queue`.
  std::optional<response> last(std::uint64_t id, unsigned queue = 0) const;
};

struct vbd_options {
  unsigned domid = 6;  // the hostile guest
  bool writable = true;
  std::optional<bool> discard_enable;
  std::uint64_t bytes = 8 << 20;
  std::filesystem::path target;  // empty: a fresh sparse image of `bytes`
  // xl's direct-io-safe: the daemon opens it O_DIRECT, and its reads and
  // writes run zero-copy on the guest's mapped pages (the rig's
  // zero-copy-min-bytes is 0).
  bool direct_io_safe = false;
};

struct vbd_ref {
  unsigned domid = 0;
  std::uint32_t devid = 0;
  std::string vdev;
  std::filesystem::path target;
  std::string backend;  // xenstore paths
  std::string frontend;
  std::string prefix;  // its log lines: "[d6/51728 xvdb] "
  std::uint64_t sectors = 0;
};

// ---------------------------------------------------------------- the victim

struct window {
  int status = -1;
  std::string json_text;
  json summary;
  double iops = 0;
  double seconds = 0;
  bool clean() const;  // ok, no I/O error, no protocol error, no mismatch
};

// ---------------------------------------------------------------- the rig

class rig {
 public:
  static rig& get();
  ~rig();

  sim_env& env() { return *env_; }

  // A vbd for a guest (auto-named xvdb, xvdc, ...), in InitWait.
  vbd_ref add_vbd(const vbd_options& o);
  // Unplugs it as the toolstack does; false if that failed.
  bool remove_vbd(const vbd_ref& v);

  // blkfront-sim as guest `domid`, bounded by `limit`. `nice` lowers its
  // priority: a guest's own CPU is not the daemon's to share out.
  guest_run run_guest(unsigned domid, std::vector<std::string> args,
                      std::chrono::milliseconds limit = std::chrono::seconds(60), bool nice = true);
  std::unique_ptr<process> start_guest(unsigned domid, std::vector<std::string> args, const std::string& tag);
  // A blkfront-sim script file.
  std::filesystem::path script_file(const std::string& text);

  // The daemon's log, read incrementally.
  const std::string& log();
  // Whether a line of `v` containing `text` was logged (waits up to `limit`).
  bool log_shows(const vbd_ref& v, std::string_view text, std::chrono::milliseconds limit = std::chrono::seconds(10));
  // How many lines of `v` contain `text`.
  std::size_t log_count(const vbd_ref& v, std::string_view text);
  // Every line of `v`, for failure messages (the last `max` bytes).
  std::string lines_of(const vbd_ref& v, std::size_t max = 4000);

  // xbd-hostile-xen: the guest kernel's grant table and event channels.
  std::vector<std::uint32_t> grant(unsigned domid, unsigned to, bool writable, unsigned count = 1);
  int revoke(unsigned domid, std::uint32_t ref);  // the helper's exit status: 0 ended, 3 busy
  bool write_granted(unsigned domid, std::uint32_t ref, unsigned offset, const std::string& hex);
  // Xen's pins on a grant (mappings and copies in flight, read-only + writable).
  unsigned grant_pins(unsigned domid, std::uint32_t ref);
  // The guest rewrites its grant entry to a fresh frame: {old, new} frames.
  std::pair<std::uint32_t, std::uint32_t> retarget(unsigned domid, std::uint32_t ref);
  // `len` bytes of a frame of `domid`, in hex.
  std::string peek(unsigned domid, std::uint32_t frame, unsigned offset, unsigned len);
  // A port of `domid` open to `remote`, held by a helper process until it is
  // destroyed.
  std::pair<unsigned, std::unique_ptr<process>> unbound_port(unsigned domid, unsigned remote);

  // The "grants" object of `v` in `xen-blkbackctl stats --json` (copy_calls,
  // mapped_requests, persistent, persistent_maps, persistent_drops, ...).
  json grant_stats(const vbd_ref& v);

  // The daemon's descriptors (less xensim.mem*) and resident memory.
  std::size_t daemon_fds();
  std::string daemon_fd_kinds();
  std::size_t daemon_rss_kib();
  // The share of one CPU the daemon used over `span` (user + system).
  double daemon_cpu_share(std::chrono::milliseconds span);

  // The victim.
  void start_victim(const std::string& tag);
  window stop_victim(std::chrono::milliseconds min_length);
  bool victim_running() const { return victim_ != nullptr; }
  // Until the victim's window has run half a second: its connection then
  // holds all it will (a file descriptor per request in flight, the wake-up
  // descriptor of its event channel), so the daemon's count can be compared.
  void warm_victim();
  double solo_iops() const { return solo_iops_; }
  std::chrono::milliseconds min_window() const { return min_window_; }
  void record_ratio(const std::string& name, double ratio) { ratios_.emplace_back(name, ratio); }

  // A domain id no guest of the suite has used (for a case that destroys
  // its domain).
  unsigned next_domid() { return next_domid_++; }
  std::string unique(const std::string& stem) { return stem + std::to_string(++files_); }

 private:
  rig();
  std::unique_ptr<sim_env> env_;
  std::string log_;
  std::uintmax_t log_read_ = 0;
  unsigned vdevs_ = 0;
  unsigned files_ = 0;
  unsigned next_domid_ = 7;
  std::unique_ptr<process> victim_;
  std::chrono::steady_clock::time_point victim_started_;
  double solo_iops_ = 0;
  std::chrono::milliseconds min_window_{1000};
  std::vector<std::pair<std::string, double>> ratios_;
};

// ---------------------------------------------------------------- a case

class hostile_case {
 public:
  // Starts the victim's window.
  explicit hostile_case(std::string name);
  // Removes the case's vbds and stops the victim if finish() did not run
  // (a failed REQUIRE): no assertion here.
  ~hostile_case();
  hostile_case(const hostile_case&) = delete;
  hostile_case& operator=(const hostile_case&) = delete;

  rig& r() { return rig_; }
  // A fresh vbd of the hostile guest, removed at the end of the case.
  vbd_ref vbd(const vbd_options& o = {});
  // Forget it (the case removed it itself, or its domain is gone).
  void forget(const vbd_ref& v);

  // Runs `body` as a script on `v`, then waits for every expected response
  // and checks each status, both with the script's `expect` and in the JSON.
  guest_run requests(const vbd_ref& v, const std::string& body, const std::vector<std::pair<std::uint64_t, int>>& want,
                     std::vector<std::string> extra_args = {});
  // A script as is (its `expect` lines decide the exit status).
  guest_run script(const vbd_ref& v, const std::string& text, std::vector<std::string> extra_args = {});

  // A line of `v` containing `text` was logged.
  void expect_log(const vbd_ref& v, const std::string& text);
  // None was logged so far (checked once: wait for a later line first).
  void expect_no_log(const vbd_ref& v, const std::string& text);

  // Removes the vbds and stops the victim's window. A case that returns
  // without it (a facility it needs is missing) is skipped.
  void finish();
  // After the case: the victim's window is clean, and it kept at least half
  // the solo throughput (or a fresh solo window says the machine was busy).
  // False when the ratio fell short and this is not the last attempt: the
  // case is to be run again.
  bool verdict(bool last_attempt);

 private:
  rig& rig_;
  std::string name_;
  std::vector<vbd_ref> vbds_;
  bool finished_ = false;
  std::optional<window> window_;
};

// Runs `body` as a hostile case, twice if its first window fell short.
void run_hostile_case(const std::string& name, void (*body)(hostile_case&));

}  // namespace xbd::test::hostile

namespace xbd::test::hostile {
// The rig's [io] persistent-grants-per-ring: small, so that a guest reaches it.
inline constexpr unsigned persistent_cap = 64;
}  // namespace xbd::test::hostile

// A doctest case around a hostile case `c`.
#define XBD_HOSTILE_CASE_IMPL(body, title, name)                            \
  static void body(::xbd::test::hostile::hostile_case& c);                  \
  TEST_CASE(title) { ::xbd::test::hostile::run_hostile_case(name, &body); } \
  static void body([[maybe_unused]] ::xbd::test::hostile::hostile_case& c)
#define HOSTILE_CASE(title, name) XBD_HOSTILE_CASE_IMPL(DOCTEST_ANONYMOUS(hostile_body_), title, name)

namespace xbd::test::hostile {

// A vbd's disconnect summary line for a clean run: "disconnected after N
// requests (R bytes read, W written, J rejected, F failed)".
std::string disconnect_line(std::uint64_t requests, std::uint64_t read, std::uint64_t written, std::uint64_t rejected,
                            std::uint64_t failed);

}  // namespace xbd::test::hostile
