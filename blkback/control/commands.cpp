#include "blkback/control/commands.hpp"

#include "blkback/control/json_writer.hpp"

#include <algorithm>
#include <charconv>
#include <optional>
#include <variant>

namespace xbd::blkback {

namespace {

constexpr std::size_t max_words = 64;
constexpr std::size_t quoted_at_most = 64;

// What a client sent, for an error answer: cut short.
std::string shown(std::string_view s) {
  if (s.size() <= quoted_at_most) return std::string(s);
  return std::string(s.substr(0, quoted_at_most)) + "...";
}

std::string error(std::string_view message) { return json_error(message); }

std::optional<unsigned> number(std::string_view s) {
  unsigned v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc{} || end != s.data() + s.size()) return std::nullopt;
  return v;
}

// The words of a line; nullopt when it holds what no request does (control
// characters, bytes beyond ASCII, too many words).
std::optional<std::vector<std::string_view>> words(std::string_view line) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i < line.size()) {
    const auto c = static_cast<unsigned char>(line[i]);
    if (c == ' ' || c == '\t') {
      ++i;
      continue;
    }
    const std::size_t start = i;
    while (i < line.size() && line[i] != ' ' && line[i] != '\t') {
      const auto b = static_cast<unsigned char>(line[i]);
      if (b < 0x20 || b >= 0x7f) return std::nullopt;
      ++i;
    }
    if (out.size() == max_words) return std::nullopt;
    out.push_back(line.substr(start, i - start));
  }
  return out;
}

// A VBD or SEL argument (see the header).
struct selector {
  std::string type;  // empty: any
  unsigned domid = 0;
  std::optional<std::string> dev;  // a devid or a name; nullopt: the whole domain

  bool matches(const vbd_report& v) const {
    if (!type.empty() && v.type != type) return false;
    if (v.domid != domid) return false;
    if (!dev) return true;
    if (auto n = number(*dev)) return v.devid == *n;
    return v.dev == *dev;
  }
};

