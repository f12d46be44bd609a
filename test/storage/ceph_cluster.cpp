#include "test/storage/ceph_cluster.hpp"

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <random>
#include <regex>
#include <sstream>
#include <stdexcept>

namespace xbd::test {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

struct ceph_cluster::scratch_dir {
  fs::path path;
  std::atomic<unsigned> next{0};
  // In the cluster's directory when possible: `scripts/ceph-cluster stop`
  // removes it even after a test killed before its destructors ran.
  explicit scratch_dir(const fs::path& conf) {
    std::error_code ignored;
    fs::create_directories(conf.parent_path() / "clients", ignored);
    for (const auto& dir : {conf.parent_path() / "clients", fs::temp_directory_path()}) {
      std::string tmpl = (dir / "xbd-ceph-client-XXXXXX").string();
      if (::mkdtemp(tmpl.data())) {
        path = tmpl;
        return;
      }
    }
    throw std::runtime_error("mkdtemp failed");
  }
  ~scratch_dir() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
};

namespace {

// `name` in $PATH (process.hpp's run() takes a path, not a name).
fs::path find_tool(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/bin:/bin");
  for (std::string d; std::getline(dirs, d, ':');)
    if (!d.empty() && ::access((fs::path(d) / name).c_str(), X_OK) == 0) return fs::path(d) / name;
  throw std::runtime_error(name + " not found in PATH (./scripts/install-deps installs ceph-common)");
}

std::string describe(const std::string& what, const run_result& r) {
  return what + (r.status < 0 ? ": killed at its time limit" : ": exit status " + std::to_string(r.status)) + "\n" +
         r.output;
}

std::string unique_suffix() {
  static std::atomic<unsigned> counter{0};
  static const unsigned salt = std::random_device{}() & 0xffff;
  std::stringstream s;
  s << ::getpid() << '-' << std::hex << salt << '-' << std::dec << counter++;
  return s.str();
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& a : v) s += (s.empty() ? "" : " ") + a;
  return s;
}

}  // namespace

ceph_cluster ceph_cluster::from_env() {
  const char* conf = std::getenv("XBD_CEPH_CONF");
  if (!conf || !*conf)
    throw std::runtime_error(
        "XBD_CEPH_CONF is not set: run the rbd tests through ctest, which starts the cluster "
        "(scripts/ceph-cluster)");
  if (!fs::exists(conf))
    throw std::runtime_error(std::string("XBD_CEPH_CONF=") + conf +
                             " does not exist: the cluster is not running (did ctest's \"ceph: start\" fail? "
                             "run the rbd tests through ctest, which starts it with scripts/ceph-cluster)");
  return ceph_cluster(conf);
}

ceph_cluster::ceph_cluster(fs::path conf) : conf_(std::move(conf)), scratch_(std::make_shared<scratch_dir>(conf_)) {}

const fs::path& ceph_cluster::scratch() const { return scratch_->path; }

fs::path ceph_cluster::output_file() const { return scratch() / ("out." + std::to_string(scratch_->next++)); }

run_result ceph_cluster::run_tool(const std::string& tool, const fs::path& conf, const std::vector<std::string>& args,
                                  std::chrono::milliseconds limit) const {
  std::vector<std::string> argv = {find_tool(tool).string(), "-c", conf.string()};
  argv.insert(argv.end(), args.begin(), args.end());
  const auto out = output_file();
  auto r = run(std::move(argv), {"CEPH_CONF=" + conf.string()}, out, limit);
  std::error_code ignored;
  fs::remove(out, ignored);
  return r;
}

run_result ceph_cluster::try_rbd(const std::vector<std::string>& args, std::chrono::milliseconds limit) const {
  return run_tool("rbd", conf_, args, limit);
}

std::string ceph_cluster::rbd(const std::vector<std::string>& args, std::chrono::milliseconds limit) const {
  auto r = run_tool("rbd", conf_, args, limit);
  if (r.status != 0) throw std::runtime_error(describe("rbd " + joined(args), r));
  return r.output;
}

