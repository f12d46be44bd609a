// Live statistics: the latency histogram, how rings add up, and what the
// control socket writes (JSON, Prometheus) and answers.
#include "blkback/control/commands.hpp"
#include "blkback/control/json_writer.hpp"
#include "blkback/control/report.hpp"
#include "blkback/data/stats.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <regex>
#include <sstream>

using namespace xbd::blkback;

namespace {

std::size_t op(timed_op o) { return static_cast<std::size_t>(o); }

}  // namespace

TEST_CASE("latency buckets: exact below 8 ns, then eight per power of two, covering every value once") {
  for (std::uint64_t ns = 0; ns < 8; ++ns) CHECK(latency_buckets::of(ns) == ns);
  CHECK(latency_buckets::of(8) == 8u);
  CHECK(latency_buckets::of(15) == 15u);
  CHECK(latency_buckets::of(16) == 16u);
  CHECK(latency_buckets::of(17) == 16u);  // 16..17 share a bucket of width 2
  CHECK(latency_buckets::of(~std::uint64_t{0}) == latency_buckets::count - 1);
  // Every bucket holds [low, high) and the next starts where it ends.
  for (unsigned b = 0; b + 1 < latency_buckets::count; ++b) {
    CAPTURE(b);
    REQUIRE(latency_buckets::low(b) < latency_buckets::high(b));
    REQUIRE(latency_buckets::of(latency_buckets::low(b)) == b);
    REQUIRE(latency_buckets::of(latency_buckets::high(b) - 1) == b);
    // Log-linear: no bucket wider than an eighth of its lowest value.
    if (b >= 8) REQUIRE(latency_buckets::high(b) - latency_buckets::low(b) <= latency_buckets::low(b) / 8);
  }
  // One second lands where it should: [2^29 + k 2^26, ...).
  const unsigned s = latency_buckets::of(1000000000);
  CHECK(latency_buckets::low(s) <= 1000000000u);
  CHECK(latency_buckets::high(s) > 1000000000u);
}

TEST_CASE("percentiles from the histogram are within 7 % of the exact ones") {
  latency_histogram h;
  std::mt19937_64 rng(42);
  std::lognormal_distribution<double> lat(std::log(50000.0), 0.8);  // around 50 us
  std::vector<std::uint64_t> all;
  for (int i = 0; i < 100000; ++i) {
    const auto ns = static_cast<std::uint64_t>(lat(rng));
    all.push_back(ns);
    h.record(ns);
  }
  std::sort(all.begin(), all.end());
  const ring_counters untouched;
  CHECK(snapshot(untouched).latency[0].percentile_ns(0.5) == 0u);
  latency_summary s;
  for (std::size_t b = 0; b < s.buckets.size(); ++b) s.buckets[b] = h.buckets[b].load();
  s.count = h.count.load();
  s.sum_ns = h.sum_ns.load();
  for (const double q : {0.5, 0.99, 0.999}) {
    CAPTURE(q);
    const double exact = static_cast<double>(all[static_cast<std::size_t>(std::ceil(q * all.size())) - 1]);
    CHECK(std::abs(static_cast<double>(s.percentile_ns(q)) - exact) / exact < 0.07);
  }
  CHECK(s.count == 100000u);
  CHECK(s.mean_ns() > 40000u);
}

