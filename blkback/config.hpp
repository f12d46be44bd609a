// Configuration: the TOML file, read into typed settings with defaults.
//
// Read at start-up and again on SIGHUP. A mistake in the file is never
// guessed around: it ends start-up (or is refused on reload) with
// FILE:LINE:COL and what is wrong, because a daemon that silently ignores a
// misspelt key serves guests with settings nobody chose.
//
// The layout, key by key, is documented in conf/xen-blkbackd.toml and
// docs/configuration.md.
#pragma once

#include "blkback/data/throttle.hpp"
#include "blkback/log.hpp"

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace xbd::blkback {

// How the backing store is opened (docs/direct-io-safe.md). follow_key honours the
// toolstack's `direct-io-safe`; the other two override it for the host.
enum class direct_io_policy { follow_key /* "auto" */, never, always };

// The ring ABI assumed when the frontend writes no `protocol` key.
enum class ring_protocol { native, x86_32, x86_64 };

// "auto", "never", "always": the spelling of the config file.
std::string_view to_string(direct_io_policy p);
// "native", "x86_32-abi", "x86_64-abi": the spelling of protocols.h.
std::string_view to_string(ring_protocol p);

// Bounds of the numeric settings, for whoever needs to agree with them.
namespace limits {
// Far beyond what Linux blkfront (order 4) or QEMU (order 4) use, and still a
// ring of bounded size (256 pages, 8192 requests).
inline constexpr unsigned max_ring_page_order = 8;
inline constexpr unsigned max_worker_threads = 256;
inline constexpr unsigned max_queues = 256;
// blkif.h: BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST (8) pages of 512 segment
// descriptors each.
inline constexpr unsigned max_indirect_segments = 4096;
// blkif.h: BLKIF_MAX_SEGMENTS_PER_REQUEST. An indirect limit at or below it
// gives a frontend nothing a direct request cannot carry; Linux blkfront then
// does not use indirect requests at all.
inline constexpr unsigned direct_segments = 11;
// xen.h: DOMID_FIRST_RESERVED - 1.
inline constexpr unsigned max_domid = 0x7FEF;
inline constexpr unsigned max_resize_poll_seconds = 24 * 60 * 60;
inline constexpr unsigned max_open_timeout_seconds = 60 * 60;
// The buffer memory budget: room for one largest request (4096 segments of
// 4 KiB) at the least, and an upper bound no host will meet by mistake.
inline constexpr std::uint64_t min_buffer_memory = std::uint64_t{16} << 20;
inline constexpr std::uint64_t max_buffer_memory = std::uint64_t{1} << 40;
// The longest poll of a ring after a burst ([rings] poll-microseconds):
// beyond a millisecond a guest's pause is no longer a gap worth spinning
// through on a worker thread.
inline constexpr unsigned max_poll_microseconds = 1000;
// Waits on network and image servers: long enough for any real outage a
// guest should sit through, short of forever.
inline constexpr std::uint64_t max_zero_copy_min_bytes = std::uint64_t{16} << 20;  // 4096 segments
inline constexpr unsigned max_persistent_grants_per_ring = 32768;
inline constexpr unsigned max_nbd_seconds = 24 * 60 * 60;
// sockaddr_un's sun_path holds 108 bytes, its terminating NUL included.
inline constexpr std::size_t max_socket_path = 107;
}  // namespace limits

struct log_settings {
  severity level = severity::info;
  // "stderr", "syslog", or "file:" followed by an absolute path.
  std::string sink = "stderr";

  friend bool operator==(const log_settings&, const log_settings&) = default;
};

// NBD servers ([nbd]).
struct nbd_settings {
  // Connecting to a server, the handshake included, at open.
  unsigned connect_timeout_seconds = 10;
  // How long a request waits for a lost server to come back before it
  // fails with BLKIF_RSP_ERROR; 0: at once.
  unsigned reconnect_seconds = 30;

  friend bool operator==(const nbd_settings&, const nbd_settings&) = default;
};

// Images in formats other than raw, served through qemu-storage-daemon
// ([images]).
struct image_settings {
  std::string program = "qemu-storage-daemon";  // a path, or a name looked up in PATH
  unsigned start_timeout_seconds = 10;
  // Where each image's server gets its private directory (sockets, log).
  std::string runtime_directory = "/run/xen-blkbackd/images";

  friend bool operator==(const image_settings&, const image_settings&) = default;
};

// Ceph RBD images ([rbd]): what a disk spec leaves out.
struct rbd_settings {
  std::string cluster = "ceph";  // the cluster's name ($cluster in ceph.conf paths)
  std::string conf;              // a ceph.conf path; empty: librados's own search
  std::string client_id = "admin";
  // Connecting to the cluster and opening an image, together.
  unsigned connect_timeout_seconds = 10;
  // How long a request waits for an unavailable cluster (librados's
  // operation timeouts) before it fails; 0: for ever.
  unsigned op_timeout_seconds = 60;

  friend bool operator==(const rbd_settings&, const rbd_settings&) = default;
};

// The control socket ([control]): xen-blkbackctl and xen-blkbackd-dm ask
// the daemon through it.
struct control_settings {
  // A unix socket path; empty: no control socket.
  std::string socket = "/run/xen-blkbackd/control.sock";

  friend bool operator==(const control_settings&, const control_settings&) = default;
};

// A logical sector size we can advertise (`sector-size`, blkif.h): a power
// of two from 512 to one page (a sector never spans two segments' pages).
constexpr bool valid_sector_size(std::int64_t v) { return v >= 512 && v <= 4096 && (v & (v - 1)) == 0; }

struct settings {
  // The xenstore backend directories (backend/<type>) to serve: non-empty,
  // unique, each [a-z0-9_-]+.
  std::vector<std::string> backend_types{"qdisk"};
  // Our own domid; absent -> read from xenstore.
  std::optional<unsigned> domid;
  // blkif.h: the frontend's ring-page-order may not exceed what we advertise.
  unsigned max_ring_page_order = 4;
  direct_io_policy direct_io = direct_io_policy::follow_key;
  // 0 = one per online CPU.
  unsigned worker_threads = 0;
  // multi-queue-max-queues; 0 = as many as worker threads.
  unsigned max_queues = 0;
  // feature-max-indirect-segments; 0 = indirect requests not offered.
  unsigned max_indirect_segments = 256;
  ring_protocol default_protocol = ring_protocol::native;
  // How long a ring is looked at again after a burst before it sleeps, at
  // most (adaptive polling, blkback/data/ring_poll.hpp); 0 = never.
  unsigned poll_microseconds = 50;
  // Advertise discard where the backing store supports it.
  bool discard = true;
  // 0 = look at the backing size only on SIGHUP.
  unsigned resize_poll_seconds = 1;
  // How long opening a local file or device (and reading its size) may
  // take before its vbd gives up: a file system that does not answer
  // (blkback/storage/off_thread.hpp). 1..3600.
  unsigned open_timeout_seconds = 30;
  // The logical sector size advertised (`sector-size`): 0 = decided per
  // connection from the store and the frontend (docs/protocol.md), else
  // 512, 1024, 2048 or 4096 for every vbd without its own
  // `force-sector-size`.
  unsigned sector_size = 0;
  // Bytes of request buffers the whole daemon may hold ([io] buffer-memory).
  std::uint64_t buffer_memory = std::uint64_t{256} << 20;
  // The in-flight journal that lets a restarted daemon take up where a
  // killed one stopped ([io] journal, journal-directory).
  bool journal = true;
  std::string journal_directory = "/run/xen-blkbackd";
  // Requests of at least zero_copy_min_bytes on an O_DIRECT vbd run on the
  // guest's own pages, mapped, instead of a copy ([io] zero-copy,
  // zero-copy-min-bytes; docs/configuration.md).
  bool zero_copy = false;
  std::uint64_t zero_copy_min_bytes = std::uint64_t{128} << 10;
  // Offer feature-persistent; the mappings one ring may keep ([io]
  // persistent-grants, persistent-grants-per-ring).
  bool persistent_grants = true;
  unsigned persistent_grants_per_ring = 1056;
  nbd_settings nbd;
  image_settings images;
  rbd_settings rbd;
  control_settings control;
  log_settings log;
  // [limits]: every vbd's I/O limits unless the toolstack's keys or the
  // control socket say otherwise (docs/limits.md, "I/O limits").
  throttle_settings io_limits;

  friend bool operator==(const settings&, const settings&) = default;
};

// A configuration the daemon will not run with. what() is
// "FILE:LINE:COL: message" for a problem inside the file and
// "FILE: message" when the file cannot be read at all (line() is then 0).
class config_error : public std::runtime_error {
 public:
  config_error(std::string_view source, unsigned line, unsigned column, std::string_view message);
  config_error(std::string_view source, std::string_view message);

  unsigned line() const noexcept { return line_; }
  unsigned column() const noexcept { return column_; }

 private:
  unsigned line_ = 0;
  unsigned column_ = 0;
};

// Throw config_error for syntax errors, unknown keys (anywhere), wrong types,
// out-of-range values and bad enum strings. When the file has several
// problems, the first in file order is reported. An empty file is all
// defaults.
settings load_settings(const std::filesystem::path& file);
settings parse_settings(std::string_view toml_text, std::string_view source_name);

// "64MiB", "1GiB", "1048576": a size in bytes with an optional binary unit
// (KiB, MiB, GiB, TiB; K, M, G, T mean the same). Empty on anything else.
std::optional<std::uint64_t> parse_size(std::string_view text);
// 268435456 -> "256MiB": the largest unit that divides it.
std::string format_size(std::uint64_t bytes);

// One line for the start-up log, every setting as key=value with the keys
// of the file.
std::string describe(const settings& s);

}  // namespace xbd::blkback
