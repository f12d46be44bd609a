// client: one request to xen-blkbackd's control socket and its answer
// (blkback/control/commands.hpp has the requests).
//
// Every wait is bounded: connecting, writing the request and reading the
// answer together take at most `limit`, and an answer longer than
// max_answer is refused, so neither xen-blkbackctl nor xen-blkbackd-dm can
// hang on a daemon that does not answer.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <variant>

namespace xbd::ctl {

// Where the daemon listens unless its settings say otherwise ([control] socket).
inline constexpr const char* default_socket = "/run/xen-blkbackd/control.sock";
inline constexpr std::size_t max_answer = std::size_t{256} << 20;

struct failure {
  std::string what;
};

// The daemon's answer to `request` (a line without its newline), itself
// without the newline; or why there is none.
std::variant<std::string, failure> ask(const std::string& socket, std::string_view request,
                                       std::chrono::milliseconds limit);

}  // namespace xbd::ctl
