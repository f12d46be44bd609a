#include "blkback/storage/local.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/stat.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <cerrno>
#include <fstream>

#include <optional>
#include <vector>

namespace xbd::blkback {

namespace {

const asio_xen::xen_call_category open_call{"open"};
const asio_xen::xen_call_category fstat_call{"fstat"};
const asio_xen::xen_call_category ioctl_call{"ioctl"};

}  // namespace

namespace storage {

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
// the queue limits in sysfs. Whether a device can erase securely is not in
// sysfs (the kernel keeps max_secure_erase_sectors to itself), and probing
// BLKSECDISCARD would drop the device's page cache: a block device only
// says it can be asked (BLKSECDISCARD exists for it), and the toolstack
// decides (docs/storage.md, "Secure discard").
void probe_discard(int fd, const struct stat& st, properties& p) {
  if (S_ISREG(st.st_mode)) {
    const off_t beyond = static_cast<off_t>((p.size / 4096 + 16) * 4096);
    if (::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, beyond, 4096) == 0) {
      p.discard = true;
      p.discard_granularity = std::max<std::uint32_t>(p.logical_sector, static_cast<std::uint32_t>(st.st_blksize));
      p.discard_alignment = 0;
    }
    return;
  }
  const std::string dev =
      "/sys/dev/block/" + std::to_string(major(st.st_rdev)) + ":" + std::to_string(minor(st.st_rdev));
  std::string queue = dev + "/queue/";
  if (::access(queue.c_str(), F_OK) != 0) queue = dev + "/../queue/";  // a partition
  if (sysfs_number(queue + "discard_max_bytes") == 0) return;
  p.discard = true;
  p.discard_granularity = std::max<std::uint32_t>(
      p.logical_sector, static_cast<std::uint32_t>(sysfs_number(queue + "discard_granularity")));
  p.discard_alignment = static_cast<std::uint32_t>(sysfs_number(dev + "/discard_alignment"));
  p.discard_secure = true;
}

}  // namespace

namespace asio = boost::asio;
using asio_xen::error_code;

