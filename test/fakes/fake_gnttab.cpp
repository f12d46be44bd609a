#include "test/fakes/fake_gnttab.hpp"

#include <sys/mman.h>
#include <unistd.h>
#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace xbd::fakes {

using asio_xen::copy_segment;
using asio_xen::error_code;
using asio_xen::grant_ref;
using asio_xen::result;

namespace {
error_code err(int e) { return {e, boost::system::generic_category()}; }
constexpr std::size_t page_size = xen::page_size;
}  // namespace

fake_guest::fake_guest(unsigned domid, std::size_t pages) : domid_(domid), pages_(pages) {
  fd_ = ::memfd_create("fake-guest", MFD_CLOEXEC);
  if (fd_ < 0 || ::ftruncate(fd_, static_cast<off_t>(pages * page_size)) != 0)
    throw std::runtime_error("fake_guest: memfd");
  void* p = ::mmap(nullptr, pages * page_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (p == MAP_FAILED) throw std::runtime_error("fake_guest: mmap");
  mem_ = static_cast<std::byte*>(p);
}

fake_guest::~fake_guest() {
  ::munmap(mem_, pages_ * page_size);
  ::close(fd_);
}

std::span<std::byte> fake_guest::page(std::size_t frame) const {
  if (frame >= pages_) throw std::out_of_range("fake_guest: frame");
  return {mem_ + frame * page_size, page_size};
}

grant_ref fake_guest::grant(std::size_t frame, unsigned to_domid, bool readonly) {
  if (frame >= pages_) throw std::out_of_range("fake_guest: frame");
  grant_ref r = next_ref_++;
  grants_[r] = entry{frame, to_domid, readonly};
  return r;
}

void fake_guest::revoke(grant_ref ref) { grants_.erase(ref); }

const fake_guest::entry* fake_guest::lookup(grant_ref ref) const {
  auto it = grants_.find(ref);
  return it == grants_.end() ? nullptr : &it->second;
}

class fake_grant_tables::driver final : public asio_xen::gnttab_driver {
 public:
  driver(fake_grant_tables& t, unsigned domid) : tables_(t), domid_(domid) {}
  ~driver() override {
    for (auto& [addr, n] : maps_) {
      ::munmap(addr, n * page_size);
      tables_.mapped_ -= n;
    }
  }

  error_code set_max_grants(std::uint32_t count) override {
    max_grants_ = count;
    return {};
  }

  result<void*> map_domain_grant_refs(std::uint32_t domid, std::span<const grant_ref> refs, bool writable) override {
    if (tables_.map_fault_) {
      int e = tables_.map_fault_;
      tables_.map_fault_ = 0;
      return err(e);
    }
    if (mapped_here_ + refs.size() > max_grants_) return err(ENOMEM);
    auto* g = tables_.guest(domid);
    if (!g) return err(ESRCH);
    for (grant_ref r : refs) {
      const auto* e = g->lookup(r);
      // Linux's gntdev turns any failed grant of a map into EINVAL.
      if (!e || e->domid != domid_ || (writable && e->readonly)) return err(EINVAL);
    }
    const std::size_t n = refs.size();
    void* base = ::mmap(nullptr, n * page_size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return err(errno);
    int prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
    for (std::size_t i = 0; i < n; ++i) {
      void* want = static_cast<std::byte*>(base) + i * page_size;
      off_t off = static_cast<off_t>(g->lookup(refs[i])->frame * page_size);
      if (::mmap(want, page_size, prot, MAP_SHARED | MAP_FIXED, g->memfd(), off) == MAP_FAILED) {
        int e = errno;
        ::munmap(base, n * page_size);
        return err(e);
      }
    }
    maps_[base] = n;
    mapped_here_ += n;
    tables_.mapped_ += n;
    return base;
  }

  error_code unmap(void* addr, std::uint32_t count) override {
    auto it = maps_.find(addr);
    if (it == maps_.end() || it->second != count) return err(EINVAL);
    ::munmap(addr, count * page_size);
    maps_.erase(it);
    mapped_here_ -= count;
    tables_.mapped_ -= count;
    return {};
  }

  error_code grant_copy(std::span<copy_segment> segs) override {
    ++tables_.copies_;
    if (const int e = std::exchange(tables_.copy_call_fault_, 0)) return err(e);
    // gntdev checks every segment's bounds before copying anything and
    // fails the whole call.
    for (const auto& s : segs) {
      const auto& f = (s.flags & GNTCOPY_source_gref) ? s.source.foreign : s.dest.foreign;
      if (std::size_t{f.offset} + s.len > page_size) return err(EINVAL);
    }
    for (auto& s : segs) s.status = copy_one(s);
    return {};
  }

 private:
  std::int16_t copy_one(copy_segment& s) {
    auto fault = tables_.copy_faults_.find(tables_.segments_seen_++);
    if (fault != tables_.copy_faults_.end()) return fault->second;
    const bool from_guest = (s.flags & GNTCOPY_source_gref) != 0;
    const bool to_guest = (s.flags & GNTCOPY_dest_gref) != 0;
    if (from_guest == to_guest) return GNTST_general_error;  // we only copy guest <-> local
    const auto& f = from_guest ? s.source.foreign : s.dest.foreign;
    auto* g = tables_.guest(f.domid);
    if (!g) return GNTST_bad_domain;
    const auto* e = g->lookup(f.ref);
    if (!e) return GNTST_bad_gntref;
    // Xen 4.17 answers general_error for a grant that is not ours to use
    // (permission_denied comes only from XSM).
    if (e->domid != domid_ || (to_guest && e->readonly)) return GNTST_general_error;
    std::byte* guest = g->page(e->frame).data() + f.offset;
    if (from_guest)
      std::memcpy(s.dest.virt, guest, s.len);
    else
      std::memcpy(guest, s.source.virt, s.len);
    return GNTST_okay;
  }

  fake_grant_tables& tables_;
  unsigned domid_;
  std::uint32_t max_grants_ = 1024;  // gntdev's default limit
  std::size_t mapped_here_ = 0;
  std::map<void*, std::size_t> maps_;
};

fake_guest& fake_grant_tables::add_guest(unsigned domid, std::size_t pages) {
  auto& g = guests_[domid];
  g = std::make_unique<fake_guest>(domid, pages);
  return *g;
}

fake_guest* fake_grant_tables::guest(unsigned domid) {
  auto it = guests_.find(domid);
  return it == guests_.end() ? nullptr : it->second.get();
}

std::unique_ptr<asio_xen::gnttab_driver> fake_grant_tables::open(unsigned caller_domid) {
  return std::make_unique<driver>(*this, caller_domid);
}

void fake_grant_tables::fail_copy_segment(std::size_t n, std::int16_t status) {
  copy_faults_[segments_seen_ + n] = status;
}

void fake_grant_tables::fail_next_map(int e) { map_fault_ = e; }

std::size_t fake_grant_tables::mapped_pages() const { return mapped_; }

}  // namespace xbd::fakes
