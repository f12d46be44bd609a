// The local driver: a regular file or a block device on this host.
//
// Reads, writes, flushes (fdatasync) and hole punching run on the worker's
// own io_uring (aux_ring): a read or write is a preadv/pwritev of one piece
// (our buffer) or of the guest's pages (zero-copy, persistent grants), all
// of a turn's operations go to the kernel in one system call, and what the
// page cache answers completes in that call (docs/architecture.md,
// "Measurements behind the choices"). A block device's discards (BLKDISCARD,
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
