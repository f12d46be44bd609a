#include "blkback/config.hpp"

#include "asio_xen/xen.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <utility>

namespace xbd::blkback {

static_assert(limits::max_indirect_segments ==
              BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * (xen::page_size / sizeof(blkif_request_segment)));
static_assert(limits::direct_segments == BLKIF_MAX_SEGMENTS_PER_REQUEST);
static_assert(limits::max_domid == DOMID_FIRST_RESERVED - 1);

std::string_view to_string(direct_io_policy p) {
  switch (p) {
    case direct_io_policy::follow_key:
      return "auto";
    case direct_io_policy::never:
      return "never";
    case direct_io_policy::always:
      return "always";
  }
  return "?";
}

std::string_view to_string(ring_protocol p) {
  switch (p) {
    case ring_protocol::native:
      return "native";
    case ring_protocol::x86_32:
      return XEN_IO_PROTO_ABI_X86_32;
    case ring_protocol::x86_64:
      return XEN_IO_PROTO_ABI_X86_64;
  }
  return "?";
}

namespace {

std::string located(std::string_view source, unsigned line, unsigned column, std::string_view message) {
  std::string s(source);
  s += ':' + std::to_string(line) + ':' + std::to_string(column) + ": ";
  s += message;
  return s;
}

}  // namespace

config_error::config_error(std::string_view source, unsigned line, unsigned column, std::string_view message)
    : std::runtime_error(located(source, line, column, message)), line_(line), column_(column) {}

config_error::config_error(std::string_view source, std::string_view message)
    : std::runtime_error(std::string(source) + ": " + std::string(message)) {}

namespace {

// Every key the file may hold, and its table. Also what lets an unknown key
// be answered with where it belongs.
struct known_key {
  std::string_view table;
  std::string_view key;
};
constexpr known_key layout[] = {
    {"backend", "types"},
    {"backend", "domid"},
    {"rings", "max-ring-page-order"},
    {"rings", "max-queues"},
    {"rings", "max-indirect-segments"},
    {"rings", "default-protocol"},
    {"rings", "poll-microseconds"},
    {"io", "direct-io"},
    {"io", "worker-threads"},
    {"io", "discard"},
    {"io", "resize-poll-seconds"},
    {"io", "open-timeout-seconds"},
    {"io", "sector-size"},
    {"io", "buffer-memory"},
    {"io", "journal"},
    {"io", "journal-directory"},
    {"io", "zero-copy"},
    {"io", "zero-copy-min-bytes"},
    {"io", "persistent-grants"},
    {"io", "persistent-grants-per-ring"},
    {"nbd", "connect-timeout-seconds"},
    {"nbd", "reconnect-seconds"},
    {"images", "qemu-storage-daemon"},
    {"images", "start-timeout-seconds"},
    {"images", "runtime-directory"},
    {"rbd", "cluster"},
    {"rbd", "conf"},
    {"rbd", "client-id"},
    {"rbd", "connect-timeout-seconds"},
    {"rbd", "op-timeout-seconds"},
    {"control", "socket"},
    {"log", "level"},
    {"log", "sink"},
    {"limits", "group"},
    {"limits", "iops-total"},
    {"limits", "iops-read"},
    {"limits", "iops-write"},
    {"limits", "bps-total"},
    {"limits", "bps-read"},
    {"limits", "bps-write"},
    {"limits", "iops-total-max"},
    {"limits", "iops-read-max"},
    {"limits", "iops-write-max"},
    {"limits", "bps-total-max"},
    {"limits", "bps-read-max"},
    {"limits", "bps-write-max"},
    {"limits", "iops-total-max-length"},
    {"limits", "iops-read-max-length"},
    {"limits", "iops-write-max-length"},
    {"limits", "bps-total-max-length"},
    {"limits", "bps-read-max-length"},
    {"limits", "bps-write-max-length"},
    {"limits", "iops-size"},
};

bool is_table_name(std::string_view name) {
  return std::any_of(std::begin(layout), std::end(layout), [&](const known_key& k) { return k.table == name; });
}

// Operators type max_queues or Max-Queues; both mean a key we know.
std::string normalised(std::string_view key) {
  std::string s(key);
  for (char& c : s) {
    if (c == '_')
      c = '-';
    else if (c >= 'A' && c <= 'Z')
      c = static_cast<char>(c - 'A' + 'a');
  }
  return s;
}

// A string from the file, quoted for a message. Control characters are
// escaped so that an error stays one line in the log.
std::string in_quotes(std::string_view text) {
  std::string s = "\"";
  for (unsigned char c : text) {
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      s += buf;
    } else {
      if (c == '"' || c == '\\') s += '\\';
      s += static_cast<char>(c);
    }
  }
  return s + '"';
}

std::string type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a floating-point number";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

bool valid_backend_type(std::string_view name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
  });
}

