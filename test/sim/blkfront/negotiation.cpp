#include "blkfront/negotiation.hpp"

#include <algorithm>
#include <bit>
#include <charconv>
#include <set>

#include "blkfront/abi.hpp"

namespace xbd::sim::blkfront {

std::optional<std::uint64_t> parse_u64(std::string_view s) {
  if (s.empty() || s.size() > 20) return std::nullopt;
  if (s.size() > 1 && s[0] == '0') return std::nullopt;  // no octal look-alikes
  std::uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v, 10);
  if (ec != std::errc{} || p != s.data() + s.size()) return std::nullopt;
  return v;
}

namespace {

// nullopt if absent; sets *bad (and records an error) if present but not a
// number within [0, max].
std::optional<std::uint64_t> read_number(const key_reader& read, std::string_view key, std::uint64_t max,
                                         std::vector<std::string>& errors, bool* bad = nullptr) {
  auto raw = read(key);
  if (!raw) return std::nullopt;
  auto v = parse_u64(*raw);
  if (!v || *v > max) {
    errors.push_back("backend key '" + std::string(key) + "' has malformed value '" + *raw + "'");
    if (bad) *bad = true;
    return std::nullopt;
  }
  return v;
}

bool read_bool(const key_reader& read, std::string_view key, std::vector<std::string>& errors) {
  return read_number(read, key, 1, errors).value_or(0) == 1;
}

constexpr std::uint64_t u32_max = 0xffffffffu;

}  // namespace

backend_features read_backend_features(const key_reader& read, std::vector<std::string>& errors) {
  backend_features f;
  // blkif.h: the usable order is MAX(ffs(max-ring-pages) - 1, max-ring-page-order).
  unsigned order = static_cast<unsigned>(read_number(read, "max-ring-page-order", 31, errors).value_or(0));
  if (auto pages = read_number(read, "max-ring-pages", u32_max, errors); pages && *pages > 0) {
    if (!std::has_single_bit(*pages))
      errors.push_back("backend key 'max-ring-pages' is not a power of two");
    else
      order = std::max(order, static_cast<unsigned>(std::countr_zero(*pages)));
  }
  f.max_ring_page_order = order;
  f.max_queues = static_cast<unsigned>(read_number(read, "multi-queue-max-queues", u32_max, errors).value_or(1));
  if (f.max_queues == 0) {
    errors.push_back("backend key 'multi-queue-max-queues' is 0");
    f.max_queues = 1;
  }
  f.max_indirect_segments =
      static_cast<unsigned>(read_number(read, "feature-max-indirect-segments", u32_max, errors).value_or(0));
  f.persistent = read_bool(read, "feature-persistent", errors);
  return f;
}

std::optional<disk_properties> read_disk_properties(const key_reader& read, std::vector<std::string>& errors) {
  disk_properties d;
  bool bad = false;
  auto required = [&](std::string_view key, std::uint64_t max) -> std::uint64_t {
    auto v = read_number(read, key, max, errors, &bad);
    if (!v && !bad) {
      errors.push_back("backend key '" + std::string(key) + "' is missing");
      bad = true;
    }
    return v.value_or(0);
  };
  d.sectors = required("sectors", ~std::uint64_t{0} >> 9);
  d.info = static_cast<std::uint32_t>(required("info", u32_max));
  d.sector_size = static_cast<std::uint32_t>(required("sector-size", u32_max));
  if (!bad && (d.sector_size < 512 || !std::has_single_bit(d.sector_size))) {
    errors.push_back("backend key 'sector-size' is not a power of two >= 512");
    bad = true;
  }
  d.physical_sector_size =
      static_cast<std::uint32_t>(read_number(read, "physical-sector-size", u32_max, errors).value_or(d.sector_size));
  if (!bad && (d.physical_sector_size == 0 || d.physical_sector_size % d.sector_size != 0))
    errors.push_back("backend key 'physical-sector-size' is not a multiple of 'sector-size'");
  d.flush = read_bool(read, "feature-flush-cache", errors);
  d.barrier = read_bool(read, "feature-barrier", errors);
  d.discard = read_bool(read, "feature-discard", errors);
  if (d.discard) {
    // blkif.h note 4: defaults are alignment 0 and granularity = sector size.
    d.discard_granularity =
        static_cast<std::uint32_t>(read_number(read, "discard-granularity", u32_max, errors).value_or(d.sector_size));
    d.discard_alignment =
        static_cast<std::uint32_t>(read_number(read, "discard-alignment", u32_max, errors).value_or(0));
    d.discard_secure = read_bool(read, "discard-secure", errors);
  }
  d.persistent = read_bool(read, "feature-persistent", errors);
  if (bad) return std::nullopt;
  return d;
}

