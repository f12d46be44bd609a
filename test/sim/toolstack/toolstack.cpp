// The simulated toolstack: what libxl 4.17 writes to and removes from
// xenstore when xl creates a domain, attaches a disk, detaches it and
// destroys the domain.
//
// ============================================================================
// Where each choice comes from (Xen 4.17, tools/libs/light/ unless noted;
// cross-checked against Debian's libxenlight.so.4.17 and its public headers
// libxl.h/_libxl_types.h, e.g. the string tables "qcow qcow2 vhd aio qed" and
// "qdisk phy standalone", LIBXL_HAVE_DISK_TRUSTED, LIBXL_HAVE_DISK_SAFE_REMOVE)
// ============================================================================
//
// vdev -> devid (libxl_device.c, libxl__device_disk_dev_number and
// device_virtdisk_matches): "d<disk>p<part>" (disk < 2^20, part < 256) or
// xvd<letters>[part] (letters are bijective base 26: a=0 .. z=25, aa=26;
// disk <= 2^20-1, part <= 255, no leading zero in part): disk and part both
// <= 15 -> (202<<8)|(disk<<4)|part, else the extended form
// (1<<28)|(disk<<8)|part. Then a plain number (strtoul base 0, <= INT_MAX)
// is taken as the devid. hd<letter>[part] (disk <= 3, part <= 63):
// ((disk<2 ? 3 : 22)<<8)|((disk&1)<<6)|part. sd<letter>[part] (disk <= 15,
// part <= 15): (8<<8)|(disk<<4)|part. Deliberate deviations, where libxl
// would compute garbage: a name without a disk letter ("xvd", "hd"), an
// empty string (strtoul("") = 0) and negative d<disk>p<part> numbers are
// rejected here. devid -> vdev is libxl__devid_to_vdev.
//
// Disk defaults (libxl_disk.c libxl__device_disk_setdefault; xl's
// tools/libs/util/libxlu_disk.c xlu_disk_parse): discard_enable defaults to
// readwrite; trusted defaults to true; specification defaults to "xen";
// xl makes a cdrom removable and read-only, and an empty cdrom target means
// format EMPTY; "no target specified (and device not removable)" otherwise.
// libxl__device_disk_set_backend: format EMPTY is only for a cdrom, and then
// without a path. qdisk does not stat the target.
//
// Disk add (libxl_disk.c device_disk_add, then libxl_device.c
// libxl__device_generic_add), ONE transaction, retried on EAGAIN:
//   - libxl__device_exists: /libxl/<domid>/device/vbd/<devid> present ->
//     "device already exists in xenstore" (ERROR_DEVICE_EXISTS);
//   - rm /libxl/<domid>/device/vbd/<devid>; write its `frontend` and
//     `backend` (full paths); these inherit /libxl/<domid>/device's "n0";
//   - rm + mkdir the frontend dir /local/domain/<domid>/device/vbd/<devid>,
//     set its perms to {domid: none, backend_domid: read} = "n<domid>,r<be>",
//     write `backend`, then each frontend key, each followed by the same
//     set_permissions (libxl__xs_writev_perms), in this order:
//       backend-id, state=1, virtual-device=<devid decimal>, device-type
//       (disk|cdrom), trusted (1|0), protocol (PV guests only: the native
//       protocol of the guest, "x86_64-abi" for a 64-bit PV guest);
//   - rm + mkdir the backend dir
//     /local/domain/<be>/backend/<kind>/<domid>/<devid>, perms
//     {be: none, domid: read} = "n<be>,r<domid>", write `frontend`, then the
//     keys (they inherit the dir's perms), in this order:
//       params = "<fmt>:<path>" with fmt from
//         libxl__device_disk_string_of_format: raw -> "aio" (NOT "raw"),
//         qcow, qcow2, vhd, qed, empty -> "aio" (path ""),
//       frontend-id, online=1, removable (0|1), bootable=1 (always),
//       state=1, dev=<vdev as given>, type=<libxl__device_disk_string_of_
//       backend: "qdisk">, mode (w|r), device-type (disk|cdrom),
//       direct-io-safe=1 (only when set), discard-enable (1|0),
//       specification=xen;
//   - the same backend keys again under /libxl/<domid>/device/vbd/<devid>
//     ("libxl's private copy", which libxl reads back, never updated).
// The kind `qdisk` is LIBXL__DEVICE_KIND_QDISK for backendtype=qdisk; the
// frontend kind is always vbd. For a QEMU-type backend (QEMU_BACKEND():
// qdisk, vfb, vkbd, qusb, 9pfs) libxl__wait_device_connection does not wait
// for InitWait; it goes straight to device_hotplug, which runs no script.
//
// Disk remove (libxl_device.c libxl__initiate_device_generic_remove,
// device_backend_callback, device_hotplug, device_hotplug_done,
// libxl__device_destroy; libxl_event.c devstate_callback; libxl_xshelp.c
// libxl__xs_path_cleanup), for a domain that is running:
//   1. ONE transaction: (forced only) path-cleanup the frontend dir; read
//      backend `state`; absent -> "backend already removed, cleanup frontend
//      only", success, go to 4; else write `online`=0, then `state`=5 unless
//      it is already 6.
//   2. wait for backend state 6 (a watch on the state node, which fires at
//      once), LIBXL_DESTROY_TIMEOUT = 10 s; the node vanishing is an error
//      (ERROR_INVAL), not a timeout.
//   3. timeout with LIBXL__FORCE_AUTO (libxl_device_disk_remove): set
//      FORCE_ON and redo 1 and 2. Timeout otherwise: error. Closed: if the
//      backend is in a driver domain (be != 0), wait (10 s) for the backend
//      dir to be removed by it.
//   4. if forced or no error: ONE transaction path-cleaning the frontend dir,
//      the libxl dir and (backend in dom0 only: a driver domain removes its
//      own) the backend dir: rm the node, then walk up removing each parent
//      whose value is "" and which has no children left.
// Modes: xl block-detach = libxl_device_disk_safe_remove (FORCE_OFF: a
// timeout fails and leaves the nodes); xl block-detach -f =
// libxl_device_disk_destroy (FORCE_ON). libxl.h documents the 10 s timeout.
//
// Domain creation (libxl_create.c libxl__domain_make, store_libxl_entry,
// libxl__domain_build; libxl_dom.c libxl__build_post; libxl_domain.c
// libxl__domain_rename). Perms: roperm = "n0,r<domid>", rwperm = "n<domid>",
// noperm = "n0"; libxl__xs_mknod writes "" then sets perms. ONE transaction:
//   rm + mknod /local/domain/<domid> (roperm); rm + mknod /vm/<uuid>
//   (roperm); rm + mknod /libxl/<domid> (noperm) and /libxl/<domid>/device
//   (noperm); write <dom>/vm = /vm/<uuid>; rename: the name must be unique
//   ("Domain with name \"%s\" already exists."), write <dom>/name and
//   /vm/<uuid>/name; mknod cpu, memory (roperm); device (roperm) and
//   device/suspend/event-channel (rwperm, xend_suspend_evtchn_compat off);
//   control (roperm); hvmloader (roperm, HVM only); control/shutdown,
//   control/feature-poweroff, -reboot, -suspend (rwperm), -s3, -s4 (HVM
//   only), control/sysrq (rwperm); data, drivers, feature, attr, error
//   (rwperm); libxl, device-model (rwperm, driver domains only); write
//   /vm/<uuid>/uuid, /vm/<uuid>/name; control/platform-feature-
//   multiprocessor-suspend = 1, control/platform-feature-xs_reset_watches
//   = 1; /libxl/<domid>/type = pv|pvh|hvm.
// Then store_libxl_entry: /libxl/<domid>/dm-version = qemu_xen. Then
// libxl__build_post, ONE transaction: <dom>/memory/static-max,
// memory/target (HVM with max > target: minus LIBXL_MAXMEM_CONSTANT 1024),
// memory/videoram, domid, store/port, store/ring-ref,
// cpu/<i>/availability = online; HVM: platform/acpi=1, acpi_s3=1,
// acpi_s4=1, acpi_laptop_slate=0, platform/device-model=qemu_xen; under
// /vm/<uuid>: PV image/ostype=linux, image/kernel, start_time ("%jd.%02d"),
// image/ramdisk and image/cmdline when set; PVH start_time; HVM
// rtc/timeoffset="", image/ostype=hvm, start_time. Then
// xs_introduce_domain(domid, store mfn, store port). Nodes written without
// explicit perms inherit their parent's (C xenstored, as dom0).
// dom0 (tools/helpers/xen-init-dom0.c): /local/domain/0/domid = 0 and
// /local/domain/0/name = Domain-0; libxl__get_domid reads the former.
//
// Domain destroy (libxl_domain.c libxl__destroy_domid, dm_destroy_cb,
// devices_destroy_cb; libxl_device.c libxl__devices_destroy): the domain is
// paused first. Every /libxl/<domid>/device/<kind>/<devid>/backend whose
// kind and backend kind libxl knows (libxl__device_kind_from_string) is
// removed with FORCE_ON; console/vuart synchronously (libxl__device_destroy).
// Because the domain is paused, a QEMU-type backend (qdisk) takes the
// "QEMU bodge": nothing is written at first; after LIBXL_QEMU_BODGE_TIMEOUT
// (2 s) libxl writes backend state=6 itself (if present and not 6) and
// removes the nodes. Then: xs_rm /vm/<uuid> (read from <dom>/vm), xs_rm
// <dom>, xs_rm /libxl/<domid>, xs_rm /local/domain/<domid>/hvmloader, each
// outside any transaction; then xc_domain_destroy (xenstored then releases
// the domain and fires @releaseDomain): the on_destroyed hook here.
//
// Not modelled: the hypervisor side (domain pause state, memory), spawning
// the QEMU that libxl starts as qdisk backend for PV guests
// (libxl__dm_check_start), hotplug scripts (none run for qdisk), the console
// device and the rest of domain building, libxl's JSON userdata and locks.
#include "toolstack.hpp"

