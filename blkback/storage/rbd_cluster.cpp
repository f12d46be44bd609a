#include "blkback/storage/rbd_cluster.hpp"

#include "blkback/log.hpp"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>

namespace xbd::blkback::storage::rbd {

using asio_xen::error_code;

namespace {

const asio_xen::xen_call_category create_call{"rados_create2"};
const asio_xen::xen_call_category conf_call{"rados_conf_read_file"};
const asio_xen::xen_call_category set_call{"rados_conf_set"};
const asio_xen::xen_call_category connect_call{"rados_connect"};

std::atomic<std::size_t> live_handles{0};

struct registry {
  std::mutex m;
  std::map<cluster_key, std::weak_ptr<cluster>> entries;
};

registry& clusters() {
  static auto* r = new registry;  // never destroyed: a late shutdown may still look
  return *r;
}

// Never destroyed: a thread left in librbd may log after static destructors ran.
logger& lg() {
  static auto* l = new logger;
  return *l;
}

std::string words(int r) { return std::strerror(-r); }

// librados takes its timeouts in whole seconds.
std::string seconds(std::chrono::milliseconds t) {
  return std::to_string(std::max<long long>(1, (t.count() + 999) / 1000));
}

// The last user lets go: rados_shutdown waits for the connection's threads.
// Where blocking is allowed (the thread that closed the last image, whose
// close() is waited for), at once, so that a store's close() returns with
// the connection gone and a daemon that exits then leaves no thread inside
// librados; elsewhere, on a thread of its own.
void shut_down(cluster* c) {
  if (on_background_thread() || !spawn([c] { delete c; })) delete c;
}

}  // namespace

std::size_t cluster::handles() { return live_handles.load(); }

std::string cluster::describe() const { return "cluster " + key_.name + " as client." + key_.client_id; }

cluster::~cluster() {
  if (!h_) return;
  rados_shutdown(h_);
  --live_handles;
  XBD_LOG(lg(), info) << "rbd: disconnected from " << describe();
}

asio_xen::result<std::shared_ptr<cluster>> cluster::get(const cluster_key& key, clock::time_point deadline,
                                                        std::string& detail) {
  std::shared_ptr<cluster> c;
  bool mine = false;
  {
    registry& r = clusters();
    std::lock_guard lk(r.m);
    std::erase_if(r.entries, [](const auto& e) { return e.second.expired(); });
    if (auto it = r.entries.find(key); it != r.entries.end()) c = it->second.lock();
    if (!c || c->failed()) {
      c = std::shared_ptr<cluster>(new cluster(key), shut_down);
      r.entries[key] = c;
      mine = true;
    }
  }
  const error_code ec = mine ? c->connect(detail) : c->wait(deadline, detail);
  if (ec) return ec;
  return c;
}

void cluster::retire() {
  std::lock_guard lk(m_);
  state_ = state::failed;
  ec_ = asio_xen::xen_error(connect_call, ESHUTDOWN);
  detail_ = "the cluster has blocklisted this connection";
}

bool cluster::failed() {
  std::lock_guard lk(m_);
  return state_ == state::failed;
}

// rados_connect's refusals, in words an operator can act on.
std::string cluster::refusal(int r) const {
  const std::string client = "client." + key_.client_id;
  const std::string call = " (rados_connect: " + words(r) + ")";
  switch (-r) {
    case ETIMEDOUT:
      return "no answer from the cluster's monitors within " + seconds(key_.connect_timeout) + " s" + call;
    case EACCES:
    case EPERM:
      return "the cluster refused " + client + "'s key" + call + ": check key= or the keyring";
    case EINVAL:
      return "librados could not use " + client + "'s key or the configuration" + call + ": is key= valid base64?";
    case ENOENT:
      return "librados found no monitor address or no key for " + client + call +
             ": give conf= or mon_host=, and keyring= or key=";
    default:
      return "cannot connect to the cluster" + call;
  }
}

error_code cluster::connect(std::string& detail) {
  error_code ec = configure(detail);
  if (!ec) {
    if (const int r = rados_connect(h_); r < 0) {
      detail = refusal(r);
      ec = asio_xen::xen_error(connect_call, -r);
    }
  }
  {
    std::lock_guard lk(m_);
    state_ = ec ? state::failed : state::up;
    ec_ = ec;
    detail_ = detail;
    settled_.notify_all();
  }
  if (!ec) XBD_LOG(lg(), info) << "rbd: connected to " << describe();
  return ec;
}

// A handle for the key's client, configured as librados would be from the
// command line: ceph.conf first, then the spec's options, then the
// daemon's timeouts (ours win, so that a stopping daemon is never held).
error_code cluster::configure(std::string& detail) {
  int r = rados_create2(&h_, key_.name.c_str(), ("client." + key_.client_id).c_str(), 0);
  if (r < 0) {
    h_ = nullptr;
    detail = "cannot create a librados handle for client." + key_.client_id + " (" + words(r) + ")";
    return asio_xen::xen_error(create_call, -r);
  }
  ++live_handles;
  // Without a conf the search is only a convenience: options may name
  // mon_host and the key themselves (QEMU does the same).
  r = rados_conf_read_file(h_, key_.conf.empty() ? nullptr : key_.conf.c_str());
  if (r < 0 && !key_.conf.empty()) {
    detail = "cannot read " + key_.conf + " (rados_conf_read_file: " + words(r) + ")";
    return asio_xen::xen_error(conf_call, -r);
  }
  for (const auto& [name, value] : key_.options) {
    if ((r = rados_conf_set(h_, name.c_str(), value.c_str())) < 0) {
      detail = "librados refuses the spec's option " + name + " (rados_conf_set: " + words(r) + ")";
      return asio_xen::xen_error(set_call, -r);
    }
  }
  // rbd_non_blocking_aio (librbd's default): the rings' threads never wait
  // inside rbd_aio_*, whatever ceph.conf says.
  std::vector<std::pair<const char*, std::string>> ours{{"client_mount_timeout", seconds(key_.connect_timeout)},
                                                        {"rbd_non_blocking_aio", "true"}};
  if (key_.op_timeout.count() > 0) {
    ours.emplace_back("rados_osd_op_timeout", seconds(key_.op_timeout));
    ours.emplace_back("rados_mon_op_timeout", seconds(key_.op_timeout));
  }
  for (const auto& [name, value] : ours) {
    if ((r = rados_conf_set(h_, name, value.c_str())) < 0) {
      detail = std::string("librados refuses ") + name + " = " + value + " (rados_conf_set: " + words(r) + ")";
      return asio_xen::xen_error(set_call, -r);
    }
  }
  return {};
}

error_code cluster::wait(clock::time_point deadline, std::string& detail) {
  std::unique_lock lk(m_);
  if (!settled_.wait_until(lk, deadline, [this] { return state_ != state::connecting; })) {
    detail = "no answer from the cluster's monitors within " + seconds(key_.connect_timeout) +
             " s (another vbd's connection to it is still trying)";
    return asio_xen::xen_error(connect_call, ETIMEDOUT);
  }
  if (state_ == state::up) return {};
  detail = detail_;
  return ec_;
}

}  // namespace xbd::blkback::storage::rbd
