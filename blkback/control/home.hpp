// home: the domain the daemon runs in, and what it must be able to do there
// before it serves anything.
//
// The daemon runs in dom0 or in a driver domain, an unprivileged domU that
// owns the storage (docs/driver-domain.md). Nothing it does needs dom0: its
// xenstore connection acts as its own domain, and libxl gives that domain
// each vbd's backend directory. What a driver domain needs from its xl
// config (driver_domain=1) and that only one daemon serves a domain are
// checked here, at start-up, with a message that names the cause.
#pragma once

#include "asio_xen/xenstore.hpp"
#include "blkback/config.hpp"
#include "blkback/log.hpp"

#include <optional>
#include <string>

namespace xbd::blkback {

// Our own domain id: the configured one, else xenstore's `domid` key of our
// home, else 0 (dom0).
unsigned resolve_own_domid(asio_xen::xenstore& xs, const settings& cfg, logger& lg);

// Why this daemon cannot serve as domain `domid` (nullopt: it can):
//  - a backend directory it cannot read: its xenstore connection is not
//    that domain's (a wrong [backend] domid, or the wrong domain);
//  - a driver domain without the device-model directory of its own that
//    libxl creates only for driver_domain=1: xl devd there could neither
//    start the device model of a guest's qdisk disk nor detach one.
std::optional<std::string> check_home(asio_xen::xenstore& xs, unsigned domid, const settings& cfg);

// One daemon per domain: two would serve the same vbds. The claim is a
// node of the domain's own (/local/domain/<domid>/data/xen-blkbackd,
// "<pid> <start time>"), taken in a transaction; a claim whose process has
// ended (crashed, killed, or restarted by systemd) is taken over.
struct claim_result {
  bool taken = false;
  std::string holder;  // when not taken: the pid of the daemon that holds it
  std::string error;   // when not taken and nobody holds it: why
};
claim_result claim_home(asio_xen::xenstore& xs, unsigned domid);
// Gives the claim up if it is still ours (a clean exit).
void release_home(asio_xen::xenstore& xs, unsigned domid);

}  // namespace xbd::blkback
