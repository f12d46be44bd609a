#include "test/integration/hostile_rig.hpp"

#include "test/integration/control_client.hpp"

#include <doctest/doctest.h>

#include <sys/resource.h>
#include <unistd.h>
#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

namespace xbd::test::hostile {

using namespace std::chrono_literals;

// ---------------------------------------------------------------- JSON

const json& json::operator[](std::string_view key) const {
  static const json none;
  for (const auto& [k, v] : members)
    if (k == key) return v;
  return none;
}

const json& json::operator[](std::size_t i) const {
  static const json none;
  return i < items.size() ? items[i] : none;
}

std::uint64_t json::u64() const { return k == kind::number ? std::strtoull(s.c_str(), nullptr, 10) : 0; }

namespace {

class json_parser {
 public:
  explicit json_parser(std::string_view t) : t_(t) {}
  std::optional<json> document() {
    auto v = value();
    skip();
    if (!v || i_ != t_.size()) return std::nullopt;
    return v;
  }

 private:
  void skip() {
    while (i_ < t_.size() && (t_[i_] == ' ' || t_[i_] == '\n' || t_[i_] == '\r' || t_[i_] == '\t')) ++i_;
  }
  bool eat(char c) {
    skip();
    if (i_ < t_.size() && t_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  std::optional<std::string> string() {
    if (!eat('"')) return std::nullopt;
    std::string out;
    while (i_ < t_.size() && t_[i_] != '"') {
      char c = t_[i_++];
      if (c == '\\' && i_ < t_.size()) {
        char e = t_[i_++];
        switch (e) {
          case 'n':
            c = '\n';
            break;
          case 't':
            c = '\t';
            break;
          case 'r':
            c = '\r';
            break;
          case 'b':
            c = '\b';
            break;
          case 'f':
            c = '\f';
            break;
          case 'u':
            // Only what blkfront-sim escapes: control characters.
            c = static_cast<char>(std::strtoul(std::string(t_.substr(i_, 4)).c_str(), nullptr, 16));
            i_ += 4;
            break;
          default:
            c = e;
        }
      }
      out += c;
    }
    if (i_ >= t_.size()) return std::nullopt;
    ++i_;
    return out;
  }
  std::optional<json> value() {
    skip();
    if (i_ >= t_.size()) return std::nullopt;
    json v;
    const char c = t_[i_];
    if (c == '{') {
      ++i_;
      v.k = json::kind::object;
      if (eat('}')) return v;
      do {
        auto key = string();
        if (!key || !eat(':')) return std::nullopt;
        auto m = value();
        if (!m) return std::nullopt;
        v.members.emplace_back(std::move(*key), std::move(*m));
      } while (eat(','));
      if (!eat('}')) return std::nullopt;
    } else if (c == '[') {
      ++i_;
      v.k = json::kind::array;
      if (eat(']')) return v;
      do {
        auto m = value();
        if (!m) return std::nullopt;
        v.items.push_back(std::move(*m));
      } while (eat(','));
      if (!eat(']')) return std::nullopt;
    } else if (c == '"') {
      auto s = string();
      if (!s) return std::nullopt;
      v.k = json::kind::string;
      v.s = std::move(*s);
    } else if (t_.substr(i_, 4) == "true" || t_.substr(i_, 5) == "false") {
      v.k = json::kind::boolean;
      v.b = t_[i_] == 't';
      i_ += v.b ? 4 : 5;
    } else if (t_.substr(i_, 4) == "null") {
      i_ += 4;
    } else {
      const std::size_t start = i_;
      while (i_ < t_.size() && (std::isdigit(static_cast<unsigned char>(t_[i_])) || t_[i_] == '-' || t_[i_] == '+' ||
                                t_[i_] == '.' || t_[i_] == 'e' || t_[i_] == 'E'))
        ++i_;
      if (i_ == start) return std::nullopt;
      v.k = json::kind::number;
      v.s = std::string(t_.substr(start, i_ - start));
      v.n = std::strtod(v.s.c_str(), nullptr);
    }
    return v;
  }
  std::string_view t_;
  std::size_t i_ = 0;
};

// The last line of `output` that starts with '{'.
std::string summary_line(const std::string& output) {
  std::string found;
  std::istringstream lines(output);
  for (std::string l; std::getline(lines, l);)
    if (!l.empty() && l.front() == '{') found = l;
  return found;
}

// xvdb, xvdc, ... xvdz, xvdba, ...
std::string vdev_name(unsigned n) {
  std::string s;
  for (unsigned v = n + 1;; v /= 26) {
    s.insert(s.begin(), static_cast<char>('a' + v % 26));
    if (v < 26) break;
  }
  return "xvd" + s;
}

double env_number(const char* name, double fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtod(v, nullptr) : fallback;
}

constexpr unsigned victim_domid = 5;

// The victim's and the daemon's priority, and the hostile guests'.
int victim_nice() { return static_cast<int>(env_number("XBD_HOSTILE_NICE_VICTIM", -10)); }
int guest_nice() { return static_cast<int>(env_number("XBD_HOSTILE_NICE_GUEST", 5)); }
constexpr const char* victim_prefix = "[d5/51712 xvda] ";

}  // namespace

std::optional<json> parse_json(std::string_view text) { return json_parser(text).document(); }

std::optional<response> guest_run::last(std::uint64_t id, unsigned queue) const {
  for (auto it = responses.rbegin(); it != responses.rend(); ++it)
    if (it->id == id && it->queue == queue) return *it;
  return std::nullopt;
}

bool window::clean() const {
  return status == 0 && summary["ok"].b && summary["errors"]["io"].integer() == 0 &&
         summary["errors"]["protocol"].integer() == 0 && summary["errors"]["eopnotsupp"].integer() == 0 &&
         summary["verify"]["mismatches"].integer() == 0 && !summary["verify"].is_null() && iops > 0;
}

std::string disconnect_line(std::uint64_t requests, std::uint64_t read, std::uint64_t written, std::uint64_t rejected,
                            std::uint64_t failed) {
  return "disconnected after " + std::to_string(requests) + " requests (" + std::to_string(read) + " bytes read, " +
         std::to_string(written) + " written, " + std::to_string(rejected) + " rejected, " + std::to_string(failed) +
         " failed)";
}

// ---------------------------------------------------------------- the rig

rig& rig::get() {
  static std::unique_ptr<rig> the;
  if (!the) the.reset(new rig());
  return *the;
}

rig::rig() {
  min_window_ = std::chrono::milliseconds(static_cast<long>(env_number("XBD_HOSTILE_WINDOW_MS", 1000)));
  // Four queues (a vbd's rings stop one at a time), indirect requests of up
  // to two pages of descriptors, a buffer budget the memory attacker can
  // exhaust quickly, every line of the log. Every request of a
  // direct-io-safe vbd runs zero-copy on the guest's mapped pages, and a
  // ring keeps few persistent grants, so that the hostile guests reach
  // each way the daemon moves data, and its limits.
  env_ = std::make_unique<sim_env>(
      "[rings]\nmax-queues = 4\nmax-indirect-segments = 1024\n[io]\nbuffer-memory = \"64MiB\"\n"
      "zero-copy = true\nzero-copy-min-bytes = \"0\"\npersistent-grants-per-ring = " +
      std::to_string(persistent_cap) + "\n[log]\nlevel = \"debug\"\n");
  env_->create_guest(victim_domid);
  env_->create_guest(6);
  xbd::sim::disk_spec d;
  d.domid = victim_domid;
  d.vdev = "xvda";
  d.target = env_->make_image("victim.img", 64 << 20);
  d.direct_io_safe = true;  // with its persistent grants: its data on mapped pages
  env_->toolstack().add_disk(d);
  env_->start_daemon();
  if (!eventually([&] { return log().find(std::string(victim_prefix) + "state ") != std::string::npos; }, 20s))
    throw std::runtime_error("the daemon did not take up the victim's vbd:\n" + env_->daemon_log());
  // Every thread of the daemon (they exist once it serves a vbd; a thread
  // started later inherits its creator's priority).
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(env_->daemon().pid()) + "/task", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
    (void)::setpriority(PRIO_PROCESS, static_cast<id_t>(std::stoul(it->path().filename().string())), victim_nice());
  // The victim alone, three times: the best is the reference. A window the
  // machine's other work slowed would make the suite lenient; one it
  // slows later is what the fresh solo windows of a case are for.
  std::vector<double> solo;
  for (int i = 0; i < 3; ++i) {
    start_victim("solo-" + std::to_string(i));
    window w = stop_victim(min_window_);
    if (!w.clean()) throw std::runtime_error("the victim alone is not clean: " + w.json_text);
    solo.push_back(w.iops);
  }
  std::sort(solo.begin(), solo.end());
  solo_iops_ = solo[2];
  std::cout << "hostile: victim solo " << solo[0] << " / " << solo[1] << " / " << solo[2]
            << " IOPS (min/median/max of three " << min_window_.count() << " ms windows; the max is the reference)"
            << std::endl;
}

rig::~rig() {
  if (victim_) {
    victim_->signal(SIGINT);
    (void)victim_->wait(30s);
  }
  if (!ratios_.empty()) {
    auto sorted = ratios_;
    std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.second < b.second; });
    std::cout << "hostile: victim throughput ratios over " << sorted.size() << " cases: min " << sorted.front().second
              << " (" << sorted.front().first << "), median " << sorted[sorted.size() / 2].second << ", max "
              << sorted.back().second << std::endl;
  }
}

const std::string& rig::log() {
  const auto path = env_->dir() / "daemon-1.log";
  std::ifstream in(path, std::ios::binary);
  if (in) {
    in.seekg(static_cast<std::streamoff>(log_read_));
    std::string more((std::istreambuf_iterator<char>(in)), {});
    // Only whole lines: a line being written is taken next time.
    const auto nl = more.rfind('\n');
    if (nl != std::string::npos) {
      log_.append(more, 0, nl + 1);
      log_read_ += nl + 1;
    }
  }
  return log_;
}

namespace {

template <class F>
void each_line(const std::string& log, const std::string& prefix, F f) {
  for (auto pos = log.find(prefix); pos != std::string::npos; pos = log.find(prefix, pos + 1)) {
    const auto bol = log.rfind('\n', pos);
    const auto start = bol == std::string::npos ? 0 : bol + 1;
    const auto eol = log.find('\n', pos);
    if (!f(std::string_view(log).substr(start, eol - start))) return;
    if (eol == std::string::npos) return;
    pos = eol;
  }
}

}  // namespace

bool rig::log_shows(const vbd_ref& v, std::string_view text, std::chrono::milliseconds limit) {
  return eventually(
      [&] {
        bool found = false;
        each_line(log(), v.prefix, [&](std::string_view l) {
          found = l.find(text) != std::string_view::npos;
          return !found;
        });
        return found;
      },
      limit);
}

std::size_t rig::log_count(const vbd_ref& v, std::string_view text) {
  std::size_t n = 0;
  each_line(log(), v.prefix, [&](std::string_view l) {
    n += l.find(text) != std::string_view::npos;
    return true;
  });
  return n;
}

std::string rig::lines_of(const vbd_ref& v, std::size_t max) {
  std::string out;
  each_line(log(), v.prefix, [&](std::string_view l) {
    out += l;
    out += '\n';
    return true;
  });
  return out.size() > max ? "...\n" + out.substr(out.size() - max) : out;
}

vbd_ref rig::add_vbd(const vbd_options& o) {
  vbd_ref v;
  v.domid = o.domid;
  v.vdev = vdev_name(++vdevs_);
  v.target = o.target.empty() ? env_->make_image(v.vdev + ".img", o.bytes) : o.target;
  xbd::sim::disk_spec d;
  d.domid = o.domid;
  d.vdev = v.vdev;
  d.target = v.target;
  d.writable = o.writable;
  d.discard_enable = o.discard_enable;
  d.direct_io_safe = o.direct_io_safe;
  v.devid = env_->toolstack().add_disk(d);
  v.backend = sim::toolstack::backend_path(0, "qdisk", o.domid, v.devid);
  v.frontend = sim::toolstack::frontend_vbd_path(o.domid, v.devid);
  v.prefix = "[d" + std::to_string(o.domid) + "/" + std::to_string(v.devid) + " " + v.vdev + "] ";
  std::error_code ec;
  v.sectors = o.target.empty() ? o.bytes / 512 : std::filesystem::file_size(v.target, ec) / 512;
  if (!eventually([&] { return env_->read(v.backend + "/state") == xenbus::init_wait; }, 20s))
    throw std::runtime_error(v.prefix + "never reached InitWait:\n" + lines_of(v));
  return v;
}

bool rig::remove_vbd(const vbd_ref& v) {
  auto res = env_->toolstack().remove_disk(v.domid, v.devid, {10s, sim::remove_mode::remove});
  return res.ok();
}

guest_run rig::run_guest(unsigned domid, std::vector<std::string> args, std::chrono::milliseconds limit, bool nice) {
  std::vector<std::string> argv;
  if (nice) argv = {"/usr/bin/nice", "-n", std::to_string(guest_nice())};
  argv.insert(argv.end(), {BLKFRONT_SIM_BIN, "--domid", std::to_string(domid), "--json"});
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = run(argv, env_->frontend_env(domid), env_->dir() / (unique("guest-") + ".log"), limit);
  guest_run g;
  g.status = r.status;
  g.output = r.output;
  g.json_text = summary_line(r.output);
  if (auto j = parse_json(g.json_text)) g.summary = std::move(*j);
  const json& raw = g.summary["raw"];
  for (const auto& e : raw["responses"].items)
    g.responses.push_back({static_cast<unsigned>(e["queue"].integer()), e["id"].u64(),
                           static_cast<int>(e["op"].integer()), static_cast<int>(e["status"].integer())});
  for (const auto& e : raw["failures"].items) g.failures.push_back(e.s);
  for (const auto& e : raw["anomalies"].items) g.anomalies.push_back(e.s);
  return g;
}

std::unique_ptr<process> rig::start_guest(unsigned domid, std::vector<std::string> args, const std::string& tag) {
  std::vector<std::string> argv{"/usr/bin/nice",  "-n",      std::to_string(guest_nice()),
                                BLKFRONT_SIM_BIN, "--domid", std::to_string(domid),
                                "--json"};
  argv.insert(argv.end(), args.begin(), args.end());
  return std::make_unique<process>(argv, env_->frontend_env(domid), env_->dir() / (unique(tag + "-") + ".log"));
}

std::filesystem::path rig::script_file(const std::string& text) {
  auto p = env_->dir() / (unique("script-") + ".txt");
  std::ofstream(p) << text;
  return p;
}

namespace {

run_result helper(sim_env& env, std::vector<std::string> args, unsigned domid = 0) {
  args.insert(args.begin(), XBD_HOSTILE_XEN_BIN);
  return run(args, {"XENSIM_DOMID=" + std::to_string(domid)}, env.dir() / "hostile-xen.log", 20s);
}

}  // namespace

std::vector<std::uint32_t> rig::grant(unsigned domid, unsigned to, bool writable, unsigned count) {
  auto r = helper(*env_,
                  {"grant", std::to_string(domid), std::to_string(to), writable ? "rw" : "ro", std::to_string(count)});
  std::vector<std::uint32_t> refs;
  std::istringstream in(r.output);
  for (std::uint32_t ref; in >> ref;) refs.push_back(ref);
  if (r.status != 0 || refs.size() != count) throw std::runtime_error("xbd-hostile-xen grant: " + r.output);
  return refs;
}

int rig::revoke(unsigned domid, std::uint32_t ref) {
  return helper(*env_, {"revoke", std::to_string(domid), std::to_string(ref)}).status;
}

bool rig::write_granted(unsigned domid, std::uint32_t ref, unsigned offset, const std::string& hex) {
  return helper(*env_, {"write", std::to_string(domid), std::to_string(ref), std::to_string(offset), hex}).status == 0;
}

unsigned rig::grant_pins(unsigned domid, std::uint32_t ref) {
  auto r = helper(*env_, {"status", std::to_string(domid), std::to_string(ref)});
  std::istringstream in(r.output);
  unsigned flags = 0, ro = 0, rw = 0;
  if (r.status != 0 || !(in >> flags >> ro >> rw)) throw std::runtime_error("xbd-hostile-xen status: " + r.output);
  return ro + rw;
}

std::pair<std::uint32_t, std::uint32_t> rig::retarget(unsigned domid, std::uint32_t ref) {
  auto r = helper(*env_, {"retarget", std::to_string(domid), std::to_string(ref)});
  std::istringstream in(r.output);
  std::uint32_t old = 0, now = 0;
  if (r.status != 0 || !(in >> old >> now)) throw std::runtime_error("xbd-hostile-xen retarget: " + r.output);
  return {old, now};
}

std::string rig::peek(unsigned domid, std::uint32_t frame, unsigned offset, unsigned len) {
  auto r = helper(*env_,
                  {"peek", std::to_string(domid), std::to_string(frame), std::to_string(offset), std::to_string(len)});
  std::istringstream in(r.output);
  std::string hex;
  if (r.status != 0 || !(in >> hex)) throw std::runtime_error("xbd-hostile-xen peek: " + r.output);
  return hex;
}

json rig::grant_stats(const vbd_ref& v) {
  auto r = ctl(*env_, {"stats", "--json", std::to_string(v.domid) + "/" + std::to_string(v.devid)});
  auto doc = parse_json(r.out);
  if (r.status != 0 || !doc || (*doc)["vbds"].size() != 1)
    throw std::runtime_error("xen-blkbackctl stats --json: " + r.out);
  return (*doc)["vbds"][std::size_t{0}]["grants"];
}

std::pair<unsigned, std::unique_ptr<process>> rig::unbound_port(unsigned domid, unsigned remote) {
  auto p = std::make_unique<process>(
      std::vector<std::string>{XBD_HOSTILE_XEN_BIN, "port", std::to_string(remote), "120"},
      std::vector<std::string>{"XENSIM_DOMID=" + std::to_string(domid)}, env_->dir() / (unique("port-") + ".log"));
  unsigned port = 0;
  if (!eventually(
          [&] {
            std::istringstream in(p->output());
            return static_cast<bool>(in >> port);
          },
          10s))
    throw std::runtime_error("xbd-hostile-xen port: " + p->output());
  return {port, std::move(p)};
}

std::size_t rig::daemon_fds() { return open_descriptors(env_->daemon().pid()); }
std::string rig::daemon_fd_kinds() { return descriptor_kinds(env_->daemon().pid()); }
std::size_t rig::daemon_rss_kib() { return resident_kib(env_->daemon().pid()); }

double rig::daemon_cpu_share(std::chrono::milliseconds span) {
  auto ticks = [&]() -> double {
    std::ifstream in("/proc/" + std::to_string(env_->daemon().pid()) + "/stat");
    std::string stat((std::istreambuf_iterator<char>(in)), {});
    // Fields after the command's closing parenthesis: state is the 3rd field,
    // utime the 14th, stime the 15th.
    std::istringstream rest(stat.substr(stat.rfind(')') + 2));
    std::string field;
    double total = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i)
      if (i >= 14) total += std::strtod(field.c_str(), nullptr);
    return total;
  };
  const double before = ticks();
  const auto start = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(span);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return (ticks() - before) / static_cast<double>(::sysconf(_SC_CLK_TCK)) / seconds;
}

