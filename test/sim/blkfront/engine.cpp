#include "blkfront/engine.hpp"

#include <algorithm>
#include <cstdio>

#include "blkfront/stop.hpp"

namespace xbd::sim::blkfront {

namespace {
constexpr std::size_t page = 4096;
constexpr std::size_t max_protocol_messages = 16;
constexpr std::size_t max_mismatch_records = 16;
constexpr std::uint64_t max_mismatch_log_lines = 100;
bool diagnostics_on = true;
}  // namespace

void set_diagnostics(bool on) { diagnostics_on = on; }
bool diagnostics() { return diagnostics_on; }

std::uint64_t run_stats::total_mismatches() const {
  std::uint64_t n = 0;
  for (std::size_t i = 1; i < verdict_count; ++i) n += mismatches[i];
  return n;
}

void run_stats::protocol_error(std::string msg) {
  ++protocol_errors;
  if (diagnostics_on) std::fprintf(stderr, "blkfront-sim: protocol error: %s\n", msg.c_str());
  if (protocol_messages.size() < max_protocol_messages) protocol_messages.push_back(std::move(msg));
}

void run_stats::merge(const run_stats& o) {
  for (std::size_t i = 0; i < ops.size(); ++i) ops[i] += o.ops[i];
  barriers += o.barriers;
  bytes_read += o.bytes_read;
  bytes_written += o.bytes_written;
  bytes_discarded += o.bytes_discarded;
  requests += o.requests;
  indirect_requests += o.indirect_requests;
  notifications += o.notifications;
  events += o.events;
  io_errors += o.io_errors;
  eopnotsupp += o.eopnotsupp;
  protocol_errors += o.protocol_errors;
  for (const auto& m : o.protocol_messages)
    if (protocol_messages.size() < max_protocol_messages) protocol_messages.push_back(m);
  verified_blocks += o.verified_blocks;
  for (std::size_t i = 0; i < verdict_count; ++i) mismatches[i] += o.mismatches[i];
  for (const auto& m : o.first_mismatches)
    if (first_mismatches.size() < max_mismatch_records) first_mismatches.push_back(m);
  latency.merge(o.latency);
  read_latency.merge(o.read_latency);
  write_latency.merge(o.write_latency);
  discard_latency.merge(o.discard_latency);
  seconds += o.seconds;
  fresh_pages += o.fresh_pages;
  held_after_response += o.held_after_response;
  held_peak = std::max(held_peak, o.held_peak);
  holds_unknown = holds_unknown || o.holds_unknown;
}

std::string_view to_string(run_end e) {
  switch (e) {
    case run_end::completed:
      return "completed";
    case run_end::interrupted:
      return "interrupted";
    case run_end::protocol_error:
      return "protocol_error";
    case run_end::stalled:
      return "stalled";
    case run_end::backend_closed:
      return "backend_closed";
    case run_end::setup_failed:
      return "setup_failed";
    case run_end::aborted:
      return "aborted";
  }
  return "?";
}

// One ring request slot's private state (Linux's "shadow").
struct engine::request_ctx {
  bool busy = false;
  std::uint32_t seq = 0;
  unsigned io_slot = 0;
  std::uint8_t expect_op = 0;  // what the response must echo
  io_kind kind = io_kind::read;
  std::uint64_t sector = 0;
  unsigned pages = 0;
  std::uint32_t bytes = 0;
  shared_pages data;
  shared_pages indirect;
  std::vector<std::uint32_t> generations;  // per verify block, for writes
};

struct engine::io_state {
  bool busy = false;
  planned_io io;
  clock::time_point start;
  unsigned parts_left = 0;
};

struct engine::queue_state {
  ring_queue* q = nullptr;
  shared_pages same_page;  // --same-page: the one data page of the queue
  std::vector<request_ctx> ctx;
  std::vector<unsigned> free_ctx;
  std::vector<io_state> ios;
  std::vector<unsigned> free_ios;
  unsigned requests_in_flight = 0;
  std::uint32_t next_seq = 1;
  clock::time_point last_progress;
};

engine::engine(platform& p, std::vector<ring_queue*> queues, const engine_params& params, generation_tracker* tracker)
    : platform_(p), queues_(std::move(queues)), params_(params), tracker_(tracker) {}

engine::~engine() = default;

std::size_t engine::shared_data_pages() const {
  std::size_t n = 0;
  for (const auto& s : states_) {
    n += s->same_page.count();
    for (const auto& c : s->ctx) n += c.data.count() + c.indirect.count();
  }
  return n;
}

std::optional<std::size_t> engine::held_pages() const {
  std::size_t n = 0;
  for (const auto& s : states_) {
    std::vector<const shared_pages*> pages{&s->same_page};
    for (const auto& c : s->ctx) pages.insert(pages.end(), {&c.data, &c.indirect});
    for (const shared_pages* p : pages)
      for (std::uint32_t ref : p->refs()) {
        const auto h = platform_.backend_holds(ref);
        if (!h) return std::nullopt;
        n += *h ? 1 : 0;
      }
  }
  return n;
}

bool engine::prepare(std::string& err) {
  if (params_.bs == 0 || params_.bs % 512 != 0) {
    err = "block size must be a positive multiple of 512";
    return false;
  }
  if (params_.same_page && params_.verify) {
    err = "verify cannot work when every segment is the same page";
    return false;
  }
  if (params_.same_page && params_.fresh_grants) {
    err = "fresh grants per request and one page for every segment exclude each other";
    return false;
  }
  vblock_ = verify_block_size(params_.bs);
  pages_per_io_ = static_cast<unsigned>((params_.bs + page - 1) / page);
  const unsigned segs = params_.neg.segments_per_request();
  pages_per_request_ = std::min(pages_per_io_, segs);
  parts_per_io_ = (pages_per_io_ + segs - 1) / segs;
  use_indirect_ =
      params_.neg.indirect_segments > 0 && (pages_per_request_ > max_direct_segments || params_.neg.force_indirect);
  // blkif.h allows only READ and WRITE as an indirect_op, and a barrier
  // split in parts would order nothing: a barrier write is one direct request.
  if (params_.barriers && (parts_per_io_ > 1 || pages_per_request_ > max_direct_segments)) {
    err = "a barrier write is one direct request of at most " + std::to_string(max_direct_segments) +
          " pages, but --bs " + std::to_string(params_.bs) + " needs more";
    return false;
  }
  indirect_pages_per_request_ =
      use_indirect_ ? (pages_per_request_ + segments_per_indirect_page - 1) / segments_per_indirect_page : 0;

  effective_qd_ = params_.qd;
  for (ring_queue* q : queues_) {
    const unsigned ring = q->ring.size();
    if (ring < parts_per_io_) {
      err = "one I/O of " + std::to_string(params_.bs) + " bytes needs " + std::to_string(parts_per_io_) +
            " requests but the ring holds " + std::to_string(ring);
      return false;
    }
    effective_qd_ = std::min(effective_qd_, ring / parts_per_io_);
  }
  if (effective_qd_ == 0) {
    err = "queue depth must be at least 1";
    return false;
  }

  for (ring_queue* q : queues_) {
    auto st = std::make_unique<queue_state>();
    st->q = q;
    if (params_.same_page) {
      st->same_page = platform_.share(params_.backend_domid, 1, true);
      if (!st->same_page) {
        err = "sharing the data page failed: " + platform_.last_error();
        return false;
      }
    }
    const unsigned nctx = effective_qd_ * parts_per_io_;
    st->ctx.resize(nctx);
    for (unsigned i = 0; i < nctx; ++i) {
      auto& c = st->ctx[i];
      // Writable even for writes: one pool serves both directions, as with
      // Linux's persistent grants (blkif.h note 8). Fresh grants come with
      // each request instead (start_io).
      const bool pool = !params_.same_page && !params_.fresh_grants;
      if (pool) c.data = platform_.share(params_.backend_domid, pages_per_request_, true);
      if (pool && !c.data) {
        err = "sharing " + std::to_string(pages_per_request_) + " data page(s) failed: " + platform_.last_error();
        return false;
      }
      if (indirect_pages_per_request_ && !params_.fresh_grants) {
        // The backend only reads segment tables.
        c.indirect = platform_.share(params_.backend_domid, indirect_pages_per_request_, false);
        if (!c.indirect) {
          err = "sharing indirect page(s) failed: " + platform_.last_error();
          return false;
        }
      }
      if (params_.verify) c.generations.resize(pages_per_request_ * page / vblock_);
      st->free_ctx.push_back(nctx - 1 - i);
    }
    st->ios.resize(effective_qd_);
    for (unsigned i = 0; i < effective_qd_; ++i) st->free_ios.push_back(effective_qd_ - 1 - i);
    states_.push_back(std::move(st));
  }
  return true;
}

std::uint64_t engine::verify_index(std::uint64_t lba) const { return (lba * 512 - params_.region_offset) / vblock_; }

void engine::fill_request(queue_state& qs, request_ctx& c, std::uint8_t operation) {
  auto slot = qs.q->ring.next_request_slot();
  const std::uint64_t id = (std::uint64_t{c.seq} << 32) | static_cast<std::uint64_t>(&c - qs.ctx.data());
  if (operation == op::discard) {
    discard_request r;
    r.flag = params_.discard_secure ? discard_secure : 0;
    r.handle = params_.handle;
    r.id = id;
    r.sector_number = c.sector;
    r.nr_sectors = c.bytes / 512;
    params_.layout->put(slot, r);
    c.expect_op = operation;
    return;
  }
  if (operation == op::flush_diskcache) {
    direct_request r;
    r.operation = operation;
    r.handle = params_.handle;
    r.id = id;
    r.sector_number = 0;
    params_.layout->put(slot, r);
    c.expect_op = operation;
    return;
  }

  // Segment i covers the part of page i that carries data: whole pages
  // except a short tail when bs is not a page multiple. With --same-page,
  // "page i" is the queue's one page every time.
  auto seg_of = [&](unsigned i) {
    const std::uint32_t len = std::min<std::uint32_t>(page, c.bytes - i * page);
    const std::uint32_t gref = params_.same_page ? qs.same_page.ref(0) : c.data.ref(i);
    return segment{gref, 0, static_cast<std::uint8_t>(len / 512 - 1)};
  };
  if (use_indirect_ && operation != op::write_barrier) {
    for (unsigned i = 0; i < c.pages; ++i)
      put_indirect_segment(c.indirect.page(i / segments_per_indirect_page), i % segments_per_indirect_page, seg_of(i));
    indirect_request r;
    r.indirect_op = operation;
    r.nr_segments = static_cast<std::uint16_t>(c.pages);
    r.handle = params_.handle;
    r.id = id;
    r.sector_number = c.sector;
    const unsigned npages = (c.pages + segments_per_indirect_page - 1) / segments_per_indirect_page;
    r.indirect_grefs = std::span(c.indirect.refs()).first(npages);
    params_.layout->put(slot, r);
  } else {
    std::array<segment, max_direct_segments> segs{};
    for (unsigned i = 0; i < c.pages; ++i) segs[i] = seg_of(i);
    direct_request r;
    r.operation = operation;
    r.nr_segments = static_cast<std::uint8_t>(c.pages);
    r.handle = params_.handle;
    r.id = id;
    r.sector_number = c.sector;
    r.segs = std::span(segs).first(c.pages);
    params_.layout->put(slot, r);
  }
  // Linux's blkif_interrupt: an indirect request is answered with its
  // indirect_op.
  c.expect_op = operation;
}

bool engine::start_io(queue_state& qs, const planned_io& io, run_stats& st) {
  const unsigned slot = qs.free_ios.back();
  qs.free_ios.pop_back();
  auto& s = qs.ios[slot];
  s.busy = true;
  s.io = io;
  s.start = clock::now();
  const bool has_data = io.kind == io_kind::read || io.kind == io_kind::write;
  s.parts_left = has_data ? parts_per_io_ : 1;

  for (unsigned part = 0; part < s.parts_left; ++part) {
    const unsigned ci = qs.free_ctx.back();
    qs.free_ctx.pop_back();
    auto& c = qs.ctx[ci];
    c.busy = true;
    c.seq = qs.next_seq++;
    c.io_slot = slot;
    c.kind = io.kind;
    std::uint8_t operation = op::flush_diskcache;
    if (io.kind == io_kind::discard) {
      c.bytes = io.bytes;
      c.pages = 0;
      c.sector = io.sector;
      operation = op::discard;
    } else if (has_data) {
      const std::uint64_t first_byte = std::uint64_t{part} * pages_per_request_ * page;
      c.bytes = static_cast<std::uint32_t>(std::min<std::uint64_t>(pages_per_request_ * page, io.bytes - first_byte));
      c.pages = static_cast<unsigned>((c.bytes + page - 1) / page);
      c.sector = io.sector + first_byte / 512;
      operation = io.kind == io_kind::read ? op::read : io.barrier ? op::write_barrier : op::write;
      if (params_.fresh_grants && !share_fresh(c, use_indirect_ && operation != op::write_barrier, st)) return false;
      if (params_.verify) {
        auto buf = c.data.bytes().first(c.bytes);
        if (io.kind == io_kind::read) {
          poison(buf);
        } else {
          for (std::uint32_t off = 0, k = 0; off < c.bytes; off += vblock_, ++k) {
            const std::uint64_t lba = c.sector + off / 512;
            const std::uint32_t gen = tracker_->next_generation(verify_index(lba));
            c.generations[k] = gen;
            write_stamped_block(buf.subspan(off, vblock_), stamp{lba, gen, params_.run_id});
          }
        }
      }
    } else {
      c.bytes = 0;
      c.pages = 0;
      c.sector = 0;
    }
    fill_request(qs, c, operation);
    qs.q->ring.advance();
    ++qs.requests_in_flight;
    ++st.requests;
    if (use_indirect_ && has_data && !io.barrier) ++st.indirect_requests;
  }
  return true;
}

bool engine::submit(queue_state& qs, workload& w, run_stats& st) {
  bool pushed = false;
  const bool was_idle = qs.requests_in_flight == 0;
  while (!qs.free_ios.empty() && qs.free_ctx.size() >= parts_per_io_ && qs.q->ring.free_requests() >= parts_per_io_) {
    auto io = w.next();
    if (!io) break;
    if (!start_io(qs, *io, st)) {
      share_failed_ = true;  // the run ends; what was started stays unpublished
      return false;
    }
    pushed = true;
  }
  if (!pushed) return false;
  if (was_idle) qs.last_progress = clock::now();
  if (qs.q->ring.push_requests()) {
    ++st.notifications;
    if (!platform_.notify(qs.q->port.port()))
      st.protocol_error("notify on port " + std::to_string(qs.q->port.port()) + " failed: " + platform_.last_error());
  }
  return true;
}

// --fresh-grants: the request's pages, granted for it alone (Linux's
// blkfront without persistent grants grants them per request too). A ref
// handed out again was ended for good: the backend no longer holds it.
bool engine::share_fresh(request_ctx& c, bool indirect, run_stats& st) {
  c.data = platform_.share(params_.backend_domid, c.pages, true);
  if (indirect && c.data)
    c.indirect = platform_.share(params_.backend_domid,
                                 (c.pages + segments_per_indirect_page - 1) / segments_per_indirect_page, false);
  if (!c.data || (indirect && !c.indirect)) {
    st.protocol_error("sharing the pages of a request failed: " + platform_.last_error() + " (the backend holds " +
                      std::to_string(held_.size()) + " of the pages we ended access to)");
    return false;
  }
  st.fresh_pages += c.data.count() + c.indirect.count();
  for (const auto* p : {&c.data, &c.indirect})
    for (std::uint32_t ref : p->refs()) held_.erase(ref);
  return true;
}

// --fresh-grants, once the request is answered: access to its pages ends.
// A backend must have unmapped them before answering (blkif.h; Linux's
// blkfront checks it since XSA-396 and gives up on the device). With
// persistent grants it may keep them: gntshr then defers the end until it
// lets go, and we count them. False: a protocol error, recorded.
bool engine::end_fresh(queue_state& qs, request_ctx& c, run_stats& st) {
  bool ok = true;
  for (const auto* p : {&c.data, &c.indirect})
    for (std::uint32_t ref : p->refs()) {
      const std::optional<bool> held = platform_.backend_holds(ref);
      if (!held) st.holds_unknown = true;
      if (!held || !*held) continue;
      if (params_.persistent) {
        ++st.held_after_response;
        held_.insert(ref);
        continue;
      }
      if (ok)
        st.protocol_error(
            "queue " + std::to_string(qs.q->index) + ": the backend still holds grant " + std::to_string(ref) +
            " after answering request " +
            std::to_string((std::uint64_t{c.seq} << 32) | static_cast<std::uint64_t>(&c - qs.ctx.data())) +
            ": ending our access fails (backend has not unmapped grant)");
      ok = false;
    }
  c.data.reset();
  c.indirect.reset();
  prune_held(st, false);
  return ok;
}

// Forgets the ended refs the backend let go of (about every 10 ms, or
// `now`); the count left is how many of our pages it still holds.
void engine::prune_held(run_stats& st, bool now) {
  const auto t = clock::now();
  if (held_.empty() || (!now && t - last_prune_ < std::chrono::milliseconds(10))) return;
  last_prune_ = t;
  std::erase_if(held_, [&](std::uint32_t ref) { return platform_.backend_holds(ref) != true; });
  st.held_peak = std::max<std::uint64_t>(st.held_peak, held_.size());
}

bool engine::complete_request(queue_state& qs, request_ctx& c, std::int16_t status, workload& w, run_stats& st) {
  const bool ok = status == status::okay;
  if (status == status::error)
    ++st.io_errors;
  else if (status == status::eopnotsupp)
    ++st.eopnotsupp;

  if (params_.verify && c.kind == io_kind::discard) {
    for (std::uint32_t off = 0; off < c.bytes; off += vblock_)
      tracker_->discard_completed(verify_index(c.sector + off / 512), ok);
  } else if (params_.verify && c.kind != io_kind::flush) {
    auto buf = c.data.bytes().first(c.bytes);
    for (std::uint32_t off = 0, k = 0; off < c.bytes; off += vblock_, ++k) {
      const std::uint64_t lba = c.sector + off / 512;
      const std::uint64_t vb = verify_index(lba);
      if (c.kind == io_kind::write) {
        tracker_->write_completed(vb, c.generations[k], ok);
        continue;
      }
      if (!ok) continue;
      const expectation e = tracker_->expect(vb);
      const check_result r =
          check_block(buf.subspan(off, vblock_), lba, params_.run_id, e, params_.policy, params_.discards);
      ++st.verified_blocks;
      if (r.v == verdict::ok) continue;
      ++st.mismatches[static_cast<std::size_t>(r.v)];
      const std::uint64_t total = st.total_mismatches();
      if (diagnostics_on && total <= max_mismatch_log_lines)
        std::fprintf(stderr,
                     "blkfront-sim: mismatch (%s) queue %u lba %llu: expected generation %u, "
                     "found lba %llu generation %llu run %016llx%s\n",
                     std::string(to_string(r.v)).c_str(), qs.q->index, static_cast<unsigned long long>(lba),
                     e.committed, static_cast<unsigned long long>(r.found_lba),
                     static_cast<unsigned long long>(r.found_generation),
                     static_cast<unsigned long long>(r.found_run_id),
                     e.discarded         ? " (after a discard)"
                     : e.maybe_discarded ? " (after a failed discard)"
                     : e.maybe.empty()   ? ""
                                         : " (after a failed write)");
      if (st.first_mismatches.size() < max_mismatch_records)
        st.first_mismatches.push_back({qs.q->index, lba, r.v, e.committed, r});
    }
  }

  if (params_.fresh_grants && (c.data || c.indirect) && !end_fresh(qs, c, st)) return false;
  auto& s = qs.ios[c.io_slot];
  c.busy = false;
  qs.free_ctx.push_back(static_cast<unsigned>(&c - qs.ctx.data()));
  --qs.requests_in_flight;
  if (--s.parts_left != 0) return true;

  const auto ns =
      static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() - s.start).count());
  st.latency.record(ns);
  ++st.ops[static_cast<std::size_t>(s.io.kind)];
  if (s.io.kind == io_kind::read) {
    st.read_latency.record(ns);
    if (ok) st.bytes_read += s.io.bytes;
  } else if (s.io.kind == io_kind::write) {
    st.write_latency.record(ns);
    if (ok) st.bytes_written += s.io.bytes;
    if (s.io.barrier) ++st.barriers;
  } else if (s.io.kind == io_kind::discard) {
    st.discard_latency.record(ns);
    if (ok) st.bytes_discarded += s.io.bytes;
  }
  w.complete(s.io);
  s.busy = false;
  qs.free_ios.push_back(c.io_slot);
  return true;
}

