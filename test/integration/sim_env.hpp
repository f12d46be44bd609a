// One simulated Xen host for an integration test: a real xenstored, the
// replacement event-channel and grant-table libraries, the libxl-like
// toolstack, and the real xen-blkbackd binary (built as shipped; the
// simulation reaches it through LD_LIBRARY_PATH, never a rebuild).
#pragma once

#include "test/integration/process.hpp"
#include "test/sim/toolstack/toolstack.hpp"
#include "test/sim/xenstored/xenstored.hpp"

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace xbd::test {

struct frontend_result {
  int status = -1;
  std::string json;    // the summary line (last line starting with '{')
  std::string output;  // everything it printed
};

class sim_env {
 public:
  explicit sim_env(std::string config_toml = {});
  ~sim_env();

  const std::filesystem::path& dir() const { return dir_; }
  // The daemon's configuration file (for a daemon started by hand).
  const std::filesystem::path& config_path() const { return config_; }
  sim::xenstored& xenstored() { return xsd_; }
  sim::toolstack& toolstack() { return *ts_; }

  // A domain as libxl creates it, introduced to xenstored as a real guest.
  void create_guest(unsigned domid);
  // A disk as xl makes one from `format=..., vdev=..., target=...`: the
  // backend's devid.
  std::uint32_t add_disk(unsigned domid, const std::string& target, const std::string& vdev = "xvda",
                         sim::disk_format format = sim::disk_format::raw);
  // A raw image disk, writable or not, with or without direct-io-safe.
  std::uint32_t add_raw_disk(unsigned domid, const std::filesystem::path& image, bool writable, bool direct_io_safe,
                             const std::string& vdev = "xvda");
  // A sparse image of `bytes` in the test directory.
  std::filesystem::path make_image(const std::string& name, std::uint64_t bytes);

  // `extra_env`: NAME=VALUE for the daemon's environment (XBD_FAULT).
  void start_daemon(std::vector<std::string> extra_args = {}, std::vector<std::string> extra_env = {});
  process& daemon() { return *daemon_; }
  std::string daemon_log() const;
  // Whether the daemon's log contains `text` (waits up to `limit`).
  bool log_shows(const std::string& text, std::chrono::milliseconds limit = std::chrono::seconds(10));
  // SIGTERM and wait: the exit status.
  std::optional<int> stop_daemon();

  std::vector<std::string> frontend_env(unsigned domid) const;
  frontend_result run_frontend(unsigned domid, std::vector<std::string> args,
                               std::chrono::milliseconds limit = std::chrono::seconds(60));
  std::unique_ptr<process> start_frontend(unsigned domid, std::vector<std::string> args, const std::string& tag);

  // xenstore as dom0.
  std::optional<std::string> read(const std::string& path);

 private:
  sim::xenstored xsd_;
  std::filesystem::path dir_;
  std::filesystem::path config_;
  std::unique_ptr<sim::toolstack> ts_;
  std::unique_ptr<process> daemon_;
  int daemon_runs_ = 0;
  int frontend_runs_ = 0;
};

// xenbus.h's states as xenstore holds them, by name.
namespace xenbus {
inline const std::string initialising = "1", init_wait = "2", initialised = "3", connected = "4", closing = "5",
                         closed = "6";
}  // namespace xenbus

// A field of blkfront-sim's JSON summary, found textually ("key":value).
std::string json_field(const std::string& json, const std::string& key);

}  // namespace xbd::test