void rig::start_victim(const std::string& tag) {
  if (victim_) return;
  const vbd_ref victim{victim_domid, 51712, "xvda", {}, {}, {}, victim_prefix, 0};
  const std::size_t before = log_count(victim, "] connected: ");
  std::string safe = tag;
  for (char& c : safe)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '-';
  std::vector<std::string> argv{"/usr/bin/nice",  "-n",        std::to_string(victim_nice()),
                                BLKFRONT_SIM_BIN, "--domid",   std::to_string(victim_domid),
                                "--json",         "--devid",   "51712",
                                "--rw",           "randrw",    "--bs",
                                "4096",           "--qd",      "8",
                                "--verify",       "--runtime", "3600",
                                "--timeout",      "10"};
  argv.push_back("--persistent");  // its data on the pages the daemon keeps mapped
  victim_ = std::make_unique<process>(argv, env_->frontend_env(victim_domid),
                                      env_->dir() / ("victim-" + unique("") + "-" + safe.substr(0, 60) + ".log"));
  if (!eventually([&] { return log_count(victim, "] connected: ") > before || !victim_->running(); }, 30s) ||
      !victim_->running())
    throw std::runtime_error("the victim did not connect: " + victim_->output());
  victim_started_ = std::chrono::steady_clock::now();
}

