#include "test/integration/process.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>

extern char** environ;

namespace xbd::test {

process::process(std::vector<std::string> argv, std::vector<std::string> env, std::filesystem::path output)
    : out_(std::move(output)) {
  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e) {
    std::string v(*e);
    bool replaced = false;
    for (const auto& n : env)
      if (v.compare(0, n.find('=') + 1, n, 0, n.find('=') + 1) == 0) replaced = true;
    if (!replaced) envs.push_back(v);
  }
  // Of two same-named entries in `env`, the later wins (a caller's
  // XENSIM_DOMID over sim_env's default).
  for (std::size_t i = 0; i < env.size(); ++i) {
    const auto name = env[i].substr(0, env[i].find('=') + 1);
    bool later = false;
    for (std::size_t j = i + 1; j < env.size(); ++j) later = later || env[j].compare(0, name.size(), name) == 0;
    if (!later) envs.push_back(env[i]);
  }
  std::vector<char*> av, ev;
  for (auto& a : argv) av.push_back(a.data());
  av.push_back(nullptr);
  for (auto& e : envs) ev.push_back(e.data());
  ev.push_back(nullptr);
  int fd = ::open(out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cannot create " + out_.string());
  // Until the exec, the child runs this program, doctest's signal handlers
  // included: a SIGTERM sent right after the fork (a test failing and
  // tearing down a daemon it has just started) reported the whole test as
  // crashed, from the child. Signals wait, blocked, until the child has
  // reset its handlers to the defaults.
  sigset_t all, old;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_BLOCK, &all, &old);
  pid_ = ::fork();
  if (pid_ == 0) {
    // What exec would do: handled signals to the default, ignored ones stay.
    for (int sig = 1; sig < NSIG; ++sig) {
      struct sigaction sa {};
      if (::sigaction(sig, nullptr, &sa) == 0 && sa.sa_handler != SIG_IGN && sa.sa_handler != SIG_DFL)
        ::signal(sig, SIG_DFL);
    }
  }
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    int null = ::open("/dev/null", O_RDONLY);
    ::dup2(null, 0);
    ::execve(av[0], av.data(), ev.data());
    std::fprintf(stderr, "exec %s: %s\n", av[0], std::strerror(errno));
    ::_exit(127);
  }
  ::close(fd);
}

process::~process() {
  if (running()) {
    ::kill(pid_, SIGKILL);
    (void)wait(std::chrono::seconds(5));
  }
}

bool process::running() {
  if (status_) return false;
  int st = 0;
  pid_t r = ::waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return false;
  }
  return true;
}

void process::signal(int sig) {
  if (running()) ::kill(pid_, sig);
}

bool process::pause(std::chrono::milliseconds limit) {
  if (!running()) return false;
  ::kill(pid_, SIGSTOP);
  const auto stat = "/proc/" + std::to_string(pid_) + "/stat";
  return eventually(
      [&] {
        // The state is the field after the command's closing parenthesis.
        std::ifstream in(stat);
        std::string line;
        std::getline(in, line);
        const auto end = line.rfind(')');
        return end != std::string::npos && end + 2 < line.size() && line[end + 2] == 'T';
      },
      limit);
}

std::optional<int> process::wait(std::chrono::milliseconds limit) {
  eventually([&] { return !running(); }, limit);
  return status_;
}

std::string process::output() const {
  std::ifstream in(out_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

run_result run(std::vector<std::string> argv, std::vector<std::string> env, std::filesystem::path output,
               std::chrono::milliseconds limit) {
  process p(std::move(argv), std::move(env), std::move(output));
  auto st = p.wait(limit);
  if (!st) {
    p.signal(SIGKILL);
    (void)p.wait(std::chrono::seconds(5));
  }
  return {st ? *st : -1, p.output()};
}

std::size_t open_descriptors(pid_t pid) {
  std::error_code ec;
  std::size_t n = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    std::error_code ignored;
    const auto target = std::filesystem::read_symlink(it->path(), ignored).filename().string();
    const bool sim =
        target.starts_with("xensim.mem") || (target.starts_with("xensim.ev") && target.ends_with(" (deleted)"));
    n += sim ? 0 : 1;
  }
  return n;
}

std::string descriptor_kinds(pid_t pid) {
  std::map<std::string, int> kinds;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    auto target = std::filesystem::read_symlink(it->path(), ec).string();
    for (char& c : target)
      if (c >= '0' && c <= '9') c = 'N';
    ++kinds[target];
  }
  std::string out;
  for (const auto& [k, n] : kinds) out += k + " x" + std::to_string(n) + "; ";
  return out;
}

std::size_t resident_kib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10);
  return 0;
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

}  // namespace xbd::test