#include <sys/time.h>

#include <cerrno>
#include <cinttypes>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>

#include "asio_xen/xen.hpp"

namespace xbd::sim {

namespace {

using namespace std::chrono_literals;
using txn = xs_client::transaction;

constexpr int state_initialising = XenbusStateInitialising;  // 1
constexpr int state_closing = XenbusStateClosing;            // 5
constexpr int state_closed = XenbusStateClosed;              // 6
constexpr unsigned domid_first_reserved = DOMID_FIRST_RESERVED;

// The device kinds libxl knows (libxl__device_kind in
// libxl_types_internal.idl; the 4.17 string table in libxenlight.so ends
// "vkbd 9pfs pvcalls vinput virtio_disk"); libxl skips devices whose kind or
// backend kind is not among them when destroying a domain.
constexpr std::string_view known_kinds[] = {"none",    "vif",     "vbd",  "qdisk",  "vfb",        "vkbd",
                                            "console", "vtpm",    "vusb", "qusb",   "9pfs",       "vdispl",
                                            "vuart",   "pvcalls", "vsnd", "vinput", "virtio_disk"};

bool known_kind(std::string_view k) {
  for (auto kk : known_kinds)
    if (kk == k) return true;
  return false;
}

// QEMU_BACKEND() in libxl_internal.h.
bool qemu_backend(std::string_view kind) {
  return kind == "qdisk" || kind == "vfb" || kind == "vkbd" || kind == "qusb" || kind == "9pfs";
}

std::string fmt_u(std::uint64_t v) { return std::to_string(v); }

std::vector<xs_perm> perms_of(std::initializer_list<xs_perm> l) { return l; }

// device_virtdisk_matches: the bijective base-26 drive letters and the
// optional partition number. index is -1 when there are no letters.
bool virtdisk_matches(const std::string& path, std::string_view type, long& index, long max_index, long& partition,
                      long max_partition) {
  if (path.compare(0, type.size(), type) != 0) return false;
  index = -1;
  std::size_t i = type.size();
  for (; i < path.size(); ++i) {
    char c = path[i];
    if (c < 'a' || c > 'z') break;
    ++index;
    index *= 26;
    index += c - 'a';
    if (index > max_index) return false;
  }
  if (i == path.size()) {
    partition = 0;
    return true;
  }
  if (path[i] == '0') return false;  // no leading zeroes in the partition
  const char* start = path.c_str() + i;
  char* ep = nullptr;
  unsigned long pl = std::strtoul(start, &ep, 10);
  if (pl > static_cast<unsigned long>(max_partition) || *ep) return false;
  partition = static_cast<long>(pl);
  return true;
}

std::string encode_disk_name(unsigned n) {
  std::string s;
  if (n >= 26) s = encode_disk_name(n / 26 - 1);
  s += static_cast<char>('a' + n % 26);
  return s;
}

std::string random_uuid() {
  std::random_device rd;
  std::uint8_t b[16];
  for (auto& x : b) x = static_cast<std::uint8_t>(rd());
  b[6] = static_cast<std::uint8_t>((b[6] & 0x0f) | 0x40);  // version 4
  b[8] = static_cast<std::uint8_t>((b[8] & 0x3f) | 0x80);  // RFC 4122 variant
  char s[37];
  std::snprintf(s, sizeof s, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2],
                b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
  return s;
}

bool valid_uuid(const std::string& u) {
  if (u.size() != 36) return false;
  for (std::size_t i = 0; i < u.size(); ++i) {
    char c = u[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return false;
    } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return false;
    }
  }
  return true;
}

std::string_view format_prefix(disk_format f) {
  switch (f) {
    case disk_format::qcow:
      return "qcow";
    case disk_format::qcow2:
      return "qcow2";
    case disk_format::vhd:
      return "vhd";
    case disk_format::qed:
      return "qed";
    case disk_format::raw:
    case disk_format::empty:
      return "aio";
  }
  return "aio";
}

using kvs = std::vector<std::pair<std::string, std::string>>;

// A device as libxl__device holds it.
struct device {
  unsigned backend_domid = 0;
  std::string backend_kind;
  unsigned domid = 0;
  std::string kind = "vbd";
  std::uint32_t devid = 0;

