// How finished RBD operations cross from librbd's threads to a ring's
// (rbd_channel.hpp says why this way).
#pragma once

#include "asio_xen/error.hpp"
#include "blkback/storage/storage.hpp"

#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>

namespace xbd::blkback::storage::rbd {

enum class op_kind { read, write, flush, discard };

struct mailbox;

// One request's slot in a channel.
struct op {
  op_kind kind = op_kind::read;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  std::byte* buf = nullptr;
  std::span<const iovec> pieces;  // a vectored read or write: the guest's pages, instead of buf
  completion* done = nullptr;     // null: the slot is free
  asio_xen::error_code ec;        // how it ended
  bool refused = false;           // failed by us before librbd saw it: not logged
  op* next = nullptr;             // in the free list or the mailbox
  mailbox* box = nullptr;         // where it goes when it ends
  std::shared_ptr<void> keep;     // while librbd has it: the channel's state, slots and mailbox
};

// A multi-producer, single-consumer list of finished operations and the
// eventfd that says it is not empty.
struct mailbox {
  explicit mailbox(int fd) : efd(fd) {}
  ~mailbox() {
    if (efd >= 0) ::close(efd);
  }
  mailbox(const mailbox&) = delete;
  mailbox& operator=(const mailbox&) = delete;

  // Any thread. `o` belongs to the consumer once this returns (and may be
  // gone): nothing of it is touched after the exchange.
  void post(op* o) {
    op* old = head.load(std::memory_order_relaxed);
    do {
      o->next = old;
    } while (!head.compare_exchange_weak(old, o, std::memory_order_release, std::memory_order_relaxed));
    if (old == nullptr) {
      const std::uint64_t one = 1;
      (void)!::write(efd, &one, sizeof one);
    }
  }

  // The consumer's thread: everything posted so far, oldest first. The
  // eventfd is read before the list is taken, so a post that comes after
  // the take finds the list empty and signals again.
  op* take() {
    std::uint64_t n = 0;
    (void)!::read(efd, &n, sizeof n);
    op* newest = head.exchange(nullptr, std::memory_order_acquire);
    op* oldest = nullptr;
    while (newest) {
      op* o = newest;
      newest = o->next;
      o->next = oldest;
      oldest = o;
    }
    return oldest;
  }

  std::atomic<op*> head{nullptr};
  const int efd;
};

}  // namespace xbd::blkback::storage::rbd
