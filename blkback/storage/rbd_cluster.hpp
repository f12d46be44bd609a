// The daemon's connections to Ceph clusters: one librados handle (rados_t)
// per distinct cluster, shared by every image opened on it.
//
// A rados_t is heavy (a monitor session, an OSD session per OSD, some twenty
// threads, an admin socket), and librados is made to serve many images from
// one; QEMU gives each disk its own, which is what we avoid. Two targets
// share a connection when everything that shapes it is the same: the
// cluster's name, the ceph.conf read, the client id, the spec's options in
// order, and the timeouts the connection is given.
//
// Every call here blocks (on the cluster): callers run them on a thread of
// their own (rbd_thread.hpp). The connection is shut down when its last
// user lets it go, on that user's thread if it is one of ours (a store's
// close, which is waited for), otherwise on a thread of its own.
#pragma once

#include "asio_xen/error.hpp"
#include "blkback/storage/rbd_thread.hpp"

#include <rados/librados.h>

#include <chrono>
#include <compare>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace xbd::blkback::storage::rbd {

struct cluster_key {
  std::string name;                                          // the cluster's ($cluster in ceph.conf)
  std::string conf;                                          // a ceph.conf; empty: librados's search
  std::string client_id;                                     // without "client."
  std::vector<std::pair<std::string, std::string>> options;  // values may be secrets: never shown
  std::chrono::milliseconds connect_timeout{0};
  std::chrono::milliseconds op_timeout{0};  // 0: librados's default

  auto operator<=>(const cluster_key&) const = default;
};

class cluster {
 public:
  // Connected, or being connected by another caller (waited for until
  // `deadline`), or connected now by this one. Blocks. On failure `detail`
  // says why (librados's words and ours).
  static asio_xen::result<std::shared_ptr<cluster>> get(const cluster_key& key, clock::time_point deadline,
                                                        std::string& detail);

  rados_t handle() const { return h_; }
  // The cluster has fenced this connection (blocklisted it): get() makes a
  // new one from now on; the images on this one keep it until they close.
  void retire();
  // "cluster ceph as client.admin", for messages.
  std::string describe() const;
  std::string client() const { return "client." + key_.client_id; }

  // rados_t handles that exist (connecting, connected or shutting down), for
  // tests: one per distinct cluster in use, none once the last is let go.
  static std::size_t handles();

  explicit cluster(cluster_key key) : key_(std::move(key)) {}
  ~cluster();  // rados_shutdown: blocks; never on a ring's or the control thread (get()'s deleter)
  cluster(const cluster&) = delete;
  cluster& operator=(const cluster&) = delete;

 private:
  enum class state { connecting, up, failed };

  asio_xen::error_code connect(std::string& detail);
  std::string refusal(int r) const;
  asio_xen::error_code configure(std::string& detail);
  asio_xen::error_code wait(clock::time_point deadline, std::string& detail);
  bool failed();

  const cluster_key key_;
  rados_t h_ = nullptr;
  std::mutex m_;
  std::condition_variable settled_;
  state state_ = state::connecting;
  asio_xen::error_code ec_;  // failed: why, and in words:
  std::string detail_;
};

}  // namespace xbd::blkback::storage::rbd