  std::string fe_path() const { return toolstack::dom_path(domid) + "/device/" + kind + "/" + std::to_string(devid); }
  std::string be_path() const { return toolstack::backend_path(backend_domid, backend_kind, domid, devid); }
  std::string libxl_path() const {
    return "/libxl/" + std::to_string(domid) + "/device/" + kind + "/" + std::to_string(devid);
  }
};

// libxl__parse_backend_path: "/local/domain/%d/backend/%15[^/]/%u/%d".
std::optional<device> parse_backend_path(const std::string& path) {
  int bdom = 0, devid = 0;
  unsigned dom = 0;
  char kind[16] = {};
  if (std::sscanf(path.c_str(), "/local/domain/%d/backend/%15[^/]/%u/%d", &bdom, kind, &dom, &devid) != 4)
    return std::nullopt;
  device d;
  d.backend_domid = static_cast<unsigned>(bdom);
  d.backend_kind = kind;
  d.domid = dom;
  d.devid = static_cast<std::uint32_t>(devid);
  return d;
}

// libxl__xs_path_cleanup.
void path_cleanup(xs_client& xs, txn t, const std::string& user_path) {
  std::string path = user_path;
  if (!xs.rm(path, t)) return;
  for (auto last = path.rfind('/'); last != std::string::npos; last = path.rfind('/')) {
    path.resize(last);
    if (path.empty()) break;
    auto val = xs.read(path, t);
    if (!val || !val->empty()) break;
    auto dir = xs.directory(path, t);
    if (!dir || !dir->empty()) break;
    xs.rm(path, t);
  }
}

enum class force_flag { auto_, on, off };  // libxl__force

// libxl__device_destroy: one transaction cleaning the frontend and libxl
// paths (the toolstack domain's part) and the backend path when the backend
// is the toolstack domain's; a driver domain's backend path is the driver
// domain's to remove ("The driver domain is in charge of removing what it
// can from the backend path").
void device_destroy(xs_client& xs, const device& dev) {
  xs.in_transaction([&](txn t) {
    path_cleanup(xs, t, dev.fe_path());
    path_cleanup(xs, t, dev.libxl_path());
    if (dev.backend_domid == 0) path_cleanup(xs, t, dev.be_path());
  });
}

enum class wait_rc { ok, timed_out, removed };

// libxl__ev_devstate_wait + devstate_callback.
wait_rc devstate_wait(xs_client& xs, const std::string& state_path, int wanted, std::chrono::milliseconds timeout) {
  wait_rc rc = wait_rc::timed_out;
  bool done = xs.wait_for(
      state_path,
      [&](const std::optional<std::string>& v) {
        if (!v) {
          rc = wait_rc::removed;
          return true;
        }
        if (std::atoi(v->c_str()) == wanted) {
          rc = wait_rc::ok;
          return true;
        }
        return false;
      },
      timeout);
  return done ? rc : wait_rc::timed_out;
}

// Step 1 of libxl__initiate_device_generic_remove: one transaction. Returns
// false when the backend state node is absent ("backend %s already removed,
// cleanup frontend only"), in which case libxl aborts the transaction.
bool initiate_remove(xs_client& xs, const device& dev, bool forced) {
  struct backend_gone {};
  const std::string be = dev.be_path();
  try {
    xs.in_transaction([&](txn t) {
      if (forced) path_cleanup(xs, t, dev.fe_path());
      auto state = xs.read(be + "/state", t);
      if (!state) throw backend_gone{};
      xs.write(be + "/online", "0", t);
      if (std::atoi(state->c_str()) != state_closed) xs.write(be + "/state", std::to_string(state_closing), t);
    });
  } catch (const backend_gone&) {
    return false;
  }
  return true;
}

// The remove sequence of one device (see the header comment). `result`
// collects what happened; `remove` returns with result.error set when libxl
// would report failure.
void generic_remove(xs_client& xs, const device& dev, force_flag force, std::chrono::milliseconds timeout,
                    const std::function<void()>& on_closed, remove_result& result) {
  const std::string be = dev.be_path();
  const std::string state_path = be + "/state";

  auto hotplug_done = [&](bool failed) {
    if (force == force_flag::on || !failed) {
      device_destroy(xs, dev);
      result.nodes_removed = true;
    }
  };

  for (;;) {
    const bool backend_missing = !initiate_remove(xs, dev, force == force_flag::on);
    if (backend_missing) {
      result.backend_missing = true;
      hotplug_done(false);
      return;
    }
    if (force == force_flag::on) result.forced = true;

    auto rc = devstate_wait(xs, state_path, state_closed, timeout);
    if (rc == wait_rc::timed_out && force == force_flag::auto_) {
      // "Timeout reached, initiating forced remove"
      force = force_flag::on;
      continue;
    }
    if (rc == wait_rc::timed_out) {
      result.timed_out = true;
      result.error = "unable to remove device with path " + be + " - timed out waiting for state " +
                     std::to_string(state_closed) + " (currently " + xs.read(state_path).value_or("<none>") + ")";
      hotplug_done(true);
      return;
    }
    if (rc == wait_rc::removed) {
      result.backend_vanished = true;
      result.error =
          "unable to remove device with path " + be + " - backend state node was removed while waiting for state 6";
      hotplug_done(true);
      return;
    }
    result.closed = true;
    result.timed_out = false;
    break;
  }
  if (on_closed) on_closed();

  // device_hotplug: a backend in a driver domain removes its own directory;
  // libxl waits for that. Nothing else runs for a qdisk backend.
  if (dev.backend_domid != 0) {
    bool gone = xs.wait_for(
        be, [](const std::optional<std::string>& v) { return !v.has_value(); }, timeout);
    if (!gone) {
      result.error = "timed out while waiting for " + be + " to be removed";
      hotplug_done(true);
      return;
    }
  }
  hotplug_done(false);
}

}  // namespace

