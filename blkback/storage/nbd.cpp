#include "blkback/storage/nbd.hpp"

#include "blkback/storage/nbd_channel.hpp"
#include "blkback/storage/nbd_link.hpp"

#include <boost/asio/this_coro.hpp>

#include <algorithm>
#include <cerrno>

namespace xbd::blkback::storage {

namespace asio = boost::asio;
using asio_xen::error_code;

namespace {

const asio_xen::xen_call_category probe_call{"nbd_get_size"};

std::uint32_t block_size(nbd_handle* h, int which) {
  const std::int64_t v = nbd_get_block_size(h, which);
  return v > 0 && v <= (1 << 26) ? static_cast<std::uint32_t>(v) : 0;
}

// What the export offers, from the handshake.
error_code probe(nbd_handle* h, const nbd_options& o, properties& p, std::string& detail) {
  const std::int64_t size = nbd_get_size(h);
  if (size < 0) {
    detail = nbd_get_error() ? nbd_get_error() : "the server did not say the export's size";
    return asio_xen::xen_error(probe_call, nbd_get_errno());
  }
  const bool read_only = nbd_is_read_only(h) == 1;
  if (o.writable && read_only) {
    detail = "the export is read-only (the server says so): open it read-only";
    return {EROFS, boost::system::generic_category()};
  }
  // A minimum block size is the unit the server can address: the frontend's
  // logical sector. A preferred one avoids read-modify-write (capped: some
  // servers prefer whole megabytes, which no guest takes for a sector).
  const std::uint32_t minimum = block_size(h, LIBNBD_SIZE_MINIMUM);
  const std::uint32_t preferred = block_size(h, LIBNBD_SIZE_PREFERRED);
  p.logical_sector = std::max<std::uint32_t>(512, minimum);
  p.io_alignment = p.logical_sector;  // the server refuses anything smaller
  p.physical_sector = std::clamp<std::uint32_t>(preferred, p.logical_sector, std::max(p.logical_sector, 65536u));
  if (static_cast<std::uint64_t>(size) % p.logical_sector != 0) {
    detail = "the export's size (" + std::to_string(size) + " bytes) is not a whole number of " +
             std::to_string(p.logical_sector) + "-byte sectors";
    return {EINVAL, boost::system::generic_category()};
  }
  p.size = static_cast<std::uint64_t>(size);
  p.writable = o.writable;
  p.direct = false;
  p.flush = nbd_can_flush(h) == 1;
  p.discard = p.writable && nbd_can_trim(h) == 1;
  p.discard_secure = false;
  p.discard_granularity = p.discard ? std::max(p.logical_sector, preferred) : 0;
  p.discard_alignment = 0;
  p.max_queues = nbd_can_multi_conn(h) == 1 ? 0 : 1;
  return {};
}

class nbd_store final : public store {
 public:
  explicit nbd_store(std::shared_ptr<const nbd::channel_config> cfg) : cfg_(std::move(cfg)) {}

  const properties& props() const override { return cfg_->props; }
  // As the server said at the handshake: libnbd learns of a resize only by
  // connecting again.
  asio_xen::result<std::uint64_t> current_size() const override { return cfg_->props.size; }
  std::string name() const override { return cfg_->name; }
  asio_xen::result<std::unique_ptr<channel>> open_channel(const worker& w, unsigned depth) override {
    return nbd::open_channel(w.ex, depth, cfg_);
  }

 private:
  std::shared_ptr<const nbd::channel_config> cfg_;
};

}  // namespace

asio::awaitable<asio_xen::result<std::unique_ptr<store>>> open_nbd(const nbd_target& t, const nbd_options& o,
                                                                   std::string& detail) {
  auto cfg = std::make_shared<nbd::channel_config>();
  cfg->target = t;
  cfg->local_files = !t.tls_psk_file.empty() || !t.tls_certificates.empty();
  cfg->name = t.describe();
  cfg->opt = o;
  cfg->budget = std::make_shared<log_budget>();

  auto watch = nbd::socket_watch::create(co_await asio::this_coro::executor);
  if (!watch) {
    detail = "cannot watch a socket: " + watch.error().message();
    co_return watch.error();
  }
  auto l = std::make_shared<nbd::link>();
  error_code ec = co_await nbd::connect(l, *watch, cfg->target, cfg->local_files, o.connect_timeout, detail);
  if (!ec) ec = probe(l->handle(), o, cfg->props, detail);
  // Goodbye to the server if it is listening (queued and sent if the socket
  // takes it now, never waited for), then closed.
  if (l->up()) nbd_aio_disconnect(l->handle(), 0);
  (*watch)->forget();
  l->close();
  (*watch)->close();
  if (ec) co_return ec;
  co_return std::unique_ptr<store>(new nbd_store(std::move(cfg)));
}

}  // namespace xbd::blkback::storage