unsigned negotiated::segments_per_request() const {
  return indirect_segments > 0 ? indirect_segments : max_direct_segments;
}

negotiated negotiate(const backend_features& backend, const frontend_wishes& wishes) {
  negotiated n;
  n.ring_page_order = std::min(wishes.ring_page_order, backend.max_ring_page_order);
  n.ring_pages = 1u << n.ring_page_order;
  n.queues = std::max(1u, std::min(wishes.queues, backend.max_queues));
  // An indirect request addresses at most 8 pages of 512 descriptors.
  unsigned segs = std::min(
      {wishes.indirect_segments, backend.max_indirect_segments, max_indirect_pages * segments_per_indirect_page});
  // Like Linux: indirect descriptors are pointless unless they carry more
  // than a direct request can, except when asked to use them for everything.
  if (segs <= max_direct_segments && !wishes.force_indirect) segs = 0;
  n.indirect_segments = segs;
  n.force_indirect = wishes.force_indirect && segs > 0;
  return n;
}

namespace {

bool is_transport_key(std::string_view name) {
  static const std::set<std::string_view> fixed = {
      "ring-ref",       "event-channel", "multi-queue-num-queues", "ring-page-order",
      "num-ring-pages", "protocol",      "feature-persistent",     "feature-large-sector-size"};
  if (fixed.contains(name)) return true;
  auto numbered = [&](std::string_view prefix) {
    if (!name.starts_with(prefix)) return false;
    return parse_u64(name.substr(prefix.size())).has_value();
  };
  return numbered("ring-ref") || numbered("queue-");
}

}  // namespace

std::vector<key_op> frontend_key_plan(std::string_view dir, const negotiated& n, std::span<const queue_keys> queues,
                                      const key_plan_options& opts, std::span<const std::string> existing) {
  std::vector<key_op> writes;
  auto write = [&](std::string path, std::string value) {
    writes.push_back({key_op::kind::write, std::move(path), std::move(value)});
  };
  const std::string base(dir);

  if (n.ring_pages > 1 || opts.always_write_ring_page_order)
    write(base + "/ring-page-order", std::to_string(n.ring_page_order));

  auto per_queue = [&](const std::string& qdir, const queue_keys& q) {
    if (n.ring_pages == 1 && !opts.always_write_ring_page_order) {
      write(qdir + "/ring-ref", std::to_string(q.ring_refs.at(0)));
    } else {
      for (std::size_t i = 0; i < q.ring_refs.size(); ++i)
        write(qdir + "/ring-ref" + std::to_string(i), std::to_string(q.ring_refs[i]));
    }
    write(qdir + "/event-channel", std::to_string(q.event_channel));
  };
  // blkif.h: a single queue uses the top-level keys, so that a backend
  // without multi-queue support and one with it see the same thing.
  if (queues.size() == 1) {
    per_queue(base, queues[0]);
  } else {
    write(base + "/multi-queue-num-queues", std::to_string(queues.size()));
    for (std::size_t i = 0; i < queues.size(); ++i) per_queue(base + "/queue-" + std::to_string(i), queues[i]);
  }
  if (opts.protocol) write(base + "/protocol", *opts.protocol);
  write(base + "/feature-persistent", opts.persistent ? "1" : "0");
  if (opts.large_sectors) write(base + "/feature-large-sector-size", "1");

  // A previous connection may have left keys this one does not write (say,
  // queue-3/ after going from four queues to one); a backend must not find
  // them and believe them.
  std::vector<key_op> plan;
  for (const auto& name : existing) {
    if (!is_transport_key(name)) continue;
    const std::string path = base + "/" + name;
    const bool rewritten = std::any_of(writes.begin(), writes.end(), [&](const key_op& w) {
      return w.path == path || w.path.starts_with(path + "/");
    });
    // A queue directory that is reused still loses its stale entries.
    if (!rewritten || name.starts_with("queue-")) plan.push_back({key_op::kind::remove, path, {}});
  }
  plan.insert(plan.end(), writes.begin(), writes.end());
  return plan;
}

}  // namespace xbd::sim::blkfront
