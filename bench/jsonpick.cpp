// jsonpick: print values out of one JSON document, for scripts/bench (jq is
// not among the packages scripts/install-deps installs).
//
//   jsonpick PATH... < doc.json
//
// A PATH is keys and array indices separated by '/', e.g.
// jobs/0/read/lat_ns/percentile/50.000000 (fio's percentile keys contain
// dots, hence '/'). One output line per PATH: a number or literal as written,
// a string without its quotes, an object or array as compact JSON, and
// "null" when the path does not exist. If stdin holds several lines, the last
// line that parses as JSON is used (fio may print warnings before its JSON).
// Exit status 2 when no JSON document was found.
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct value {
  enum kind { null, boolean, number, string, array, object } k = null;
  std::string text;  // number/literal as written, or the decoded string
  std::vector<value> items;
  std::vector<std::pair<std::string, value>> members;
};

class parser {
 public:
  explicit parser(const std::string& s) : s_(s) {}

  std::optional<value> document() {
    auto v = parse();
    if (!v) return std::nullopt;
    ws();
    if (i_ != s_.size()) return std::nullopt;
    return v;
  }

 private:
  void ws() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }

  std::optional<std::string> str() {
    if (i_ >= s_.size() || s_[i_] != '"') return std::nullopt;
    ++i_;
    std::string out;
    while (i_ < s_.size() && s_[i_] != '"') {
      char c = s_[i_++];
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i_ >= s_.size()) return std::nullopt;
      char e = s_[i_++];
      switch (e) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'u':
          if (i_ + 4 > s_.size()) return std::nullopt;
          out += '?';  // not needed by the benchmark; keep it one char
          i_ += 4;
          break;
        default:
          out += e;
      }
    }
    if (i_ >= s_.size()) return std::nullopt;
    ++i_;
    return out;
  }

  std::optional<value> parse() {
    ws();
    if (i_ >= s_.size()) return std::nullopt;
    value v;
    char c = s_[i_];
    if (c == '{') {
      ++i_;
      v.k = value::object;
      ws();
      if (i_ < s_.size() && s_[i_] == '}') {
        ++i_;
        return v;
      }
      for (;;) {
        ws();
        auto key = str();
        if (!key) return std::nullopt;
        ws();
        if (i_ >= s_.size() || s_[i_] != ':') return std::nullopt;
        ++i_;
        auto m = parse();
        if (!m) return std::nullopt;
        v.members.emplace_back(std::move(*key), std::move(*m));
        ws();
        if (i_ < s_.size() && s_[i_] == ',') {
          ++i_;
          continue;
        }
        if (i_ < s_.size() && s_[i_] == '}') {
          ++i_;
          return v;
        }
        return std::nullopt;
      }
    }
    if (c == '[') {
      ++i_;
      v.k = value::array;
      ws();
      if (i_ < s_.size() && s_[i_] == ']') {
        ++i_;
        return v;
      }
      for (;;) {
        auto m = parse();
        if (!m) return std::nullopt;
        v.items.push_back(std::move(*m));
        ws();
        if (i_ < s_.size() && s_[i_] == ',') {
          ++i_;
          continue;
        }
        if (i_ < s_.size() && s_[i_] == ']') {
          ++i_;
          return v;
        }
        return std::nullopt;
      }
    }
    if (c == '"') {
      auto t = str();
      if (!t) return std::nullopt;
      v.k = value::string;
      v.text = std::move(*t);
      return v;
    }
    std::size_t b = i_;
    while (i_ < s_.size() &&
           (std::isalnum(static_cast<unsigned char>(s_[i_])) || s_[i_] == '-' || s_[i_] == '+' || s_[i_] == '.'))
      ++i_;
    if (b == i_) return std::nullopt;
    v.text = s_.substr(b, i_ - b);
    v.k = v.text == "null" ? value::null : (v.text == "true" || v.text == "false") ? value::boolean : value::number;
    return v;
  }

  const std::string& s_;
  std::size_t i_ = 0;
};

void dump(const value& v, std::string& out, bool top) {
  switch (v.k) {
    case value::null:
      out += "null";
      break;
    case value::boolean:
    case value::number:
      out += v.text;
      break;
    case value::string:
      if (top) {
        out += v.text;
      } else {
        out += '"';
        for (char c : v.text) {
          if (c == '"' || c == '\\') out += '\\';
          out += c;
        }
        out += '"';
      }
      break;
    case value::array:
      out += '[';
      for (std::size_t i = 0; i < v.items.size(); ++i) {
        if (i) out += ',';
        dump(v.items[i], out, false);
      }
      out += ']';
      break;
    case value::object:
      out += '{';
      for (std::size_t i = 0; i < v.members.size(); ++i) {
        if (i) out += ',';
        out += '"' + v.members[i].first + "\":";
        dump(v.members[i].second, out, false);
      }
      out += '}';
      break;
  }
}

const value* find(const value& root, const std::string& path) {
  const value* v = &root;
  std::size_t b = 0;
  while (b <= path.size() && v) {
    std::size_t e = path.find('/', b);
    if (e == std::string::npos) e = path.size();
    const std::string key = path.substr(b, e - b);
    b = e + 1;
    if (key.empty()) {
      if (e == path.size()) break;
      continue;
    }
    const value* next = nullptr;
    if (v->k == value::object) {
      for (const auto& [k, m] : v->members)
        if (k == key) next = &m;
    } else if (v->k == value::array) {
      char* end = nullptr;
      unsigned long idx = std::strtoul(key.c_str(), &end, 10);
      if (*end == '\0' && idx < v->items.size()) next = &v->items[idx];
    }
    v = next;
    if (e == path.size()) break;
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  std::string all((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  std::optional<value> doc = parser(all).document();
  if (!doc) {
    // Several lines: the last one that is a JSON document by itself; or the
    // text from the first '{' at the start of a line (fio's warnings come
    // before its multi-line JSON).
    std::istringstream in(all);
    std::string line;
    while (std::getline(in, line))
      if (auto d = parser(line).document(); d && d->k == value::object) doc = std::move(d);
    if (!doc) {
      for (std::size_t q = (all.compare(0, 1, "{") == 0 ? 0 : all.find("\n{")); q != std::string::npos;
           q = all.find("\n{", q + 1)) {
        std::string tail = all.substr(q);
        if (auto d = parser(tail).document()) {
          doc = std::move(d);
          break;
        }
      }
    }
  }
  if (!doc) {
    std::fputs("jsonpick: no JSON document on stdin\n", stderr);
    return 2;
  }
  for (int i = 1; i < argc; ++i) {
    const value* v = find(*doc, argv[i]);
    std::string out;
    if (v)
      dump(*v, out, true);
    else
      out = "null";
    std::cout << out << '\n';
  }
  return 0;
}
