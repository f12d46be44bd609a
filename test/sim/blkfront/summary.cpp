#include "blkfront/summary.hpp"

#include <cstdio>

#include "blkfront/json.hpp"

namespace xbd::sim::blkfront {

int exit_status(const summary& s) {
  if (s.setup_failed) return 2;
  const auto& st = s.stats;
  if (st.protocol_errors || st.total_mismatches()) return 1;
  if (!s.allow_io_errors && (st.io_errors || st.eopnotsupp)) return 1;
  if (s.end == "protocol_error" || s.end == "stalled" || s.end == "backend_closed") return 1;
  if (s.raw && !s.raw->failures.empty()) return 1;
  if (!s.error.empty() && !s.stopped) return 1;
  return 0;
}

namespace {

void latency_object(json_writer& j, std::string_view key, const latency_histogram& h) {
  auto us = [](std::uint64_t ns) { return static_cast<double>(ns) / 1000.0; };
  j.key(key).begin_object();
  j.field("count", h.count());
  j.key("p50").value(us(h.percentile_ns(50)), 1);
  j.key("p99").value(us(h.percentile_ns(99)), 1);
  j.key("p999").value(us(h.percentile_ns(99.9)), 1);
  j.key("min").value(us(h.min_ns()), 1);
  j.key("max").value(us(h.max_ns()), 1);
  j.key("mean").value(h.mean_ns() / 1000.0, 1);
  j.end_object();
}

std::string hex64(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

std::string to_json(const summary& s) {
  const auto& st = s.stats;
  json_writer j;
  j.begin_object();
  j.field("tool", "blkfront-sim");
  j.field("ok", exit_status(s) == 0);
  j.field("exit", exit_status(s));
  j.field("end", s.end);
  if (s.error.empty())
    j.key("error").null();
  else
    j.field("error", s.error);

  j.key("device").begin_object();
  j.field("domid", s.domid).field("devid", s.devid);
  j.field("frontend", s.frontend).field("backend", s.backend).field("backend_id", s.backend_id);
  j.end_object();
  if (s.devices > 1) {
    j.key("devices").begin_object();
    j.field("count", static_cast<std::uint64_t>(s.devices));
    j.field("connected", static_cast<std::uint64_t>(s.connected));
    j.end_object();
  }

  if (s.features) {
    j.key("backend_features").begin_object();
    j.field("max_ring_page_order", s.features->max_ring_page_order);
    j.field("multi_queue_max_queues", s.features->max_queues);
    j.field("max_indirect_segments", s.features->max_indirect_segments);
    j.field("persistent", s.features->persistent);
    j.end_object();
  }
  if (s.neg) {
    j.key("negotiated").begin_object();
    j.field("protocol", s.protocol);
    j.field("ring_page_order", s.neg->ring_page_order);
    j.field("ring_pages", s.neg->ring_pages);
    j.field("ring_entries", s.ring_entries);
    j.field("queues", s.neg->queues);
    j.field("indirect_segments", s.neg->indirect_segments);
    j.field("segments_per_request", s.neg->segments_per_request());
    j.field("requests_per_io", s.requests_per_io);
    j.field("indirect_in_use", s.indirect_in_use);
    j.end_object();
  }
  if (s.disk) {
    j.key("disk").begin_object();
    j.field("sectors", s.disk->sectors);
    j.field("bytes", s.disk->bytes());
    j.field("sector_size", s.disk->sector_size);
    j.field("physical_sector_size", s.disk->physical_sector_size);
    j.field("info", s.disk->info);
    j.field("readonly", s.disk->readonly());
    j.field("flush", s.disk->flush);
    j.field("barrier", s.disk->barrier);
    j.field("discard", s.disk->discard);
    if (s.disk->discard) {
      j.field("discard_granularity", s.disk->discard_granularity);
      j.field("discard_alignment", s.disk->discard_alignment);
      j.field("discard_secure", s.disk->discard_secure);
    }
    j.end_object();
  }

  j.key("workload").begin_object();
  j.field("rw", s.workload ? s.rw : std::string("none"));
  j.field("read_pct", s.read_pct).field("discard_pct", s.discard_pct);
  j.field("discard_secure", s.discard_secure).field("barrier_every", s.barrier_every);
  j.field("bs", s.bs).field("qd", s.qd);
  j.field("effective_qd", s.effective_qd).field("verify", s.verify).field("same_page", s.same_page);
  j.field("fresh_grants", s.fresh_grants).field("queue_threads", s.queue_threads);
  j.field("run_id", hex64(s.run_id)).field("prefill_ios", s.prefill_ios);
  j.field("cycles", s.cycles);
  j.end_object();

  const double secs = st.seconds;
  const std::uint64_t data_ops = st.ops[0] + st.ops[1] + st.ops[3];
  j.key("runtime_s").value(secs, 3);
  j.key("iops").value(secs > 0 ? static_cast<double>(data_ops) / secs : 0.0, 1);
  j.key("mib_s").value(secs > 0 ? static_cast<double>(st.bytes_read + st.bytes_written) / secs / 1048576.0 : 0.0, 2);
  latency_object(j, "lat_us", st.latency);
  latency_object(j, "read_lat_us", st.read_latency);
  latency_object(j, "write_lat_us", st.write_latency);
  latency_object(j, "discard_lat_us", st.discard_latency);

  j.key("ops").begin_object();
  j.field("read", st.ops[0]).field("write", st.ops[1]).field("flush", st.ops[2]);
  j.field("discard", st.ops[3]).field("barrier", st.barriers);
  j.end_object();
  j.key("bytes").begin_object();
  j.field("read", st.bytes_read).field("written", st.bytes_written).field("discarded", st.bytes_discarded);
  j.end_object();
  j.key("requests").begin_object();
  j.field("total", st.requests).field("indirect", st.indirect_requests);
  j.field("notifications", st.notifications).field("events", st.events);
  j.end_object();

  if (s.fresh_grants) {
    j.key("grants").begin_object();
    j.field("fresh_pages", st.fresh_pages).field("held_after_response", st.held_after_response);
    j.field("held_peak", st.held_peak).field("checked", !st.holds_unknown);
    j.end_object();
  }

  if (s.held_after_close)
    j.field("held_after_close", *s.held_after_close);
  else
    j.key("held_after_close").null();

  j.key("errors").begin_object();
  j.field("io", st.io_errors).field("eopnotsupp", st.eopnotsupp).field("protocol", st.protocol_errors);
  j.key("messages").begin_array();
  for (const auto& m : st.protocol_messages) j.value(m);
  j.end_array();
  j.end_object();

  j.key("verify").begin_object();
  j.field("blocks_checked", st.verified_blocks);
  j.field("mismatches", st.total_mismatches());
  j.key("by_kind").begin_object();
  for (std::size_t i = 1; i < verdict_count; ++i) j.field(to_string(static_cast<verdict>(i)), st.mismatches[i]);
  j.end_object();
  j.key("first").begin_array();
  for (const auto& m : st.first_mismatches) {
    j.begin_object();
    j.field("queue", m.queue).field("lba", m.lba).field("kind", to_string(m.v));
    j.field("expected_generation", m.expected_generation);
    j.field("found_lba", m.found.found_lba).field("found_generation", m.found.found_generation);
    j.field("found_run_id", hex64(m.found.found_run_id));
    j.field("first_bad_offset", static_cast<std::uint64_t>(m.found.first_bad_offset));
    j.end_object();
  }
  j.end_array();
  j.end_object();

  j.field("reconnects", s.reconnects);
  j.key("backend_states").begin_array();
  for (unsigned v : s.backend_states) j.value(v);
  j.end_array();

  if (s.raw) {
    j.key("raw").begin_object();
    j.field("commands", static_cast<std::uint64_t>(s.raw->commands));
    j.field("response_count", static_cast<std::uint64_t>(s.raw->responses.size()));
    j.key("responses").begin_array();
    std::size_t n = 0;
    for (const auto& r : s.raw->responses) {
      if (++n > 256) break;
      j.begin_object();
      j.field("queue", r.queue).field("id", r.r.id);
      j.field("op", static_cast<unsigned>(r.r.operation)).field("status", static_cast<int>(r.r.status));
      j.end_object();
    }
    j.end_array();
    j.key("failures").begin_array();
    for (const auto& f : s.raw->failures) j.value(f);
    j.end_array();
    j.key("anomalies").begin_array();
    for (const auto& a : s.raw->anomalies) j.value(a);
    j.end_array();
    j.end_object();
  }
  j.end_object();
  return j.str();
}

std::string to_text(const summary& s) {
  const auto& st = s.stats;
  char buf[512];
  std::string out;
  if (s.neg) {
    std::snprintf(buf, sizeof buf, "negotiated: %s, ring order %u (%u entries), %u queue(s), %u indirect segments\n",
                  s.protocol.c_str(), s.neg->ring_page_order, s.ring_entries, s.neg->queues, s.neg->indirect_segments);
    out += buf;
  }
  if (s.workload && st.seconds > 0) {
    const double iops = static_cast<double>(st.ops[0] + st.ops[1] + st.ops[3]) / st.seconds;
    const double mibs = static_cast<double>(st.bytes_read + st.bytes_written) / st.seconds / 1048576.0;
    std::snprintf(
        buf, sizeof buf,
        "%s bs=%u qd=%u: %.0f IOPS, %.2f MiB/s, lat p50 %.1f us p99 %.1f us "
        "(reads %llu, writes %llu (barriers %llu), flushes %llu, discards %llu)\n",
        s.rw.c_str(), s.bs, s.effective_qd, iops, mibs, static_cast<double>(st.latency.percentile_ns(50)) / 1000.0,
        static_cast<double>(st.latency.percentile_ns(99)) / 1000.0, static_cast<unsigned long long>(st.ops[0]),
        static_cast<unsigned long long>(st.ops[1]), static_cast<unsigned long long>(st.barriers),
        static_cast<unsigned long long>(st.ops[2]), static_cast<unsigned long long>(st.ops[3]));
    out += buf;
  }
  std::snprintf(buf, sizeof buf, "end: %s; errors io=%llu eopnotsupp=%llu protocol=%llu; mismatches=%llu%s%s\n",
                s.end.c_str(), static_cast<unsigned long long>(st.io_errors),
                static_cast<unsigned long long>(st.eopnotsupp), static_cast<unsigned long long>(st.protocol_errors),
                static_cast<unsigned long long>(st.total_mismatches()), s.error.empty() ? "" : "; ", s.error.c_str());
  out += buf;
  return out;
}

}  // namespace xbd::sim::blkfront
