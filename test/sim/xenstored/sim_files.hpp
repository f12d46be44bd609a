// Internal helpers shared by the dom0 and guest sides: names of the files in
// the run directory (layout.h) and a file-descriptor owner.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <system_error>
#include <utility>

#include "test/sim/xenstored/layout.h"

namespace xbd::sim::detail {

class unique_fd {
 public:
  unique_fd() = default;
  explicit unique_fd(int fd) noexcept : fd_(fd) {}
  unique_fd(unique_fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  unique_fd& operator=(unique_fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~unique_fd() { reset(); }
  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  int release() noexcept { return std::exchange(fd_, -1); }
  void reset() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

inline std::error_code errno_code(int e = errno) { return {e, std::generic_category()}; }

[[noreturn]] inline void throw_errno(int e, const std::string& what) { throw std::system_error(errno_code(e), what); }

inline std::filesystem::path page_file(const std::filesystem::path& dir, unsigned domid) {
  char name[64];
  std::snprintf(name, sizeof name, XBD_XS_PAGE_FMT, domid);
  return dir / name;
}
inline std::filesystem::path notify_fifo(const std::filesystem::path& dir, unsigned domid) {
  char name[64];
  std::snprintf(name, sizeof name, XBD_XS_NOTIFY_FMT, domid);
  return dir / name;
}
inline std::filesystem::path dying_file(const std::filesystem::path& dir, unsigned domid) {
  char name[64];
  std::snprintf(name, sizeof name, XBD_XS_DYING_FMT, domid);
  return dir / name;
}
inline std::filesystem::path kick_fifo(const std::filesystem::path& dir) { return dir / XBD_XS_KICK_FIFO; }

// Opens xenstored's kick FIFO for writing. The first, write-only open proves
// that xenstored is there to read (ECONNREFUSED otherwise); the descriptor
// kept is read-write so that a later write never raises SIGPIPE if xenstored
// dies meanwhile (its kicks just go unread, and callers time out).
unique_fd open_kick(const std::filesystem::path& dir, std::error_code& ec);

// Sends one kick message (a domid, or XBD_XS_KICK_VIRQ). A full FIFO means
// xenstored has wake-ups queued and rescans every ring when it gets to them,
// so a domid kick may be dropped then; the VIRQ may not (it is the only
// thing that makes xenstored look at domain states), so that one retries.
std::error_code kick(int fd, std::uint32_t message);

}  // namespace xbd::sim::detail
