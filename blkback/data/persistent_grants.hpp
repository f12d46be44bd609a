// persistent_grants: the guest pages one ring keeps mapped
// (feature-persistent).
//
// A frontend that negotiates persistent grants grants a pool of its pages
// once and reuses them for every request (blkif.h: "feature-persistent").
// The backend maps each page the first time a request names it and keeps
// the mapping, so a request on pages seen before costs no map call, no
// hypercall and no copy: its I/O runs on the mapping itself.
//
// Bounded: at most `capacity` pages are kept (Linux's blkback keeps 1056
// per ring). When the set is full a new page is not kept: the caller
// serves it for that request only (mapped with the request's other such
// pages in one call, or on an O_DIRECT store copied: queue::spill_pages). Making room by unmapping a page per miss
// would cost a map and an unmap per page of every request of a frontend whose pool is larger than the set (16 requests
// of 1 MiB are 4096 pages) and buy nothing; instead the queue's periodic tick lets go of a tenth of the set, least
// recently used first, when pages were refused since the last tick (make_room), so the set follows a working set that
// moves, at a bounded cost. A page unused for a minute is unmapped (drop_unused). The cache knows nothing of the memory
// budget: it says how many pages it kept and dropped, and the queue accounts for them.
//
// A guest cannot revoke a grant the backend has mapped (Xen refuses to end
// foreign access while it is mapped), so a kept page stays the guest's page
// for as long as we hold it; a guest that rewrites its grant entry changes
// nothing for a mapping already made.
#pragma once

#include "asio_xen/gnttab.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <list>
#include <unordered_map>

namespace xbd::blkback {

class persistent_grants {
 public:
  using clock = std::chrono::steady_clock;

  persistent_grants(asio_xen::grant_table& gt, std::uint32_t domid, std::size_t capacity)
      : gnttab_(gt), domid_(domid), capacity_(capacity) {}
  persistent_grants(const persistent_grants&) = delete;
  persistent_grants& operator=(const persistent_grants&) = delete;

  struct lookup {
    std::byte* page = nullptr;   // null: not kept (the caller maps it for one request)
    bool mapped_now = false;     // a new page was mapped and is kept
    asio_xen::error_code error;  // the map call failed (a bad grant: not kept either)
  };
  // The page of `ref`, mapped writable and marked in use until put(ref).
  lookup get(asio_xen::grant_ref ref, clock::time_point now);
  // A request is done, at `now`, with the page it got from get().
  void put(asio_xen::grant_ref ref, clock::time_point now);

  // Unmaps the pages unused since `before`; returns how many.
  std::size_t drop_unused(clock::time_point before);
  // If pages were refused for want of room since the last call, unmaps a
  // tenth of the set (at least one page), least recently used first, among
  // the pages nobody used since `before`; returns how many. A page is not
  // unmapped the moment its I/O ends: on Linux 6.1 the kernel can still
  // hold an O_DIRECT reference to it for a while, and gntdev's unmap of a
  // page so held goes wrong (docs/architecture.md, "Moving the data").
  std::size_t make_room(clock::time_point before);
  std::size_t size() const { return pages_.size(); }
  std::size_t in_use() const { return pages_.size() - unused_.size(); }
  std::size_t capacity() const { return capacity_; }

 private:
  struct page {
    asio_xen::grant_mapping map;
    unsigned users = 0;
    clock::time_point last_used;
    std::list<asio_xen::grant_ref>::iterator at;  // in unused_ while users == 0, else in used_
  };

  asio_xen::grant_table& gnttab_;
  std::uint32_t domid_;
  std::size_t capacity_;
  std::size_t refused_ = 0;  // pages not kept for want of room, since make_room()
  std::unordered_map<asio_xen::grant_ref, page> pages_;
  // Every kept page is in one of the two (moved by splicing: nothing is
  // allocated per request).
  std::list<asio_xen::grant_ref> unused_;  // nobody uses them; least recently used first
  std::list<asio_xen::grant_ref> used_;
};

}  // namespace xbd::blkback