// Linux's blkif_interrupt checks, each of which means the backend can no
// longer be trusted with this ring: too many responses, an id we never
// issued or that is not outstanding, an operation that is not the one we
// sent, a status outside the three defined ones.
bool engine::process(queue_state& qs, workload& w, run_stats& st) {
  auto& ring = qs.q->ring;
  const std::string where = "queue " + std::to_string(qs.q->index) + ": ";
  for (;;) {
    const std::uint32_t n = ring.unconsumed_responses();
    const std::uint32_t outstanding = ring.req_prod_pvt() - ring.rsp_cons();
    if (n > outstanding) {
      st.protocol_error(where + "rsp_prod " + std::to_string(ring.shared_rsp_prod()) + " is " + std::to_string(n) +
                        " past rsp_cons with only " + std::to_string(outstanding) + " requests outstanding");
      return false;
    }
    for (std::uint32_t i = 0; i < n; ++i) {
      const response r = params_.layout->get_response(ring.next_response_slot());
      ring.consume();
      qs.last_progress = clock::now();
      const std::uint64_t idx = r.id & 0xffffffffu;
      const auto seq = static_cast<std::uint32_t>(r.id >> 32);
      if (idx >= qs.ctx.size() || !qs.ctx[idx].busy || qs.ctx[idx].seq != seq) {
        st.protocol_error(where + "response id " + std::to_string(r.id) + " matches no outstanding request");
        return false;
      }
      auto& c = qs.ctx[idx];
      if (r.operation != c.expect_op) {
        st.protocol_error(where + "response to id " + std::to_string(r.id) + " has operation " +
                          std::to_string(r.operation) + " instead of " + std::to_string(c.expect_op));
        return false;
      }
      if (r.status != status::okay && r.status != status::error && r.status != status::eopnotsupp) {
        st.protocol_error(where + "response to id " + std::to_string(r.id) + " has status " + std::to_string(r.status));
        return false;
      }
      if (!complete_request(qs, c, r.status, w, st)) return false;
    }
    if (!ring.final_check_for_responses()) return true;
  }
}

