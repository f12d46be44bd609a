// One libnbd connection, driven from an io_context without blocking it.
//
// libnbd owns the socket and says which way it wants to move next
// (nbd_aio_get_direction); we wait for that and tell it (nbd_aio_notify_read
// and _write), and its completion callbacks run inside those calls.
//
// The wait never goes through an Asio object on libnbd's socket: with
// io_uring as the io_context's backend, an Asio object cannot be cancelled or
// closed while a wait is pending (docs/architecture.md, "Asio on io_uring"),
// yet a lost connection must end its wait at once and libnbd closes its
// socket when it pleases. So the socket sits in an epoll set of ours, and an
// asio_xen::wakeable_wait polls that set: wake() ends a wait early, and the
// socket in the set can be swapped or closed by libnbd at any time.
#pragma once

#include "asio_xen/error.hpp"
#include "asio_xen/wakeable.hpp"
#include "blkback/storage/spec.hpp"

#include <libnbd.h>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <memory>
#include <string>

namespace xbd::blkback::storage::nbd {

// libnbd's socket, watched in the directions libnbd asks for.
class socket_watch {
 public:
  static asio_xen::result<std::shared_ptr<socket_watch>> create(const boost::asio::any_io_executor& ex);
  socket_watch(int inner, asio_xen::wakeable_wait outer) : inner_(inner), outer_(std::move(outer)) {}
  ~socket_watch() { close(); }
  socket_watch(const socket_watch&) = delete;
  socket_watch& operator=(const socket_watch&) = delete;

  // Watches `fd` for `direction` (LIBNBD_AIO_DIRECTION_*, 0: for nothing).
  // A different fd replaces the one watched; `again` registers it anew even
  // if it looks the same (while connecting, libnbd may close a socket and
  // open the next address's under the same number).
  void watch(int fd, unsigned direction, bool again = false);
  // Stops watching, before libnbd closes the socket.
  void forget();
  // The watched directions that are ready now (LIBNBD_AIO_DIRECTION_*).
  unsigned ready();
  // Completes when the socket is ready (an empty error_code), after wake()
  // (operation_aborted), or after close() (errc::closed). One at a time.
  boost::asio::awaitable<asio_xen::error_code> wait() { return outer_.wait(); }
  void wake() { outer_.wake(); }
  void close();

 private:
  int inner_;
  asio_xen::wakeable_wait outer_;
  int fd_ = -1;
  unsigned direction_ = 0;  // as registered; 0: not in the set
};

// One libnbd handle, from nbd_create to nbd_close.
class link {
 public:
  link();  // handle() is null if libnbd could not create one (why() says so)
  ~link() { close(); }
  link(const link&) = delete;
  link& operator=(const link&) = delete;

  nbd_handle* handle() const { return h_; }
  bool up() const;    // negotiated: commands can be issued
  bool down() const;  // dead or closed (or never created): only closing it is left
  // Moves libnbd on after its socket became ready in `ready`'s directions.
  void step(unsigned ready);
  // Records libnbd's last error (call right after a failed libnbd call),
  // unless one is recorded already: the first is the cause.
  void note_error();
  void note_error(const std::string& why, int err);
  const std::string& why() const { return why_; }
  int error_number() const { return errno_; }
  // libnbd forgets the commands it still holds without calling their
  // completion callbacks; it never waits on the network here.
  void close();
  // Closes the handle and starts afresh with a new one (for the next
  // address of a host name), the recorded error forgotten.
  void renew();

 private:
  nbd_handle* h_;
  std::string why_;
  int errno_ = 0;
};

// What connection attempts fail with: libnbd's errno, in a category that
// names the call; a host name that cannot be resolved, in getaddrinfo's;
// TLS credential files that cannot be used (nbd_tls.hpp), in their own.
extern const asio_xen::xen_call_category connect_call;
extern const asio_xen::xen_call_category resolve_call;
extern const asio_xen::xen_call_category tls_call;

// Connects `l` to `t` and negotiates, within `limit` (ETIMEDOUT), with `w`
// watching its socket; operation_aborted once `w` is closed. A host name is
// resolved first, on a thread of its own and within the same limit (a dead
// DNS server must not hold the ring's thread), and each of its addresses is
// tried in turn. TLS credentials are checked first (nbd_tls.hpp). On
// failure `detail` says why (libnbd's message, explained if about TLS, or
// the resolver's). `local_files`: the URI names TLS files, which libnbd
// reads only if allowed to.
boost::asio::awaitable<asio_xen::error_code> connect(std::shared_ptr<link> l, std::shared_ptr<socket_watch> w,
                                                     nbd_target t, bool local_files, std::chrono::milliseconds limit,
                                                     std::string& detail);

}  // namespace xbd::blkback::storage::nbd
