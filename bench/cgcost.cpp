// cgcost: instructions per request from two callgrind dumps, for
// scripts/bench's `instructions` row.
//
//   cgcost SIM_PATTERN N_A DUMP_A N_B DUMP_B [TOP [EXCLUDE]]
//
// DUMP_A and DUMP_B are callgrind dumps (--dump-instr=no, event Ir) of the
// daemon over two workloads of N_A < N_B requests, each from connect to
// disconnect. What a connect and a disconnect cost is in both, so the
// difference divided by N_B - N_A is the cost of one request alone.
// Costs are split by who executed them: the simulator is every call from
// outside an object whose name contains SIM_PATTERN into such an object,
// inclusive (libxensim and the libc it calls: its grant copy's memcpy is
// the simulator's, not the daemon's); the daemon is the rest.
//
// Objects whose name contains EXCLUDE (the bench's measurement shim) are
// left out of the totals: their own instructions are not the daemon's.
//
// stdout: one JSON object; stderr: the TOP (10) functions by inclusive
// cost per request and the self cost per object.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

struct profile {
  long long total = 0;      // the dump's summary (every instruction)
  long long simulator = 0;  // calls into the simulator from outside, inclusive
  std::map<std::string, long long> self_by_object;
  std::map<std::string, long long> inclusive;  // "function [object]"
  std::map<std::string, long long> self;
};

// A compressed name: "(id) name" defines id, "(id)" refers to it.
std::string expand(std::unordered_map<std::string, std::string>& names, const std::string& v) {
  if (v.empty() || v[0] != '(') return v;
  auto close = v.find(')');
  if (close == std::string::npos) return v;
  std::string id = v.substr(0, close + 1);
  if (close + 1 < v.size()) {
    std::string name = v.substr(close + 1);
    name.erase(0, name.find_first_not_of(' '));
    names[id] = name;
    return name;
  }
  auto it = names.find(id);
  return it == names.end() ? v : it->second;
}

// The Ir of a cost line: the field after the position ("+3 120" or "16 120").
long long cost_of(const std::string& line) {
  std::istringstream in(line);
  std::string pos;
  long long ir = 0;
  in >> pos >> ir;
  return ir;
}

bool read_profile(const char* path, const std::string& sim, profile& p) {
  std::ifstream in(path);
  if (!in) return false;
  std::unordered_map<std::string, std::string> obs, fns;
  std::string line, ob, fn, cob, cfn;
  bool call_next = false;
  auto is_sim = [&](const std::string& o) { return o.find(sim) != std::string::npos; };
  auto key = [](const std::string& f, const std::string& o) {
    return f + " [" + o.substr(o.rfind('/') == std::string::npos ? 0 : o.rfind('/') + 1) + "]";
  };
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line.rfind("summary:", 0) == 0 || line.rfind("totals:", 0) == 0) {
      p.total = std::max(p.total, std::atoll(line.c_str() + line.find(':') + 1));
    } else if (line.rfind("ob=", 0) == 0) {
      ob = expand(obs, line.substr(3));
    } else if (line.rfind("fn=", 0) == 0) {
      fn = expand(fns, line.substr(3));
      cob.clear();
    } else if (line.rfind("cob=", 0) == 0) {
      cob = expand(obs, line.substr(4));
    } else if (line.rfind("cfn=", 0) == 0 || line.rfind("cfi=", 0) == 0 || line.rfind("cfl=", 0) == 0) {
      if (line[2] == 'n') cfn = expand(fns, line.substr(4));
    } else if (line.rfind("calls=", 0) == 0) {
      call_next = true;
    } else if (std::isdigit(static_cast<unsigned char>(line[0])) || line[0] == '+' || line[0] == '-' ||
               line[0] == '*') {
      long long c = cost_of(line);
      if (call_next) {
        const std::string& callee_ob = cob.empty() ? ob : cob;
        if (!(cfn == fn && callee_ob == ob)) p.inclusive[key(fn, ob)] += c;
        if (is_sim(callee_ob) && !is_sim(ob)) p.simulator += c;
        call_next = false;
        cob.clear();
      } else {
        p.self_by_object[ob] += c;
        p.inclusive[key(fn, ob)] += c;
        p.self[key(fn, ob)] += c;
      }
    }
    // Other lines (fl=, fi=, fe=, jump=, headers) change nothing counted.
  }
  if (p.total == 0)
    for (auto& [o, c] : p.self_by_object) p.total += c;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 6) {
    std::fprintf(stderr, "usage: cgcost SIM_PATTERN N_A DUMP_A N_B DUMP_B [TOP]\n");
    return 2;
  }
  const std::string sim = argv[1];
  const long long na = std::atoll(argv[2]), nb = std::atoll(argv[4]);
  const int top = argc > 6 ? std::atoi(argv[6]) : 10;
  const std::string exclude = argc > 7 ? argv[7] : "";
  profile a, b;
  if (nb <= na || !read_profile(argv[3], sim, a) || !read_profile(argv[5], sim, b)) {
    std::fprintf(stderr, "cgcost: need two readable dumps and N_B > N_A\n");
    return 2;
  }
  const double dn = static_cast<double>(nb - na);
  double excluded = 0;
  if (!exclude.empty())
    for (auto& [o, c] : b.self_by_object)
      if (o.find(exclude) != std::string::npos) excluded += static_cast<double>(c - a.self_by_object[o]) / dn;
  const double total = static_cast<double>(b.total - a.total) / dn - excluded;
  const double simulator = static_cast<double>(b.simulator - a.simulator) / dn;

  auto print_top = [&](const char* what, std::map<std::string, long long>& ma, std::map<std::string, long long>& mb) {
    std::vector<std::pair<double, std::string>> fns;
    for (auto& [f, c] : mb) fns.emplace_back(static_cast<double>(c - ma[f]) / dn, f);
    std::sort(fns.rbegin(), fns.rend());
    std::fprintf(stderr, "top %d functions by %s instructions per request:\n", top, what);
    for (int i = 0; i < top && i < static_cast<int>(fns.size()); ++i)
      std::fprintf(stderr, "  %10.0f  %5.1f %%  %.200s\n", fns[i].first, total > 0 ? 100 * fns[i].first / total : 0.0,
                   fns[i].second.c_str());
  };
  print_top("inclusive", a.inclusive, b.inclusive);
  print_top("self", a.self, b.self);
  std::fprintf(stderr, "self instructions per request by object:\n");
  std::vector<std::pair<double, std::string>> objs;
  for (auto& [o, c] : b.self_by_object) objs.emplace_back(static_cast<double>(c - a.self_by_object[o]) / dn, o);
  std::sort(objs.rbegin(), objs.rend());
  for (auto& [c, o] : objs)
    if (c >= 0.5) std::fprintf(stderr, "  %10.0f  %s\n", c, o.c_str());

  std::printf(
      "{\"requests\":%lld,\"ir_per_request\":%.0f,\"daemon_ir_per_request\":%.0f,\"simulator_ir_per_request\":%.0f,"
      "\"excluded_ir_per_request\":%.1f,\"dump_ir\":[%lld,%lld]}\n",
      nb - na, total, total - simulator, simulator, excluded, a.total, b.total);
  return 0;
}
