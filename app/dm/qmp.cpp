#include "qmp.hpp"

#include <cctype>
#include <cstddef>
#include <optional>

namespace xbd::dm {
namespace {

// The version libxl reads from the greeting; it gates a few commands on it.
// Debian 12's qemu-system-xen is 7.2, the QEMU this stands in for.
constexpr std::string_view version_json =
    R"json({"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": " (xen-blkbackd-dm)"})json";

// Far more than any command libxl sends; a client that goes past it without
// completing one JSON value is not speaking QMP.
constexpr std::size_t max_pending = 64 * 1024;
constexpr int max_depth = 32;

enum class scan { ok, incomplete, invalid };

// A minimal JSON reader: enough to find where one value ends and to pull the
// top-level "execute" and "id" members out of a command object.
struct reader {
  std::string_view s;
  std::size_t i = 0;

  void skip_ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n')) ++i;
  }

  // A string starting at s[i] == '"'; its decoded text (escapes other than
  // the simple ones become '?': command names are plain ASCII) into *out.
  scan string(std::string* out) {
    ++i;
    while (i < s.size()) {
      const char c = s[i++];
      if (c == '"') return scan::ok;
      if (static_cast<unsigned char>(c) < 0x20) return scan::invalid;
      if (c != '\\') {
        if (out) *out += c;
        continue;
      }
      if (i >= s.size()) return scan::incomplete;
      const char e = s[i++];
      if (e == 'u') {
        if (s.size() - i < 4) return scan::incomplete;
        i += 4;
        if (out) *out += '?';
      } else if (std::string_view("\"\\/bfnrt").find(e) != std::string_view::npos) {
        if (out) *out += (e == 'n' ? '\n' : e == 't' ? '\t' : e);
      } else {
        return scan::invalid;
      }
    }
    return scan::incomplete;
  }

  scan literal() {
    const std::size_t start = i;
    while (i < s.size() &&
           (std::isalnum(static_cast<unsigned char>(s[i])) || s[i] == '-' || s[i] == '+' || s[i] == '.'))
      ++i;
    if (i == s.size()) return scan::incomplete;  // a number may go on
    return i > start ? scan::ok : scan::invalid;
  }

  scan value(int depth) {
    skip_ws();
    if (i >= s.size()) return scan::incomplete;
    if (depth > max_depth) return scan::invalid;
    const char c = s[i];
    if (c == '"') return string(nullptr);
    if (c == '{' || c == '[') return container(depth, nullptr, nullptr);
    return literal();
  }

  // An object or array at s[i]. For the top-level object, the text of the
  // "execute" member and the raw JSON of the "id" member are captured.
  scan container(int depth, std::optional<std::string>* execute, std::optional<std::string_view>* id) {
    const char close = s[i] == '{' ? '}' : ']';
    ++i;
    skip_ws();
    if (i >= s.size()) return scan::incomplete;
    if (s[i] == close) {
      ++i;
      return scan::ok;
    }
    for (;;) {
      std::string key;
      if (close == '}') {
        skip_ws();
        if (i >= s.size()) return scan::incomplete;
        if (s[i] != '"') return scan::invalid;
        if (auto r = string(&key); r != scan::ok) return r;
        skip_ws();
        if (i >= s.size()) return scan::incomplete;
        if (s[i++] != ':') return scan::invalid;
      }
      skip_ws();
      const std::size_t start = i;
      if (execute && key == "execute" && i < s.size() && s[i] == '"') {
        std::string name;
        if (auto r = string(&name); r != scan::ok) return r;
        *execute = std::move(name);
      } else if (auto r = value(depth + 1); r != scan::ok) {
        return r;
      }
      if (id && key == "id") *id = s.substr(start, i - start);
      skip_ws();
      if (i >= s.size()) return scan::incomplete;
      const char sep = s[i++];
      if (sep == close) return scan::ok;
      if (sep != ',') return scan::invalid;
    }
  }
};

std::string reply(std::string_view id, std::string_view body) {
  std::string r = "{";
  r += body;
  if (!id.empty()) {
    r += ", \"id\": ";
    r += id;
  }
  r += "}\r\n";
  return r;
}

std::string error_reply(std::string_view id, std::string_view error_class, std::string_view desc) {
  std::string body = R"("error": {"class": ")";
  body += error_class;
  body += R"(", "desc": ")";
  for (const char c : desc) {
    if (c == '"' || c == '\\') body += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) body += c;
  }
  body += "\"}";
  return reply(id, body);
}