// Collects every problem of the file and reports the first in file order,
// which is the one an operator reading top to bottom meets first (toml++
// iterates keys in sorted order, not file order).
class reader {
 public:
  explicit reader(std::string_view source) : source_(source) {}

  void problem(const toml::source_position& where, std::string message) {
    problems_.push_back({where, std::move(message)});
  }
  void problem(const toml::node& n, std::string message) { problem(n.source().begin, std::move(message)); }

  void throw_first() const {
    if (problems_.empty()) return;
    const auto& first = *std::min_element(problems_.begin(), problems_.end(), [](const auto& a, const auto& b) {
      return std::pair(a.where.line, a.where.column) < std::pair(b.where.line, b.where.column);
    });
    throw config_error(source_, first.where.line, first.where.column, first.message);
  }

  // Every key of `t` (the root when table_name is empty) must be known.
  void check_keys(const toml::table& t, std::string_view table_name) {
    for (auto&& [k, v] : t) {
      const std::string_view key = k.str();
      if (table_name.empty() ? is_table_name(key) : is_known(table_name, key)) continue;
      std::string message;
      if (table_name.empty()) {
        message = v.is_table() ? "unknown table [" + std::string(key) + "]" : "unknown key '" + std::string(key) + "'";
      } else {
        message = "unknown key '" + std::string(key) + "' in [" + std::string(table_name) + "]";
      }
      message += hint(key, table_name);
      problem(k.source().begin, std::move(message));
    }
  }

  // The table `name` of the root, or null when absent or not a table.
  const toml::table* table(const toml::table& root, std::string_view name) {
    const toml::node* n = root.get(name);
    if (n == nullptr) return nullptr;
    if (const auto* t = n->as_table()) return t;
    problem(*n, std::string(name) + " must be a table, not " + type_name(*n));
    return nullptr;
  }

  // Whether `out` was set from the file.
  bool read(const toml::table* t, std::string_view table, std::string_view key, unsigned lo, unsigned hi,
            unsigned& out) {
    const auto v = integer(t, table, key);
    if (!v) return false;
    if (!in_range(v->second, lo, hi)) {
      problem(*v->first, name(table, key) + " must be " + std::to_string(lo) + ".." + std::to_string(hi) + ", got " +
                             std::to_string(v->second));
      return false;
    }
    out = static_cast<unsigned>(v->second);
    return true;
  }

  void read(const toml::table* t, std::string_view table, std::string_view key, bool& out) {
    const toml::node* n = find(t, key);
    if (n == nullptr) return;
    if (const auto* b = n->as_boolean())
      out = b->get();
    else
      problem(*n, name(table, key) + " must be true or false, not " + type_name(*n));
  }

  // The string value of a key and its node, for the caller to interpret.
  std::optional<std::pair<const toml::node*, std::string_view>> string(const toml::table* t, std::string_view table,
                                                                       std::string_view key) {
    const toml::node* n = find(t, key);
    if (n == nullptr) return std::nullopt;
    if (const auto* s = n->as_string()) return std::pair{n, std::string_view(s->get())};
    problem(*n, name(table, key) + " must be a string, not " + type_name(*n));
    return std::nullopt;
  }

