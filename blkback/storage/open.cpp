// Which driver serves a disk spec, and how the pieces are put together: a
// local raw file directly, an NBD export through libnbd, an image in
// another format through a qemu-storage-daemon of its own and then NBD.
#include "blkback/log.hpp"
#include "blkback/storage/image_server.hpp"
#include "blkback/storage/local.hpp"
#include "blkback/storage/nbd.hpp"
#include "blkback/storage/off_thread.hpp"
#include "blkback/storage/rbd.hpp"
#include "blkback/storage/storage.hpp"

#include <utility>

namespace xbd::blkback::storage {

namespace asio = boost::asio;
using asio_xen::error_code;

namespace {

const asio_xen::xen_call_category open_call{"open"};

// An image served by its own qemu-storage-daemon: the NBD store in front,
// the server behind it, gone together (the store first: its connections
// close before the server stops).
class served_image final : public store {
 public:
  served_image(std::unique_ptr<image_server> server, std::unique_ptr<store> nbd, std::string name)
      : server_(std::move(server)), nbd_(std::move(nbd)), name_(std::move(name)) {}

  const properties& props() const override { return nbd_->props(); }
  asio_xen::result<std::uint64_t> current_size() const override { return nbd_->current_size(); }
  std::string name() const override { return name_; }
  asio_xen::result<std::unique_ptr<channel>> open_channel(const worker& w, unsigned depth) override {
    return nbd_->open_channel(w, depth);
  }
  asio::awaitable<void> close() override {
    co_await nbd_->close();
    co_await server_->stop();
  }

 private:
  std::unique_ptr<image_server> server_;
  std::unique_ptr<store> nbd_;
  std::string name_;
};

nbd_options nbd_options_from(const settings& cfg, bool writable) {
  nbd_options o;
  o.writable = writable;
  o.connect_timeout = std::chrono::seconds(cfg.nbd.connect_timeout_seconds);
  o.reconnect = std::chrono::seconds(cfg.nbd.reconnect_seconds);
  return o;
}

asio::awaitable<asio_xen::result<opened>> open_rbd_image(const open_request& req, const settings& cfg,
                                                         std::string& detail) {
  rbd_options o;
  o.writable = req.writable;
  o.cluster = cfg.rbd.cluster;
  o.conf = cfg.rbd.conf;
  o.client_id = cfg.rbd.client_id;
  o.connect_timeout = std::chrono::seconds(cfg.rbd.connect_timeout_seconds);
  o.op_timeout = std::chrono::seconds(cfg.rbd.op_timeout_seconds);
  auto st = co_await open_rbd(req.spec.rbd, o, detail);
  if (!st) co_return st.error();
  opened out;
  // As for NBD, dom0's page cache is not involved: librbd caches (or not)
  // as ceph.conf says.
  out.mode = "RBD: librbd's own caching";
  out.st = std::move(*st);
  co_return out;
}

asio::awaitable<asio_xen::result<opened>> open_image(open_request req, const settings& cfg, std::string& detail) {
  const open_mode mode = choose_open_mode(req.policy, req.key);
  image_server_options o;
  o.program = cfg.images.program;
  o.runtime_dir = cfg.images.runtime_directory;
  o.name = req.name;
  o.writable = req.writable;
  o.direct = mode.direct;
  o.discard = cfg.discard;
  o.start_timeout = std::chrono::seconds(cfg.images.start_timeout_seconds);
  auto server = co_await image_server::start(req.spec.format, req.spec.path, o, detail);
  if (!server) co_return server.error();
  const nbd_target target = (*server)->target();
  const nbd_options nopt = nbd_options_from(cfg, req.writable);
  auto nbd = co_await open_nbd(target, nopt, detail);
  if (!nbd) {
    co_await (*server)->stop();
    co_return nbd.error();
  }
  opened out;
  out.mode = std::string(mode.reason) + "; " + std::string(to_string(req.spec.format)) +
             " through qemu-storage-daemon " + (mode.direct ? "with cache.direct=on" : "on the page cache");
  out.st =
      std::make_unique<served_image>(std::move(*server), std::move(*nbd),
                                     req.spec.path.string() + " (" + std::string(to_string(req.spec.format)) + ")");
  co_return out;
}

// A local file or device, opened on a thread of its own (off_thread.hpp):
// a file system that does not answer holds up this vbd alone.
asio::awaitable<asio_xen::result<opened>> open_file(const open_request& req, const settings& cfg, std::string& detail) {
  const open_mode mode = choose_open_mode(req.policy, req.key);
  struct result {
    asio_xen::result<std::unique_ptr<store>> st;
    std::string warning;
  };
  const local_options lo{req.writable, mode.direct};
  auto call = [path = req.spec.path, lo] {
    result r{asio_xen::result<std::unique_ptr<store>>(std::unique_ptr<store>()), {}};
    r.st = open_local(path, lo, &r.warning);
    return r;
  };
  const std::chrono::seconds bound(cfg.open_timeout_seconds);
  auto [end, got] = co_await run_off_thread<result>(std::move(call), bound, req.stop);
  if (end != off_thread_end::done) {
    detail = describe_stall(end, bound);
    co_return asio_xen::xen_error(open_call, end == off_thread_end::timed_out ? ETIMEDOUT : EAGAIN);
  }
  if (!got->st) co_return got->st.error();
  opened out;
  out.mode = mode.reason;
  out.warning = std::move(got->warning);
  out.st = std::move(*got->st);
  co_return out;
}

}  // namespace

asio::awaitable<asio_xen::result<opened>> open(open_request req, const settings& cfg, std::string& detail) {
  switch (req.spec.where) {
    case disk_spec::kind::local:
      co_return co_await open_file(req, cfg, detail);
    case disk_spec::kind::nbd: {
      const nbd_target target = req.spec.nbd;
      const nbd_options nopt = nbd_options_from(cfg, req.writable);
      auto st = co_await open_nbd(target, nopt, detail);
      if (!st) co_return st.error();
      opened out;
      // direct-io-safe is about dom0's page cache, which NBD does not use:
      // caching is the server's business.
      out.mode = "NBD: the server's own caching";
      out.st = std::move(*st);
      co_return out;
    }
    case disk_spec::kind::image:
      co_return co_await open_image(std::move(req), cfg, detail);
    case disk_spec::kind::rbd:
      co_return co_await open_rbd_image(req, cfg, detail);
  }
  co_return error_code(EINVAL, boost::system::generic_category());
}

}  // namespace xbd::blkback::storage
