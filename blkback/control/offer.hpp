// offer: what a vbd offers its frontend, as one pure function of the
// toolstack's keys, the store's properties and our settings (no xenstore,
// no I/O: unit-tested on its own).
#pragma once

#include "blkback/config.hpp"
#include "blkback/ring/request.hpp"
#include "blkback/storage/storage.hpp"

#include <cstdint>
#include <optional>
#include <string>

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

// discard-secure is left off here: it is decided per connection.
disk_offer make_offer(const toolstack_choices& keys, const storage::properties& store, const settings& cfg);

// Whether to offer discard-secure: secure erase cannot be detected from
// userspace (docs/storage.md, "Secure discard"), so only where discard is
// offered, the toolstack vouches for the device (discard-secure-enable)
// and the store can issue it at all (a block device).
bool offer_discard_secure(const device_limits& offered, bool vouched, const storage::properties& store);

// The logical sector size of one connection (docs/protocol.md, "Sector
// size"): what the operator forced, else the store's own for a frontend
// that sets feature-large-sector-size, else 512 as blkif.h asks.
struct sector_size_choice {
  std::uint32_t size = 512;
  const char* why = "";  // for the connect log line
};
// `forced`: force-sector-size, else [io] sector-size; 0 when neither.
sector_size_choice choose_sector_size(std::uint32_t forced, bool frontend_large, const storage::properties& store);

// Whether the store can serve `size`-byte sectors as it is opened, only
// once reopened without O_DIRECT (the page cache then does the
// read-modify-write), or not at all (a network export's minimum block).
enum class sector_fit { fits, without_direct, impossible };
sector_fit fit_sector_size(std::uint32_t size, const storage::properties& store);

// The toolstack's force-sector-size key: absent -> the [io] default;
// "0" -> none (from the store and the frontend); else one of
// valid_sector_size(). nullopt: malformed.
std::optional<std::uint32_t> parse_forced_sector_size(const std::optional<std::string>& key, unsigned configured);

}  // namespace xbd::blkback
