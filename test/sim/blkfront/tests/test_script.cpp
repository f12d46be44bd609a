#include <doctest/doctest.h>

#include <cstring>

#include "asio_xen/xen.hpp"
#include "blkfront/script.hpp"
#include "fake_backend.hpp"

using namespace xbd::sim::blkfront;
using namespace xbd::sim::blkfront::testing;

namespace {

std::vector<command> parsed(std::string_view text) {
  auto r = parse_script(text);
  if (auto* e = std::get_if<script_error>(&r)) FAIL("line " << e->line << ": " << e->message);
  return std::get<std::vector<command>>(r);
}

script_error error_of(std::string_view text) {
  auto r = parse_script(text);
  if (auto* e = std::get_if<script_error>(&r)) return *e;
  return {};
}

// A connected one-queue device on the fake platform.
struct rig {
  fake_platform p;
  std::unique_ptr<ring_queue> q;
  std::unique_ptr<fake_backend> be;
  std::unique_ptr<abi> layout;

  explicit rig(std::string_view protocol = "x86_64-abi") : layout(make_abi(protocol)) {
    std::string err;
    REQUIRE(layout);
    q = make_ring_queue(p, 0, 0, 1, layout->slot_size(), err);
    REQUIRE(q);
    be = std::make_unique<fake_backend>(p, 0, 2048);
    be->x86_32 = layout->which() == protocol::x86_32;
    be->attach(*q);
    p.backend = [this] { return be->service(); };
  }

  script_result run(std::string_view text, std::optional<unsigned> state = 4,
                    std::chrono::milliseconds max_wait = std::chrono::seconds(30)) {
    script_runner::environment env;
    env.plat = &p;
    env.queues = {q.get()};
    env.layout = layout.get();
    env.handle = 0xca00;
    env.backend_state = [state] { return state; };
    env.max_wait = max_wait;
    return script_runner(env).run(parsed(text));
  }
};

}  // namespace

TEST_CASE("hex bytes: pairs of hex digits, spaces allowed") {
  CHECK(parse_hex("00ff 0A") == std::vector<std::byte>{std::byte{0}, std::byte{0xff}, std::byte{0x0a}});
  CHECK_FALSE(parse_hex("0"));
  CHECK_FALSE(parse_hex("0g"));
  CHECK_FALSE(parse_hex(""));
}

TEST_CASE("script syntax errors name the line") {
  CHECK(error_of("push\n\nfrobnicate 1\n").line == 3);
  CHECK(error_of("req nseg=1\n").message.find("op=") != std::string::npos);
  CHECK(error_of("req op=read colour=blue\n").message.find("colour") != std::string::npos);
  CHECK(error_of("req op=read seg=1:2\n").line == 1);
  CHECK(error_of("req op=read seg=a:0:9999\n").line == 1);
  CHECK(error_of("ireq iop=read igref=1 igref=2 igref=3 igref=4 igref=5 igref=6 igref=7 igref=8 igref=9\n").line == 1);
  CHECK(error_of("raw 0\n").line == 1);
  CHECK(error_of("pages ring 1 rw\n").line == 1);
  CHECK(error_of("pages buf 1 rx\n").line == 1);
  CHECK(error_of("wait 1 100 hard\n").line == 1);
  CHECK(error_of("expect 1 maybe\n").line == 1);
  CHECK(error_of("expect-state sleepy\n").line == 1);
  CHECK(error_of("push now\n").line == 1);
  CHECK(error_of("seg buf:0 512 1 0 7\n").line == 1);
}

TEST_CASE("comments and blank lines are ignored, key=value fields keep their order") {
  auto cmds = parsed("# a comment\n\n  req op=write id=7 seg=buf:0:0:7 seg=9:1:2  # trailing\npush\n");
  REQUIRE(cmds.size() == 2);
  CHECK(cmds[0].v == verb::req);
  CHECK(cmds[0].line == 3);
  REQUIRE(cmds[0].fields.size() == 4);
  CHECK(cmds[0].fields[2].second == "buf:0:0:7");
  CHECK(cmds[1].v == verb::push);
}

TEST_CASE("a raw file becomes one raw slot per image, a push and a soft wait") {
  std::string bytes(224, '\0');
  bytes[0] = 1;
  bytes[112] = '\x63';
  auto r = raw_file_script(bytes, 112, std::chrono::milliseconds(50));
  REQUIRE(std::holds_alternative<std::vector<command>>(r));
  const auto& cmds = std::get<std::vector<command>>(r);
  REQUIRE(cmds.size() == 4);
  CHECK(cmds[0].v == verb::raw);
  CHECK(cmds[0].args[0].substr(0, 4) == "0100");
  CHECK(cmds[1].args[0].substr(0, 2) == "63");
  CHECK(cmds[2].v == verb::push);
  CHECK(cmds[3].v == verb::wait);
  CHECK(cmds[3].args == std::vector<std::string>{"2", "50", "soft"});
  CHECK(
      std::holds_alternative<script_error>(raw_file_script(std::string(100, 'x'), 112, std::chrono::milliseconds(1))));
}

