#include "blkback/control/report.hpp"

#include "blkback/control/json_writer.hpp"

#include <functional>

namespace xbd::blkback {

namespace {

void latency_json(json_writer& j, const stats_view& s) {
  j.key("latency_ns").begin_object();
  for (std::size_t op = 0; op < timed_ops; ++op) {
    const latency_digest& l = s.latency[op];
    j.key(to_string(static_cast<timed_op>(op))).begin_object();
    j.field("count", l.count).field("sum", l.sum_ns);
    j.field("p50", l.p50_ns).field("p99", l.p99_ns).field("p999", l.p999_ns);
    j.end_object();
  }
  j.end_object();
}

// The fields a vbd and each of its queues have alike.
void counters_json(json_writer& j, const stats_view& s) {
  j.field("rd_req", s.rd_req).field("wr_req", s.wr_req).field("f_req", s.f_req).field("ds_req", s.ds_req);
  j.field("oo_req", s.oo_req).field("rd_sect", s.rd_sect).field("wr_sect", s.wr_sect);
  j.field("rd_bytes", s.rd_bytes).field("wr_bytes", s.wr_bytes);
  j.field("in_flight", s.in_flight).field("peak_in_flight", s.peak_in_flight);
  j.key("errors").begin_object();
  j.field("rejected", s.err_rejected).field("grant", s.err_grant).field("io", s.err_io);
  j.field("unsupported", s.err_unsupported).field("no_memory", s.err_no_memory);
  j.end_object();
  j.field("throttled_ns", s.throttled_ns).field("fair_waits", s.fair_waits);
  j.field("limited_ns", s.limited_ns).field("limit_waits", s.limit_waits);
  j.field("idle_events", s.idle_events).field("storm_pauses", s.storm_pauses).field("yields", s.yields);
  j.key("grants").begin_object();
  j.field("copy_calls", s.copy_calls).field("copy_segments", s.copy_segments);
  j.field("mapped_requests", s.mapped_req).field("map_calls", s.map_calls);
  j.field("persistent", s.persistent_grants).field("persistent_hits", s.persistent_hits);
  j.field("persistent_maps", s.persistent_maps).field("persistent_drops", s.persistent_drops);
  j.end_object();
  j.field("poll_hits", s.poll_hits).field("poll_misses", s.poll_misses).field("poll_ns", s.poll_ns);
  latency_json(j, s);
}

void identity_json(json_writer& j, const vbd_report& v) {
  j.field("domid", v.domid).field("devid", v.devid).field("type", v.type).field("dev", v.dev);
  j.field("state", v.state).field("frontend_state", v.frontend_state).field("served", v.served);
  j.field("params", v.params);
}

void write_vbd(json_writer& j, const vbd_report& v, bool queues) {
  j.begin_object();
  identity_json(j, v);
  j.field("backing", v.backing).field("writable", v.writable).field("direct", v.direct);
  j.field("sectors", v.sectors).field("sector_size", v.sector_size);
  j.field("connections", v.connections).field("connected", v.connected);
  j.field("protocol", v.protocol).field("ring_order", v.ring_order);
  counters_json(j, v.total);
  j.key("buffers").begin_object();
  j.field("committed_bytes", v.buffer_committed).field("peak_bytes", v.buffer_peak);
  j.field("cached_bytes", v.total.cached_bytes).field("slots", v.total.slots);
  j.end_object();
  if (queues) {
    j.key("queues").begin_array();
    for (const queue_report& q : v.queues) {
      j.begin_object();
      j.field("queue", q.index).field("ring_entries", q.ring_entries).field("event_channel", q.event_channel);
      counters_json(j, q.stats);
      j.key("buffers").begin_object();
      j.field("cached_bytes", q.stats.cached_bytes).field("slots", q.stats.slots);
      j.end_object();
      j.end_object();
    }
    j.end_array();
  }
  j.end_object();
}

}  // namespace

std::string vbd_json(const vbd_report& v, bool queues) {
  json_writer j;
  write_vbd(j, v, queues);
  return j.take();
}

std::string stats_json(const std::vector<vbd_report>& vbds) {
  json_writer j;
  j.begin_object().key("vbds").begin_array();
  for (const auto& v : vbds) write_vbd(j, v, true);
  j.end_array().end_object();
  return j.take();
}

std::string list_json(const std::vector<vbd_report>& vbds) {
  json_writer j;
  j.begin_object().key("vbds").begin_array();
  for (const auto& v : vbds) {
    j.begin_object();
    identity_json(j, v);
    j.field("connected", v.connected).field("queues", static_cast<std::uint64_t>(v.queues.size()));
    j.end_object();
  }
  j.end_array().end_object();
  return j.take();
}

// ------------------------------------------------------------ Prometheus

namespace {

// A label value: backslash, quote and newline escaped, as the format asks.
std::string label_value(std::string_view v) {
  std::string s;
  for (const char c : v) {
    if (c == '\\' || c == '"') {
      s += '\\';
      s += c;
    } else if (c == '\n') {
      s += "\\n";
    } else {
      s += c;
    }
  }
  return s;
}

std::string labels(const vbd_report& v) {
  return "domid=\"" + std::to_string(v.domid) + "\",devid=\"" + std::to_string(v.devid) + "\",type=\"" +
         label_value(v.type) + "\",dev=\"" + label_value(v.dev) + "\"";
}

// Nanoseconds as seconds, exactly.
std::string seconds(std::uint64_t ns) {
  std::string frac = std::to_string(ns % 1000000000);
  return std::to_string(ns / 1000000000) + "." + std::string(9 - frac.size(), '0') + frac;
}

class exposition {
 public:
  explicit exposition(const std::vector<vbd_report>& vbds) : vbds_(vbds) {}

