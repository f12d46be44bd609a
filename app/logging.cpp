// Debian's libboost_log is built with the native syslog(3) implementation,
// but the headers only name it (syslog::native) when told so.
#define BOOST_LOG_USE_NATIVE_SYSLOG 1

#include "app/logging.hpp"
#include <charconv>

#include "blkback/log.hpp"

#include <boost/date_time/posix_time/posix_time_types.hpp>
#include <boost/log/attributes/clock.hpp>
#include <boost/log/attributes/value_extraction.hpp>
#include <boost/log/core/core.hpp>
#include <boost/log/expressions/message.hpp>
#include <boost/log/sinks/basic_sink_backend.hpp>
#include <boost/log/sinks/sync_frontend.hpp>
#include <boost/log/sinks/syslog_backend.hpp>
#include <boost/smart_ptr/make_shared_object.hpp>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>

namespace xbd::app {

namespace {

namespace logging = boost::log;
namespace sinks = boost::log::sinks;
using blkback::severity;

constexpr const char* timestamp_attribute = "TimeStamp";

enum class line_start { timestamp, journal_priority, nothing };

// sd-daemon(3) and syslog(3) share the numbers: LOG_ERR 3 ... LOG_DEBUG 7.
int priority(severity s) {
  switch (s) {
    case severity::trace:
    case severity::debug:
      return 7;
    case severity::info:
      return 6;
    case severity::warning:
      return 4;
    case severity::error:
      return 3;
  }
  return 6;
}

// Records from a logger without a severity are treated as info.
severity severity_of(const logging::record_view& rec) {
  const auto s = rec[blkback::log_severity];
  return s ? *s : severity::info;
}

void append_escaped(std::string& out, std::string_view text) {
  for (unsigned char c : text) {
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
}

void append_timestamp(std::string& out, const logging::record_view& rec) {
  const auto stamp = logging::extract<boost::posix_time::ptime>(timestamp_attribute, rec);
  const auto t = stamp ? *stamp : boost::posix_time::microsec_clock::local_time();
  const auto d = t.date();
  const auto tod = t.time_of_day();
  char buf[64];  // room for any int the compiler can imagine
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02d %02d:%02d:%02d.%03d ", static_cast<int>(d.year()),
                static_cast<int>(d.month().as_number()), static_cast<int>(d.day()), static_cast<int>(tod.hours()),
                static_cast<int>(tod.minutes()), static_cast<int>(tod.seconds()),
                static_cast<int>(tod.total_milliseconds() % 1000));
  out += buf;
}

std::string format_line(const logging::record_view& rec, line_start start) {
  std::string line;
  const severity sev = severity_of(rec);
  if (start == line_start::timestamp)
    append_timestamp(line, rec);
  else if (start == line_start::journal_priority)
    line += '<' + std::to_string(priority(sev)) + '>';
  line += blkback::to_string(sev);
  if (const auto domid = rec[blkback::log_domid]) {
    line += " [d" + std::to_string(*domid);
    if (const auto devid = rec[blkback::log_devid]) line += '/' + std::to_string(*devid);
    if (const auto vdev = rec[blkback::log_vdev]) {
      line += ' ';
      append_escaped(line, *vdev);
    }
    line += ']';
  }
  line += ' ';
  if (const auto msg = rec[logging::expressions::smessage]) append_escaped(line, *msg);
  return line;
}

// Where formatted records go. Calls are serialised by the sink frontend.
class target {
 public:
  virtual ~target() = default;
  virtual void write(const logging::record_view& rec) = 0;
};

class fd_target final : public target {
 public:
  fd_target(int fd, bool owned, line_start start) : fd_(fd), owned_(owned), start_(start) {
    struct stat st {};
    // The journal's stream is a socket: if journald goes away, a plain
    // write(2) would raise SIGPIPE and end the daemon over a log line.
    is_socket_ = ::fstat(fd_, &st) == 0 && S_ISSOCK(st.st_mode);
  }
  fd_target(const fd_target&) = delete;
  fd_target& operator=(const fd_target&) = delete;
  ~fd_target() override {
    if (owned_) ::close(fd_);
  }

  void write(const logging::record_view& rec) override {
    std::string line = format_line(rec, start_);
    line += '\n';
    const char* p = line.data();
    std::size_t left = line.size();
    while (left > 0) {
      const ssize_t n = is_socket_ ? ::send(fd_, p, left, MSG_NOSIGNAL) : ::write(fd_, p, left);
      if (n < 0 && errno == EINTR) continue;
      // A full disk or a closed stream must not take the daemon down with
      // it: the line is dropped.
      if (n <= 0) return;
      p += n;
      left -= static_cast<std::size_t>(n);
    }
  }

