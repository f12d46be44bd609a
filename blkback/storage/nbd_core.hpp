// The state of one NBD channel (nbd_channel.hpp), shared by its two halves:
// nbd_channel.cpp keeps the connection (connect, serve, reconnect, give up),
// nbd_ops.cpp moves operations (waiting, on the wire, done).
#pragma once

#include "blkback/log.hpp"
#include "blkback/storage/nbd_channel.hpp"
#include "blkback/storage/nbd_link.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace xbd::blkback::storage::nbd {

namespace asio = boost::asio;
using asio_xen::error_code;

// Between attempts to reach a lost server: soon at first, then less often.
constexpr std::chrono::milliseconds first_backoff{50};
constexpr std::chrono::milliseconds max_backoff{2000};
// An NBD command's length is 32 bits: longer discards go out in pieces.
constexpr std::uint64_t max_trim = std::uint64_t{1} << 30;

inline error_code errno_code(int e) { return {e, boost::system::generic_category()}; }

enum class op_kind { read, write, flush, trim };
enum class op_state { free, waiting, wire, done };

class core;

struct op {
  op_kind kind = op_kind::read;
  op_state state = op_state::free;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  std::uint64_t cursor = 0;  // trim: bytes discarded so far
  std::uint64_t piece = 0;   // trim: the piece on the wire
  // When a connection was first lost under it: an operation that every new
  // connection loses again (a server that drops it, or keeps answering
  // ESHUTDOWN) still fails once it has waited the reconnect window.
  std::chrono::steady_clock::time_point lost_at;
  void* buf = nullptr;
  completion* done = nullptr;
  error_code ec;
  op* next = nullptr;
  core* owner = nullptr;
};

// A FIFO of operations, threaded through the operations themselves.
class op_list {
 public:
  bool empty() const { return head_ == nullptr; }
  void push_back(op* o) {
    o->next = nullptr;
    (tail_ ? tail_->next : head_) = o;
    tail_ = o;
  }
  void push_front(op* o) {
    o->next = head_;
    head_ = o;
    if (!tail_) tail_ = o;
  }
  op* pop_front() {
    op* o = head_;
    if (o) {
      head_ = o->next;
      if (!head_) tail_ = nullptr;
      o->next = nullptr;
    }
    return o;
  }

 private:
  op* head_ = nullptr;
  op* tail_ = nullptr;
};

// The channel's state, shared with the handlers and the coroutine that keep
// the connection: they hold it alive until they have run, so a channel can
// go at any time without leaving them pointing at freed memory.
class core : public std::enable_shared_from_this<core> {
 public:
  core(const asio::any_io_executor& ex, unsigned depth, std::shared_ptr<const channel_config> cfg,
       std::shared_ptr<socket_watch> watch);

  void start();
  void submit(op_kind k, std::uint64_t offset, std::uint64_t length, void* buf, completion& done);
  void fail_later(completion& done, error_code ec) {
    asio::post(ex_, [&done, ec] { done.complete(ec); });
  }
  void cancel_waiting();
  void close();

 private:
  asio::awaitable<void> supervise(std::shared_ptr<core> self);
  asio::awaitable<void> serve();
  void came_up();
  void went_down();
  void attempt_failed(const std::string& detail);
  void begin_outage();
  void outage_expired(unsigned generation);
  void drop_link();
  void arm_watchdog();
  void check_stall();

  void kick();
  void requeue(op& o, bool front = false);
  void issue();
  bool issue_one(op& o);
  static int replied(void* user_data, int* error);
  void on_reply(op& o, int err);
  void finish(op* o, error_code ec);
  void deliver();

  asio::any_io_executor ex_;
  std::shared_ptr<const channel_config> cfg_;
  std::shared_ptr<socket_watch> watch_;
  std::shared_ptr<link> link_;
  logger lg_;

  std::vector<op> ops_;  // never resized: libnbd holds pointers into it
  op_list free_;
  op_list waiting_;
  op_list done_;
  bool delivering_ = false;

  bool up_ = false;       // link_ negotiated and serving
  std::string doomed_;    // why the connection must go although libnbd keeps it
  bool quiet_ = false;    // closing a handle: its callbacks are not news
  bool closing_ = false;  // the channel is gone
  bool gave_up_ = false;  // lost longer than the reconnect window: fail at once

  asio::steady_timer retry_;
  asio::steady_timer deadline_;
  asio::steady_timer watchdog_;
  unsigned on_wire_ = 0;
  std::chrono::steady_clock::time_point last_reply_;  // or the moment the wire stopped being empty
  unsigned outage_generation_ = 0;
  std::chrono::steady_clock::time_point outage_since_;
  bool outage_logged_ = false;  // at warning: its end is worth a line too
  bool outage_reported_ = false;
};

}  // namespace xbd::blkback::storage::nbd
