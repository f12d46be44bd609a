// commands: the control socket's requests and their answers.
//
// A request is one line of words; its answer is one line of JSON, an
// object with "error" when the request cannot be done. Nothing here reads
// or writes guest data: the commands look at counters and settings only.
//
//   list                               {"vbds":[{domid, devid, type, dev, state, ...}]}
//   show VBD                           {"vbd":{... every counter, per queue ...}}
//   stats [--json|--prometheus] [SEL]  {"vbds":[...]} or {"prometheus":"<text>"}
//   limits VBD [NAME=VALUE...]         {"vbd":{...},"group":...,"limits":{...},...} (report.hpp)
//   log-level [LEVEL]                  {"log_level":"info"}, after a change also "was"
//   help                               {"commands":[...]}
//
// VBD is DOMID/DEVID or TYPE/DOMID/DEVID (the backend type, for a daemon
// serving several); DEVID may be the toolstack's name (xvda). SEL is a VBD
// or a DOMID alone.
#pragma once

#include "blkback/control/report.hpp"
#include "blkback/log.hpp"

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace xbd::blkback {

struct control_context {
  std::function<std::vector<vbd_report>()> reports;
  std::function<severity()> log_level;
  // Until the next SIGHUP or restart, which read the settings file again.
  std::function<void(severity)> set_log_level;
  // One vbd's I/O limits, after a change when there is one: the answer, or
  // an error text in `error`. Null: limits are not served (an error).
  struct limits_answer {
    std::string json;
    std::string error;
  };
  std::function<limits_answer(const vbd_report&, const std::optional<throttle_settings>&)> limits;
};

// The answer to one request line (without its newline), itself without one.
std::string answer_request(const control_context& ctx, std::string_view line);

}  // namespace xbd::blkback
