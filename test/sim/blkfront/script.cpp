#include "blkfront/script.hpp"

#include <algorithm>
#include <cstring>
#include <set>

#include "blkfront/negotiation.hpp"

namespace xbd::sim::blkfront {
namespace {

constexpr std::chrono::milliseconds default_wait{5000};

const std::map<std::string_view, verb>& verbs() {
  static const std::map<std::string_view, verb> m = {{"queue", verb::queue},
                                                     {"pages", verb::pages},
                                                     {"fill", verb::fill},
                                                     {"poke", verb::poke},
                                                     {"seg", verb::seg},
                                                     {"req", verb::req},
                                                     {"ireq", verb::ireq},
                                                     {"dreq", verb::dreq},
                                                     {"raw", verb::raw},
                                                     {"patch", verb::patch},
                                                     {"push", verb::push},
                                                     {"notify", verb::notify},
                                                     {"req-prod", verb::req_prod},
                                                     {"wait", verb::wait},
                                                     {"expect", verb::expect},
                                                     {"expect-no-response", verb::expect_no_response},
                                                     {"expect-state", verb::expect_state},
                                                     {"expect-held", verb::expect_held},
                                                     {"sleep", verb::sleep}};
  return m;
}

std::optional<std::uint64_t> number(std::string_view s) {
  if (s.starts_with("0x") || s.starts_with("0X")) {
    s.remove_prefix(2);
    if (s.empty() || s.size() > 16) return std::nullopt;
    std::uint64_t v = 0;
    for (char c : s) {
      int d = (c >= '0' && c <= '9')   ? c - '0'
              : (c >= 'a' && c <= 'f') ? c - 'a' + 10
              : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                       : -1;
      if (d < 0) return std::nullopt;
      v = v * 16 + static_cast<unsigned>(d);
    }
    return v;
  }
  return parse_u64(s);
}

std::optional<std::int64_t> signed_number(std::string_view s) {
  bool neg = false;
  if (s.starts_with("-")) {
    neg = true;
    s.remove_prefix(1);
  }
  auto v = number(s);
  if (!v || *v > 0x7fffffffffffffffull) return std::nullopt;
  return neg ? -static_cast<std::int64_t>(*v) : static_cast<std::int64_t>(*v);
}

std::optional<std::uint8_t> op_code(std::string_view s) {
  static const std::map<std::string_view, std::uint8_t> names = {{"read", op::read},
                                                                 {"write", op::write},
                                                                 {"barrier", op::write_barrier},
                                                                 {"flush", op::flush_diskcache},
                                                                 {"discard", op::discard},
                                                                 {"indirect", op::indirect}};
  if (auto it = names.find(s); it != names.end()) return it->second;
  auto v = number(s);
  if (!v || *v > 255) return std::nullopt;
  return static_cast<std::uint8_t>(*v);
}

std::optional<std::int16_t> status_code(std::string_view s) {
  if (s == "okay" || s == "ok") return status::okay;
  if (s == "error") return status::error;
  if (s == "eopnotsupp") return status::eopnotsupp;
  auto v = signed_number(s);
  if (!v || *v < -32768 || *v > 32767) return std::nullopt;
  return static_cast<std::int16_t>(*v);
}

std::optional<unsigned> state_code(std::string_view s) {
  static const std::map<std::string_view, unsigned> names = {
      {"initialising", 1}, {"initwait", 2}, {"initialised", 3},   {"connected", 4},
      {"closing", 5},      {"closed", 6},   {"reconfiguring", 7}, {"reconfigured", 8}};
  if (auto it = names.find(s); it != names.end()) return it->second;
  auto v = number(s);
  if (!v || *v > 8) return std::nullopt;
  return static_cast<unsigned>(*v);
}

std::string join(const std::vector<std::string>& v, std::size_t from) {
  std::string out;
  for (std::size_t i = from; i < v.size(); ++i) out += v[i];
  return out;
}

// "GREF:FIRST:LAST" where GREF may itself be "pool:index".
bool split_segment(const std::string& s, std::string& gref, std::string& first, std::string& last) {
  auto p2 = s.rfind(':');
  if (p2 == std::string::npos || p2 == 0) return false;
  auto p1 = s.rfind(':', p2 - 1);
  if (p1 == std::string::npos) return false;
  gref = s.substr(0, p1);
  first = s.substr(p1 + 1, p2 - p1 - 1);
  last = s.substr(p2 + 1);
  return !gref.empty();
}

std::string check_command(const command& c) {
  const auto& a = c.args;
  auto need = [&](std::size_t lo, std::size_t hi) -> std::string {
    if (a.size() < lo || a.size() > hi)
      return "expects " + (lo == hi ? std::to_string(lo) : std::to_string(lo) + ".." + std::to_string(hi)) +
             " argument(s), got " + std::to_string(a.size());
    return "";
  };
  auto num = [&](std::size_t i, std::uint64_t max, std::string_view what) -> std::string {
    auto v = number(a[i]);
    if (!v || *v > max) return "bad " + std::string(what) + " '" + a[i] + "'";
    return "";
  };
  auto hex_from = [&](std::size_t i) -> std::string {
    if (!parse_hex(join(a, i))) return "bad hex bytes";
    return "";
  };
  const bool keyed = c.v == verb::req || c.v == verb::ireq || c.v == verb::dreq;
  if (!keyed && !c.fields.empty()) return "takes no key=value arguments";
  std::string e;
  switch (c.v) {
    case verb::queue:
      if (!(e = need(1, 1)).empty()) return e;
      return num(0, 1023, "queue");
    case verb::pages:
      if (!(e = need(3, 3)).empty()) return e;
      if (a[0] == "ring" || a[0].find(':') != std::string::npos) return "bad pool name '" + a[0] + "'";
      if (!(e = num(1, 4096, "page count")).empty()) return e;
      if (number(a[1]) == 0u) return "page count must be at least 1";
      if (a[2] != "rw" && a[2] != "ro") return "access must be rw or ro";
      return "";
    case verb::fill:
      if (!(e = need(2, 2)).empty()) return e;
      return num(1, 255, "byte");
    case verb::poke:
      if (a.size() < 3) return "expects PAGE OFFSET HEX...";
      if (!(e = num(1, 4095, "offset")).empty()) return e;
      return hex_from(2);
    case verb::seg:
      if (!(e = need(5, 5)).empty()) return e;
      if (!(e = num(1, segments_per_indirect_page - 1, "index")).empty()) return e;
      if (!(e = num(3, 255, "first_sect")).empty()) return e;
      return num(4, 255, "last_sect");
    case verb::req:
    case verb::ireq: {
      if (!a.empty()) return "takes only key=value arguments";
      const bool direct = c.v == verb::req;
      const std::set<std::string_view> keys =
          direct ? std::set<std::string_view>{"op", "nseg", "handle", "id", "sector", "seg"}
                 : std::set<std::string_view>{"iop", "nseg", "handle", "id", "sector", "igref"};
      bool have_op = false;
      std::size_t segs = 0;
      for (const auto& [k, v] : c.fields) {
        if (!keys.contains(k)) return "unknown key '" + k + "'";
        if (k == "op" || k == "iop") {
          have_op = true;
          if (!op_code(v)) return "bad operation '" + v + "'";
        } else if (k == "seg") {
          std::string g, f, l;
          if (!split_segment(v, g, f, l)) return "bad segment '" + v + "' (GREF:FIRST:LAST)";
          auto fv = number(f), lv = number(l);
          if (!fv || !lv || *fv > 255 || *lv > 255) return "bad segment '" + v + "'";
          ++segs;
        } else if (k == "igref") {
          ++segs;
        } else {
          const std::uint64_t max = k == "nseg" ? (direct ? 255 : 65535) : k == "handle" ? 65535 : ~0ull;
          auto n = number(v);
          if (!n || *n > max) return "bad " + k + " '" + v + "'";
        }
      }
      if (!have_op) return direct ? "needs op=" : "needs iop=";
      if (direct && segs > max_direct_segments) return "at most 11 seg= fit in a request";
      if (!direct && segs > max_indirect_pages) return "at most 8 igref= fit in a request";
      return "";
    }
    case verb::dreq: {
      if (!a.empty()) return "takes only key=value arguments";
      static const std::set<std::string_view> keys = {"flag", "handle", "id", "sector", "nr"};
      for (const auto& [k, v] : c.fields) {
        if (!keys.contains(k)) return "unknown key '" + k + "'";
        if (k == "flag" && v == "secure") continue;
        const std::uint64_t max = k == "flag" ? 255 : k == "handle" ? 65535 : ~0ull;
        auto n = number(v);
        if (!n || *n > max) return "bad " + k + " '" + v + "'";
      }
      return "";
    }
    case verb::raw:
      if (a.empty()) return "expects HEX...";
      return hex_from(0);
    case verb::patch:
      if (a.size() < 2) return "expects OFFSET HEX...";
      if (!(e = num(0, 4095, "offset")).empty()) return e;
      return hex_from(1);
    case verb::push:
    case verb::notify:
      return need(0, 0);
    case verb::req_prod: {
      if (!(e = need(1, 1)).empty()) return e;
      std::string_view s = a[0];
      if (s.starts_with("+")) s.remove_prefix(1);
      if (s.starts_with("-") ? !signed_number(s) : !number(s) || *number(s) > 0xffffffffu)
        return "bad index '" + a[0] + "'";
      return "";
    }
    case verb::wait:
      if (!(e = need(1, 3)).empty()) return e;
      if (!(e = num(0, 1u << 20, "count")).empty()) return e;
      if (a.size() >= 2 && !(e = num(1, 3600000, "milliseconds")).empty()) return e;
      if (a.size() == 3 && a[2] != "soft") return "third argument can only be 'soft'";
      return "";
    case verb::expect:
      if (!(e = need(2, 2)).empty()) return e;
      if (!(e = num(0, ~0ull, "id")).empty()) return e;
      if (!status_code(a[1])) return "bad status '" + a[1] + "'";
      return "";
    case verb::expect_no_response:
    case verb::sleep:
      if (!(e = need(1, 1)).empty()) return e;
      return num(0, 3600000, "milliseconds");
    case verb::expect_held:
      if (!(e = need(2, 2)).empty()) return e;
      if (a[1] != "yes" && a[1] != "no") return "second argument must be yes or no";
      return "";
    case verb::expect_state:
      if (!(e = need(1, 2)).empty()) return e;
      if (!state_code(a[0])) return "bad state '" + a[0] + "'";
      if (a.size() == 2) return num(1, 3600000, "milliseconds");
      return "";
  }
  return "";
}

}  // namespace

std::optional<std::vector<std::byte>> parse_hex(std::string_view s) {
  std::vector<std::byte> out;
  int hi = -1;
  for (char c : s) {
    if (c == ' ' || c == '\t') continue;
    int d = (c >= '0' && c <= '9')   ? c - '0'
            : (c >= 'a' && c <= 'f') ? c - 'a' + 10
            : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                     : -1;
    if (d < 0) return std::nullopt;
    if (hi < 0) {
      hi = d;
    } else {
      out.push_back(static_cast<std::byte>(hi * 16 + d));
      hi = -1;
    }
  }
  if (hi >= 0 || out.empty()) return std::nullopt;
  return out;
}

std::variant<std::vector<command>, script_error> parse_script(std::string_view text) {
  std::vector<command> out;
  int line_no = 0;
  while (!text.empty()) {
    ++line_no;
    auto nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    if (auto hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);

    std::vector<std::string> tokens;
    std::size_t i = 0;
    while (i < line.size()) {
      while (i < line.size() && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) ++i;
      std::size_t j = i;
      while (j < line.size() && line[j] != ' ' && line[j] != '\t' && line[j] != '\r') ++j;
      if (j > i) tokens.emplace_back(line.substr(i, j - i));
      i = j;
    }
    if (tokens.empty()) continue;

    auto it = verbs().find(tokens[0]);
    if (it == verbs().end()) return script_error{line_no, "unknown command '" + tokens[0] + "'"};
    command c;
    c.line = line_no;
    c.v = it->second;
    for (std::size_t k = 1; k < tokens.size(); ++k) {
      auto eq = tokens[k].find('=');
      if ((c.v == verb::req || c.v == verb::ireq || c.v == verb::dreq) && eq != std::string::npos)
        c.fields.emplace_back(tokens[k].substr(0, eq), tokens[k].substr(eq + 1));
      else
        c.args.push_back(tokens[k]);
    }
    if (auto e = check_command(c); !e.empty()) return script_error{line_no, tokens[0] + ": " + e};
    out.push_back(std::move(c));
  }
  return out;
}

std::variant<std::vector<command>, script_error> raw_file_script(std::string_view bytes, std::size_t slot_size,
                                                                 std::chrono::milliseconds wait) {
  if (bytes.empty() || bytes.size() % slot_size != 0)
    return script_error{0, "raw file size " + std::to_string(bytes.size()) +
                               " is not a positive multiple of the slot size " + std::to_string(slot_size)};
  static const char* digits = "0123456789abcdef";
  std::vector<command> out;
  const std::size_t n = bytes.size() / slot_size;
  for (std::size_t s = 0; s < n; ++s) {
    std::string hex;
    for (std::size_t i = 0; i < slot_size; ++i) {
      auto b = static_cast<unsigned char>(bytes[s * slot_size + i]);
      hex += digits[b >> 4];
      hex += digits[b & 15];
    }
    out.push_back(command{static_cast<int>(s + 1), verb::raw, {hex}, {}});
  }
  out.push_back(command{0, verb::push, {}, {}});
  out.push_back(command{0, verb::wait, {std::to_string(n), std::to_string(wait.count()), "soft"}, {}});
  return out;
}

std::optional<std::uint32_t> script_runner::resolve_gref(const std::string& spec, std::string& err) const {
  if (auto colon = spec.find(':'); colon != std::string::npos) {
    const std::string pool = spec.substr(0, colon);
    auto idx = number(std::string_view(spec).substr(colon + 1));
    if (!idx) {
      err = "bad page index in '" + spec + "'";
      return std::nullopt;
    }
    if (pool == "ring") {
      const auto& pages = env_.queues.at(current_)->ring_pages;
      if (*idx >= pages.count()) {
        err = "ring has no page " + std::to_string(*idx);
        return std::nullopt;
      }
      return pages.ref(*idx);
    }
    auto it = pools_.find(pool);
    if (it == pools_.end() || *idx >= it->second.count()) {
      err = "no page '" + spec + "'";
      return std::nullopt;
    }
    return it->second.ref(*idx);
  }
  auto v = number(spec);
  if (!v || *v > 0xffffffffu) {
    err = "bad grant reference '" + spec + "'";
    return std::nullopt;
  }
  return static_cast<std::uint32_t>(*v);
}

std::optional<std::span<std::byte>> script_runner::resolve_page(const std::string& spec, std::string& err) const {
  auto colon = spec.find(':');
  auto idx = colon == std::string::npos ? std::nullopt : number(std::string_view(spec).substr(colon + 1));
  if (!idx) {
    err = "bad page '" + spec + "' (POOL:INDEX)";
    return std::nullopt;
  }
  const std::string pool = spec.substr(0, colon);
  if (pool == "ring") {
    const auto& pages = env_.queues.at(current_)->ring_pages;
    if (*idx < pages.count()) return pages.page(*idx);
  } else if (auto it = pools_.find(pool); it != pools_.end() && *idx < it->second.count()) {
    return it->second.page(*idx);
  }
  err = "no page '" + spec + "'";
  return std::nullopt;
}

void script_runner::collect(script_result& out) {
  for (ring_queue* q : env_.queues) {
    auto& ring = q->ring;
    const std::uint32_t n = ring.unconsumed_responses();
    if (n > ring.size()) {
      const std::string msg = "queue " + std::to_string(q->index) + ": rsp_prod " +
                              std::to_string(ring.shared_rsp_prod()) + " is " + std::to_string(n) +
                              " past rsp_cons, more than the ring holds";
      if (std::find(out.anomalies.begin(), out.anomalies.end(), msg) == out.anomalies.end())
        out.anomalies.push_back(msg);
      continue;
    }
    for (std::uint32_t i = 0; i < n; ++i) {
      out.responses.push_back({q->index, env_.layout->get_response(ring.next_response_slot())});
      ring.consume();
    }
    ring.final_check_for_responses();
  }
}

std::size_t script_runner::pending(unsigned queue, const script_result& out) const {
  std::size_t n = 0;
  for (const auto& r : out.responses) n += r.queue == queue;
  auto it = claimed_.find(queue);
  return n - (it == claimed_.end() ? 0 : it->second);
}

std::optional<std::size_t> script_runner::held_pages() const {
  std::size_t n = 0;
  for (const auto& [name, pages] : pools_)
    for (std::uint32_t ref : pages.refs()) {
      const auto h = env_.plat->backend_holds(ref);
      if (!h) return std::nullopt;
      n += *h ? 1 : 0;
    }
  return n;
}

script_result script_runner::run(const std::vector<command>& cmds) {
  script_result out;
  for (const auto& c : cmds) {
    if (env_.plat->stop_requested()) {
      out.interrupted = true;
      break;
    }
    ++out.commands;
    if (!exec(c, out)) break;
  }
  collect(out);
  return out;
}

bool script_runner::exec(const command& c, script_result& out) {
  const std::string at = "line " + std::to_string(c.line) + ": ";
  auto fail = [&](const std::string& msg) { out.failures.push_back(at + msg); };
  auto stop = [&](const std::string& msg) {
    fail(msg);
    return false;
  };
  auto& ring = env_.queues.at(current_)->ring;
  const std::uint32_t port = env_.queues.at(current_)->port.port();
  auto ms = [&](std::size_t i, std::chrono::milliseconds def) {
    return i < c.args.size() ? std::chrono::milliseconds(*number(c.args[i])) : def;
  };
  // Sleeps in platform waits until `done` holds or `limit` (at most
  // max_wait) passes, reading responses as they come. False on timeout or
  // signal; a signal also marks the result interrupted, and the command
  // that waited records no failure for it.
  auto wait_until = [&](std::chrono::milliseconds limit, const std::function<bool()>& done) {
    const auto deadline = std::chrono::steady_clock::now() + std::min(limit, env_.max_wait);
    for (;;) {
      collect(out);
      if (done && done()) return true;
      if (env_.plat->stop_requested()) {
        out.interrupted = true;
        return false;
      }
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) return false;
      env_.plat->wait(
          std::min(std::chrono::ceil<std::chrono::milliseconds>(deadline - now), std::chrono::milliseconds(100)));
    }
  };
  std::string err;

