// xen-blkbackctl: asks a running xen-blkbackd over its control socket
// (man 8 xen-blkbackctl, docs/operations.md).
//
// Exit status: 0 answered, 1 the daemon answered with an error, 2 a usage
// error or no answer (no daemon, a timeout, an answer that is not JSON).
#include "app/ctl/client.hpp"
#include "app/ctl/json.hpp"
#include "app/ctl/render.hpp"
#include "blkback/config.hpp"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

namespace {

using namespace xbd;

constexpr const char* version = "0.1.0";
constexpr const char* daemon_config = "/etc/xen-blkbackd.toml";

void usage(std::ostream& os) {
  os << "usage: xen-blkbackctl [--socket PATH | --config FILE] [--timeout SECONDS] COMMAND [ARG...]\n"
        "commands:\n"
        "  list [--json]                                  the vbds the daemon knows\n"
        "  show [--json] DOMID/DEVID                      one vbd: state, counters, latencies, queues\n"
        "  stats [--json | --prometheus] [DOMID[/DEVID]]  every vbd's counters (JSON by default)\n"
        "  limits [--json] DOMID/DEVID [NAME=VALUE...]    show or change a vbd's I/O limits\n"
        "  log-level [LEVEL]                              show or set the running log level\n"
        "options:\n"
        "  --socket PATH     the daemon's control socket (default: [control] socket of\n"
        "                    /etc/xen-blkbackd.toml, else "
     << ctl::default_socket
     << ")\n"
        "  --config FILE     read the socket's path from this settings file\n"
        "  --timeout SECONDS how long to wait for the answer (default 10)\n"
        "exit status: 0 answered, 1 the daemon answered with an error, 2 usage error or no answer\n";
}

struct options {
  std::optional<std::string> socket;
  std::optional<std::string> config;
  std::chrono::milliseconds timeout{10000};
  std::vector<std::string> command;
};

std::optional<options> parse_args(int argc, char** argv) {
  options o;
  int i = 1;
  for (; i < argc && std::string_view(argv[i]).starts_with("--") && o.command.empty(); ++i) {
    const std::string_view a = argv[i];
    if (a == "--help") {
      usage(std::cout);
      std::exit(0);
    }
    if (a == "--version") {
      std::cout << "xen-blkbackctl " << version << "\n";
      std::exit(0);
    }
    if (i + 1 >= argc) return std::nullopt;
    const std::string value = argv[++i];
    if (a == "--socket") {
      o.socket = value;
    } else if (a == "--config") {
      o.config = value;
    } else if (a == "--timeout") {
      unsigned s = 0;
      const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), s);
      if (ec != std::errc{} || end != value.data() + value.size() || s == 0 || s > 3600) return std::nullopt;
      o.timeout = std::chrono::seconds(s);
    } else {
      return std::nullopt;
    }
  }
  for (; i < argc; ++i) o.command.emplace_back(argv[i]);
  if (o.command.empty()) return std::nullopt;
  return o;
}

// The socket the daemon listens on: --socket, else its settings file's.
std::string socket_path(const options& o) {
  if (o.socket) return *o.socket;
  const std::string file = o.config.value_or(daemon_config);
  if (!o.config && ::access(file.c_str(), F_OK) != 0) return ctl::default_socket;
  try {
    return blkback::load_settings(file).control.socket;
  } catch (const std::exception& e) {
    if (o.config) throw;
    std::cerr << "xen-blkbackctl: " << e.what() << "; trying " << ctl::default_socket << "\n";
    return ctl::default_socket;
  }
}

// Words the daemon reads as they are: printable, no spaces (a newline
// would be a second request).
bool plain(const std::string& word) {
  if (word.empty()) return false;
  for (const char c : word)
    if (c <= ' ' || c >= 0x7f) return false;
  return true;
}

// Prints the answer the way the command asks for; the exit status.
int print(const std::vector<std::string>& cmd, const std::string& raw) {
  std::string why;
  const auto answer = ctl::json::parse(raw, &why);
  if (!answer || !answer->is(ctl::json::kind::object)) {
    std::cerr << "xen-blkbackctl: the daemon's answer is not JSON (" << why << ")\n";
    return 2;
  }
  if (const auto& e = (*answer)["error"]; e.is(ctl::json::kind::string)) {
    std::cerr << "xen-blkbackctl: " << e.str() << "\n";
    return 1;
  }
  const bool json_out = std::find(cmd.begin(), cmd.end(), "--json") != cmd.end();
  const std::string& name = cmd.front();
  if (name == "stats" && std::find(cmd.begin(), cmd.end(), "--prometheus") != cmd.end())
    std::cout << (*answer)["prometheus"].str();
  else if (name == "list" && !json_out)
    std::cout << ctl::render_list(*answer);
  else if (name == "show" && !json_out)
    std::cout << ctl::render_show((*answer)["vbd"]);
  else if (name == "limits" && !json_out)
    std::cout << ctl::render_limits(*answer);
  else if (name == "log-level")
    std::cout << "log level " << (*answer)["log_level"].str()
              << ((*answer)["was"].str().empty() ? "" : " (was " + (*answer)["was"].str() + ")") << "\n";
  else  // stats, and what asked for --json
    std::cout << raw << "\n";
  return 0;
}

// The request line for the daemon: list and show take --json here, not there.
std::string request_line(const std::vector<std::string>& cmd) {
  std::string line;
  for (const auto& w : cmd) {
    if (w == "--json" && cmd.front() != "stats") continue;
    line += (line.empty() ? "" : " ") + w;
  }
  return line;
}

}  // namespace

int main(int argc, char** argv) {
  const auto opts = parse_args(argc, argv);
  if (!opts) {
    usage(std::cerr);
    return 2;
  }
  for (const auto& w : opts->command) {
    if (!plain(w)) {
      std::cerr << "xen-blkbackctl: an argument with spaces or control characters: not a request\n";
      return 2;
    }
  }
  static const std::vector<std::string> known{"list", "show", "stats", "limits", "log-level", "help"};
  if (std::find(known.begin(), known.end(), opts->command.front()) == known.end()) {
    std::cerr << "xen-blkbackctl: unknown command '" << opts->command.front() << "'\n";
    usage(std::cerr);
    return 2;
  }
  std::string socket;
  try {
    socket = socket_path(*opts);
  } catch (const std::exception& e) {
    std::cerr << "xen-blkbackctl: " << e.what() << "\n";
    return 2;
  }
  if (socket.empty()) {
    std::cerr << "xen-blkbackctl: the daemon's settings turn the control socket off ([control] socket = \"\")\n";
    return 2;
  }
  auto answer = ctl::ask(socket, request_line(opts->command), opts->timeout);
  if (auto* f = std::get_if<ctl::failure>(&answer)) {
    std::cerr << "xen-blkbackctl: " << f->what << "\n";
    return 2;
  }
  return print(opts->command, std::get<std::string>(answer));
}
