// Memory for the completion handlers of one in-flight request.
//
// Asio allocates an operation object for every asynchronous call through the
// handler's associated allocator. A slot owns a small arena for that, so the
// data path allocates nothing per request; anything larger than the arena
// (never expected) falls back to the heap rather than fail.
#pragma once

#include <cstddef>
#include <new>

namespace xbd::blkback {

class handler_arena {
 public:
  void* allocate(std::size_t n) {
    for (auto& b : blocks_) {
      if (!b.used && n <= sizeof b.storage) {
        b.used = true;
        return b.storage;
      }
    }
    return ::operator new(n);
  }
  void deallocate(void* p) {
    for (auto& b : blocks_) {
      if (p == b.storage) {
        b.used = false;
        return;
      }
    }
    ::operator delete(p);
  }

 private:
  // A composed read may hold its outer and inner operations at once.
  struct block {
    alignas(std::max_align_t) std::byte storage[640];
    bool used = false;
  };
  block blocks_[2];
};

template <class T>
class arena_allocator {
 public:
  using value_type = T;
  explicit arena_allocator(handler_arena& a) noexcept : arena_(&a) {}
  template <class U>
  arena_allocator(const arena_allocator<U>& o) noexcept : arena_(o.arena_) {}

  T* allocate(std::size_t n) { return static_cast<T*>(arena_->allocate(n * sizeof(T))); }
  void deallocate(T* p, std::size_t) noexcept { arena_->deallocate(p); }

  template <class U>
  bool operator==(const arena_allocator<U>& o) const noexcept {
    return arena_ == o.arena_;
  }

 private:
  template <class U>
  friend class arena_allocator;
  handler_arena* arena_;
};

}  // namespace xbd::blkback
