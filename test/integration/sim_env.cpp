#include "test/integration/sim_env.hpp"

#include <doctest/doctest.h>

#include <fcntl.h>
#include <unistd.h>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace xbd::test {

namespace {

// `key = "value"` into [table] unless the configuration sets the key.
std::string with_key(std::string toml, const std::string& table, const std::string& key, const std::string& value) {
  if (toml.find(key) != std::string::npos) return toml;
  const std::string line = key + " = \"" + value + "\"\n";
  const std::string header = "[" + table + "]\n";
  const auto at = toml.find(header);
  if (at != std::string::npos) return toml.insert(at + header.size(), line);
  return toml + "\n" + header + line;
}

// What a sanitizer said in a daemon's log, from its first line: the test
// sees only the guest's side of it (a backend that stopped answering).
std::string sanitizer_report(const std::string& log) {
  for (const char* mark : {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"}) {
    const auto at = log.find(mark);
    if (at == std::string::npos) continue;
    const auto line = log.rfind('\n', at);
    return log.substr(line == std::string::npos ? 0 : line + 1, 4000);
  }
  return {};
}

// Each test's daemon keeps its journals, its image servers' sockets and
// its control socket in the test's directory, whatever the test's
// configuration says otherwise: tests run side by side, with the same
// domain and device numbers.
std::string in_test_directory(std::string toml, const std::filesystem::path& dir) {
  toml = with_key(std::move(toml), "io", "journal-directory", (dir / "journal").string());
  toml = with_key(std::move(toml), "control", "socket", (dir / "control.sock").string());
  return with_key(std::move(toml), "images", "runtime-directory", (dir / "images").string());
}

}  // namespace

sim_env::sim_env(std::string config_toml) {
  xsd_.export_env();
  dir_ = xsd_.dir();
  std::filesystem::create_directories(dir_ / "xensim");
  ::setenv("XENSIM_DIR", (dir_ / "xensim").c_str(), 1);
  config_ = dir_ / "xen-blkbackd.toml";
  std::ofstream(config_) << in_test_directory(config_toml.empty() ? "[log]\nlevel = \"debug\"\n" : config_toml, dir_);
  ts_ = std::make_unique<sim::toolstack>();
  ts_->init_dom0();
}

sim_env::~sim_env() {
  if (daemon_ && daemon_->running()) {
    daemon_->signal(SIGTERM);
    if (!daemon_->wait(std::chrono::seconds(10))) daemon_->signal(SIGKILL);
  }
  daemon_.reset();
  if (const std::string report = sanitizer_report(daemon_log()); !report.empty()) FAIL_CHECK("the daemon: " << report);
  ts_.reset();
  // Keep every run's logs (daemon, frontends, xenstored trace) for later
  // reading: the simulation directory itself goes with the fixture.
  if (const char* keep = std::getenv("XBD_TEST_LOGS")) {
    static int n = 0;
    auto dest = std::filesystem::path(keep) / (std::to_string(::getpid()) + "-" + std::to_string(++n));
    std::error_code ec;
    std::filesystem::create_directories(dest, ec);
    for (const auto& e : std::filesystem::directory_iterator(dir_, ec))
      if (e.is_regular_file() && (e.path().extension() == ".log" || e.path().filename() == "trace"))
        std::filesystem::copy_file(e.path(), dest / e.path().filename(),
                                   std::filesystem::copy_options::overwrite_existing, ec);
  }
}

void sim_env::create_guest(unsigned domid) {
  sim::domain_spec spec;
  spec.domid = domid;
  spec.name = "guest" + std::to_string(domid);
  spec.introduce = [this](unsigned d) { xsd_.introduce_domain(d); };
  ts_->create_domain(spec);
}

std::uint32_t sim_env::add_disk(unsigned domid, const std::string& target, const std::string& vdev,
                                sim::disk_format format) {
  sim::disk_spec d;
  d.domid = domid;
  d.vdev = vdev;
  d.target = target;
  d.format = format;
  return ts_->add_disk(d);
}

std::uint32_t sim_env::add_raw_disk(unsigned domid, const std::filesystem::path& image, bool writable,
                                    bool direct_io_safe, const std::string& vdev) {
  sim::disk_spec d;
  d.domid = domid;
  d.vdev = vdev;
  d.target = image;
  d.writable = writable;
  d.direct_io_safe = direct_io_safe;
  return ts_->add_disk(d);
}

std::filesystem::path sim_env::make_image(const std::string& name, std::uint64_t bytes) {
  auto p = dir_ / name;
  int fd = ::open(p.c_str(), O_CREAT | O_RDWR | O_TRUNC, 0644);
  if (fd >= 0) {
    (void)!::ftruncate(fd, static_cast<off_t>(bytes));
    ::close(fd);
  }
  return p;
}

void sim_env::start_daemon(std::vector<std::string> extra_args, std::vector<std::string> extra_env) {
  std::vector<std::string> argv{XBD_DAEMON_BIN, "--config", config_.string(), "--foreground"};
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  std::vector<std::string> env{"LD_LIBRARY_PATH=" XENSIM_LIBDIR_PATH, "XENSIM_DOMID=0"};
  env.insert(env.end(), extra_env.begin(), extra_env.end());
  daemon_ = std::make_unique<process>(argv, env, dir_ / ("daemon-" + std::to_string(++daemon_runs_) + ".log"));
}

std::string sim_env::daemon_log() const {
  std::string all;
  for (int i = 1; i <= daemon_runs_; ++i) {
    std::ifstream in(dir_ / ("daemon-" + std::to_string(i) + ".log"));
    std::stringstream ss;
    ss << in.rdbuf();
    all += ss.str();
  }
  return all;
}

bool sim_env::log_shows(const std::string& text, std::chrono::milliseconds limit) {
  return eventually([&] { return daemon_log().find(text) != std::string::npos; }, limit);
}

// Generous: answering a full ring of buffered writes on a loaded machine
// (CI runs this beside an ASan build) can take seconds; a real hang cannot
// hide behind it. The systemd unit gives the daemon 60 s too.
std::optional<int> sim_env::stop_daemon() {
  daemon_->signal(SIGTERM);
  return daemon_->wait(std::chrono::seconds(60));
}

std::vector<std::string> sim_env::frontend_env(unsigned domid) const {
  return {"LD_LIBRARY_PATH=" XENSIM_LIBDIR_PATH, "XENSIM_DOMID=" + std::to_string(domid)};
}

frontend_result sim_env::run_frontend(unsigned domid, std::vector<std::string> args, std::chrono::milliseconds limit) {
  std::vector<std::string> argv{BLKFRONT_SIM_BIN, "--domid", std::to_string(domid), "--json"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = run(argv, frontend_env(domid), dir_ / ("frontend-" + std::to_string(++frontend_runs_) + ".log"), limit);
  frontend_result out{r.status, {}, r.output};
  std::istringstream lines(r.output);
  for (std::string l; std::getline(lines, l);)
    if (!l.empty() && l.front() == '{') out.json = l;
  return out;
}

std::unique_ptr<process> sim_env::start_frontend(unsigned domid, std::vector<std::string> args,
                                                 const std::string& tag) {
  std::vector<std::string> argv{BLKFRONT_SIM_BIN, "--domid", std::to_string(domid), "--json"};
  argv.insert(argv.end(), args.begin(), args.end());
  return std::make_unique<process>(argv, frontend_env(domid), dir_ / ("frontend-" + tag + ".log"));
}

std::optional<std::string> sim_env::read(const std::string& path) { return ts_->xs().read(path); }

std::string json_field(const std::string& json, const std::string& key) {
  auto k = "\"" + key + "\":";
  auto pos = json.find(k);
  if (pos == std::string::npos) return {};
  pos += k.size();
  auto end = pos;
  int depth = 0;
  for (; end < json.size(); ++end) {
    char c = json[end];
    if (c == '{' || c == '[') ++depth;
    if ((c == '}' || c == ']') && depth-- == 0) break;
    if (c == ',' && depth == 0) break;
  }
  return json.substr(pos, end - pos);
}

}  // namespace xbd::test
