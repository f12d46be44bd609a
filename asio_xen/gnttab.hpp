// gnttab: grant-table access to a guest's memory.
//
// Grant copy is the data path (the guest's pages never reach our I/O stack);
// mapping is for the shared ring pages, which live as long as a connection.
#pragma once

#include "asio_xen/error.hpp"
#include "asio_xen/xen.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

namespace xbd::asio_xen {

using grant_ref = std::uint32_t;
using copy_segment = xengnttab_grant_copy_segment_t;

// The xengnttab_* call surface of one handle (real: libxengnttab; fake:
// test/fakes).
class gnttab_driver {
 public:
  virtual ~gnttab_driver() = default;
  virtual error_code set_max_grants(std::uint32_t count) = 0;
  // All-or-nothing: either every ref is mapped, contiguously, or none is.
  virtual result<void*> map_domain_grant_refs(std::uint32_t domid, std::span<const grant_ref> refs, bool writable) = 0;
  virtual error_code unmap(void* addr, std::uint32_t count) = 0;
  // Fails as a whole only when the call itself fails; otherwise each
  // segment's status says how it went.
  virtual error_code grant_copy(std::span<copy_segment> segments) = 0;
};

// libxengnttab: xengnttab_open().
result<std::unique_ptr<gnttab_driver>> open_libxengnttab();

// N grant refs of one domain mapped as one contiguous range; unmapped by the
// destructor.
class grant_mapping {
 public:
  grant_mapping() = default;
  grant_mapping(grant_mapping&& o) noexcept { *this = std::move(o); }
  grant_mapping& operator=(grant_mapping&& o) noexcept;
  ~grant_mapping() { reset(); }

  std::span<std::byte> bytes() const { return {static_cast<std::byte*>(addr_), pages_ * xen::page_size}; }
  std::size_t pages() const { return pages_; }
  explicit operator bool() const { return addr_ != nullptr; }
  void reset();

 private:
  friend class grant_table;
  grant_mapping(gnttab_driver* d, void* a, std::size_t n) : driver_(d), addr_(a), pages_(n) {}
  gnttab_driver* driver_ = nullptr;
  void* addr_ = nullptr;
  std::size_t pages_ = 0;
};

class grant_table {
 public:
  explicit grant_table(std::unique_ptr<gnttab_driver> d) : driver_(std::move(d)) {}

  error_code set_max_grants(std::uint32_t count) { return driver_->set_max_grants(count); }

  // Maps `refs` of `domid` as one range. The mapping must not outlive this
  // grant_table.
  result<grant_mapping> map(std::uint32_t domid, std::span<const grant_ref> refs, bool writable);

  // Runs a batch of copies. The call's own failure is returned; otherwise
  // every segment's status is checked (XSA-362/365: a guest can make any one
  // of them fail) and the first failed segment's status is returned as a
  // grant_status_error, with its index in `*failed` when given. Callers that
  // batch several requests look at each segment's status themselves.
  error_code copy(std::span<copy_segment> segments, std::size_t* failed = nullptr);

  gnttab_driver& driver() { return *driver_; }

 private:
  std::unique_ptr<gnttab_driver> driver_;
};

// Builders for the two directions of a copy segment.
inline copy_segment copy_from_guest(std::uint16_t domid, grant_ref ref, std::uint16_t offset, void* dest,
                                    std::uint16_t len) {
  copy_segment s{};
  s.flags = GNTCOPY_source_gref;
  s.source.foreign.ref = ref;
  s.source.foreign.offset = offset;
  s.source.foreign.domid = domid;
  s.dest.virt = dest;
  s.len = len;
  return s;
}

inline copy_segment copy_to_guest(std::uint16_t domid, grant_ref ref, std::uint16_t offset, const void* src,
                                  std::uint16_t len) {
  copy_segment s{};
  s.flags = GNTCOPY_dest_gref;
  s.source.virt = const_cast<void*>(src);  // the C struct has no const member
  s.dest.foreign.ref = ref;
  s.dest.foreign.offset = offset;
  s.dest.foreign.domid = domid;
  s.len = len;
  return s;
}

}  // namespace xbd::asio_xen
