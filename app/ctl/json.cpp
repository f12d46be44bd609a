#include "app/ctl/json.hpp"

#include <charconv>
#include <stdexcept>

namespace xbd::ctl {

namespace {

constexpr int max_depth = 64;

struct bad : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

}  // namespace

struct json_parser {
  std::string_view s;
  std::size_t i = 0;

  void ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n')) ++i;
  }
  char peek() {
    ws();
    if (i >= s.size()) throw bad("unexpected end");
    return s[i];
  }
  void expect(char c) {
    if (peek() != c) throw bad(std::string("expected '") + c + "' at byte " + std::to_string(i));
    ++i;
  }
  bool literal(std::string_view word) {
    if (s.substr(i, word.size()) != word) return false;
    i += word.size();
    return true;
  }

  std::uint32_t hex4() {
    if (s.size() - i < 4) throw bad("short \\u escape");
    std::uint32_t v = 0;
    const auto [end, ec] = std::from_chars(s.data() + i, s.data() + i + 4, v, 16);
    if (ec != std::errc{} || end != s.data() + i + 4) throw bad("bad \\u escape");
    i += 4;
    return v;
  }

  void escape(std::string& out) {
    if (i >= s.size()) throw bad("unexpected end");
    const char e = s[i++];
    switch (e) {
      case '"':
      case '\\':
      case '/':
        out += e;
        return;
      case 'b':
        out += '\b';
        return;
      case 'f':
        out += '\f';
        return;
      case 'n':
        out += '\n';
        return;
      case 'r':
        out += '\r';
        return;
      case 't':
        out += '\t';
        return;
      case 'u':
        break;
      default:
        throw bad("bad escape");
    }
    std::uint32_t cp = hex4();
    if (cp >= 0xd800 && cp < 0xdc00 && literal("\\u")) {
      const std::uint32_t lo = hex4();
      cp = (lo >= 0xdc00 && lo < 0xe000) ? 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00) : 0xfffd;
    } else if (cp >= 0xd800 && cp < 0xe000) {
      cp = 0xfffd;
    }
    append_utf8(out, cp);
  }

  std::string string() {
    expect('"');
    std::string out;
    while (i < s.size() && s[i] != '"') {
      const char c = s[i++];
      if (static_cast<unsigned char>(c) < 0x20) throw bad("control character in a string");
      if (c == '\\')
        escape(out);
      else
        out += c;
    }
    if (i >= s.size()) throw bad("unterminated string");
    ++i;
    return out;
  }

  void number(json& v) {
    const std::size_t start = i;
    while (i < s.size() && std::string_view("+-0123456789.eE").find(s[i]) != std::string_view::npos) ++i;
    const std::string_view text = s.substr(start, i - start);
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v.number_);
    if (text.empty() || ec != std::errc{} || end != text.data() + text.size()) throw bad("bad number");
    v.kind_ = json::kind::number;
    std::uint64_t whole = 0;
    const auto [wend, wec] = std::from_chars(text.data(), text.data() + text.size(), whole);
    if (wec == std::errc{} && wend == text.data() + text.size()) v.whole_ = whole;
  }

  json value(int depth) {
    if (depth > max_depth) throw bad("nested too deeply");
    json v;
    const char c = peek();
    if (c == '{') {
      container(v, depth, '}');
    } else if (c == '[') {
      container(v, depth, ']');
    } else if (c == '"') {
      v.kind_ = json::kind::string;
      v.text_ = string();
    } else if (literal("true")) {
      v.kind_ = json::kind::boolean;
      v.flag_ = true;
    } else if (literal("false")) {
      v.kind_ = json::kind::boolean;
    } else if (literal("null")) {
    } else {
      number(v);
    }
    return v;
  }

  void container(json& v, int depth, char close) {
    ++i;
    v.kind_ = close == '}' ? json::kind::object : json::kind::array;
    if (peek() == close) {
      ++i;
      return;
    }
    for (;;) {
      if (close == '}') {
        std::string key = string();
        expect(':');
        v.members_.emplace_back(std::move(key), value(depth + 1));
      } else {
        v.items_.push_back(value(depth + 1));
      }
      if (peek() == close) {
        ++i;
        return;
      }
      expect(',');
    }
  }
};

std::optional<json> json::parse(std::string_view text, std::string* error) {
  json_parser p{text};
  try {
    json v = p.value(0);
    p.ws();
    if (p.i != text.size()) throw bad("trailing bytes at " + std::to_string(p.i));
    return v;
  } catch (const bad& e) {
    if (error) *error = e.what();
    return std::nullopt;
  }
}

const json& json::operator[](std::string_view key) const {
  static const json none;
  for (const auto& [k, v] : members_)
    if (k == key) return v;
  return none;
}

}  // namespace xbd::ctl