  std::optional<std::pair<const toml::node*, std::int64_t>> integer(const toml::table* t, std::string_view table,
                                                                    std::string_view key) {
    const toml::node* n = find(t, key);
    if (n == nullptr) return std::nullopt;
    if (const auto* i = n->as_integer()) return std::pair{n, i->get()};
    problem(*n, name(table, key) + " must be an integer, not " + type_name(*n));
    return std::nullopt;
  }

  static const toml::node* find(const toml::table* t, std::string_view key) {
    return t == nullptr ? nullptr : t->get(key);
  }
  static std::string name(std::string_view table, std::string_view key) {
    return std::string(table) + '.' + std::string(key);
  }
  static bool in_range(std::int64_t v, unsigned lo, unsigned hi) {
    return v >= static_cast<std::int64_t>(lo) && v <= static_cast<std::int64_t>(hi);
  }

 private:
  struct located_problem {
    toml::source_position where;
    std::string message;
  };

  static bool is_known(std::string_view table, std::string_view key) {
    return std::any_of(std::begin(layout), std::end(layout),
                       [&](const known_key& k) { return k.table == table && k.key == key; });
  }

  // " (did you mean 'max-queues'?)" or " (it belongs in [io])" when the
  // key is a near miss of one we know.
  static std::string hint(std::string_view key, std::string_view table) {
    const std::string n = normalised(key);
    if (table.empty() && is_table_name(n)) return " (did you mean [" + n + "]?)";
    for (const auto& k : layout) {
      if (k.key != n) continue;
      if (k.table == table) return " (did you mean '" + std::string(k.key) + "'?)";
      return " ('" + std::string(k.key) + "' belongs in [" + std::string(k.table) + "])";
    }
    return {};
  }

  std::string_view source_;
  std::vector<located_problem> problems_;
};

void read_backend(reader& r, const toml::table* t, settings& s) {
  if (const toml::node* n = reader::find(t, "types")) {
    if (const auto* a = n->as_array()) {
      if (a->empty()) r.problem(*n, "backend.types must name at least one backend type");
      std::vector<std::string> types;
      for (const toml::node& e : *a) {
        const auto* str = e.as_string();
        if (str == nullptr) {
          r.problem(e, "backend.types entries must be strings, not " + type_name(e));
          continue;
        }
        const std::string& type = str->get();
        // The name becomes a xenstore path component: backend/<type>/...
        if (!valid_backend_type(type))
          r.problem(e, "backend.types: " + in_quotes(type) +
                           " is not a backend type name (lower-case letters, digits, '-' and '_')");
        else if (std::find(types.begin(), types.end(), type) != types.end())
          r.problem(e, "backend.types: " + in_quotes(type) + " is listed twice");
        else
          types.push_back(type);
      }
      if (!types.empty()) s.backend_types = std::move(types);
    } else {
      r.problem(*n, "backend.types must be an array of strings, not " + type_name(*n));
    }
  }
  unsigned domid = 0;
  if (r.read(t, "backend", "domid", 0, limits::max_domid, domid)) s.domid = domid;
}

void read_rings(reader& r, const toml::table* t, settings& s) {
  r.read(t, "rings", "max-ring-page-order", 0, limits::max_ring_page_order, s.max_ring_page_order);
  r.read(t, "rings", "max-queues", 0, limits::max_queues, s.max_queues);
  r.read(t, "rings", "poll-microseconds", 0, limits::max_poll_microseconds, s.poll_microseconds);
  if (const auto v = r.integer(t, "rings", "max-indirect-segments")) {
    const std::int64_t n = v->second;
    if (n == 0 || reader::in_range(n, limits::direct_segments + 1, limits::max_indirect_segments)) {
      s.max_indirect_segments = static_cast<unsigned>(n);
    } else {
      std::string m = "rings.max-indirect-segments must be 0 (off) or " + std::to_string(limits::direct_segments + 1) +
                      ".." + std::to_string(limits::max_indirect_segments) + ", got " + std::to_string(n);
      if (n > 0 && n <= limits::direct_segments)
        m += ": a direct request already carries " + std::to_string(limits::direct_segments) + " segments";
      r.problem(*v->first, std::move(m));
    }
  }
  if (const auto v = r.string(t, "rings", "default-protocol")) {
    if (v->second == "native")
      s.default_protocol = ring_protocol::native;
    else if (v->second == XEN_IO_PROTO_ABI_X86_32)
      s.default_protocol = ring_protocol::x86_32;
    else if (v->second == XEN_IO_PROTO_ABI_X86_64)
      s.default_protocol = ring_protocol::x86_64;
    else
      r.problem(*v->first, "rings.default-protocol must be \"native\", \"x86_32-abi\" or \"x86_64-abi\", got " +
                               in_quotes(v->second));
  }
}

