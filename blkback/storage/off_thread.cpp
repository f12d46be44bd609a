#include "blkback/storage/off_thread.hpp"

#include <condition_variable>
#include <deque>
#include <system_error>
#include <thread>

namespace xbd::blkback::storage::off_thread_detail {

namespace {
std::atomic<unsigned> pending{0};

// Threads that run the calls. Never destroyed: its threads are detached
// and may still sleep in the kernel when the process exits.
class pool {
 public:
  bool start(std::function<void()> task) {
    const std::lock_guard g(m_);
    tasks_.push_back(std::move(task));
    if (idle_ >= tasks_.size()) {
      cv_.notify_one();
      return true;
    }
    // Started under the lock: nothing takes the task before we know.
    try {
      std::thread([this] { serve(); }).detach();
    } catch (const std::system_error&) {
      tasks_.pop_back();
      return false;
    }
    ++threads_;
    return true;
  }

  unsigned threads() {
    const std::lock_guard g(m_);
    return threads_;
  }

 private:
  void serve() {
    std::unique_lock l(m_);
    for (;;) {
      ++idle_;
      const bool got = cv_.wait_for(l, idle_linger, [this] { return !tasks_.empty(); });
      --idle_;
      if (!got) break;
      std::function<void()> task = std::move(tasks_.front());
      tasks_.pop_front();
      l.unlock();
      task();
      task = nullptr;  // destroyed here, on this thread
      l.lock();
    }
    --threads_;
  }

  std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  std::size_t idle_ = 0;  // threads waiting for a task
  unsigned threads_ = 0;
};

pool& the_pool() {
  static pool* p = new pool;  // NOLINT(cppcoreguidelines-owning-memory): see pool
  return *p;
}
}  // namespace

bool start(std::function<void()> task) { return the_pool().start(std::move(task)); }
unsigned threads() { return the_pool().threads(); }

bool reserve() {
  if (pending.fetch_add(1) < max_pending) return true;
  pending.fetch_sub(1);
  return false;
}

void release() { pending.fetch_sub(1); }

}  // namespace xbd::blkback::storage::off_thread_detail

namespace xbd::blkback::storage {

std::string describe_stall(off_thread_end end, std::chrono::seconds bound) {
  switch (end) {
    case off_thread_end::done:
      return {};
    case off_thread_end::timed_out:
      return "its file system did not answer within " + std::to_string(bound.count()) +
             " s (io.open-timeout-seconds; the call is left to finish in the background)";
    case off_thread_end::stopped:
      return "the daemon stops (the call is left to finish in the background)";
    case off_thread_end::too_many:
      return std::to_string(off_thread_detail::max_pending) +
             " calls to file systems that do not answer are pending already";
    case off_thread_end::no_thread:
      return "no thread for the call (out of resources)";
  }
  return {};
}

}  // namespace xbd::blkback::storage
