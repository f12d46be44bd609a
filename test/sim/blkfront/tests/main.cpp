#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "blkfront/engine.hpp"

int main(int argc, char** argv) {
  // Tests provoke mismatches and protocol errors on purpose.
  xbd::sim::blkfront::set_diagnostics(false);
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
