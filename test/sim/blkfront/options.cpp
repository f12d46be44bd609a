#include "blkfront/options.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <functional>
#include <map>

#include "blkfront/abi.hpp"

namespace xbd::sim::blkfront {

std::optional<std::uint64_t> parse_size(std::string_view s) {
  if (s.empty()) return std::nullopt;
  std::uint64_t mult = 1;
  switch (s.back()) {
    case 'k':
    case 'K':
      mult = 1ull << 10;
      break;
    case 'm':
    case 'M':
      mult = 1ull << 20;
      break;
    case 'g':
    case 'G':
      mult = 1ull << 30;
      break;
    case 't':
    case 'T':
      mult = 1ull << 40;
      break;
    default:
      break;
  }
  if (mult != 1) s.remove_suffix(1);
  auto v = parse_u64(s);
  if (!v || *v > ~std::uint64_t{0} / mult) return std::nullopt;
  return *v * mult;
}

namespace {

std::optional<double> parse_seconds(std::string_view s) {
  double v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || p != s.data() + s.size() || !std::isfinite(v) || v < 0) return std::nullopt;
  return v;
}

// Decimal, or 0x-prefixed hex for ids and seeds.
std::optional<std::uint64_t> parse_number(std::string_view s) {
  if (s.starts_with("0x") || s.starts_with("0X")) {
    std::uint64_t v = 0;
    s.remove_prefix(2);
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v, 16);
    if (s.empty() || ec != std::errc{} || p != s.data() + s.size()) return std::nullopt;
    return v;
  }
  return parse_u64(s);
}

}  // namespace

std::string usage_text() {
  return R"(usage: blkfront-sim --domid N --devid N [options]

Plays a guest's xen-blkfront against a block backend: negotiates through
xenstore, shares rings and buffers with gntshr, binds event channels, runs a
workload, prints one JSON summary line on stdout.

Device:
  --domid N               the frontend (guest) domain; reads
                          /local/domain/N/device/vbd/<devid>/{backend,backend-id}
  --devid N[,N...]        the virtual device id (e.g. 51712 = xvda); several
                          (a list, or --devid again): connect them all, hold
                          them idle, close them together (--rw none only)
  --backend-path PATH     use PATH instead of the frontend's `backend` key
  --backend-id N          grant to / bind for domain N instead of `backend-id`
  --timeout SEC           limit for each state change, each response, each
                          script wait and each xenstore request (30)

Negotiation (each is cut down to what the backend advertises):
  --ring-order N          ring-page-order wish, 0..8 (4)
  --queues N              multi-queue-num-queues wish (1)
  --indirect N            indirect segments wish, 0 = never (256)
  --force-indirect        use BLKIF_OP_INDIRECT for every data request
  --protocol NAME         ring layout and `protocol` key: x86_64-abi | x86_32-abi |
                          native (= x86_64-abi) | none (x86_64 layout, key
                          omitted) (x86_64-abi)
  --protocol-key STRING   write STRING as `protocol` (the ring keeps the
                          --protocol layout)
  --persistent            write feature-persistent=1 (0)
  --large-sectors         write feature-large-sector-size=1 (not written)
  --always-ring-page-order  write ring-page-order + ring-ref0 even for 1 page

Workload:
  --rw MODE               read|write|rw|randread|randwrite|randrw|trim|randtrim|none
                          (randread); trim = every I/O a discard
  --read-pct N            share of reads for rw/randrw (50)
  --discard-pct N         share of I/Os that are BLKIF_OP_DISCARD of their block,
                          the rest split by --read-pct (0; 100 for trim modes);
                          needs feature-discard, and --bs and --offset aligned
                          to discard-granularity/-alignment
  --discard-secure        set BLKIF_DISCARD_SECURE (needs discard-secure=1)
  --barrier-every N       send every Nth write as BLKIF_OP_WRITE_BARRIER with
                          its data (needs feature-barrier; --bs <= 44k)
  --bs SIZE               bytes per I/O, multiple of 512 and of sector-size (4k)
  --qd N                  I/Os in flight per queue (1)
  --queue-threads         drive each queue from a thread of its own (its own
                          event-channel handle, a contiguous share of the
                          region, of --ios and --bytes); default: one
                          thread serves every queue
  --runtime SEC           stop issuing after SEC seconds
  --bytes SIZE            stop after SIZE bytes issued
  --ios N                 stop after N I/Os issued (default without any limit:
                          --runtime 5)
  --flush-every N         a FLUSH_DISKCACHE after every N writes
  --offset SIZE, --size SIZE   restrict I/O to this region of the disk
  --seed N                random sequence seed (1)
  --verify                stamp every written block, check every read
  --verify-unwritten any|zero|stamped   what a block never written by this
                          run may hold (any)
  --verify-discard zero|unknown   what a discarded block may read back as:
                          zeroes (a hole punched in a file), or zeroes or any
                          older data of its own (blkif.h promises nothing) (zero)
  --prefill               write the whole region once first (with --verify)
  --same-page             every data segment of every request (direct and
                          indirect) is the same granted page, one per queue:
                          the backend buffers up to segments x 4 KiB per
                          request of one page of ours. With --rw read, a
                          guest attacking the backend's memory. Not with
                          --verify
  --fresh-grants          grant each request's data (and indirect) pages for
                          that request alone and end access after its
                          response, as Linux's blkfront does without
                          persistent grants. Under libxensim a grant the
                          backend still holds after answering is a protocol
                          error; with --persistent negotiated it counts as
                          kept by the backend (a guest flooding the backend
                          with new grants). Not with --same-page
  --run-id N              the run id stamped into blocks (random)
  --allow-io-errors       BLKIF_RSP_ERROR/EOPNOTSUPP do not fail the run

Lifecycle:
  --reconnect N           after the workload, N times: close, back to
                          Initialising, renegotiate, run the workload again
  --hold SEC              after the workload, keep the connection SEC seconds
                          (0 = until SIGINT/SIGTERM or the backend leaves)
  --no-close              exit without the Closing/Closed handshake

Raw mode (hostile-guest tests):
  --script FILE           run a request script (see README.md) after connect
  --raw-file FILE         push FILE's slot-sized request images, then wait for
                          responses

Output:
  --json                  only the JSON line (no human summary on stderr)
  --quiet                 no progress messages on stderr
  -h, --help

SIGINT/SIGTERM: stop within a second (in-flight I/O gets 200 ms, the close
runs until 500 ms, at 750 ms or a second signal it exits at once).

Exit status: 0 success; 1 mismatch, protocol error, I/O error, failed
expectation; 2 usage or setup failure (negotiation, xenstore, grants, a
signal before the device connected).
)";
}

