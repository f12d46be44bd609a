#include "blkback/data/journal.hpp"

#include "blkback/data/fault.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstring>

namespace xbd::blkback {

using asio_xen::errc;
using asio_xen::error_code;

namespace {

const asio_xen::xen_call_category journal_call{"journal"};

constexpr char file_magic[8] = {'X', 'B', 'D', 'J', 'R', 'N', 'L', '1'};
// 2: the entries' and records' checks by journal_hash2 (1: journal_hash,
// still read: a restart after an upgrade finds the old daemon's journal).
constexpr std::uint32_t layout_version = 2;
constexpr std::size_t page = 4096;

std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }

template <class T>
std::span<const std::byte> bytes_of(const T& v) {
  return std::as_bytes(std::span<const T, 1>(&v, 1));
}

// The whole file's description; `check` covers everything before it.
struct file_header {
  char magic[8];
  std::uint32_t version;
  std::uint32_t queues;
  std::uint32_t ring_size;
  std::uint32_t max_segments;
  std::uint32_t entry_bytes;  // this build's layout: a journal of another build is not read
  std::uint32_t request_bytes;
  std::uint64_t identity;
  std::uint64_t region_bytes;
  std::uint64_t check;
};

std::uint64_t header_check(const file_header& h) {
  return journal_hash(std::as_bytes(std::span(reinterpret_cast<const std::byte*>(&h), offsetof(file_header, check))));
}

std::uint64_t identity_hash(const journal_identity& id) {
  std::uint64_t h = journal_hash(bytes_of(id.frontend_domid));
  h = journal_hash(bytes_of(id.devid), h);
  h = journal_hash(bytes_of(id.layout), h);
  h = journal_hash(bytes_of(id.ring_order), h);
  for (std::size_t q = 0; q < id.ring_refs.size(); ++q) {
    h = journal_hash(std::as_bytes(std::span(id.ring_refs[q])), h + q);
    if (q < id.ports.size()) h = journal_hash(bytes_of(id.ports[q]), h);
  }
  return h;
}

template <class T>
void store_release(T& field, T value) {
  std::atomic_ref<T>(field).store(value, std::memory_order_release);
}
template <class T>
T load_acquire(T& field) {
  return std::atomic_ref<T>(field).load(std::memory_order_acquire);
}

}  // namespace

struct ring_journal::ring_header {
  std::uint32_t req_cons;
  std::uint32_t rsp_prod_pvt;
  std::uint32_t started;
  std::uint32_t reserved[13];
};

struct ring_journal::record {
  std::uint64_t id;
  std::uint64_t entry_state;  // the entry's state word when it was answered
  std::uint32_t index;        // response index
  std::uint32_t entry;
  std::int16_t status;
  std::uint8_t op;
  std::uint8_t pad;
  std::uint32_t check;
};

struct ring_journal::entry {
  std::uint64_t state;  // 0 free; (seq << 1) | 1 in flight
  std::uint64_t check;  // ring_index, state and request
  std::uint64_t descriptors_check;
  std::uint32_t ring_index;
  std::uint32_t descriptors;  // saved descriptors, 0 until fetched
  wire_request request;
};

namespace {

constexpr std::size_t entry_stride = (sizeof(ring_journal::entry) + 63) / 64 * 64;

std::size_t region_bytes(std::uint32_t ring_size, std::uint32_t max_segments) {
  return round_up(64 + std::size_t{ring_size} * 32 + std::size_t{ring_size} * entry_stride +
                      std::size_t{ring_size} * max_segments * sizeof(blkif_request_segment),
                  page);
}

}  // namespace

namespace {

// What recovery reads of a request, which layout 2's check covers: a
// direct request's header and its segments (validate() reads nothing else
// of it: nr_segments, within the bytes, decides how many), anything else
// whole.
std::size_t checked_bytes(const wire_request& w) {
  switch (w.operation) {
    case BLKIF_OP_READ:
    case BLKIF_OP_WRITE:
    case BLKIF_OP_WRITE_BARRIER:
    case BLKIF_OP_FLUSH_DISKCACHE:
      return offsetof(wire_request, seg) +
             sizeof(blkif_request_segment) * std::min<std::size_t>(w.nr_segments, w.seg.size());
    default:
      return sizeof(wire_request);
  }
}

}  // namespace

// Each check covers the fields it guards, in the file's layout.
std::uint64_t ring_journal::entry_check(const entry& e, std::uint64_t state) const {
  if (layout_ == 1) {
    std::uint64_t h = journal_hash(bytes_of(e.ring_index));
    h = journal_hash(bytes_of(state), h);
    return journal_hash(bytes_of(e.request), h);
  }
  return journal_hash2(bytes_of(e.request).first(checked_bytes(e.request)),
                       journal_fold(state ^ 0x8EBC6AF09C88C6E3ull, e.ring_index + 1));
}

