#include "test/storage/resolver_shim.hpp"

#include <dlfcn.h>
#include <netdb.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

namespace xbd::test::resolver {

namespace {

std::atomic<bool> holding{false};
std::atomic<unsigned> release_count{0};
std::atomic<int> hung{0};

using gai_fn = int (*)(const char*, const char*, const addrinfo*, addrinfo**);

int real(const char* node, const char* service, const addrinfo* hints, addrinfo** res) {
  static const auto fn = reinterpret_cast<gai_fn>(::dlsym(RTLD_NEXT, "getaddrinfo"));
  return fn ? fn(node, service, hints, res) : EAI_SYSTEM;
}

// A DNS server that does not answer: polled (an atomic, never a condition
// variable a thread still waits on at exit), at most 3 s.
int hang_for_a_while() {
  const unsigned generation = release_count.load();
  ++hung;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  while (release_count.load() == generation && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  --hung;
  return EAI_AGAIN;
}

int answer(const char* node, const char* service, const addrinfo* hints, addrinfo** res) {
  if (node && std::strcmp(node, hang) == 0) return hang_for_a_while();
  if (node && std::strcmp(node, absent) == 0) return EAI_NONAME;
  if (node && std::strcmp(node, slow) == 0) {
    if (holding) return hang_for_a_while();
    return real("127.0.0.1", service, hints, res);
  }
  if (node && std::strcmp(node, two) == 0) {
    addrinfo* first = nullptr;
    if (const int r = real("127.0.0.2", service, hints, &first); r != 0) return r;
    addrinfo* second = nullptr;
    if (const int r = real("127.0.0.1", service, hints, &second); r != 0) {
      ::freeaddrinfo(first);
      return r;
    }
    addrinfo* last = first;
    while (last->ai_next) last = last->ai_next;
    last->ai_next = second;  // freeaddrinfo frees node by node
    *res = first;
    return 0;
  }
  return real(node, service, hints, res);
}

}  // namespace

void hold(bool on) { holding = on; }
void release() { ++release_count; }
int hanging() { return hung.load(); }

}  // namespace xbd::test::resolver

// NOLINTNEXTLINE: the C library's name, on purpose
extern "C" int getaddrinfo(const char* __restrict node, const char* __restrict service,
                           const addrinfo* __restrict hints, addrinfo** __restrict res) noexcept {
  return xbd::test::resolver::answer(node, service, hints, res);
}