// What a stall report shows of a queue: our view of the ring, what is
// outstanding, and the platform's view of the event channel (under the
// simulator, its delivery bits and the handle's wake-up count).
std::string engine::describe(queue_state& qs) {
  auto& ring = qs.q->ring;
  std::string out = "queue " + std::to_string(qs.q->index) + ": req_prod_pvt " + std::to_string(ring.req_prod_pvt()) +
                    " req_prod " + std::to_string(ring.shared_req_prod()) + " req_event " +
                    std::to_string(ring.shared_req_event()) + " rsp_prod " + std::to_string(ring.shared_rsp_prod()) +
                    " rsp_cons " + std::to_string(ring.rsp_cons()) + " rsp_event " +
                    std::to_string(ring.shared_rsp_event()) + "; " + std::to_string(qs.requests_in_flight) +
                    " in flight, ids (slot:seq)";
  for (std::size_t i = 0; i < qs.ctx.size(); ++i)
    if (qs.ctx[i].busy) out += " " + std::to_string(i) + ":" + std::to_string(qs.ctx[i].seq);
  out += "; port " + std::to_string(qs.q->port.port());
  if (std::string p = platform_.describe_port(qs.q->port.port()); !p.empty()) out += ": " + p;
  return out;
}

std::vector<std::string> engine::describe_queues() {
  std::vector<std::string> out;
  for (auto& q : states_) out.push_back(describe(*q));
  return out;
}

