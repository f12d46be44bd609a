// Where the daemon's Boost.Log records go, and which of them pass.
//
// One sink for the whole process, writing one line per record:
//   2026-11-22 05:10:00.123 info [d5/51712 xvda] connected: ring order 4, event channel 17
// The bracket appears when the record carries the device attributes of
// blkback::device_logger (domid, devid, and vdev when known).
//
//  - "stderr": under systemd (JOURNAL_STREAM names our stderr) each line
//    starts with the sd-daemon priority "<6>" instead of a timestamp, which
//    the journal adds itself; otherwise with the timestamp.
//  - "syslog": syslog(3) as ident "xen-blkbackd", facility daemon, with the
//    priority from the severity; no timestamp (syslog adds it).
//  - "file:/path": appended, one write(2) per line, so nothing waits in a
//    buffer when the daemon dies and logrotate's copytruncate loses nothing.
//
// Control characters in a message are written as \xNN: device names and
// error strings can come from a guest, and a newline would let it forge a
// log line.
#pragma once

#include "blkback/config.hpp"

namespace xbd::app {

// Installs the sink and the level filter. Throws std::system_error when the
// sink cannot be opened (a log file that is not writable).
void setup_logging(const blkback::log_settings& s);

// SIGHUP: switches to another sink and level. A record logged meanwhile by
// another thread is written exactly once, to the old or the new sink. On
// failure the old sink and level stay and the exception propagates, so the
// failure itself can still be logged.
void reload_logging(const blkback::log_settings& s);

// The level in force, and a new one for the running daemon (the control
// socket's log-level) until the next set-up or reload.
blkback::severity log_level();
void set_log_level(blkback::severity level);

}  // namespace xbd::app