void rig::warm_victim() {
  if (!victim_) return;
  const auto until = victim_started_ + 500ms;
  while (std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(10ms);
}

window rig::stop_victim(std::chrono::milliseconds min_length) {
  window w;
  if (!victim_) return w;
  const auto until = victim_started_ + min_length;
  while (std::chrono::steady_clock::now() < until && victim_->running()) std::this_thread::sleep_for(10ms);
  victim_->signal(SIGINT);
  auto st = victim_->wait(30s);
  w.status = st ? *st : -1;
  w.json_text = summary_line(victim_->output());
  if (auto j = parse_json(w.json_text)) w.summary = std::move(*j);
  w.iops = w.summary["iops"].num();
  w.seconds = w.summary["runtime_s"].num();
  victim_.reset();
  return w;
}

// ---------------------------------------------------------------- a case

hostile_case::hostile_case(std::string name) : rig_(rig::get()), name_(std::move(name)) { rig_.start_victim(name_); }

hostile_case::~hostile_case() {
  if (finished_) return;
  for (const auto& v : vbds_) (void)rig_.remove_vbd(v);
  (void)rig_.stop_victim(0ms);
}

vbd_ref hostile_case::vbd(const vbd_options& o) {
  vbds_.push_back(rig_.add_vbd(o));
  return vbds_.back();
}

void hostile_case::forget(const vbd_ref& v) {
  std::erase_if(vbds_, [&](const vbd_ref& x) { return x.domid == v.domid && x.devid == v.devid; });
}

guest_run hostile_case::script(const vbd_ref& v, const std::string& text, std::vector<std::string> extra_args) {
  std::vector<std::string> args{"--devid",  std::to_string(v.devid),         "--rw",      "none",
                                "--script", rig_.script_file(text).string(), "--timeout", "10"};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  return rig_.run_guest(v.domid, args);
}

namespace {

std::string status_name(int s) {
  return s == rsp::okay ? "okay" : s == rsp::error ? "error" : s == rsp::eopnotsupp ? "eopnotsupp" : std::to_string(s);
}

}  // namespace

guest_run hostile_case::requests(const vbd_ref& v, const std::string& body,
                                 const std::vector<std::pair<std::uint64_t, int>>& want,
                                 std::vector<std::string> extra_args) {
  std::string text = body + "push\nwait " + std::to_string(want.size()) + " 10000\n";
  for (const auto& [id, st] : want) text += "expect " + std::to_string(id) + " " + status_name(st) + "\n";
  auto r = script(v, text, std::move(extra_args));
  INFO("script:\n" << text);
  INFO("blkfront-sim:\n" << r.output);
  CHECK(r.status == 0);
  CHECK(r.failures.empty());
  for (const auto& [id, st] : want) {
    auto got = r.last(id);
    INFO("request " << id);
    REQUIRE(got.has_value());
    CHECK(got->status == st);
  }
  return r;
}

void hostile_case::expect_log(const vbd_ref& v, const std::string& text) {
  const bool shown = rig_.log_shows(v, text);
  INFO("daemon log of " << v.prefix << ":\n" << rig_.lines_of(v));
  CHECK_MESSAGE(shown, "no line with: " << text);
}

void hostile_case::expect_no_log(const vbd_ref& v, const std::string& text) {
  INFO("daemon log of " << v.prefix << ":\n" << rig_.lines_of(v));
  CHECK_MESSAGE(rig_.log_count(v, text) == 0, "a line with: " << text);
}

void hostile_case::finish() {
  finished_ = true;
  for (const auto& v : vbds_) {
    INFO("unplugging " << v.prefix);
    CHECK(rig_.remove_vbd(v));
  }
  vbds_.clear();
  window_ = rig_.stop_victim(rig_.min_window());
}

bool hostile_case::verdict(bool last_attempt) {
  if (!finished_) {  // skipped
    for (const auto& v : vbds_) (void)rig_.remove_vbd(v);
    vbds_.clear();
    (void)rig_.stop_victim(0ms);
    finished_ = true;
    return true;
  }
  const window& w = *window_;
  INFO("victim: " << w.json_text);
  CHECK_MESSAGE(w.clean(), "the victim's verified workload saw an error, a mismatch or a stall");
  const double min_ratio = env_number("XBD_HOSTILE_MIN_RATIO", 0.5);
  double ratio = rig_.solo_iops() > 0 ? w.iops / rig_.solo_iops() : 0;
  std::ostringstream line;
  line << "hostile: " << name_ << ": victim " << static_cast<long>(w.iops) << " IOPS over " << w.seconds << " s, ratio "
       << ratio;
  if (ratio < min_ratio) {
    // The machine or the hostile guest? A solo window now tells: a machine
    // that other work slows down slows both, a hostile guest only the
    // case's window (its case is over when the solo window runs).
    rig_.start_victim(name_ + " (solo again)");
    const window s = rig_.stop_victim(rig_.min_window());
    if (s.clean() && s.iops > 0) {
      ratio = std::max(ratio, w.iops / s.iops);
      line << "; against a solo window right after (" << static_cast<long>(s.iops) << " IOPS): " << w.iops / s.iops;
    }
  }
  if (ratio < min_ratio && !last_attempt) {
    std::cout << line.str() << "; the case runs again" << std::endl;
    return false;
  }
  std::cout << line.str() << std::endl;
  rig_.record_ratio(name_, ratio);
  CHECK_MESSAGE(ratio >= min_ratio, "the victim kept less than " << min_ratio << " of its solo throughput");
  return true;
}

void run_hostile_case(const std::string& name, void (*body)(hostile_case&)) {
  for (int attempt = 1;; ++attempt) {
    hostile_case c(attempt == 1 ? name : name + " (again)");
    body(c);
    if (c.verdict(attempt == 2)) return;
  }
}

}  // namespace xbd::test::hostile
