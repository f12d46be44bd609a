#include <doctest/doctest.h>

#include <cctype>
#include <cmath>
#include <map>
#include <string>

#include "blkfront/json.hpp"
#include "blkfront/summary.hpp"

using namespace xbd::sim::blkfront;

namespace {

// A strict RFC 8259 recogniser that also collects the top-level keys, so
// tests can insist on valid JSON without a JSON library.
struct validator {
  std::string_view s;
  std::size_t i = 0;
  int depth = 0;
  std::map<std::string, std::string> top;  // key -> raw value text

  void ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\n' || s[i] == '\t' || s[i] == '\r')) ++i;
  }
  bool lit(std::string_view w) {
    if (s.substr(i, w.size()) != w) return false;
    i += w.size();
    return true;
  }
  bool string(std::string* out = nullptr) {
    if (i >= s.size() || s[i] != '"') return false;
    ++i;
    while (i < s.size() && s[i] != '"') {
      const auto c = static_cast<unsigned char>(s[i]);
      if (c < 0x20) return false;
      if (c == '\\') {
        ++i;
        if (i >= s.size()) return false;
        if (s[i] == 'u') {
          for (int k = 1; k <= 4; ++k)
            if (i + k >= s.size() || !std::isxdigit(static_cast<unsigned char>(s[i + k]))) return false;
          i += 4;
        } else if (std::string_view("\"\\/bfnrt").find(s[i]) == std::string_view::npos) {
          return false;
        }
      } else if (out) {
        *out += static_cast<char>(c);
      }
      ++i;
    }
    if (i >= s.size()) return false;
    ++i;
    return true;
  }
  bool number() {
    const std::size_t start = i;
    if (i < s.size() && s[i] == '-') ++i;
    if (i >= s.size() || !std::isdigit(static_cast<unsigned char>(s[i]))) return false;
    if (s[i] == '0' && i + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[i + 1]))) return false;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
    if (i < s.size() && s[i] == '.') {
      ++i;
      if (i >= s.size() || !std::isdigit(static_cast<unsigned char>(s[i]))) return false;
      while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
    }
    return i > start;
  }
  bool value() {
    ws();
    if (i >= s.size()) return false;
    const char c = s[i];
    if (c == '{') return object();
    if (c == '[') {
      ++i;
      ++depth;
      ws();
      if (i < s.size() && s[i] == ']') {
        ++i;
        --depth;
        return true;
      }
      for (;;) {
        if (!value()) return false;
        ws();
        if (i < s.size() && s[i] == ',') {
          ++i;
          continue;
        }
        if (i < s.size() && s[i] == ']') {
          ++i;
          --depth;
          return true;
        }
        return false;
      }
    }
    if (c == '"') return string();
    if (c == 't') return lit("true");
    if (c == 'f') return lit("false");
    if (c == 'n') return lit("null");
    return number();
  }
  bool object() {
    ++i;
    ++depth;
    ws();
    if (i < s.size() && s[i] == '}') {
      ++i;
      --depth;
      return true;
    }
    for (;;) {
      ws();
      std::string k;
      if (!string(&k)) return false;
      ws();
      if (i >= s.size() || s[i] != ':') return false;
      ++i;
      ws();
      const std::size_t start = i;
      const int d = depth;
      if (!value()) return false;
      if (d == 1) top[k] = std::string(s.substr(start, i - start));
      ws();
      if (i < s.size() && s[i] == ',') {
        ++i;
        continue;
      }
      if (i < s.size() && s[i] == '}') {
        ++i;
        --depth;
        return true;
      }
      return false;
    }
  }
  bool document() {
    ws();
    if (!value()) return false;
    ws();
    return i == s.size();
  }
};

bool valid(std::string_view s, validator* out = nullptr) {
  validator v;
  v.s = s;
  const bool ok = v.document();
  if (out) *out = v;
  return ok;
}

}  // namespace

TEST_CASE("strings are escaped: quotes, backslashes, control characters") {
  CHECK(json_escape("plain") == "\"plain\"");
  CHECK(json_escape("a\"b\\c") == "\"a\\\"b\\\\c\"");
  CHECK(json_escape("l1\nl2\t") == "\"l1\\nl2\\t\"");
  CHECK(json_escape(std::string("\x01\x1f", 2)) == "\"\\u0001\\u001f\"");
  CHECK(valid(json_escape(std::string("odd \x7f\x02 \"bytes\"", 14))));
}

