// The configuration file: defaults, every key, and an exact FILE:LINE:COL
// for every kind of mistake.
#include "blkback/config.hpp"

#include <doctest/doctest.h>
#include <toml++/toml.h>

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>

using namespace xbd::blkback;

namespace {

settings parse(std::string_view text) { return parse_settings(text, "test.toml"); }

// The message of the config_error that parsing `text` throws.
std::string error_of(std::string_view text) {
  try {
    parse(text);
  } catch (const config_error& e) {
    return e.what();
  }
  FAIL("no config_error for:\n" << text);
  return {};
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The shipped file with every "#key = value" line (a default shown
// commented out) made live.
std::string shipped_with_defaults_uncommented() {
  static const std::regex commented_setting(R"(^#([a-z-]+ = ))", std::regex::multiline);
  return std::regex_replace(read_file(XBD_SHIPPED_CONFIG), commented_setting, "$1");
}

void check_defaults(const settings& s) {
  CHECK(s.backend_types == std::vector<std::string>{"qdisk"});
  CHECK_FALSE(s.domid.has_value());
  CHECK(s.max_ring_page_order == 4);
  CHECK(s.direct_io == direct_io_policy::follow_key);
  CHECK(s.worker_threads == 0);
  CHECK(s.max_queues == 0);
  CHECK(s.max_indirect_segments == 256);
  CHECK(s.default_protocol == ring_protocol::native);
  CHECK(s.poll_microseconds == 50);
  CHECK(s.discard == true);
  CHECK(s.resize_poll_seconds == 1);
  CHECK(s.control.socket == "/run/xen-blkbackd/control.sock");
  CHECK(s.log.level == severity::info);
  CHECK(s.log.sink == "stderr");
}

}  // namespace

TEST_CASE("an empty file gives every default") {
  SUBCASE("nothing at all") { check_defaults(parse("")); }
  SUBCASE("comments, blank lines and empty tables") {
    check_defaults(parse("# nothing here\n\n[backend]\n[rings]\n[io]\n[log]\n"));
  }
  check_defaults(settings{});
}

TEST_CASE("the shipped conf/xen-blkbackd.toml parses to the defaults") {
  CHECK(load_settings(XBD_SHIPPED_CONFIG) == settings{});
}

TEST_CASE("the defaults shown commented out in the shipped file are the real defaults, and every key is there") {
  const std::string text = shipped_with_defaults_uncommented();
  CHECK(parse_settings(text, "shipped-uncommented") == settings{});

  const toml::table root = toml::parse(text);
  for (const char* key : {"backend.types",
                          "rings.max-ring-page-order",
                          "rings.max-queues",
                          "rings.max-indirect-segments",
                          "rings.default-protocol",
                          "rings.poll-microseconds",
                          "io.direct-io",
                          "io.worker-threads",
                          "io.discard",
                          "io.resize-poll-seconds",
                          "io.open-timeout-seconds",
                          "io.sector-size",
                          "io.buffer-memory",
                          "io.journal",
                          "io.journal-directory",
                          "io.zero-copy",
                          "io.zero-copy-min-bytes",
                          "io.persistent-grants",
                          "io.persistent-grants-per-ring",
                          "nbd.connect-timeout-seconds",
                          "nbd.reconnect-seconds",
                          "images.qemu-storage-daemon",
                          "images.start-timeout-seconds",
                          "images.runtime-directory",
                          "rbd.cluster",
                          "rbd.conf",
                          "rbd.client-id",
                          "rbd.connect-timeout-seconds",
                          "rbd.op-timeout-seconds",
                          "control.socket",
                          "log.level",
                          "log.sink",
                          "limits.iops-total",
                          "limits.iops-read",
                          "limits.iops-write",
                          "limits.bps-total",
                          "limits.bps-read",
                          "limits.bps-write",
                          "limits.iops-total-max",
                          "limits.bps-write-max",
                          "limits.iops-total-max-length",
                          "limits.bps-write-max-length",
                          "limits.iops-size",
                          "limits.group"}) {
    CAPTURE(key);
    CHECK(root.at_path(key).node() != nullptr);
  }
  // domid has no default value to show: absent means "ask xenstore".
  CHECK(root.at_path("backend.domid").node() == nullptr);
  CHECK(text.find("# domid = ") != std::string::npos);
}

TEST_CASE("every key is read into its setting") {
  const settings s = parse(R"(
[backend]
types = ["qdisk", "vbd3"]
domid = 7

[rings]
max-ring-page-order = 2
max-queues = 3
max-indirect-segments = 64
default-protocol = "x86_32-abi"
poll-microseconds = 200

[io]
direct-io = "never"
worker-threads = 5
discard = false
resize-poll-seconds = 30
buffer-memory = "64MiB"
journal = false
journal-directory = "/var/lib/xbd"

[nbd]
connect-timeout-seconds = 3
reconnect-seconds = 0

[images]
qemu-storage-daemon = "/opt/qemu/bin/qemu-storage-daemon"
start-timeout-seconds = 20
runtime-directory = "/run/xbd-images"

[rbd]
cluster = "backup"
conf = "/etc/ceph/backup.conf"
client-id = "xen.host-7"
connect-timeout-seconds = 4
op-timeout-seconds = 0

[control]
socket = "/run/xbd/ctl"

[log]
level = "debug"
sink = "file:/var/log/xen-blkbackd.log"
)");
  CHECK(s.backend_types == std::vector<std::string>{"qdisk", "vbd3"});
  CHECK(s.domid == 7u);
  CHECK(s.max_ring_page_order == 2);
  CHECK(s.max_queues == 3);
  CHECK(s.max_indirect_segments == 64);
  CHECK(s.default_protocol == ring_protocol::x86_32);
  CHECK(s.poll_microseconds == 200);
  CHECK(s.direct_io == direct_io_policy::never);
  CHECK(s.worker_threads == 5);
  CHECK(s.discard == false);
  CHECK(s.resize_poll_seconds == 30);
  CHECK(s.buffer_memory == 64u << 20);
  CHECK_FALSE(s.journal);
  CHECK(s.journal_directory == "/var/lib/xbd");
  CHECK(s.nbd.connect_timeout_seconds == 3);
  CHECK(s.nbd.reconnect_seconds == 0);
  CHECK(s.images.program == "/opt/qemu/bin/qemu-storage-daemon");
  CHECK(s.images.start_timeout_seconds == 20);
  CHECK(s.images.runtime_directory == "/run/xbd-images");
  CHECK(s.rbd.cluster == "backup");
  CHECK(s.rbd.conf == "/etc/ceph/backup.conf");
  CHECK(s.rbd.client_id == "xen.host-7");
  CHECK(s.rbd.connect_timeout_seconds == 4);
  CHECK(s.rbd.op_timeout_seconds == 0);
  CHECK(s.control.socket == "/run/xbd/ctl");
  CHECK(s.log.level == severity::debug);
  CHECK(s.log.sink == "file:/var/log/xen-blkbackd.log");
}

TEST_CASE("dotted keys at top level mean the same as tables") {
  const settings s = parse("io.direct-io = \"always\"\nlog.level = \"error\"\n");
  CHECK(s.direct_io == direct_io_policy::always);
  CHECK(s.log.level == severity::error);
}

TEST_CASE("every spelling of the enumerations is accepted") {
  SUBCASE("direct-io") {
    CHECK(parse("io.direct-io = \"auto\"").direct_io == direct_io_policy::follow_key);
    CHECK(parse("io.direct-io = \"never\"").direct_io == direct_io_policy::never);
    CHECK(parse("io.direct-io = \"always\"").direct_io == direct_io_policy::always);
  }
  SUBCASE("default-protocol") {
    CHECK(parse("rings.default-protocol = \"native\"").default_protocol == ring_protocol::native);
    CHECK(parse("rings.default-protocol = \"x86_32-abi\"").default_protocol == ring_protocol::x86_32);
    CHECK(parse("rings.default-protocol = \"x86_64-abi\"").default_protocol == ring_protocol::x86_64);
  }
  SUBCASE("log level") {
    CHECK(parse("log.level = \"trace\"").log.level == severity::trace);
    CHECK(parse("log.level = \"debug\"").log.level == severity::debug);
    CHECK(parse("log.level = \"info\"").log.level == severity::info);
    CHECK(parse("log.level = \"warning\"").log.level == severity::warning);
    CHECK(parse("log.level = \"warn\"").log.level == severity::warning);
    CHECK(parse("log.level = \"error\"").log.level == severity::error);
  }
  SUBCASE("log sink") {
    CHECK(parse("log.sink = \"stderr\"").log.sink == "stderr");
    CHECK(parse("log.sink = \"syslog\"").log.sink == "syslog");
    CHECK(parse("log.sink = \"file:/x.log\"").log.sink == "file:/x.log");
  }
}

TEST_CASE("the bounds of every number are accepted") {
  CHECK(parse("backend.domid = 0").domid == 0u);
  CHECK(parse("backend.domid = 32751").domid == 32751u);
  CHECK(parse("rings.max-ring-page-order = 0").max_ring_page_order == 0);
  CHECK(parse("rings.max-ring-page-order = 8").max_ring_page_order == 8);
  CHECK(parse("rings.max-queues = 256").max_queues == 256);
  CHECK(parse("rings.max-indirect-segments = 0").max_indirect_segments == 0);
  CHECK(parse("rings.max-indirect-segments = 12").max_indirect_segments == 12);
  CHECK(parse("rings.max-indirect-segments = 4096").max_indirect_segments == 4096);
  CHECK(parse("rings.poll-microseconds = 0").poll_microseconds == 0);
  CHECK(parse("rings.poll-microseconds = 1000").poll_microseconds == 1000);
  CHECK(parse("io.worker-threads = 256").worker_threads == 256);
  CHECK(parse("io.resize-poll-seconds = 86400").resize_poll_seconds == 86400);
  CHECK(parse("io.open-timeout-seconds = 1").open_timeout_seconds == 1);
  CHECK(parse("io.open-timeout-seconds = 3600").open_timeout_seconds == 3600);
  CHECK(parse("io.sector-size = 0").sector_size == 0);
  CHECK(parse("io.sector-size = 512").sector_size == 512);
  CHECK(parse("io.sector-size = 4096").sector_size == 4096);
  CHECK(parse("nbd.connect-timeout-seconds = 1").nbd.connect_timeout_seconds == 1);
  CHECK(parse("nbd.reconnect-seconds = 86400").nbd.reconnect_seconds == 86400);
  CHECK(parse("images.start-timeout-seconds = 86400").images.start_timeout_seconds == 86400);
}

TEST_CASE("network and image settings refuse what cannot work, at the value") {
  CHECK_THROWS_WITH_AS(parse("nbd.connect-timeout-seconds = 0"), doctest::Contains(":1:"), config_error);
  CHECK_THROWS_WITH_AS(parse("nbd.reconnect-seconds = 86401"), doctest::Contains(":1:"), config_error);
  CHECK_THROWS_WITH_AS(parse("images.qemu-storage-daemon = \"\""),
                       doctest::Contains("images.qemu-storage-daemon must name a program"), config_error);
  CHECK_THROWS_WITH_AS(parse("images.runtime-directory = \"run/x\""),
                       doctest::Contains("images.runtime-directory must be an absolute path"), config_error);
  CHECK_THROWS_WITH_AS(parse("[nbd]\nreconect-seconds = 5"), doctest::Contains("reconect-seconds"), config_error);
  CHECK_THROWS_WITH_AS(parse("rbd.conf = \"etc/ceph.conf\""), doctest::Contains("rbd.conf must be an absolute path"),
                       config_error);
  CHECK_THROWS_WITH_AS(parse("rbd.client-id = \"client xen\""), doctest::Contains("rbd.client-id must be"),
                       config_error);
  CHECK_THROWS_WITH_AS(parse("rbd.cluster = \"\""), doctest::Contains("rbd.cluster must be"), config_error);
  CHECK_THROWS_WITH_AS(parse("rbd.connect-timeout-seconds = 0"), doctest::Contains(":1:"), config_error);
  CHECK_THROWS_WITH_AS(parse("rbd.op-timeout-seconds = 86401"), doctest::Contains(":1:"), config_error);
  CHECK(parse("rbd.conf = \"\"").rbd.conf.empty());
}

TEST_CASE("control.socket is an absolute path a unix socket can have, or empty for none") {
  CHECK(parse("control.socket = \"\"").control.socket.empty());
  CHECK(parse("control.socket = \"/" + std::string(106, 'a') + "\"").control.socket.size() == 107);
  CHECK_THROWS_WITH_AS(parse("control.socket = \"run/ctl\""),
                       doctest::Contains("test.toml:1:18: control.socket must be an absolute path"), config_error);
  CHECK_THROWS_WITH_AS(parse("control.socket = \"/" + std::string(107, 'a') + "\""),
                       doctest::Contains("control.socket must be at most 107 bytes"), config_error);
  CHECK_THROWS_WITH_AS(parse("[control]\nsockets = \"/x\""), doctest::Contains("unknown key 'sockets' in [control]"),
                       config_error);
}

TEST_CASE("zero-copy and persistent grants: defaults, values and clear errors") {
  const settings d = parse("");
  CHECK_FALSE(d.zero_copy);
  CHECK(d.zero_copy_min_bytes == 128u << 10);
  CHECK(d.persistent_grants);
  CHECK(d.persistent_grants_per_ring == 1056u);
  const settings s = parse(
      "[io]\nzero-copy = true\nzero-copy-min-bytes = \"0\"\npersistent-grants = false\n"
      "persistent-grants-per-ring = 64\n");
  CHECK(s.zero_copy);
  CHECK(s.zero_copy_min_bytes == 0u);
  CHECK_FALSE(s.persistent_grants);
  CHECK(s.persistent_grants_per_ring == 64u);
  CHECK(parse("io.zero-copy-min-bytes = \"1MiB\"").zero_copy_min_bytes == 1u << 20);
  CHECK(error_of("[io]\nzero-copy-min-bytes = \"32MiB\"\n") ==
        "test.toml:2:23: io.zero-copy-min-bytes must be a size from \"0\" to \"16MiB\" such as \"64KiB\", got "
        "\"32MiB\"");
  CHECK(error_of("[io]\nzero-copy-min-bytes = \"lots\"\n").find("must be a size") != std::string::npos);
  CHECK(error_of("[io]\npersistent-grants-per-ring = 0\n").find("io.persistent-grants-per-ring") != std::string::npos);
  CHECK(error_of("[io]\npersistent-grants = \"yes\"\n").find("io.persistent-grants") != std::string::npos);
  CHECK(describe(s).find("zero-copy=true zero-copy-min-bytes=0 persistent-grants=false "
                         "persistent-grants-per-ring=64") != std::string::npos);
}

TEST_CASE("buffer-memory is a size with a binary unit, within its bounds") {
  CHECK(parse("io.buffer-memory = \"16MiB\"").buffer_memory == 16u << 20);
  CHECK(parse("io.buffer-memory = \"1GiB\"").buffer_memory == std::uint64_t{1} << 30);
  CHECK(parse("io.buffer-memory = \"2G\"").buffer_memory == std::uint64_t{2} << 30);
  CHECK(parse("io.buffer-memory = \"1TiB\"").buffer_memory == std::uint64_t{1} << 40);
  CHECK(parse("io.buffer-memory = \"33554432\"").buffer_memory == 32u << 20);
  CHECK(error_of("[io]\nbuffer-memory = \"15MiB\"\n") ==
        "test.toml:2:17: io.buffer-memory must be 16MiB..1TiB, got \"15MiB\"");
  CHECK(error_of("[io]\nbuffer-memory = \"2TiB\"\n") ==
        "test.toml:2:17: io.buffer-memory must be 16MiB..1TiB, got \"2TiB\"");
  CHECK(error_of("[io]\nbuffer-memory = \"256 MB\"\n") ==
        "test.toml:2:17: io.buffer-memory must be a size such as \"256MiB\" or \"1GiB\", got \"256 MB\"");
  CHECK(error_of("[io]\nbuffer-memory = 268435456\n") ==
        "test.toml:2:17: io.buffer-memory must be a string, not an integer");
  CHECK(error_of("[io]\nbuffer-memory = \"99999999999999999999G\"\n").find("must be a size") != std::string::npos);
  CHECK(parse_size("18446744073709551615T") == std::nullopt);
  CHECK(error_of("[io]\njournal-directory = \"run/x\"\n") ==
        "test.toml:2:21: io.journal-directory must be an absolute path, got \"run/x\"");
  CHECK(parse_size("") == std::nullopt);
  CHECK(parse_size("MiB") == std::nullopt);
  CHECK(format_size(3u << 20) == "3MiB");
  CHECK(format_size(1536) == "1536");
}

TEST_CASE("an unknown key at top level is an error at its line") {
  CHECK(error_of("# a comment\n\nverbose = true\n") == "test.toml:3:1: unknown key 'verbose'");
  CHECK(error_of("[bogus]\nx = 1\n") == "test.toml:1:2: unknown table [bogus]");
}

TEST_CASE("an unknown key in a table is an error naming the table and the line") {
  CHECK(error_of("[io]\nworker-threads = 2\ndirekt-io = \"never\"\n") ==
        "test.toml:3:1: unknown key 'direkt-io' in [io]");
  CHECK(error_of("[log]\n  level = \"info\"\n  colour = true\n") == "test.toml:3:3: unknown key 'colour' in [log]");
  CHECK(error_of("[rings]\n[rings.extra]\nx = 1\n") == "test.toml:2:8: unknown key 'extra' in [rings]");
}

TEST_CASE("an unknown key that is a near miss says what was meant") {
  CHECK(error_of("[rings]\nmax_queues = 2\n") ==
        "test.toml:2:1: unknown key 'max_queues' in [rings] (did you mean 'max-queues'?)");
  CHECK(error_of("[rings]\nworker-threads = 2\n") ==
        "test.toml:2:1: unknown key 'worker-threads' in [rings] ('worker-threads' belongs in [io])");
  CHECK(error_of("discard = false\n") == "test.toml:1:1: unknown key 'discard' ('discard' belongs in [io])");
  CHECK(error_of("[IO]\n") == "test.toml:1:2: unknown table [IO] (did you mean [io]?)");
}

TEST_CASE("a value of the wrong type is an error at the value") {
  CHECK(error_of("[rings]\nmax-ring-page-order = \"4\"\n") ==
        "test.toml:2:23: rings.max-ring-page-order must be an integer, not a string");
  CHECK(error_of("[io]\ndiscard = 1\n") == "test.toml:2:11: io.discard must be true or false, not an integer");
  CHECK(error_of("[io]\ndirect-io = true\n") == "test.toml:2:13: io.direct-io must be a string, not a boolean");
  CHECK(error_of("[io]\nworker-threads = 2.0\n") ==
        "test.toml:2:18: io.worker-threads must be an integer, not a floating-point number");
  CHECK(error_of("\nio = 5\n") == "test.toml:2:6: io must be a table, not an integer");
  CHECK(error_of("[backend]\ntypes = \"qdisk\"\n") ==
        "test.toml:2:9: backend.types must be an array of strings, not a string");
  CHECK(error_of("[backend]\ntypes = [\"qdisk\", 5]\n") ==
        "test.toml:2:19: backend.types entries must be strings, not an integer");
}

TEST_CASE("a number out of range is an error at the value") {
  CHECK(error_of("[rings]\nmax-ring-page-order = 9\n") ==
        "test.toml:2:23: rings.max-ring-page-order must be 0..8, got 9");
  CHECK(error_of("[rings]\nmax-queues = 257\n") == "test.toml:2:14: rings.max-queues must be 0..256, got 257");
  CHECK(error_of("[rings]\npoll-microseconds = 1001\n") ==
        "test.toml:2:21: rings.poll-microseconds must be 0..1000, got 1001");
  CHECK(error_of("[rings]\npoll-microseconds = -1\n") ==
        "test.toml:2:21: rings.poll-microseconds must be 0..1000, got -1");
  CHECK(error_of("[io]\nworker-threads = 257\n") == "test.toml:2:18: io.worker-threads must be 0..256, got 257");
  CHECK(error_of("[io]\nworker-threads = -1\n") == "test.toml:2:18: io.worker-threads must be 0..256, got -1");
  CHECK(error_of("[io]\nresize-poll-seconds = 86401\n") ==
        "test.toml:2:23: io.resize-poll-seconds must be 0..86400, got 86401");
  CHECK(error_of("[io]\nopen-timeout-seconds = 0\n") ==
        "test.toml:2:24: io.open-timeout-seconds must be 1..3600, got 0");
  CHECK(error_of("[io]\nsector-size = 1000\n") ==
        "test.toml:2:15: io.sector-size must be 0 (from the store), 512, 1024, 2048 or 4096, got 1000");
  CHECK(error_of("[io]\nsector-size = 8192\n") ==
        "test.toml:2:15: io.sector-size must be 0 (from the store), 512, 1024, 2048 or 4096, got 8192");
  CHECK(error_of("[backend]\ndomid = 32752\n") == "test.toml:2:9: backend.domid must be 0..32751, got 32752");
  CHECK(error_of("[backend]\ndomid = -1\n") == "test.toml:2:9: backend.domid must be 0..32751, got -1");
  CHECK(error_of("[rings]\nmax-indirect-segments = 4097\n") ==
        "test.toml:2:25: rings.max-indirect-segments must be 0 (off) or 12..4096, got 4097");
  CHECK(error_of("[rings]\nmax-indirect-segments = 11\n") ==
        "test.toml:2:25: rings.max-indirect-segments must be 0 (off) or 12..4096, got 11: "
        "a direct request already carries 11 segments");
}

TEST_CASE("an enumeration string that is not one of its values is an error at the value") {
  CHECK(error_of("[io]\ndirect-io = \"sometimes\"\n") ==
        "test.toml:2:13: io.direct-io must be \"auto\", \"never\" or \"always\", got \"sometimes\"");
  CHECK(error_of("[rings]\ndefault-protocol = \"x86_32\"\n") ==
        "test.toml:2:20: rings.default-protocol must be \"native\", \"x86_32-abi\" or \"x86_64-abi\", got \"x86_32\"");
  CHECK(error_of("[log]\nlevel = \"verbose\"\n") ==
        "test.toml:2:9: log.level must be \"trace\", \"debug\", \"info\", \"warning\" or \"error\", got \"verbose\"");
  CHECK(error_of("[log]\nsink = \"journal\"\n") ==
        "test.toml:2:8: log.sink must be \"stderr\", \"syslog\" or \"file:/absolute/path\", got \"journal\"");
  CHECK(error_of("[log]\nsink = \"file:blkback.log\"\n") ==
        "test.toml:2:8: log.sink: the file must be an absolute path (\"file:/var/log/...\"), got \"file:blkback.log\"");
  CHECK(error_of("[log]\nsink = \"file:\"\n") ==
        "test.toml:2:8: log.sink: the file must be an absolute path (\"file:/var/log/...\"), got \"file:\"");
  // A control character in the value does not break the message's line.
  CHECK(error_of("[io]\ndirect-io = \"a\\nb\"\n") ==
        "test.toml:2:13: io.direct-io must be \"auto\", \"never\" or \"always\", got \"a\\x0ab\"");
}

TEST_CASE("a TOML syntax error, a duplicate key included, is an error at its line") {
  const auto starts_with = [](const std::string& s, std::string_view prefix) { return s.starts_with(prefix); };
  std::string e = error_of("[io]\ndiscard = true\ndiscard = false\n");
  CAPTURE(e);
  CHECK(starts_with(e, "test.toml:3:"));
  CHECK(e.find("discard") != std::string::npos);
  e = error_of("[io]\nworker-threads 4\n");
  CAPTURE(e);
  CHECK(starts_with(e, "test.toml:2:"));
  e = error_of("[io]\n[log]\n[io]\n");
  CAPTURE(e);
  CHECK(starts_with(e, "test.toml:3:"));
  e = error_of("[log]\nlevel = \"info\n");
  CAPTURE(e);
  CHECK(starts_with(e, "test.toml:2:"));
}

TEST_CASE("backend types must be non-empty, unique, valid xenstore names") {
  CHECK(error_of("[backend]\ntypes = []\n") == "test.toml:2:9: backend.types must name at least one backend type");
  CHECK(error_of("[backend]\ntypes = [\"Qdisk\"]\n") ==
        "test.toml:2:10: backend.types: \"Qdisk\" is not a backend type name (lower-case letters, digits, '-' and "
        "'_')");
  CHECK(error_of("[backend]\ntypes = [\"qdisk\", \"../vbd\"]\n") ==
        "test.toml:2:19: backend.types: \"../vbd\" is not a backend type name (lower-case letters, digits, '-' and "
        "'_')");
  CHECK(error_of("[backend]\ntypes = [\"\"]\n") ==
        "test.toml:2:10: backend.types: \"\" is not a backend type name (lower-case letters, digits, '-' and '_')");
  CHECK(error_of("[backend]\ntypes = [\"qdisk\", \"vbd\", \"qdisk\"]\n") ==
        "test.toml:2:26: backend.types: \"qdisk\" is listed twice");
  CHECK(parse("backend.types = [\"vbd\", \"qdisk\", \"tap_2-x\"]").backend_types ==
        std::vector<std::string>{"vbd", "qdisk", "tap_2-x"});
}

TEST_CASE("of several problems, the first in file order is reported") {
  // toml++ keeps keys sorted; the report must follow the file, not the map.
  CHECK(error_of("zzz = 1\naaa = 2\n") == "test.toml:1:1: unknown key 'zzz'");
  CHECK(error_of("[log]\nlevel = \"loud\"\n[io]\nworker-threads = 999\n").starts_with("test.toml:2:9: log.level"));
  CHECK(error_of("[io]\nworker-threads = 999\ndirect-io = \"x\"\n").starts_with("test.toml:2:18: io.worker-threads"));
}

TEST_CASE("config_error carries the line and column") {
  try {
    parse("\n\n   bogus = 1\n");
    FAIL("no error");
  } catch (const config_error& e) {
    CHECK(e.line() == 3);
    CHECK(e.column() == 4);
  }
}

TEST_CASE("load_settings names the file in its errors") {
  char dir_template[] = "/tmp/xbd-config-test-XXXXXX";
  REQUIRE(::mkdtemp(dir_template) != nullptr);
  const std::string dir = dir_template;
  const std::string file = dir + "/blkbackd.toml";

  SUBCASE("a problem in the file") {
    std::ofstream(file) << "[io]\n\ndirect-io = \"maybe\"\n";
    try {
      load_settings(file);
      FAIL("no error");
    } catch (const config_error& e) {
      CHECK(std::string(e.what()) ==
            file + ":3:13: io.direct-io must be \"auto\", \"never\" or \"always\", got \"maybe\"");
    }
  }
  SUBCASE("a good file") {
    std::ofstream(file) << "[io]\nworker-threads = 3\n";
    CHECK(load_settings(file).worker_threads == 3);
  }
  SUBCASE("a missing file") {
    CHECK_THROWS_WITH_AS(load_settings(dir + "/missing.toml"),
                         (dir + "/missing.toml: cannot open: No such file or directory").c_str(), config_error);
  }
  SUBCASE("a directory") {
    CHECK_THROWS_WITH_AS(load_settings(dir), (dir + ": cannot read: Is a directory").c_str(), config_error);
  }
  std::remove(file.c_str());
  ::rmdir(dir.c_str());
}

TEST_CASE("describe() is one line with every setting") {
  CHECK(describe(settings{}) ==
        "types=qdisk domid=xenstore max-ring-page-order=4 max-queues=auto max-indirect-segments=256 "
        "default-protocol=native poll-microseconds=50 direct-io=auto worker-threads=auto discard=true "
        "resize-poll-seconds=1 open-timeout-seconds=30 "
        "sector-size=auto buffer-memory=256MiB journal=true journal-directory=/run/xen-blkbackd "
        "zero-copy=false zero-copy-min-bytes=128KiB persistent-grants=true persistent-grants-per-ring=1056 "
        "nbd.connect-timeout-seconds=10 "
        "nbd.reconnect-seconds=30 images.qemu-storage-daemon=qemu-storage-daemon images.start-timeout-seconds=10 "
        "images.runtime-directory=/run/xen-blkbackd/images rbd.cluster=ceph rbd.conf=default rbd.client-id=admin "
        "rbd.connect-timeout-seconds=10 rbd.op-timeout-seconds=60 control.socket=/run/xen-blkbackd/control.sock "
        "log.level=info log.sink=stderr limits=none");
  settings s;
  s.backend_types = {"qdisk", "vbd"};
  s.domid = 3;
  s.max_ring_page_order = 0;
  s.max_queues = 2;
  s.max_indirect_segments = 0;
  s.default_protocol = ring_protocol::x86_32;
  s.poll_microseconds = 0;
  s.direct_io = direct_io_policy::always;
  s.worker_threads = 4;
  s.discard = false;
  s.resize_poll_seconds = 10;
  s.buffer_memory = std::uint64_t{3} << 30;
  s.log = {severity::warning, "syslog"};
  CHECK(describe(s) ==
        "types=qdisk,vbd domid=3 max-ring-page-order=0 max-queues=2 max-indirect-segments=0 "
        "default-protocol=x86_32-abi poll-microseconds=0 direct-io=always worker-threads=4 discard=false "
        "resize-poll-seconds=10 open-timeout-seconds=30 "
        "sector-size=auto buffer-memory=3GiB journal=true journal-directory=/run/xen-blkbackd "
        "zero-copy=false zero-copy-min-bytes=128KiB persistent-grants=true persistent-grants-per-ring=1056 "
        "nbd.connect-timeout-seconds=10 "
        "nbd.reconnect-seconds=30 images.qemu-storage-daemon=qemu-storage-daemon images.start-timeout-seconds=10 "
        "images.runtime-directory=/run/xen-blkbackd/images rbd.cluster=ceph rbd.conf=default rbd.client-id=admin "
        "rbd.connect-timeout-seconds=10 rbd.op-timeout-seconds=60 control.socket=/run/xen-blkbackd/control.sock "
        "log.level=warning log.sink=syslog limits=none");
}

TEST_CASE("[limits] takes QEMU's throttle names as every vbd's defaults") {
  const settings s = parse(
      "[limits]\niops-total = 1000\niops-total-max = 2000\niops-total-max-length = 3\n"
      "bps-read = 10485760\niops-size = 8192\ngroup = \"domain\"\n");
  const throttle_limits l = s.io_limits.limits();
  CHECK(l[throttle_kind::iops_total].avg == 1000);
  CHECK(l[throttle_kind::iops_total].max == 2000);
  CHECK(l[throttle_kind::iops_total].max_length == 3);
  CHECK(l[throttle_kind::bps_read].avg == 10485760);
  CHECK(l.iops_size == 8192);
  CHECK(s.io_limits.group_name() == "domain");
  // What means "none" is the same as no key.
  CHECK(parse("[limits]\niops-total = 0\niops-read-max-length = 1\ngroup = \"\"\n") == settings{});
  CHECK(describe(s).ends_with(
      " limits=\"bps-read=10485760 iops-total=1000 iops-total-max=2000 iops-total-max-length=3 iops-size=8192 "
      "group=domain\""));
}

TEST_CASE("[limits] refuses bad values and limits that do not add up, at the value or the table") {
  CHECK(error_of("[limits]\niops-total = -1\n") == "test.toml:2:14: limits.iops-total must be 0 or more, got -1");
  CHECK(error_of("[limits]\niops-total = \"1000\"\n") ==
        "test.toml:2:14: limits.iops-total must be an integer, not a string");
  CHECK(error_of("[limits]\nbps-total = 1000000000000001\n") ==
        "test.toml:2:13: limits.bps-total must be at most 1000000000000000, got '1000000000000001'");
  CHECK(error_of("[limits]\niops = 5\n").find("unknown key 'iops' in [limits]") != std::string::npos);
  CHECK(error_of("[limits]\niops_total = 5\n").find("did you mean 'iops-total'?") != std::string::npos);
  CHECK(error_of("[limits]\niops-total = 100\niops-total-max = 10\n") ==
        "test.toml:1:1: [limits]: iops-total-max (10) is below iops-total (100)");
  CHECK(error_of("[limits]\nbps-write-max-length = 4\n") ==
        "test.toml:1:1: [limits]: bps-write-max-length needs bps-write-max");
  CHECK(error_of("[limits]\niops-total = 1\niops-write = 1\n") ==
        "test.toml:1:1: [limits]: iops-total cannot be combined with iops-read or iops-write");
  CHECK(error_of("[limits]\ngroup = \"a b\"\n").find("limits.group 'a b' is not a group name") != std::string::npos);
}
