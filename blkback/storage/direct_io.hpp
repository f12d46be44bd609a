// direct-io-safe: the toolstack's permission to use O_DIRECT, and our
// policy, decide how a store is opened (docs/direct-io-safe.md).
#pragma once

#include "blkback/config.hpp"

#include <optional>
#include <string>

namespace xbd::blkback {

// The toolstack's `direct-io-safe` key (blkif.h): "1" gives permission to
// use O_DIRECT, "0" or no key withholds it. Anything else is malformed and
// withholds it too: permission is never guessed.
enum class direct_io_key { absent, set, unset, malformed };
direct_io_key parse_direct_io_safe(const std::optional<std::string>& value);

// Whether to open with O_DIRECT, and why (for the log line every vbd gets).
struct open_mode {
  bool direct = false;
  std::string reason;
};
open_mode choose_open_mode(direct_io_policy policy, direct_io_key key);

}  // namespace xbd::blkback