TEST_CASE("the writer separates elements and nests containers") {
  json_writer j;
  j.begin_object();
  j.field("a", 1).field("b", "x");
  j.key("c").begin_array().value(1u).value(true).null().begin_object().end_object().end_array();
  j.key("d").value(1.5, 2);
  j.key("e").begin_object().field("f", -3).end_object();
  j.end_object();
  CHECK(j.str() == R"({"a":1,"b":"x","c":[1,true,null,{}],"d":1.50,"e":{"f":-3}})");
  CHECK(valid(j.str()));
}

TEST_CASE("NaN and infinity become null, keeping the line valid JSON") {
  json_writer j;
  j.begin_array().value(std::nan("")).value(1.0 / 0.0).value(0.25).end_array();
  CHECK(j.str() == "[null,null,0.250]");
}

TEST_CASE("the summary is one line of valid JSON with the documented fields") {
  summary s;
  s.domid = 5;
  s.devid = 51712;
  s.frontend = "/local/domain/5/device/vbd/51712";
  s.backend = "/local/domain/0/backend/qdisk/5/51712";
  s.features = backend_features{4, 4, 256, false};
  negotiated n;
  n.ring_page_order = 2;
  n.ring_pages = 4;
  n.queues = 2;
  n.indirect_segments = 256;
  s.neg = n;
  s.protocol = "x86_64-abi";
  s.ring_entries = 128;
  disk_properties d;
  d.sectors = 2048;
  d.flush = true;
  s.disk = d;
  s.workload = true;
  s.rw = "randrw";
  s.read_pct = 50;
  s.bs = 4096;
  s.qd = 32;
  s.effective_qd = 32;
  s.verify = true;
  s.run_id = 0xfedcba9876543210ull;
  s.cycles = 1;
  s.stats.ops = {600, 400, 10};
  s.stats.bytes_read = 600 * 4096;
  s.stats.bytes_written = 400 * 4096;
  s.stats.seconds = 2.0;
  for (int i = 1; i <= 1000; ++i) s.stats.latency.record(static_cast<std::uint64_t>(i) * 1000);
  s.stats.protocol_messages.push_back("a \"quoted\" message\n");
  s.backend_states = {2, 4, 5, 6};

  const std::string out = to_json(s);
  CHECK(out.find('\n') == std::string::npos);
  validator v;
  REQUIRE(valid(out, &v));
  for (const char* key :
       {"tool", "ok",       "exit",      "end",    "error",  "device",     "backend_features", "negotiated",
        "disk", "workload", "runtime_s", "iops",   "mib_s",  "lat_us",     "read_lat_us",      "write_lat_us",
        "ops",  "bytes",    "requests",  "errors", "verify", "reconnects", "backend_states"})
    CHECK_MESSAGE(v.top.contains(key), key);
  CHECK(v.top["iops"] == "500.0");  // (600 + 400) / 2 s
  CHECK(v.top["mib_s"] == "1.95");  // 1000 * 4 KiB / 2 s
  CHECK(v.top["ok"] == "true");
  CHECK(v.top["exit"] == "0");
  CHECK(v.top["error"] == "null");
  CHECK(v.top["backend_states"] == "[2,4,5,6]");
  CHECK(v.top["ops"] == R"({"read":600,"write":400,"flush":10,"discard":0,"barrier":0})");
  auto number_after = [](const std::string& obj, const std::string& key) {
    const auto at = obj.find("\"" + key + "\":");
    REQUIRE(at != std::string::npos);
    return std::stod(obj.substr(at + key.size() + 3));
  };
  // Latencies of 1..1000 us: the histogram is within 1/64.
  CHECK(number_after(v.top["lat_us"], "p50") == doctest::Approx(500).epsilon(1.0 / 64));
  CHECK(number_after(v.top["lat_us"], "p99") == doctest::Approx(990).epsilon(1.0 / 64));
  CHECK(number_after(v.top["lat_us"], "min") == doctest::Approx(1.0));
  CHECK(number_after(v.top["lat_us"], "max") == doctest::Approx(1000.0));
  CHECK(number_after(v.top["lat_us"], "mean") == doctest::Approx(500.5));
  CHECK(number_after(v.top["lat_us"], "count") == 1000);
  CHECK(v.top["negotiated"].find("\"ring_page_order\":2") != std::string::npos);
  CHECK(v.top["negotiated"].find("\"queues\":2") != std::string::npos);
  CHECK(v.top["negotiated"].find("\"indirect_segments\":256") != std::string::npos);
  CHECK(v.top["negotiated"].find("\"protocol\":\"x86_64-abi\"") != std::string::npos);
  CHECK(v.top["workload"].find("\"run_id\":\"0xfedcba9876543210\"") != std::string::npos);
  CHECK_FALSE(v.top.contains("raw"));
}

