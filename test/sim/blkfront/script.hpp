// Raw mode: a line-oriented script that puts exactly the bytes a test wants
// into ring slots and granted pages, moves the ring indices by hand, and
// checks what comes back. For hostile-guest tests; README.md has the syntax.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "blkfront/abi.hpp"
#include "blkfront/platform.hpp"
#include "blkfront/queue.hpp"

namespace xbd::sim::blkfront {

enum class verb {
  queue,
  pages,
  fill,
  poke,
  seg,
  req,
  ireq,
  dreq,
  raw,
  patch,
  push,
  notify,
  req_prod,
  wait,
  expect,
  expect_no_response,
  expect_state,
  expect_held,
  sleep,
};

struct command {
  int line = 0;
  verb v = verb::push;
  std::vector<std::string> args;                            // positional
  std::vector<std::pair<std::string, std::string>> fields;  // key=value, in order
};

struct script_error {
  int line = 0;
  std::string message;
};

// Syntax and argument checks only; names of page pools are resolved when the
// script runs.
std::variant<std::vector<command>, script_error> parse_script(std::string_view text);

// A --raw-file: consecutive slot-sized request images, pushed together, then
// a soft wait for as many responses.
std::variant<std::vector<command>, script_error> raw_file_script(std::string_view bytes, std::size_t slot_size,
                                                                 std::chrono::milliseconds wait);

// "0a0B ff" -> bytes; nullopt unless an even number of hex digits.
std::optional<std::vector<std::byte>> parse_hex(std::string_view s);

struct raw_response {
  unsigned queue = 0;
  response r;
};

struct script_result {
  std::size_t commands = 0;
  std::vector<raw_response> responses;
  std::vector<std::string> failures;   // "line N: ..."
  std::vector<std::string> anomalies;  // ring misbehaviour seen while reading
  bool interrupted = false;            // a signal stopped the script
};

class script_runner {
 public:
  struct environment {
    platform* plat = nullptr;
    std::uint32_t backend_domid = 0;
    std::vector<ring_queue*> queues;
    const abi* layout = nullptr;
    std::uint16_t handle = 0;
    // Reads the backend's state key; nullopt if absent.
    std::function<std::optional<unsigned>()> backend_state;
    // The longest any one wait of the script may take (--timeout).
    std::chrono::milliseconds max_wait{30000};
  };

  explicit script_runner(environment env) : env_(std::move(env)) {}
  // Runs every command; a failed expectation is recorded and the script goes
  // on, an unusable command (unknown pool, slot out of range) or a signal
  // stops it.
  script_result run(const std::vector<command>& cmds);
  // How many pages of its pools the backend holds (nullopt: cannot tell).
  std::optional<std::size_t> held_pages() const;

 private:
  bool exec(const command& c, script_result& out);
  std::optional<std::uint32_t> resolve_gref(const std::string& spec, std::string& err) const;
  std::optional<std::span<std::byte>> resolve_page(const std::string& spec, std::string& err) const;
  void collect(script_result& out);
  std::size_t pending(unsigned queue, const script_result& out) const;

  environment env_;
  unsigned current_ = 0;
  std::map<std::string, shared_pages> pools_;
  std::optional<std::span<std::byte>> last_slot_;
  std::uint64_t next_id_ = 1;
  std::map<unsigned, std::size_t> claimed_;  // responses consumed by earlier waits, per queue
};

}  // namespace xbd::sim::blkfront
