#include "blkback/storage/rbd.hpp"

#include "blkback/log.hpp"
#include "blkback/storage/rbd_channel.hpp"
#include "blkback/storage/rbd_image.hpp"

#include <algorithm>
#include <cerrno>

namespace xbd::blkback::storage {

namespace asio = boost::asio;
using asio_xen::error_code;

namespace {

constexpr std::uint64_t sector = 512;

// Never destroyed: a thread left in librbd may log after static destructors ran.
logger& lg() {
  static auto* l = new logger;
  return *l;
}

std::string ms(std::chrono::milliseconds t) { return std::to_string(t.count()) + " ms"; }

// What librbd serves: any byte offset and length, so 512-byte sectors, and
// no read-modify-write of its own below that.
properties props_of(const rbd::image& img, bool writable) {
  properties p;
  p.size = img.size() - img.size() % sector;
  p.logical_sector = p.physical_sector = sector;
  p.writable = writable;
  p.direct = false;  // caching is librbd's (rbd_cache), and flushes reach the OSDs
  p.flush = true;
  p.vectored = true;  // librbd reads into and writes from the guest's pages (persistent grants)
  // Granularity: the object size. Only a discard that covers an object
  // whole removes it (and clears it in the object map); a smaller one
  // truncates or zeroes part of an object, or is skipped altogether
  // (rbd_skip_partial_discard). Offered the object size, a guest aligns its
  // discards to objects, and fstrim skips free ranges too small to free
  // anything. QEMU's rbd driver aligns discards to the object size too.
  p.discard = writable;
  p.discard_granularity =
      writable ? static_cast<std::uint32_t>(std::clamp<std::uint64_t>(img.object_size(), sector, 1u << 30)) : 0;
  p.max_queues = 0;  // one image handle serves every ring, and a flush covers them all
  return p;
}

class rbd_store final : public store {
 public:
  rbd_store(std::shared_ptr<rbd::image> img, std::shared_ptr<const rbd::channel_config> cfg,
            std::chrono::milliseconds close_limit)
      : img_(std::move(img)), cfg_(std::move(cfg)), close_limit_(close_limit) {}
  ~rbd_store() override { let_go(); }
  rbd_store(const rbd_store&) = delete;
  rbd_store& operator=(const rbd_store&) = delete;

  const properties& props() const override { return cfg_->props; }
  // As last read, never from the cluster here (the control thread's call):
  // the image's update watch keeps it current.
  asio_xen::result<std::uint64_t> current_size() const override {
    const std::uint64_t bytes = img_ ? img_->size() : cfg_->props.size;
    return bytes - bytes % sector;
  }
  void watch_size(std::function<void()> changed) override {
    if (img_) img_->notify_resize(std::move(changed));
  }
  std::string name() const override { return cfg_->name; }
  asio_xen::result<std::unique_ptr<channel>> open_channel(const worker& w, unsigned depth) override {
    return rbd::open_channel(w.ex, depth, cfg_);
  }
  asio::awaitable<void> close() override;

 private:
  void let_go();

  std::shared_ptr<rbd::image> img_;
  std::shared_ptr<const rbd::channel_config> cfg_;
  std::chrono::milliseconds close_limit_;
};

// Unwatch, close and let the cluster go, on a thread of its own; waited for
// at most close_limit_, and left to finish by itself after that (it holds
// everything it touches).
asio::awaitable<void> rbd_store::close() {
  if (!img_) co_return;
  img_->stop_notifying();
  std::shared_ptr<rbd::image> img = std::move(img_);
  std::function<bool()> job = [img] {
    img->shut();
    return true;
  };
  std::function<void(bool&&)> orphan = [](bool&&) {};  // named: see open_rbd
  auto r = co_await rbd::offload<bool>(std::move(job), std::move(orphan), rbd::clock::now() + close_limit_);
  if (!r)
    XBD_LOG(lg(), warning) << cfg_->name << ": did not close within " << ms(close_limit_) << " (" << r.error().message()
                           << "); it closes in the background";
  else
    XBD_LOG(lg(), debug) << cfg_->name << ": closed";
}

// Destroyed without close(): the same, without waiting.
void rbd_store::let_go() {
  if (!img_) return;
  img_->stop_notifying();
  std::shared_ptr<rbd::image> keep = img_;
  if (!rbd::spawn([img = std::move(img_)] { img->shut(); })) {
    // Closing here would block this (the control) thread on the cluster.
    XBD_LOG(lg(), error) << cfg_->name << ": no thread to close the image; it stays open";
    new std::shared_ptr<rbd::image>(std::move(keep));  // NOLINT: a deliberate leak
  }
}

// What the job on the opening thread hands back.
struct open_outcome {
  std::shared_ptr<rbd::image> img;
  error_code ec;
  std::string detail;
};

}  // namespace

asio::awaitable<asio_xen::result<std::unique_ptr<store>>> open_rbd(const rbd_target& t, const rbd_options& o,
                                                                   std::string& detail) {
  rbd::cluster_key key{o.cluster,
                       t.conf.empty() ? o.conf.string() : t.conf,
                       t.user.empty() ? o.client_id : t.user,
                       t.options,
                       o.connect_timeout,
                       o.op_timeout};
  const rbd::image_spec spec{t.pool, t.ns, t.image, t.snapshot, o.writable && t.snapshot.empty(), t.describe()};
  auto stage = std::make_shared<rbd::progress>();
  const auto deadline = rbd::clock::now() + o.connect_timeout;
  // Named, not temporaries in the co_await: GCC 12 destroys a lambda
  // temporary of a co_await expression twice.
  std::function<open_outcome()> job = [key = std::move(key), spec, deadline, stage] {
    open_outcome out;
    auto img = rbd::image::open(key, spec, deadline, *stage, out.detail);
    if (img)
      out.img = std::move(*img);
    else
      out.ec = img.error();
    return out;
  };
  std::function<void(open_outcome &&)> orphan = [](open_outcome&& late) {
    if (late.img) late.img->shut();
  };
  auto r = co_await rbd::offload<open_outcome>(std::move(job), std::move(orphan), deadline);
  if (!r) {
    detail = r.error() == boost::system::errc::timed_out
                 ? "no answer within " + ms(o.connect_timeout) + " while " + stage->get()
                 : "cannot start a thread to open the image: " + r.error().message();
    co_return r.error();
  }
  if (r->ec) {
    detail = std::move(r->detail);
    co_return r->ec;
  }
  auto cfg = std::make_shared<rbd::channel_config>();
  cfg->image = r->img->handle();
  cfg->name = spec.describe;
  cfg->props = props_of(*r->img, spec.writable);
  cfg->budget = std::make_shared<log_budget>();
  XBD_LOG(lg(), debug) << cfg->name << ": open, " << cfg->props.size << " bytes in objects of " << r->img->object_size()
                       << (spec.writable ? " bytes" : " bytes, read-only");
  co_return std::unique_ptr<store>(new rbd_store(std::move(r->img), std::move(cfg), o.connect_timeout));
}

std::size_t rbd_connections() { return rbd::cluster::handles(); }

bool rbd_quiesce(std::chrono::milliseconds limit) { return rbd::wait_background(limit); }

}  // namespace xbd::blkback::storage
