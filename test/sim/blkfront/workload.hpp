// The I/O pattern: which block to read, write or discard next, and when to
// flush.
//
// The region is cut into `bs`-sized blocks; every I/O covers exactly one. A
// block is locked from issue to completion and never handed out twice at
// once, which is what lets verify mode know the one value a read must see
// even with many requests in flight on several queues.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <unordered_set>

namespace xbd::sim::blkfront {

enum class io_kind : std::uint8_t { read, write, flush, discard };
inline constexpr std::size_t io_kind_count = 4;
std::string_view to_string(io_kind k);

struct workload_spec {
  bool random = false;
  unsigned read_pct = 100;          // share of reads among the I/Os that are not discards
  unsigned discard_pct = 0;         // share of I/Os that discard their block
  std::uint64_t region_offset = 0;  // bytes, multiple of the sector size
  std::uint64_t region_bytes = 0;   // bytes; the tail short of `bs` is unused
  std::uint32_t bs = 4096;
  std::uint64_t flush_every = 0;    // a flush after every N writes issued
  std::uint64_t barrier_every = 0;  // every Nth write is a WRITE_BARRIER
  std::uint64_t max_ios = 0;        // data I/Os to issue, 0 = no limit
  std::uint64_t max_bytes = 0;      // data bytes to issue, 0 = no limit
  std::uint64_t seed = 1;
};

struct planned_io {
  io_kind kind = io_kind::read;
  std::uint64_t block = 0;   // index in the region (unused for flush)
  std::uint64_t sector = 0;  // absolute, 512-byte units
  std::uint32_t bytes = 0;
  bool barrier = false;  // a write sent as BLKIF_OP_WRITE_BARRIER
};

class workload {
 public:
  explicit workload(const workload_spec& spec);

  std::uint64_t blocks() const { return blocks_; }
  const workload_spec& spec() const { return spec_; }

  // The next I/O to issue, or nullopt when nothing may be issued now: the
  // budget is spent, the workload was stopped, or every candidate block is
  // in flight (sequential order waits for its next block; random order gives
  // up after a few busy picks rather than spin).
  std::optional<planned_io> next();
  // The I/O is finished; its block may be handed out again.
  void complete(const planned_io& io);

  void stop() { stopped_ = true; }
  // True once no further I/O will ever be issued.
  bool exhausted() const;
  unsigned in_flight() const { return static_cast<unsigned>(busy_.size()) + flushes_in_flight_; }
  std::uint64_t issued_ios() const { return issued_ios_; }

 private:
  std::uint64_t random_below(std::uint64_t n);
  bool budget_left() const;

  workload_spec spec_;
  std::uint64_t blocks_ = 0;
  std::uint64_t cursor_ = 0;
  std::uint64_t rng_;
  std::uint64_t issued_ios_ = 0;
  std::uint64_t issued_bytes_ = 0;
  std::uint64_t writes_since_flush_ = 0;
  std::uint64_t writes_since_barrier_ = 0;
  bool flush_due_ = false;
  bool stopped_ = false;
  unsigned flushes_in_flight_ = 0;
  std::unordered_set<std::uint64_t> busy_;
};

}  // namespace xbd::sim::blkfront
