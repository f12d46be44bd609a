#include "blkback/data/throttle.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>

namespace xbd::blkback {

namespace {

constexpr std::array<std::string_view, throttle_kinds> kind_names{"bps-total",  "bps-read",  "bps-write",
                                                                  "iops-total", "iops-read", "iops-write"};

std::string name_of(throttle_kind k) { return std::string(kind_names[static_cast<unsigned>(k)]); }

bool is_write(throttle_kind k) { return k == throttle_kind::bps_write || k == throttle_kind::iops_write; }
bool is_read(throttle_kind k) { return k == throttle_kind::bps_read || k == throttle_kind::iops_read; }
// Pieces of a message, joined.
std::string text(std::initializer_list<std::string_view> parts) {
  std::string out;
  for (const std::string_view p : parts) out += p;
  return out;
}

bool counts_ops(throttle_kind k) {
  return static_cast<unsigned>(k) >= static_cast<unsigned>(throttle_kind::iops_total);
}

}  // namespace

bool throttle_limits::any() const {
  return std::any_of(buckets.begin(), buckets.end(), [](const throttle_bucket_limits& b) { return b.avg > 0; });
}

const std::array<std::string_view, throttle_settings::count>& throttle_settings::names() {
  static const std::array<std::string_view, count> all = [] {
    static std::array<std::string, count> text;
    for (std::size_t k = 0; k < throttle_kinds; ++k) {
      text[k] = std::string(kind_names[k]);
      text[throttle_kinds + k] = std::string(kind_names[k]) + "-max";
      text[2 * throttle_kinds + k] = std::string(kind_names[k]) + "-max-length";
    }
    text[count - 1] = "iops-size";
    std::array<std::string_view, count> v;
    for (std::size_t i = 0; i < count; ++i) v[i] = text[i];
    return v;
  }();
  return all;
}

bool throttle_settings::empty() const {
  return !group && std::none_of(values.begin(), values.end(), [](const auto& v) { return v.has_value(); });
}

void throttle_settings::overlay(const throttle_settings& over) {
  for (std::size_t i = 0; i < count; ++i)
    if (over.values[i]) values[i] = over.values[i];
  if (over.group) group = over.group;
}

std::string throttle_settings::set(std::string_view name, std::string_view value) {
  auto quoted = [](std::string_view s) { return "'" + std::string(s.substr(0, 64)) + (s.size() > 64 ? "...'" : "'"); };
  if (name == "group") {
    if (!valid_group_name(value))
      return "group " + quoted(value) + " is not a group name (letters, digits, '.', '_', '-', at most 64)";
    group = std::string(value);
    return {};
  }
  const auto& all = names();
  const auto it = std::find(all.begin(), all.end(), name);
  if (it == all.end()) return "unknown limit " + quoted(name);
  std::uint64_t v = 0;
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (value.empty() || value.front() == '+' || ec == std::errc::invalid_argument || end != value.data() + value.size())
    return std::string(name) + " must be a whole number, got " + quoted(value);
  if (ec == std::errc::result_out_of_range || v > throttle_value_max)
    return std::string(name) + " must be at most " + std::to_string(throttle_value_max) + ", got " + quoted(value);
  values[static_cast<std::size_t>(it - all.begin())] = v;
  return {};
}

throttle_limits throttle_settings::limits() const {
  throttle_limits l;
  for (std::size_t k = 0; k < throttle_kinds; ++k) {
    l.buckets[k].avg = values[k].value_or(0);
    l.buckets[k].max = values[throttle_kinds + k].value_or(0);
    l.buckets[k].max_length = std::max<std::uint64_t>(values[2 * throttle_kinds + k].value_or(1), 1);
  }
  l.iops_size = values[count - 1].value_or(0);
  return l;
}

std::string throttle_settings::describe() const {
  std::string out;
  for (std::size_t i = 0; i < count; ++i)
    if (values[i]) out += (out.empty() ? "" : " ") + std::string(names()[i]) + "=" + std::to_string(*values[i]);
  if (group) out += (out.empty() ? "" : " ") + std::string("group=") + *group;
  return out;
}

std::string describe(const throttle_limits& l) {
  const auto& names = throttle_settings::names();
  std::string out;
  auto add = [&](std::string_view name, std::uint64_t v) {
    if (!out.empty()) out += ' ';
    out += name;
    out += '=';
    out += std::to_string(v);
  };
  for (std::size_t k = 0; k < throttle_kinds; ++k) {
    const auto& b = l.buckets[k];
    if (b.avg) add(names[k], b.avg);
    if (b.max) add(names[throttle_kinds + k], b.max);
    if (b.max_length > 1) add(names[2 * throttle_kinds + k], b.max_length);
  }
  if (l.iops_size) add(names.back(), l.iops_size);
  return out;
}

bool valid_group_name(std::string_view name) {
  if (name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-';
  });
}

