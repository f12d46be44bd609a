#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <boost/log/core.hpp>

int main(int argc, char** argv) {
  // The code under test logs; the tests check behaviour, not log lines.
  boost::log::core::get()->set_logging_enabled(false);
  return doctest::Context(argc, argv).run();
}
