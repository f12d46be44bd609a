// Verify mode: every written block says what it is, and every read is
// checked against what this process last wrote there.
//
// A "verify block" (512..4096 bytes, dividing the I/O size) starts with a
// 40-byte stamp:
//   0  magic "XBDSIMv1"      8  lba (512-byte sector of the block)
//   16 generation            24 run id (random per process)
//   32 checksum of the whole block except these 8 bytes
// followed by a payload that is a pure function of (lba, generation, run id).
// The checksum catches torn and corrupted blocks, the lba misdirected I/O,
// the generation stale or lost writes, the run id leftovers of another run.
#pragma once

#include <cstdint>
#include <mutex>
#include <span>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace xbd::sim::blkfront {

inline constexpr std::uint64_t stamp_magic = 0x31764d4953444258ull;  // "XBDSIMv1"
inline constexpr std::size_t stamp_header_size = 40;
// Read buffers are filled with this before every read in verify mode, so a
// backend that answers OKAY without transferring data cannot pass off what an
// earlier read left in the same pages.
inline constexpr std::byte poison_byte{0xa5};

// Verify granularity for an I/O size: the largest power of two <= 4096 that
// divides it (bs is a multiple of 512).
std::uint32_t verify_block_size(std::uint32_t bs);

struct stamp {
  std::uint64_t lba = 0;
  std::uint64_t generation = 0;
  std::uint64_t run_id = 0;
};

std::uint64_t block_checksum(std::span<const std::byte> block);
void write_stamped_block(std::span<std::byte> block, const stamp& s);
void poison(std::span<std::byte> buf);

// What a never-written (this run) block may contain.
enum class unwritten_policy {
  any,      // anything, but a block carrying our magic must be a valid stamp
  zero,     // all zeroes (a fresh sparse image)
  stamped,  // a valid stamp of any run (a disk written by an earlier run)
};

// What a discarded block may read back as. blkif.h promises nothing about
// the contents ("no longer in use"); a backend that punches holes in a file
// (what xen-blkbackd does for raw images) makes them zeroes.
enum class discard_policy {
  zero,     // all zeroes (hole punching)
  unknown,  // zeroes, or any data of its own LBA it held before (block devices)
};

// What a block should hold: the last generation acknowledged, plus those of
// writes that failed since (their data may or may not have landed).
struct expectation {
  std::uint32_t committed = 0;  // 0: never written by this run
  std::span<const std::uint32_t> maybe;
  bool discarded = false;        // an acknowledged discard is the last thing done to it
  bool maybe_discarded = false;  // a discard that failed since: it may have happened
};

enum class verdict {
  ok,
  untouched,           // still our poison: the backend said OKAY but sent nothing
  missing,             // no stamp where we wrote one
  corrupt,             // stamp present, checksum wrong (torn or damaged block)
  wrong_lba,           // a valid block of another LBA (misdirected read or write)
  stale,               // an older generation, or another run's data, where we wrote
  future,              // a generation we never acknowledged
  unwritten_mismatch,  // a never-written block that breaks the policy
  not_discarded,       // discarded (policy zero), but does not read as zeroes
};
std::string_view to_string(verdict v);

struct check_result {
  verdict v = verdict::ok;
  std::uint64_t found_lba = 0;
  std::uint64_t found_generation = 0;
  std::uint64_t found_run_id = 0;
  std::size_t first_bad_offset = 0;  // for corrupt: best effort
};

check_result check_block(std::span<const std::byte> block, std::uint64_t lba, std::uint64_t run_id,
                         const expectation& e, unwritten_policy policy, discard_policy discards = discard_policy::zero);

// Generations per verify block of the region, in memory. Callers never have
// two requests on one block in flight (the workload's block locks), so a
// block's state only changes when its single in-flight write completes.
// With --queue-threads each thread works on blocks of its own, so no two
// threads touch one block's entries; the maps are shared, though (an
// insert may rehash), so every call takes a lock. A span that expect()
// hands out stays valid: the map's nodes do not move, and only the thread
// that owns the block changes its vector.
class generation_tracker {
 public:
  explicit generation_tracker(std::uint64_t blocks);
  std::uint64_t blocks() const { return committed_.size(); }
  // The generation a new write of `block` carries.
  std::uint32_t next_generation(std::uint64_t block) const;
  void write_completed(std::uint64_t block, std::uint32_t generation, bool ok);
  // A failed discard may still have happened (in part, even): until the next
  // acknowledged write the block may read as discarded or as before.
  void discard_completed(std::uint64_t block, bool ok);
  expectation expect(std::uint64_t block) const;

 private:
  enum : std::uint8_t { discarded_bit = 1, maybe_discarded_bit = 2 };
  std::vector<std::uint32_t> committed_;
  std::unordered_map<std::uint64_t, std::vector<std::uint32_t>> maybe_;
  std::unordered_map<std::uint64_t, std::uint8_t> discards_;  // only blocks a discard touched
  mutable std::mutex mu_;
};

}  // namespace xbd::sim::blkfront