std::string ceph_cluster::ceph(const std::vector<std::string>& args, std::chrono::milliseconds limit) const {
  // The CLI's own bound on reaching the monitor, below ours.
  std::vector<std::string> a = {
      "--connect-timeout",
      std::to_string(std::max<long>(1, std::chrono::duration_cast<std::chrono::seconds>(limit).count() - 1))};
  a.insert(a.end(), args.begin(), args.end());
  auto r = run_tool("ceph", conf_, a, limit);
  if (r.status != 0) throw std::runtime_error(describe("ceph " + joined(args), r));
  return r.output;
}

std::string ceph_cluster::unique_name(const std::string& prefix) { return prefix + "-" + unique_suffix(); }

std::string ceph_cluster::create_image(std::uint64_t mib, const std::string& prefix) const {
  const std::string name = unique_name(prefix);
  rbd({"create", "--size", std::to_string(mib) + "M", std::string(pool) + "/" + name});
  return name;
}

void ceph_cluster::remove_image(const std::string& name) const {
  const std::string spec = std::string(pool) + "/" + name;
  auto snaps = try_rbd({"snap", "ls", spec});
  if (snaps.status == 0 && snaps.output.find("SNAPID") != std::string::npos)
    rbd({"snap", "purge", "--no-progress", spec}, 60s);
  rbd({"rm", "--no-progress", spec}, 60s);
}

bool ceph_cluster::image_exists(const std::string& name) const {
  auto r = try_rbd({"info", std::string(pool) + "/" + name});
  if (r.status == 0) return true;
  if (r.output.find("No such file or directory") != std::string::npos) return false;
  throw std::runtime_error(describe("rbd info " + name, r));
}

std::uint64_t ceph_cluster::image_size(const std::string& name) const {
  const auto out = rbd({"info", "--format", "json", std::string(pool) + "/" + name});
  std::smatch m;
  if (!std::regex_search(out, m, std::regex("\"size\":\\s*([0-9]+)")))
    throw std::runtime_error("rbd info --format json: no size in\n" + out);
  return std::stoull(m[1].str());
}

void ceph_cluster::resize_image(const std::string& name, std::uint64_t mib) const {
  rbd({"resize", "--no-progress", "--allow-shrink", "--size", std::to_string(mib) + "M",
       std::string(pool) + "/" + name});
}

void ceph_cluster::snap_create(const std::string& name, const std::string& snap) const {
  rbd({"snap", "create", "--no-progress", std::string(pool) + "/" + name + "@" + snap});
}

void ceph_cluster::export_image(const std::string& name_or_snap, const fs::path& to) const {
  std::error_code ignored;
  fs::remove(to, ignored);
  rbd({"export", "--no-progress", std::string(pool) + "/" + name_or_snap, to.string()}, 120s);
}

void ceph_cluster::import_image(const fs::path& from, const std::string& name) const {
  rbd({"import", "--no-progress", from.string(), std::string(pool) + "/" + name}, 120s);
}

std::vector<std::string> ceph_cluster::watchers(const std::string& name) const {
  const auto out = rbd({"status", std::string(pool) + "/" + name});
  std::vector<std::string> w;
  std::stringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    const auto at = line.find("watcher=");
    if (at != std::string::npos) w.push_back(line.substr(at));
  }
  return w;
}

void ceph_cluster::lock_add(const std::string& name, const std::string& id) const {
  rbd({"lock", "add", std::string(pool) + "/" + name, id});
}

std::vector<ceph_cluster::lock> ceph_cluster::locks(const std::string& name) const {
  // "There is 1 exclusive lock on this image.\nLocker  ID  Address\nclient.4150  x  127.0.0.1:0/1\n"
  const auto out = rbd({"lock", "ls", std::string(pool) + "/" + name});
  std::vector<lock> l;
  std::stringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (!line.starts_with("client.")) continue;
    std::stringstream fields(line);
    lock k;
    fields >> k.locker >> k.id >> k.address;
    l.push_back(k);
  }
  return l;
}

