#include "app/ctl/render.hpp"

#include <algorithm>
#include <cstdio>
#include <vector>

namespace xbd::ctl {

namespace {

std::string num(const json& v) { return std::to_string(v.u64()); }

std::string fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

std::string vbd_name(const json& v) { return v["type"].str() + "/" + num(v["domid"]) + "/" + num(v["devid"]); }

// Columns padded to their widest cell.
std::string table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> width;
  for (const auto& r : rows)
    for (std::size_t c = 0; c < r.size(); ++c) {
      if (width.size() <= c) width.push_back(0);
      width[c] = std::max(width[c], r[c].size());
    }
  std::string out;
  for (const auto& r : rows) {
    std::string line;
    for (std::size_t c = 0; c < r.size(); ++c)
      line += c + 1 == r.size() ? r[c] : r[c] + std::string(width[c] - r[c].size() + 2, ' ');
    out += line + "\n";
  }
  return out;
}

void line(std::string& out, const std::string& label, const std::string& text) {
  out += "  " + label + std::string(label.size() < 12 ? 12 - label.size() : 1, ' ') + text + "\n";
}

std::string requests(const json& s) {
  return "read " + num(s["rd_req"]) + ", write " + num(s["wr_req"]) + ", flush " + num(s["f_req"]) + ", discard " +
         num(s["ds_req"]);
}

std::string latencies(const json& s) {
  std::string out;
  for (const auto& [op, l] : s["latency_ns"].members()) {
    if (l["count"].u64() == 0) continue;
    out += (out.empty() ? "" : "; ") + op + " " + human_time(l["p50"].u64()) + " p50, " + human_time(l["p99"].u64()) +
           " p99, " + human_time(l["p999"].u64()) + " p99.9 (" + num(l["count"]) + ")";
  }
  return out.empty() ? "none yet" : out;
}

void counters(std::string& out, const json& v) {
  line(out, "requests", requests(v) + "; waited for memory " + num(v["oo_req"]) + " time(s)");
  line(out, "sectors", "read " + num(v["rd_sect"]) + ", write " + num(v["wr_sect"]));
  line(out, "bytes", "read " + human_bytes(v["rd_bytes"].u64()) + ", written " + human_bytes(v["wr_bytes"].u64()));
  line(out, "in flight", num(v["in_flight"]) + " (peak " + num(v["peak_in_flight"]) + ")");
  const json& e = v["errors"];
  line(out, "errors",
       "rejected " + num(e["rejected"]) + ", grant " + num(e["grant"]) + ", io " + num(e["io"]) + ", unsupported " +
           num(e["unsupported"]) + ", no memory " + num(e["no_memory"]));
  line(out, "held back",
       human_time(v["throttled_ns"].u64()) + " in all; let other vbds catch up " + num(v["fair_waits"]) + " time(s)");
  line(out, "limited",
       human_time(v["limited_ns"].u64()) + " held back for the I/O limits, " + num(v["limit_waits"]) + " time(s)");
  line(out, "latency", latencies(v));
}

}  // namespace

std::string human_bytes(std::uint64_t bytes) {
  static constexpr const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double v = static_cast<double>(bytes) / 1024;
  std::size_t u = 0;
  for (; v >= 1024 && u + 1 < std::size(units); ++u) v /= 1024;
  return fixed(v, 1) + " " + units[u];
}

std::string human_time(std::uint64_t ns) {
  if (ns < 1000) return std::to_string(ns) + " ns";
  if (ns < 1000000) return fixed(static_cast<double>(ns) / 1e3, 1) + " us";
  if (ns < 1000000000) return fixed(static_cast<double>(ns) / 1e6, 2) + " ms";
  return fixed(static_cast<double>(ns) / 1e9, 2) + " s";
}

std::string render_list(const json& answer) {
  std::vector<std::vector<std::string>> rows{{"VBD", "DEV", "STATE", "FRONTEND", "QUEUES", "PARAMS"}};
  for (const json& v : answer["vbds"].items())
    rows.push_back({vbd_name(v), v["dev"].str().empty() ? "-" : v["dev"].str(),
                    v["state"].str() + (v["served"].boolean() ? "" : " (ended)"), v["frontend_state"].str(),
                    num(v["queues"]), v["params"].str()});
  return table(rows);
}

std::string render_show(const json& v) {
  std::string out = vbd_name(v) + (v["dev"].str().empty() ? "" : " (" + v["dev"].str() + ")") + ": " +
                    v["state"].str() + ", frontend " + v["frontend_state"].str() + ", connected " +
                    num(v["connections"]) + " time(s)" + (v["served"].boolean() ? "" : "; ended") + "\n";
  line(out, "params", v["params"].str());
  if (!v["backing"].str().empty())
    line(out, "backing",
         v["backing"].str() + (v["writable"].boolean() ? ", read-write" : ", read-only") +
             (v["direct"].boolean() ? ", O_DIRECT" : ", buffered") + ", " + num(v["sectors"]) + " sectors, " +
             num(v["sector_size"]) + "-byte sectors");
  if (v["connected"].boolean())
    line(out, "rings",
         std::to_string(v["queues"].items().size()) + " queue(s), ring order " + num(v["ring_order"]) + ", " +
             v["protocol"].str());
  counters(out, v);
  const json& b = v["buffers"];
  line(out, "buffers",
       human_bytes(b["committed_bytes"].u64()) + " now, peak " + human_bytes(b["peak_bytes"].u64()) + "; cached " +
           human_bytes(b["cached_bytes"].u64()) + ", " + num(b["slots"]) + " slot(s)");
  for (const json& q : v["queues"].items()) {
    out += "  queue " + num(q["queue"]) + ": " + num(q["ring_entries"]) + " entries, event channel " +
           num(q["event_channel"]) + "\n";
    std::string inner;
    counters(inner, q);
    for (std::size_t at = 0; at < inner.size();) {  // indented one step more
      const auto nl = inner.find('\n', at);
      out += "  " + inner.substr(at, nl - at + 1);
      at = nl + 1;
    }
  }
  return out;
}

namespace {

// NAME=VALUE words of an object, or "none".
std::string words_of(const json& o) {
  std::string out;
  for (const auto& [k, v] : o.members())
    out += (out.empty() ? "" : " ") + k + "=" + (v.is(json::kind::string) ? v.str() : num(v));
  return out.empty() ? "none" : out;
}

}  // namespace

std::string render_limits(const json& a) {
  const json& v = a["vbd"];
  const std::string group = a["group"].str();
  std::string out = vbd_name(v) + (v["dev"].str().empty() ? "" : " (" + v["dev"].str() + ")") + ": " +
                    (group.empty() ? "limits of its own" : "group " + group) + ", " + num(a["group_rings"]) +
                    " ring(s) share them\n";
  line(out, "limits", words_of(a["limits"]));
  line(out, "in force", words_of(a["in_force"]));
  const json& s = a["sources"];
  line(out, "file", words_of(s["file"]));
  line(out, "toolstack", words_of(s["toolstack"]));
  line(out, "control", words_of(s["control"]));
  if (a["toolstack_problem"].is(json::kind::string)) line(out, "ignored", a["toolstack_problem"].str());
  return out;
}

}  // namespace xbd::ctl
