// The in-flight journal: what each ring has taken and not yet answered, in
// a file that outlives the process (tmpfs, mapped shared), so that a daemon
// killed mid-I/O restarts without losing or repeating a request.
//
// Per ring it holds the private consumer index (req_cons), the response
// index (rsp_prod_pvt), one entry per request in flight (the decoded copy
// taken from the ring and, for an indirect request, its segment
// descriptors), and one record per response written into the ring. Updates
// are plain stores into the mapping, no system call; their order makes any
// cut recoverable, because a killed process leaves exactly the stores it
// made:
//   take:     entry body and check, then its state word (in flight, seq),
//             then req_cons
//   respond:  record k (id, op, status, which entry), then ring slot k, then
//             rsp_prod_pvt = k + 1, then the entry is freed
// An entry at req_cons was never taken; an entry named by the record just
// below rsp_prod_pvt was answered. After that reconciliation exactly
// req_cons - rsp_prod_pvt entries are in flight (each at its own ring index
// before req_cons; an old request may stay in flight while later ones are
// answered), and anything else (a bad check, a count that does not add up,
// indices out of range) is corruption: the vbd is closed, never guessed at.
// docs/architecture.md ("Crash recovery").
#pragma once

#include "asio_xen/error.hpp"
#include "asio_xen/xen.hpp"
#include "blkback/ring/abi.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace xbd::blkback {

// What a journal belongs to: a journal of another connection is stale.
struct journal_identity {
  unsigned frontend_domid = 0;
  unsigned devid = 0;
  abi layout = native_abi;
  unsigned ring_order = 0;
  std::vector<std::vector<grant_ref_t>> ring_refs;  // per queue
  std::vector<std::uint32_t> ports;                 // per queue: the frontend's event channel
};

// One request that was in flight when the daemon died.
struct recovered_request {
  std::uint32_t entry = 0;
  std::uint32_t ring_index = 0;
  wire_request request;
  std::vector<blkif_request_segment> descriptors;  // indirect: empty if not yet fetched
};

// A response written into the ring that the guest may not have seen.
struct recovered_response {
  std::uint32_t index = 0;
  std::uint64_t id = 0;
  std::uint8_t op = 0;
  std::int16_t status = 0;
};

struct recovered_ring {
  std::uint32_t req_cons = 0;
  std::uint32_t rsp_prod_pvt = 0;
  std::vector<recovered_request> requests;    // in ring order
  std::vector<recovered_response> responses;  // in response order, from the pushed index on
  std::uint32_t answered_unfreed = 0;         // entries answered just before the cut
};

// One ring's part of the journal, used on the ring's thread.
class ring_journal {
 public:
  // Starts the ring's part afresh at these indices.
  void start(std::uint32_t req_cons, std::uint32_t rsp_prod_pvt);
  // The request at `ring_index` was taken: its entry, or none if the
  // journal has no free entry (a broken ring; the request is then not
  // journaled and recovery will call the journal inconsistent).
  std::optional<std::uint32_t> take(std::uint32_t ring_index, const wire_request& w);
  // An indirect request's descriptors, once fetched and before any I/O.
  void save_descriptors(std::uint32_t entry, std::span<const blkif_request_segment> d);
  // Before the response is written into ring slot `index`.
  void record_response(std::uint32_t index, std::uint32_t entry, std::uint64_t id, std::uint8_t op,
                       std::int16_t status);
  // After it is written: rsp_prod_pvt = index + 1, and the entry is free.
  void responded(std::uint32_t index, std::uint32_t entry);

  // What the previous process left, checked against the ring's shared
  // indices (rsp_prod as pushed, req_prod as published). The entries of
  // requests still in flight stay taken: the ring answers them through
  // responded() as usual.
  asio_xen::result<recovered_ring> recover(std::uint32_t shared_rsp_prod, std::uint32_t shared_req_prod);

  std::uint32_t size() const { return size_; }
  // Why recover() found the journal inconsistent.
  const std::string& problem() const { return problem_; }

  // The file's layout (journal.cpp).
  struct ring_header;
  struct record;
  struct entry;

 private:
  friend class vbd_journal;
  ring_header* header() const;
  record* records() const;
  entry* entry_at(std::uint32_t i) const;
  blkif_request_segment* descriptors_of(std::uint32_t i) const;

  std::uint64_t entry_check(const entry& e, std::uint64_t state) const;
  std::uint32_t record_check(const record& r) const;
  std::uint64_t descriptors_check(std::span<const blkif_request_segment> d, std::uint64_t state) const;