void ceph_cluster::lock_remove(const std::string& name, const lock& l) const {
  rbd({"lock", "rm", std::string(pool) + "/" + name, l.id, l.locker});
}

fs::path ceph_cluster::client_conf(const std::string& id, const fs::path& keyring) const {
  // conf() with the [global] keyring line (the first) naming `keyring`.
  std::ifstream in(conf_);
  if (!in) throw std::runtime_error("cannot read " + conf_.string());
  std::stringstream out;
  bool replaced = false;
  for (std::string line; std::getline(in, line);) {
    if (!replaced && line.starts_with("keyring =")) {
      line = "keyring = " + keyring.string();
      replaced = true;
    }
    out << line << '\n';
  }
  if (!replaced) throw std::runtime_error(conf_.string() + " has no keyring line");
  const auto path = scratch() / ("ceph." + id + "." + unique_suffix() + ".conf");
  std::ofstream(path) << out.str();
  return path;
}

ceph_cluster::client ceph_cluster::restricted_client(const std::string& id,
                                                     const std::vector<std::string>& caps) const {
  const auto keyring = scratch() / ("client." + id + "." + unique_suffix() + ".keyring");
  std::vector<std::string> args = {"auth", "get-or-create", "client." + id};
  args.insert(args.end(), caps.begin(), caps.end());
  args.insert(args.end(), {"-o", keyring.string()});
  ceph(args);
  return {id, keyring, client_conf(id, keyring)};
}

ceph_cluster::client ceph_cluster::unknown_key_client(const std::string& id) const {
  const auto out = output_file();
  auto r = run({find_tool("ceph-authtool").string(), "--gen-print-key"}, {}, out, 10s);
  std::error_code ignored;
  fs::remove(out, ignored);
  std::string key = r.output.substr(0, r.output.find('\n'));
  if (r.status != 0 || key.empty()) throw std::runtime_error(describe("ceph-authtool --gen-print-key", r));
  const auto keyring = scratch() / ("client." + id + "." + unique_suffix() + ".bad.keyring");
  std::ofstream(keyring) << "[client." << id << "]\n\tkey = " << key << "\n";
  return {id, keyring, client_conf(id, keyring)};
}

run_result ceph_cluster::rbd_as(const client& c, const std::vector<std::string>& args,
                                std::chrono::milliseconds limit) const {
  std::vector<std::string> a = {"--id", c.id};
  a.insert(a.end(), args.begin(), args.end());
  return run_tool("rbd", c.conf, a, limit);
}

run_result ceph_cluster::run_script(const std::vector<std::string>& args, std::chrono::milliseconds limit) const {
  const char* script = std::getenv("XBD_CEPH_SCRIPT");
  if (!script || !*script)
    throw std::runtime_error(
        "XBD_CEPH_SCRIPT is not set: run the rbd tests through ctest (it names scripts/ceph-cluster)");
  std::vector<std::string> argv = {script};
  argv.insert(argv.end(), args.begin(), args.end());
  const auto out = output_file();
  auto r = run(std::move(argv), {}, out, limit);
  std::error_code ignored;
  fs::remove(out, ignored);
  return r;
}

void ceph_cluster::osd_stop() const {
  // A memstore OSD saves its data on SIGTERM: seconds per GiB written. The
  // script's own bound is 60 s.
  auto r = run_script({"osd-stop", conf_.parent_path().string()}, 90s);
  if (r.status != 0) throw std::runtime_error(describe("ceph-cluster osd-stop", r));
}

void ceph_cluster::osd_start() const {
  auto r = run_script({"osd-start", conf_.parent_path().string()}, 90s);
  if (r.status != 0) throw std::runtime_error(describe("ceph-cluster osd-start", r));
}

bool ceph_cluster::running() const { return run_script({"status", conf_.parent_path().string()}, 10s).status == 0; }

}  // namespace xbd::test
