#include <doctest/doctest.h>

#include "blkfront/options.hpp"

using namespace xbd::sim::blkfront;

namespace {
parse_result parse(std::initializer_list<const char*> a) {
  std::vector<std::string> args{"--domid", "5", "--devid", "51712"};
  args.insert(args.end(), a.begin(), a.end());
  return parse_options(args);
}
std::string error_of(const parse_result& r) {
  auto* e = std::get_if<std::string>(&r);
  return e ? *e : std::string();
}
}  // namespace

TEST_CASE("sizes take k, m, g suffixes in powers of 1024") {
  CHECK(parse_size("4096") == 4096u);
  CHECK(parse_size("4k") == 4096u);
  CHECK(parse_size("1M") == 1048576u);
  CHECK(parse_size("2g") == 2147483648u);
  CHECK_FALSE(parse_size("4kb"));
  CHECK_FALSE(parse_size("k"));
  CHECK_FALSE(parse_size("-4k"));
  CHECK_FALSE(parse_size("99999999999999999999k"));
}

TEST_CASE("the issue's example command line parses") {
  auto r = parse({"--rw",
                  "randrw",
                  "--read-pct",
                  "70",
                  "--bs",
                  "4096",
                  "--qd",
                  "32",
                  "--runtime",
                  "10",
                  "--verify",
                  "--flush-every",
                  "100",
                  "--queues",
                  "4",
                  "--ring-order",
                  "2",
                  "--indirect",
                  "64",
                  "--protocol",
                  "x86_64-abi",
                  "--json",
                  "--backend-path",
                  "/local/domain/0/backend/qdisk/5/51712"});
  REQUIRE(std::holds_alternative<options>(r));
  const auto& o = std::get<options>(r);
  CHECK(o.domid == 5);
  CHECK(o.devid == 51712);
  CHECK(o.random);
  CHECK(o.read_pct == 70);
  CHECK(o.bs == 4096);
  CHECK(o.qd == 32);
  CHECK(o.runtime == 10.0);
  CHECK(o.verify);
  CHECK(o.flush_every == 100);
  CHECK(o.wishes.queues == 4);
  CHECK(o.wishes.ring_page_order == 2);
  CHECK(o.wishes.indirect_segments == 64);
  CHECK(o.protocol == "x86_64-abi");
  CHECK(o.json);
  CHECK(o.backend_path == "/local/domain/0/backend/qdisk/5/51712");
}

TEST_CASE("--rw modes set order and read share, --opt=value works too") {
  auto r = parse({"--rw=write", "--bytes=1m"});
  REQUIRE(std::holds_alternative<options>(r));
  CHECK_FALSE(std::get<options>(r).random);
  CHECK(std::get<options>(r).read_pct == 0);
  CHECK(std::get<options>(r).bytes == 1048576u);
  CHECK_FALSE(std::get<options>(r).runtime);  // a byte budget replaces the default runtime

  r = parse({"--rw", "rw"});
  CHECK(std::get<options>(r).read_pct == 50);
  CHECK(std::get<options>(r).runtime == 5.0);
  r = parse({"--read-pct", "10", "--rw", "randrw"});
  CHECK(std::get<options>(r).read_pct == 10);
  r = parse({"--rw", "none"});
  CHECK_FALSE(std::get<options>(r).workload);
}

TEST_CASE("raw mode runs no workload unless one is asked for") {
  CHECK_FALSE(std::get<options>(parse({"--script", "x.txt"})).workload);
  CHECK(std::get<options>(parse({"--script", "x.txt", "--rw", "read"})).workload);
  CHECK(std::get<options>(parse({"--raw-file", "x.bin"})).raw_file == "x.bin");
}

TEST_CASE("bad command lines are refused with a reason") {
  CHECK(error_of(parse_options({"--devid", "1"})).find("--domid") != std::string::npos);
  CHECK(error_of(parse_options({"--domid", "1"})).find("--devid") != std::string::npos);
  CHECK(error_of(parse({"--bs", "1000"})).find("512") != std::string::npos);
  CHECK(error_of(parse({"--qd", "0"})).find("qd") != std::string::npos);
  CHECK(error_of(parse({"--queues", "0"})).find("queues") != std::string::npos);
  CHECK(error_of(parse({"--ring-order", "9"})).find("ring-order") != std::string::npos);
  CHECK(error_of(parse({"--rw", "sideways"})).find("sideways") != std::string::npos);
  CHECK(error_of(parse({"--protocol", "arm-abi"})).find("not implemented") != std::string::npos);
  CHECK(error_of(parse({"--protocol", "x86_33-abi"})).find("unknown") != std::string::npos);
  CHECK(error_of(parse({"--discard-pct", "101"})) != "");
  CHECK(error_of(parse({"--discard-secure"})).find("discard") != std::string::npos);
  CHECK(error_of(parse({"--verify-discard", "maybe"})).find("maybe") != std::string::npos);
  CHECK(error_of(parse({"--barrier-every", "x"})) != "");
  CHECK(error_of(parse({"--rw", "trim", "--read-pct", "50"})).find("read-pct") != std::string::npos);
  CHECK(error_of(parse({"--read-pct", "101", "--rw", "randrw"})) != "");
  CHECK(error_of(parse({"--read-pct", "50", "--rw", "read"})).find("read-pct") != std::string::npos);
  CHECK(error_of(parse({"--prefill"})).find("--verify") != std::string::npos);
  CHECK(error_of(parse({"--bogus"})).find("--bogus") != std::string::npos);
  CHECK(error_of(parse({"--qd"})).find("needs a value") != std::string::npos);
  CHECK(error_of(parse({"--verify=1"})).find("takes no value") != std::string::npos);
  CHECK(error_of(parse({"--verify-unwritten", "maybe"})) != "");
  CHECK(error_of(parse({"--script", "a", "--raw-file", "b"})) != "");
  CHECK(std::holds_alternative<help_requested>(parse({"--help"})));
}

