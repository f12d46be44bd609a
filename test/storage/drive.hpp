// What the storage drivers' tests share: running an io_context until a
// condition holds, and test data.
#pragma once

#include <doctest/doctest.h>
#include <boost/asio/io_context.hpp>

#include <algorithm>

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

// `data` to `base` (or from it, if !write) through rig `r` in `chunk`-byte
// operations, `depth` in flight at a time; every operation's error, in
// order. `Done` is the rig's completion record (calls, inline_call, ec);
// each must end exactly once, never from inside the call that started it.
template <class Done, class Rig>
std::vector<decltype(Done::ec)> transfer_in_batches(Rig& r, bool write, std::uint64_t base, std::span<std::byte> data,
                                                    std::size_t chunk, unsigned depth) {
  std::vector<decltype(Done::ec)> out;
  for (std::size_t first = 0; first < data.size(); first += chunk * depth) {
    std::vector<Done> done(std::min<std::size_t>(depth, (data.size() - first + chunk - 1) / chunk));
    for (std::size_t i = 0; i < done.size(); ++i) {
      const std::size_t at = first + i * chunk;
      auto piece = data.subspan(at, std::min(chunk, data.size() - at));
      if (write)
        r.write(base + at, piece, done[i]);
      else
        r.read(base + at, piece, done[i]);
    }
    REQUIRE(r.all_finished(done));
    for (const auto& d : done) {
      CHECK(d.calls == 1);
      CHECK_FALSE(d.inline_call);
      out.push_back(d.ec);
    }
  }
  return out;
}

}  // namespace xbd::test