std::uint32_t ring_journal::record_check(const record& r) const {
  if (layout_ == 1) {
    std::uint64_t h = journal_hash(bytes_of(r.id));
    h = journal_hash(bytes_of(r.entry_state), h);
    h = journal_hash(bytes_of(r.index), h);
    h = journal_hash(bytes_of(r.entry), h);
    h = journal_hash(bytes_of(r.status), h);
    return static_cast<std::uint32_t>(journal_hash(bytes_of(r.op), h));
  }
  const std::uint64_t small = (std::uint64_t{r.index} << 32) ^ (std::uint64_t{r.entry} << 24) ^
                              (std::uint64_t{static_cast<std::uint16_t>(r.status)} << 8) ^ r.op;
  const std::uint64_t h = journal_fold(r.id ^ 0x589965CC75374CC3ull, r.entry_state ^ 0x1D8E4E27C47D124Full);
  return static_cast<std::uint32_t>(journal_fold(h ^ small, 0xA0761D6478BD642Full) | 1);
}

std::uint64_t ring_journal::descriptors_check(std::span<const blkif_request_segment> d, std::uint64_t state) const {
  return layout_ == 1 ? journal_hash(std::as_bytes(d), state) : journal_hash2(std::as_bytes(d), state);
}

static_assert(sizeof(wire_request) % 8 == 0 && offsetof(wire_request, seg) % 8 == 0 &&
              sizeof(blkif_request_segment) == 8);  // journal_hash2's words
static_assert(sizeof(ring_journal::ring_header) == 64);
static_assert(sizeof(ring_journal::record) == 32);

ring_journal::ring_header* ring_journal::header() const { return reinterpret_cast<ring_header*>(base_); }
ring_journal::record* ring_journal::records() const { return reinterpret_cast<record*>(base_ + 64); }
ring_journal::entry* ring_journal::entry_at(std::uint32_t i) const {
  return reinterpret_cast<entry*>(base_ + 64 + std::size_t{size_} * 32 + std::size_t{i} * entry_stride);
}
blkif_request_segment* ring_journal::descriptors_of(std::uint32_t i) const {
  return reinterpret_cast<blkif_request_segment*>(base_ + 64 + std::size_t{size_} * 32 +
                                                  std::size_t{size_} * entry_stride) +
         std::size_t{i} * max_segments_;
}

void ring_journal::start(std::uint32_t req_cons, std::uint32_t rsp_prod_pvt) {
  ring_header& h = *header();
  store_release(h.req_cons, req_cons);
  store_release(h.rsp_prod_pvt, rsp_prod_pvt);
  store_release(h.started, std::uint32_t{1});
  free_.clear();
  for (std::uint32_t i = size_; i > 0; --i) free_.push_back(i - 1);
}

std::optional<std::uint32_t> ring_journal::take(std::uint32_t ring_index, const wire_request& w) {
  if (free_.empty()) return std::nullopt;
  const std::uint32_t i = free_.back();
  free_.pop_back();
  entry& e = *entry_at(i);
  const std::uint64_t state = (++seq_ << 1) | 1;
  e.ring_index = ring_index;
  e.descriptors = 0;
  e.request = w;
  e.check = entry_check(e, state);
  fault::at(fault::point::journal_take);
  store_release(e.state, state);
  store_release(header()->req_cons, ring_index + 1);
  return i;
}

void ring_journal::save_descriptors(std::uint32_t i, std::span<const blkif_request_segment> d) {
  if (d.size() > max_segments_) return;  // never: validation bounds them by the same limit
  entry& e = *entry_at(i);
  std::memcpy(descriptors_of(i), d.data(), d.size_bytes());
  e.descriptors_check = descriptors_check(d, e.state);
  store_release(e.descriptors, static_cast<std::uint32_t>(d.size()));
}

void ring_journal::record_response(std::uint32_t index, std::uint32_t i, std::uint64_t id, std::uint8_t op,
                                   std::int16_t status) {
  record& r = records()[index % size_];
  r = record{id, entry_at(i)->state, index, i, status, op, 0, 0};
  r.check = record_check(r);
}

void ring_journal::responded(std::uint32_t index, std::uint32_t i) {
  store_release(header()->rsp_prod_pvt, index + 1);
  fault::at(fault::point::journal_respond);
  store_release(entry_at(i)->state, std::uint64_t{0});
  free_.push_back(i);
}

