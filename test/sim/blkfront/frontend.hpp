// The frontend's xenbus conversation (blkif.h "STATE DIAGRAMS"), the way
// Linux's xen-blkfront holds it: wait for the backend's InitWait, read its
// limits, publish the transport in one transaction, go Initialised, wait for
// Connected, read the disk, go Connected; and on the way out Closing ->
// backend Closing/Closed -> Closed -> backend Closed.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "blkfront/abi.hpp"
#include "blkfront/negotiation.hpp"
#include "blkfront/options.hpp"
#include "blkfront/platform.hpp"
#include "blkfront/queue.hpp"
#include "blkfront/xen_platform.hpp"

namespace xbd::sim::blkfront {

// How long a close may wait for the backend when the backend has already
// failed us (a connect that timed out) or when closing a stale connection
// before connecting: it is unlikely to answer, and --timeout was spent.
inline constexpr std::chrono::milliseconds close_grace{1000};

namespace xenbus {
inline constexpr unsigned initialising = 1, init_wait = 2, initialised = 3, connected = 4, closing = 5, closed = 6;
}

struct connection {
  backend_features features;
  negotiated neg;
  disk_properties disk;
  std::unique_ptr<abi> layout;
  std::vector<std::unique_ptr<ring_queue>> queues;

  std::vector<ring_queue*> queue_ptrs() const;
};

class frontend {
 public:
  frontend(xenstore& xs, platform& p, const options& o) : xs_(xs), p_(p), o_(o) {}

  // Queue i's ring pages and event channel go through `ps[i]` instead
  // (--queue-threads: a port is delivered to the handle that bound it, so
  // each queue's thread waits on a handle of its own). Queues past the end
  // use the frontend's platform.
  void set_queue_platforms(std::vector<platform*> ps) { queue_platforms_ = std::move(ps); }

  // Reads `backend` and `backend-id` from the frontend directory (or takes
  // them from the options) and starts watching the backend's state.
  bool discover(std::string& err);
  const std::string& frontend_dir() const { return frontend_dir_; }
  const std::string& backend_dir() const { return backend_dir_; }
  std::uint32_t backend_id() const { return backend_id_; }

  // Malformed backend keys are not fatal (the spec's defaults apply) but end
  // up in `protocol_errors`, so the run fails.
  bool connect(connection& c, std::string& err, std::vector<std::string>& protocol_errors);
  // Leaves the queues released whatever happens; false if the backend did
  // not follow through to Closed in time. Each of its two waits is bounded
  // by `limit`, and after a signal by stop_bound::close from the signal.
  bool close(connection& c, std::string& err, std::chrono::milliseconds limit);
  // How many of `c`'s ring pages the backend still held when the last close
  // saw it Closed (nullopt: not Closed, or the platform cannot tell).
  std::optional<unsigned> rings_held_at_close() const { return rings_held_; }

  std::optional<unsigned> backend_state();
  std::string backend_state_path() const { return backend_dir_ + "/state"; }
  // Writes our state key (the steps of a close driven from outside).
  bool write_state(unsigned s, std::string& err) { return set_state(s, err); }
  // The backend left Connected for good: Closing, Closed, or its directory
  // is gone.
  bool backend_left();
  const std::vector<unsigned>& backend_states_seen() const { return seen_; }

  // Waits until `pred` holds for the backend state, at most `limit`; false
  // on timeout or signal (`err` says which). `closing`: a wait of the close
  // handshake, which a signal does not cut short but bounds (stop.hpp).
  bool wait_backend(const std::function<bool(std::optional<unsigned>)>& pred, const char* what, std::string& err,
                    std::chrono::milliseconds limit, bool closing = false);

 private:
  bool set_state(unsigned s, std::string& err);
  bool publish(connection& c, std::string& err);

  xenstore& xs_;
  platform& p_;
  std::vector<platform*> queue_platforms_;
  std::optional<unsigned> rings_held_;
  const options& o_;
  std::string frontend_dir_, backend_dir_;
  std::uint32_t backend_id_ = 0;
  std::vector<unsigned> seen_;
};

}  // namespace xbd::sim::blkfront