TEST_CASE("ring statistics add up across rings, the peak is the largest, and an ended ring keeps no gauges") {
  ring_counters a, b;
  bump(a.rd_req, 3);
  bump(a.rd_sect, 24);
  set(a.in_flight, 2);
  set(a.peak_in_flight, 7);
  a.latency[op(timed_op::read)].record(1000);
  bump(b.rd_req, 1);
  bump(b.err_rejected, 2);
  bump(b.err_io);
  set(b.in_flight, 1);
  set(b.peak_in_flight, 4);
  b.latency[op(timed_op::read)].record(3000);
  ring_stats t = snapshot(a);
  t += snapshot(b);
  CHECK(t.rd_req == 4u);
  CHECK(t.rd_sect == 24u);
  CHECK(t.in_flight == 3u);
  CHECK(t.peak_in_flight == 7u);
  CHECK(t.requests() == 6u);
  CHECK(t.failed() == 1u);
  CHECK(t.latency[op(timed_op::read)].count == 2u);
  CHECK(t.latency[op(timed_op::read)].sum_ns == 4000u);
  const ring_stats r = t.retired();
  CHECK(r.in_flight == 0u);
  CHECK(r.rd_req == 4u);
  // What a report shows: the counters, and a digest of each histogram.
  const stats_view v = view(t);
  CHECK(v.rd_req == 4u);
  CHECK(v.latency[op(timed_op::read)].count == 2u);
  CHECK(v.latency[op(timed_op::read)].p50_ns == t.latency[op(timed_op::read)].percentile_ns(0.5));
  CHECK(v.latency[op(timed_op::read)].p999_ns >= 3000u * 15 / 16);
}

namespace {

vbd_report sample_vbd() {
  vbd_report v;
  v.type = "qdisk";
  v.domid = 5;
  v.devid = 51712;
  v.dev = "xvda";
  v.state = "Connected";
  v.frontend_state = "Connected";
  v.params = "aio:/srv/a \"b\".img";
  v.connected = true;
  v.connections = 1;
  ring_counters q0, q1;
  bump(q0.rd_req, 10);
  bump(q0.rd_sect, 80);
  bump(q1.wr_req, 5);
  bump(q1.wr_sect, 40);
  bump(q1.f_req);
  q0.latency[op(timed_op::read)].record(20000);
  v.queues.push_back({0, 512, 17, view(snapshot(q0))});
  v.queues.push_back({1, 512, 18, view(snapshot(q1))});
  ring_stats total = snapshot(q0);
  total += snapshot(q1);
  v.total = view(total);
  return v;
}

}  // namespace

TEST_CASE("stats JSON: one document, Linux's names at the top of each vbd, the queues inside") {
  const std::string j = stats_json({sample_vbd()});
  CHECK(j.starts_with("{\"vbds\":[{\"domid\":5,\"devid\":51712,"));
  for (const char* field : {"\"rd_req\":10", "\"wr_req\":5", "\"f_req\":1", "\"ds_req\":0", "\"oo_req\":0",
                            "\"rd_sect\":80", "\"wr_sect\":40", "\"in_flight\":0", "\"errors\":{\"rejected\":0",
                            "\"queues\":[{\"queue\":0,\"ring_entries\":512,\"event_channel\":17,\"rd_req\":10",
                            "{\"queue\":1,\"ring_entries\":512,\"event_channel\":18,\"rd_req\":0,\"wr_req\":5",
                            "\"read\":{\"count\":1,\"sum\":20000,\"p50\":"})
    CHECK_MESSAGE(j.find(field) != std::string::npos, field << " in " << j);
  // Strings from xenstore are escaped.
  CHECK(j.find("\"params\":\"aio:/srv/a \\\"b\\\".img\"") != std::string::npos);
  CHECK(j.ends_with("]}"));
  CHECK(stats_json({}) == "{\"vbds\":[]}");
}

TEST_CASE("JSON strings are escaped and made valid UTF-8") {
  CHECK(json_quote("a\"b\\c\nd\x01") == "\"a\\\"b\\\\c\\nd\\u0001\"");
  CHECK(json_quote("caf\xc3\xa9") == "\"caf\xc3\xa9\"");             // valid UTF-8 stays
  CHECK(json_quote("bad\xff\xc3") == "\"bad\\ufffd\\ufffd\"");       // invalid bytes do not
  CHECK(json_quote("\xed\xa0\x80") == "\"\\ufffd\\ufffd\\ufffd\"");  // a surrogate is invalid
  CHECK(json_error("no vbd 5/1") == "{\"error\":\"no vbd 5/1\"}");
}

