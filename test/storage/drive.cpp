#include "test/storage/drive.hpp"

#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <memory>

namespace xbd::test {

namespace asio = boost::asio;

bool drive(asio::io_context& io, const std::function<bool()>& pred, std::chrono::milliseconds limit) {
  io.restart();
  auto expired = std::make_shared<bool>(false);
  asio::steady_timer t(io, limit);
  t.async_wait([expired](const boost::system::error_code& ec) { *expired = *expired || !ec; });
  while (!pred() && !*expired) io.run_one();
  t.cancel();
  io.poll();
  return pred();
}

void idle(asio::io_context& io, std::chrono::milliseconds d) {
  drive(
      io, [] { return false; }, d);
}

std::vector<std::byte> pattern(std::size_t n, std::uint64_t seed) {
  std::vector<std::byte> v(n);
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& b : v) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b = static_cast<std::byte>(x);
  }
  return v;
}

bool all_zero(std::span<const std::byte> v) {
  return std::all_of(v.begin(), v.end(), [](std::byte b) { return b == std::byte{0}; });
}

}  // namespace xbd::test