TEST_CASE("a scripted write and read reach the disk and come back") {
  rig r;
  auto res = r.run(R"(
    pages buf 2 rw
    fill buf:0 0x5a
    req op=write id=1 sector=16 seg=buf:0:0:7
    push
    wait 1 1000
    expect 1 okay
    req op=read id=2 sector=16 seg=buf:1:0:7
    push
    wait 1 1000
    expect 2 okay
  )");
  CHECK(res.failures.empty());
  CHECK(res.responses.size() == 2);
  CHECK(r.be->disk[16 * 512] == std::byte{0x5a});
  CHECK(r.be->disk[16 * 512 + 4095] == std::byte{0x5a});
  CHECK(r.be->ops_seen[BLKIF_OP_WRITE] == 1);
  CHECK(r.be->ops_seen[BLKIF_OP_READ] == 1);
}

TEST_CASE("raw slot bytes and patches reach the backend unchanged") {
  rig r;
  // op 0x63, nr_segments 0, id 0x99 at offset 8.
  auto res = r.run(R"(
    raw 63 00 0000 00000000 9900000000000000
    push
    wait 1 1000
    expect 0x99 eopnotsupp
    req op=flush id=5
    patch 0 07
    push
    wait 1 1000
    expect 5 eopnotsupp
  )");
  CHECK(res.failures.empty());
  CHECK(r.be->ops_seen[0x63] == 1);
  CHECK(r.be->ops_seen[7] == 1);
  REQUIRE(res.responses.size() == 2);
  CHECK(res.responses[0].r.operation == 0x63);
}

TEST_CASE("indirect requests are built from scripted segment tables") {
  rig r;
  auto res = r.run(R"(
    pages data 2 rw
    pages ind 1 ro
    fill data:0 0x11
    fill data:1 0x22
    seg ind:0 0 data:0 0 7
    seg ind:0 1 data:1 0 7
    ireq iop=write nseg=2 id=3 sector=0 igref=ind:0
    push
    wait 1 1000
    expect 3 okay
  )");
  CHECK(res.failures.empty());
  CHECK(r.be->indirect_seen == 1);
  CHECK(r.be->disk[0] == std::byte{0x11});
  CHECK(r.be->disk[4096] == std::byte{0x22});
}

TEST_CASE("a failed expectation is reported with its line, and the script goes on") {
  rig r;
  auto res = r.run(R"(
    pages buf 1 ro
    req op=read id=1 sector=0 seg=buf:0:0:7
    push
    wait 1 1000
    expect 1 okay
    expect 42 okay
    wait 1 50
    expect-state 6 50
  )");
  // A read into a read-only grant fails; nothing answers id 42; no second
  // response; the backend stays Connected.
  REQUIRE(res.failures.size() == 4);
  CHECK(res.failures[0].starts_with("line 6:"));
  CHECK(res.failures[1].find("id 42") != std::string::npos);
  CHECK(res.failures[2].find("waited for 1") != std::string::npos);
  CHECK(res.failures[3].find("backend state is 4") != std::string::npos);
}

TEST_CASE("req-prod far ahead: the backend sees a hostile index and answers nothing") {
  rig r;
  auto res = r.run(R"(
    req-prod +1000
    expect-no-response 50
    expect-state connected 10
  )");
  CHECK(res.failures.empty());
  CHECK(r.be->bad_requests == 1);
  CHECK(r.q->ring.shared_req_prod() == 1000);
}

TEST_CASE("a segment may point at the ring page itself") {
  rig r;
  auto res = r.run(R"(
    req op=write id=1 sector=0 seg=ring:0:0:0
    push
    wait 1 1000
  )");
  CHECK(res.failures.empty());
  // The ring header (req_prod = 1) was written to sector 0.
  std::uint32_t prod;
  std::memcpy(&prod, r.be->disk.data(), 4);
  CHECK(prod == 1);
}

TEST_CASE("unknown pool names stop the script") {
  rig r;
  auto res = r.run("fill nope:0 1\npush\n");
  REQUIRE(res.failures.size() == 1);
  CHECK(res.commands == 1);
}

