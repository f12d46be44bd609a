// An in-process stand-in for Xen and a blkback, for unit tests of the data
// path. The backend side is written against blkif.h's native structs (and,
// for x86_32-abi, packed copies of them as an i386 compiler lays them out)
// and ring.h's BACK_RING macros, independently of the frontend's ABI layer,
// so the two check each other. Fault knobs make it misbehave in the ways the
// frontend must notice.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <vector>

#include "blkfront/platform.hpp"
#include "blkfront/queue.hpp"

namespace xbd::sim::blkfront::testing {

class fake_platform final : public platform {
 public:
  struct grant {
    std::byte* page = nullptr;
    std::uint32_t domid = 0;
    bool writable = false;
  };

  shared_pages share(std::uint32_t domid, unsigned count, bool writable) override;
  bound_port bind_unbound_port(std::uint32_t domid) override;
  bool notify(std::uint32_t port) override;
  wait_result wait(std::chrono::milliseconds timeout) override;
  std::string last_error() const override { return last_error_; }
  std::optional<std::chrono::steady_clock::time_point> stop_requested() const override { return stop_at; }
  // Held: the backend pinned it (fault_knobs::keep_mapped) and nobody let go.
  std::optional<bool> backend_holds(std::uint32_t ref) override { return held.contains(ref); }

  // The backend's view of a grant: null unless it exists, is granted to
  // `domid`, and allows the access.
  std::byte* map(std::uint32_t gref, std::uint32_t domid, bool write) const;

  // Run by wait(): the backend's turn; returns the frontend ports it kicked.
  std::function<std::vector<std::uint32_t>()> backend;
  std::uint64_t notifications = 0;
  std::set<std::uint32_t> kicked;  // ports notified and not yet seen by the backend
  std::size_t live_grants() const { return grants_.size(); }
  std::set<std::uint32_t> held;   // grants the backend keeps mapped (a deferred end keeps them here)
  std::uint64_t shares_made = 0;  // share() calls that succeeded
  std::size_t live_ports() const { return ports_.size(); }
  unsigned fail_share_after = ~0u;  // shares that succeed before failing
  // A signal "arrived" at this time (tests set it, e.g. from `backend`).
  std::optional<std::chrono::steady_clock::time_point> stop_at;

 protected:
  void unshare(std::byte* addr, std::size_t count) override;
  void unbind(std::uint32_t port) override;

 private:
  std::map<std::uint32_t, grant> grants_;
  std::map<std::byte*, std::vector<std::uint32_t>> regions_;
  std::set<std::uint32_t> ports_;
  std::uint32_t next_gref_ = 8;  // the first grant refs are reserved, as in Xen
  std::uint32_t next_port_ = 5;
  unsigned shares_ = 0;
  std::string last_error_;
};

struct fault_knobs {
  bool drop_writes = false;          // answer OKAY, store nothing
  bool misdirect_writes = false;     // store 8 sectors further on
  bool corrupt_reads = false;        // flip one byte in every read
  bool skip_read_data = false;       // answer OKAY, transfer nothing
  bool stale_reads = false;          // serve reads from the disk as it was at the first read
  bool wrong_id = false;             // answer with id + 1
  bool echo_indirect_op = false;     // answer indirect requests with op 6 (not Linux's rule)
  bool extra_response = false;       // publish one response too many
  bool silent = false;               // take requests, never answer
  bool error_writes = false;         // answer writes with BLKIF_RSP_ERROR (storing them anyway)
  bool reverse_order = false;        // answer each batch in reverse (legal)
  unsigned batch_limit = 0;          // requests per turn, 0 = all
  bool discard_keeps_data = false;   // answer discards OKAY, zero nothing
  bool discard_unsupported = false;  // answer discards EOPNOTSUPP (allowed by blkif.h)
  bool keep_mapped = false;          // data pages stay mapped after the response (persistent grants)
  unsigned let_go_beyond = 0;        // keep_mapped: hold at most this many, oldest let go first (0 = no limit)
};

class fake_backend {
 public:
  fake_backend(fake_platform& p, std::uint32_t self_domid, std::uint64_t sectors);
  ~fake_backend();

  // Maps the queue's ring through its grant refs and binds to its port.
  void attach(ring_queue& q);
  // One turn over every ring; the ports to kick.
  std::vector<std::uint32_t> service();

  fault_knobs faults;
  // The layout of the rings attached from now on.
  bool x86_32 = false;
  std::vector<std::byte> disk;
  std::map<std::uint8_t, std::uint64_t> ops_seen;  // by operation byte
  std::uint64_t indirect_seen = 0;
  std::uint64_t max_segments_seen = 0;
  std::set<std::uint32_t> data_grefs_seen;  // grefs of READ/WRITE data segments
  std::uint64_t bad_requests = 0;           // requests the backend refused as malformed
  std::vector<std::uint64_t> ids_seen;
  std::vector<std::uint16_t> handles_seen;
  struct discard_seen {
    std::uint64_t sector, nr_sectors;
    std::uint8_t flag;
  };
  std::vector<discard_seen> discards;

 private:
  struct ring;
  struct request;
  template <class BackRing>
  void serve(ring& r, BackRing& br, std::vector<std::uint32_t>& kick);
  std::int16_t handle(const request& req, std::uint8_t& op);
  std::int16_t handle_rw(std::uint8_t op, std::uint64_t sector, const std::vector<std::array<std::uint32_t, 3>>& segs);

  fake_platform& p_;
  std::uint32_t self_;
  std::vector<std::unique_ptr<ring>> rings_;
  std::vector<std::byte> snapshot_;
  std::vector<std::uint32_t> kept_;  // keep_mapped: in the order they were first mapped
};

}  // namespace xbd::sim::blkfront::testing