asio_xen::result<recovered_ring> ring_journal::recover(std::uint32_t shared_rsp_prod, std::uint32_t shared_req_prod) {
  const error_code corrupt = make_error_code(errc::journal_corrupt);
  problem_.clear();
  ring_header& h = *header();
  recovered_ring out;
  if (load_acquire(h.started) == 0) {
    // Killed before the ring began: nothing was taken.
    start(shared_rsp_prod, shared_rsp_prod);
    out.req_cons = out.rsp_prod_pvt = shared_rsp_prod;
    return out;
  }
  const std::uint32_t c = load_acquire(h.req_cons), p = load_acquire(h.rsp_prod_pvt);
  auto fail = [&](std::string why) {
    problem_ = std::move(why) + " (req_cons " + std::to_string(c) + ", rsp_prod_pvt " + std::to_string(p) +
               "; the ring's rsp_prod " + std::to_string(shared_rsp_prod) + ", req_prod " +
               std::to_string(shared_req_prod) + ")";
    return corrupt;
  };
  if (c - p > size_ || p - shared_rsp_prod > size_ || shared_req_prod - c > size_) return fail("indices out of range");
  // The response just below rsp_prod_pvt: its entry may not have been freed.
  if (p != shared_rsp_prod || c != p) {
    const record& r = records()[(p - 1) % size_];
    if (r.index == p - 1 && r.entry < size_ && r.check == record_check(r) &&
        load_acquire(entry_at(r.entry)->state) == r.entry_state) {
      store_release(entry_at(r.entry)->state, std::uint64_t{0});
      ++out.answered_unfreed;
    }
  }
  free_.clear();
  std::uint64_t max_seq = 0;
  for (std::uint32_t i = size_; i > 0; --i) {
    entry& e = *entry_at(i - 1);
    const std::uint64_t state = load_acquire(e.state);
    if ((state & 1) == 0 || e.ring_index == c) {  // free, or marked but never taken
      if (state != 0) store_release(e.state, std::uint64_t{0});
      free_.push_back(i - 1);
      continue;
    }
    if (e.check != entry_check(e, state)) return fail("entry " + std::to_string(i - 1) + " fails its check");
    // A request can stay in flight while many later ones are answered, so
    // its index is only known to come before req_cons.
    if (c - e.ring_index > 0x80000000u)
      return fail("entry " + std::to_string(i - 1) + " has ring index " + std::to_string(e.ring_index));
    recovered_request rq{i - 1, e.ring_index, e.request, {}};
    if (const std::uint32_t n = load_acquire(e.descriptors); n > 0) {
      std::span<const blkif_request_segment> d(descriptors_of(i - 1), n);
      if (n > max_segments_ || e.descriptors_check != descriptors_check(d, state))
        return fail("the descriptors of entry " + std::to_string(i - 1) + " fail their check");
      rq.descriptors.assign(d.begin(), d.end());
    }
    max_seq = std::max(max_seq, state >> 1);
    out.requests.push_back(std::move(rq));
  }
  if (out.requests.size() != c - p)
    return fail(std::to_string(out.requests.size()) + " request(s) in flight where the indices say " +
                std::to_string(c - p));
  // Oldest first; no ring index twice.
  std::sort(out.requests.begin(), out.requests.end(),
            [c](const auto& a, const auto& b) { return c - a.ring_index > c - b.ring_index; });
  for (std::size_t k = 1; k < out.requests.size(); ++k)
    if (out.requests[k].ring_index == out.requests[k - 1].ring_index)
      return fail("ring index " + std::to_string(out.requests[k].ring_index) + " in flight twice");
  for (std::uint32_t k = shared_rsp_prod; k != p; ++k) {
    const record& r = records()[k % size_];
    if (r.index != k || r.check != record_check(r)) return fail("response " + std::to_string(k) + " fails its check");
    out.responses.push_back({k, r.id, r.op, r.status});
  }
  // New entries must never take a state an answered one had: the record
  // below rsp_prod_pvt would then match a request still in flight.
  for (std::uint32_t k = 0; k < size_; ++k) max_seq = std::max(max_seq, records()[k].entry_state >> 1);
  seq_ = max_seq;
  out.req_cons = c;
  out.rsp_prod_pvt = p;
  return out;
}

