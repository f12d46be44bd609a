#include "blkback/data/fault.hpp"

#include <csignal>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <string>

namespace xbd::blkback::fault {

std::atomic<bool> armed{false};

namespace {

constexpr point all[] = {point::consumed, point::io_started,   point::completed,      point::responded,
                         point::pushed,   point::journal_take, point::journal_respond};

struct plan {
  point where = point::consumed;
  unsigned remaining = 0;
  std::function<void()> action;
};

std::mutex mu;
plan current;

}  // namespace

std::string_view to_string(point p) {
  switch (p) {
    case point::consumed:
      return "consumed";
    case point::io_started:
      return "io-started";
    case point::completed:
      return "completed";
    case point::responded:
      return "responded";
    case point::pushed:
      return "pushed";
    case point::journal_take:
      return "journal-take";
    case point::journal_respond:
      return "journal-respond";
  }
  return "?";
}

void reached(point p) {
  std::function<void()> act;
  {
    std::lock_guard lk(mu);
    if (p != current.where || current.remaining == 0 || --current.remaining != 0) return;
    act = current.action;
    armed.store(false, std::memory_order_relaxed);
  }
  act();
}

void arm(point p, unsigned n, std::function<void()> f) {
  std::lock_guard lk(mu);
  current = {p, n, std::move(f)};
  armed.store(n > 0, std::memory_order_relaxed);
}

void disarm() {
  std::lock_guard lk(mu);
  current = {};
  armed.store(false, std::memory_order_relaxed);
}

bool arm_from_environment() {
  const char* v = std::getenv("XBD_FAULT");
  if (v == nullptr || *v == '\0') return true;
  const std::string spec(v);
  const auto colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  unsigned n = 1;
  if (colon != std::string::npos) {
    try {
      n = static_cast<unsigned>(std::stoul(spec.substr(colon + 1)));
    } catch (const std::exception&) {
      n = 0;
    }
  }
  for (point p : all) {
    if (to_string(p) != name || n == 0) continue;
    arm(p, n, [] { ::raise(SIGKILL); });
    return true;
  }
  std::cerr << "xen-blkbackd: XBD_FAULT=" << spec << ": expected POINT[:N] with N >= 1, POINT one of";
  for (point p : all) std::cerr << ' ' << to_string(p);
  std::cerr << "\n";
  return false;
}

}  // namespace xbd::blkback::fault
