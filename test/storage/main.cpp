#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <chrono>
#include <cstdio>

#include "blkback/storage/rbd.hpp"

// A case may end while librados still finishes a connect or close it gave
// up waiting for (each is bounded by the timeouts the driver sets). The
// process must not run its static destructors under such a thread, so it
// waits for them, as the daemon does at exit.
int main(int argc, char** argv) {
  doctest::Context context(argc, argv);
  int rc = context.run();
  if (!xbd::blkback::storage::rbd_quiesce(std::chrono::seconds(60))) {
    std::fputs("librados threads still running 60 s after the last case\n", stderr);
    rc = rc == 0 ? 1 : rc;
  }
  return rc;
}