TEST_CASE("stats Prometheus: HELP and TYPE once per family, a sample per vbd, escaped labels") {
  auto v = sample_vbd();
  v.dev = "x\"v\\da";
  const std::string p = stats_prometheus({v, sample_vbd()});
  const std::string labels = R"(domid="5",devid="51712",type="qdisk",dev="x\"v\\da")";
  CHECK(p.find("# TYPE xen_blkbackd_requests_total counter\n") != std::string::npos);
  CHECK(p.find("xen_blkbackd_requests_total{" + labels + ",op=\"read\"} 10\n") != std::string::npos);
  CHECK(p.find("xen_blkbackd_sectors_total{" + labels + ",op=\"write\"} 40\n") != std::string::npos);
  CHECK(p.find("xen_blkbackd_out_of_requests_total{" + labels + "} 0\n") != std::string::npos);
  CHECK(p.find("xen_blkbackd_latency_seconds_count{" + labels + ",op=\"read\"} 1\n") != std::string::npos);
  CHECK(p.find("xen_blkbackd_latency_seconds_sum{" + labels + ",op=\"read\"} 0.000020000\n") != std::string::npos);
  CHECK(p.find("# TYPE xen_blkbackd_latency_seconds summary\n") != std::string::npos);
  // Each family is declared once, whatever the number of vbds.
  std::size_t declared = 0;
  for (std::size_t at = 0; (at = p.find("# TYPE xen_blkbackd_requests_total ", at)) != std::string::npos; ++at)
    ++declared;
  CHECK(declared == 1u);
  // Every line is a comment or `name{labels} value` (the text format).
  static const std::regex sample(R"(^(# (HELP|TYPE) .*|[a-z_]+\{[^}]*\} [0-9]+(\.[0-9]+)?)$)");
  std::istringstream lines(p);
  for (std::string l; std::getline(lines, l);) CHECK_MESSAGE(std::regex_match(l, sample), l);
}

namespace {

struct fake_daemon {
  std::vector<vbd_report> vbds{sample_vbd()};
  severity level = severity::info;
  control_context ctx{[this] { return vbds; }, [this] { return level; }, [this](severity s) { level = s; }, {}};
  std::string ask(std::string_view line) { return answer_request(ctx, line); }
};

}  // namespace

TEST_CASE("control requests: list, show and stats find vbds by DOMID/DEVID, TYPE/DOMID/DEVID or name") {
  fake_daemon d;
  CHECK(d.ask("list").starts_with("{\"vbds\":[{\"domid\":5,\"devid\":51712,\"type\":\"qdisk\",\"dev\":\"xvda\""));
  CHECK(d.ask("show 5/51712").starts_with("{\"vbd\":{\"domid\":5,"));
  CHECK(d.ask("show qdisk/5/51712").starts_with("{\"vbd\":{\"domid\":5,"));
  CHECK(d.ask("  show\t5/xvda  ").starts_with("{\"vbd\":{\"domid\":5,"));
  CHECK(d.ask("stats") == stats_json(d.vbds));
  CHECK(d.ask("stats --json 5") == stats_json(d.vbds));
  CHECK(d.ask("stats 6") == "{\"vbds\":[]}");
  CHECK(d.ask("stats --prometheus 5/51712").starts_with("{\"prometheus\":\"# HELP "));
  CHECK(d.ask("help").find("\"log-level [LEVEL]\"") != std::string::npos);
}

