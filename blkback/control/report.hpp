// report: what the control socket says about a vbd, and how it is written.
//
// A vbd_report is taken on the control thread (vbd::report) from the live
// counters of its rings (blkback/data/stats.hpp) and those of its earlier
// connections, so that every counter grows over the vbd's whole life, as
// xentop and Prometheus expect, while the per-queue figures are the current
// connection's. docs/operations.md describes every field.
#pragma once

#include "blkback/data/stats.hpp"
#include "blkback/data/throttle.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace xbd::blkback {

struct queue_report {
  unsigned index = 0;
  std::uint32_t ring_entries = 0;
  unsigned event_channel = 0;  // the frontend's port
  stats_view stats;
};

struct vbd_report {
  std::string type;  // the backend directory: qdisk, vbd, ...
  unsigned domid = 0;
  unsigned devid = 0;
  std::string dev;             // the toolstack's name for it (xvda), or empty
  std::string state;           // ours, by xenbus name
  std::string frontend_state;  // the frontend's last valid state
  bool served = true;          // false: ended (unplugged, failed), its directory not yet gone
  std::string params;          // as the toolstack wrote it
  std::string backing;         // the opened store's name; empty until opened
  bool writable = false;
  bool direct = false;  // O_DIRECT
  std::uint64_t sectors = 0;
  unsigned sector_size = 512;
  unsigned connections = 0;  // times a frontend connected (or the vbd was re-attached)
  bool connected = false;
  std::string protocol;  // of the current connection
  unsigned ring_order = 0;
  std::uint64_t buffer_committed = 0;  // bytes of request buffers held now
  std::uint64_t buffer_peak = 0;
  stats_view total;  // all connections
  std::vector<queue_report> queues;
};

// A vbd's I/O limits as the control socket shows them (docs/limits.md):
// each source's settings, what they add up to, and what its group holds.
struct limits_view {
  throttle_settings file, toolstack, live;  // [limits], backend keys, control socket
  throttle_settings effective;              // the three, in that order of precedence
  std::string toolstack_problem;            // why the backend keys were set aside, if they were
  std::string group;                        // "" (its own), "domain", or a name
  throttle_limits in_force;                 // what its group applies now
  std::size_t group_rings = 0;              // rings of every vbd in the group
};

// The answer to `limits VBD`: {"vbd":{type, domid, devid, dev},
// "group":..., "group_rings":N, "limits":{NAME:VALUE...} (what the sources
// add up to), "in_force":{...} (what its group applies), "sources":{"file":
// {...}, "toolstack":{...}, "control":{...}}, and "toolstack_problem" when
// the backend keys were set aside}. Limits not in force are left out.
std::string limits_json(const vbd_report& v, const limits_view& l);

// {"vbds":[...]} (stats), or one vbd's object; `queues` adds the per-queue
// array. Latencies are in nanoseconds.
std::string stats_json(const std::vector<vbd_report>& vbds);
std::string vbd_json(const vbd_report& v, bool queues);
// {"vbds":[{domid, devid, type, dev, state, ...}]}: who is there.
std::string list_json(const std::vector<vbd_report>& vbds);
// The Prometheus text exposition format (version 0.0.4), one metric family
// per counter with the vbd as labels; latencies as summaries in seconds.
std::string stats_prometheus(const std::vector<vbd_report>& vbds);

}  // namespace xbd::blkback
