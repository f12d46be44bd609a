// xbd-faultyfs: a disk image whose storage fails where a test says, for the
// hostile-guest tests' backing-store cases (test_hostile.cpp). A FUSE file
// system with one file, disk.img, backed by a real file; every read and
// write passes through with its own offset and length (direct_io), so a rule
// on a byte range fails exactly the guest requests that touch it.
//
//   xbd-faultyfs MOUNTPOINT BACKING RULES EVENTS
//
// RULES, one per line: `read|write|discard OFFSET LENGTH ACTION` or
// `flush|open|getattr ACTION`, where ACTION is eio, enospc, eopnotsupp, eof
// (a read ends at OFFSET) or delay:MS (the request waits MS milliseconds
// first: with a long one, a file system that does not answer). `open` and
// `getattr` are disk.img's (an fstat on it past the kernel's one-second
// attribute cache asks getattr; an event line only when a rule applies).
// SIGUSR1 reads RULES again. EVENTS gets a line per request as it arrives
// ("read OFFSET LENGTH"), so a test knows
// when a request is at the disk. "ready" is printed once mounted; SIGTERM
// unmounts.
#define FUSE_USE_VERSION 35
#include <fuse3/fuse.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

struct rule {
  std::string op;  // read, write, discard, flush
  off_t offset = 0;
  off_t length = 0;
  std::string action;
};

int backing = -1;
const char* rules_path = nullptr;
std::mutex rules_lock;
std::vector<rule> rules;
volatile std::sig_atomic_t reload = 0;
std::FILE* events = nullptr;
std::mutex events_lock;
constexpr const char* file_name = "/disk.img";

void event(const char* op, off_t off, std::size_t len) {
  std::lock_guard<std::mutex> g(events_lock);
  std::fprintf(events, "%s %lld %zu\n", op, static_cast<long long>(off), len);
  std::fflush(events);
}

bool load_rules(const char* path);

bool rangeless(const std::string& op) { return op == "flush" || op == "open" || op == "getattr"; }

// The first rule for `op` whose range meets [off, off + len), if any.
std::optional<rule> match(const std::string& op, off_t off, std::size_t len) {
  const std::lock_guard g(rules_lock);
  if (reload) {
    reload = 0;
    rules.clear();
    (void)load_rules(rules_path);
  }
  for (const auto& r : rules)
    if (r.op == op && (rangeless(op) || (off < r.offset + r.length && r.offset < off + static_cast<off_t>(len))))
      return r;
  return std::nullopt;
}

// 0 to go on with the request, or the negative errno to answer.
int apply(const std::optional<rule>& r) {
  if (!r) return 0;
  if (r->action.starts_with("delay:")) {
    std::this_thread::sleep_for(std::chrono::milliseconds(std::stoul(r->action.substr(6))));
    return 0;
  }
  if (r->action == "eio") return -EIO;
  if (r->action == "enospc") return -ENOSPC;
  if (r->action == "eopnotsupp") return -EOPNOTSUPP;
  return 0;
}

int fs_getattr(const char* path, struct stat* st, fuse_file_info*) {
  std::memset(st, 0, sizeof *st);
  if (std::strcmp(path, "/") == 0) {
    st->st_mode = S_IFDIR | 0755;
    st->st_nlink = 2;
    return 0;
  }
  if (std::strcmp(path, file_name) != 0) return -ENOENT;
  if (const auto r = match("getattr", 0, 0)) {
    event("getattr", 0, 0);  // only when a rule applies: stat is frequent
    if (int e = apply(r); e < 0) return e;
  }
  struct stat b {};
  if (::fstat(backing, &b) != 0) return -errno;
  st->st_mode = S_IFREG | 0644;
  st->st_nlink = 1;
  st->st_size = b.st_size;
  st->st_blocks = b.st_blocks;
  st->st_blksize = 4096;
  return 0;
}

int fs_open(const char* path, fuse_file_info* fi) {
  if (std::strcmp(path, file_name) != 0) return -ENOENT;
  event("open", 0, 0);
  if (int e = apply(match("open", 0, 0)); e < 0) return e;
  fi->direct_io = 1;
  return 0;
}