void read_data_path(reader& r, const toml::table* t, settings& s);

void read_io(reader& r, const toml::table* t, settings& s) {
  if (const auto v = r.string(t, "io", "direct-io")) {
    if (v->second == "auto")
      s.direct_io = direct_io_policy::follow_key;
    else if (v->second == "never")
      s.direct_io = direct_io_policy::never;
    else if (v->second == "always")
      s.direct_io = direct_io_policy::always;
    else
      r.problem(*v->first, "io.direct-io must be \"auto\", \"never\" or \"always\", got " + in_quotes(v->second));
  }
  r.read(t, "io", "worker-threads", 0, limits::max_worker_threads, s.worker_threads);
  r.read(t, "io", "discard", s.discard);
  r.read(t, "io", "resize-poll-seconds", 0, limits::max_resize_poll_seconds, s.resize_poll_seconds);
  r.read(t, "io", "open-timeout-seconds", 1, limits::max_open_timeout_seconds, s.open_timeout_seconds);
  if (const auto v = r.integer(t, "io", "sector-size")) {
    if (v->second != 0 && !valid_sector_size(v->second))
      r.problem(*v->first,
                "io.sector-size must be 0 (from the store), 512, 1024, 2048 or 4096, got " + std::to_string(v->second));
    else
      s.sector_size = static_cast<unsigned>(v->second);
  }
  if (const auto v = r.string(t, "io", "buffer-memory")) {
    const auto bytes = parse_size(v->second);
    if (!bytes)
      r.problem(*v->first,
                "io.buffer-memory must be a size such as \"256MiB\" or \"1GiB\", got " + in_quotes(v->second));
    else if (*bytes < limits::min_buffer_memory || *bytes > limits::max_buffer_memory)
      r.problem(*v->first, "io.buffer-memory must be " + format_size(limits::min_buffer_memory) + ".." +
                               format_size(limits::max_buffer_memory) + ", got " + in_quotes(v->second));
    else
      s.buffer_memory = *bytes;
  }
  r.read(t, "io", "journal", s.journal);
  if (const auto v = r.string(t, "io", "journal-directory")) {
    if (v->second.empty() || v->second.front() != '/')
      r.problem(*v->first, "io.journal-directory must be an absolute path, got " + in_quotes(v->second));
    else
      s.journal_directory = std::string(v->second);
  }
  read_data_path(r, t, s);
}

// How guest data moves (docs/configuration.md, zero-copy and persistent grants).
void read_data_path(reader& r, const toml::table* t, settings& s) {
  r.read(t, "io", "zero-copy", s.zero_copy);
  if (const auto v = r.string(t, "io", "zero-copy-min-bytes")) {
    const auto bytes = parse_size(v->second);
    if (!bytes || *bytes > limits::max_zero_copy_min_bytes)
      r.problem(*v->first, "io.zero-copy-min-bytes must be a size from \"0\" to \"" +
                               format_size(limits::max_zero_copy_min_bytes) + "\" such as \"64KiB\", got " +
                               in_quotes(v->second));
    else
      s.zero_copy_min_bytes = *bytes;
  }
  r.read(t, "io", "persistent-grants", s.persistent_grants);
  r.read(t, "io", "persistent-grants-per-ring", 1, limits::max_persistent_grants_per_ring,
         s.persistent_grants_per_ring);
}

