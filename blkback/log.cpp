#include "blkback/log.hpp"

namespace xbd::blkback {

std::string_view to_string(severity s) {
  switch (s) {
    case severity::trace:
      return "trace";
    case severity::debug:
      return "debug";
    case severity::info:
      return "info";
    case severity::warning:
      return "warning";
    case severity::error:
      return "error";
  }
  return "?";
}

std::ostream& operator<<(std::ostream& os, severity s) { return os << to_string(s); }

bool parse_severity(std::string_view text, severity& out) {
  if (text == "trace")
    out = severity::trace;
  else if (text == "debug")
    out = severity::debug;
  else if (text == "info")
    out = severity::info;
  else if (text == "warning" || text == "warn")
    out = severity::warning;
  else if (text == "error")
    out = severity::error;
  else
    return false;
  return true;
}

}  // namespace xbd::blkback
