// Logging: Boost.Log with a severity and, for everything about one device,
// the device's attributes (domid, devid, vdev) on every record.
//
// Rules (docs/architecture.md): one line per state transition; never a
// line per request above debug; a guest that misbehaves repeatedly is logged
// once (rate limiting is the caller's job, see queue).
#pragma once

#include <boost/log/attributes/constant.hpp>
#include <boost/log/expressions/keyword.hpp>
#include <boost/log/sources/record_ostream.hpp>
#include <boost/log/sources/severity_logger.hpp>

#include <ostream>
#include <string>
#include <string_view>

namespace xbd::blkback {

enum class severity { trace, debug, info, warning, error };

std::string_view to_string(severity s);
std::ostream& operator<<(std::ostream& os, severity s);
// "trace", "debug", "info", "warning" (or "warn"), "error"; false otherwise.
bool parse_severity(std::string_view text, severity& out);

BOOST_LOG_ATTRIBUTE_KEYWORD(log_severity, "Severity", severity)
BOOST_LOG_ATTRIBUTE_KEYWORD(log_domid, "domid", unsigned)
BOOST_LOG_ATTRIBUTE_KEYWORD(log_devid, "devid", unsigned)
BOOST_LOG_ATTRIBUTE_KEYWORD(log_vdev, "vdev", std::string)

using logger = boost::log::sources::severity_logger_mt<severity>;

// A logger whose records carry the device's attributes.
inline logger device_logger(unsigned domid, unsigned devid, std::string vdev = {}) {
  logger lg;
  lg.add_attribute("domid", boost::log::attributes::constant<unsigned>(domid));
  lg.add_attribute("devid", boost::log::attributes::constant<unsigned>(devid));
  if (!vdev.empty()) lg.add_attribute("vdev", boost::log::attributes::constant<std::string>(std::move(vdev)));
  return lg;
}

}  // namespace xbd::blkback

#define XBD_LOG(lg, sev) BOOST_LOG_SEV(lg, ::xbd::blkback::severity::sev)
