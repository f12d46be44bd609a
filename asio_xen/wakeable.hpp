// wakeable_wait: waits for a descriptor to become readable, and can be ended
// early without cancelling anything.
//
// Why not Asio's cancel(): with io_uring as the io_context's backend (our
// build, see CMakeLists.txt), Boost 1.81's Asio (1.26) prepares the
// IORING_OP_ASYNC_CANCEL entry without setting its user_data, so the
// cancel's own completion carries whatever the submission slot held last:
// usually another I/O object's pending read or write, which then "completes"
// with the cancel's result (0 bytes: a short transfer or end of file) while
// its real completion arrives later and is given to the next operation on
// that object (a read answered before its data arrived). Closing an object
// with an operation pending has the same cancel path and also frees the
// object while the kernel still holds its address. Fixed upstream in Asio
// 1.27 (Boost 1.82); Debian 12 ships 1.81. docs/architecture.md, "Asio on
// io_uring", has the whole story.
//
// So our rule: an Asio I/O object on an io_uring context is never
// cancelled, and never closed while an operation on it is pending. What
// would be a cancel is a wake-up instead: the waited descriptor sits in an
// epoll set, Asio polls the epoll descriptor, and wake() makes it readable
// by adding a process-wide, always readable eventfd to the set. close() while a wait is pending wakes it, and
// the waiter closes the descriptors once its operation has completed.
//
// A socket's writability can be waited for the same way (watch_for), for
// a writer that must give up on a peer that never reads.
//
// One thread: wait(), wake() and close() are called on the executor's thread.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <memory>

#include "asio_xen/error.hpp"

namespace xbd::asio_xen {

class wakeable_wait {
 public:
  enum class readiness { readable, writable };

  // Watches `fd` for readability (or `r`); `fd` stays the caller's to close.
  static result<wakeable_wait> create(boost::asio::any_io_executor ex, int fd, readiness r = readiness::readable);

  wakeable_wait(wakeable_wait&&) noexcept = default;
  wakeable_wait& operator=(wakeable_wait&& other) noexcept;
  ~wakeable_wait();

  // Completes when the descriptor is readable (an empty error_code), when
  // wake() was called (operation_aborted), or after close() (errc::closed).
  // At most one wait at a time.
  boost::asio::awaitable<error_code> wait();

  // Ends the wait in progress, or the next one if none is.
  void wake();

  // What the next wait() waits for. Not while a wait is in progress.
  error_code watch_for(readiness r);

  // Releases the descriptors now, or as soon as the pending wait returns.
  void close();

  struct state;

 private:
  explicit wakeable_wait(std::shared_ptr<state> s) : state_(std::move(s)) {}
  std::shared_ptr<state> state_;
};

}  // namespace xbd::asio_xen