  switch (c.v) {
    case verb::queue: {
      const auto q = static_cast<unsigned>(*number(c.args[0]));
      if (q >= env_.queues.size()) return stop("no queue " + c.args[0]);
      current_ = q;
      last_slot_.reset();
      return true;
    }
    case verb::pages: {
      auto pages = env_.plat->share(env_.backend_domid, static_cast<unsigned>(*number(c.args[1])), c.args[2] == "rw");
      if (!pages) return stop("sharing pages failed: " + env_.plat->last_error());
      pools_[c.args[0]] = std::move(pages);
      return true;
    }
    case verb::fill: {
      auto page = resolve_page(c.args[0], err);
      if (!page) return stop(err);
      std::fill(page->begin(), page->end(), static_cast<std::byte>(*number(c.args[1])));
      return true;
    }
    case verb::poke: {
      auto page = resolve_page(c.args[0], err);
      if (!page) return stop(err);
      const auto off = *number(c.args[1]);
      const auto bytes = *parse_hex(join(c.args, 2));
      if (off + bytes.size() > page->size()) return stop("poke past the end of the page");
      std::copy(bytes.begin(), bytes.end(), page->begin() + static_cast<std::ptrdiff_t>(off));
      return true;
    }
    case verb::seg: {
      auto page = resolve_page(c.args[0], err);
      if (!page) return stop(err);
      auto gref = resolve_gref(c.args[2], err);
      if (!gref) return stop(err);
      put_indirect_segment(
          *page, static_cast<unsigned>(*number(c.args[1])),
          segment{*gref, static_cast<std::uint8_t>(*number(c.args[3])), static_cast<std::uint8_t>(*number(c.args[4]))});
      return true;
    }
    case verb::req:
    case verb::ireq: {
      std::vector<segment> segs;
      std::vector<std::uint32_t> igrefs;
      std::optional<std::uint64_t> nseg, id, sector, handle;
      std::uint8_t opcode = 0;
      for (const auto& [k, v] : c.fields) {
        if (k == "op" || k == "iop")
          opcode = *op_code(v);
        else if (k == "nseg")
          nseg = number(v);
        else if (k == "id")
          id = number(v);
        else if (k == "sector")
          sector = number(v);
        else if (k == "handle")
          handle = number(v);
        else if (k == "seg") {
          std::string g, f, l;
          split_segment(v, g, f, l);
          auto gref = resolve_gref(g, err);
          if (!gref) return stop(err);
          segs.push_back({*gref, static_cast<std::uint8_t>(*number(f)), static_cast<std::uint8_t>(*number(l))});
        } else if (k == "igref") {
          auto gref = resolve_gref(v, err);
          if (!gref) return stop(err);
          igrefs.push_back(*gref);
        }
      }
      auto slot = ring.next_request_slot();
      const std::uint64_t rid = id.value_or(next_id_);
      next_id_ = rid + 1;
      if (c.v == verb::req) {
        direct_request r;
        r.operation = opcode;
        r.nr_segments = static_cast<std::uint8_t>(nseg.value_or(segs.size()));
        r.handle = static_cast<std::uint16_t>(handle.value_or(env_.handle));
        r.id = rid;
        r.sector_number = sector.value_or(0);
        r.segs = segs;
        env_.layout->put(slot, r);
      } else {
        indirect_request r;
        r.indirect_op = opcode;
        r.nr_segments = static_cast<std::uint16_t>(nseg.value_or(0));
        r.handle = static_cast<std::uint16_t>(handle.value_or(env_.handle));
        r.id = rid;
        r.sector_number = sector.value_or(0);
        r.indirect_grefs = igrefs;
        env_.layout->put(slot, r);
      }
      ring.advance();
      last_slot_ = slot;
      return true;
    }
    case verb::dreq: {
      discard_request r;
      std::optional<std::uint64_t> id;
      r.handle = env_.handle;
      for (const auto& [k, v] : c.fields) {
        if (k == "flag")
          r.flag = v == "secure" ? discard_secure : static_cast<std::uint8_t>(*number(v));
        else if (k == "handle")
          r.handle = static_cast<std::uint16_t>(*number(v));
        else if (k == "id")
          id = number(v);
        else if (k == "sector")
          r.sector_number = *number(v);
        else if (k == "nr")
          r.nr_sectors = *number(v);
      }
      r.id = id.value_or(next_id_);
      next_id_ = r.id + 1;
      auto slot = ring.next_request_slot();
      env_.layout->put(slot, r);
      ring.advance();
      last_slot_ = slot;
      return true;
    }
    case verb::raw: {
      const auto bytes = *parse_hex(join(c.args, 0));
      auto slot = ring.next_request_slot();
      if (bytes.size() > slot.size()) return stop("raw slot image longer than a slot");
      std::fill(slot.begin(), slot.end(), std::byte{0});
      std::copy(bytes.begin(), bytes.end(), slot.begin());
      ring.advance();
      last_slot_ = slot;
      return true;
    }
    case verb::patch: {
      if (!last_slot_) return stop("patch without a slot written on this queue");
      const auto off = *number(c.args[0]);
      const auto bytes = *parse_hex(join(c.args, 1));
      if (off + bytes.size() > last_slot_->size()) return stop("patch past the end of the slot");
      std::copy(bytes.begin(), bytes.end(), last_slot_->begin() + static_cast<std::ptrdiff_t>(off));
      return true;
    }
    case verb::push:
      if (ring.push_requests() && !env_.plat->notify(port)) fail("notify failed: " + env_.plat->last_error());
      return true;
    case verb::notify:
      if (!env_.plat->notify(port)) fail("notify failed: " + env_.plat->last_error());
      return true;
    case verb::req_prod: {
      std::string_view s = c.args[0];
      std::uint32_t value;
      if (s.starts_with("+"))
        value = ring.req_prod_pvt() + static_cast<std::uint32_t>(*number(s.substr(1)));
      else if (s.starts_with("-"))
        value = ring.req_prod_pvt() - static_cast<std::uint32_t>(-*signed_number(s));
      else
        value = static_cast<std::uint32_t>(*number(s));
      ring.set_shared_req_prod(value);
      if (!env_.plat->notify(port)) fail("notify failed: " + env_.plat->last_error());
      return true;
    }
    case verb::wait: {
      const auto want = static_cast<std::size_t>(*number(c.args[0]));
      const bool soft = c.args.size() == 3;
      const bool ok = wait_until(ms(1, default_wait), [&] { return pending(current_, out) >= want; });
      const std::size_t got = pending(current_, out);
      if (out.interrupted) return false;
      if (!ok && !soft) fail("waited for " + std::to_string(want) + " response(s), got " + std::to_string(got));
      claimed_[current_] += std::min(got, want);
      return true;
    }
    case verb::expect: {
      const auto id = *number(c.args[0]);
      const auto want = *status_code(c.args[1]);
      auto it = std::find_if(out.responses.rbegin(), out.responses.rend(),
                             [&](const raw_response& r) { return r.queue == current_ && r.r.id == id; });
      if (it == out.responses.rend())
        fail("no response with id " + c.args[0]);
      else if (it->r.status != want)
        fail("response " + c.args[0] + " has status " + std::to_string(it->r.status) + ", expected " +
             std::to_string(want));
      return true;
    }
    case verb::expect_no_response: {
      const std::size_t before = pending(current_, out);
      wait_until(ms(0, default_wait), {});
      if (out.interrupted) return false;
      if (pending(current_, out) != before)
        fail(std::to_string(pending(current_, out) - before) + " unexpected response(s)");
      return true;
    }
    case verb::expect_state: {
      const unsigned want = *state_code(c.args[0]);
      std::optional<unsigned> seen;
      const bool ok = wait_until(ms(1, default_wait), [&] {
        seen = env_.backend_state ? env_.backend_state() : std::nullopt;
        return seen == want;
      });
      if (out.interrupted) return false;
      if (!ok)
        fail("backend state is " + (seen ? std::to_string(*seen) : std::string("absent")) + ", expected " +
             std::to_string(want));
      return true;
    }
    case verb::expect_held: {
      // Whether the backend holds the grant now (mapped, or a copy in
      // flight), i.e. whether ending our access to it would fail: after a
      // response, it must not (Linux's blkfront since XSA-396).
      auto gref = resolve_gref(c.args[0], err);
      if (!gref) return stop(err);
      const auto held = env_.plat->backend_holds(*gref);
      if (!held)
        fail("cannot tell whether the backend holds grant " + std::to_string(*gref) + " on this platform");
      else if (*held != (c.args[1] == "yes"))
        fail("the backend " + std::string(*held ? "holds" : "does not hold") + " grant " + std::to_string(*gref));
      return true;
    }
    case verb::sleep:
      wait_until(ms(0, default_wait), {});
      return !out.interrupted;
  }
  return true;
}

}  // namespace xbd::sim::blkfront
