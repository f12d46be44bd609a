// The local driver: a regular file or a block device on this host.
//
// Reads and writes run on io_uring through asio::random_access_file, one
// file object (on its own dup() of the descriptor) per operation in flight:
// Asio runs one operation at a time per object, so a shared one would cap
// the queue depth at 1. Flushes (fdatasync) and hole punching go through
// the worker's aux_ring. A block device's discards (BLKDISCARD,
// BLKSECDISCARD) are blocking ioctls without an io_uring form on the
// kernels we support: they run on the store's own thread, so one device's
// slow discard never holds up another's.
#pragma once

#include "blkback/storage/storage.hpp"

#include <filesystem>

namespace xbd::blkback::storage {

struct local_options {
  bool writable = true;
  bool direct = false;  // try O_DIRECT; a filesystem that refuses it gets the page cache
};

// Opens `path` and probes what it can do. `fallback` (if given) receives the
// reason when O_DIRECT was asked for and refused.
asio_xen::result<std::unique_ptr<store>> open_local(const std::filesystem::path& path, const local_options& opt,
                                                    std::string* fallback = nullptr);

}  // namespace xbd::blkback::storage
