// json_writer: compact JSON text, for the control socket's answers.
//
// Strings are escaped for JSON and made valid UTF-8 (a byte that is not
// part of a valid sequence becomes U+FFFD): values such as `params` come
// from xenstore and may hold anything.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace xbd::blkback {

class json_writer {
 public:
  json_writer& begin_object();
  json_writer& end_object();
  json_writer& begin_array();
  json_writer& end_array();
  json_writer& key(std::string_view k);
  json_writer& value(std::string_view v);
  json_writer& value(const char* v) { return value(std::string_view(v)); }
  json_writer& value(std::uint64_t v);
  json_writer& value(unsigned v) { return value(std::uint64_t{v}); }
  json_writer& value(bool v);
  json_writer& null();

  template <class T>
  json_writer& field(std::string_view k, const T& v) {
    key(k);
    return value(v);
  }

  std::string take() { return std::move(out_); }
  const std::string& text() const { return out_; }

 private:
  void separate();

  std::string out_;
  std::vector<bool> first_;  // per open container: nothing written in it yet
  bool after_key_ = false;
};

// `text` as a JSON string literal, quotes included.
std::string json_quote(std::string_view text);
// {"error":"<message>"}
std::string json_error(std::string_view message);

}  // namespace xbd::blkback
