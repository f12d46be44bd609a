// The few QMP conversations libxl holds with a qemu-xen device model.
//
// libxl (4.17) connects to /var/run/xen/qmp-libxl-<domid> once the device
// model has written "running" to xenstore, reads QEMU's greeting, negotiates
// with qmp_capabilities and sends query-chardev (to learn serial ptys; an
// empty list means none). With dm_restrict it asks query-status before that,
// and other tools (xentop, xl qemu-monitor-command) may ask more. This
// device model emulates nothing, so every answer is the one a QEMU with no
// devices would give; an unknown command gets QEMU's CommandNotFound error.
#pragma once

#include <string>
#include <string_view>
#include <utility>

namespace xbd::dm {

// What the fake machine looks like to QMP: running, or stopped (prelaunch
// when started with -S, paused after "stop").
struct machine_state {
  bool running = true;
  bool prelaunch = false;
  bool quit = false;  // a client asked for "quit"
};

// One client connection. Bytes in, replies out; the caller owns the socket.
class qmp_session {
 public:
  explicit qmp_session(machine_state& machine) : machine_(&machine) {}

  // The greeting QEMU sends as soon as a client connects.
  static std::string greeting();

  // Consumes bytes read from the client and returns the replies to send,
  // each terminated by "\r\n" as QEMU does. Partial commands are kept until
  // the rest arrives.
  std::string feed(std::string_view bytes);

  // The client sent something that is not JSON (or too much of it): close.
  bool broken() const { return broken_; }

  // The commands executed since the last call, for the device model's log.
  std::string take_log() { return std::exchange(log_, {}); }

 private:
  std::string execute(std::string_view command, std::string_view id);

  machine_state* machine_;
  std::string pending_;
  bool negotiated_ = false;
  bool broken_ = false;
  std::string log_;
};

}  // namespace xbd::dm
