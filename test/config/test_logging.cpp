// The daemon's log sink: line format, device attributes, level filtering,
// and switching sinks on SIGHUP without losing or doubling records.
#include "app/logging.hpp"

#include "blkback/log.hpp"

#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

using namespace xbd::blkback;
using xbd::app::reload_logging;
using xbd::app::setup_logging;

namespace {

class temp_dir {
 public:
  temp_dir() {
    char name[] = "/tmp/xbd-logging-test-XXXXXX";
    REQUIRE(::mkdtemp(name) != nullptr);
    path_ = name;
  }
  ~temp_dir() {
    for (const auto& f : files_) std::remove(f.c_str());
    ::rmdir(path_.c_str());
  }
  std::string file(const std::string& name) {
    files_.push_back(path_ + "/" + name);
    return files_.back();
  }

 private:
  std::string path_;
  std::vector<std::string> files_;
};

std::vector<std::string> lines_of(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

log_settings to_file(severity level, const std::string& path) { return {level, "file:" + path}; }

const std::string timestamp = R"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3} )";

void check_line(const std::string& line, const std::string& pattern) {
  CAPTURE(line);
  CAPTURE(pattern);
  CHECK(std::regex_match(line, std::regex(pattern)));
}

// Records go to a harmless place once a test is done with its files.
struct restore_stderr_sink {
  ~restore_stderr_sink() { reload_logging({severity::error, "stderr"}); }
};

}  // namespace

TEST_CASE("a record at each severity reaches a file sink with timestamp, severity and device") {
  temp_dir dir;
  const auto path = dir.file("all.log");
  restore_stderr_sink restore;
  setup_logging(to_file(severity::trace, path));

  auto dev = device_logger(5, 51712, "xvda");
  XBD_LOG(dev, trace) << "at trace";
  XBD_LOG(dev, debug) << "at debug";
  XBD_LOG(dev, info) << "connected: ring order " << 4 << ", event channel " << 17;
  XBD_LOG(dev, warning) << "at warning";
  XBD_LOG(dev, error) << "at error";
  auto no_vdev = device_logger(7, 768);
  XBD_LOG(no_vdev, info) << "without vdev";
  logger plain;
  XBD_LOG(plain, warning) << "about no device";

  const auto lines = lines_of(path);
  REQUIRE(lines.size() == 7);
  check_line(lines[0], timestamp + R"(trace \[d5/51712 xvda\] at trace)");
  check_line(lines[1], timestamp + R"(debug \[d5/51712 xvda\] at debug)");
  check_line(lines[2], timestamp + R"(info \[d5/51712 xvda\] connected: ring order 4, event channel 17)");
  check_line(lines[3], timestamp + R"(warning \[d5/51712 xvda\] at warning)");
  check_line(lines[4], timestamp + R"(error \[d5/51712 xvda\] at error)");
  check_line(lines[5], timestamp + R"(info \[d7/768\] without vdev)");
  check_line(lines[6], timestamp + R"(warning about no device)");

  // The timestamp is the local time of the record.
  std::tm tm{};
  REQUIRE(::strptime(lines[0].c_str(), "%Y-%m-%d %H:%M:%S", &tm) != nullptr);
  tm.tm_isdst = -1;
  CHECK(std::abs(std::difftime(std::mktime(&tm), std::time(nullptr))) < 60);
}

TEST_CASE("records below the configured level are dropped") {
  temp_dir dir;
  const auto path = dir.file("warning.log");
  restore_stderr_sink restore;
  setup_logging(to_file(severity::warning, path));

  auto dev = device_logger(1, 2);
  XBD_LOG(dev, trace) << "t";
  XBD_LOG(dev, debug) << "d";
  XBD_LOG(dev, info) << "i";
  XBD_LOG(dev, warning) << "w";
  XBD_LOG(dev, error) << "e";

  const auto lines = lines_of(path);
  REQUIRE(lines.size() == 2);
  check_line(lines[0], timestamp + R"(warning \[d1/2\] w)");
  check_line(lines[1], timestamp + R"(error \[d1/2\] e)");
}

TEST_CASE("a file sink appends to what the file already holds") {
  temp_dir dir;
  const auto path = dir.file("existing.log");
  std::ofstream(path) << "from an earlier run\n";
  restore_stderr_sink restore;
  setup_logging(to_file(severity::info, path));
  logger lg;
  XBD_LOG(lg, info) << "new";

  const auto lines = lines_of(path);
  REQUIRE(lines.size() == 2);
  CHECK(lines[0] == "from an earlier run");
  check_line(lines[1], timestamp + "info new");
}

TEST_CASE("reload switches the level and the file") {
  temp_dir dir;
  const auto first = dir.file("first.log");
  const auto second = dir.file("second.log");
  restore_stderr_sink restore;
  logger lg;

  setup_logging(to_file(severity::info, first));
  XBD_LOG(lg, debug) << "before, debug";
  XBD_LOG(lg, info) << "before, info";
  reload_logging(to_file(severity::debug, second));
  XBD_LOG(lg, debug) << "after, debug";
  XBD_LOG(lg, info) << "after, info";
  reload_logging(to_file(severity::error, first));
  XBD_LOG(lg, warning) << "last, warning";
  XBD_LOG(lg, error) << "last, error";

  const auto a = lines_of(first);
  REQUIRE(a.size() == 2);
  check_line(a[0], timestamp + "info before, info");
  check_line(a[1], timestamp + "error last, error");
  const auto b = lines_of(second);
  REQUIRE(b.size() == 2);
  check_line(b[0], timestamp + "debug after, debug");
  check_line(b[1], timestamp + "info after, info");
}

TEST_CASE("a reload to a file that cannot be opened throws and keeps the old sink and level") {
  temp_dir dir;
  const auto path = dir.file("kept.log");
  restore_stderr_sink restore;
  logger lg;

  setup_logging(to_file(severity::info, path));
  CHECK_THROWS_AS(reload_logging(to_file(severity::trace, "/nonexistent-dir/x.log")), std::system_error);
  XBD_LOG(lg, debug) << "still filtered";
  XBD_LOG(lg, info) << "still here";

  const auto lines = lines_of(path);
  REQUIRE(lines.size() == 1);
  check_line(lines[0], timestamp + "info still here");
}

TEST_CASE("control characters in a message or a device name cannot forge a log line") {
  temp_dir dir;
  const auto path = dir.file("escaped.log");
  restore_stderr_sink restore;
  setup_logging(to_file(severity::info, path));

  auto dev = device_logger(3, 768, "xvda\n2026-01-01 00:00:00.000 error");
  XBD_LOG(dev, info) << "name\r\nerror [d0/0] forged\x1b[31m";

  const auto lines = lines_of(path);
  REQUIRE(lines.size() == 1);
  check_line(lines[0], timestamp + R"(info \[d3/768 xvda\\x0a2026-01-01 00:00:00\.000 error\] )" +
                           R"(name\\x0d\\x0aerror \[d0/0\] forged\\x1b\[31m)");
}

TEST_CASE("no record is lost or written twice while another thread reloads the sink") {
  temp_dir dir;
  const auto a = dir.file("a.log");
  const auto b = dir.file("b.log");
  restore_stderr_sink restore;
  setup_logging(to_file(severity::info, a));

  constexpr int threads = 4;
  constexpr int per_thread = 3000;
  std::atomic<int> running{threads};
  std::vector<std::thread> writers;
  for (int t = 0; t < threads; ++t) {
    writers.emplace_back([t, &running] {
      logger lg;
      for (int i = 0; i < per_thread; ++i) XBD_LOG(lg, info) << "rec " << t << '-' << i;
      --running;
    });
  }
  int reloads = 0;
  while (running > 0) {
    reload_logging(to_file(severity::info, reloads % 2 == 0 ? b : a));
    ++reloads;
  }
  for (auto& w : writers) w.join();

  std::map<std::string, int> seen;
  std::size_t in_a = 0, in_b = 0, foreign = 0;
  for (const auto* file : {&a, &b}) {
    for (const auto& line : lines_of(*file)) {
      const auto pos = line.find("rec ");
      if (pos == std::string::npos)
        ++foreign;
      else
        ++seen[line.substr(pos)];
      ++(file == &a ? in_a : in_b);
    }
  }
  CAPTURE(reloads);
  CHECK(foreign == 0);
  // Which file got how many depends on scheduling (on a busy machine the
  // writers can finish between two reloads); that each record is in exactly
  // one of them does not.
  CHECK(in_a + in_b == std::size_t{threads * per_thread});
  CHECK(seen.size() == std::size_t{threads * per_thread});
  int wrong = 0;
  for (const auto& [rec, count] : seen) wrong += count != 1;
  CHECK(wrong == 0);
}

namespace {

// Runs `body` with fd 2 pointing at `path`.
template <class F>
void with_stderr_to(const std::string& path, F&& body) {
  const int saved = ::dup(STDERR_FILENO);
  REQUIRE(saved >= 0);
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  ::dup2(fd, STDERR_FILENO);
  ::close(fd);
  body();
  ::dup2(saved, STDERR_FILENO);
  ::close(saved);
}

std::string journal_stream_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return std::to_string(st.st_dev) + ':' + std::to_string(st.st_ino);
}

}  // namespace

