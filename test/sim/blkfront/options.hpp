// Command line of blkfront-sim (see usage_text()).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "blkfront/negotiation.hpp"
#include "blkfront/verify.hpp"

namespace xbd::sim::blkfront {

struct options {
  // The device.
  std::uint32_t domid = 0;
  std::uint32_t devid = 0;  // the first of `devids`
  // Every --devid given (a list: --devid A,B or --devid A --devid B). More
  // than one: connect them all and hold them idle (--rw none only).
  std::vector<std::uint32_t> devids;
  std::optional<std::string> backend_path;
  std::optional<std::uint32_t> backend_id;
  std::chrono::milliseconds timeout{30000};

  // Negotiation.
  frontend_wishes wishes;
  std::string protocol = "x86_64-abi";  // layout used for the ring
  // What goes into the `protocol` key: by default the layout's name;
  // `--protocol none` leaves the key out, `--protocol-key` writes any string.
  bool write_protocol_key = true;
  std::optional<std::string> protocol_key;
  bool persistent = false;
  bool large_sectors = false;  // write feature-large-sector-size=1
  bool always_write_ring_page_order = false;

  // The workload.
  bool workload = true;  // false with --rw none
  bool rw_given = false;
  std::string rw = "randread";
  bool random = true;
  unsigned read_pct = 100;
  std::uint32_t bs = 4096;
  unsigned qd = 1;
  std::optional<double> runtime;  // seconds
  std::uint64_t bytes = 0;
  std::uint64_t ios = 0;
  std::uint64_t flush_every = 0;
  unsigned discard_pct = 0;
  bool discard_secure = false;
  std::uint64_t barrier_every = 0;
  bool verify = false;
  bool same_page = false;  // every data segment is the queue's one page
  // Each request's data and indirect pages granted for it alone, access
  // ended after its response (Linux's blkfront without persistent grants).
  bool fresh_grants = false;
  // Each queue's share of the workload on a thread of its own, waiting on
  // its own event-channel handle (queue_threads.hpp).
  bool queue_threads = false;
  unwritten_policy unwritten = unwritten_policy::any;
  discard_policy discarded = discard_policy::zero;
  bool prefill = false;
  std::uint64_t offset = 0;
  std::optional<std::uint64_t> size;
  std::uint64_t seed = 1;
  std::optional<std::uint64_t> run_id;
  bool allow_io_errors = false;

  // Lifecycle.
  unsigned reconnect = 0;
  std::optional<double> hold;  // seconds; 0 = until a signal or the backend leaves
  bool no_close = false;

  // Raw mode.
  std::optional<std::string> script;
  std::optional<std::string> raw_file;

  // Output.
  bool json = false;
  bool quiet = false;
};

struct help_requested {};
using parse_result = std::variant<options, std::string, help_requested>;

parse_result parse_options(const std::vector<std::string>& args);
std::string usage_text();

// "4096", "4k", "1m", "2g" (powers of 1024), strictly.
std::optional<std::uint64_t> parse_size(std::string_view s);

}  // namespace xbd::sim::blkfront
