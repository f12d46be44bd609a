// vbd: the control plane of one virtual block device.
//
// One coroutine (run()) per <frontend-domid>/<devid> under our backend
// directory, written to read like the xenbus protocol (docs/protocol.md): read
// the toolstack's keys, open the backing store, publish features, wait in
// InitWait; on the frontend's Initialised or Connected read its transport
// keys, map and bind, publish the disk, go Connected; follow the frontend to
// Closing and Closed; reconnect when it initialises again; go away when the
// toolstack unplugs it or the guest dies.
#pragma once

#include "asio_xen/xenstore.hpp"
#include "blkback/config.hpp"
#include "blkback/control/offer.hpp"
#include "blkback/control/report.hpp"
#include "blkback/data/fair_share.hpp"
#include "blkback/data/journal.hpp"
#include "blkback/data/log_budget.hpp"
#include "blkback/data/memory.hpp"
#include "blkback/data/queue.hpp"
#include "blkback/data/throttle.hpp"
#include "blkback/log.hpp"
#include "blkback/platform.hpp"
#include "blkback/ring/abi.hpp"
#include "blkback/storage/off_thread.hpp"
#include "blkback/storage/storage.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/system/result.hpp>

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace xbd::blkback {

// xenbus.h's XenbusState values.
enum class xenbus_state : unsigned {
  unknown = 0,
  initialising = 1,
  init_wait = 2,
  initialised = 3,
  connected = 4,
  closing = 5,
  closed = 6,
  reconfiguring = 7,
  reconfigured = 8,
};
std::string_view to_string(xenbus_state s);

// What every vbd shares: the xenstore connection (control thread), the Xen
// handles' source, the settings, and the workers that run rings.
struct vbd_context {
  asio_xen::xenstore& xs;
  xen_platform xen;
  settings cfg;
  unsigned own_domid = 0;
  unsigned max_queues = 1;  // multi-queue-max-queues we offer
  std::function<worker()> pick_worker;
  // Request buffers of every vbd ([io] buffer-memory); null: each ring has
  // a budget of its own (tests).
  std::shared_ptr<memory_budget> memory;
  // CPU fairness between vbds (fair_share.hpp); null: none (tests).
  std::shared_ptr<fair_share> fair;
  // The named I/O limit groups (throttle.hpp), shared by the vbds that
  // name one.
  std::shared_ptr<throttle_registry> throttle_groups = std::make_shared<throttle_registry>();
};

struct vbd_id {
  std::string type;  // backend directory name: qdisk, vbd, ...
  unsigned frontend_domid = 0;
  unsigned devid = 0;
  friend auto operator<=>(const vbd_id&, const vbd_id&) = default;
};

class vbd {
 public:
  vbd(vbd_context& ctx, vbd_id id);
  ~vbd();
  vbd(const vbd&) = delete;
  vbd& operator=(const vbd&) = delete;

  // The device's whole life. Returns when it has been unplugged, has
  // failed, its guest died, or shutdown() was called.
  boost::asio::awaitable<void> run();

  // Daemon shutdown: answer what is in flight, release the rings, and
  // return from run() without writing to xenstore, so that a new daemon can
  // pick the device up where this one left it.
  void shutdown();
  // The guest may have died (@releaseDomain fired): check.
  void check_domain();
  // The backing store may have been resized (SIGHUP): the device's
  // coroutine looks.
  void check_size();
  // The poll timer's look, and SIGHUP's: the size compared here, the
  // coroutine woken only when it changed or cannot be read (an idle vbd
  // costs a stat, not a step through xenstore). A size that can take a file
  // system's time is read on a thread of its own (storage/off_thread.hpp),
  // one read at a time; `ex` is the control thread's.
  void poll_size(const boost::asio::any_io_executor& ex);
  // A ring's store refused a flush with EOPNOTSUPP (posted by the ring):
  // withdraw flush and barrier from the frontend.
  void flush_unsupported();

  const vbd_id& id() const { return id_; }
  // I/O limits: what the control socket shows, and a change from it
  // (NAME=VALUE by QEMU's names): an error text with nothing applied, or
  // empty. A change lasts until the next one, across the guest's
  // reconnections. Control thread.
  limits_view limits() const;
  std::string change_limits(const throttle_settings& change);
  // The group key the vbd's limits put it in ("" before its first
  // connection or change).
  const std::string& throttle_key() const { return throttle_key_; }
  // What the control socket shows (report.hpp), taken now: the counters of
  // every connection so far, the current one's per queue. Control thread.
  vbd_report report() const;
  // Picked up: re-attached, waiting for its frontend, or failed. `on_settled`
  // is called when that happens.
  bool settled() const { return settled_; }
  std::function<void()> on_settled;

  struct connection;

  // Why a device cannot go on: the reason (for the log and the `error`
  // node) and the error behind it.
  struct problem {
    std::string what;
    asio_xen::error_code ec;
  };
  template <class T>
  using outcome = boost::system::result<T, problem>;

 private:
  struct backend_keys;
  outcome<backend_keys> read_backend_keys();
  boost::asio::awaitable<std::optional<outcome<backend_keys>>> complete_backend_keys();
  static problem bad_key(std::string reason, asio_xen::error_code ec);
  bool watch_keys();
  boost::asio::awaitable<std::optional<problem>> open_store(const backend_keys& keys);
  boost::asio::awaitable<std::optional<problem>> resume_or_publish();
  boost::asio::awaitable<bool> step(asio_xen::error_code ec);
  boost::asio::awaitable<bool> follow(xenbus_state fe, bool online);
  boost::asio::awaitable<bool> close_for_good();
  void leave_directory();
  bool guest_died();
  asio_xen::error_code publish_features();
  bool offers_persistent() const;
  asio_xen::error_code switch_state(xenbus_state s);
  void fail(const problem& p);
  struct ring_keys {
    std::vector<asio_xen::grant_ref> refs;
    asio_xen::evtchn_port port = 0;
  };
  outcome<ring_keys> read_ring_keys(const std::string& dir, unsigned order, bool has_order);
  struct transport {
    unsigned ring_order = 0;
    abi layout = native_abi;
    std::vector<ring_keys> rings;
    bool large_sectors = false;  // feature-large-sector-size=1
    bool persistent = false;     // feature-persistent=1
  };
  outcome<transport> read_transport();
  boost::asio::awaitable<std::optional<problem>> choose_sectors(bool reattach, bool frontend_large);
  boost::asio::awaitable<std::optional<problem>> reopen_buffered(std::uint32_t sector);
  std::uint64_t whole_sectors(std::uint64_t bytes) const;
  void withdraw_flush();
  void choose_discard_secure(bool reattach);
  outcome<std::shared_ptr<vbd_journal>> open_journal(const transport& t, bool reattach);
  std::optional<problem> start_queues(const transport& t, boost::asio::any_io_executor control, bool reattach);
  std::optional<problem> publish_disk();
  boost::asio::awaitable<std::optional<problem>> connect(bool reattach);
  void size_read(asio_xen::result<std::uint64_t> size);
  static boost::asio::awaitable<void> probe_size(std::weak_ptr<vbd*> self,
                                                 std::function<asio_xen::result<std::uint64_t>()> read,
                                                 std::chrono::seconds bound);
  void apply_resize();
  boost::asio::awaitable<void> disconnect();
  boost::asio::awaitable<void> release_queues(std::shared_ptr<connection> c);
  void connection_ended(const connection& c);
  void retire_rings();
  throttle_settings read_limit_keys();
  std::string apply_limits(const throttle_settings& live);
  std::string group_key(const std::string& group) const;
  std::string in_group() const;
  xenbus_state frontend_state();

  vbd_context& ctx_;
  vbd_id id_;
  std::string be_;  // our directory
  std::string fe_;  // the frontend's directory (from our `frontend` key)
  logger log_;
  std::optional<asio_xen::watch> watch_;
  std::unique_ptr<storage::store> store_;
  storage::open_request opened_with_;    // to reopen it without O_DIRECT (choose_sectors)
  std::uint32_t physical_sector_ = 512;  // `physical-sector-size` of this connection
  std::string sector_reason_;            // why this connection's sector size, for its log line
  unsigned max_queues_ = 1;              // multi-queue-max-queues: ours, or fewer if the store needs
  std::shared_ptr<connection> conn_;
  xenbus_state state_ = xenbus_state::unknown;  // what we last wrote
  disk_offer offer_;
  // Requests from the daemon, acted on at the next step().
  bool shutdown_ = false;
  bool check_domain_ = false;
  bool check_size_ = false;
  // apply_resize() could not read the size: said once until it can again.
  bool size_unreadable_ = false;
  // What a size read off the control thread found, for apply_resize().
  std::optional<asio_xen::result<std::uint64_t>> probed_size_;
  // A size read is running (or stuck) on its thread; and whether a stuck
  // one was said.
  std::shared_ptr<std::atomic<bool>> probe_busy_ = std::make_shared<std::atomic<bool>>(false);
  // Ends the wait for an open its file system does not answer (shutdown).
  storage::off_thread_stop open_stop_;
  bool probe_stall_said_ = false;
  bool withdraw_flush_ = false;
  // What a store's own resize notice (any thread) reaches through a post
  // to our executor: gone with us, so a late notice finds nothing.
  std::shared_ptr<vbd*> self_ = std::make_shared<vbd*>(this);
  // Protocol state.
  bool connect_failed_ = false;  // wait for the frontend to move before retrying
  bool domain_was_known_ = false;
  xenbus_state fe_seen_ = xenbus_state::initialising;                       // the frontend's last valid state
  std::shared_ptr<log_budget> guest_log_ = std::make_shared<log_budget>();  // shared with the rings
  std::shared_ptr<memory_budget::account> memory_;                          // shared with the rings
  std::shared_ptr<fair_share::member> fair_;                                // shared with the rings
  // I/O limits: the backend keys as last read, the control socket's, and
  // the group they put the vbd in (shared with the rings).
  throttle_settings limit_keys_;
  std::string limit_keys_problem_;
  throttle_settings limits_live_;
  std::shared_ptr<throttle_group> throttle_;
  std::string throttle_key_;
  std::filesystem::path journal_path_;
  std::uint64_t published_sectors_ = 0;
  // For report(): what the toolstack wrote, and the rings' counters.
  std::string params_;
  std::string dev_;
  unsigned connections_ = 0;
  struct live_ring {
    std::shared_ptr<const ring_counters> counters;
    std::uint32_t entries = 0;
    unsigned port = 0;
  };
  std::vector<live_ring> live_;  // the current connection's, until its queues have ended
  ring_stats retired_;           // what the connections before counted
  unsigned ring_order_ = 0;
  abi layout_ = native_abi;
  bool settled_ = false;
  void settle();
};

// boost::system::result's value() on a problem (never called on our paths).
[[noreturn]] inline void throw_exception_from_error(const vbd::problem& p, const boost::source_location&) {
  throw std::runtime_error(p.what);
}

}  // namespace xbd::blkback
