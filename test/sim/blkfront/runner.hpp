// The program: connect, (script), (prefill), workload, (reconnect cycles),
// (hold), close, summary. main() only parses the command line.
#pragma once

#include "blkfront/options.hpp"

namespace xbd::sim::blkfront {

// Prints the JSON summary line on stdout; returns the exit status.
int run_blkfront(const options& o);

}  // namespace xbd::sim::blkfront