parse_result parse_options(const std::vector<std::string>& args) {
  options o;
  bool have_domid = false, have_devid = false, read_pct_given = false, discard_pct_given = false;
  std::string err;

  // Each option's handler gets its argument (empty for flags) and returns
  // an error message or "".
  using handler = std::function<std::string(const std::string&)>;
  struct spec {
    bool takes_arg;
    handler fn;
  };
  auto number = [](auto& dst, std::uint64_t max) {
    return [&dst, max](const std::string& v) -> std::string {
      auto n = parse_number(v);
      if (!n || *n > max) return "bad number '" + v + "'";
      dst = static_cast<std::remove_reference_t<decltype(dst)>>(*n);
      return "";
    };
  };
  auto size = [](auto& dst) {
    return [&dst](const std::string& v) -> std::string {
      auto n = parse_size(v);
      if (!n) return "bad size '" + v + "'";
      dst = *n;
      return "";
    };
  };
  auto flag = [](bool& dst) {
    return [&dst](const std::string&) -> std::string {
      dst = true;
      return "";
    };
  };
  std::uint64_t backend_id = 0, size_v = 0, run_id = 0, bs = 0;
  bool backend_id_given = false, size_given = false, run_id_given = false;

  const std::map<std::string, spec, std::less<>> table = {
      {"--domid",
       {true,
        [&](const std::string& v) {
          have_domid = true;
          return number(o.domid, 0x7fef)(v);
        }}},
      {"--devid",
       {true,
        [&](const std::string& v) -> std::string {
          have_devid = true;
          std::string_view rest = v;
          for (;;) {
            const auto comma = rest.find(',');
            std::uint32_t d = 0;
            if (auto e = number(d, 0xffffffffu)(std::string(rest.substr(0, comma))); !e.empty()) return e;
            o.devids.push_back(d);
            if (comma == std::string_view::npos) break;
            rest.remove_prefix(comma + 1);
          }
          o.devid = o.devids.front();
          return "";
        }}},
      {"--backend-path",
       {true,
        [&](const std::string& v) {
          o.backend_path = v;
          return std::string();
        }}},
      {"--backend-id",
       {true,
        [&](const std::string& v) {
          backend_id_given = true;
          return number(backend_id, 0x7fef)(v);
        }}},
      {"--timeout",
       {true,
        [&](const std::string& v) -> std::string {
          auto s = parse_seconds(v);
          if (!s || *s <= 0) return "bad timeout '" + v + "'";
          o.timeout = std::chrono::milliseconds(static_cast<long long>(*s * 1000));
          return "";
        }}},
      {"--ring-order", {true, number(o.wishes.ring_page_order, 8)}},
      {"--queues",
       {true,
        [&](const std::string& v) -> std::string {
          auto e = number(o.wishes.queues, 1024)(v);
          if (e.empty() && o.wishes.queues == 0) return "--queues must be at least 1";
          return e;
        }}},
      {"--indirect", {true, number(o.wishes.indirect_segments, max_indirect_pages * segments_per_indirect_page)}},
      {"--force-indirect", {false, flag(o.wishes.force_indirect)}},
      {"--protocol",
       {true,
        [&](const std::string& v) -> std::string {
          if (v == "none") {
            o.write_protocol_key = false;
            return "";
          }
          std::string why;
          if (!make_abi(v, &why)) return why;
          o.protocol = v == "native" ? "x86_64-abi" : v;
          return "";
        }}},
      {"--protocol-key",
       {true,
        [&](const std::string& v) {
          o.protocol_key = v;
          return std::string();
        }}},
      {"--persistent", {false, flag(o.persistent)}},
      {"--large-sectors", {false, flag(o.large_sectors)}},
      {"--always-ring-page-order", {false, flag(o.always_write_ring_page_order)}},
      {"--rw",
       {true,
        [&](const std::string& v) -> std::string {
          static const std::map<std::string, std::pair<bool, unsigned>, std::less<>> modes = {
              {"read", {false, 100}},     {"write", {false, 0}},     {"rw", {false, 50}},
              {"readwrite", {false, 50}}, {"randread", {true, 100}}, {"randwrite", {true, 0}},
              {"randrw", {true, 50}},     {"trim", {false, 0}},      {"randtrim", {true, 0}}};
          o.rw_given = true;
          if (v == "none") {
            o.workload = false;
            o.rw = v;
            return "";
          }
          auto it = modes.find(v);
          if (it == modes.end()) return "unknown --rw mode '" + v + "'";
          o.rw = v;
          o.random = it->second.first;
          if (!read_pct_given) o.read_pct = it->second.second;
          if (!discard_pct_given) o.discard_pct = v.ends_with("trim") ? 100 : 0;
          return "";
        }}},
      {"--read-pct",
       {true,
        [&](const std::string& v) {
          read_pct_given = true;
          return number(o.read_pct, 100)(v);
        }}},
      {"--discard-pct",
       {true,
        [&](const std::string& v) {
          discard_pct_given = true;
          return number(o.discard_pct, 100)(v);
        }}},
      {"--discard-secure", {false, flag(o.discard_secure)}},
      {"--barrier-every", {true, number(o.barrier_every, ~std::uint64_t{0})}},
      {"--bs", {true, size(bs)}},
      {"--qd",
       {true,
        [&](const std::string& v) -> std::string {
          auto e = number(o.qd, 65536)(v);
          if (e.empty() && o.qd == 0) return "--qd must be at least 1";
          return e;
        }}},
      {"--runtime",
       {true,
        [&](const std::string& v) -> std::string {
          auto s = parse_seconds(v);
          if (!s) return "bad runtime '" + v + "'";
          o.runtime = *s;
          return "";
        }}},
      {"--bytes", {true, size(o.bytes)}},
      {"--ios", {true, number(o.ios, ~std::uint64_t{0})}},
      {"--flush-every", {true, number(o.flush_every, ~std::uint64_t{0})}},
      {"--offset", {true, size(o.offset)}},
      {"--size",
       {true,
        [&](const std::string& v) {
          size_given = true;
          return size(size_v)(v);
        }}},
      {"--seed", {true, number(o.seed, ~std::uint64_t{0})}},
      {"--verify", {false, flag(o.verify)}},
      {"--verify-unwritten",
       {true,
        [&](const std::string& v) -> std::string {
          if (v == "any")
            o.unwritten = unwritten_policy::any;
          else if (v == "zero")
            o.unwritten = unwritten_policy::zero;
          else if (v == "stamped")
            o.unwritten = unwritten_policy::stamped;
          else
            return "unknown --verify-unwritten policy '" + v + "'";
          return "";
        }}},
      {"--verify-discard",
       {true,
        [&](const std::string& v) -> std::string {
          if (v == "zero")
            o.discarded = discard_policy::zero;
          else if (v == "unknown")
            o.discarded = discard_policy::unknown;
          else
            return "unknown --verify-discard policy '" + v + "'";
          return "";
        }}},
      {"--prefill", {false, flag(o.prefill)}},
      {"--same-page", {false, flag(o.same_page)}},
      {"--fresh-grants", {false, flag(o.fresh_grants)}},
      {"--queue-threads", {false, flag(o.queue_threads)}},
      {"--run-id",
       {true,
        [&](const std::string& v) {
          run_id_given = true;
          return number(run_id, ~std::uint64_t{0})(v);
        }}},
      {"--allow-io-errors", {false, flag(o.allow_io_errors)}},
      {"--reconnect", {true, number(o.reconnect, 1000000)}},
      {"--hold",
       {true,
        [&](const std::string& v) -> std::string {
          auto s = parse_seconds(v);
          if (!s) return "bad hold time '" + v + "'";
          o.hold = *s;
          return "";
        }}},
      {"--no-close", {false, flag(o.no_close)}},
      {"--script",
       {true,
        [&](const std::string& v) {
          o.script = v;
          return std::string();
        }}},
      {"--raw-file",
       {true,
        [&](const std::string& v) {
          o.raw_file = v;
          return std::string();
        }}},
      {"--json", {false, flag(o.json)}},
      {"--quiet", {false, flag(o.quiet)}},
  };

  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string name = args[i], value;
    if (name == "-h" || name == "--help") return help_requested{};
    bool inline_value = false;
    if (auto eq = name.find('='); name.starts_with("--") && eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      inline_value = true;
    }
    auto it = table.find(name);
    if (it == table.end()) return "unknown option '" + args[i] + "'";
    if (it->second.takes_arg && !inline_value) {
      if (i + 1 >= args.size()) return "option " + name + " needs a value";
      value = args[++i];
    } else if (!it->second.takes_arg && inline_value) {
      return "option " + name + " takes no value";
    }
    if (auto e = it->second.fn(value); !e.empty()) return name + ": " + e;
  }

  if (!have_domid) return "--domid is required";
  if (!have_devid) return "--devid is required";
  if (backend_id_given) o.backend_id = static_cast<std::uint32_t>(backend_id);
  if (size_given) o.size = size_v;
  if (run_id_given) o.run_id = run_id;
  if (bs) {
    if (bs % 512 != 0 || bs > (1u << 30)) return "--bs must be a multiple of 512 up to 1 GiB";
    o.bs = static_cast<std::uint32_t>(bs);
  }
  if (o.offset % 512 != 0) return "--offset must be a multiple of 512";
  if ((o.rw == "rw" || o.rw == "readwrite" || o.rw == "randrw") == false && read_pct_given && o.workload)
    return "--read-pct only applies to --rw rw or randrw";
  if (o.prefill && !o.verify) return "--prefill needs --verify";
  if (o.same_page && o.verify) return "--same-page excludes --verify (every segment is the same page)";
  if (o.same_page && o.fresh_grants) return "--same-page excludes --fresh-grants (one page per queue, granted once)";
  if (o.discard_secure && o.discard_pct == 0) return "--discard-secure needs discards (--discard-pct or --rw trim)";
  if (!o.runtime && o.bytes == 0 && o.ios == 0) o.runtime = 5.0;
  if ((o.script || o.raw_file) && !o.rw_given) o.workload = false;
  if (o.script && o.raw_file) return "--script and --raw-file exclude each other";
  // A script drives the rings itself, from one thread.
  if (o.queue_threads && (o.script || o.raw_file)) return "--queue-threads excludes --script and --raw-file";
  if (o.queue_threads && o.devids.size() > 1) return "--queue-threads takes one device";
  if (o.devids.size() > 1) {
    if (o.workload || o.script || o.raw_file)
      return "several devices are only connected and held: give --rw none and no script";
    if (o.reconnect) return "--reconnect takes one device";
    if (o.backend_path || o.backend_id) return "--backend-path/--backend-id take one device";
    std::vector<std::uint32_t> sorted = o.devids;
    std::sort(sorted.begin(), sorted.end());
    if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) return "a --devid is given twice";
  }
  return o;
}

}  // namespace xbd::sim::blkfront
