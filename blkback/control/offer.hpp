// offer: what a vbd offers its frontend, as one pure function of the
// toolstack's keys, the store's properties and our settings (no xenstore,
// no I/O: unit-tested on its own).
#pragma once

#include "blkback/config.hpp"
#include "blkback/ring/request.hpp"
#include "blkback/storage/storage.hpp"

#include <cstdint>

namespace xbd::blkback {

// The toolstack's keys that decide the offer (docs/protocol.md).
struct toolstack_choices {
  bool writable = true;        // mode "w" and not a cdrom
  bool cdrom = false;          // device-type "cdrom"
  bool removable = false;      // removable "1"
  bool discard_enable = true;  // discard-enable (default on)
};

struct disk_offer {
  device_limits limits;                 // what requests are checked against
  unsigned info = 0;                    // VDISK_* flags for the `info` key
  std::uint32_t discard_alignment = 0;  // bytes, for the `discard-alignment` key
};

disk_offer make_offer(const toolstack_choices& keys, const storage::properties& store, const settings& cfg);

}  // namespace xbd::blkback