TEST_CASE("stderr connected to the journal starts each line with the sd-daemon priority") {
  temp_dir dir;
  const auto path = dir.file("journal.log");
  restore_stderr_sink restore;
  with_stderr_to(path, [&] {
    ::setenv("JOURNAL_STREAM", journal_stream_of(path).c_str(), 1);
    setup_logging({severity::trace, "stderr"});
    auto dev = device_logger(5, 51712, "xvda");
    XBD_LOG(dev, trace) << "t";
    XBD_LOG(dev, debug) << "d";
    XBD_LOG(dev, info) << "connected";
    XBD_LOG(dev, warning) << "w";
    XBD_LOG(dev, error) << "e";
    reload_logging({severity::error, "file:/dev/null"});
    ::unsetenv("JOURNAL_STREAM");
  });

  const auto lines = lines_of(path);
  REQUIRE(lines.size() == 5);
  CHECK(lines[0] == "<7>trace [d5/51712 xvda] t");
  CHECK(lines[1] == "<7>debug [d5/51712 xvda] d");
  CHECK(lines[2] == "<6>info [d5/51712 xvda] connected");
  CHECK(lines[3] == "<4>warning [d5/51712 xvda] w");
  CHECK(lines[4] == "<3>error [d5/51712 xvda] e");
}

