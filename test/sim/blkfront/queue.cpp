#include "blkfront/queue.hpp"

namespace xbd::sim::blkfront {

std::unique_ptr<ring_queue> make_ring_queue(platform& p, std::uint32_t domid, unsigned index, unsigned pages,
                                            std::size_t slot_size, std::string& err) {
  auto q = std::make_unique<ring_queue>();
  q->index = index;
  q->ring_pages = p.share(domid, pages, true);
  if (!q->ring_pages) {
    err = "queue " + std::to_string(index) + ": sharing " + std::to_string(pages) + " ring page(s) with domain " +
          std::to_string(domid) + " failed: " + p.last_error();
    return nullptr;
  }
  q->ring = front_ring(q->ring_pages.bytes(), slot_size);
  q->ring.init_shared();
  q->port = p.bind_unbound_port(domid);
  if (!q->port) {
    err = "queue " + std::to_string(index) + ": binding an unbound port for domain " + std::to_string(domid) +
          " failed: " + p.last_error();
    return nullptr;
  }
  return q;
}

}  // namespace xbd::sim::blkfront
