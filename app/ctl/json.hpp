// json: a small JSON reader for the daemon's control-socket answers, used
// by xen-blkbackctl (human output) and xen-blkbackd-dm (QMP answers).
//
// Whole documents only, at most 64 levels deep; numbers keep their exact
// unsigned value when they are whole and non-negative (counters are
// 64-bit), a double otherwise.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace xbd::ctl {

class json {
 public:
  enum class kind { null, boolean, number, string, array, object };

  // The document in `text`; nullopt (and why in *error) if it is not one.
  static std::optional<json> parse(std::string_view text, std::string* error = nullptr);

  kind type() const { return kind_; }
  bool is(kind k) const { return kind_ == k; }
  // A member of an object; null when absent or not an object.
  const json& operator[](std::string_view key) const;
  const std::vector<json>& items() const { return items_; }
  const std::vector<std::pair<std::string, json>>& members() const { return members_; }
  const std::string& str() const { return text_; }  // empty unless a string
  std::uint64_t u64() const { return whole_; }      // 0 unless a whole number
  double number() const { return number_; }
  bool boolean() const { return kind_ == kind::boolean && flag_; }

 private:
  friend struct json_parser;
  kind kind_ = kind::null;
  bool flag_ = false;
  double number_ = 0;
  std::uint64_t whole_ = 0;
  std::string text_;
  std::vector<json> items_;
  std::vector<std::pair<std::string, json>> members_;
};

}  // namespace xbd::ctl
