// blkfront-sim: a guest's xen-blkfront in a process. See usage_text().
#include <cstdio>
#include <string>
#include <vector>

#include "blkfront/options.hpp"
#include "blkfront/runner.hpp"

int main(int argc, char** argv) {
  using namespace xbd::sim::blkfront;
  const std::vector<std::string> args(argv + 1, argv + argc);
  auto parsed = parse_options(args);
  if (std::holds_alternative<help_requested>(parsed)) {
    std::fputs(usage_text().c_str(), stdout);
    return 0;
  }
  if (auto* err = std::get_if<std::string>(&parsed)) {
    std::fprintf(stderr, "blkfront-sim: %s\n(see blkfront-sim --help)\n", err->c_str());
    return 2;
  }
  return run_blkfront(std::get<options>(parsed));
}