TEST_CASE("protocol none leaves the key out, --protocol-key writes anything") {
  auto o = std::get<options>(parse({"--protocol", "none"}));
  CHECK_FALSE(o.write_protocol_key);
  o = std::get<options>(parse({"--protocol-key", "garbage-abi"}));
  CHECK(o.protocol_key == "garbage-abi");
  CHECK(o.protocol == "x86_64-abi");
}

TEST_CASE("--protocol x86_32-abi selects the 32-bit layout and its key") {
  auto o = std::get<options>(parse({"--protocol", "x86_32-abi"}));
  CHECK(o.protocol == "x86_32-abi");
  CHECK(o.write_protocol_key);
  o = std::get<options>(parse({"--protocol=native"}));
  CHECK(o.protocol == "x86_64-abi");
}

TEST_CASE("discard options: a share, trim modes, the secure flag, what verify expects") {
  auto o = std::get<options>(parse({}));
  CHECK(o.discard_pct == 0);
  CHECK_FALSE(o.discard_secure);
  CHECK(o.discarded == discard_policy::zero);

  o = std::get<options>(parse({"--rw", "randrw", "--discard-pct", "25", "--discard-secure"}));
  CHECK(o.discard_pct == 25);
  CHECK(o.read_pct == 50);
  CHECK(o.discard_secure);

  o = std::get<options>(parse({"--rw", "randtrim"}));
  CHECK(o.discard_pct == 100);
  CHECK(o.random);
  o = std::get<options>(parse({"--rw", "trim", "--verify-discard", "unknown"}));
  CHECK(o.discard_pct == 100);
  CHECK_FALSE(o.random);
  CHECK(o.discarded == discard_policy::unknown);
  // An explicit share wins over the mode's, in either order.
  o = std::get<options>(parse({"--discard-pct", "10", "--rw", "trim"}));
  CHECK(o.discard_pct == 10);
  o = std::get<options>(parse({"--rw", "randwrite", "--discard-pct=100"}));
  CHECK(o.discard_pct == 100);
}

TEST_CASE("--barrier-every takes a count") {
  auto o = std::get<options>(parse({"--rw", "randwrite", "--barrier-every", "16"}));
  CHECK(o.barrier_every == 16);
  CHECK(std::get<options>(parse({})).barrier_every == 0);
}

TEST_CASE("--same-page is a flag, and excludes --verify") {
  auto o = std::get<options>(parse({"--same-page", "--rw", "read"}));
  CHECK(o.same_page);
  CHECK_FALSE(std::get<options>(parse({})).same_page);
  CHECK(error_of(parse({"--same-page", "--verify"})).find("--same-page") != std::string::npos);
}

TEST_CASE("--fresh-grants is a flag, goes with --persistent and --verify, and excludes --same-page") {
  auto o = std::get<options>(parse({"--fresh-grants", "--persistent", "--verify", "--rw", "randrw"}));
  CHECK(o.fresh_grants);
  CHECK(o.persistent);
  CHECK_FALSE(std::get<options>(parse({})).fresh_grants);
  CHECK(error_of(parse({"--fresh-grants", "--same-page", "--rw", "read"})).find("--fresh-grants") != std::string::npos);
}

TEST_CASE("--queue-threads is a flag, off by default, and excludes scripts and several devices") {
  CHECK(std::get<options>(parse({"--queue-threads", "--queues", "2", "--verify", "--rw", "randrw"})).queue_threads);
  CHECK_FALSE(std::get<options>(parse({})).queue_threads);
  CHECK(error_of(parse({"--queue-threads", "--script", "s.txt"})).find("--queue-threads") != std::string::npos);
  CHECK(error_of(parse({"--queue-threads", "--devid", "51728", "--rw", "none"})).find("one device") !=
        std::string::npos);
}

TEST_CASE("several devices: a list or the option again, only connected and held") {
  auto o = std::get<options>(parse({"--devid", "51728,51744", "--devid", "51760", "--rw", "none"}));
  CHECK(o.devids == std::vector<std::uint32_t>{51712, 51728, 51744, 51760});
  CHECK(o.devid == 51712);
  CHECK(std::get<options>(parse({})).devids == std::vector<std::uint32_t>{51712});
  CHECK(error_of(parse({"--devid", "51728"})).find("--rw none") != std::string::npos);
  CHECK(error_of(parse({"--devid", "51728", "--rw", "none", "--reconnect", "1"})).find("one device") !=
        std::string::npos);
  CHECK(error_of(parse({"--devid", "51712", "--rw", "none"})).find("twice") != std::string::npos);
  CHECK_FALSE(error_of(parse({"--devid", "51728,x", "--rw", "none"})).empty());
}