void read_nbd(reader& r, const toml::table* t, settings& s) {
  r.read(t, "nbd", "connect-timeout-seconds", 1, limits::max_nbd_seconds, s.nbd.connect_timeout_seconds);
  r.read(t, "nbd", "reconnect-seconds", 0, limits::max_nbd_seconds, s.nbd.reconnect_seconds);
}

void read_images(reader& r, const toml::table* t, settings& s) {
  if (const auto v = r.string(t, "images", "qemu-storage-daemon")) {
    if (v->second.empty())
      r.problem(*v->first, "images.qemu-storage-daemon must name a program, got \"\"");
    else
      s.images.program = std::string(v->second);
  }
  r.read(t, "images", "start-timeout-seconds", 1, limits::max_nbd_seconds, s.images.start_timeout_seconds);
  if (const auto v = r.string(t, "images", "runtime-directory")) {
    if (v->second.empty() || v->second.front() != '/')
      r.problem(*v->first, "images.runtime-directory must be an absolute path, got " + in_quotes(v->second));
    else
      s.images.runtime_directory = std::string(v->second);
  }
}

// A Ceph name (cluster, client id): what ceph itself accepts in them.
bool ceph_name(std::string_view v) {
  if (v.empty() || v.size() > 64) return false;
  for (char c : v)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
          c == '.'))
      return false;
  return true;
}

void read_rbd(reader& r, const toml::table* t, settings& s) {
  for (auto [key, field] : {std::pair{"cluster", &s.rbd.cluster}, std::pair{"client-id", &s.rbd.client_id}}) {
    if (const auto v = r.string(t, "rbd", key)) {
      if (!ceph_name(v->second))
        r.problem(*v->first, std::string("rbd.") + key + " must be 1 to 64 letters, digits, '.', '_' or '-', got " +
                                 in_quotes(v->second));
      else
        *field = std::string(v->second);
    }
  }
  if (const auto v = r.string(t, "rbd", "conf")) {
    if (!v->second.empty() && v->second.front() != '/')
      r.problem(*v->first, "rbd.conf must be an absolute path or \"\", got " + in_quotes(v->second));
    else
      s.rbd.conf = std::string(v->second);
  }
  r.read(t, "rbd", "connect-timeout-seconds", 1, limits::max_nbd_seconds, s.rbd.connect_timeout_seconds);
  r.read(t, "rbd", "op-timeout-seconds", 0, limits::max_nbd_seconds, s.rbd.op_timeout_seconds);
}

void read_control(reader& r, const toml::table* t, settings& s) {
  if (const auto v = r.string(t, "control", "socket")) {
    if (!v->second.empty() && v->second.front() != '/')
      r.problem(*v->first, "control.socket must be an absolute path or \"\" (none), got " + in_quotes(v->second));
    else if (v->second.size() > limits::max_socket_path)
      r.problem(*v->first, "control.socket must be at most " + std::to_string(limits::max_socket_path) +
                               " bytes long (a unix socket's path), got " + std::to_string(v->second.size()));
    else
      s.control.socket = std::string(v->second);
  }
}

void read_log(reader& r, const toml::table* t, settings& s) {
  if (const auto v = r.string(t, "log", "level")) {
    if (!parse_severity(v->second, s.log.level))
      r.problem(*v->first, "log.level must be \"trace\", \"debug\", \"info\", \"warning\" or \"error\", got " +
                               in_quotes(v->second));
  }
  if (const auto v = r.string(t, "log", "sink")) {
    const std::string_view sink = v->second;
    if (sink == "stderr" || sink == "syslog") {
      s.log.sink = sink;
    } else if (sink.starts_with("file:")) {
      // The daemon runs with / as working directory under systemd; a
      // relative path would quietly mean something else when run by hand.
      if (sink.size() > 5 && sink[5] == '/')
        s.log.sink = sink;
      else
        r.problem(*v->first,
                  "log.sink: the file must be an absolute path (\"file:/var/log/...\"), got " + in_quotes(sink));
    } else {
      r.problem(*v->first,
                "log.sink must be \"stderr\", \"syslog\" or \"file:/absolute/path\", got " + in_quotes(sink));
    }
  }
}

