// The image server: one qemu-storage-daemon (qsd) per image that is not
// raw, exporting it over NBD on a private unix socket, so that the NBD
// driver serves qcow2, vhd and the rest the way it serves any export.
//
// The socket is ours: bound once, before the first qsd starts, and handed
// to each qsd as a descriptor (--nbd-server addr.type=fd). A qsd that dies
// is restarted with back-off behind the same listening socket, so an NBD
// client that reconnects meanwhile waits in the backlog instead of finding
// no socket. The child dies with the daemon (PR_SET_PDEATHSIG), and its
// death is noticed through a pidfd on the executor. A QMP socket in the same
// private directory is kept for later work (snapshots, resize).
//
// Everything is bounded: start waits at most start_timeout, stop() about
// three seconds, and nothing blocks the executor's thread for more than a
// few milliseconds except the destructor of a server that was not stopped.
#pragma once

#include "asio_xen/error.hpp"
#include "blkback/storage/spec.hpp"

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>

namespace xbd::blkback::storage {

struct image_server_options {
  std::filesystem::path program = "qemu-storage-daemon";  // looked up in PATH if it has no '/'
  std::filesystem::path runtime_dir;                      // a private subdirectory is created per server, mode 0700
  std::string name;  // unique per vbd, e.g. "5-51712": names the subdir and the export
  bool writable = true;
  // cache.direct=on with aio=io_uring (aio=threads where qsd refuses
  // io_uring), else the host's page cache.
  bool direct = false;
  bool discard = true;  // discard=unmap on the format node
  std::chrono::milliseconds start_timeout{10000};
};

class image_server {
 public:
  // Starts qsd and waits (at most o.start_timeout) until its export
  // answers. On failure, `detail` says why in one line: qsd's own message
  // ("Could not open '/x.qcow2': No such file or directory"), or that the
  // program is missing, or that it did not answer in time.
  // Runs on the calling coroutine's executor, which the server then uses
  // for its whole life; every member is called on that executor's thread,
  // a thread that lives as long as the server (PR_SET_PDEATHSIG fires when
  // the thread that started the child ends, not the process).
  // The image and options are taken by value: the coroutine starts only
  // when awaited, after a temporary argument would be gone. `detail` must
  // outlive the co_await.
  static boost::asio::awaitable<asio_xen::result<std::unique_ptr<image_server>>> start(image_format f,
                                                                                       std::filesystem::path image,
                                                                                       image_server_options o,
                                                                                       std::string& detail);

  // Ends qsd: SIGTERM (qsd flushes and closes the image), SIGKILL after
  // two seconds, reaped without blocking; then removes the directory.
  // Idempotent; no restart happens after it.
  boost::asio::awaitable<void> stop();

  // If stop() has not run: the same, waiting synchronously (at most about
  // three seconds) for the child to go.
  ~image_server();

  image_server(const image_server&) = delete;
  image_server& operator=(const image_server&) = delete;

  const nbd_target& target() const;  // unix socket, export name
  const std::filesystem::path& qmp_socket() const;
  unsigned restarts() const;  // how many times qsd died and was started again
  int pid() const;            // the current qsd, or -1 (tests)

  struct state;

 private:
  explicit image_server(std::shared_ptr<state> s);
  std::shared_ptr<state> s_;
};

// For --check-config: the program's path and version
// ("/usr/bin/qemu-storage-daemon: qemu-storage-daemon version 7.2.22 ..."),
// or why it is unusable. Runs the program (bounded: two seconds).
std::string describe_image_server_program(const std::filesystem::path& program = "qemu-storage-daemon");

}  // namespace xbd::blkback::storage
