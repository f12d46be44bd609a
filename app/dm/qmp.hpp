// The few QMP conversations libxl holds with a qemu-xen device model.
//
// libxl (4.17) connects to /var/run/xen/qmp-libxl-<domid> once the device
// model has written "running" to xenstore, reads QEMU's greeting, negotiates
// with qmp_capabilities and sends query-chardev (to learn serial ptys; an
// empty list means none). With dm_restrict it asks query-status before that,
// and other tools (xentop, xl qemu-monitor-command) may ask more. This
// device model emulates nothing, so every answer is the one a QEMU with no
// devices would give; an unknown command gets QEMU's CommandNotFound error.
//
// The exception is the guest's disks: xentop (libxenstat's xenstat_qmp.c)
// asks the device model of a domain with qdisk disks for query-blockstats
// and query-block on qmp-libxenstat-<domid>, and shows what comes back as
// the domain's VBD_RD, VBD_WR, VBD_RSECT and VBD_WSECT. Those answers come
// from xen-blkbackd's live counters (block_source).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace xbd::dm {

// What the fake machine looks like to QMP: running, or stopped (prelaunch
// when started with -S, paused after "stop").
struct machine_state {
  bool running = true;
  bool prelaunch = false;
  bool quit = false;  // a client asked for "quit"
};

// One of the guest's disks as QMP shows it.
struct block_device {
  std::string device;  // the toolstack's name (xvda), or vbd-<devid>
  // libxenstat matches this with the part of the vbd's `params` from its
  // first '/' on (the path of "aio:/path"), to find the devid.
  std::string file;
  bool read_only = false;
  bool direct = false;
  std::uint64_t size = 0;  // bytes
  // Linux blkback's counters: rd_req, wr_req, f_req, ds_req; rd_sect and
  // wr_sect in bytes, so that libxenstat's bytes / 512 gives them back.
  std::uint64_t rd_operations = 0, wr_operations = 0, flush_operations = 0, unmap_operations = 0;
  std::uint64_t rd_bytes = 0, wr_bytes = 0;
  std::uint64_t rd_total_time_ns = 0, wr_total_time_ns = 0, flush_total_time_ns = 0, unmap_total_time_ns = 0;
};

// The guest's disks now, or why they cannot be had.
using block_source = std::function<std::variant<std::vector<block_device>, std::string>()>;

// One client connection. Bytes in, replies out; the caller owns the socket.
class qmp_session {
 public:
  explicit qmp_session(machine_state& machine, block_source blocks = {})
      : machine_(&machine), blocks_(std::move(blocks)) {}

  // The greeting QEMU sends as soon as a client connects.
  static std::string greeting();

  // Consumes bytes read from the client and returns the replies to send,
  // each terminated by "\r\n" as QEMU does. Partial commands are kept until
  // the rest arrives.
  std::string feed(std::string_view bytes);

  // The client sent something that is not JSON (or too much of it): close.
  bool broken() const { return broken_; }

  // The commands executed since the last call, for the device model's log.
  std::string take_log() { return std::exchange(log_, {}); }

 private:
  std::string execute(std::string_view command, std::string_view id);
  std::string query_blocks(std::string_view command, std::string_view id);

  machine_state* machine_;
  block_source blocks_;
  // What query-blockstats fetched: libxenstat follows it with a query-block
  // per disk, answered from here rather than asking the daemon again.
  std::vector<block_device> known_;
  std::chrono::steady_clock::time_point known_at_;
  std::string pending_;
  bool negotiated_ = false;
  bool broken_ = false;
  std::string log_;
};

}  // namespace xbd::dm
