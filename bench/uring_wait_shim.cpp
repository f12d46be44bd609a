// uring_wait_shim: lets xen-blkbackd run under valgrind 3.19 (Debian 12)
// for scripts/bench's `instructions` row. Preloaded only there.
//
// Valgrind runs one thread at a time and hands the CPU over around system
// calls it knows may block; 3.19 does not count io_uring_enter among them.
// A thread that waits for completions in io_uring_enter then keeps
// valgrind's lock, the thread that would give it something to complete
// never runs, and the daemon hangs at its first wait (seen: one thread in
// io_cqring_wait, the other in valgrind's lock pipe). Here a wait for
// completions becomes a non-blocking look (which still submits) and a
// poll(2) of the ring's descriptor, which valgrind does know blocks; the
// ring's descriptor is readable when its completion queue is not empty.
// What the daemon executes is the same apart from this function's few
// instructions, which scripts/bench's cgcost leaves out of its figures.
#include <dlfcn.h>
#include <liburing.h>
#include <poll.h>

#include <cerrno>

extern "C" int __io_uring_get_cqe(struct io_uring* ring, struct io_uring_cqe** cqe_ptr, unsigned submit,
                                  unsigned wait_nr, sigset_t* sigmask) {
  using fn = int (*)(struct io_uring*, struct io_uring_cqe**, unsigned, unsigned, sigset_t*);
  static fn real = reinterpret_cast<fn>(dlsym(RTLD_NEXT, "__io_uring_get_cqe"));
  if (wait_nr == 0) return real(ring, cqe_ptr, submit, 0, sigmask);
  for (;;) {
    *cqe_ptr = nullptr;
    int rc = real(ring, cqe_ptr, submit, 0, sigmask);
    submit = 0;  // submitted by the first look
    if (rc != -EAGAIN && rc != -ETIME) return rc;
    if (*cqe_ptr) return rc;
    pollfd p{ring->ring_fd, POLLIN, 0};
    (void)poll(&p, 1, -1);  // EINTR: look again
  }
}