TEST_CASE("control requests: what cannot be done is an error answer") {
  fake_daemon d;
  CHECK(d.ask("show 5/51728") == "{\"error\":\"no vbd 5/51728\"}");
  CHECK(d.ask("show vbd/5/51712") == "{\"error\":\"no vbd vbd/5/51712\"}");
  CHECK(d.ask("show 5").find("\"error\":\"bad vbd '5'") != std::string::npos);
  CHECK(d.ask("show a/b/c/d").find("\"error\":\"bad vbd") != std::string::npos);
  CHECK(d.ask("show").find("usage: show") != std::string::npos);
  CHECK(d.ask("stats --csv").find("usage: stats") != std::string::npos);
  CHECK(d.ask("frobnicate now") == "{\"error\":\"unknown command 'frobnicate'; try help\"}");
  CHECK(d.ask("").find("empty request") != std::string::npos);
  CHECK(d.ask("list\x01").find("not a request") != std::string::npos);
  CHECK(d.ask("list \xff").find("not a request") != std::string::npos);
  CHECK(d.ask(std::string(200, 'x')).find("...'; try help") != std::string::npos);  // echoed cut short
  std::string many = "list";
  for (int i = 0; i < 100; ++i) many += " x";
  CHECK(d.ask(many).find("not a request") != std::string::npos);
  // Two vbds of one domain and devid under different types need the type.
  auto other = sample_vbd();
  other.type = "vbd";
  d.vbds.push_back(other);
  CHECK(d.ask("show 5/51712").find("is ambiguous: name its type, e.g. qdisk/5/51712") != std::string::npos);
  CHECK(d.ask("show vbd/5/51712").starts_with("{\"vbd\":"));
}

TEST_CASE("control requests: limits parses QEMU's names, refuses bad words before anything changes") {
  fake_daemon d;
  CHECK(d.ask("limits 5/51712") == "{\"error\":\"I/O limits are not served here\"}");
  std::optional<throttle_settings> seen;
  int calls = 0;
  d.ctx.limits = [&](const vbd_report& v, const std::optional<throttle_settings>& change) {
    ++calls;
    seen = change;
    CHECK(v.devid == 51712u);
    return control_context::limits_answer{"{\"limits\":{}}", {}};
  };
  CHECK(d.ask("limits 5/xvda") == "{\"limits\":{}}");
  CHECK_FALSE(seen.has_value());
  CHECK(d.ask("limits 5/51712 iops-total=100 bps-read-max=0 group=domain") == "{\"limits\":{}}");
  REQUIRE(seen.has_value());
  CHECK(seen->describe() == "iops-total=100 bps-read-max=0 group=domain");
  calls = 0;
  CHECK(d.ask("limits 9/51712 iops-total=100") == "{\"error\":\"no vbd 9/51712\"}");
  CHECK(d.ask("limits 5/51712 iops").find("usage: limits") != std::string::npos);
  CHECK(d.ask("limits 5/51712 iops=100") == "{\"error\":\"unknown limit 'iops'\"}");
  CHECK(d.ask("limits 5/51712 iops-total=100 iops-read=x") ==
        "{\"error\":\"iops-read must be a whole number, got 'x'\"}");
  CHECK(d.ask("limits 5/51712 iops-total=1 iops-total=2") == "{\"error\":\"iops-total given twice\"}");
  CHECK(d.ask("limits 5/51712 =5").find("unknown limit ''") != std::string::npos);
  CHECK(calls == 0);
  // What the daemon refuses (limits that do not add up) is its answer.
  d.ctx.limits = [](const vbd_report&, const std::optional<throttle_settings>&) {
    return control_context::limits_answer{{}, "iops-total-max (1) is below iops-total (2)"};
  };
  CHECK(d.ask("limits 5/51712 iops-total=2 iops-total-max=1") ==
        "{\"error\":\"iops-total-max (1) is below iops-total (2)\"}");
}

TEST_CASE("control requests: log-level shows and changes the running level") {
  fake_daemon d;
  CHECK(d.ask("log-level") == "{\"log_level\":\"info\"}");
  CHECK(d.ask("log-level debug") == "{\"log_level\":\"debug\",\"was\":\"info\"}");
  CHECK(d.level == severity::debug);
  CHECK(d.ask("log-level loud").find("usage: log-level") != std::string::npos);
  CHECK(d.level == severity::debug);
}
