// The simulated `xl devd`: what libxl 4.17's libxl_device_events_handler
// does inside a driver domain for its qdisk backends (libxl_device.c,
// backend_watch_callback, add_device, remove_device; libxl_dm.c
// libxl__spawn_qdisk_backend, libxl__destroy_qdisk_backend, kill_device_model;
// libxl_xshelp.c libxl__xs_path_cleanup).
//
// It runs in the driver domain: its xenstore connection must be that
// domain's (XENSTORED_PATH at a domain_xenbus socket), exactly as xl devd
// uses the domain's /dev/xen/xenbus. What it does:
//  - watches /local/domain/<own>/backend; at start-up it takes up the
//    devices already in InitWait (and only those, as libxl does);
//  - a device it does not know, in any state but Closed: it is added. For
//    the first qdisk of a guest it spawns the device model with the
//    arguments libxl uses (-xen-domid G -xen-attach -name domain-G
//    -nographic -M xenpv -monitor /dev/null -serial /dev/null -parallel
//    /dev/null), records its pid in libxl/<G>/qdisk-backend-pid and waits
//    (up to 60 s, LIBXL_DEVICE_MODEL_START_TIMEOUT) for
//    device-model/<G>/state = "running", all relative to its own home:
//    the two directories libxl creates only for driver_domain=1;
//  - a known device with state Closed and online 0: removed. For the last
//    qdisk of a guest the device model is killed first (SIGHUP to the
//    recorded pid; libxl stops there, leaving the device in place, when no
//    pid is recorded), its pid node and device-model/<G> are removed; then
//    the backend directory is path-cleaned (its parents go while empty and
//    removable: backend/<kind>/<G> belongs to dom0 and stays);
//  - a Closed device it does not know, or one whose state or online node
//    cannot be read, is skipped ("spurious state change"), as is every
//    event that is not on a `state` or `online` node.
// Kinds other than qdisk (vbd, vif: hotplug scripts) are not modelled;
// their events are logged and skipped. Unlike xl devd, it ends the device
// models it started when it stops, so that a test leaves no process.
#pragma once

#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>

namespace xbd::sim {

struct devd_options {
  // The device model (libxl's qemu_xen_path). Empty: a path that does not
  // exist, as on a driver domain without QEMU: the exec fails.
  std::filesystem::path device_model;
  // Where the device models' output goes (libxl:
  // /var/log/xen/qemu-dm-qdisk-<G>.log).
  std::filesystem::path log_dir = ".";
  std::chrono::milliseconds spawn_timeout{60000};
};

// Runs until `stop` is set (looked at every 100 ms at least), logging one
// line per action to stdout. Throws toolstack_error when it cannot start
// (no xenstore, no `domid` key).
void run_devd(const devd_options& opts, const std::atomic<bool>& stop);

}  // namespace xbd::sim
