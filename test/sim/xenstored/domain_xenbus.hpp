// The xenstore device of a simulated domain's kernel (Linux's
// /dev/xen/xenbus): every process of the domain shares the domain's one
// xenstore ring, and xenstored treats all of them as that domain.
//
// A program reaches xenstored here through a Unix socket (libxenstore's
// xs_open() honours XENSTORED_PATH), so the binary under test is the one
// shipped, unchanged: xen-blkbackd, xen-blkbackd-dm and the simulated
// xl devd run "in" a driver domain by being pointed at this socket. The
// relay does what the kernel driver does for its user-space clients:
//  - each request goes to xenstored on the domain's ring (guest_xenstore)
//    and its answer comes back with the client's own request id;
//  - watch tokens are made unique per client on the ring, and events are
//    delivered to the client that set the watch, with its own token;
//  - a client that goes away has its watches removed and its open
//    transactions ended (aborted), as the kernel does when a file closes.
// Requests are relayed one at a time (each bounded by guest_xenstore's
// timeout), which is all the control plane of a backend needs.
#pragma once

#include <atomic>
#include <filesystem>
#include <memory>

namespace xbd::sim {

class domain_xenbus {
 public:
  // Connects to xenstored as `domid` (introduced already: see
  // introduce_domain) and listens on `socket` (replaced if it exists).
  // Throws std::system_error.
  domain_xenbus(const std::filesystem::path& sim_dir, unsigned domid, const std::filesystem::path& socket);
  ~domain_xenbus();
  domain_xenbus(const domain_xenbus&) = delete;
  domain_xenbus& operator=(const domain_xenbus&) = delete;

  // Relays until `stop` is set (looked at every 100 ms at least).
  void run(const std::atomic<bool>& stop);

 private:
  struct impl;
  std::unique_ptr<impl> p_;
};

}  // namespace xbd::sim
