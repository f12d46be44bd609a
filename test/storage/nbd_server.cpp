#include "test/storage/nbd_server.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <stdexcept>

namespace xbd::test {

temp_dir::temp_dir() {
  std::string tmpl = "/tmp/xbd-nbd-XXXXXX";
  if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

temp_dir::~temp_dir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

unsigned free_tcp_port() {
  const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (s < 0 || ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    if (s >= 0) ::close(s);
    throw std::runtime_error("no free TCP port");
  }
  ::close(s);
  return ntohs(a.sin_port);
}

nbd_server::nbd_server(options o) : opt_(std::move(o)) {
  if (opt_.tcp) port_ = free_tcp_port();
  start();
}

nbd_server::~nbd_server() { kill(); }

void nbd_server::start() {
  const auto pidfile = dir() / "nbdkit.pid";
  std::error_code ignored;
  std::filesystem::remove(pidfile, ignored);
  std::filesystem::remove(dir() / "sock", ignored);
  std::vector<std::string> argv = {"/usr/bin/nbdkit", "--foreground", "--exit-with-parent", "-P", pidfile.string()};
  if (opt_.read_only) argv.push_back("-r");
  if (opt_.tcp) {
    argv.insert(argv.end(), {"-i", "127.0.0.1", "-p", std::to_string(port_)});
  } else {
    argv.insert(argv.end(), {"-U", (dir() / "sock").string()});
  }
  for (const auto& f : opt_.filters) argv.push_back("--filter=" + f);
  argv.insert(argv.end(), opt_.plugin.begin(), opt_.plugin.end());
  argv.insert(argv.end(), opt_.params.begin(), opt_.params.end());
  proc_ = std::make_unique<process>(argv, std::vector<std::string>{},
                                    dir() / ("nbdkit." + std::to_string(generation_++) + ".log"));
  if (!eventually([&] { return std::filesystem::exists(pidfile) || !proc_->running(); }, std::chrono::seconds(10)) ||
      !proc_->running())
    throw std::runtime_error("nbdkit did not start: " + proc_->output());
}

void nbd_server::kill() {
  if (!proc_) return;
  proc_->signal(SIGKILL);
  (void)proc_->wait(std::chrono::seconds(5));
  proc_.reset();
}

void nbd_server::pause() {
  if (!proc_) return;
  proc_->signal(SIGSTOP);
  const auto stat = "/proc/" + std::to_string(proc_->pid()) + "/stat";
  const bool stopped = eventually(
      [&] {
        std::ifstream in(stat);
        std::string line;
        std::getline(in, line);
        const auto end = line.rfind(')');
        return end != std::string::npos && end + 2 < line.size() && line[end + 2] == 'T';
      },
      std::chrono::seconds(5));
  if (!stopped) throw std::runtime_error("nbdkit did not stop");
}

void nbd_server::resume() {
  if (proc_) proc_->signal(SIGCONT);
}

blkback::storage::nbd_target nbd_server::target() const {
  blkback::storage::nbd_target t;
  if (opt_.tcp) {
    t.via = blkback::storage::nbd_target::transport::tcp;
    t.host = "127.0.0.1";
    t.port = std::to_string(port_);
  } else {
    t.via = blkback::storage::nbd_target::transport::unix_socket;
    t.socket = dir() / "sock";
  }
  return t;
}

std::string nbd_server::uri() const {
  if (opt_.tcp) return "nbd://127.0.0.1:" + std::to_string(port_) + "/";
  return "nbd+unix:///?socket=" + (dir() / "sock").string();
}

}  // namespace xbd::test
