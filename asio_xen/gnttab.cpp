#include "asio_xen/gnttab.hpp"

#include <sys/mman.h>

namespace xbd::asio_xen {

namespace {

class libxengnttab_driver final : public gnttab_driver {
 public:
  explicit libxengnttab_driver(xengnttab_handle* h) : h_(h) {}
  ~libxengnttab_driver() override { xengnttab_close(h_); }

  error_code set_max_grants(std::uint32_t count) override {
    if (xengnttab_set_max_grants(h_, count) < 0) return xen_error(call::xengnttab_set_max_grants);
    return {};
  }
  result<void*> map_domain_grant_refs(std::uint32_t domid, std::span<const grant_ref> refs, bool writable) override {
    void* p = xengnttab_map_domain_grant_refs(h_, static_cast<std::uint32_t>(refs.size()), domid,
                                              const_cast<grant_ref*>(refs.data()),
                                              writable ? PROT_READ | PROT_WRITE : PROT_READ);
    if (!p) return xen_error(call::xengnttab_map_domain_grant_refs);
    return p;
  }
  error_code unmap(void* addr, std::uint32_t count) override {
    if (xengnttab_unmap(h_, addr, count) < 0) return xen_error(call::xengnttab_unmap);
    return {};
  }
  error_code grant_copy(std::span<copy_segment> segments) override {
    if (xengnttab_grant_copy(h_, static_cast<std::uint32_t>(segments.size()), segments.data()) < 0)
      return xen_error(call::xengnttab_grant_copy);
    return {};
  }

 private:
  xengnttab_handle* h_;
};

}  // namespace

result<std::unique_ptr<gnttab_driver>> open_libxengnttab() {
  xengnttab_handle* h = xengnttab_open(nullptr, 0);
  if (!h) return xen_error(call::xengnttab_open);
  return std::unique_ptr<gnttab_driver>(new libxengnttab_driver(h));
}

grant_mapping& grant_mapping::operator=(grant_mapping&& o) noexcept {
  if (this != &o) {
    reset();
    driver_ = o.driver_;
    addr_ = o.addr_;
    pages_ = o.pages_;
    o.driver_ = nullptr;
    o.addr_ = nullptr;
    o.pages_ = 0;
  }
  return *this;
}

void grant_mapping::reset() {
  if (addr_) (void)driver_->unmap(addr_, static_cast<std::uint32_t>(pages_));
  driver_ = nullptr;
  addr_ = nullptr;
  pages_ = 0;
}

result<grant_mapping> grant_table::map(std::uint32_t domid, std::span<const grant_ref> refs, bool writable) {
  if (refs.empty()) return error_code(EINVAL, call::xengnttab_map_domain_grant_refs);
  auto p = driver_->map_domain_grant_refs(domid, refs, writable);
  if (!p) return p.error();
  return grant_mapping(driver_.get(), *p, refs.size());
}

error_code grant_table::copy(std::span<copy_segment> segments, std::size_t* failed) {
  if (segments.empty()) return {};
  if (error_code ec = driver_->grant_copy(segments)) return ec;
  for (std::size_t i = 0; i < segments.size(); ++i) {
    if (segments[i].status != GNTST_okay) {
      if (failed) *failed = i;
      return grant_status_error(segments[i].status);
    }
  }
  return {};
}

}  // namespace xbd::asio_xen
