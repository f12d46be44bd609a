// What the storage drivers' tests share: running an io_context until a
// condition holds, and test data.
#pragma once

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

namespace xbd::test {

// Runs `io` until `pred` holds or `limit` passes (timed by a timer of the
// context: never run_for, test/unit/run.hpp says why).
bool drive(boost::asio::io_context& io, const std::function<bool()>& pred,
           std::chrono::milliseconds limit = std::chrono::seconds(30));
void idle(boost::asio::io_context& io, std::chrono::milliseconds d);

// `n` bytes of xorshift noise from `seed`: different seeds, different data.
std::vector<std::byte> pattern(std::size_t n, std::uint64_t seed);
bool all_zero(std::span<const std::byte> v);

}  // namespace xbd::test