  std::byte* base_ = nullptr;
  std::uint32_t layout_ = 0;        // the file's: which checks it holds
  std::uint32_t size_ = 0;          // ring entries
  std::uint32_t max_segments_ = 0;  // descriptors kept per entry
  std::vector<std::uint32_t> free_;
  std::uint64_t seq_ = 0;
  std::string problem_;
};

// A vbd's journal file.
class vbd_journal {
 public:
  // A new journal for a connection, replacing whatever the file held, in
  // this build's layout (or, for tests of an upgrade, an older one).
  static asio_xen::result<vbd_journal> create(const std::filesystem::path& file, const journal_identity& id,
                                              std::uint32_t ring_size, std::uint32_t max_segments,
                                              std::uint32_t layout = 0);
  // The journal an earlier process left for this connection:
  // errc::journal_stale if it belongs to another, errc::journal_corrupt if
  // it cannot be trusted, no_such_file_or_directory if there is none.
  static asio_xen::result<vbd_journal> open(const std::filesystem::path& file, const journal_identity& id,
                                            std::uint32_t ring_size, std::uint32_t max_segments);
  static void remove(const std::filesystem::path& file);

  vbd_journal(vbd_journal&&) noexcept;
  vbd_journal& operator=(vbd_journal&&) noexcept;
  ~vbd_journal();

  ring_journal& ring(std::size_t q) { return rings_[q]; }
  std::size_t rings() const { return rings_.size(); }

 private:
  vbd_journal() = default;
  static asio_xen::result<vbd_journal> map(const std::filesystem::path& file, const journal_identity& id,
                                           std::uint32_t ring_size, std::uint32_t max_segments, bool fresh,
                                           std::uint32_t layout);
  void* mem_ = nullptr;
  std::size_t bytes_ = 0;
  std::vector<ring_journal> rings_;
};

// A fast 64-bit hash of bytes (the journal's checks, not cryptographic).
// Inline: the hot path hashes a few fields of known size per request, which
// the compiler then reduces to a handful of instructions each.
inline std::uint64_t journal_hash(std::span<const std::byte> bytes, std::uint64_t seed = 0) {
  constexpr std::uint64_t k1 = 0x9E3779B185EBCA87ull, k2 = 0xC2B2AE3D27D4EB4Full;
  std::uint64_t h = seed ^ (bytes.size() * k1);
  std::size_t i = 0;
  for (; i + 8 <= bytes.size(); i += 8) {
    std::uint64_t w;
    std::memcpy(&w, bytes.data() + i, 8);
    h = (h ^ (w * k2)) * k1;
    h ^= h >> 29;
  }
  std::uint64_t tail = 0;
  std::memcpy(&tail, bytes.data() + i, bytes.size() - i);
  h = (h ^ (tail * k2)) * k1;
  h ^= h >> 32;
  return h | 1;  // never 0, the value of a page never written
}

// The checks of layout 2: 16 bytes per step, each a 64 x 64 -> 128-bit
// multiply folded to 64 bits, about a third of journal_hash's work per
// byte. Layout 1 (journal_hash) is still read after an upgrade.
inline std::uint64_t journal_fold(std::uint64_t a, std::uint64_t b) {
  const unsigned __int128 p = static_cast<unsigned __int128>(a) * b;
  return static_cast<std::uint64_t>(p) ^ static_cast<std::uint64_t>(p >> 64);
}

// `bytes`: a multiple of 8 (every field it checks is).
inline std::uint64_t journal_hash2(std::span<const std::byte> bytes, std::uint64_t seed) {
  constexpr std::uint64_t k1 = 0xA0761D6478BD642Full, k2 = 0xE7037ED1A0B428DBull;
  const std::size_t n = bytes.size();
  std::uint64_t h = seed ^ (n * k1);
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    std::uint64_t a, b;
    std::memcpy(&a, bytes.data() + i, 8);
    std::memcpy(&b, bytes.data() + i + 8, 8);
    h = journal_fold(a ^ h ^ k1, b ^ k2);
  }
  std::uint64_t a = 0;
  if (i < n) std::memcpy(&a, bytes.data() + i, 8);  // the one word left
  h = journal_fold(a ^ h ^ k1, k2 ^ n);
  return journal_fold(h ^ k1, k2) | 1;  // never 0, the value of a page never written
}

}  // namespace xbd::blkback