// ---------------------------------------------------------------- vdev names

std::optional<std::uint32_t> vdev_to_devid(std::string_view vdev_sv) {
  const std::string vdev(vdev_sv);
  if (vdev.empty()) return std::nullopt;

  long disk = 0, partition = 0;
  {
    int d = 0, p = 0, used = -1;
    if (std::sscanf(vdev.c_str(), "d%ip%i%n", &d, &p, &used) >= 2 && used == static_cast<int>(vdev.size()) &&
        d < (1 << 20) && p < 256) {
      if (d < 0 || p < 0) return std::nullopt;  // libxl does not check; garbage
      disk = d;
      partition = p;
      goto xvd;
    }
  }
  if (virtdisk_matches(vdev, "xvd", disk, (1 << 20) - 1, partition, 255)) {
    if (disk < 0) return std::nullopt;
    goto xvd;
  }
  {
    errno = 0;
    char* ep = nullptr;
    unsigned long ul = std::strtoul(vdev.c_str(), &ep, 0);
    if (!errno && !*ep && ul <= INT_MAX) return static_cast<std::uint32_t>(ul);
  }
  if (virtdisk_matches(vdev, "hd", disk, 3, partition, 63)) {
    if (disk < 0) return std::nullopt;
    return static_cast<std::uint32_t>(((disk < 2 ? 3 : 22) << 8) | ((disk & 1) << 6) | partition);
  }
  if (virtdisk_matches(vdev, "sd", disk, 15, partition, 15)) {
    if (disk < 0) return std::nullopt;
    return static_cast<std::uint32_t>((8 << 8) | (disk << 4) | partition);
  }
  return std::nullopt;

xvd:
  if (disk <= 15 && partition <= 15) return static_cast<std::uint32_t>((202 << 8) | (disk << 4) | partition);
  return static_cast<std::uint32_t>((1u << 28) | (static_cast<std::uint32_t>(disk) << 8) |
                                    static_cast<std::uint32_t>(partition));
}

