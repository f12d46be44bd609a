// The backing store of a vbd: a regular file or a block device, opened once
// with the mode its toolstack key and our policy allow, and probed for the
// properties the frontend is told (size, sector sizes, discard).
//
// The I/O itself is the queue's: it runs on asio::random_access_file objects
// over dup()s of fd() (one per in-flight request: io.md's queue-depth trap),
// and flushes and discards go through aux_ring.
#pragma once

#include "asio_xen/error.hpp"
#include "blkback/config.hpp"

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace xbd::blkback {

// The toolstack's `direct-io-safe` key (blkif.h): "1" gives permission to
// use O_DIRECT, "0" or no key withholds it. Anything else is malformed and
// withholds it too: permission is never guessed.
enum class direct_io_key { absent, set, unset, malformed };
direct_io_key parse_direct_io_safe(const std::optional<std::string>& value);

// Whether to open with O_DIRECT, and why (for the log line every vbd gets).
struct open_mode {
  bool direct = false;
  std::string reason;
};
open_mode choose_open_mode(direct_io_policy policy, direct_io_key key);

struct backing_properties {
  std::uint64_t size = 0;                // bytes
  std::uint32_t logical_sector = 512;    // bytes: the unit the frontend must align to
  std::uint32_t physical_sector = 512;   // bytes: the unit that avoids read-modify-write
  bool block_device = false;
  bool writable = false;
  bool direct = false;                   // as actually opened
  bool discard = false;                  // punch holes / BLKDISCARD works
  bool discard_secure = false;           // BLKSECDISCARD works
  std::uint32_t discard_granularity = 0; // bytes
  std::uint32_t discard_alignment = 0;   // bytes
};

class backing_store {
 public:
  // Opens `path` read-write or read-only. With `direct`, O_DIRECT is tried
  // first; a filesystem that refuses it (EINVAL) gets a buffered open, and
  // fallback_reason() says so.
  static asio_xen::result<backing_store> open(const std::filesystem::path& path, bool writable, bool direct);

  backing_store(backing_store&& o) noexcept;
  backing_store& operator=(backing_store&& o) noexcept;
  ~backing_store();

  int fd() const { return fd_; }
  const std::filesystem::path& path() const { return path_; }
  const backing_properties& properties() const { return props_; }
  const std::string& fallback_reason() const { return fallback_; }

  // The size now (online resize: the file grew or the device was resized).
  asio_xen::result<std::uint64_t> current_size() const;

 private:
  backing_store() = default;
  int fd_ = -1;
  std::filesystem::path path_;
  backing_properties props_;
  std::string fallback_;
};

}  // namespace xbd::blkback
