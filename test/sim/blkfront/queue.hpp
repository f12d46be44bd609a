// One ring of the device: its shared pages, its event channel, and our
// front view of it. A single-queue device has one; multi-queue has one per
// `queue-<i>/` directory.
#pragma once

#include <memory>
#include <string>

#include "blkfront/platform.hpp"
#include "blkfront/ring.hpp"

namespace xbd::sim::blkfront {

struct ring_queue {
  unsigned index = 0;
  shared_pages ring_pages;
  bound_port port;
  front_ring ring;
};

// Shares `pages` ring pages writable with `domid`, initialises the shared
// header, binds an unbound port for `domid`. Null on failure, with `err` set.
std::unique_ptr<ring_queue> make_ring_queue(platform& p, std::uint32_t domid, unsigned index, unsigned pages,
                                            std::size_t slot_size, std::string& err);

}  // namespace xbd::sim::blkfront