 private:
  int fd_;
  bool owned_;
  bool is_socket_ = false;
  line_start start_;
};

class syslog_target final : public target {
 public:
  syslog_target()
      : backend_(logging::keywords::facility = sinks::syslog::daemon,
                 logging::keywords::use_impl = sinks::syslog::native, logging::keywords::ident = "xen-blkbackd") {
    sinks::syslog::custom_severity_mapping<severity> mapping(blkback::log_severity.get_name());
    for (auto s : {severity::trace, severity::debug, severity::info, severity::warning, severity::error})
      mapping[s] = static_cast<sinks::syslog::level>(priority(s));
    backend_.set_severity_mapper(mapping);
  }
  void write(const logging::record_view& rec) override { backend_.consume(rec, format_line(rec, line_start::nothing)); }

 private:
  sinks::syslog_backend backend_;
};

// systemd.exec(5): JOURNAL_STREAM is "<dev>:<inode>" of the stream it
// connected to stderr. Compared, not just tested for presence, because a
// child of a service inherits the variable with stderr redirected elsewhere.
bool stderr_is_journal() {
  const char* env = std::getenv("JOURNAL_STREAM");
  if (env == nullptr) return false;
  std::string_view text(env);
  const auto colon = text.find(':');
  if (colon == std::string_view::npos) return false;
  unsigned long long dev = 0, ino = 0;
  const char* mid = text.data() + colon;
  const char* end = text.data() + text.size();
  if (std::from_chars(text.data(), mid, dev).ptr != mid || std::from_chars(mid + 1, end, ino).ptr != end) return false;
  struct stat st {};
  if (::fstat(STDERR_FILENO, &st) != 0) return false;
  return st.st_dev == dev && st.st_ino == ino;
}

std::unique_ptr<target> make_target(const std::string& sink) {
  if (sink == "syslog") return std::make_unique<syslog_target>();
  if (sink.starts_with("file:")) {
    const std::string path = sink.substr(5);
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0) throw std::system_error(errno, std::generic_category(), "cannot open log file " + path);
    return std::make_unique<fd_target>(fd, true, line_start::timestamp);
  }
  return std::make_unique<fd_target>(STDERR_FILENO, false,
                                     stderr_is_journal() ? line_start::journal_priority : line_start::timestamp);
}

// The one sink of the process. It is never removed: a reload swaps the
// target inside it under the frontend's lock, so every record is consumed by
// exactly one target. (Adding a new sink and removing the old one instead
// would write records twice, or not at all, in between.)
class switching_backend : public sinks::basic_sink_backend<sinks::synchronized_feeding> {
 public:
  void consume(const logging::record_view& rec) {
    if (target_) target_->write(rec);
  }
  std::unique_ptr<target> exchange(std::unique_ptr<target> t) {
    target_.swap(t);
    return t;
  }

 private:
  std::unique_ptr<target> target_;
};

using sink_type = sinks::synchronous_sink<switching_backend>;

struct logging_state {
  std::mutex mutex;  // serialises set-up and reloads with each other
  boost::shared_ptr<sink_type> sink;
  severity level = severity::info;
};

logging_state& state() {
  static logging_state s;
  return s;
}

// Called with the state's lock held.
void filter_at(severity level) {
  state().level = level;
  logging::core::get()->set_filter([level](const logging::attribute_value_set& attrs) {
    const auto sev = attrs[blkback::log_severity];
    return (sev ? *sev : severity::info) >= level;
  });
}

void apply(const blkback::log_settings& s) {
  auto& st = state();
  std::lock_guard lock(st.mutex);
  auto next = make_target(s.sink);
  auto core = logging::core::get();
  if (!st.sink) {
    core->add_global_attribute(timestamp_attribute, logging::attributes::local_clock());
    st.sink = boost::make_shared<sink_type>();
    core->add_sink(st.sink);
  }
  // The old target is destroyed (its file closed) after the lock is released.
  auto previous = st.sink->locked_backend()->exchange(std::move(next));
  filter_at(s.level);
}

}  // namespace

void setup_logging(const blkback::log_settings& s) { apply(s); }

void reload_logging(const blkback::log_settings& s) { apply(s); }

severity log_level() {
  std::lock_guard lock(state().mutex);
  return state().level;
}

void set_log_level(severity level) {
  std::lock_guard lock(state().mutex);
  filter_at(level);
}

}  // namespace xbd::app
