// The buffer memory budget and a ring's buffer cache: the rules of
// blkback/data/memory.hpp, one by one.
#include "blkback/data/memory.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

using namespace xbd::blkback;

namespace {

constexpr std::uint64_t kib = 1024;

struct counting_waiter final : memory_waiter {
  int told = 0;
  void memory_freed() override { ++told; }
};

}  // namespace

TEST_CASE("memory: growth within the budget is granted, beyond it the ring waits and is told when memory frees") {
  auto bp = std::make_shared<memory_budget>(100 * kib);
  memory_budget& b = *bp;
  auto a = b.open_account();
  counting_waiter w;
  CHECK(a->grow(60 * kib, false, w));
  CHECK(a->grow(40 * kib, false, w));
  CHECK_FALSE(a->grow(4 * kib, false, w));
  CHECK(a->pressure());
  CHECK(b.usage().committed == 100 * kib);
  CHECK(b.usage().waits == 1u);
  CHECK(w.told == 0);
  a->shrink(40 * kib);
  CHECK(w.told == 1);
  CHECK_FALSE(a->pressure());
  CHECK(a->grow(4 * kib, false, w));
  CHECK(b.usage().peak == 100 * kib);
  a->shrink(64 * kib);
  CHECK(b.usage().committed == 0u);
  CHECK(b.usage().holders == 0u);
}

TEST_CASE("memory: a ring with nothing in flight always gets its one request") {
  auto bp = std::make_shared<memory_budget>(100 * kib);
  memory_budget& b = *bp;
  auto hog = b.open_account();
  auto quiet = b.open_account();
  counting_waiter w1, w2;
  CHECK(hog->grow(100 * kib, false, w1));
  CHECK_FALSE(quiet->grow(64 * kib, false, w2));
  CHECK(quiet->grow(64 * kib, true, w2));
  CHECK(b.usage().committed == 164 * kib);
  quiet->forget(w2);
  quiet->shrink(64 * kib);
  hog->shrink(100 * kib);
}

TEST_CASE("memory: a vbd over its fair share stops growing while another waits, and should give back") {
  auto bp = std::make_shared<memory_budget>(100 * kib);
  memory_budget& b = *bp;
  auto hog = b.open_account();
  auto victim = b.open_account();
  counting_waiter hw, vw;
  CHECK(hog->grow(60 * kib, false, hw));
  CHECK_FALSE(hog->should_yield());  // nobody waits
  // 60 + 50 does not fit: the victim waits.
  CHECK_FALSE(victim->grow(50 * kib, false, vw));
  // 70 would fit, but the hog would hold more than half while the victim
  // waits.
  CHECK_FALSE(hog->grow(10 * kib, false, hw));
  CHECK(hog->should_yield());
  CHECK_FALSE(victim->should_yield());
  // The hog gives back; the victim is told and now fits.
  hog->shrink(20 * kib);
  CHECK(vw.told == 1);
  CHECK(victim->grow(50 * kib, false, vw));
  hog->forget(hw);
  CHECK(b.usage().committed == 90 * kib);
  CHECK(b.usage().holders == 2u);
  hog->shrink(40 * kib);
  victim->shrink(50 * kib);
}

TEST_CASE("memory: a waiting ring of the same vbd is no reason for that vbd to yield") {
  auto bp = std::make_shared<memory_budget>(100 * kib);
  memory_budget& b = *bp;
  auto a = b.open_account();
  counting_waiter w1, w2;
  CHECK(a->grow(90 * kib, false, w1));
  CHECK_FALSE(a->grow(20 * kib, false, w2));
  CHECK_FALSE(a->should_yield());
  CHECK(a->grow(10 * kib, false, w1));
  a->forget(w2);
  a->shrink(100 * kib);
}

TEST_CASE("memory: an account that goes away gives back what it still holds") {
  auto bp = std::make_shared<memory_budget>(100 * kib);
  memory_budget& b = *bp;
  counting_waiter w;
  {
    auto a = b.open_account();
    CHECK(a->grow(30 * kib, false, w));
  }
  CHECK(b.usage().committed == 0u);
  CHECK(b.usage().holders == 0u);
}

