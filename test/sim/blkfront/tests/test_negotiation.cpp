#include <doctest/doctest.h>

#include <algorithm>
#include <map>

#include "blkfront/negotiation.hpp"

using namespace xbd::sim::blkfront;

namespace {
key_reader reader(std::map<std::string, std::string> keys) {
  return [keys = std::move(keys)](std::string_view k) -> std::optional<std::string> {
    auto it = keys.find(std::string(k));
    if (it == keys.end()) return std::nullopt;
    return it->second;
  };
}

bool has(const std::vector<key_op>& plan, key_op::kind k, const std::string& path, const std::string& value = {}) {
  return std::any_of(plan.begin(), plan.end(), [&](const key_op& o) {
    return o.what == k && o.path == path && (k == key_op::kind::remove || o.value == value);
  });
}

bool mentions(const std::vector<key_op>& plan, const std::string& path) {
  return std::any_of(plan.begin(), plan.end(), [&](const key_op& o) { return o.path == path; });
}
}  // namespace

TEST_CASE("parse_u64 takes plain decimal only") {
  CHECK(parse_u64("0") == 0u);
  CHECK(parse_u64("4") == 4u);
  CHECK(parse_u64("18446744073709551615") == ~0ull);
  CHECK_FALSE(parse_u64(""));
  CHECK_FALSE(parse_u64("18446744073709551616"));
  CHECK_FALSE(parse_u64("-1"));
  CHECK_FALSE(parse_u64("+1"));
  CHECK_FALSE(parse_u64(" 1"));
  CHECK_FALSE(parse_u64("1 "));
  CHECK_FALSE(parse_u64("1\n"));
  CHECK_FALSE(parse_u64("0x4"));
  CHECK_FALSE(parse_u64("04"));
}

TEST_CASE("ring order is the smaller of our wish and the backend's max-ring-page-order") {
  struct row {
    unsigned ours, backend, expect;
  };
  for (auto [ours, backend, expect] : {row{4, 4, 4}, row{4, 2, 2}, row{1, 4, 1}, row{0, 4, 0}, row{4, 0, 0}}) {
    backend_features b;
    b.max_ring_page_order = backend;
    frontend_wishes w;
    w.ring_page_order = ours;
    const auto n = negotiate(b, w);
    CHECK(n.ring_page_order == expect);
    CHECK(n.ring_pages == (1u << expect));
  }
}

TEST_CASE("a backend without max-ring-page-order gets a single-page ring") {
  std::vector<std::string> errors;
  const auto f = read_backend_features(reader({}), errors);
  CHECK(errors.empty());
  CHECK(f.max_ring_page_order == 0);
  CHECK(negotiate(f, frontend_wishes{}).ring_pages == 1);
}

TEST_CASE("the legacy max-ring-pages key counts as its order (blkif.h)") {
  std::vector<std::string> errors;
  CHECK(read_backend_features(reader({{"max-ring-pages", "8"}}), errors).max_ring_page_order == 3);
  CHECK(read_backend_features(reader({{"max-ring-pages", "2"}, {"max-ring-page-order", "4"}}), errors)
            .max_ring_page_order == 4);
  CHECK(errors.empty());
  read_backend_features(reader({{"max-ring-pages", "6"}}), errors);
  CHECK(errors.size() == 1);
}

TEST_CASE("queues are the smaller of ours and multi-queue-max-queues, 1 when absent") {
  std::vector<std::string> errors;
  frontend_wishes w;
  w.queues = 4;
  CHECK(negotiate(read_backend_features(reader({}), errors), w).queues == 1);
  CHECK(negotiate(read_backend_features(reader({{"multi-queue-max-queues", "2"}}), errors), w).queues == 2);
  CHECK(negotiate(read_backend_features(reader({{"multi-queue-max-queues", "8"}}), errors), w).queues == 4);
  w.queues = 1;
  CHECK(negotiate(read_backend_features(reader({{"multi-queue-max-queues", "8"}}), errors), w).queues == 1);
  CHECK(errors.empty());
}

TEST_CASE("indirect segments: the smaller of both, none without the key or when 11 would do") {
  frontend_wishes w;
  w.indirect_segments = 256;
  backend_features b;
  CHECK(negotiate(b, w).indirect_segments == 0);
  CHECK(negotiate(b, w).segments_per_request() == 11);
  b.max_indirect_segments = 128;
  CHECK(negotiate(b, w).indirect_segments == 128);
  CHECK(negotiate(b, w).segments_per_request() == 128);
  b.max_indirect_segments = 1024;
  CHECK(negotiate(b, w).indirect_segments == 256);
  w.indirect_segments = 0;
  CHECK(negotiate(b, w).indirect_segments == 0);
  // Like Linux: no indirect descriptors when they would not carry more.
  w.indirect_segments = 256;
  b.max_indirect_segments = 11;
  CHECK(negotiate(b, w).indirect_segments == 0);
  // ...unless asked to use them for everything.
  w.force_indirect = true;
  b.max_indirect_segments = 8;
  CHECK(negotiate(b, w).indirect_segments == 8);
  CHECK(negotiate(b, w).force_indirect);
  // Eight indirect pages of 512 descriptors is the protocol's ceiling.
  w.indirect_segments = 100000;
  b.max_indirect_segments = 100000;
  CHECK(negotiate(b, w).indirect_segments == 4096);
}

