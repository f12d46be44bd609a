#include "blkback/storage/direct_io.hpp"

namespace xbd::blkback {

direct_io_key parse_direct_io_safe(const std::optional<std::string>& value) {
  if (!value) return direct_io_key::absent;
  if (*value == "1") return direct_io_key::set;
  if (*value == "0") return direct_io_key::unset;
  return direct_io_key::malformed;
}

open_mode choose_open_mode(direct_io_policy policy, direct_io_key key) {
  switch (policy) {
    case direct_io_policy::never:
      return {false, "direct-io policy is never"};
    case direct_io_policy::always:
      return {true, "direct-io policy is always"};
    case direct_io_policy::follow_key:
      break;
  }
  switch (key) {
    case direct_io_key::set:
      return {true, "direct-io-safe=1"};
    case direct_io_key::unset:
      return {false, "direct-io-safe=0"};
    case direct_io_key::absent:
      return {false, "no direct-io-safe key"};
    case direct_io_key::malformed:
      return {false, "direct-io-safe is malformed (treated as absent)"};
  }
  return {false, ""};
}

}  // namespace xbd::blkback
