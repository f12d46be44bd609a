#include "blkback/control/home.hpp"

#include <unistd.h>

#include <fstream>
#include <sstream>
#include <vector>

namespace xbd::blkback {

using asio_xen::error_code;

namespace {

std::string home_of(unsigned domid) { return "/local/domain/" + std::to_string(domid); }
std::string claim_path(unsigned domid) { return home_of(domid) + "/data/xen-blkbackd"; }

bool is_enoent(const error_code& ec) { return ec == boost::system::errc::no_such_file_or_directory; }

// A process's state letter and start time (clock ticks since boot), from
// /proc/<pid>/stat: the fields after the command name, which may itself
// hold spaces and parentheses.
struct proc_stat {
  char state = '?';
  std::string start;
};
std::optional<proc_stat> read_stat(const std::string& pid) {
  std::ifstream in("/proc/" + pid + "/stat");
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  const auto close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream rest(line.substr(close + 1));
  std::vector<std::string> f;
  for (std::string w; rest >> w;) f.push_back(w);
  if (f.size() < 20) return std::nullopt;
  return proc_stat{f[0].empty() ? '?' : f[0][0], f[19]};
}

std::string my_claim() {
  const std::string pid = std::to_string(::getpid());
  auto st = read_stat(pid);
  return pid + " " + (st ? st->start : std::string("0"));
}

// A claim is live while its process runs: same pid, same start time (a pid
// reused since is another process), not a zombie.
bool claim_is_live(const std::string& claim) {
  std::istringstream in(claim);
  std::string pid, start;
  if (!(in >> pid >> start)) return false;
  auto st = read_stat(pid);
  return st && st->state != 'Z' && st->state != 'X' && st->start == start;
}

}  // namespace

unsigned resolve_own_domid(asio_xen::xenstore& xs, const settings& cfg, logger& lg) {
  if (cfg.domid) return *cfg.domid;
  // A relative path is resolved against our own home by xenstored.
  auto id = xs.read<unsigned>("domid");
  if (id) return *id;
  XBD_LOG(lg, info) << "no domid key in our xenstore home (" << id.error().message() << "); assuming dom0";
  return 0;
}

std::optional<std::string> check_home(asio_xen::xenstore& xs, unsigned domid, const settings& cfg) {
  const std::string home = home_of(domid);
  for (const auto& type : cfg.backend_types) {
    std::string dir = home + "/backend/";
    dir += type;
    auto names = xs.directory(dir);
    if (!names && !is_enoent(names.error())) {
      std::string m = "cannot read " + dir + " (" + names.error().message() + "): this daemon's xenstore connection ";
      m += "is not domain " + std::to_string(domid) + "'s; run it in that domain, or correct [backend] domid";
      return m;
    }
  }
  if (domid == 0) return std::nullopt;
  // libxl (libxl__domain_make) creates <home>/device-model and <home>/libxl,
  // owned by the domain, only when its config has driver_domain=1.
  const std::string dm = home + "/device-model";
  auto perms = xs.get_permissions(dm);
  if (perms && !perms->empty() && perms->front().domid == domid) return std::nullopt;
  return dm + (perms ? " is not this domain's" : " is missing") +
         ": is driver_domain=1 set in this domain's xl config? libxl creates that directory only for a driver "
         "domain, and without it xl devd here can neither start the device model of a guest's qdisk disk nor "
         "detach one";
}

claim_result claim_home(asio_xen::xenstore& xs, unsigned domid) {
  const std::string path = claim_path(domid);
  const std::string mine = my_claim();
  claim_result r;
  error_code ec = xs.transact([&](asio_xen::transaction& t) -> error_code {
    r.holder.clear();
    auto cur = t.read_optional<std::string>(path);
    if (!cur) return cur.error();
    if (*cur && **cur != mine && claim_is_live(**cur)) {
      r.holder = (*cur)->substr(0, (*cur)->find(' '));
      return {};
    }
    return t.write(path, mine);
  });
  if (ec) r.error = "cannot write " + path + ": " + ec.message();
  r.taken = !ec && r.holder.empty();
  return r;
}

void release_home(asio_xen::xenstore& xs, unsigned domid) {
  const std::string path = claim_path(domid);
  const std::string mine = my_claim();
  (void)xs.transact([&](asio_xen::transaction& t) -> error_code {
    auto cur = t.read_optional<std::string>(path);
    if (!cur || !*cur || **cur != mine) return {};
    return t.rm(path);
  });
}

}  // namespace xbd::blkback
