// The guest's disks as xen-blkbackd counts them, for the QMP answers that
// xentop reads (qmp.hpp): `stats DOMID` over the daemon's control socket.
#pragma once

#include "qmp.hpp"

#include <chrono>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace xbd::dm {

// The disks in the daemon's answer to `stats DOMID`, or why there are none.
std::variant<std::vector<block_device>, std::string> blocks_from_stats(std::string_view answer);

// What libxenstat compares with a vbd's `params`: the part from its first
// '/' on (the path of "aio:/srv/a.img"), or all of it without one.
std::string libxenstat_file(std::string_view params);

// Asks the daemon at `socket` each time, within `limit`.
block_source daemon_blocks(std::string socket, unsigned domid, std::chrono::milliseconds limit);

}  // namespace xbd::dm
