#include "blkback/storage/ceph_api.hpp"

#include <dlfcn.h>

#include <atomic>
#include <mutex>
#include <string>
#include <type_traits>

namespace xbd::blkback::storage::rbd {

namespace {

struct loader {
  std::mutex m;
  std::string rados_name = "librados.so.2";
  std::string rbd_name = "librbd.so.1";
  ceph_api api;
  std::atomic<bool> loaded{false};
};

// Never destroyed: librbd's threads may outlive static destructors.
loader& the_loader() {
  static auto* l = new loader;  // NOLINT(cppcoreguidelines-owning-memory)
  return *l;
}

std::string dl_error() {
  const char* e = ::dlerror();
  return e ? e : "unknown error";
}

// Every function from its library, or the first one missing.
bool bind_all(void* rados, void* rbd, ceph_api& api, std::string& why) {
  auto bind = [&](void* lib, const char* name, auto& fn) {
    if (!why.empty()) return;
    void* sym = ::dlsym(lib, name);
    if (sym == nullptr)
      why = std::string("the Ceph libraries lack ") + name + " (" + dl_error() + ")";
    else
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(sym);  // NOLINT: dlsym's contract
  };
#define XBD_CEPH_BIND(lib, name) bind(lib, #name, api.name);
  XBD_CEPH_FUNCTIONS(XBD_CEPH_BIND)
#undef XBD_CEPH_BIND
  return why.empty();
}

}  // namespace

bool load_ceph(std::string& why) {
  loader& l = the_loader();
  if (l.loaded.load(std::memory_order_acquire)) return true;
  const std::lock_guard g(l.m);
  if (l.loaded.load(std::memory_order_relaxed)) return true;
  // Kept open for the process's life, whatever follows: librados starts
  // threads that are never unloaded safely.
  void* rados = ::dlopen(l.rados_name.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (rados == nullptr) {
    why = "librados cannot be loaded (" + dl_error() + "): install librbd1 to serve rbd: disks";
    return false;
  }
  void* rbd = ::dlopen(l.rbd_name.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (rbd == nullptr) {
    why = "librbd cannot be loaded (" + dl_error() + "): install librbd1 to serve rbd: disks";
    return false;
  }
  ceph_api api;
  if (!bind_all(rados, rbd, api, why)) return false;
  l.api = api;
  l.loaded.store(true, std::memory_order_release);
  return true;
}

const ceph_api& ceph() { return the_loader().api; }

bool ceph_loaded() { return the_loader().loaded.load(std::memory_order_acquire); }

void set_ceph_library_names(std::string rados, std::string rbd) {
  loader& l = the_loader();
  const std::lock_guard g(l.m);
  l.rados_name = std::move(rados);
  l.rbd_name = std::move(rbd);
}

}  // namespace xbd::blkback::storage::rbd
