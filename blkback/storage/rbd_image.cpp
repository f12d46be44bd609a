#include "blkback/storage/rbd_image.hpp"

#include "blkback/log.hpp"

#include <cerrno>
#include <cstring>

namespace xbd::blkback::storage::rbd {

using asio_xen::error_code;

namespace {

const asio_xen::xen_call_category ioctx_call{"rados_ioctx_create"};
const asio_xen::xen_call_category open_call{"rbd_open"};
const asio_xen::xen_call_category snap_call{"rbd_snap_set"};
const asio_xen::xen_call_category stat_call{"rbd_stat"};
const asio_xen::xen_call_category lock_call{"rbd_lock_acquire"};
const asio_xen::xen_call_category watch_call{"rbd_update_watch"};

// Never destroyed: a thread left in librbd may log after static destructors ran.
logger& lg() {
  static auto* l = new logger;
  return *l;
}

std::string words(int r) { return std::strerror(-r); }

std::string where(const image_spec& s) {
  return "pool '" + s.pool + "'" + (s.ns.empty() ? std::string() : " namespace '" + s.ns + "'");
}

}  // namespace

asio_xen::result<std::shared_ptr<image>> image::open(const cluster_key& key, const image_spec& spec,
                                                     clock::time_point deadline, progress& p, std::string& detail) {
  for (int attempt = 0;; ++attempt) {
    auto img = std::make_shared<image>();
    img->name_ = spec.describe;
    p.set("connecting to the cluster");
    auto c = cluster::get(key, deadline, detail);
    if (!c) return c.error();
    img->cluster_ = std::move(*c);
    p.set("opening the image");
    error_code ec = img->open_handle(spec, detail);
    if (!ec && spec.writable) ec = img->check_lock(spec, p, detail);
    if (!ec && spec.snapshot.empty()) ec = img->watch(detail);
    if (!ec) return img;
    // ESHUTDOWN is librados's EBLOCKLISTED: the cluster has fenced this
    // connection (another host broke a lock of ours). It serves nothing
    // any more, even while other images still hold it: a new one does.
    const bool fenced = ec.value() == ESHUTDOWN;
    if (fenced) img->cluster_->retire();
    img->shut();
    if (!fenced || attempt > 0) return ec;
    XBD_LOG(lg(), warning) << spec.describe << ": the cluster has blocklisted " << key.client_id
                           << "'s connection; connecting again";
  }
}

// Pool, namespace, image, snapshot, each refused in its own words.
error_code image::open_handle(const image_spec& s, std::string& detail) {
  int r = rados_ioctx_create(cluster_->handle(), s.pool.c_str(), &io_);
  if (r < 0) {
    io_ = nullptr;
    detail = r == -ENOENT ? "pool '" + s.pool + "' does not exist (rados_ioctx_create: " + words(r) + ")"
                          : "cannot use pool '" + s.pool + "' (rados_ioctx_create: " + words(r) + ")";
    return asio_xen::xen_error(ioctx_call, -r);
  }
  if (!s.ns.empty()) rados_ioctx_set_namespace(io_, s.ns.c_str());
  r = s.writable ? rbd_open(io_, s.image.c_str(), &h_, nullptr)
                 : rbd_open_read_only(io_, s.image.c_str(), &h_, nullptr);
  if (r < 0) {
    h_ = nullptr;
    if (r == -ENOENT)
      detail = "image '" + s.image + "' does not exist in " + where(s) + " (rbd_open: " + words(r) + ")";
    else if (r == -EPERM || r == -EACCES)
      detail = "permission denied: " + cluster_->client() + " may not open image '" + s.image + "' in " + where(s) +
               " (rbd_open: " + words(r) + "): check the client's caps";
    else
      detail = "cannot open image '" + s.image + "' in " + where(s) + " (rbd_open: " + words(r) + ")";
    return asio_xen::xen_error(open_call, -r);
  }
  if (!s.snapshot.empty() && (r = rbd_snap_set(h_, s.snapshot.c_str())) < 0) {
    detail = r == -ENOENT
                 ? "image '" + s.image + "' has no snapshot '" + s.snapshot + "' (rbd_snap_set: " + words(r) + ")"
                 : "cannot open snapshot '" + s.snapshot + "' (rbd_snap_set: " + words(r) + ")";
    return asio_xen::xen_error(snap_call, -r);
  }
  rbd_image_info_t info{};
  if ((r = rbd_stat(h_, &info, sizeof info)) < 0) {
    detail = "cannot read the image's size (rbd_stat: " + words(r) + ")";
    return asio_xen::xen_error(stat_call, -r);
  }
  size_.store(info.size);
  object_size_ = info.obj_size;
  return {};
}

// See the header: ask the lock's owner, if there is one.
error_code image::check_lock(const image_spec& s, progress& p, std::string& detail) {
  std::uint64_t features = 0;
  if (rbd_get_features(h_, &features) < 0 || (features & RBD_FEATURE_EXCLUSIVE_LOCK) == 0) return {};
  rbd_lock_mode_t mode{};
  char* owners[8];
  std::size_t n = 8;
  const int r = rbd_lock_get_owners(h_, &mode, owners, &n);
  if (r == -ENOENT) return {};  // nobody holds it
  if (r == -EBUSY) {
    // Held, but not by librbd's lock machinery: an advisory `rbd lock add`
    // under the same name. librbd would retry every write for ever.
    detail = "the image has a lock that no librbd client will give up (" + lockers() +
             "): every write would wait for it; remove it (rbd lock rm) or open the image read-only";
    return asio_xen::xen_error(lock_call, EBUSY);
  }
  if (r < 0) {
    XBD_LOG(lg(), debug) << s.describe << ": no lock owner to ask (rbd_lock_get_owners: " << words(r) << ")";
    return {};
  }
  const std::string owner = n > 0 ? owners[0] : "another client";
  rbd_lock_get_owners_cleanup(owners, n);
  p.set("asking the image lock's owner (" + owner + ") to give the lock up");
  return ask_owner(s, owner, detail);
}

// With a handle of our own, which takes the lock and gives it back at once.
error_code image::ask_owner(const image_spec& s, const std::string& owner, std::string& detail) {
  rbd_image_t probe = nullptr;
  int r = rbd_open(io_, s.image.c_str(), &probe, nullptr);
  if (r == 0) {
    r = rbd_lock_acquire(probe, RBD_LOCK_MODE_EXCLUSIVE);
    if (r == 0) rbd_lock_release(probe);
    rbd_close(probe);
  }
  if (r == 0) {
    XBD_LOG(lg(), info) << s.describe << ": " << owner << " held the image's lock and gives it up on request";
    return {};
  }
  if (r == -EROFS || r == -EBUSY) {
    // EBUSY: the image is in use; librbd's EROFS would read as "open it
    // read-only", which is only one way out.
    detail = "the image is locked by " + owner +
             ", which keeps its lock exclusively and will not give it up (rbd_lock_acquire: " + words(r) +
             "): stop that client or open the image read-only";
    return asio_xen::xen_error(lock_call, EBUSY);
  }
  detail = "cannot ask the image lock's owner (" + owner + ") for the lock (rbd_lock_acquire: " + words(r) + ")";
  return asio_xen::xen_error(lock_call, -r);
}

// "client.4150 (lock id 'x') at 127.0.0.1:0/123", as `rbd lock ls` shows them.
std::string image::lockers() {
  char tag[256], clients[1024], cookies[1024], addrs[1024];
  std::size_t tag_len = sizeof tag, clients_len = sizeof clients, cookies_len = sizeof cookies,
              addrs_len = sizeof addrs;
  int exclusive = 0;
  const ssize_t n =
      rbd_list_lockers(h_, &exclusive, tag, &tag_len, clients, &clients_len, cookies, &cookies_len, addrs, &addrs_len);
  if (n <= 0) return "rbd lock ls names it";
  std::string out;
  const char *c = clients, *k = cookies, *a = addrs;
  for (ssize_t i = 0; i < n; ++i) {
    if (!out.empty()) out += ", ";
    out += std::string(c) + " (lock id '" + k + "') at " + a;
    c += std::strlen(c) + 1;
    k += std::strlen(k) + 1;
    a += std::strlen(a) + 1;
  }
  return out;
}

error_code image::watch(std::string& detail) {
  const int r = rbd_update_watch(h_, &watch_handle_, &image::updated, this);
  if (r < 0) {
    detail = "cannot watch the image for resizes (rbd_update_watch: " + words(r) + ")";
    return asio_xen::xen_error(watch_call, -r);
  }
  watching_ = true;
  return {};
}

void image::notify_resize(std::function<void()> changed) {
  std::lock_guard lk(m_);
  if (!closing_) changed_ = std::move(changed);
}

void image::stop_notifying() {
  std::lock_guard lk(m_);
  changed_ = nullptr;
}

// librbd's thread: note it, and start the refresher unless one runs.
void image::updated(void* self) {
  auto img = static_cast<image*>(self)->weak_from_this().lock();
  if (!img) return;
  std::lock_guard lk(img->m_);
  img->dirty_ = true;
  if (img->refreshing_ || img->closing_) return;
  img->refreshing_ = spawn([img] { img->refresh(); });
}

void image::refresh() {
  for (;;) {
    {
      std::lock_guard lk(m_);
      if (!dirty_ || closing_) {
        refreshing_ = false;
        idle_.notify_all();
        return;
      }
      dirty_ = false;
    }
    std::uint64_t bytes = 0;
    const int r = rbd_get_size(h_, &bytes);
    std::lock_guard lk(m_);
    if (r < 0) {
      XBD_LOG(lg(), debug) << name_ << ": cannot read the new size (rbd_get_size: " << words(r) << ")";
      continue;
    }
    if (size_.exchange(bytes) == bytes || !changed_) continue;
    try {
      changed_();
    } catch (...) {  // the vbd's business; the watch goes on
    }
  }
}

void image::shut() {
  {
    std::lock_guard lk(m_);
    changed_ = nullptr;
    closing_ = true;
  }
  // No callback runs once rbd_update_unwatch has returned, and the
  // refresher is the last user of the handle besides us.
  if (watching_) rbd_update_unwatch(h_, watch_handle_);
  watching_ = false;
  {
    std::unique_lock lk(m_);
    idle_.wait(lk, [this] { return !refreshing_; });
  }
  if (h_) {
    const int r = rbd_close(h_);
    if (r < 0) XBD_LOG(lg(), warning) << name_ << ": rbd_close: " << words(r);
  }
  h_ = nullptr;
  if (io_) rados_ioctx_destroy(io_);
  io_ = nullptr;
  cluster_.reset();
}

image::~image() { shut(); }

}  // namespace xbd::blkback::storage::rbd
