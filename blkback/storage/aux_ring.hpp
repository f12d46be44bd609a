// aux_ring: a small io_uring of our own for the file operations Asio lacks
// (fdatasync, fallocate, and reads and writes of many pieces: Asio hands a
// kernel at most 64 buffers per call), completed into an io_context.
//
// Asio has only a blocking sync_data(), which would stall every ring on the
// thread for as long as the disk takes (docs/architecture.md: 0.7 s after buffered
// writes). A worker thread would serialise one vbd's slow flush behind
// another's. io_uring runs each FSYNC in the kernel's own workers, in
// parallel and without blocking us; its completions wake the io_context
// through an eventfd the ring signals.
//
// The caller supplies the completion object (a queue's request slot), so
// nothing is allocated per operation. One aux_ring per io_context thread;
// not thread-safe.
#pragma once

#include "asio_xen/error.hpp"

#include <boost/asio/any_io_executor.hpp>

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

namespace xbd::blkback {

// Receives the result of one aux_ring operation, on the ring's executor and
// never from inside the call that started it: an error, or the bytes moved
// (readv and writev; 0 for the others).
class aux_completion {
 public:
  virtual void aux_complete(asio_xen::error_code ec, std::size_t moved) = 0;

 protected:
  ~aux_completion() = default;
};

class aux_ring {
 public:
  static asio_xen::result<std::shared_ptr<aux_ring>> create(boost::asio::any_io_executor ex, unsigned entries = 64);
  ~aux_ring();
  aux_ring(const aux_ring&) = delete;
  aux_ring& operator=(const aux_ring&) = delete;

  // Ends the reaper's wait, on the executor's thread, once nothing is in
  // flight any more (the worker's last clean-up): its io_context then runs
  // out of work. Later submissions complete with errc::closed. The
  // destructor closes as well.
  void close();

  void fdatasync(int fd, aux_completion& done);
  // preadv(2) and pwritev(2) at `offset`; `v` stays valid until completed.
  // They may move less than asked (the caller continues; 0 at the end of
  // the file).
  void readv(int fd, std::uint64_t offset, std::span<const iovec> v, aux_completion& done);
  void writev(int fd, std::uint64_t offset, std::span<const iovec> v, aux_completion& done);
  // fallocate(2) with `mode` (e.g. FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE).
  void fallocate(int fd, int mode, std::uint64_t offset, std::uint64_t length, aux_completion& done);

  // Fault injection for tests: the next `n` submissions to the kernel fail
  // with EAGAIN (as io_uring_enter may), and are retried.
  void fail_next_submissions(unsigned n);

  struct impl;

 private:
  explicit aux_ring(std::shared_ptr<impl> i) : impl_(std::move(i)) {}
  std::shared_ptr<impl> impl_;
};

}  // namespace xbd::blkback