TEST_CASE("malformed backend feature keys are reported and the defaults apply") {
  std::vector<std::string> errors;
  const auto f = read_backend_features(reader({{"max-ring-page-order", "4 "},
                                               {"multi-queue-max-queues", "-1"},
                                               {"feature-max-indirect-segments", "0x100"},
                                               {"feature-persistent", "2"}}),
                                       errors);
  CHECK(errors.size() == 4);
  CHECK(f.max_ring_page_order == 0);
  CHECK(f.max_queues == 1);
  CHECK(f.max_indirect_segments == 0);
  CHECK_FALSE(f.persistent);
}

TEST_CASE("disk properties: sectors, info and sector-size are required") {
  std::vector<std::string> errors;
  CHECK_FALSE(read_disk_properties(reader({{"sectors", "100"}, {"info", "0"}}), errors));
  CHECK(errors.size() == 1);
  errors.clear();
  const auto d = read_disk_properties(
      reader({{"sectors", "2048"}, {"info", "4"}, {"sector-size", "512"}, {"feature-flush-cache", "1"}}), errors);
  REQUIRE(d);
  CHECK(errors.empty());
  CHECK(d->sectors == 2048);
  CHECK(d->bytes() == 2048 * 512);
  CHECK(d->readonly());
  CHECK(d->flush);
  CHECK_FALSE(d->barrier);
  CHECK_FALSE(d->discard);
  CHECK(d->physical_sector_size == 512);  // defaults to sector-size
}

TEST_CASE("disk properties: a sector-size that is not a power of two >= 512 is refused") {
  for (const char* bad : {"0", "256", "1000", "x"}) {
    std::vector<std::string> errors;
    CHECK_FALSE(read_disk_properties(reader({{"sectors", "1"}, {"info", "0"}, {"sector-size", bad}}), errors));
    CHECK_FALSE(errors.empty());
  }
  std::vector<std::string> errors;
  const auto d = read_disk_properties(
      reader({{"sectors", "8"}, {"info", "0"}, {"sector-size", "4096"}, {"physical-sector-size", "2048"}}), errors);
  CHECK(d);
  CHECK(errors.size() == 1);  // physical smaller than logical
}

TEST_CASE("discard properties default to granularity = sector size and alignment 0") {
  std::vector<std::string> errors;
  const auto d = read_disk_properties(
      reader({{"sectors", "8"}, {"info", "0"}, {"sector-size", "512"}, {"feature-discard", "1"}}), errors);
  REQUIRE(d);
  CHECK(d->discard);
  CHECK(d->discard_granularity == 512);
  CHECK(d->discard_alignment == 0);
  CHECK_FALSE(d->discard_secure);
}

TEST_CASE("key plan, one queue, one page: ring-ref and event-channel at the top, no ring-page-order") {
  negotiated n;
  const std::vector<queue_keys> q = {{{77}, 9}};
  key_plan_options o;
  o.protocol = "x86_64-abi";
  const auto plan = frontend_key_plan("/fe", n, q, o, {});
  CHECK(has(plan, key_op::kind::write, "/fe/ring-ref", "77"));
  CHECK(has(plan, key_op::kind::write, "/fe/event-channel", "9"));
  CHECK(has(plan, key_op::kind::write, "/fe/protocol", "x86_64-abi"));
  CHECK(has(plan, key_op::kind::write, "/fe/feature-persistent", "0"));
  CHECK_FALSE(mentions(plan, "/fe/ring-page-order"));
  CHECK_FALSE(mentions(plan, "/fe/ring-ref0"));
  CHECK_FALSE(mentions(plan, "/fe/multi-queue-num-queues"));
  CHECK(plan.size() == 4);
}

TEST_CASE("key plan: feature-large-sector-size only when asked for, and a stale one is removed") {
  negotiated n;
  const std::vector<queue_keys> q = {{{77}, 9}};
  key_plan_options o;
  CHECK_FALSE(mentions(frontend_key_plan("/fe", n, q, o, {}), "/fe/feature-large-sector-size"));
  const std::vector<std::string> existing = {"feature-large-sector-size"};
  CHECK(has(frontend_key_plan("/fe", n, q, o, existing), key_op::kind::remove, "/fe/feature-large-sector-size", ""));
  o.large_sectors = true;
  CHECK(has(frontend_key_plan("/fe", n, q, o, {}), key_op::kind::write, "/fe/feature-large-sector-size", "1"));
}

