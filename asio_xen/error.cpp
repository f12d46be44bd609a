#include "asio_xen/error.hpp"

#include "asio_xen/xen.hpp"

#include <cstring>

namespace xbd::asio_xen {

std::string xen_call_category::message(int ev) const {
  char buf[128];
  // GNU strerror_r returns the message, which may or may not be buf.
  return ::strerror_r(ev, buf, sizeof buf);
}

namespace {

class xbd_category_impl final : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "xbd"; }
  std::string message(int ev) const override {
    switch (static_cast<errc>(ev)) {
      case errc::malformed_value:
        return "malformed value";
      case errc::too_many_retries:
        return "transaction kept conflicting";
      case errc::ring_overflow:
        return "producer index beyond the ring size";
      case errc::bad_ring_size:
        return "ring memory too small";
      case errc::closed:
        return "closed";
      case errc::short_transfer:
        return "short transfer";
      case errc::journal_stale:
        return "the in-flight journal belongs to another connection";
      case errc::journal_corrupt:
        return "the in-flight journal is inconsistent";
    }
    return "unknown error";
  }
};

class grant_status_category_impl final : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "grant status"; }
  std::string message(int ev) const override {
    switch (ev) {
      case GNTST_okay:
        return "okay";
      case GNTST_general_error:
        return "general error";
      case GNTST_bad_domain:
        return "bad domain";
      case GNTST_bad_gntref:
        return "bad grant reference";
      case GNTST_bad_handle:
        return "bad handle";
      case GNTST_bad_virt_addr:
        return "bad virtual address";
      case GNTST_bad_dev_addr:
        return "bad device address";
      case GNTST_no_device_space:
        return "no space in I/O MMU";
      case GNTST_permission_denied:
        return "permission denied";
      case GNTST_bad_page:
        return "bad page";
      case GNTST_bad_copy_arg:
        return "copy beyond the page";
      case GNTST_address_too_big:
        return "address too big";
      case GNTST_eagain:
        return "operation not done; try again";
      case GNTST_no_space:
        return "out of space";
    }
    return "unknown grant status " + std::to_string(ev);
  }
};

}  // namespace

const boost::system::error_category& xbd_category() noexcept {
  static const xbd_category_impl c;
  return c;
}

const boost::system::error_category& grant_status_category() noexcept {
  static const grant_status_category_impl c;
  return c;
}

}  // namespace xbd::asio_xen
