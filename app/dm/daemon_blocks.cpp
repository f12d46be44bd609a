#include "daemon_blocks.hpp"

#include "app/ctl/client.hpp"
#include "app/ctl/json.hpp"

namespace xbd::dm {

namespace {

std::uint64_t latency_sum(const ctl::json& vbd, const char* op) { return vbd["latency_ns"][op]["sum"].u64(); }

block_device from_vbd(const ctl::json& v) {
  block_device d;
  d.device = v["dev"].str().empty() ? "vbd-" + std::to_string(v["devid"].u64()) : v["dev"].str();
  d.file = libxenstat_file(v["params"].str());
  d.read_only = !v["writable"].boolean();
  d.direct = v["direct"].boolean();
  d.size = v["sectors"].u64() * 512;
  d.rd_operations = v["rd_req"].u64();
  d.wr_operations = v["wr_req"].u64();
  d.flush_operations = v["f_req"].u64();
  d.unmap_operations = v["ds_req"].u64();
  d.rd_bytes = v["rd_sect"].u64() * 512;
  d.wr_bytes = v["wr_sect"].u64() * 512;
  d.rd_total_time_ns = latency_sum(v, "read");
  d.wr_total_time_ns = latency_sum(v, "write");
  d.flush_total_time_ns = latency_sum(v, "flush");
  d.unmap_total_time_ns = latency_sum(v, "discard");
  return d;
}

}  // namespace

std::string libxenstat_file(std::string_view params) {
  const auto slash = params.find('/');
  return std::string(slash == std::string_view::npos ? params : params.substr(slash));
}

std::variant<std::vector<block_device>, std::string> blocks_from_stats(std::string_view answer) {
  std::string why;
  const auto doc = ctl::json::parse(answer, &why);
  if (!doc || !doc->is(ctl::json::kind::object)) return "its answer is not JSON (" + why + ")";
  if (const auto& e = (*doc)["error"]; e.is(ctl::json::kind::string)) return e.str();
  const auto& vbds = (*doc)["vbds"];
  if (!vbds.is(ctl::json::kind::array)) return std::string("its answer has no vbds");
  std::vector<block_device> out;
  for (const auto& v : vbds.items()) out.push_back(from_vbd(v));
  return out;
}

block_source daemon_blocks(std::string socket, unsigned domid, std::chrono::milliseconds limit) {
  return [socket = std::move(socket), domid, limit]() -> std::variant<std::vector<block_device>, std::string> {
    auto answer = ctl::ask(socket, "stats " + std::to_string(domid), limit);
    if (auto* f = std::get_if<ctl::failure>(&answer)) return f->what;
    return blocks_from_stats(std::get<std::string>(answer));
  };
}

}  // namespace xbd::dm