// A JSON string: the device names and paths come from xenstore.
std::string quoted(std::string_view text) {
  std::string q = "\"";
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      q += '\\';
      q += c;
    } else if (u < 0x20 || u == 0x7f) {
      static constexpr char hex[] = "0123456789abcdef";
      q += "\\u00";
      q += hex[u >> 4];
      q += hex[u & 15];
    } else {
      q += c;
    }
  }
  return q + '"';
}

std::string field(std::string_view name, std::uint64_t v) {
  return "\"" + std::string(name) + "\": " + std::to_string(v);
}

// QEMU 7.2's BlockDeviceStats, every mandatory member.
std::string blockstats_entry(const block_device& d) {
  std::string st =
      "{" + field("rd_bytes", d.rd_bytes) + ", " + field("wr_bytes", d.wr_bytes) + ", " + field("unmap_bytes", 0) +
      ", " + field("rd_operations", d.rd_operations) + ", " + field("wr_operations", d.wr_operations) + ", " +
      field("flush_operations", d.flush_operations) + ", " + field("unmap_operations", d.unmap_operations) + ", " +
      field("rd_total_time_ns", d.rd_total_time_ns) + ", " + field("wr_total_time_ns", d.wr_total_time_ns) + ", " +
      field("flush_total_time_ns", d.flush_total_time_ns) + ", " + field("unmap_total_time_ns", d.unmap_total_time_ns) +
      ", ";
  for (const char* zero : {"rd_merged", "wr_merged", "unmap_merged", "failed_rd_operations", "failed_wr_operations",
                           "failed_flush_operations", "failed_unmap_operations", "invalid_rd_operations",
                           "invalid_wr_operations", "invalid_flush_operations", "invalid_unmap_operations"})
    st += field(zero, 0) + ", ";
  st += R"("account_invalid": false, "account_failed": false, "timed_stats": []})";
  return "{\"device\": " + quoted(d.device) + ", \"stats\": " + st + "}";
}

// QEMU 7.2's BlockInfo of a disk with a raw image inserted.
std::string block_entry(const block_device& d) {
  const std::string ro = d.read_only ? "true" : "false";
  return "{\"device\": " + quoted(d.device) +
         R"(, "locked": false, "removable": false, "type": "unknown", "inserted": {"file": )" + quoted(d.file) +
         ", \"ro\": " + ro + R"(, "drv": "raw", "encrypted": false, "encryption_key_missing": false, )" +
         R"("detect_zeroes": "off", "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0, )" +
         R"("backing_file_depth": 0, "write_threshold": 0, "cache": {"writeback": true, "direct": )" +
         (d.direct ? "true" : "false") + R"(, "no-flush": false}, "image": {"filename": )" + quoted(d.file) +
         R"(, "format": "raw", )" + field("virtual-size", d.size) + "}}}";
}

}  // namespace

std::string qmp_session::greeting() {
  std::string g = R"({"QMP": {"version": )";
  g += version_json;
  g += R"(, "capabilities": []}})";
  g += "\r\n";
  return g;
}

