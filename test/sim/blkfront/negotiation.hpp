// What the frontend reads from the backend, what it decides, and which keys
// it writes: pure functions, so each decision can be tested without Xen.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace xbd::sim::blkfront {

// Reads one key relative to a xenstore directory; nullopt when absent.
using key_reader = std::function<std::optional<std::string>(std::string_view key)>;

// Xenstore numbers are plain decimal. Anything else (sign, spaces, hex,
// trailing junk, overflow) is refused: a backend that writes such a value is
// broken, and this program exists to notice.
std::optional<std::uint64_t> parse_u64(std::string_view s);

// The transport parameters and features the backend publishes before
// InitWait (blkif.h "Backend XenBus Nodes").
struct backend_features {
  unsigned max_ring_page_order = 0;    // max-ring-page-order (or legacy max-ring-pages)
  unsigned max_queues = 1;             // multi-queue-max-queues
  unsigned max_indirect_segments = 0;  // feature-max-indirect-segments; 0 = absent
  bool persistent = false;             // feature-persistent
};

// The device properties the backend publishes for Connected.
struct disk_properties {
  std::uint64_t sectors = 0;  // always 512-byte units (Linux; docs/protocol.md)
  std::uint32_t sector_size = 512;
  std::uint32_t physical_sector_size = 512;
  std::uint32_t info = 0;  // VDISK_* bits
  bool flush = false;
  bool barrier = false;
  bool discard = false;
  std::uint32_t discard_granularity = 0;
  std::uint32_t discard_alignment = 0;
  bool discard_secure = false;
  bool persistent = false;

  bool readonly() const { return (info & 4u) != 0; }  // VDISK_READONLY
  std::uint64_t bytes() const { return sectors * 512u; }
};

// Appends one message per malformed key to `errors`; absent optional keys
// take the spec's defaults.
backend_features read_backend_features(const key_reader& read, std::vector<std::string>& errors);
// nullopt when a required key (sectors, info, sector-size) is missing or
// malformed; the reason is in `errors`.
std::optional<disk_properties> read_disk_properties(const key_reader& read, std::vector<std::string>& errors);

// What we would like; the backend's limits cut it down.
struct frontend_wishes {
  unsigned ring_page_order = 4;  // Linux's XENBUS_MAX_RING_GRANT_ORDER
  unsigned queues = 1;
  unsigned indirect_segments = 256;  // 0 = never use BLKIF_OP_INDIRECT
  bool force_indirect = false;       // send even small requests as indirect
};

struct negotiated {
  unsigned ring_page_order = 0;
  unsigned ring_pages = 1;
  unsigned queues = 1;
  unsigned indirect_segments = 0;  // 0 = indirect not in use
  bool force_indirect = false;

  // Largest number of data pages one ring request can carry.
  unsigned segments_per_request() const;
};

negotiated negotiate(const backend_features& backend, const frontend_wishes& wishes);

// One queue's transport keys.
struct queue_keys {
  std::vector<std::uint32_t> ring_refs;
  std::uint32_t event_channel = 0;
};

struct key_op {
  enum class kind { write, remove } what = kind::write;
  std::string path;
  std::string value;
  bool operator==(const key_op&) const = default;
};

struct key_plan_options {
  std::optional<std::string> protocol;  // nullopt: leave the key out
  bool persistent = false;
  // feature-large-sector-size=1 (blkif.h): written only when set, as the
  // frontends that know the key do; Linux never writes it.
  bool large_sectors = false;
  // blkif.h allows ring-page-order=0 with ring-ref0; Linux writes the
  // single-page form instead. `true` exercises the other spelling.
  bool always_write_ring_page_order = false;
};

// The keys to write (and stale transport keys of an earlier connection to
// remove) in the frontend directory, in the order Linux's talk_to_blkback
// writes them. `existing` is the current listing of the directory.
std::vector<key_op> frontend_key_plan(std::string_view frontend_dir, const negotiated& n,
                                      std::span<const queue_keys> queues, const key_plan_options& opts,
                                      std::span<const std::string> existing);

}  // namespace xbd::sim::blkfront