std::string validate(const throttle_limits& l) {
  using k = throttle_kind;
  for (auto [total, rd, wr] :
       {std::array{k::bps_total, k::bps_read, k::bps_write}, std::array{k::iops_total, k::iops_read, k::iops_write}}) {
    if (l[total].avg && (l[rd].avg || l[wr].avg))
      return name_of(total) + " cannot be combined with " + name_of(rd) + " or " + name_of(wr);
    if (l[total].max && (l[rd].max || l[wr].max))
      return name_of(total) + "-max cannot be combined with " + name_of(rd) + "-max or " + name_of(wr) + "-max";
  }
  for (std::size_t i = 0; i < throttle_kinds; ++i) {
    const auto& b = l.buckets[i];
    const std::string_view n = kind_names[i];
    const std::string most = std::to_string(throttle_value_max);
    if (b.avg > throttle_value_max || b.max > throttle_value_max)
      return text({n, " and ", n, "-max must be at most ", most});
    if (b.max && !b.avg) return text({n, "-max needs ", n});
    if (b.max && b.max < b.avg)
      return text({n, "-max (", std::to_string(b.max), ") is below ", n, " (", std::to_string(b.avg), ")"});
    if (b.max_length > 1 && !b.max) return text({n, "-max-length needs ", n, "-max"});
    if (b.max && b.max_length > throttle_value_max / b.max)
      return text({n, "-max x ", n, "-max-length must be at most ", most});
  }
  if (l.iops_size > throttle_value_max) return "iops-size must be at most " + std::to_string(throttle_value_max);
  if (l.iops_size && !l[k::iops_total].avg && !l[k::iops_read].avg && !l[k::iops_write].avg)
    return "iops-size needs iops-total, iops-read or iops-write";
  return {};
}

void throttle_state::reset(const throttle_limits& l, clock::time_point now) {
  lim_ = l;
  b_ = {};
  last_ = now;
}

void throttle_state::leak(clock::time_point now) {
  if (now <= last_) return;
  const double seconds = std::chrono::duration<double>(now - last_).count();
  last_ = now;
  for (std::size_t i = 0; i < throttle_kinds; ++i) {
    const auto& l = lim_.buckets[i];
    if (!l.avg) continue;
    auto& b = b_[i];
    b.level = std::max(0.0, b.level - seconds * static_cast<double>(l.avg));
    if (l.max_length > 1) b.burst = std::max(0.0, b.burst - seconds * static_cast<double>(l.max));
  }
}

throttle_state::clock::duration throttle_state::wait(bool write) const {
  double longest = 0;  // seconds
  for (std::size_t i = 0; i < throttle_kinds; ++i) {
    const auto k = static_cast<throttle_kind>(i);
    if ((write && is_read(k)) || (!write && is_write(k))) continue;
    const auto& l = lim_.buckets[i];
    if (!l.avg) continue;
    const auto& b = b_[i];
    const auto avg = static_cast<double>(l.avg);
    const auto max = static_cast<double>(l.max);
    // Without a burst rate a tenth of a second at the rate, so that a
    // guest's short bursts are not cut into single requests.
    const double size = l.max ? max * static_cast<double>(l.max_length) : avg / 10;
    if (b.level > size) {
      longest = std::max(longest, (b.level - size) / avg);
    } else if (l.max_length > 1 && b.burst > max / 10) {
      longest = std::max(longest, (b.burst - max / 10) / max);
    }
  }
  if (longest <= 0) return clock::duration::zero();
  // Rounded up: a ring woken early would only be told to wait again.
  return std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(longest)) + clock::duration(1);
}

