// Where the Xen handles come from: the real libraries in the daemon, the
// fakes in unit tests. Each ring opens its own event-channel and grant-table
// handles (one descriptor per ring; handles are used on one thread only).
#pragma once

#include "asio_xen/evtchn.hpp"
#include "asio_xen/gnttab.hpp"
#include "asio_xen/xenstore.hpp"

#include <functional>
#include <memory>

namespace xbd::blkback {

struct xen_platform {
  std::function<asio_xen::result<std::unique_ptr<asio_xen::evtchn_driver>>()> open_evtchn;
  std::function<asio_xen::result<std::unique_ptr<asio_xen::gnttab_driver>>()> open_gnttab;

  // libxenevtchn and libxengnttab.
  static xen_platform real() { return {asio_xen::open_libxenevtchn, asio_xen::open_libxengnttab}; }
};

}  // namespace xbd::blkback
