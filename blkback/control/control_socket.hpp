// control_socket: the daemon's unix socket for xen-blkbackctl and
// xen-blkbackd-dm ([control] socket; docs/operations.md). One request per
// line, one line of JSON per answer (commands.hpp), served on the control
// thread by one coroutine per client.
//
// Root's only: the socket is mode 0600 and a client whose credentials are
// not root's (or the daemon's own user) is turned away. Nothing a client
// does can hold the daemon: a line is at most `max_line` bytes (a longer
// one gets one error answer and the connection is closed), a client waits
// at most `idle` between requests and must take each answer within
// `answer`, and at most `max_clients` are served at once (the next one is
// answered with an error and closed).
//
// Asio on io_uring (docs/architecture.md): no Asio I/O object here is ever
// cancelled or closed with an operation pending. The listening socket and
// each client are plain non-blocking descriptors watched through an
// asio_xen::wakeable_wait, which a timer or stop() wakes; a descriptor is
// closed only once its wait has returned.
#pragma once

#include "asio_xen/wakeable.hpp"
#include "blkback/log.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

namespace xbd::blkback {

struct control_bounds {
  std::size_t max_line = 4096;
  unsigned max_clients = 16;
  std::chrono::milliseconds idle{30000};   // waiting for the next request
  std::chrono::milliseconds answer{5000};  // writing one answer
};

// A bound, listening socket and the file that names it.
struct control_listener {
  int fd = -1;
  std::string path;
  dev_t dev = 0;  // of the file, to remove it only while it is ours
  ino_t ino = 0;
};

// Binds `path` (an absolute path), mode 0600, creating its directory (mode
// 0700) if missing. A socket file left by a daemon that was killed is
// replaced; one that a running daemon answers on is not: that, and any
// other failure, is the error string.
std::variant<control_listener, std::string> bind_control_socket(const std::string& path);

class control_socket {
 public:
  using answer_fn = std::function<std::string(std::string_view line)>;

  control_socket(boost::asio::any_io_executor ex, control_listener l, control_bounds b, answer_fn answer);
  ~control_socket();
  control_socket(const control_socket&) = delete;
  control_socket& operator=(const control_socket&) = delete;

  void start();
  // Stops accepting and ends every client; `done` is posted once all have
  // ended and the socket file is gone.
  void stop(std::function<void()> done);
  std::size_t clients() const { return clients_.size(); }

 private:
  struct client;
  enum class outcome { data, closed, timed_out, stopped, failed };

  boost::asio::awaitable<void> accept_loop();
  bool accept_all();
  void admit(int fd);
  boost::asio::awaitable<void> serve(std::shared_ptr<client> c);
  std::string answer_or_error(std::string_view line);
  boost::asio::awaitable<outcome> receive(client& c, std::string& in);
  boost::asio::awaitable<outcome> send(client& c, std::string_view data);
  boost::asio::awaitable<outcome> wait(client& c);
  void arm(const std::shared_ptr<client>& c, std::chrono::milliseconds d);
  void finish(const std::shared_ptr<client>& c);
  void remove_file();
  void maybe_done();

  boost::asio::any_io_executor ex_;
  control_listener listener_;
  control_bounds bounds_;
  answer_fn answer_;
  logger log_;
  std::optional<asio_xen::wakeable_wait> listen_wait_;
  boost::asio::steady_timer pause_;  // after accept() ran out of descriptors
  std::list<std::shared_ptr<client>> clients_;
  bool accepting_ = false;
  bool stopping_ = false;
  std::function<void()> done_;
};

}  // namespace xbd::blkback
