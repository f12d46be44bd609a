// aux_ring: flushes and hole punching on our own io_uring.
#include "blkback/storage/aux_ring.hpp"
#include "test/unit/run.hpp"

#include <doctest/doctest.h>
#include <boost/asio/io_context.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

using namespace xbd::blkback;
namespace asio_xen = xbd::asio_xen;
namespace asio = boost::asio;

namespace {

struct counted final : aux_completion {
  int calls = 0;
  asio_xen::error_code last;
  std::size_t moved = 0;
  void aux_complete(asio_xen::error_code ec, std::size_t n) override {
    ++calls;
    last = ec;
    moved = n;
  }
};

struct scratch_file {
  std::string path = "/tmp/xbd-aux-XXXXXX";
  int fd = ::mkstemp(path.data());
  ~scratch_file() {
    ::close(fd);
    ::unlink(path.c_str());
  }
};

// Runs the context until `pred` holds (bounded), then a little longer, so
// that a second completion of the same operation would be seen.
template <class Pred>
bool run_until(asio::io_context& ioc, Pred pred) {
  for (int i = 0; i < 500 && !pred(); ++i) xbd::test::run_for(ioc, std::chrono::milliseconds(10));
  xbd::test::run_for(ioc, std::chrono::milliseconds(50));
  return pred();
}

}  // namespace

TEST_CASE("a flush completes once, successfully") {
  asio::io_context ioc;
  auto aux = aux_ring::create(ioc.get_executor());
  REQUIRE(aux.has_value());
  scratch_file f;
  counted c;
  (*aux)->fdatasync(f.fd, c);
  CHECK(run_until(ioc, [&] { return c.calls > 0; }));
  CHECK(c.calls == 1);
  CHECK_FALSE(c.last);
}

TEST_CASE("operations whose submission fails at first complete once each, when a retry goes through") {
  asio::io_context ioc;
  auto aux = aux_ring::create(ioc.get_executor());
  REQUIRE(aux.has_value());
  scratch_file f;
  counted flush, punch;
  // io_uring_enter refused three times: the entries stay queued in the ring.
  (*aux)->fail_next_submissions(3);
  (*aux)->fdatasync(f.fd, flush);
  (*aux)->fallocate(f.fd, 0, 0, 4096, punch);
  CHECK(run_until(ioc, [&] { return flush.calls > 0 && punch.calls > 0; }));
  CHECK(flush.calls == 1);
  CHECK(punch.calls == 1);
  CHECK_FALSE(flush.last);
  CHECK_FALSE(punch.last);
}

TEST_CASE("a submission refused for over a second is still retried, backing off, and completes once") {
  asio::io_context ioc;
  auto aux = aux_ring::create(ioc.get_executor());
  REQUIRE(aux.has_value());
  scratch_file f;
  counted flush;
  (*aux)->fail_next_submissions(25);  // past the point where the log says so
  (*aux)->fdatasync(f.fd, flush);
  CHECK(run_until(ioc, [&] { return flush.calls > 0; }));
  CHECK(flush.calls == 1);
  CHECK_FALSE(flush.last);
}

TEST_CASE("writev and readv move many pieces at their offset, and say how much moved") {
  asio::io_context ioc;
  auto aux = aux_ring::create(ioc.get_executor());
  REQUIRE(aux.has_value());
  scratch_file f;
  // 100 pieces: more than Asio would hand the kernel in one call.
  std::vector<char> data(100 * 512);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i / 512 + 1);
  std::vector<iovec> v(100);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = {data.data() + (99 - i) * 512, 512};  // scattered: reversed
  counted w;
  (*aux)->writev(f.fd, 4096, v, w);
  CHECK(run_until(ioc, [&] { return w.calls > 0; }));
  CHECK_FALSE(w.last);
  CHECK(w.moved == data.size());
  char b = 0;
  REQUIRE(::pread(f.fd, &b, 1, 4096) == 1);
  CHECK(b == 100);  // the first piece is the last 512 bytes of data
  std::vector<char> back(data.size());
  std::vector<iovec> r(100);
  for (std::size_t i = 0; i < r.size(); ++i) r[i] = {back.data() + (99 - i) * 512, 512};
  counted rd;
  (*aux)->readv(f.fd, 4096, r, rd);
  CHECK(run_until(ioc, [&] { return rd.calls > 0; }));
  CHECK_FALSE(rd.last);
  CHECK(rd.moved == data.size());
  CHECK(back == data);
  // At the end of the file: less than asked.
  counted tail;
  (*aux)->readv(f.fd, 4096 + data.size() - 512, r, tail);
  CHECK(run_until(ioc, [&] { return tail.calls > 0; }));
  CHECK(tail.moved == 512u);
}
