#include "blkback/backing.hpp"

#include <cerrno>
#include <fstream>
#include <linux/falloc.h>
#include <sys/sysmacros.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/stat.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace xbd::blkback {

namespace {

const asio_xen::xen_call_category open_call{"open"};
const asio_xen::xen_call_category fstat_call{"fstat"};
const asio_xen::xen_call_category ioctl_call{"ioctl"};

}  // namespace

direct_io_key parse_direct_io_safe(const std::optional<std::string>& value) {
  if (!value) return direct_io_key::absent;
  if (*value == "1") return direct_io_key::set;
  if (*value == "0") return direct_io_key::unset;
  return direct_io_key::malformed;
}

open_mode choose_open_mode(direct_io_policy policy, direct_io_key key) {
  switch (policy) {
    case direct_io_policy::never: return {false, "direct-io policy is never"};
    case direct_io_policy::always: return {true, "direct-io policy is always"};
    case direct_io_policy::follow_key: break;
  }
  switch (key) {
    case direct_io_key::set: return {true, "direct-io-safe=1"};
    case direct_io_key::unset: return {false, "direct-io-safe=0"};
    case direct_io_key::absent: return {false, "no direct-io-safe key"};
    case direct_io_key::malformed: return {false, "direct-io-safe is malformed (treated as absent)"};
  }
  return {false, ""};
}

namespace {

std::uint64_t sysfs_number(const std::string& path) {
  std::ifstream in(path);
  std::uint64_t v = 0;
  if (!(in >> v)) return 0;
  return v;
}

// Whether discard works on this backing store, and its granularity.
// Files: a hole punched past the end of the file changes nothing and fails
// with EOPNOTSUPP where the filesystem cannot punch holes. Block devices:
// the queue limits in sysfs. Secure erase is never offered: the kernel does
// not publish it, and probing BLKSECDISCARD would drop the device's page
// cache.
void probe_discard(int fd, const struct stat& st, backing_properties& p) {
  if (S_ISREG(st.st_mode)) {
    const off_t beyond = static_cast<off_t>((p.size / 4096 + 16) * 4096);
    if (::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, beyond, 4096) == 0) {
      p.discard = true;
      p.discard_granularity = std::max<std::uint32_t>(p.logical_sector, static_cast<std::uint32_t>(st.st_blksize));
      p.discard_alignment = 0;
    }
    return;
  }
  const std::string dev = "/sys/dev/block/" + std::to_string(major(st.st_rdev)) + ":" + std::to_string(minor(st.st_rdev));
  std::string queue = dev + "/queue/";
  if (::access(queue.c_str(), F_OK) != 0) queue = dev + "/../queue/";  // a partition
  if (sysfs_number(queue + "discard_max_bytes") == 0) return;
  p.discard = true;
  p.discard_granularity = std::max<std::uint32_t>(
      p.logical_sector, static_cast<std::uint32_t>(sysfs_number(queue + "discard_granularity")));
  p.discard_alignment = static_cast<std::uint32_t>(sysfs_number(dev + "/discard_alignment"));
}

}  // namespace

asio_xen::result<backing_store> backing_store::open(const std::filesystem::path& path, bool writable,
                                                    bool direct) {
  backing_store b;
  b.path_ = path;
  const int base = (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOCTTY;
  int fd = -1;
  if (direct) {
    fd = ::open(path.c_str(), base | O_DIRECT);
    if (fd < 0 && errno == EINVAL) {
      b.fallback_ = "the filesystem refused O_DIRECT; using the page cache";
      direct = false;
    } else if (fd < 0) {
      return asio_xen::xen_error(open_call);
    }
  }
  if (fd < 0) fd = ::open(path.c_str(), base);
  if (fd < 0) return asio_xen::xen_error(open_call);
  b.fd_ = fd;

  struct stat st {};
  if (::fstat(fd, &st) != 0) return asio_xen::xen_error(fstat_call);
  auto& p = b.props_;
  p.writable = writable;
  p.direct = direct;
  if (S_ISBLK(st.st_mode)) {
    p.block_device = true;
    std::uint64_t bytes = 0;
    int lss = 512;
    unsigned int pss = 512;
    if (::ioctl(fd, BLKGETSIZE64, &bytes) != 0 || ::ioctl(fd, BLKSSZGET, &lss) != 0 ||
        ::ioctl(fd, BLKPBSZGET, &pss) != 0)
      return asio_xen::xen_error(ioctl_call);
    p.size = bytes;
    p.logical_sector = static_cast<std::uint32_t>(lss);
    p.physical_sector = std::max<std::uint32_t>(pss, p.logical_sector);
    // Discard on block devices is probed and served in the discard work.
  } else if (S_ISREG(st.st_mode)) {
    p.size = static_cast<std::uint64_t>(st.st_size);
    p.logical_sector = 512;
    if (direct) {
      // O_DIRECT on a file needs the offset alignment its filesystem and
      // device ask for (4 KiB on 4Kn disks); the frontend must not send less.
      struct statx sx {};
      if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN) &&
          sx.stx_dio_offset_align > 512 && sx.stx_dio_offset_align <= 4096)
        p.logical_sector = sx.stx_dio_offset_align;
    }
    // The filesystem block: writes smaller than it cost a read-modify-write
    // in the page cache, so tell the guest to prefer it.
    p.physical_sector = st.st_blksize >= 512 && st.st_blksize <= 4096 ? static_cast<std::uint32_t>(st.st_blksize) : 512;
    p.physical_sector = std::max(p.physical_sector, p.logical_sector);
  } else {
    return asio_xen::error_code(ENOTBLK, open_call);
  }
  // The frontend sees whole sectors only; a ragged tail is not addressable.
  p.size -= p.size % p.logical_sector;
  if (writable) probe_discard(b.fd_, st, p);
  return b;
}

backing_store::backing_store(backing_store&& o) noexcept { *this = std::move(o); }

backing_store& backing_store::operator=(backing_store&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(o.fd_, -1);
    path_ = std::move(o.path_);
    props_ = o.props_;
    fallback_ = std::move(o.fallback_);
  }
  return *this;
}

backing_store::~backing_store() {
  if (fd_ >= 0) ::close(fd_);
}

asio_xen::result<std::uint64_t> backing_store::current_size() const {
  struct stat st {};
  if (::fstat(fd_, &st) != 0) return asio_xen::xen_error(fstat_call);
  std::uint64_t size = 0;
  if (S_ISBLK(st.st_mode)) {
    if (::ioctl(fd_, BLKGETSIZE64, &size) != 0) return asio_xen::xen_error(ioctl_call);
  } else {
    size = static_cast<std::uint64_t>(st.st_size);
  }
  return size - size % props_.logical_sector;
}

}  // namespace xbd::blkback