std::string qmp_session::feed(std::string_view bytes) {
  std::string out;
  if (broken_) return out;
  pending_.append(bytes);
  for (;;) {
    reader r{pending_};
    r.skip_ws();
    if (r.i == pending_.size()) {
      pending_.clear();
      break;
    }
    const std::size_t start = r.i;
    std::optional<std::string> command;
    std::optional<std::string_view> id;
    scan result = scan::invalid;
    if (pending_[start] == '{')
      result = r.container(0, &command, &id);
    else if (pending_[start] == '[' || pending_[start] == '"')
      result = r.value(0);
    if (result == scan::incomplete) {
      if (pending_.size() > max_pending) broken_ = true;
      break;
    }
    if (result == scan::invalid) {
      out += error_reply({}, "GenericError", "JSON parse error");
      broken_ = true;
      break;
    }
    const std::string id_text(id.value_or(std::string_view{}));
    if (!command)
      out += error_reply(id_text, "GenericError", "QMP input lacks member 'execute'");
    else
      out += execute(*command, id_text);
    pending_.erase(0, r.i);
    if (machine_->quit) break;
  }
  return out;
}

std::string qmp_session::execute(std::string_view command, std::string_view id) {
  if (!log_.empty()) log_ += ' ';
  log_ += command;
  if (!negotiated_) {
    if (command != "qmp_capabilities")
      return error_reply(id, "CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'");
    negotiated_ = true;
    return reply(id, R"("return": {})");
  }
  if (command == "qmp_capabilities")
    return error_reply(id, "CommandNotFound", "Capabilities negotiation is already complete, command ignored");
  // libxl: the serial ports QEMU opened, to publish their ptys. None here.
  if (command == "query-chardev") return reply(id, R"("return": [])");
  if (command == "query-status") {
    const char* status = machine_->running ? "running" : machine_->prelaunch ? "prelaunch" : "paused";
    return reply(id, std::string(R"("return": {"status": ")") + status + R"(", "singlestep": false, "running": )" +
                         (machine_->running ? "true" : "false") + "}");
  }
  if (command == "cont") {
    machine_->running = true;
    machine_->prelaunch = false;
    return reply(id, R"("return": {})");
  }
  if (command == "stop") {
    machine_->running = false;
    machine_->prelaunch = false;
    return reply(id, R"("return": {})");
  }
  if (command == "query-vnc") return reply(id, R"("return": {"enabled": false})");
  if (command == "query-blockstats" || command == "query-block") return query_blocks(command, id);
  if (command == "query-version") return reply(id, std::string(R"("return": )") + std::string(version_json));
  if (command == "query-commands") {
    return reply(id, R"("return": [{"name": "qmp_capabilities"}, {"name": "query-chardev"}, )"
                     R"({"name": "query-status"}, {"name": "cont"}, {"name": "stop"}, {"name": "query-vnc"}, )"
                     R"({"name": "query-version"}, {"name": "query-commands"}, {"name": "query-blockstats"}, )"
                     R"({"name": "query-block"}, {"name": "quit"}])");
  }
  if (command == "quit") {
    machine_->quit = true;
    return reply(id, R"("return": {})");
  }
  return error_reply(id, "CommandNotFound", "The command " + std::string(command) + " has not been found");
}

// The disks' live counters come from the daemon; a query-block right after
// a query-blockstats (libxenstat asks one per disk) is answered from what
// that fetched.
std::string qmp_session::query_blocks(std::string_view command, std::string_view id) {
  const auto now = std::chrono::steady_clock::now();
  if (command == "query-blockstats" || known_.empty() || now - known_at_ > std::chrono::seconds(2)) {
    auto got = blocks_ ? blocks_() : std::variant<std::vector<block_device>, std::string>(std::vector<block_device>{});
    if (auto* why = std::get_if<std::string>(&got)) return error_reply(id, "GenericError", "xen-blkbackd: " + *why);
    known_ = std::get<std::vector<block_device>>(std::move(got));
    known_at_ = now;
  }
  std::string list;
  for (const block_device& d : known_)
    list += (list.empty() ? "" : ", ") + (command == "query-block" ? block_entry(d) : blockstats_entry(d));
  return reply(id, "\"return\": [" + list + "]");
}

}  // namespace xbd::dm
