// backend: finds the devices the toolstack asks us to serve and runs one vbd
// coroutine for each.
//
// It watches /local/domain/<own domid>/backend/<type> for every configured
// type and @releaseDomain. Devices already present at start-up are picked up
// like new ones (a restarted daemon serves them). A device whose coroutine
// ended (unplugged, failed, guest dead) is not started again until its
// directory has gone and come back.
#pragma once

#include "blkback/control/vbd.hpp"

#include <boost/asio/awaitable.hpp>

#include <functional>
#include <map>
#include <memory>

namespace xbd::blkback {

class backend {
 public:
  explicit backend(vbd_context& ctx) : ctx_(ctx) {}

  // Serves until shutdown(), then waits for every vbd to let go.
  boost::asio::awaitable<void> run();
  void shutdown();
  // Every connected vbd compares its backing size with what it published
  // (SIGHUP).
  void check_sizes();

  // Devices being served now.
  std::size_t active() const;
  // Every vbd known now, served or ended and waiting for its directory to
  // go (report.hpp), by type, domain and device. Control thread.
  std::vector<vbd_report> reports() const;
  // The I/O limits of one vbd, after `change` when there is one: the
  // control socket's answer (report.hpp's limits_json) or an error text in
  // `error`. A change made through one vbd of a named group is made on
  // every vbd of that group, so that each keeps it across reconnections.
  // Control thread.
  struct limits_answer {
    std::string json;
    std::string error;
  };
  limits_answer limits(const vbd_id& id, const std::optional<throttle_settings>& change);

  // Once, when every device present at start-up has been picked up (the
  // service manager's readiness), with the number being served.
  std::function<void(std::size_t)> on_ready;
  // Whenever the number of devices being served changes.
  std::function<void(std::size_t)> on_count;

 private:
  struct entry {
    std::unique_ptr<vbd> device;
    bool finished = false;
  };
  void scan();
  boost::asio::awaitable<void> poll_sizes();
  void start(const vbd_id& id);

  vbd_context& ctx_;
  boost::asio::any_io_executor ex_;
  std::map<vbd_id, entry> devices_;
  std::optional<asio_xen::watch> watch_;
  bool shutdown_ = false;
  bool ready_ = false;
  std::size_t last_count_ = ~std::size_t{0};
  void report();
};

}  // namespace xbd::blkback