run_end engine::run(workload& w, std::optional<clock::time_point> deadline, run_stats& st, const watch_fn& on_watch) {
  const auto start = clock::now();
  for (auto& s : states_) s->last_progress = start;
  bool stopping = false;
  // After a signal, what is in flight gets until here to be answered.
  std::optional<clock::time_point> drain_until;
  run_end end = run_end::completed;
  auto finish = [&](run_end e) {
    st.seconds = std::chrono::duration<double>(clock::now() - start).count();
    return e;
  };

  for (;;) {
    auto now = clock::now();
    if (deadline && now >= *deadline) w.stop();
    if (!stopping && platform_.stop_requested()) {
      // A stop asked for in an earlier wait (the script's, say).
      stopping = true;
      end = run_end::interrupted;
      w.stop();
    }
    if (stopping && !drain_until) drain_until = platform_.stop_requested().value_or(now) + stop_bound::drain;
    if (!stopping)
      for (auto& s : states_) submit(*s, w, st);
    if (share_failed_) return finish(run_end::protocol_error);

    unsigned in_flight = 0;
    for (auto& s : states_) in_flight += s->requests_in_flight;
    // With nothing outstanding every resource is free, so a submit that
    // issued nothing means the workload has nothing left to give.
    if (in_flight == 0) return finish(end);
    if (drain_until && now >= *drain_until) {
      // Not the backend's fault: we stopped waiting. The close that follows
      // tells it to let go of the rest.
      if (diagnostics_on)
        std::fprintf(stderr, "blkfront-sim: stopping: %u request(s) still in flight after %lld ms, abandoned\n",
                     in_flight, static_cast<long long>(stop_bound::drain.count()));
      return finish(end);
    }

    auto timeout = std::chrono::milliseconds(100);
    if (deadline && !stopping && *deadline > now)
      timeout = std::min(timeout, std::chrono::ceil<std::chrono::milliseconds>(*deadline - now));
    if (drain_until) timeout = std::min(timeout, std::chrono::ceil<std::chrono::milliseconds>(*drain_until - now));
    const wait_result r = platform_.wait(timeout);
    st.events += r.ports.size();
    if (r.wake) return finish(run_end::aborted);
    if (r.signal && !stopping) {
      stopping = true;
      end = run_end::interrupted;
      w.stop();
    }
    if (r.xenstore && on_watch && on_watch()) return finish(run_end::backend_closed);
    for (std::uint32_t port : r.ports)
      for (auto& s : states_)
        if (s->q->port.port() == port && !process(*s, w, st)) return finish(run_end::protocol_error);

    now = clock::now();
    for (auto& s : states_) {
      if (s->requests_in_flight && now - s->last_progress > params_.response_timeout) {
        st.protocol_error("queue " + std::to_string(s->q->index) + ": " + std::to_string(s->requests_in_flight) +
                          " request(s) unanswered for " + std::to_string(params_.response_timeout.count()) + " ms");
        if (diagnostics_on)
          for (auto& q : states_) std::fprintf(stderr, "blkfront-sim: stalled: %s\n", describe(*q).c_str());
        return finish(run_end::stalled);
      }
    }
  }
}

}  // namespace xbd::sim::blkfront