// QEMU's throttle names; each an integer, `group` a string. The limits
// must add up (throttle.hpp's validate()) as a whole. The file is the
// lowest source, so a value that means "none" (0, a max-length of 1, the
// group "") is the same as no key.
void read_limits(reader& r, const toml::table* t, settings& s) {
  if (!t) return;
  for (const std::string_view key : throttle_settings::names()) {
    const auto v = r.integer(t, "limits", key);
    if (!v) continue;
    if (v->second < 0) {
      r.problem(*v->first, "limits." + std::string(key) + " must be 0 or more, got " + std::to_string(v->second));
      continue;
    }
    throttle_settings one;
    if (const std::string e = one.set(key, std::to_string(v->second)); !e.empty()) {
      r.problem(*v->first, "limits." + e);
      continue;
    }
    const bool length = key.ends_with("-max-length");
    if (v->second > (length ? 1 : 0)) (void)s.io_limits.set(key, std::to_string(v->second));
  }
  if (const auto v = r.string(t, "limits", "group")) {
    if (const std::string e = s.io_limits.set("group", v->second); !e.empty()) r.problem(*v->first, "limits." + e);
    if (v->second.empty()) s.io_limits.group.reset();
  }
  if (const std::string e = validate(s.io_limits.limits()); !e.empty()) r.problem(*t, "[limits]: " + e);
}

}  // namespace

settings parse_settings(std::string_view toml_text, std::string_view source_name) {
  toml::table root;
  try {
    root = toml::parse(toml_text, source_name);
  } catch (const toml::parse_error& e) {
    throw config_error(source_name, e.source().begin.line, e.source().begin.column, e.description());
  }

  reader r(source_name);
  r.check_keys(root, {});
  settings s;
  const toml::table* backend = r.table(root, "backend");
  const toml::table* rings = r.table(root, "rings");
  const toml::table* io = r.table(root, "io");
  const toml::table* log = r.table(root, "log");
  const toml::table* nbd = r.table(root, "nbd");
  const toml::table* images = r.table(root, "images");
  const toml::table* rbd = r.table(root, "rbd");
  const toml::table* control = r.table(root, "control");
  const toml::table* lim = r.table(root, "limits");
  if (backend) r.check_keys(*backend, "backend");
  if (nbd) r.check_keys(*nbd, "nbd");
  if (images) r.check_keys(*images, "images");
  if (rbd) r.check_keys(*rbd, "rbd");
  if (control) r.check_keys(*control, "control");
  if (lim) r.check_keys(*lim, "limits");
  if (rings) r.check_keys(*rings, "rings");
  if (io) r.check_keys(*io, "io");
  if (log) r.check_keys(*log, "log");
  read_backend(r, backend, s);
  read_rings(r, rings, s);
  read_io(r, io, s);
  read_nbd(r, nbd, s);
  read_images(r, images, s);
  read_rbd(r, rbd, s);
  read_control(r, control, s);
  read_log(r, log, s);
  read_limits(r, lim, s);
  r.throw_first();
  return s;
}

settings load_settings(const std::filesystem::path& file) {
  const std::string name = file.string();
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(name.c_str(), "rb"), &std::fclose);
  if (!f) throw config_error(name, std::string("cannot open: ") + std::strerror(errno));
  std::string text;
  char buf[8192];
  for (;;) {
    const std::size_t n = std::fread(buf, 1, sizeof buf, f.get());
    text.append(buf, n);
    if (n < sizeof buf) break;
  }
  // A directory opens fine and fails here, with EISDIR.
  if (std::ferror(f.get())) throw config_error(name, std::string("cannot read: ") + std::strerror(errno));
  return parse_settings(text, name);
}

