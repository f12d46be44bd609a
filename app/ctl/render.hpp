// render: xen-blkbackctl's human output of the daemon's answers.
#pragma once

#include "app/ctl/json.hpp"

#include <string>

namespace xbd::ctl {

// `list`: one line per vbd under a header.
std::string render_list(const json& answer);
// `show`: one vbd, its counters and latencies, then its queues.
std::string render_show(const json& vbd);
// The answer to `limits VBD`: the group, what is in force, and each source.
std::string render_limits(const json& answer);
// 1536 -> "1.5 KiB".
std::string human_bytes(std::uint64_t bytes);
// Nanoseconds -> "45.2 us", "1.20 ms", "3.00 s".
std::string human_time(std::uint64_t ns);

}  // namespace xbd::ctl
