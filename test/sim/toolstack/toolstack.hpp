// The toolstack of the simulated Xen: creates and removes domains and
// virtual block devices in xenstore exactly as libxl 4.17 (xl) does, so that
// a backend under test sees what it would see on a real host.
//
// What it does NOT do (no hypervisor, no QEMU): domain memory, event channels
// and grants (the xensim part does those), spawning a QEMU qdisk backend for
// PV guests, hotplug scripts, the console device, libxl's JSON userdata file.
// See toolstack.cpp for where every key, value, permission and ordering comes
// from.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "xs_client.hpp"

namespace xbd::sim {

// ---------------------------------------------------------------- vdev names

// libxl__device_disk_dev_number (libxl_device.c): "xvda" -> 51712,
// "xvdb1" -> 51729, "hda" -> 768, "sdb" -> 2064, "xvdq" (17th disk) or
// "xvda16" (>15 partitions) -> extended form (1<<28)|(disk<<8)|part,
// "d<disk>p<part>", or a plain number taken as is. nullopt when libxl would
// reject it ("Invalid or unsupported virtual disk identifier").
std::optional<std::uint32_t> vdev_to_devid(std::string_view vdev);

// libxl__devid_to_vdev: the xvd name of a devid ("51712" -> "xvda").
std::string devid_to_vdev(std::uint32_t devid);

// ------------------------------------------------------------------ domains

enum class domain_type { pv, pvh, hvm };
std::string_view to_string(domain_type t);  // "pv", "pvh", "hvm" (libxl IDL)

struct domain_spec {
  unsigned domid = 0;  // required, 1..32751 (DOMID_FIRST_RESERVED-1)
  std::string name;    // empty: "sim-<domid>"
  std::string uuid;    // empty: a random one, as xl generates
  domain_type type = domain_type::pv;
  unsigned max_vcpus = 1;
  std::uint64_t max_memkb = 131072;
  std::uint64_t target_memkb = 131072;
  std::uint64_t video_memkb = 0;
  std::string kernel = "/boot/vmlinuz-sim";  // PV: /vm/<uuid>/image/kernel
  std::string cmdline;                       // PV: image/cmdline when set
  std::string ramdisk;                       // PV: image/ramdisk when set
  unsigned store_port = 1;                   // <dom>/store/port
  std::uint64_t store_mfn = 0;               // <dom>/store/ring-ref
  bool driver_domain = false;                // libxl: also creates <dom>/libxl, device-model
  // Called where libxl__build_post calls xs_introduce_domain(domid, store
  // mfn, store port), i.e. after every node is written. Empty: the domain is
  // not introduced. With the xenstored fixture:
  //   spec.introduce = [&](unsigned d) { xsd.introduce_domain(d); };
  // (plain xs_introduce_domain needs a xenstored that can map the page).
  std::function<void(unsigned domid)> introduce;
};

struct domain_info {
  unsigned domid = 0;
  std::string name;
  std::string uuid;
  std::string dom_path;    // /local/domain/<domid>
  std::string vm_path;     // /vm/<uuid>
  std::string libxl_path;  // /libxl/<domid>
};

struct destroy_options {
  // libxl's LIBXL_QEMU_BODGE_TIMEOUT: for QEMU-type backends (qdisk) of a
  // paused/dying domain, libxl does not ask the backend to close; it waits
  // this long, then writes backend state=6 itself and removes the nodes.
  std::chrono::milliseconds qemu_bodge_timeout{2000};
  // LIBXL_DESTROY_TIMEOUT: for other backends, the wait for Closed.
  std::chrono::milliseconds destroy_timeout{10000};
  // Called where libxl calls xc_domain_destroy (last). On Xen, xenstored
  // then notices the dead domain (VIRQ_DOM_EXC), drops its connection and
  // fires @releaseDomain. With the xenstored fixture:
  //   opts.on_destroyed = [&](unsigned d) { xsd.kill_domain(d); };
  // Empty: nothing (the domain stays known to xenstored if introduced).
  std::function<void(unsigned domid)> on_destroyed;
};

struct destroy_result {
  std::vector<std::string> removed_devices;  // backend paths handled
  std::vector<std::string> skipped_devices;  // libxl paths libxl would skip
                                             // (backend kind it does not know)
  std::vector<std::string> errors;           // what libxl would log as ERROR
  bool ok() const { return errors.empty(); }
};

// -------------------------------------------------------------------- disks

// libxl_disk_format, and what libxl__device_disk_string_of_format writes
// before the ':' in the qdisk `params` key: raw -> "aio" (sic), empty -> "aio".
enum class disk_format { raw, qcow, qcow2, vhd, qed, empty };

struct disk_spec {
  unsigned domid = 0;
  std::string vdev = "xvda";
  std::filesystem::path target;  // pdev_path; may be empty only for a cdrom
  disk_format format = disk_format::raw;
  bool writable = true;  // xl access=rw (mode "w") / ro (mode "r")
  bool cdrom = false;    // xl devtype=cdrom: forces removable, ro
  bool removable = false;
  bool direct_io_safe = false;         // xl flag direct-io-safe
  std::optional<bool> discard_enable;  // unset: libxl default = writable
  bool trusted = true;                 // xl trusted/untrusted (frontend `trusted`)
  std::string backend_type = "qdisk";  // backend dir kind and `type` value
  unsigned backend_domid = 0;
  // Written to the frontend's `protocol` for PV guests only, as libxl does
  // with xc_domain_get_native_protocol (a 32-bit PV guest: "x86_32-abi").
  std::string pv_protocol = "x86_64-abi";
};

enum class remove_mode {
  // libxl_device_disk_safe_remove (what `xl block-detach` uses): on timeout,
  // fail and leave every node in place (online=0, state=5).
  safe,
  // libxl_device_disk_remove (LIBXL__FORCE_AUTO): on timeout, a forced pass
  // (frontend dir removed, online=0/state=5 again, a second wait), then the
  // nodes are removed whatever the outcome of the second wait.
  remove,
  // libxl_device_disk_destroy (`xl block-detach -f`, LIBXL__FORCE_ON): the
  // frontend dir is removed first, then online=0/state=5, the wait, and the
  // nodes are removed whatever the outcome.
  destroy,
};

struct remove_options {
  // LIBXL_DESTROY_TIMEOUT (10 s) per wait. In `remove` mode there may be two.
  std::chrono::milliseconds timeout{10000};
  remove_mode mode = remove_mode::remove;
  // Called once the wait has read Closed (libxl's device_backend_callback),
  // before the wait for a driver domain to remove the backend directory.
  // libxl reads the state only after each watch event, so an xl devd that
  // removes the directory right after the backend's Closed can win and make
  // the wait see the node removed (an error, as with real libxl). A test
  // that holds xl devd until here orders the two as libxl expects.
  std::function<void()> on_closed{};
};

struct remove_result {
  bool closed = false;            // the backend reached Closed (6) in a wait
  bool timed_out = false;         // the last wait timed out (libxl's error)
  bool forced = false;            // a forced pass ran (frontend dir removed
                                  // first): always in `destroy` mode; in
                                  // `remove` mode after a first timeout
  bool backend_missing = false;   // backend state absent at the start:
                                  // "backend already removed, cleanup frontend only"
  bool backend_vanished = false;  // state node removed during the wait
  bool nodes_removed = false;     // frontend, backend (if dom0's) and libxl nodes removed
  std::string error;              // empty iff libxl would return success
  bool ok() const { return error.empty(); }
};

// -------------------------------------------------------------- the toolstack

// One xenstore connection; not thread-safe (use one object per thread).
// Errors throw toolstack_error, with libxl's wording where libxl has one.
class toolstack {
 public:
  toolstack();  // connects with xs_open(0) (XENSTORED_PATH honoured)