TEST_CASE("buffer cache: chunk orders are powers of two pages") {
  CHECK(buffer_cache::order_for(1) == 0);
  CHECK(buffer_cache::order_for(4096) == 0);
  CHECK(buffer_cache::order_for(4097) == 1);
  CHECK(buffer_cache::order_for(11 * 4096) == 4);
  CHECK(buffer_cache::order_for(1u << 20) == 8);
  CHECK(buffer_cache::order_for(16u << 20) == 12);
  CHECK(buffer_cache::bytes_of(8) == 1u << 20);
}

TEST_CASE("buffer cache: chunks are reused most recently freed first and unmapped when idle") {
  auto bp = std::make_shared<memory_budget>(1024 * kib);
  memory_budget& b = *bp;
  counting_waiter w;
  buffer_cache c(b.open_account());
  auto x = c.take(8 * kib, false, w);
  auto y = c.take(8 * kib, false, w);
  REQUIRE(x);
  REQUIRE(y);
  REQUIRE(x->data != nullptr);
  x->data[8 * kib - 1] = std::byte{1};  // mapped and writable
  CHECK(b.usage().committed == 16 * kib);
  c.give(*x);
  c.give(*y);
  CHECK(c.cached_bytes() == 16 * kib);
  auto z = c.take(5 * kib, false, w);
  REQUIRE(z);
  CHECK(z->data == y->data);
  c.give(*z);
  // Nothing has been idle for an hour; everything has been for zero.
  c.trim(std::chrono::hours(1));
  CHECK(c.cached_bytes() == 16 * kib);
  c.trim(std::chrono::milliseconds(0));
  CHECK(c.cached_bytes() == 0u);
  CHECK(b.usage().committed == 0u);
}

TEST_CASE("buffer cache: a full budget first takes the ring's own cached chunks of other sizes") {
  auto bp = std::make_shared<memory_budget>(64 * kib);
  memory_budget& b = *bp;
  counting_waiter w;
  buffer_cache c(b.open_account());
  auto small = c.take(32 * kib, false, w);
  REQUIRE(small);
  c.give(*small);
  auto big = c.take(64 * kib, false, w);
  REQUIRE(big);
  CHECK(big->data != nullptr);
  CHECK(c.cached_bytes() == 0u);
  CHECK(b.usage().committed == 64 * kib);
  CHECK_FALSE(c.account().pressure());
  // Now it is full: the next one waits, and is told when memory frees.
  CHECK_FALSE(c.take(4 * kib, false, w));
  const int before = w.told;
  c.give(*big);
  c.trim(std::chrono::milliseconds(0));
  CHECK(w.told == before + 1);
}

TEST_CASE("buffer cache: a vbd over its share gives chunks back instead of caching them while another waits") {
  auto bp = std::make_shared<memory_budget>(64 * kib);
  memory_budget& b = *bp;
  counting_waiter hw, vw;
  buffer_cache hog(b.open_account());
  buffer_cache victim(b.open_account());
  auto h1 = hog.take(32 * kib, false, hw);
  auto h2 = hog.take(16 * kib, false, hw);
  REQUIRE(h1);
  REQUIRE(h2);
  CHECK_FALSE(victim.take(32 * kib, false, vw));
  hog.give(*h1);  // 48 > 32, the fair share: unmapped, and the victim told
  CHECK(hog.cached_bytes() == 0u);
  CHECK(vw.told == 1);
  auto v = victim.take(32 * kib, false, vw);
  REQUIRE(v);
  hog.give(*h2);  // nobody waits now: cached
  CHECK(hog.cached_bytes() == 16 * kib);
  victim.give(*v);
}

// The first call in the process from several threads at once: under
// AddressSanitizer, glibc's malloc_trim set its heap up racily and crashed
// a daemon whose two workers released a vbd's queues together.
TEST_CASE("memory: the free heap is returned from many threads at once, first calls included") {
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  constexpr int n = 8;
  for (int i = 0; i < n; ++i)
    threads.emplace_back([&ready] {
      ready.fetch_add(1);
      while (ready.load() < n) std::this_thread::yield();
      for (int k = 0; k < 20; ++k) return_free_heap();
    });
  for (auto& t : threads) t.join();
  CHECK(ready.load() == n);
}