  void family(const char* name, const char* type, const char* help) {
    out_ += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  }
  // One sample per vbd: `name{vbd labels,extra} value(vbd)`.
  void samples(const std::string& name, const std::string& extra,
               const std::function<std::string(const vbd_report&)>& value) {
    for (const auto& v : vbds_)
      out_ += name + "{" + labels(v) + (extra.empty() ? "" : "," + extra) + "} " + value(v) + "\n";
  }
  void counter(const char* name, const char* help, const std::string& label,
               const std::vector<std::pair<const char*, std::uint64_t ring_counts::*>>& by) {
    family(name, "counter", help);
    for (const auto& [which, field] : by)
      samples(name, label.empty() ? "" : label + "=\"" + which + "\"",
              [f = field](const vbd_report& v) { return std::to_string(v.total.*f); });
  }
  std::string take() { return std::move(out_); }

 private:
  const std::vector<vbd_report>& vbds_;
  std::string out_;
};

void latency_summaries(exposition& e) {
  const char* name = "xen_blkbackd_latency_seconds";
  e.family(name, "summary", "Time from a request's turn in the ring to its response, since the vbd appeared.");
  for (std::size_t op = 0; op < timed_ops; ++op) {
    const std::string o = std::string("op=\"") + to_string(static_cast<timed_op>(op)) + "\"";
    for (const auto& [q, field] :
         {std::pair{"0.5", &latency_digest::p50_ns}, std::pair{"0.99", &latency_digest::p99_ns},
          std::pair{"0.999", &latency_digest::p999_ns}})
      e.samples(name, o + ",quantile=\"" + q + "\"",
                [op, f = field](const vbd_report& v) { return seconds(v.total.latency[op].*f); });
    e.samples(std::string(name) + "_sum", o, [op](const vbd_report& v) { return seconds(v.total.latency[op].sum_ns); });
    e.samples(std::string(name) + "_count", o,
              [op](const vbd_report& v) { return std::to_string(v.total.latency[op].count); });
  }
}

}  // namespace

std::string stats_prometheus(const std::vector<vbd_report>& vbds) {
  exposition e(vbds);
  e.family("xen_blkbackd_vbd_connected", "gauge", "1 while a frontend is connected to the vbd.");
  e.samples("xen_blkbackd_vbd_connected", "", [](const vbd_report& v) { return std::string(v.connected ? "1" : "0"); });
  e.counter("xen_blkbackd_requests_total",
            "Requests taken from the rings, by operation (Linux blkback's rd_req, wr_req, f_req, ds_req).", "op",
            {{"read", &ring_counts::rd_req},
             {"write", &ring_counts::wr_req},
             {"flush", &ring_counts::f_req},
             {"discard", &ring_counts::ds_req}});
  e.counter("xen_blkbackd_sectors_total", "512-byte sectors requested (Linux blkback's rd_sect, wr_sect).", "op",
            {{"read", &ring_counts::rd_sect}, {"write", &ring_counts::wr_sect}});
  e.counter("xen_blkbackd_bytes_total", "Bytes read or written by the backing store.", "op",
            {{"read", &ring_counts::rd_bytes}, {"write", &ring_counts::wr_bytes}});
  e.counter("xen_blkbackd_out_of_requests_total",
            "Times a ring held requests back for want of buffer memory (Linux blkback's oo_req).", "",
            {{"", &ring_counts::oo_req}});
  e.counter("xen_blkbackd_errors_total", "Requests answered with an error, by cause.", "kind",
            {{"rejected", &ring_counts::err_rejected},
             {"grant", &ring_counts::err_grant},
             {"io", &ring_counts::err_io},
             {"unsupported", &ring_counts::err_unsupported},
             {"no_memory", &ring_counts::err_no_memory}});
  e.counter("xen_blkbackd_fair_waits_total", "Times a ring let other vbds catch up (CPU fairness).", "",
            {{"", &ring_counts::fair_waits}});
  e.family("xen_blkbackd_throttled_seconds_total", "counter", "Time the rings held requests back.");
  e.samples("xen_blkbackd_throttled_seconds_total", "",
            [](const vbd_report& v) { return seconds(v.total.throttled_ns); });
  e.counter("xen_blkbackd_limit_waits_total", "Times a ring held a request back for the vbd's I/O limits.", "",
            {{"", &ring_counts::limit_waits}});
  e.family("xen_blkbackd_limited_seconds_total", "counter", "Time the rings held requests back for the I/O limits.");
  e.samples("xen_blkbackd_limited_seconds_total", "", [](const vbd_report& v) { return seconds(v.total.limited_ns); });
  e.counter("xen_blkbackd_grant_copy_calls_total", "Grant copy calls (each carries many segments).", "",
            {{"", &ring_counts::copy_calls}});
  e.counter("xen_blkbackd_grant_copy_segments_total", "Segments moved by grant copy.", "",
            {{"", &ring_counts::copy_segments}});
  e.counter("xen_blkbackd_zero_copy_requests_total", "Requests served on the guest's own pages (grant mapping).", "",
            {{"", &ring_counts::mapped_req}});
  e.counter("xen_blkbackd_persistent_grants_total", "Persistent grant lookups, by outcome.", "outcome",
            {{"hit", &ring_counts::persistent_hits},
             {"mapped", &ring_counts::persistent_maps},
             {"dropped", &ring_counts::persistent_drops}});
  e.family("xen_blkbackd_persistent_grants", "gauge", "Persistent grants mapped now.");
  e.samples("xen_blkbackd_persistent_grants", "",
            [](const vbd_report& v) { return std::to_string(v.total.persistent_grants); });
  e.counter("xen_blkbackd_polls_total",
            "Times a ring looked at its ring again after a burst ([rings] poll-microseconds), by whether a "
            "request came within the window.",
            "result", {{"hit", &ring_counts::poll_hits}, {"miss", &ring_counts::poll_misses}});
  e.family("xen_blkbackd_poll_seconds_total", "counter", "Time the rings spent polling (what polling costs).");
  e.samples("xen_blkbackd_poll_seconds_total", "", [](const vbd_report& v) { return seconds(v.total.poll_ns); });
  e.family("xen_blkbackd_in_flight", "gauge", "Requests taken and not yet answered.");
  e.samples("xen_blkbackd_in_flight", "", [](const vbd_report& v) { return std::to_string(v.total.in_flight); });
  e.family("xen_blkbackd_buffer_bytes", "gauge", "Request buffer memory the vbd holds ([io] buffer-memory).");
  e.samples("xen_blkbackd_buffer_bytes", "", [](const vbd_report& v) { return std::to_string(v.buffer_committed); });
  latency_summaries(e);
  return e.take();
}

namespace {

void limit_fields(json_writer& j, const throttle_limits& l) {
  j.begin_object();
  const auto& names = throttle_settings::names();
  for (std::size_t k = 0; k < throttle_kinds; ++k) {
    const auto& b = l.buckets[k];
    if (b.avg) j.field(names[k], b.avg);
    if (b.max) j.field(names[throttle_kinds + k], b.max);
    if (b.max_length > 1) j.field(names[2 * throttle_kinds + k], b.max_length);
  }
  if (l.iops_size) j.field(names.back(), l.iops_size);
  j.end_object();
}

void setting_fields(json_writer& j, const throttle_settings& s) {
  j.begin_object();
  for (std::size_t i = 0; i < throttle_settings::count; ++i)
    if (s.values[i]) j.field(throttle_settings::names()[i], *s.values[i]);
  if (s.group) j.field("group", *s.group);
  j.end_object();
}

}  // namespace

std::string limits_json(const vbd_report& v, const limits_view& l) {
  json_writer j;
  j.begin_object().key("vbd").begin_object();
  j.field("type", v.type).field("domid", v.domid).field("devid", v.devid).field("dev", v.dev);
  j.end_object();
  j.field("group", l.group).field("group_rings", static_cast<std::uint64_t>(l.group_rings));
  j.key("limits");
  limit_fields(j, l.effective.limits());
  j.key("in_force");
  limit_fields(j, l.in_force);
  j.key("sources").begin_object();
  j.key("file");
  setting_fields(j, l.file);
  j.key("toolstack");
  setting_fields(j, l.toolstack);
  j.key("control");
  setting_fields(j, l.live);
  j.end_object();
  if (!l.toolstack_problem.empty()) j.field("toolstack_problem", l.toolstack_problem);
  return j.end_object().take();
}

}  // namespace xbd::blkback