  // What xen-init-dom0 writes at boot (/local/domain/0/domid = "0",
  // /local/domain/0/name = "Domain-0"), if not there yet. libxl needs the
  // first (libxl__get_domid). create_domain calls it.
  void init_dom0();

  // libxl__domain_make + store_libxl_entry + libxl__build_post.
  domain_info create_domain(const domain_spec& spec);

  // libxl__destroy_domid from the device teardown on: every device under
  // /libxl/<domid>/device is removed (forced), then /vm/<uuid>,
  // /local/domain/<domid> and /libxl/<domid>.
  destroy_result destroy_domain(unsigned domid, const destroy_options& opts = {});

  // device_disk_add (libxl_disk.c) + libxl__device_generic_add, as for
  // `xl block-attach` (or a disk in the domain config). Returns the devid.
  // For a QEMU-type backend (qdisk) libxl does not wait for the backend.
  std::uint32_t add_disk(const disk_spec& spec);

  // libxl__initiate_device_generic_remove and what follows, for the vbd
  // <devid> of <domid> (found through libxl's copy under /libxl).
  remove_result remove_disk(unsigned domid, std::uint32_t devid, const remove_options& opts = {});

  // Convenience for tests and the CLI: wait until the backend state of a vbd
  // is `state` (true) or the timeout passes (false).
  bool wait_backend_state(unsigned domid, std::uint32_t devid, int state, std::chrono::milliseconds timeout);

  // Paths, as libxl computes them.
  static std::string dom_path(unsigned domid);
  static std::string libxl_vbd_path(unsigned domid, std::uint32_t devid);
  static std::string frontend_vbd_path(unsigned domid, std::uint32_t devid);
  static std::string backend_path(unsigned backend_domid, std::string_view kind, unsigned domid, std::uint32_t devid);

  xs_client& xs() { return xs_; }

 private:
  xs_client xs_;
};

}  // namespace xbd::sim