namespace {

// An earlier process's header: this build's layout and this connection's,
// or the journal is refused. Its own max_segments decides its layout.
error_code check_existing(int fd, file_header& want) {
  file_header have{};
  if (::pread(fd, &have, sizeof have, 0) != static_cast<ssize_t>(sizeof have) || have.check != header_check(have) ||
      std::memcmp(have.magic, file_magic, sizeof file_magic) != 0 || have.version < 1 ||
      have.version > layout_version || have.entry_bytes != want.entry_bytes || have.request_bytes != want.request_bytes)
    return make_error_code(errc::journal_corrupt);
  if (have.identity != want.identity || have.queues != want.queues || have.ring_size != want.ring_size)
    return make_error_code(errc::journal_stale);
  want.max_segments = have.max_segments;
  want.version = have.version;
  if (have.region_bytes != region_bytes(want.ring_size, want.max_segments))
    return make_error_code(errc::journal_corrupt);
  return {};
}

}  // namespace

asio_xen::result<vbd_journal> vbd_journal::map(const std::filesystem::path& file, const journal_identity& id,
                                               std::uint32_t ring_size, std::uint32_t max_segments, bool fresh,
                                               std::uint32_t layout) {
  const std::size_t queues = id.ring_refs.size();
  if (queues == 0 || ring_size == 0) return error_code(EINVAL, boost::system::generic_category());
  const int fd = ::open(file.c_str(), O_RDWR | O_CLOEXEC | (fresh ? O_CREAT | O_TRUNC : 0), 0600);
  if (fd < 0) return asio_xen::xen_error(journal_call);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    error_code ec = asio_xen::xen_error(journal_call);
    ::close(fd);
    return ec;
  }
  file_header want{};
  std::memcpy(want.magic, file_magic, sizeof want.magic);
  want.version = layout != 0 ? layout : layout_version;
  want.queues = static_cast<std::uint32_t>(queues);
  want.ring_size = ring_size;
  want.max_segments = max_segments;
  want.entry_bytes = sizeof(ring_journal::entry);
  want.request_bytes = sizeof(wire_request);
  want.identity = identity_hash(id);
  error_code ec;
  if (!fresh) ec = check_existing(fd, want);
  want.region_bytes = region_bytes(ring_size, want.max_segments);
  want.check = header_check(want);
  const std::size_t bytes = page + queues * want.region_bytes;
  if (!ec && fresh && ::ftruncate(fd, static_cast<off_t>(bytes)) != 0) ec = asio_xen::xen_error(journal_call);
  if (!ec && !fresh && static_cast<std::size_t>(st.st_size) != bytes) ec = make_error_code(errc::journal_corrupt);
  void* mem = ec ? MAP_FAILED : ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (!ec && mem == MAP_FAILED) ec = asio_xen::xen_error(journal_call);
  ::close(fd);
  if (ec) return ec;
  vbd_journal j;
  j.mem_ = mem;
  j.bytes_ = bytes;
  if (fresh) *static_cast<file_header*>(mem) = want;
  j.rings_.resize(queues);
  for (std::size_t q = 0; q < queues; ++q) {
    ring_journal& r = j.rings_[q];
    r.base_ = static_cast<std::byte*>(mem) + page + q * want.region_bytes;
    r.size_ = ring_size;
    r.max_segments_ = want.max_segments;
    r.layout_ = want.version;
  }
  return j;
}

asio_xen::result<vbd_journal> vbd_journal::create(const std::filesystem::path& file, const journal_identity& id,
                                                  std::uint32_t ring_size, std::uint32_t max_segments,
                                                  std::uint32_t layout) {
  if (layout > layout_version) return error_code(EINVAL, boost::system::generic_category());
  return map(file, id, ring_size, max_segments, true, layout);
}

asio_xen::result<vbd_journal> vbd_journal::open(const std::filesystem::path& file, const journal_identity& id,
                                                std::uint32_t ring_size, std::uint32_t max_segments) {
  return map(file, id, ring_size, max_segments, false, 0);
}

void vbd_journal::remove(const std::filesystem::path& file) {
  std::error_code ignored;
  std::filesystem::remove(file, ignored);
}

vbd_journal::vbd_journal(vbd_journal&& o) noexcept
    : mem_(std::exchange(o.mem_, nullptr)), bytes_(o.bytes_), rings_(std::move(o.rings_)) {}

vbd_journal& vbd_journal::operator=(vbd_journal&& o) noexcept {
  if (this != &o) {
    if (mem_) ::munmap(mem_, bytes_);
    mem_ = std::exchange(o.mem_, nullptr);
    bytes_ = o.bytes_;
    rings_ = std::move(o.rings_);
  }
  return *this;
}

vbd_journal::~vbd_journal() {
  if (mem_) ::munmap(mem_, bytes_);
}

}  // namespace xbd::blkback