std::string devid_to_vdev(std::uint32_t devid) {
  constexpr std::uint32_t extended = 1u << 28;
  unsigned minor, nr_parts;
  if (!(devid & extended)) {
    minor = devid & 0xff;
    nr_parts = 16;
  } else {
    minor = devid & ~extended;
    nr_parts = 256;
  }
  std::string s = "xvd" + encode_disk_name(minor / nr_parts);
  if (minor % nr_parts) s += std::to_string(minor & (nr_parts - 1));
  return s;
}

std::string_view to_string(domain_type t) {
  switch (t) {
    case domain_type::pv:
      return "pv";
    case domain_type::pvh:
      return "pvh";
    case domain_type::hvm:
      return "hvm";
  }
  return "pv";
}

// -------------------------------------------------------------------- paths

std::string toolstack::dom_path(unsigned domid) { return "/local/domain/" + std::to_string(domid); }
std::string toolstack::libxl_vbd_path(unsigned domid, std::uint32_t devid) {
  return "/libxl/" + std::to_string(domid) + "/device/vbd/" + std::to_string(devid);
}
std::string toolstack::frontend_vbd_path(unsigned domid, std::uint32_t devid) {
  return dom_path(domid) + "/device/vbd/" + std::to_string(devid);
}
std::string toolstack::backend_path(unsigned backend_domid, std::string_view kind, unsigned domid,
                                    std::uint32_t devid) {
  return dom_path(backend_domid) + "/backend/" + std::string(kind) + "/" + std::to_string(domid) + "/" +
         std::to_string(devid);
}

// ---------------------------------------------------------------- toolstack

toolstack::toolstack() = default;

void toolstack::init_dom0() {
  // xen-init-dom0: "Dom0 is already set up" when both exist.
  if (xs_.exists("/local/domain/0/domid") && xs_.exists("/local/domain/0/name")) return;
  xs_.write("/local/domain/0/domid", "0");
  xs_.write("/local/domain/0/name", "Domain-0");
}