int fs_read(const char* path, char* buf, std::size_t len, off_t off, fuse_file_info*) {
  if (std::strcmp(path, file_name) != 0) return -ENOENT;
  event("read", off, len);
  const auto r = match("read", off, len);
  if (r && r->action == "eof") len = off < r->offset ? static_cast<std::size_t>(r->offset - off) : 0;
  if (int e = apply(r); e < 0) return e;
  const ssize_t n = ::pread(backing, buf, len, off);
  return n < 0 ? -errno : static_cast<int>(n);
}

int fs_write(const char* path, const char* buf, std::size_t len, off_t off, fuse_file_info*) {
  if (std::strcmp(path, file_name) != 0) return -ENOENT;
  event("write", off, len);
  if (int e = apply(match("write", off, len)); e < 0) return e;
  const ssize_t n = ::pwrite(backing, buf, len, off);
  return n < 0 ? -errno : static_cast<int>(n);
}

int fs_fsync(const char*, int, fuse_file_info*) {
  event("flush", 0, 0);
  if (int e = apply(match("flush", 0, 0)); e < 0) return e;
  return ::fdatasync(backing) == 0 ? 0 : -errno;
}

int fs_fallocate(const char*, int mode, off_t off, off_t len, fuse_file_info*) {
  event("discard", off, static_cast<std::size_t>(len));
  if (int e = apply(match("discard", off, static_cast<std::size_t>(len))); e < 0) return e;
  return ::fallocate(backing, mode, off, len) == 0 ? 0 : -errno;
}

int fs_truncate(const char*, off_t size, fuse_file_info*) { return ::ftruncate(backing, size) == 0 ? 0 : -errno; }

int fs_readdir(const char* path, void* buf, fuse_fill_dir_t fill, off_t, fuse_file_info*, fuse_readdir_flags) {
  if (std::strcmp(path, "/") != 0) return -ENOENT;
  fill(buf, ".", nullptr, 0, fuse_fill_dir_flags{});
  fill(buf, "..", nullptr, 0, fuse_fill_dir_flags{});
  fill(buf, file_name + 1, nullptr, 0, fuse_fill_dir_flags{});
  return 0;
}

bool load_rules(const char* path) {
  std::ifstream in(path);
  if (!in) return false;
  for (std::string line; std::getline(in, line);) {
    std::istringstream ls(line);
    rule r;
    if (!(ls >> r.op) || r.op.starts_with("#")) continue;
    if (rangeless(r.op)) {
      ls >> r.action;
    } else {
      long long o = 0, l = 0;
      ls >> o >> l >> r.action;
      r.offset = o;
      r.length = l;
    }
    if (r.action.empty()) return false;
    rules.push_back(r);
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: xbd-faultyfs MOUNTPOINT BACKING RULES EVENTS\n");
    return 2;
  }
  backing = ::open(argv[2], O_RDWR | O_CLOEXEC);
  if (backing < 0) return std::perror(argv[2]), 1;
  rules_path = argv[3];
  std::signal(SIGUSR1, [](int) { reload = 1; });
  if (!load_rules(argv[3])) return std::fprintf(stderr, "%s: unreadable or bad rules\n", argv[3]), 1;
  events = std::fopen(argv[4], "a");
  if (!events) return std::perror(argv[4]), 1;

  fuse_operations ops{};
  ops.getattr = fs_getattr;
  ops.open = fs_open;
  ops.read = fs_read;
  ops.write = fs_write;
  ops.fsync = fs_fsync;
  ops.fallocate = fs_fallocate;
  ops.truncate = fs_truncate;
  ops.readdir = fs_readdir;
  char prog[] = "xbd-faultyfs";
  char* fargv[] = {prog, nullptr};
  fuse_args args = FUSE_ARGS_INIT(1, fargv);
  fuse* f = fuse_new(&args, &ops, sizeof ops, nullptr);
  if (!f) return std::fprintf(stderr, "fuse_new failed\n"), 1;
  if (fuse_mount(f, argv[1]) != 0) {
    fuse_destroy(f);
    return std::fprintf(stderr, "cannot mount %s\n", argv[1]), 1;
  }
  fuse_set_signal_handlers(fuse_get_session(f));
  std::printf("ready\n");
  std::fflush(stdout);
  // Several threads: a delayed request must not hold up the others.
  fuse_loop_config* cfg = fuse_loop_cfg_create();
  const int rc = fuse_loop_mt(f, cfg);
  fuse_loop_cfg_destroy(cfg);
  fuse_remove_signal_handlers(fuse_get_session(f));
  fuse_unmount(f);
  fuse_destroy(f);
  return rc == 0 ? 0 : 1;
}
