// storage: what a vbd's data lives on, behind one narrow interface.
//
// A store is opened once per vbd (the toolstack's target, read-only or not,
// O_DIRECT or not) and tells the control plane what to advertise. Each ring
// then opens a channel on its own worker thread and sends it reads, writes,
// flushes and discards, each finished through a completion object the ring
// supplies (its request slot), so that nothing is allocated per request.
// The data plane knows nothing of files, devices or networks.
//
// The contract every driver keeps, whatever it runs on (io_uring, a thread
// of its own, a network connection's event loop):
//  - a completion runs on the channel's executor, never from inside the
//    call that started the operation;
//  - an operation completes exactly once; an empty error_code means the
//    whole length moved;
//  - a channel is destroyed only with no operation in flight (the ring
//    waits for its requests first), and a store outlives its channels.
#pragma once

#include "asio_xen/error.hpp"
#include "blkback/config.hpp"
#include "blkback/storage/aux_ring.hpp"
#include "blkback/storage/direct_io.hpp"
#include "blkback/storage/spec.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <sys/uio.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>

namespace xbd::blkback {

// A thread that runs rings: its executor, and its io_uring for the file
// operations Asio lacks.
struct worker {
  boost::asio::any_io_executor ex;
  std::shared_ptr<aux_ring> aux;
};

namespace storage {

class off_thread_stop;

// What the protocol advertises, as the store found it.
struct properties {
  std::uint64_t size = 0;               // bytes, whole logical sectors
  std::uint32_t logical_sector = 512;   // bytes: the unit the frontend must align to
  std::uint32_t physical_sector = 512;  // bytes: the unit that avoids read-modify-write
  // bytes: the smallest unit the store can serve as opened (O_DIRECT's
  // alignment, a network export's minimum block); at most logical_sector.
  std::uint32_t io_alignment = 512;
  bool writable = false;
  bool direct = false;  // O_DIRECT (or the driver's equivalent) in effect
  // Its channels can run reads and writes on the guest's own pages
  // (vectored_io): zero-copy and persistent grants are possible.
  bool vectored = false;
  bool flush = true;  // flushes reach stable storage
  bool discard = false;
  bool discard_secure = false;            // secure erase can be asked for (a block device's BLKSECDISCARD)
  std::uint32_t discard_granularity = 0;  // bytes
  std::uint32_t discard_alignment = 0;    // bytes
  // Rings that may use the store at once; 0: any. 1 for an NBD server
  // without multi-conn, where a flush on one connection covers only that
  // connection's writes.
  unsigned max_queues = 0;
};

// Receives the end of one operation (see the contract above).
class completion {
 public:
  virtual void complete(asio_xen::error_code ec) = 0;

 protected:
  ~completion() = default;
};

// Reads and writes on the guest's own pages (mapped grants: zero-copy),
// for a channel that can (channel::vectored()). The pieces lie in disk
// order and stay valid until the operation completes; each meets the
// store's io_alignment in address and length.
class vectored_io {
 public:
  virtual void readv(std::uint64_t offset, std::span<const iovec> into, completion& done) = 0;
  virtual void writev(std::uint64_t offset, std::span<const iovec> from, completion& done) = 0;

 protected:
  ~vectored_io() = default;
};

// One ring's way to the store, used on that ring's thread only.
class channel {
 public:
  virtual ~channel() = default;
  // Null for a channel that works only on buffers of its own.
  virtual vectored_io* vectored() { return nullptr; }
  virtual void read(std::uint64_t offset, std::span<std::byte> into, completion& done) = 0;
  virtual void write(std::uint64_t offset, std::span<const std::byte> from, completion& done) = 0;
  // Everything completed before it is on stable storage when it completes.
  virtual void flush(completion& done) = 0;
  // operation_not_supported if the store turns out unable to.
  virtual void discard(std::uint64_t offset, std::uint64_t length, bool secure, completion& done) = 0;
  // The ring has been idle a while: let go of what idle operations keep
  // (descriptors, memory). Called with nothing in flight.
  virtual void trim() {}
  // The ring is closing: finish every operation that is waiting (not yet
  // handed to the store: a driver's reconnect queue) now, with
  // asio::error::operation_aborted. Operations under way are unaffected.
  virtual void cancel() {}
};

class store {
 public:
  virtual ~store() = default;
  virtual const properties& props() const = 0;
  // The size now, in whole logical sectors (online resize).
  virtual asio_xen::result<std::uint64_t> current_size() const = 0;
  // For a store that learns of its own resizes (an RBD image's update
  // watch): `changed` is called, from any thread, whenever the size may
  // have changed, from now until close() has returned. Others are polled
  // through current_size() (SIGHUP, [io] resize-poll-seconds).
  // NOLINTNEXTLINE(performance-unnecessary-value-param): a driver that watches keeps it
  virtual void watch_size(std::function<void()> changed) { (void)changed; }
  // For a store whose current_size() can block (a file on a file system
  // that may stop answering): the same read, safe to run on a thread of its
  // own and to outlive the store. Empty: current_size() never blocks.
  virtual std::function<asio_xen::result<std::uint64_t>()> size_reader() const { return {}; }
  // What it is, for log lines: a path, an export.
  virtual std::string name() const = 0;
  // A channel for a ring on `w` with at most `depth` operations in flight.
  virtual asio_xen::result<std::unique_ptr<channel>> open_channel(const worker& w, unsigned depth) = 0;
  // Ends what the store runs of its own (an image's server), on the
  // executor it was opened on, after its channels are gone and before it is
  // destroyed. Bounded.
  virtual boost::asio::awaitable<void> close() { co_return; }
};

// What the toolstack asked for.
struct open_request {
  disk_spec spec;    // params, parsed (spec.hpp)
  std::string name;  // the vbd's, "<domid>-<devid>": names an image's server
  bool writable = true;
  direct_io_policy policy = direct_io_policy::follow_key;
  direct_io_key key = direct_io_key::absent;
  // Ends the wait for a local open that its file system does not answer
  // (the daemon stops); null: only the bound ends it.
  off_thread_stop* stop = nullptr;
};

struct opened {
  std::unique_ptr<store> st;
  std::string mode;     // why O_DIRECT or not (choose_open_mode's reason)
  std::string warning;  // a fallback the operator should know of, or empty
};

// Picks the driver for the spec and opens it on the calling coroutine's
// executor, within the bounds of `cfg` ([nbd], [images]): a server that does
// not answer never holds the caller for longer. On failure `detail` says why
// in the driver's or the server's words, when they say more than the error
// code.
boost::asio::awaitable<asio_xen::result<opened>> open(open_request req, const settings& cfg, std::string& detail);

}  // namespace storage
}  // namespace xbd::blkback
