// Child processes for the integration tests: the real daemon and the
// simulated frontends, each with its own environment and output file.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace xbd::test {

class process {
 public:
  // Starts argv[0] with the current environment plus `env` (NAME=VALUE,
  // replacing same-named variables, the last of several in `env` winning);
  // stdout and stderr go to `output`.
  process(std::vector<std::string> argv, std::vector<std::string> env, std::filesystem::path output);
  ~process();  // SIGKILL if still running
  process(const process&) = delete;
  process& operator=(const process&) = delete;

  pid_t pid() const { return pid_; }
  bool running();
  void signal(int sig);
  // SIGSTOP, then waits (bounded) until the kernel shows it stopped, so that
  // it handles nothing more until resume(). False if it did not stop.
  bool pause(std::chrono::milliseconds limit = std::chrono::seconds(5));
  void resume() { signal(SIGCONT); }
  // Exit status (or 128+signal), or nullopt if it did not end in time.
  std::optional<int> wait(std::chrono::milliseconds limit);
  std::string output() const;
  const std::filesystem::path& output_path() const { return out_; }

 private:
  pid_t pid_ = -1;
  std::optional<int> status_;
  std::filesystem::path out_;
};

// Runs to completion (bounded) and returns {status, output}.
struct run_result {
  int status = -1;
  std::string output;
};
run_result run(std::vector<std::string> argv, std::vector<std::string> env, std::filesystem::path output,
               std::chrono::milliseconds limit);

// A process's open descriptors, less the simulation's own: libxensim keeps
// each mapped domain's memory file (xensim.mem*) open for the life of the
// process, and a descriptor on the FIFO of each event-channel handle it
// woke until it notices the handle is gone (a deleted xensim.ev*); real Xen
// has neither.
std::size_t open_descriptors(pid_t pid);
// What they are, for failure messages: "anon_inode:[eventfd] x3; ...".
std::string descriptor_kinds(pid_t pid);
// Resident memory (VmRSS), KiB.
std::size_t resident_kib(pid_t pid);

// A TCP port on 127.0.0.1 that nothing listens on when asked (the kernel
// picks it; a server started right after takes it).
unsigned free_tcp_port();

// Polls `pred` until it holds or `limit` passes.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    struct timespec ts {
      0, 20'000'000
    };
    nanosleep(&ts, nullptr);
  }
  return pred();
}

}  // namespace xbd::test
