#include "blkback/data/persistent_grants.hpp"

#include <algorithm>
#include <utility>

namespace xbd::blkback {

persistent_grants::lookup persistent_grants::get(asio_xen::grant_ref ref, clock::time_point now) {
  lookup l;
  if (auto it = pages_.find(ref); it != pages_.end()) {
    page& p = it->second;
    if (p.users++ == 0) used_.splice(used_.end(), unused_, p.at);
    p.last_used = now;
    l.page = p.map.bytes().data();
    return l;
  }
  if (pages_.size() >= capacity_) {
    ++refused_;
    return l;
  }
  const asio_xen::grant_ref one[] = {ref};
  auto m = gnttab_.map(domid_, one, true);
  if (!m) {
    l.error = m.error();
    return l;
  }
  used_.push_back(ref);
  page& p = pages_[ref];
  p.map = std::move(*m);
  p.users = 1;
  p.last_used = now;
  p.at = std::prev(used_.end());
  l.page = p.map.bytes().data();
  l.mapped_now = true;
  return l;
}

void persistent_grants::put(asio_xen::grant_ref ref, clock::time_point now) {
  auto it = pages_.find(ref);
  if (it == pages_.end() || it->second.users == 0) return;
  page& p = it->second;
  p.last_used = now;
  if (--p.users == 0) unused_.splice(unused_.end(), used_, p.at);
}

std::size_t persistent_grants::drop_unused(clock::time_point before) {
  std::size_t n = 0;
  while (!unused_.empty()) {
    auto it = pages_.find(unused_.front());
    if (it->second.last_used >= before) break;  // the rest were used later
    pages_.erase(it);
    unused_.pop_front();
    ++n;
  }
  return n;
}

std::size_t persistent_grants::make_room(clock::time_point before) {
  if (std::exchange(refused_, 0) == 0) return 0;
  std::size_t n = 0;
  const std::size_t tenth = std::max<std::size_t>(1, capacity_ / 10);
  while (n < tenth && !unused_.empty() && pages_.find(unused_.front())->second.last_used < before) {
    pages_.erase(unused_.front());  // unmaps
    unused_.pop_front();
    ++n;
  }
  return n;
}

}  // namespace xbd::blkback
