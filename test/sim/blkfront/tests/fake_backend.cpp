#include "fake_backend.hpp"
#include "test/sim/blkfront/tests/i386_blkif.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <thread>

#include "asio_xen/xen.hpp"

namespace xbd::sim::blkfront::testing {

shared_pages fake_platform::share(std::uint32_t domid, unsigned count, bool writable) {
  if (count == 0 || shares_ >= fail_share_after) {
    last_error_ = "fake: share refused";
    return {};
  }
  ++shares_;
  ++shares_made;
  auto* mem = static_cast<std::byte*>(std::aligned_alloc(4096, std::size_t{count} * 4096));
  std::memset(mem, 0, std::size_t{count} * 4096);
  std::vector<std::uint32_t> refs;
  for (unsigned i = 0; i < count; ++i) {
    const std::uint32_t ref = next_gref_++;
    grants_[ref] = grant{mem + std::size_t{i} * 4096, domid, writable};
    refs.push_back(ref);
  }
  regions_[mem] = refs;
  return shared_pages(this, mem, std::move(refs), writable);
}

void fake_platform::unshare(std::byte* addr, std::size_t count) {
  auto it = regions_.find(addr);
  if (it == regions_.end() || it->second.size() != count) throw std::logic_error("fake: bad unshare");
  for (auto ref : it->second) grants_.erase(ref);
  regions_.erase(it);
  std::free(addr);
}

std::byte* fake_platform::map(std::uint32_t gref, std::uint32_t domid, bool write) const {
  auto it = grants_.find(gref);
  if (it == grants_.end() || it->second.domid != domid || (write && !it->second.writable)) return nullptr;
  return it->second.page;
}

bound_port fake_platform::bind_unbound_port(std::uint32_t) {
  const std::uint32_t p = next_port_++;
  ports_.insert(p);
  return bound_port(this, p);
}

void fake_platform::unbind(std::uint32_t port) { ports_.erase(port); }

bool fake_platform::notify(std::uint32_t port) {
  if (!ports_.contains(port)) {
    last_error_ = "fake: notify on an unbound port";
    return false;
  }
  ++notifications;
  kicked.insert(port);
  return true;
}

wait_result fake_platform::wait(std::chrono::milliseconds timeout) {
  wait_result r;
  if (backend) r.ports = backend();
  // Let time pass when nothing happened, as a real wait would, so timeouts
  // in the code under test can expire.
  if (r.ports.empty()) std::this_thread::sleep_for(std::min(timeout, std::chrono::milliseconds(1)));
  r.signal = stop_at.has_value();
  return r;
}

namespace {

using namespace xbd::sim::blkfront::test_i386;

}  // namespace

// One request, whatever its layout was, as QEMU's blkif_get_x86_*_req()
// normalise them.
struct fake_backend::request {
  std::uint8_t operation = 0;
  std::uint8_t nr_segments = 0;
  std::uint16_t handle = 0;
  std::uint64_t id = 0;
  std::uint64_t sector = 0;
  std::array<std::array<std::uint32_t, 3>, BLKIF_MAX_SEGMENTS_PER_REQUEST> seg{};
  std::uint8_t discard_flag = 0;
  std::uint64_t nr_sectors = 0;
  std::uint8_t indirect_op = 0;
  std::uint16_t indirect_nr_segments = 0;
  std::array<std::uint32_t, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST> indirect_grefs{};
};

namespace {

template <class Req, class Discard, class Indirect>
void normalise(const void* slot, std::uint8_t operation, auto& out) {
  Req req;
  std::memcpy(&req, slot, sizeof req);
  out.operation = req.operation;
  out.id = req.id;
  if (operation == BLKIF_OP_DISCARD) {
    Discard d;
    std::memcpy(&d, slot, sizeof d);
    out.handle = d.handle;
    out.sector = d.sector_number;
    out.discard_flag = d.flag;
    out.nr_sectors = d.nr_sectors;
  } else if (operation == BLKIF_OP_INDIRECT) {
    Indirect ind;
    std::memcpy(&ind, slot, sizeof ind);
    out.handle = ind.handle;
    out.sector = ind.sector_number;
    out.indirect_op = ind.indirect_op;
    out.indirect_nr_segments = ind.nr_segments;
    for (std::size_t i = 0; i < out.indirect_grefs.size(); ++i) out.indirect_grefs[i] = ind.indirect_grefs[i];
  } else {
    out.handle = req.handle;
    out.sector = req.sector_number;
    out.nr_segments = req.nr_segments;
    for (std::size_t i = 0; i < out.seg.size(); ++i)
      out.seg[i] = {req.seg[i].gref, req.seg[i].first_sect, req.seg[i].last_sect};
  }
}

}  // namespace

struct fake_backend::ring {
  ring_queue* q = nullptr;
  bool x86_32 = false;
  blkif_back_ring_t br{};
  i386_blkif_back_ring_t br32{};
  bool awake = false;
  bool dead = false;
};

fake_backend::fake_backend(fake_platform& p, std::uint32_t self_domid, std::uint64_t sectors)
    : disk(sectors * 512), p_(p), self_(self_domid) {}

fake_backend::~fake_backend() = default;

void fake_backend::attach(ring_queue& q) {
  auto r = std::make_unique<ring>();
  r->q = &q;
  r->x86_32 = x86_32;
  const auto& refs = q.ring_pages.refs();
  std::byte* base = p_.map(refs.at(0), self_, true);
  if (!base) throw std::logic_error("fake: ring page not granted to the backend");
  for (std::size_t i = 1; i < refs.size(); ++i)
    if (p_.map(refs[i], self_, true) != base + i * 4096) throw std::logic_error("fake: ring pages not contiguous");
  if (x86_32)
    BACK_RING_INIT(&r->br32, reinterpret_cast<i386_blkif_sring_t*>(base), refs.size() * 4096);
  else
    BACK_RING_INIT(&r->br, reinterpret_cast<blkif_sring_t*>(base), refs.size() * 4096);
  rings_.push_back(std::move(r));
}

std::int16_t fake_backend::handle_rw(std::uint8_t op, std::uint64_t sector,
                                     const std::vector<std::array<std::uint32_t, 3>>& segs) {
  if (segs.empty()) {
    ++bad_requests;
    return BLKIF_RSP_ERROR;
  }
  const bool read = op == BLKIF_OP_READ;
  if (read && faults.stale_reads && snapshot_.empty()) snapshot_ = disk;
  std::uint64_t off = sector * 512;
  if (!read && faults.misdirect_writes) off += 8 * 512;
  for (const auto& [gref, first, last] : segs) {
    data_grefs_seen.insert(gref);
    std::byte* page = p_.map(gref, self_, read);
    if (!page || first > last || last > 7) {
      ++bad_requests;
      return BLKIF_RSP_ERROR;
    }
    if (faults.keep_mapped && p_.held.insert(gref).second) {
      kept_.push_back(gref);
      if (faults.let_go_beyond && kept_.size() > faults.let_go_beyond) {
        p_.held.erase(kept_.front());
        kept_.erase(kept_.begin());
      }
    }
    const std::size_t len = (last - first + 1) * 512;
    if (off + len > disk.size()) {
      ++bad_requests;
      return BLKIF_RSP_ERROR;
    }
    if (read) {
      if (!faults.skip_read_data) {
        const auto& src = faults.stale_reads ? snapshot_ : disk;
        std::memcpy(page + first * 512, src.data() + off, len);
        if (faults.corrupt_reads) page[first * 512 + 100] ^= std::byte{0x10};
      }
    } else if (!faults.drop_writes) {
      std::memcpy(disk.data() + off, page + first * 512, len);
    }
    off += len;
  }
  if (!read && faults.error_writes) return BLKIF_RSP_ERROR;
  return BLKIF_RSP_OKAY;
}

std::int16_t fake_backend::handle(const request& req, std::uint8_t& op) {
  std::vector<std::array<std::uint32_t, 3>> segs;
  switch (req.operation) {
    case BLKIF_OP_READ:
    case BLKIF_OP_WRITE:
    case BLKIF_OP_WRITE_BARRIER:
      if (req.nr_segments > BLKIF_MAX_SEGMENTS_PER_REQUEST) {
        ++bad_requests;
        return BLKIF_RSP_ERROR;
      }
      // An empty barrier orders and flushes; this disk has nothing to flush.
      if (req.operation == BLKIF_OP_WRITE_BARRIER && req.nr_segments == 0) return BLKIF_RSP_OKAY;
      segs.assign(req.seg.begin(), req.seg.begin() + req.nr_segments);
      max_segments_seen = std::max<std::uint64_t>(max_segments_seen, segs.size());
      return handle_rw(req.operation, req.sector, segs);
    case BLKIF_OP_INDIRECT: {
      ++indirect_seen;
      op = faults.echo_indirect_op ? BLKIF_OP_INDIRECT : req.indirect_op;
      const unsigned per_page = 4096 / sizeof(struct blkif_request_segment);
      const unsigned pages = (req.indirect_nr_segments + per_page - 1) / per_page;
      if (pages > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST ||
          (req.indirect_op != BLKIF_OP_READ && req.indirect_op != BLKIF_OP_WRITE)) {
        ++bad_requests;
        return BLKIF_RSP_ERROR;
      }
      for (unsigned i = 0; i < req.indirect_nr_segments; ++i) {
        const std::byte* page = p_.map(req.indirect_grefs[i / per_page], self_, false);
        if (!page) {
          ++bad_requests;
          return BLKIF_RSP_ERROR;
        }
        struct blkif_request_segment s;
        std::memcpy(&s, page + (i % per_page) * sizeof s, sizeof s);
        segs.push_back({s.gref, s.first_sect, s.last_sect});
      }
      max_segments_seen = std::max<std::uint64_t>(max_segments_seen, segs.size());
      return handle_rw(req.indirect_op, req.sector, segs);
    }
    case BLKIF_OP_DISCARD: {
      discards.push_back({req.sector, req.nr_sectors, req.discard_flag});
      if (faults.discard_unsupported) return BLKIF_RSP_EOPNOTSUPP;
      const std::uint64_t sectors = disk.size() / 512;
      if (req.nr_sectors == 0 || req.sector > sectors || req.nr_sectors > sectors - req.sector) {
        ++bad_requests;
        return BLKIF_RSP_ERROR;
      }
      if (!faults.discard_keeps_data) std::memset(disk.data() + req.sector * 512, 0, req.nr_sectors * 512);
      return BLKIF_RSP_OKAY;
    }
    case BLKIF_OP_FLUSH_DISKCACHE:
      return BLKIF_RSP_OKAY;
    default:
      return BLKIF_RSP_EOPNOTSUPP;
  }
}

template <class BackRing>
void fake_backend::serve(ring& r, BackRing& br, std::vector<std::uint32_t>& kick) {
  const std::uint32_t port = r.q->port.port();
  const RING_IDX prod = br.sring->req_prod;
  xen_rmb();
  if (prod - br.req_cons > RING_SIZE(&br)) {
    // What a real backend must do with a hostile index: stop this ring.
    ++bad_requests;
    r.dead = true;
    return;
  }
  struct answer {
    std::uint64_t id;
    std::uint8_t op;
    std::int16_t status;
  };
  std::vector<answer> answers;
  unsigned taken = 0;
  while (br.req_cons != prod && (faults.batch_limit == 0 || taken < faults.batch_limit)) {
    // XSA-155: one copy of the slot, then only the copy.
    std::array<std::byte, sizeof(*RING_GET_REQUEST(&br, 0))> slot;
    std::memcpy(slot.data(), RING_GET_REQUEST(&br, br.req_cons), slot.size());
    ++br.req_cons;
    ++taken;
    request req;
    const auto operation = static_cast<std::uint8_t>(slot[0]);
    if (r.x86_32)
      normalise<i386_request, i386_request_discard, i386_request_indirect>(slot.data(), operation, req);
    else
      normalise<blkif_request_t, blkif_request_discard_t, blkif_request_indirect_t>(slot.data(), operation, req);
    ++ops_seen[req.operation];
    ids_seen.push_back(req.id);
    handles_seen.push_back(req.handle);
    answer a{req.id, req.operation, BLKIF_RSP_OKAY};
    a.status = handle(req, a.op);
    if (faults.wrong_id) a.id += 1;
    answers.push_back(a);
  }
  if (faults.silent) {
    r.awake = false;
    return;
  }
  if (faults.reverse_order) std::reverse(answers.begin(), answers.end());
  if (faults.extra_response && !answers.empty()) answers.push_back({12345, 0, 0});
  for (const auto& a : answers) {
    auto* rsp = RING_GET_RESPONSE(&br, br.rsp_prod_pvt);
    std::memset(rsp, 0, sizeof *rsp);
    rsp->id = a.id;
    rsp->operation = a.op;
    rsp->status = a.status;
    ++br.rsp_prod_pvt;
  }
  int notify = 0;
  RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&br, notify);
  if (notify) kick.push_back(port);
  int more = 0;
  RING_FINAL_CHECK_FOR_REQUESTS(&br, more);
  r.awake = more != 0;
}

std::vector<std::uint32_t> fake_backend::service() {
  std::vector<std::uint32_t> kick;
  for (auto& rp : rings_) {
    auto& r = *rp;
    if (p_.kicked.erase(r.q->port.port())) r.awake = true;
    if (!r.awake || r.dead) continue;
    if (r.x86_32)
      serve(r, r.br32, kick);
    else
      serve(r, r.br, kick);
  }
  return kick;
}

}  // namespace xbd::sim::blkfront::testing
