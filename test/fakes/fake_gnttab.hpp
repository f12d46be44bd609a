// An in-process grant table for unit tests.
//
// A fake_guest is one domain's memory (a memfd, so that separate frames can
// be stitched into one mapping as gntdev does) and its v1 grant table. A
// driver from fake_grant_tables::open(domid) maps and copies as that domain,
// with the hypervisor's checks:
//  - map: every ref in use, granted to the caller, writable if asked;
//    all-or-nothing (EINVAL, as gntdev reports it); the frames stitched into
//    one range; set_max_grants caps how many pages are mapped at once
//    (ENOMEM beyond);
//  - copy: a segment beyond its page fails the whole call (EINVAL, as
//    gntdev checks before copying); otherwise per segment GNTST_bad_domain,
//    bad_gntref, general_error (not granted to us, or writing a read-only
//    grant: Xen 4.17's answer); the other segments still run.
#pragma once

#include "asio_xen/gnttab.hpp"

#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <vector>

namespace xbd::fakes {

class fake_guest {
 public:
  fake_guest(unsigned domid, std::size_t pages);
  ~fake_guest();
  fake_guest(const fake_guest&) = delete;
  fake_guest& operator=(const fake_guest&) = delete;

  unsigned domid() const { return domid_; }
  std::size_t pages() const { return pages_; }
  std::span<std::byte> page(std::size_t frame) const;
  int memfd() const { return fd_; }

  // Grants `frame` to `to_domid`; returns the new ref.
  asio_xen::grant_ref grant(std::size_t frame, unsigned to_domid, bool readonly = false);
  void revoke(asio_xen::grant_ref ref);

  struct entry {
    std::size_t frame;
    unsigned domid;
    bool readonly;
  };
  const entry* lookup(asio_xen::grant_ref ref) const;

 private:
  unsigned domid_;
  std::size_t pages_;
  int fd_;
  std::byte* mem_;
  std::map<asio_xen::grant_ref, entry> grants_;
  asio_xen::grant_ref next_ref_ = 8;  // the first refs are reserved (console, xenstore)
};

class fake_grant_tables {
 public:
  fake_guest& add_guest(unsigned domid, std::size_t pages);
  fake_guest* guest(unsigned domid);

  std::unique_ptr<asio_xen::gnttab_driver> open(unsigned caller_domid);

  // Fault knob: segment `n` (0-based, counted over all copies from now on)
  // fails with `status`.
  void fail_copy_segment(std::size_t n, std::int16_t status);
  // Fault knob: the next copy call fails as a whole with the given errno,
  // copying nothing (as gntdev refuses a batch it finds malformed).
  void fail_next_copy_call(int err = EINVAL) { copy_call_fault_ = err; }
  // Fault knob: the next map fails with the given errno.
  void fail_next_map(int err = ENOMEM);

  std::size_t mapped_pages() const;
  std::uint64_t copies() const { return copies_; }

  class driver;

 private:
  friend class driver;
  std::map<unsigned, std::unique_ptr<fake_guest>> guests_;
  std::size_t mapped_ = 0;
  std::uint64_t copies_ = 0;
  std::uint64_t segments_seen_ = 0;
  std::map<std::uint64_t, std::int16_t> copy_faults_;
  int map_fault_ = 0;
  int copy_call_fault_ = 0;
};

}  // namespace xbd::fakes
