// request_task: the coroutine that carries one request from the ring to
// its response, with its frame in the request's slot.
//
// A request's life reads top to bottom as one coroutine (queue::serve), but
// an asio::awaitable would allocate its frame per request. This type is the
// minimum for a coroutine that runs eagerly up to its first wait, is never
// awaited by anyone, and ends by itself: its frame comes from the slot
// passed to it (frame_arena), falling back to the heap only if the frame
// outgrows the arena. Its waits are storage operations (storage_wait).
#pragma once

#include "blkback/data/fault.hpp"
#include "blkback/storage/storage.hpp"

#include <coroutine>
#include <cstddef>
#include <exception>
#include <new>
#include <utility>

namespace xbd::blkback {

// Memory for one coroutine frame at a time.
class frame_arena {
 public:
  static constexpr std::size_t capacity = 1024;

  void* allocate(std::size_t n) {
    void* p =
        (!used_ && n + header <= capacity) ? (used_ = true, static_cast<void*>(storage_)) : ::operator new(n + header);
    *static_cast<frame_arena**>(p) = p == storage_ ? this : nullptr;
    return static_cast<std::byte*>(p) + header;
  }
  static void deallocate(void* frame) {
    void* p = static_cast<std::byte*>(frame) - header;
    if (frame_arena* a = *static_cast<frame_arena**>(p))
      a->used_ = false;
    else
      ::operator delete(p);
  }

 private:
  static constexpr std::size_t header = alignof(std::max_align_t);
  alignas(std::max_align_t) std::byte storage_[capacity];
  bool used_ = false;
};

// Something that owns a frame_arena: the first argument after the object
// for a member coroutine (queue::serve(slot&, ...)).
template <class T>
concept has_frame = requires(T& t) {
  { t.frame } -> std::same_as<frame_arena&>;
};

struct request_task {
  struct promise_type {
    template <class Self, has_frame Slot, class... Rest>
    static void* operator new(std::size_t n, Self&, Slot& s, Rest&&...) {
      return s.frame.allocate(n);
    }
    static void operator delete(void* p) { frame_arena::deallocate(p); }

    request_task get_return_object() noexcept { return {}; }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    // Nothing in a request's path throws; if it did, the ring could no
    // longer keep its accounts.
    void unhandled_exception() noexcept { std::terminate(); }
  };
};

// Where a storage operation's end resumes the request that waits for it.
class storage_wait final : public storage::completion {
 public:
  void complete(asio_xen::error_code ec) override {
    result_ = ec;
    std::exchange(waiter_, {}).resume();
  }

  // co_await wait.on([&](storage::completion& c) { channel.read(..., c); })
  template <class Start>
  auto on(Start start) {
    struct awaiter {
      storage_wait& w;
      Start start;
      bool await_ready() const noexcept { return false; }
      // Drivers never complete from inside the call (storage.hpp), so the
      // resume always comes from a later turn of the io_context.
      void await_suspend(std::coroutine_handle<> h) {
        w.waiter_ = h;
        start(static_cast<storage::completion&>(w));
        fault::at(fault::point::io_started);
      }
      asio_xen::error_code await_resume() const noexcept { return w.result_; }
    };
    return awaiter{*this, std::move(start)};
  }

 private:
  std::coroutine_handle<> waiter_;
  asio_xen::error_code result_;
};

}  // namespace xbd::blkback
