#include "blkback/storage/rbd_thread.hpp"

#include <condition_variable>
#include <system_error>
#include <thread>

namespace xbd::blkback::storage::rbd {

namespace {

// Never destroyed: a thread may still end after static destructors ran.
struct counter {
  std::mutex m;
  std::condition_variable idle;
  std::size_t running = 0;
};

counter& threads() {
  static auto* c = new counter;
  return *c;
}

thread_local bool background = false;

}  // namespace

bool spawn(std::function<void()> job) noexcept {
  counter& c = threads();
  {
    std::lock_guard lk(c.m);
    ++c.running;
  }
  try {
    std::thread([job = std::move(job), &c]() mutable {
      background = true;
      try {
        job();
      } catch (...) {  // a job reports its failures in its result; bad_alloc ends it here
      }
      job = nullptr;  // what it holds goes before the thread counts as done
      std::lock_guard lk(c.m);
      if (--c.running == 0) c.idle.notify_all();
    }).detach();
    return true;
  } catch (const std::system_error&) {
    std::lock_guard lk(c.m);
    if (--c.running == 0) c.idle.notify_all();
    return false;
  }
}

bool on_background_thread() { return background; }

std::size_t background_threads() {
  counter& c = threads();
  std::lock_guard lk(c.m);
  return c.running;
}

bool wait_background(std::chrono::milliseconds limit) {
  counter& c = threads();
  std::unique_lock lk(c.m);
  return c.idle.wait_for(lk, limit, [&c] { return c.running == 0; });
}

}  // namespace xbd::blkback::storage::rbd