std::optional<std::uint64_t> parse_size(std::string_view text) {
  std::uint64_t n = 0;
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, n);
  if (ec != std::errc{} || p == text.data()) return std::nullopt;
  std::string_view unit(p, static_cast<std::size_t>(end - p));
  static constexpr std::pair<std::string_view, unsigned> units[] = {
      {"", 0}, {"K", 10}, {"KiB", 10}, {"M", 20}, {"MiB", 20}, {"G", 30}, {"GiB", 30}, {"T", 40}, {"TiB", 40}};
  for (const auto& [name, shift] : units) {
    if (unit != name) continue;
    if (shift != 0 && n > (std::numeric_limits<std::uint64_t>::max() >> shift)) return std::nullopt;
    return n << shift;
  }
  return std::nullopt;
}

std::string format_size(std::uint64_t bytes) {
  static constexpr std::pair<std::string_view, unsigned> units[] = {{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}};
  for (const auto& [name, shift] : units)
    if (bytes != 0 && bytes % (std::uint64_t{1} << shift) == 0)
      return std::to_string(bytes >> shift) + std::string(name);
  return std::to_string(bytes);
}

std::string describe(const settings& s) {
  std::string d = "types=";
  for (std::size_t i = 0; i < s.backend_types.size(); ++i) {
    if (i != 0) d += ',';
    d += s.backend_types[i];
  }
  const auto or_auto = [](unsigned v) { return v == 0 ? std::string("auto") : std::to_string(v); };
  d += " domid=" + (s.domid ? std::to_string(*s.domid) : std::string("xenstore"));
  d += " max-ring-page-order=" + std::to_string(s.max_ring_page_order);
  d += " max-queues=" + or_auto(s.max_queues);
  d += " max-indirect-segments=" + std::to_string(s.max_indirect_segments);
  d += " default-protocol=" + std::string(to_string(s.default_protocol));
  d += " poll-microseconds=" + std::to_string(s.poll_microseconds);
  d += " direct-io=" + std::string(to_string(s.direct_io));
  d += " worker-threads=" + or_auto(s.worker_threads);
  d += std::string(" discard=") + (s.discard ? "true" : "false");
  d += " resize-poll-seconds=" + std::to_string(s.resize_poll_seconds);
  d += " open-timeout-seconds=" + std::to_string(s.open_timeout_seconds);
  d += " sector-size=" + or_auto(s.sector_size);
  d += " buffer-memory=" + format_size(s.buffer_memory);
  d += std::string(" journal=") + (s.journal ? "true" : "false");
  d += " journal-directory=" + s.journal_directory;
  d += std::string(" zero-copy=") + (s.zero_copy ? "true" : "false");
  d += " zero-copy-min-bytes=" + format_size(s.zero_copy_min_bytes);
  d += std::string(" persistent-grants=") + (s.persistent_grants ? "true" : "false");
  d += " persistent-grants-per-ring=" + std::to_string(s.persistent_grants_per_ring);
  d += " nbd.connect-timeout-seconds=" + std::to_string(s.nbd.connect_timeout_seconds);
  d += " nbd.reconnect-seconds=" + std::to_string(s.nbd.reconnect_seconds);
  d += " images.qemu-storage-daemon=" + s.images.program;
  d += " images.start-timeout-seconds=" + std::to_string(s.images.start_timeout_seconds);
  d += " images.runtime-directory=" + s.images.runtime_directory;
  d += " rbd.cluster=" + s.rbd.cluster;
  d += " rbd.conf=" + (s.rbd.conf.empty() ? std::string("default") : s.rbd.conf);
  d += " rbd.client-id=" + s.rbd.client_id;
  d += " rbd.connect-timeout-seconds=" + std::to_string(s.rbd.connect_timeout_seconds);
  d += " rbd.op-timeout-seconds=" + std::to_string(s.rbd.op_timeout_seconds);
  d += " control.socket=" + (s.control.socket.empty() ? std::string("none") : s.control.socket);
  d += " log.level=" + std::string(to_string(s.log.level));
  d += " log.sink=" + s.log.sink;
  d += " limits=" + (s.io_limits.empty() ? std::string("none") : "\"" + s.io_limits.describe() + "\"");
  return d;
}

}  // namespace xbd::blkback