namespace {

// Opens, falling back to the page cache where O_DIRECT is refused.
asio_xen::result<int> open_fd(const std::filesystem::path& path, const local_options& opt, bool& direct,
                              std::string* fallback) {
  const int base = (opt.writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOCTTY;
  direct = opt.direct;
  if (direct) {
    int fd = ::open(path.c_str(), base | O_DIRECT);
    if (fd >= 0) return fd;
    if (errno != EINVAL) return asio_xen::xen_error(open_call);
    if (fallback) *fallback = "the filesystem refused O_DIRECT; using the page cache";
    direct = false;
  }
  int fd = ::open(path.c_str(), base);
  if (fd < 0) return asio_xen::xen_error(open_call);
  return fd;
}

// Sizes and sector sizes, from the device or the file and its filesystem.
error_code probe(int fd, const struct stat& st, properties& p) {
  if (S_ISBLK(st.st_mode)) {
    std::uint64_t bytes = 0;
    int lss = 512;
    unsigned int pss = 512;
    if (::ioctl(fd, BLKGETSIZE64, &bytes) != 0 || ::ioctl(fd, BLKSSZGET, &lss) != 0 ||
        ::ioctl(fd, BLKPBSZGET, &pss) != 0)
      return asio_xen::xen_error(ioctl_call);
    p.size = bytes;
    p.logical_sector = static_cast<std::uint32_t>(lss);
    p.physical_sector = std::max<std::uint32_t>(pss, p.logical_sector);
  } else if (S_ISREG(st.st_mode)) {
    p.size = static_cast<std::uint64_t>(st.st_size);
    p.logical_sector = 512;
    if (p.direct) {
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
    return error_code(ENOTBLK, open_call);
  }
  // Buffered I/O goes through the page cache, which serves any 512-byte
  // unit; O_DIRECT needs the device's or the filesystem's alignment.
  p.io_alignment = p.direct ? p.logical_sector : 512;
  // The frontend sees whole sectors only; a ragged tail is not addressable.
  p.size -= p.size % p.logical_sector;
  return {};
}

class local_store;

// One ring's channel. Each operation in flight takes an `op`, created on
// first use and reused most-recently-freed first, and goes to the worker's
// own io_uring (aux_ring): reads and writes as preadv/pwritev of one piece
// (a buffer of ours) or many (the guest's pages), flushes and hole punching.
// All of a turn's operations reach the kernel in one system call, and a
// read the page cache answers completes in that call. trim() lets go of
// the ops.
class local_channel final : public channel, public vectored_io {
 public:
  local_channel(local_store& store, const worker& w, unsigned depth);

  vectored_io* vectored() override { return this; }
  void readv(std::uint64_t offset, std::span<const iovec> into, completion& done) override;
  void writev(std::uint64_t offset, std::span<const iovec> from, completion& done) override;

  void read(std::uint64_t offset, std::span<std::byte> into, completion& done) override;
  void write(std::uint64_t offset, std::span<const std::byte> from, completion& done) override;
  void flush(completion& done) override;
  void discard(std::uint64_t offset, std::uint64_t length, bool secure, completion& done) override;
  void trim() override;

 private:
  struct op final : aux_completion {
    local_channel* owner = nullptr;
    completion* done = nullptr;
    // A read or write: what is left of it.
    bool rw = false;
    bool write = false;
    std::uint64_t at = 0;
    std::vector<iovec> pieces;
    std::size_t next = 0;  // the first piece not wholly moved
    void aux_complete(error_code ec, std::size_t moved) override { owner->aux_done(*this, ec, moved); }
  };

  op* start(completion& done);
  void finish(op& o, error_code ec);
  void start_rw(op& o, bool write, std::uint64_t offset, std::span<const iovec> pieces);
  void submit_rw(op& o);
  void aux_done(op& o, error_code ec, std::size_t moved);

  local_store& store_;
  worker w_;
  unsigned depth_;
  std::vector<std::unique_ptr<op>> ops_;
  std::vector<op*> free_;
};

// The descriptor, shared with a size read that may still be running on a
// thread of its own (off_thread.hpp) when the store goes: closed by the last.
struct shared_fd {
  explicit shared_fd(int f) : fd(f) {}
  ~shared_fd() { ::close(fd); }
  shared_fd(const shared_fd&) = delete;
  shared_fd& operator=(const shared_fd&) = delete;
  const int fd;
};

asio_xen::result<std::uint64_t> size_of(int fd, std::uint32_t logical_sector) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return asio_xen::xen_error(fstat_call);
  std::uint64_t size = static_cast<std::uint64_t>(st.st_size);
  if (S_ISBLK(st.st_mode) && ::ioctl(fd, BLKGETSIZE64, &size) != 0) return asio_xen::xen_error(ioctl_call);
  return size - size % logical_sector;
}

// Whether `fd` (a regular file) lives on a file system whose calls can
// sleep until a server answers: network file systems and FUSE. A local
// disk's or a block device's fstat(2) does not wait for anyone.
bool on_remote_fs(int fd, const struct stat& st) {
  if (!S_ISREG(st.st_mode)) return false;
  struct statfs fs {};
  if (::fstatfs(fd, &fs) != 0) return true;  // cannot tell: be careful
  switch (static_cast<unsigned long>(fs.f_type)) {
    case 0x6969:      // NFS
    case 0x65735546:  // FUSE
    case 0xFF534D42:  // CIFS
    case 0xFE534D42:  // SMB2
    case 0x517B:      // SMB
    case 0x00C36400:  // CephFS
    case 0x01021997:  // 9p
    case 0x5346414F:  // AFS
    case 0x6B414653:  // kAFS
    case 0x7461636F:  // OCFS2
    case 0x01161970:  // GFS2
    case 0x47504653:  // GPFS
    case 0x0BD00BD0:  // Lustre
      return true;
    default:
      return false;
  }
}

class local_store final : public store {
 public:
  local_store(int fd, std::filesystem::path path, properties p, bool block_device, bool remote)
      : fd_(std::make_shared<shared_fd>(fd)),
        path_(std::move(path)),
        props_(p),
        block_device_(block_device),
        remote_(remote) {}
  ~local_store() override {
    if (ioctls_) ioctls_->join();
  }

  const properties& props() const override { return props_; }
  std::string name() const override { return path_.string(); }
  asio_xen::result<std::uint64_t> current_size() const override { return size_of(fd_->fd, props_.logical_sector); }
  // fstat(2) on a file system that does not answer does not return (on a
  // local one it does: no thread for those).
  std::function<asio_xen::result<std::uint64_t>()> size_reader() const override {
    if (!remote_) return {};
    return [fd = fd_, sector = props_.logical_sector] { return size_of(fd->fd, sector); };
  }
  asio_xen::result<std::unique_ptr<channel>> open_channel(const worker& w, unsigned depth) override {
    return std::unique_ptr<channel>(new local_channel(*this, w, depth));
  }

  int fd() const { return fd_->fd; }
  bool block_device() const { return block_device_; }
  // The device's own thread for its blocking ioctls, started on first use.
  asio::thread_pool& ioctls() {
    if (!ioctls_) ioctls_ = std::make_unique<asio::thread_pool>(1);
    return *ioctls_;
  }

 private:
  std::shared_ptr<const shared_fd> fd_;
  std::filesystem::path path_;
  properties props_;
  bool block_device_;
  bool remote_;
  std::unique_ptr<asio::thread_pool> ioctls_;
};

local_channel::local_channel(local_store& store, const worker& w, unsigned depth)
    : store_(store), w_(w), depth_(depth) {
  ops_.reserve(depth);
  free_.reserve(depth);
}

// An op for `done`; more operations than the ring can have in flight (the
// caller's bug) fail on a later turn, never inline.
local_channel::op* local_channel::start(completion& done) {
  op* o = nullptr;
  if (!free_.empty()) {
    o = free_.back();
    free_.pop_back();
  } else if (ops_.size() < depth_) {
    ops_.push_back(std::make_unique<op>());
    o = ops_.back().get();
    o->owner = this;
  } else {
    asio::post(w_.ex, [&done] { done.complete(error_code(EBUSY, boost::system::generic_category())); });
    return nullptr;
  }
  o->done = &done;
  return o;
}

void local_channel::finish(op& o, error_code ec) {
  o.rw = false;
  completion* done = std::exchange(o.done, nullptr);
  free_.push_back(&o);
  done->complete(ec);
}

// Nothing is in flight: nothing refers to the ops.
void local_channel::trim() {
  free_.clear();
  ops_.clear();
}

void local_channel::read(std::uint64_t offset, std::span<std::byte> into, completion& done) {
  const iovec one{into.data(), into.size()};
  if (op* o = start(done)) start_rw(*o, false, offset, {&one, 1});
}

void local_channel::write(std::uint64_t offset, std::span<const std::byte> from, completion& done) {
  const iovec one{const_cast<std::byte*>(from.data()), from.size()};  // only read
  if (op* o = start(done)) start_rw(*o, true, offset, {&one, 1});
}

// The guest's pages: a 1 MiB request on persistent grants is 256 pieces, in
// one submission.
void local_channel::readv(std::uint64_t offset, std::span<const iovec> into, completion& done) {
  if (op* o = start(done)) start_rw(*o, false, offset, into);
}

void local_channel::writev(std::uint64_t offset, std::span<const iovec> from, completion& done) {
  if (op* o = start(done)) start_rw(*o, true, offset, from);
}

void local_channel::start_rw(op& o, bool write, std::uint64_t offset, std::span<const iovec> pieces) {
  o.rw = true;
  o.write = write;
  o.at = offset;
  o.pieces.assign(pieces.begin(), pieces.end());
  o.next = 0;
  submit_rw(o);
}

void local_channel::submit_rw(op& o) {
  const std::span<const iovec> left(o.pieces.data() + o.next, o.pieces.size() - o.next);
  if (o.write)
    w_.aux->writev(store_.fd(), o.at, left, o);
  else
    w_.aux->readv(store_.fd(), o.at, left, o);
}

// A short transfer goes on from where it stopped; nothing moved at all is
// the end of the file (a store that shrank).
void local_channel::aux_done(op& o, error_code ec, std::size_t moved) {
  if (!o.rw || ec) return finish(o, ec);
  if (moved == 0) return finish(o, make_error_code(asio_xen::errc::short_transfer));
  o.at += moved;
  while (o.next < o.pieces.size() && moved >= o.pieces[o.next].iov_len) moved -= o.pieces[o.next++].iov_len;
  if (o.next == o.pieces.size()) return finish(o, {});
  iovec& part = o.pieces[o.next];
  part.iov_base = static_cast<std::byte*>(part.iov_base) + moved;
  part.iov_len -= moved;
  submit_rw(o);
}

// fdatasync through io_uring: the kernel's workers run it without blocking
// this thread (a blocking one would stall every ring on it for as long as
// the disk takes, 0.7 s measured after buffered writes).
void local_channel::flush(completion& done) {
  if (op* o = start(done)) w_.aux->fdatasync(store_.fd(), *o);
}

// A file punches a hole (io_uring FALLOCATE); a block device discards on
// its own thread and completes back on ours.
void local_channel::discard(std::uint64_t offset, std::uint64_t length, bool secure, completion& done) {
  op* o = start(done);
  if (!o) return;
  if (!store_.block_device()) {
    w_.aux->fallocate(store_.fd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length, *o);
    return;
  }
  asio::post(store_.ioctls(), [this, o, fd = store_.fd(), offset, length, secure, ex = w_.ex] {
    std::uint64_t range[2] = {offset, length};
    error_code ec;
    if (::ioctl(fd, secure ? BLKSECDISCARD : BLKDISCARD, range) != 0)
      ec = error_code(errno, boost::system::generic_category());
    asio::post(ex, [this, o, ec] { finish(*o, ec); });
  });
}

}  // namespace

asio_xen::result<std::unique_ptr<store>> open_local(const std::filesystem::path& path, const local_options& opt,
                                                    std::string* fallback) {
  properties p;
  auto fd = open_fd(path, opt, p.direct, fallback);
  if (!fd) return fd.error();
  struct stat st {};
  if (::fstat(*fd, &st) != 0) {
    error_code ec = asio_xen::xen_error(fstat_call);
    ::close(*fd);
    return ec;
  }
  p.writable = opt.writable;
  p.vectored = true;
  if (error_code ec = probe(*fd, st, p)) {
    ::close(*fd);
    return ec;
  }
  if (opt.writable) probe_discard(*fd, st, p);
  return std::unique_ptr<store>(new local_store(*fd, path, p, S_ISBLK(st.st_mode), on_remote_fs(*fd, st)));
}

}  // namespace storage
}  // namespace xbd::blkback