TEST_CASE("key plan, multi-page ring: ring-page-order and ring-ref0..N-1") {
  negotiated n;
  n.ring_page_order = 2;
  n.ring_pages = 4;
  const std::vector<queue_keys> q = {{{10, 11, 12, 13}, 3}};
  const auto plan = frontend_key_plan("/fe", n, q, {}, {});
  CHECK(has(plan, key_op::kind::write, "/fe/ring-page-order", "2"));
  for (int i = 0; i < 4; ++i)
    CHECK(has(plan, key_op::kind::write, "/fe/ring-ref" + std::to_string(i), std::to_string(10 + i)));
  CHECK_FALSE(mentions(plan, "/fe/ring-ref"));
  CHECK_FALSE(mentions(plan, "/fe/protocol"));  // left out on request
}

TEST_CASE("key plan, multi-queue: multi-queue-num-queues and per-queue keys, none at the top") {
  negotiated n;
  n.queues = 2;
  n.ring_page_order = 1;
  n.ring_pages = 2;
  const std::vector<queue_keys> q = {{{1, 2}, 5}, {{3, 4}, 6}};
  const auto plan = frontend_key_plan("/fe", n, q, {}, {});
  CHECK(has(plan, key_op::kind::write, "/fe/multi-queue-num-queues", "2"));
  CHECK(has(plan, key_op::kind::write, "/fe/ring-page-order", "1"));
  CHECK(has(plan, key_op::kind::write, "/fe/queue-0/ring-ref0", "1"));
  CHECK(has(plan, key_op::kind::write, "/fe/queue-0/ring-ref1", "2"));
  CHECK(has(plan, key_op::kind::write, "/fe/queue-0/event-channel", "5"));
  CHECK(has(plan, key_op::kind::write, "/fe/queue-1/ring-ref0", "3"));
  CHECK(has(plan, key_op::kind::write, "/fe/queue-1/event-channel", "6"));
  CHECK_FALSE(mentions(plan, "/fe/event-channel"));
  CHECK_FALSE(mentions(plan, "/fe/ring-ref0"));
}

TEST_CASE("key plan, single page, multi-queue: per-queue ring-ref") {
  negotiated n;
  n.queues = 2;
  const std::vector<queue_keys> q = {{{1}, 5}, {{3}, 6}};
  const auto plan = frontend_key_plan("/fe", n, q, {}, {});
  CHECK(has(plan, key_op::kind::write, "/fe/queue-0/ring-ref", "1"));
  CHECK(has(plan, key_op::kind::write, "/fe/queue-1/ring-ref", "3"));
  CHECK_FALSE(mentions(plan, "/fe/ring-page-order"));
}

TEST_CASE("key plan can spell a one-page ring as ring-page-order=0 + ring-ref0") {
  negotiated n;
  key_plan_options o;
  o.always_write_ring_page_order = true;
  const std::vector<queue_keys> q = {{{5}, 1}};
  const auto plan = frontend_key_plan("/fe", n, q, o, {});
  CHECK(has(plan, key_op::kind::write, "/fe/ring-page-order", "0"));
  CHECK(has(plan, key_op::kind::write, "/fe/ring-ref0", "5"));
  CHECK_FALSE(mentions(plan, "/fe/ring-ref"));
}

TEST_CASE("key plan removes an earlier connection's transport keys, first") {
  negotiated n;
  const std::vector<queue_keys> q = {{{5}, 1}};
  const std::vector<std::string> existing = {"backend",   "backend-id", "state",           "virtual-device",
                                             "ring-ref0", "ring-ref1",  "ring-page-order", "multi-queue-num-queues",
                                             "queue-0",   "queue-1",    "event-channel",   "protocol",
                                             "queue-x"};
  const auto plan = frontend_key_plan("/fe", n, q, {}, existing);
  for (const char* gone : {"/fe/ring-ref0", "/fe/ring-ref1", "/fe/ring-page-order", "/fe/multi-queue-num-queues",
                           "/fe/queue-0", "/fe/queue-1", "/fe/protocol"})
    CHECK(has(plan, key_op::kind::remove, gone));
  // Keys the toolstack owns, and keys we rewrite anyway, stay.
  for (const char* kept : {"/fe/backend", "/fe/backend-id", "/fe/state", "/fe/virtual-device", "/fe/queue-x"})
    CHECK_FALSE(mentions(plan, kept));
  CHECK_FALSE(has(plan, key_op::kind::remove, "/fe/event-channel"));
  // Removals come before the writes.
  auto first_write = std::find_if(plan.begin(), plan.end(), [](auto& o) { return o.what == key_op::kind::write; });
  CHECK(std::none_of(first_write, plan.end(), [](auto& o) { return o.what == key_op::kind::remove; }));
}