void throttle_state::charge(bool write, double bytes, double ops) {
  for (std::size_t i = 0; i < throttle_kinds; ++i) {
    const auto k = static_cast<throttle_kind>(i);
    if ((write && is_read(k)) || (!write && is_write(k))) continue;
    const auto& l = lim_.buckets[i];
    if (!l.avg) continue;
    const double units = counts_ops(k) ? ops : bytes;
    auto& b = b_[i];
    b.level = std::max(0.0, b.level + units);
    if (l.max_length > 1) b.burst = std::max(0.0, b.burst + units);
  }
}

double throttle_state::ops_of(std::uint64_t bytes) const {
  if (lim_.iops_size && bytes > lim_.iops_size) return static_cast<double>(bytes) / static_cast<double>(lim_.iops_size);
  return 1;
}

void throttle_group::configure(const throttle_limits& l, clock::time_point now) {
  std::vector<std::shared_ptr<throttle_waiter>> tell;
  {
    std::lock_guard lock(mu_);
    if (l == state_.limits()) return;
    state_.reset(l, now);
    enabled_.store(l.any(), std::memory_order_relaxed);
    for (member* m : members_) {
      m->ticket_ = 0;
      if (auto w = m->waiter_.lock()) tell.push_back(std::move(w));
    }
  }
  // Outside the lock: a waiter posts to its ring's thread.
  for (const auto& w : tell) w->limits_changed();
}

throttle_limits throttle_group::limits() const {
  std::lock_guard lock(mu_);
  return state_.limits();
}

std::size_t throttle_group::members() const {
  std::lock_guard lock(mu_);
  return members_.size();
}

throttle_group::member::member(std::shared_ptr<throttle_group> g, std::weak_ptr<throttle_waiter> w)
    : group_(std::move(g)), waiter_(std::move(w)) {
  std::lock_guard lock(group_->mu_);
  group_->members_.push_back(this);
}

throttle_group::member::~member() {
  std::lock_guard lock(group_->mu_);
  std::erase(group_->members_, this);
}

bool throttle_group::first_in_line_locked(const member& m, clock::time_point now) const {
  for (const member* o : members_) {
    if (o == &m || o->ticket_ == 0) continue;
    if (m.ticket_ != 0 && o->ticket_ > m.ticket_) continue;
    // An older ticket whose turn has not passed unused comes first.
    if (now < o->due_ + grace) return false;
  }
  return true;
}

bool throttle_group::member::enabled() const { return group_->enabled_.load(std::memory_order_relaxed); }

throttle_group::clock::duration throttle_group::member::take(clock::time_point now, bool write, std::uint64_t bytes) {
  throttle_group& g = *group_;
  if (!g.enabled_.load(std::memory_order_relaxed)) return clock::duration::zero();
  std::lock_guard lock(g.mu_);
  g.state_.leak(now);
  clock::duration w = g.state_.wait(write);
  if (w == clock::duration::zero() && !g.first_in_line_locked(*this, now)) w = grace;
  if (w > clock::duration::zero()) {
    if (ticket_ == 0) ticket_ = ++g.tickets_;
    due_ = now + w;
    return w;
  }
  ticket_ = 0;
  g.state_.charge(write, static_cast<double>(bytes), g.state_.ops_of(bytes));
  return clock::duration::zero();
}

void throttle_group::member::correct(bool write, std::uint64_t charged, std::uint64_t actual, bool taken) {
  throttle_group& g = *group_;
  if (!g.enabled_.load(std::memory_order_relaxed)) return;
  std::lock_guard lock(g.mu_);
  const double ops = (taken ? g.state_.ops_of(actual) : 0) - g.state_.ops_of(charged);
  g.state_.charge(write, static_cast<double>(actual) - static_cast<double>(charged), ops);
}

std::shared_ptr<throttle_group> throttle_registry::get(const std::string& key) {
  std::lock_guard lock(mu_);
  std::erase_if(groups_, [](const auto& e) { return e.second.expired(); });
  auto& slot = groups_[key];
  if (auto g = slot.lock()) return g;
  auto g = std::make_shared<throttle_group>(key);
  slot = g;
  return g;
}

}  // namespace xbd::blkback