domain_info toolstack::create_domain(const domain_spec& spec) {
  if (spec.domid == 0 || spec.domid >= domid_first_reserved)
    throw toolstack_error("invalid guest domid " + std::to_string(spec.domid) + " (must be 1.." +
                          std::to_string(domid_first_reserved - 1) + ")");
  if (spec.max_vcpus == 0) throw toolstack_error("max_vcpus must be at least 1");
  domain_info info;
  info.domid = spec.domid;
  info.name = spec.name.empty() ? "sim-" + std::to_string(spec.domid) : spec.name;
  info.uuid = spec.uuid.empty() ? random_uuid() : spec.uuid;
  if (!valid_uuid(info.uuid)) throw toolstack_error("invalid uuid '" + info.uuid + "' (want lowercase 8-4-4-4-12 hex)");
  info.dom_path = dom_path(spec.domid);
  info.vm_path = "/vm/" + info.uuid;
  info.libxl_path = "/libxl/" + std::to_string(spec.domid);

  init_dom0();

  // The simulated hypervisor's view: a domain exists while its xenstore
  // directory does (xc_domain_create would fail with EEXIST).
  if (xs_.exists(info.dom_path))
    throw toolstack_error("domain creation fail: domain " + std::to_string(spec.domid) + " already exists (" +
                          info.dom_path + ")");

  const unsigned d = spec.domid;
  const auto roperm = perms_of({{0, 'n'}, {d, 'r'}});
  const auto rwperm = perms_of({{d, 'n'}});
  const auto noperm = perms_of({{0, 'n'}});
  const bool hvm = spec.type == domain_type::hvm;
  const std::string& dp = info.dom_path;

  // libxl__domain_make.
  xs_.in_transaction([&](txn t) {
    auto mknod = [&](const std::string& path, const std::vector<xs_perm>& p) {
      xs_.write(path, "", t);
      xs_.set_perms(path, p, t);
    };
    xs_.rm(dp, t);
    mknod(dp, roperm);
    xs_.rm(info.vm_path, t);
    mknod(info.vm_path, roperm);
    xs_.rm(info.libxl_path, t);
    mknod(info.libxl_path, noperm);
    mknod(info.libxl_path + "/device", noperm);
    xs_.write(dp + "/vm", info.vm_path, t);

    // libxl__domain_rename(old_name = NULL, new_name = name).
    if (!info.name.empty()) {
      if (auto doms = xs_.directory("/local/domain", t)) {
        for (const auto& id : *doms) {
          if (id == std::to_string(d)) continue;
          if (xs_.read("/local/domain/" + id + "/name", t) == info.name)
            throw toolstack_error("Domain with name \"" + info.name + "\" already exists.");
        }
      }
    }
    xs_.write(dp + "/name", info.name, t);
    xs_.write(info.vm_path + "/name", info.name, t);

    mknod(dp + "/cpu", roperm);
    mknod(dp + "/memory", roperm);
    mknod(dp + "/device", roperm);
    mknod(dp + "/device/suspend/event-channel", rwperm);
    mknod(dp + "/control", roperm);
    if (hvm) mknod(dp + "/hvmloader", roperm);
    mknod(dp + "/control/shutdown", rwperm);
    mknod(dp + "/control/feature-poweroff", rwperm);
    mknod(dp + "/control/feature-reboot", rwperm);
    mknod(dp + "/control/feature-suspend", rwperm);
    if (hvm) {
      mknod(dp + "/control/feature-s3", rwperm);
      mknod(dp + "/control/feature-s4", rwperm);
    }
    mknod(dp + "/control/sysrq", rwperm);
    mknod(dp + "/data", rwperm);
    mknod(dp + "/drivers", rwperm);
    mknod(dp + "/feature", rwperm);
    mknod(dp + "/attr", rwperm);
    mknod(dp + "/error", rwperm);
    if (spec.driver_domain) {
      mknod(dp + "/libxl", rwperm);
      mknod(dp + "/device-model", rwperm);
    }
    xs_.write(info.vm_path + "/uuid", info.uuid, t);
    xs_.write(info.vm_path + "/name", info.name, t);
    xs_.write(dp + "/control/platform-feature-multiprocessor-suspend", "1", t);
    xs_.write(dp + "/control/platform-feature-xs_reset_watches", "1", t);
    xs_.write(info.libxl_path + "/type", to_string(spec.type), t);
  });

  // store_libxl_entry.
  xs_.write(info.libxl_path + "/dm-version", "qemu_xen");

  // libxl__domain_build -> libxl__build_post.
  timeval now{};
  gettimeofday(&now, nullptr);
  char start_time[64];
  std::snprintf(start_time, sizeof start_time, "%jd.%02d", static_cast<intmax_t>(now.tv_sec),
                static_cast<int>(now.tv_usec / 10000));
  std::uint64_t fudge = (hvm && spec.max_memkb > spec.target_memkb) ? 1024 : 0;

  kvs ents = {
      {"memory/static-max", fmt_u(spec.max_memkb)},    {"memory/target", fmt_u(spec.target_memkb - fudge)},
      {"memory/videoram", fmt_u(spec.video_memkb)},    {"domid", std::to_string(d)},
      {"store/port", std::to_string(spec.store_port)}, {"store/ring-ref", fmt_u(spec.store_mfn)},
  };
  for (unsigned i = 0; i < spec.max_vcpus; ++i)
    ents.emplace_back("cpu/" + std::to_string(i) + "/availability", "online");
  kvs local_ents;
  kvs vm_ents;
  switch (spec.type) {
    case domain_type::hvm:
      vm_ents = {{"rtc/timeoffset", ""}, {"image/ostype", "hvm"}, {"start_time", start_time}};
      local_ents = {{"platform/acpi", "1"},
                    {"platform/acpi_s3", "1"},
                    {"platform/acpi_s4", "1"},
                    {"platform/acpi_laptop_slate", "0"},
                    {"platform/device-model", "qemu_xen"}};
      break;
    case domain_type::pv:
      vm_ents = {{"image/ostype", "linux"}, {"image/kernel", spec.kernel}, {"start_time", start_time}};
      if (!spec.ramdisk.empty()) vm_ents.emplace_back("image/ramdisk", spec.ramdisk);
      if (!spec.cmdline.empty()) vm_ents.emplace_back("image/cmdline", spec.cmdline);
      break;
    case domain_type::pvh:
      vm_ents = {{"start_time", start_time}};
      break;
  }
  xs_.in_transaction([&](txn t) {
    for (const auto& [k, v] : ents) xs_.write(dp + "/" + k, v, t);
    for (const auto& [k, v] : local_ents) xs_.write(dp + "/" + k, v, t);
    for (const auto& [k, v] : vm_ents) xs_.write(info.vm_path + "/" + k, v, t);
  });
  if (spec.introduce) spec.introduce(d);
  return info;
}