TEST_CASE("stderr that is not the journal stream is timestamped, whatever JOURNAL_STREAM says") {
  temp_dir dir;
  const auto path = dir.file("plain.log");
  const auto other = dir.file("other");
  std::ofstream(other) << "";
  restore_stderr_sink restore;
  with_stderr_to(path, [&] {
    // Inherited from a service whose stderr was the journal; ours is not.
    ::setenv("JOURNAL_STREAM", journal_stream_of(other).c_str(), 1);
    setup_logging({severity::info, "stderr"});
    logger lg;
    XBD_LOG(lg, info) << "one";
    ::unsetenv("JOURNAL_STREAM");
    reload_logging({severity::info, "stderr"});
    XBD_LOG(lg, info) << "two";
    reload_logging({severity::error, "file:/dev/null"});
  });

  const auto lines = lines_of(path);
  REQUIRE(lines.size() == 2);
  check_line(lines[0], timestamp + "info one");
  check_line(lines[1], timestamp + "info two");
}

TEST_CASE("a reload to syslog stops writing to the file") {
  temp_dir dir;
  const auto path = dir.file("before-syslog.log");
  restore_stderr_sink restore;
  logger lg;
  setup_logging(to_file(severity::info, path));
  XBD_LOG(lg, info) << "to the file";
  reload_logging({severity::info, "syslog"});
  XBD_LOG(lg, debug) << "xen-blkbackd unit test: filtered";
  XBD_LOG(lg, info) << "xen-blkbackd unit test: to syslog";

  const auto lines = lines_of(path);
  REQUIRE(lines.size() == 1);
  check_line(lines[0], timestamp + "info to the file");
}
