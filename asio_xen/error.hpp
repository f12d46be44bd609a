// Error reporting for the Xen wrappers.
//
// A failed Xen library call becomes a boost::system::error_code whose value
// is the errno and whose category is named after the call, so that
// `ec.what()` reads "Permission denied [xengnttab_map_domain_grant_refs:13]"
// and `ec == boost::system::errc::permission_denied` still holds.
#pragma once

#include <boost/system/error_code.hpp>
#include <boost/system/result.hpp>

#include <cerrno>
#include <string>

namespace xbd::asio_xen {

using boost::system::error_code;
template <class T>
using result = boost::system::result<T, error_code>;

// An error as a result<T>, unambiguous even for T = bool or optional<bool>
// (which an error_code would otherwise convert to).
template <class T>
result<T> failure(error_code ec) {
  return result<T>(boost::system::in_place_error, ec);
}

// A category per Xen call: name() is the call, values are errno values.
class xen_call_category final : public boost::system::error_category {
 public:
  explicit constexpr xen_call_category(const char* call) noexcept : call_(call) {}
  const char* name() const noexcept override { return call_; }
  std::string message(int ev) const override;
  boost::system::error_condition default_error_condition(int ev) const noexcept override {
    return {ev, boost::system::generic_category()};
  }

 private:
  const char* call_;
};

// The error of a failed call from errno (or `err`). errno 0 after a failure
// (a library that forgot to set it) becomes EIO rather than "success".
inline error_code xen_error(const xen_call_category& call, int err) noexcept { return {err != 0 ? err : EIO, call}; }
inline error_code xen_error(const xen_call_category& call) noexcept { return xen_error(call, errno); }

// Failures that are ours rather than a library's.
enum class errc {
  malformed_value = 1,  // a xenstore value that does not parse as the type asked for
  too_many_retries,     // a transaction kept conflicting
  ring_overflow,        // the peer published a producer index beyond the ring
  bad_ring_size,        // mapped ring memory too small for one entry
  closed,               // the object was closed while waiting
  short_transfer,       // a read or write moved less than asked (end of the store)
  journal_stale,        // an in-flight journal of another connection
  journal_corrupt,      // an in-flight journal that does not add up
};

const boost::system::error_category& xbd_category() noexcept;
inline error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), xbd_category()}; }

// Per-segment grant status (GNTST_*, negative) as an error code.
const boost::system::error_category& grant_status_category() noexcept;
inline error_code grant_status_error(int gntst) noexcept { return {gntst, grant_status_category()}; }

// The calls we wrap, one category each.
namespace call {
inline const xen_call_category xs_open{"xs_open"};
inline const xen_call_category xs_read{"xs_read"};
inline const xen_call_category xs_write{"xs_write"};
inline const xen_call_category xs_mkdir{"xs_mkdir"};
inline const xen_call_category xs_rm{"xs_rm"};
inline const xen_call_category xs_directory{"xs_directory"};
inline const xen_call_category xs_get_permissions{"xs_get_permissions"};
inline const xen_call_category xs_set_permissions{"xs_set_permissions"};
inline const xen_call_category xs_transaction_start{"xs_transaction_start"};
inline const xen_call_category xs_transaction_end{"xs_transaction_end"};
inline const xen_call_category xs_watch{"xs_watch"};
inline const xen_call_category xs_unwatch{"xs_unwatch"};
inline const xen_call_category xs_check_watch{"xs_check_watch"};
inline const xen_call_category xs_fileno{"xs_fileno"};
inline const xen_call_category xs_is_domain_introduced{"xs_is_domain_introduced"};
inline const xen_call_category xenevtchn_open{"xenevtchn_open"};
inline const xen_call_category xenevtchn_bind_interdomain{"xenevtchn_bind_interdomain"};
inline const xen_call_category xenevtchn_bind_unbound_port{"xenevtchn_bind_unbound_port"};
inline const xen_call_category xenevtchn_unbind{"xenevtchn_unbind"};
inline const xen_call_category xenevtchn_notify{"xenevtchn_notify"};
inline const xen_call_category xenevtchn_pending{"xenevtchn_pending"};
inline const xen_call_category xenevtchn_unmask{"xenevtchn_unmask"};
inline const xen_call_category xengnttab_open{"xengnttab_open"};
inline const xen_call_category xengnttab_set_max_grants{"xengnttab_set_max_grants"};
inline const xen_call_category xengnttab_map_domain_grant_refs{"xengnttab_map_domain_grant_refs"};
inline const xen_call_category xengnttab_unmap{"xengnttab_unmap"};
inline const xen_call_category xengnttab_grant_copy{"xengnttab_grant_copy"};
inline const xen_call_category dup{"dup"};
inline const xen_call_category epoll{"epoll"};
inline const xen_call_category eventfd{"eventfd"};
}  // namespace call

}  // namespace xbd::asio_xen

template <>
struct boost::system::is_error_code_enum<xbd::asio_xen::errc> : std::true_type {};