std::uint32_t toolstack::add_disk(const disk_spec& in) {
  disk_spec disk = in;
  auto devid = vdev_to_devid(disk.vdev);
  if (!devid) throw toolstack_error("Invalid or unsupported virtual disk identifier " + disk.vdev);
  if (disk.backend_type.empty() || disk.backend_type.find('/') != std::string::npos)
    throw toolstack_error("invalid backend type '" + disk.backend_type + "'");

  // xlu_disk_parse.
  if (disk.cdrom) {
    disk.removable = true;
    disk.writable = false;
    if (disk.target.empty()) disk.format = disk_format::empty;
  }
  if (disk.target.empty() && !disk.removable) throw toolstack_error("no target specified (and device not removable)");
  // libxl__device_disk_setdefault / libxl__device_disk_set_backend.
  const bool discard = disk.discard_enable.value_or(disk.writable);
  if (disk.format == disk_format::empty) {
    if (!disk.cdrom) throw toolstack_error("Disk vdev=" + disk.vdev + " is empty but not cdrom");
    if (!disk.target.empty())
      throw toolstack_error("Disk vdev=" + disk.vdev +
                            " is empty but an image has been provided: " + disk.target.string());
  }

  // libxl__domain_type.
  const unsigned domid = disk.domid;
  if (domid == 0 || !xs_.exists(dom_path(domid)))
    throw toolstack_error("domain " + std::to_string(domid) + " does not exist");
  const std::string type = xs_.read("/libxl/" + std::to_string(domid) + "/type").value_or("pv");

  device dev;
  dev.backend_domid = disk.backend_domid;
  dev.backend_kind = disk.backend_type;
  dev.domid = domid;
  dev.kind = "vbd";
  dev.devid = *devid;

  kvs back = {
      {"params", std::string(format_prefix(disk.format)) + ":" + disk.target.string()},
      {"frontend-id", std::to_string(domid)},
      {"online", "1"},
      {"removable", disk.removable ? "1" : "0"},
      {"bootable", "1"},
      {"state", std::to_string(state_initialising)},
      {"dev", disk.vdev},
      {"type", disk.backend_type},
      {"mode", disk.writable ? "w" : "r"},
      {"device-type", disk.cdrom ? "cdrom" : "disk"},
  };
  if (disk.direct_io_safe) back.emplace_back("direct-io-safe", "1");
  back.emplace_back("discard-enable", discard ? "1" : "0");
  back.emplace_back("specification", "xen");

  kvs front = {
      {"backend-id", std::to_string(disk.backend_domid)},
      {"state", std::to_string(state_initialising)},
      {"virtual-device", std::to_string(*devid)},
      {"device-type", disk.cdrom ? "cdrom" : "disk"},
      {"trusted", disk.trusted ? "1" : "0"},
  };
  if (type == "pv") front.emplace_back("protocol", disk.pv_protocol);

  const std::string fe = dev.fe_path();
  const std::string be = dev.be_path();
  const std::string lp = dev.libxl_path();
  const auto frontend_perms = perms_of({{domid, 'n'}, {disk.backend_domid, 'r'}});
  const auto backend_perms = perms_of({{disk.backend_domid, 'n'}, {domid, 'r'}});

  xs_.in_transaction([&](txn t) {
    // libxl__device_exists.
    if (xs_.exists(lp, t)) throw toolstack_error("device already exists in xenstore (" + lp + ")");
    // libxl__device_generic_add.
    xs_.rm(lp, t);
    xs_.write(lp + "/frontend", fe, t);
    xs_.write(lp + "/backend", be, t);

    xs_.rm(fe, t);
    xs_.mkdir(fe, t);
    xs_.set_perms(fe, frontend_perms, t);
    xs_.write(fe + "/backend", be, t);
    for (const auto& [k, v] : front) {
      xs_.write(fe + "/" + k, v, t);
      xs_.set_perms(fe + "/" + k, frontend_perms, t);
    }

    xs_.rm(be, t);
    xs_.mkdir(be, t);
    xs_.set_perms(be, backend_perms, t);
    xs_.write(be + "/frontend", fe, t);
    for (const auto& [k, v] : back) xs_.write(be + "/" + k, v, t);

    for (const auto& [k, v] : back) xs_.write(lp + "/" + k, v, t);
  });
  return *devid;
}