TEST_CASE("exit status: mismatches and protocol errors fail the run, setup failures are 2") {
  summary s;
  CHECK(exit_status(s) == 0);
  s.stats.mismatches[static_cast<std::size_t>(verdict::stale)] = 1;
  CHECK(exit_status(s) == 1);
  validator v;
  REQUIRE(valid(to_json(s), &v));
  CHECK(v.top["ok"] == "false");
  CHECK(v.top["verify"].find("\"stale\":1") != std::string::npos);

  summary p;
  p.stats.protocol_errors = 1;
  CHECK(exit_status(p) == 1);

  summary io;
  io.stats.io_errors = 3;
  CHECK(exit_status(io) == 1);
  io.allow_io_errors = true;
  CHECK(exit_status(io) == 0);

  summary stall;
  stall.end = "stalled";
  CHECK(exit_status(stall) == 1);

  summary raw;
  raw.raw = script_result{};
  CHECK(exit_status(raw) == 0);
  raw.raw->failures.push_back("line 3: no response with id 1");
  CHECK(exit_status(raw) == 1);
  REQUIRE(valid(to_json(raw), &v));

  summary setup;
  setup.setup_failed = true;
  setup.error = "no such device";
  CHECK(exit_status(setup) == 2);
  REQUIRE(valid(to_json(setup), &v));
  CHECK(v.top["error"] == "\"no such device\"");
}

TEST_CASE("discards and barriers appear in the summary: ops, bytes, latency, workload, disk") {
  summary s;
  s.workload = true;
  s.rw = "randrw";
  s.read_pct = 50;
  s.discard_pct = 20;
  s.discard_secure = true;
  s.barrier_every = 8;
  s.bs = 4096;
  disk_properties d;
  d.sectors = 2048;
  d.barrier = true;
  d.discard = true;
  d.discard_granularity = 4096;
  d.discard_alignment = 512;
  d.discard_secure = true;
  s.disk = d;
  s.stats.ops = {300, 200, 0, 100};
  s.stats.barriers = 25;
  s.stats.bytes_read = 300 * 4096;
  s.stats.bytes_written = 200 * 4096;
  s.stats.bytes_discarded = 100 * 4096;
  s.stats.discard_latency.record(5000);
  s.stats.seconds = 1.0;
  s.stats.mismatches[static_cast<std::size_t>(verdict::not_discarded)] = 2;

  validator v;
  REQUIRE(valid(to_json(s), &v));
  CHECK(v.top["ops"] == R"({"read":300,"write":200,"flush":0,"discard":100,"barrier":25})");
  CHECK(v.top["bytes"] == R"({"read":1228800,"written":819200,"discarded":409600})");
  CHECK(v.top["iops"] == "600.0");  // reads, writes and discards
  CHECK(v.top["mib_s"] == "1.95");  // only the bytes that moved
  CHECK(v.top.contains("discard_lat_us"));
  CHECK(v.top["discard_lat_us"].find("\"count\":1") != std::string::npos);
  CHECK(v.top["workload"].find("\"discard_pct\":20,\"discard_secure\":true,\"barrier_every\":8") != std::string::npos);
  CHECK(v.top["disk"].find("\"barrier\":true,\"discard\":true,\"discard_granularity\":4096,"
                           "\"discard_alignment\":512,\"discard_secure\":true") != std::string::npos);
  CHECK(v.top["verify"].find("\"not_discarded\":2") != std::string::npos);
  CHECK(exit_status(s) == 1);
}