TEST_CASE("dreq builds a discard request in the ring's layout") {
  CHECK(error_of("dreq sector=0 nr=8 bogus=1").message.find("bogus") != std::string::npos);
  CHECK(error_of("dreq flag=256").message.find("flag") != std::string::npos);
  CHECK(error_of("dreq 5").message.find("key=value") != std::string::npos);
  for (const char* proto : {"x86_64-abi", "x86_32-abi"}) {
    CAPTURE(proto);
    rig r(proto);
    std::memset(r.be->disk.data() + 8 * 512, 0x5a, 16 * 512);
    auto res = r.run(
        "dreq id=40 sector=8 nr=8\n"
        "dreq id=41 sector=16 nr=8 flag=secure\n"
        "dreq sector=2048 nr=1\n"  // beyond the end: ERROR
        "push\n"
        "wait 3\n"
        "expect 40 okay\n"
        "expect 41 okay\n"
        "expect 42 error\n");
    CHECK(res.failures.empty());
    REQUIRE(r.be->discards.size() == 3);
    CHECK(r.be->discards[0].sector == 8);
    CHECK(r.be->discards[0].nr_sectors == 8);
    CHECK(r.be->discards[0].flag == 0);
    CHECK(r.be->discards[1].flag == BLKIF_DISCARD_SECURE);
    for (std::size_t i = 8 * 512; i < 24 * 512; ++i) CHECK(r.be->disk[i] == std::byte{0});
    REQUIRE(res.responses.size() == 3);
    CHECK(res.responses[0].r.operation == BLKIF_OP_DISCARD);
    for (auto h : r.be->handles_seen) CHECK(h == 0xca00);
  }
}

TEST_CASE("scripted requests work over an x86_32 ring, raw slots are 108 bytes there") {
  rig r("x86_32-abi");
  auto res = r.run(
      "pages buf 1 rw\n"
      "fill buf:0 0x33\n"
      "req op=write id=7 sector=0 seg=buf:0:0:7\n"
      "req op=0x63 id=8\n"
      "push\n"
      "wait 2\n"
      "expect 7 okay\n"
      "expect 8 eopnotsupp\n");
  CHECK(res.failures.empty());
  CHECK(r.be->disk[4095] == std::byte{0x33});
  CHECK(r.be->ids_seen == std::vector<std::uint64_t>{7, 8});
  auto script = raw_file_script(std::string(216, '\0'), r.layout->slot_size(), std::chrono::milliseconds(100));
  REQUIRE(std::holds_alternative<std::vector<command>>(script));
  CHECK(std::get<std::vector<command>>(script).size() == 4);  // two slots, push, wait
}

TEST_CASE("every script wait is bounded by --timeout, whatever it asks for") {
  rig r;
  r.be->faults.silent = true;
  const auto t0 = std::chrono::steady_clock::now();
  // Each asks for 5 s (a regression takes 15 s and fails, not hangs).
  auto res = r.run("req op=read id=1 sector=0\npush\nwait 1 5000\nsleep 5000\nexpect-state closed 5000\n", 4,
                   std::chrono::milliseconds(100));
  const auto took = std::chrono::steady_clock::now() - t0;
  CHECK(took >= std::chrono::milliseconds(300));
  CHECK(took < std::chrono::seconds(2));
  CHECK(res.commands == 5);
  CHECK(res.failures.size() == 2);  // the wait and the state
  CHECK_FALSE(res.interrupted);
}

TEST_CASE("a signal ends the script at once: the wait it cut short is no failure, nothing after it runs") {
  rig r;
  r.be->faults.silent = true;
  int turns = 0;
  r.p.backend = [&] {
    if (++turns == 3) r.p.stop_at = std::chrono::steady_clock::now();
    return r.be->service();
  };
  const auto t0 = std::chrono::steady_clock::now();
  auto res = r.run("req op=read id=1 sector=0\npush\nwait 1 60000\nexpect 1 okay\nsleep 60000\n");
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(1));
  CHECK(res.interrupted);
  CHECK(res.commands == 3);
  CHECK(res.failures.empty());
}

TEST_CASE("expect-held: whether the backend still holds a grant, checked against what it keeps") {
  rig r;
  auto res = r.run(R"(
    pages buf 2 rw
    req op=write id=1 sector=0 seg=buf:0:0:7
    push
    wait 1 1000
    expect-held buf:0 no
    expect-held buf:0 yes
  )");
  REQUIRE(res.failures.size() == 1);
  CHECK(res.failures[0].starts_with("line 7:"));
  CHECK(res.failures[0].find("does not hold grant") != std::string::npos);
  // A backend that keeps what it mapped (persistent grants, or one that
  // did not unmap before answering).
  r.be->faults.keep_mapped = true;
  res = r.run(R"(
    pages buf 1 rw
    req op=read id=2 sector=0 seg=buf:0:0:7
    push
    wait 1 1000
    expect-held buf:0 no
  )");
  REQUIRE(res.failures.size() == 1);
  CHECK(res.failures[0].find("the backend holds grant") != std::string::npos);
  CHECK(error_of("expect-held buf:0 maybe\n").message.find("yes or no") != std::string::npos);
}