remove_result toolstack::remove_disk(unsigned domid, std::uint32_t devid, const remove_options& opts) {
  // libxl_vdev_to_device_disk / libxl__disk_from_xenstore read libxl's copy.
  const std::string lp = libxl_vbd_path(domid, devid);
  auto backend = xs_.read(lp + "/backend");
  if (!backend)
    throw toolstack_error("Device " + std::to_string(devid) + " (" + devid_to_vdev(devid) + ") of domain " +
                          std::to_string(domid) + " not connected.");
  for (const char* key : {"type", "dev", "removable", "mode", "device-type"})
    if (!xs_.exists(lp + "/" + key)) throw toolstack_error("Missing xenstore node " + lp + "/" + key);
  auto parsed = parse_backend_path(*backend);
  if (!parsed) throw toolstack_error("internal error: backend path " + *backend + " unparseable!");
  device dev = *parsed;
  dev.domid = domid;
  dev.kind = "vbd";
  dev.devid = devid;

  force_flag force = opts.mode == remove_mode::safe     ? force_flag::off
                     : opts.mode == remove_mode::remove ? force_flag::auto_
                                                        : force_flag::on;
  remove_result result;
  // libxl_domain_info(domid) must succeed.
  if (!xs_.exists(dom_path(domid))) {
    result.error = "unable to get info for domain " + std::to_string(domid);
    if (force == force_flag::on) {
      device_destroy(xs_, dev);
      result.nodes_removed = true;
    }
    return result;
  }
  generic_remove(xs_, dev, force, opts.timeout, opts.on_closed, result);
  return result;
}

bool toolstack::wait_backend_state(unsigned domid, std::uint32_t devid, int state, std::chrono::milliseconds timeout) {
  auto backend = xs_.read(libxl_vbd_path(domid, devid) + "/backend");
  if (!backend) return false;
  return devstate_wait(xs_, *backend + "/state", state, timeout) == wait_rc::ok;
}

destroy_result toolstack::destroy_domain(unsigned domid, const destroy_options& opts) {
  const std::string dp = dom_path(domid);
  if (domid == 0 || !xs_.exists(dp)) throw toolstack_error("Non-existant domain");
  destroy_result res;

  // libxl__devices_destroy: collect the devices, start every removal, then
  // wait for them (libxl runs them concurrently; so do the timers here).
  struct pending {
    device dev;
    bool bodge;
  };
  std::vector<pending> started;
  const std::string devroot = "/libxl/" + std::to_string(domid) + "/device";
  for (const auto& kind : xs_.directory(devroot).value_or(std::vector<std::string>{})) {
    if (!known_kind(kind)) {
      res.skipped_devices.push_back(devroot + "/" + kind);
      continue;
    }
    for (const auto& id : xs_.directory(devroot + "/" + kind).value_or(std::vector<std::string>{})) {
      const std::string lp = devroot + "/" + kind + "/" + id;
      auto bp = xs_.read(lp + "/backend");
      auto parsed = bp ? parse_backend_path(*bp) : std::nullopt;
      if (!parsed || !known_kind(parsed->backend_kind)) {
        res.skipped_devices.push_back(lp);
        continue;
      }
      device dev = *parsed;
      dev.domid = domid;
      dev.kind = kind;
      dev.devid = static_cast<std::uint32_t>(std::atoi(id.c_str()));
      res.removed_devices.push_back(dev.be_path());
      if (dev.backend_kind == "console" || dev.backend_kind == "vuart") {
        device_destroy(xs_, dev);
        continue;
      }
      // The domain is paused (libxl paused it), so a QEMU backend gets the
      // bodge; everything else the forced generic remove.
      const bool bodge = qemu_backend(dev.backend_kind);
      if (!bodge) {
        // Step 1 of the forced remove, started now like libxl's multidev.
        const bool missing = !initiate_remove(xs_, dev, true);
        if (missing) {
          device_destroy(xs_, dev);
          continue;
        }
      }
      started.push_back({dev, bodge});
    }
  }

  const auto start = std::chrono::steady_clock::now();
  for (const auto& p : started) {
    const std::string state_path = p.dev.be_path() + "/state";
    if (p.bodge) {
      // device_qemu_timeout.
      std::this_thread::sleep_until(start + opts.qemu_bodge_timeout);
      auto st = xs_.read(state_path);
      if (st && std::atoi(st->c_str()) != state_closed) xs_.write(state_path, std::to_string(state_closed));
    } else {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(start + opts.destroy_timeout -
                                                                        std::chrono::steady_clock::now());
      auto rc = devstate_wait(xs_, state_path, state_closed, std::max(left, 0ms));
      if (rc != wait_rc::ok)
        res.errors.push_back("unable to remove device with path " + p.dev.be_path() +
                             (rc == wait_rc::timed_out ? " - timed out" : " - state removed"));
    }
    if (p.dev.backend_domid != 0) {
      // device_hotplug for a driver-domain backend: wait for it to remove
      // its directory (errors do not stop a forced removal).
      if (!xs_.wait_for(
              p.dev.be_path(), [](const std::optional<std::string>& v) { return !v.has_value(); },
              opts.destroy_timeout))
        res.errors.push_back("timed out while waiting for " + p.dev.be_path() + " to be removed");
    }
    device_destroy(xs_, p.dev);  // FORCE_ON: always
  }

  // devices_destroy_cb.
  if (auto vm = xs_.read(dp + "/vm"); vm && !vm->empty()) xs_.rm(*vm);
  xs_.rm(dp);
  xs_.rm("/libxl/" + std::to_string(domid));
  xs_.rm(dp + "/hvmloader");
  // xc_domain_destroy -> (VIRQ_DOM_EXC) -> xenstored releases the domain.
  if (opts.on_destroyed) opts.on_destroyed(domid);
  return res;
}

}  // namespace xbd::sim