std::optional<selector> parse_selector(std::string_view arg, bool domain_alone) {
  std::vector<std::string_view> parts;
  for (std::size_t start = 0;;) {
    const auto slash = arg.find('/', start);
    parts.push_back(arg.substr(start, slash == std::string_view::npos ? slash : slash - start));
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  selector s;
  if (parts.size() == 3) s.type = parts[0];
  if (parts.size() == 3) parts.erase(parts.begin());
  if (parts.size() > 2 || (parts.size() == 1 && !domain_alone)) return std::nullopt;
  auto dom = number(parts[0]);
  if (!dom) return std::nullopt;
  s.domid = *dom;
  if (parts.size() == 2) {
    if (parts[1].empty()) return std::nullopt;
    s.dev = std::string(parts[1]);
  }
  return s;
}

std::vector<vbd_report> selected(const control_context& ctx, const selector& sel) {
  auto all = ctx.reports();
  std::erase_if(all, [&](const vbd_report& v) { return !sel.matches(v); });
  return all;
}

// Exactly one vbd for `arg`, or the error answer.
std::variant<vbd_report, std::string> one_vbd(const control_context& ctx, std::string_view arg) {
  auto sel = parse_selector(arg, false);
  if (!sel) return error("bad vbd '" + shown(arg) + "': expected DOMID/DEVID or TYPE/DOMID/DEVID");
  auto found = selected(ctx, *sel);
  if (found.empty()) return error("no vbd " + shown(arg));
  if (found.size() > 1)
    return error("vbd " + shown(arg) + " is ambiguous: name its type, e.g. " + found[0].type + "/" + shown(arg));
  return std::move(found[0]);
}

std::string show(const control_context& ctx, const std::vector<std::string_view>& args) {
  if (args.size() != 1) return error("usage: show DOMID/DEVID");
  auto v = one_vbd(ctx, args[0]);
  if (auto* e = std::get_if<std::string>(&v)) return *e;
  return "{\"vbd\":" + vbd_json(std::get<vbd_report>(v), true) + "}";
}

std::string stats(const control_context& ctx, const std::vector<std::string_view>& args) {
  bool prometheus = false;
  std::optional<selector> sel;
  for (const auto a : args) {
    if (a == "--json") {
      prometheus = false;
    } else if (a == "--prometheus") {
      prometheus = true;
    } else if (!sel && (sel = parse_selector(a, true))) {
    } else {
      return error("usage: stats [--json|--prometheus] [DOMID[/DEVID]]");
    }
  }
  const auto vbds = sel ? selected(ctx, *sel) : ctx.reports();
  if (!prometheus) return stats_json(vbds);
  return json_writer().begin_object().field("prometheus", stats_prometheus(vbds)).end_object().take();
}

// A vbd's I/O limits, shown or changed by QEMU's names (docs/limits.md).
// Every word is checked before anything changes: one bad word and the
// answer is an error, with nothing applied.
std::string limits(const control_context& ctx, const std::vector<std::string_view>& args) {
  static constexpr std::string_view usage = "usage: limits DOMID/DEVID [NAME=VALUE...]";
  if (args.empty()) return error(usage);
  auto v = one_vbd(ctx, args[0]);
  if (auto* e = std::get_if<std::string>(&v)) return *e;
  std::optional<throttle_settings> change;
  for (std::size_t i = 1; i < args.size(); ++i) {
    const auto eq = args[i].find('=');
    if (eq == std::string_view::npos) return error(std::string(usage) + " (got '" + shown(args[i]) + "')");
    if (!change) change.emplace();
    const std::string_view name = args[i].substr(0, eq);
    // The same name twice is a mistake, not "the last one wins".
    for (std::size_t j = 1; j < i; ++j)
      if (args[j].substr(0, args[j].find('=')) == name) return error(shown(name) + " given twice");
    if (const std::string e = change->set(name, args[i].substr(eq + 1)); !e.empty()) return error(e);
  }
  if (!ctx.limits) return error("I/O limits are not served here");
  const auto a = ctx.limits(std::get<vbd_report>(v), change);
  if (!a.error.empty()) return error(a.error);
  return a.json;
}

std::string log_level(const control_context& ctx, const std::vector<std::string_view>& args) {
  const severity was = ctx.log_level();
  if (args.empty()) return json_writer().begin_object().field("log_level", to_string(was)).end_object().take();
  severity want{};
  if (args.size() != 1 || !parse_severity(args[0], want))
    return error("usage: log-level [trace|debug|info|warning|error]");
  ctx.set_log_level(want);
  return json_writer()
      .begin_object()
      .field("log_level", to_string(want))
      .field("was", to_string(was))
      .end_object()
      .take();
}

std::string help() {
  json_writer j;
  j.begin_object().key("commands").begin_array();
  for (const char* c : {"list", "show DOMID/DEVID", "stats [--json|--prometheus] [DOMID[/DEVID]]",
                        "limits DOMID/DEVID [NAME=VALUE...]", "log-level [LEVEL]", "help"})
    j.value(c);
  return j.end_array().end_object().take();
}

}  // namespace

std::string answer_request(const control_context& ctx, std::string_view line) {
  const auto w = words(line);
  if (!w) return error("not a request: only printable ASCII words, at most " + std::to_string(max_words));
  if (w->empty()) return error("empty request; try help");
  const std::string_view cmd = w->front();
  const std::vector<std::string_view> args(w->begin() + 1, w->end());
  if (cmd == "list") return args.empty() ? list_json(ctx.reports()) : error("usage: list");
  if (cmd == "show") return show(ctx, args);
  if (cmd == "stats") return stats(ctx, args);
  if (cmd == "limits") return limits(ctx, args);
  if (cmd == "log-level") return log_level(ctx, args);
  if (cmd == "help") return help();
  return error("unknown command '" + shown(cmd) + "'; try help");
}

}  // namespace xbd::blkback
