// The NBD driver over TLS against real nbdkit servers: pre-shared keys,
// X.509 certificates made at test time, and every way it should fail.
#include "test/storage/nbd_rig.hpp"

#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

using namespace xbd::test::nbd_rig;
namespace fs = std::filesystem;

namespace {

using xbd::test::nbd_server;
using xbd::test::temp_dir;

bool has(const std::string& text, const std::string& what) { return text.find(what) != std::string::npos; }

// A server with a PSK file of its own for `user`; the file and its key.
struct psk_server {
  temp_dir keys;
  fs::path file = keys.path() / "keys.psk";
  std::string key;
  nbd_server srv;

  explicit psk_server(bool tcp, std::vector<std::string> plugin = {"memory", "64M"})
      : key(xbd::test::write_psk_file(file, "alice")), srv([&] {
          server_options o;
          o.tcp = tcp;
          o.tls_psk = file;
          o.plugin = std::move(plugin);
          return o;
        }()) {}

  nbd_target target(const std::string& user = "alice") const {
    auto t = srv.target();
    t.tls = true;
    t.tls_psk_file = file.string();
    t.tls_username = user;
    return t;
  }
};

// A server on 127.0.0.1 with a certificate for `name`, which checks ours
// if `verify_peer`.
struct x509_server {
  temp_dir dir;
  xbd::test::x509_dirs certs;
  nbd_server srv;

  explicit x509_server(const std::string& name, bool verify_peer = true)
      : certs(xbd::test::make_x509(dir.path(), name)), srv([&] {
          server_options o;
          o.tcp = true;
          o.tls_certificates = certs.server;
          o.tls_verify_peer = verify_peer;
          return o;
        }()) {}

  nbd_target target(const std::string& host) const {
    auto t = srv.target();
    t.host = host;
    t.tls = true;
    t.tls_certificates = certs.client.string();
    return t;
  }
};

// An open that fails: its error, with how long it took checked against
// the connect timeout (no failure may wait for it).
error_code open_fails(rig& r, const nbd_target& t) {
  const auto o = quick();
  const auto start = clock_type::now();
  const error_code ec = r.open(t, o);
  const double took = ms_since(start);
  MESSAGE(t.describe() << ": " << r.detail << " (" << took << " ms)");
  CHECK(ec);
  CHECK_FALSE(r.st);
  CHECK(took < 0.5 * static_cast<double>(o.connect_timeout.count()));
  return ec;
}

// For as long as it lives, libnbd and the driver see an ordinary user
// whose $HOME is `home`: libnbd's default certificates directory is then
// under $HOME rather than root's /etc/pki/libnbd, which a test must not
// touch, and a file's mode is obeyed. When the tests run as root, the
// effective uid is nobody's, `home` given to nobody first; the saved uid
// stays root's, to return to.
class ordinary_user {
 public:
  explicit ordinary_user(const fs::path& home) {
    if (const char* h = std::getenv("HOME")) old_home_ = h;
    if (::geteuid() == 0) {
      for (const auto& e : fs::recursive_directory_iterator(home))
        REQUIRE(::lchown(e.path().c_str(), nobody, nobody) == 0);
      REQUIRE(::chown(home.c_str(), nobody, nobody) == 0);
      REQUIRE(::seteuid(nobody) == 0);
      switched_ = true;
    }
    ::setenv("HOME", home.c_str(), 1);
  }
  ~ordinary_user() {
    if (switched_) (void)!::seteuid(0);
    if (old_home_)
      ::setenv("HOME", old_home_->c_str(), 1);
    else
      ::unsetenv("HOME");
  }
  ordinary_user(const ordinary_user&) = delete;
  ordinary_user& operator=(const ordinary_user&) = delete;

 private:
  static constexpr uid_t nobody = 65534;
  std::optional<std::string> old_home_;
  bool switched_ = false;
};

}  // namespace

TEST_CASE("PSK: nbds:// on 127.0.0.1 and nbds+unix:// read back what was written, flush and discard") {
  for (const bool tcp : {true, false}) {
    CAPTURE(tcp);
    psk_server s(tcp);
    rig r;
    const error_code ec = r.open(s.target(), quick());
    REQUIRE_MESSAGE(!ec, r.detail);
    CHECK(has(r.st->name(), "over TLS"));
    CHECK_FALSE(has(r.st->name(), s.file.string()));
    CHECK(r.st->props().flush);
    CHECK(r.st->props().discard);
    r.open_channel();
    write_and_verify(r, 0, 4 << 20, 20);
    flush_and_discard_verified(r);
  }
}

TEST_CASE("PSK: a TLS server killed and restarted is connected to again and the operations that waited succeed") {
  temp_dir disk;
  const auto image = disk.path() / "disk.img";
  std::ofstream(image).close();
  fs::resize_file(image, 16 << 20);
  psk_server s(true, {"file", "file=" + image.string()});
  rig r;
  REQUIRE_FALSE(r.open(s.target(), quick()));
  r.open_channel();
  auto data = pattern(1 << 20, 23);
  REQUIRE(r.all_ok(r.transfer(true, 0, data, 64 * 1024, 16)));
  s.srv.kill();
  std::vector<std::byte> back(data.size());
  std::vector<op_done> reads(16);
  for (std::size_t i = 0; i < reads.size(); ++i) r.read(i * 65536, std::span(back).subspan(i * 65536, 65536), reads[i]);
  idle(r.io, 300ms);
  CHECK(std::none_of(reads.begin(), reads.end(), [](const op_done& d) { return d.finished(); }));
  s.srv.start();
  REQUIRE(r.all_finished(reads, 5s));
  for (const auto& d : reads) CHECK_FALSE(d.ec);
  CHECK(back == data);
}

TEST_CASE("X.509: nbds://localhost with tls-certificates verifies the certificate for localhost and serves I/O") {
  x509_server s("localhost");
  rig r;
  const error_code ec = r.open(s.target("localhost"), quick());
  REQUIRE_MESSAGE(!ec, r.detail);
  r.open_channel();
  write_and_verify(r, 0, 4 << 20, 21);
  flush_and_discard_verified(r);
  // Its certificate does not name 127.0.0.1: the same server by address is
  // refused, so the name checked is the URI's.
  rig by_address;
  open_fails(by_address, s.target("127.0.0.1"));
  CHECK(has(by_address.detail, "not issued for \"127.0.0.1\""));
}

TEST_CASE("X.509: a server certificate issued for another name is refused, and the reason says so") {
  x509_server s("elsewhere.example");
  rig r;
  open_fails(r, s.target("localhost"));
  CHECK(has(r.detail, "the server's TLS certificate was refused: it is not issued for \"localhost\""));
  CHECK(has(r.detail, "certificate verification"));  // GnuTLS's words, kept
}

TEST_CASE("X.509: a certificate signed by another CA is refused with the CA named") {
  x509_server s("localhost");
  temp_dir other;
  const auto foreign = xbd::test::make_x509(other.path(), "localhost");
  auto t = s.target("localhost");
  t.tls_certificates = foreign.client.string();
  rig r;
  open_fails(r, t);
  CHECK(has(r.detail, "not signed by the CA in " + foreign.client.string() + "/ca-cert.pem"));
}

TEST_CASE("X.509 from libnbd's default directory: verified against the host name, refused if it has no CA") {
  x509_server s("localhost");
  temp_dir home;
  fs::create_directories(home.path() / ".pki");
  fs::copy(s.certs.client, home.path() / ".pki" / "libnbd");
  auto t = s.target("localhost");
  t.tls_certificates.clear();
  {
    ordinary_user u(home.path());
    rig r;
    const error_code ec = r.open(t, quick());
    REQUIRE_MESSAGE(!ec, r.detail);
    r.open_channel();
    write_and_verify(r, 0, 1 << 20, 22);
  }
  // Without a CA there, libnbd would take any server: one whose
  // certificate no CA of ours signed, and which checks no client.
  fs::remove(home.path() / ".pki" / "libnbd" / "ca-cert.pem");
  x509_server stranger("localhost", false);
  t.port = stranger.srv.target().port;
  {
    ordinary_user u(home.path());
    rig r;
    CHECK(open_fails(r, t) == boost::system::errc::no_such_file_or_directory);
    CHECK(has(r.detail, "no ca-cert.pem in libnbd's default directory (" + home.path().string() + "/.pki/libnbd"));
    CHECK(has(r.detail, "would accept any server"));
  }
}

TEST_CASE("a wrong PSK key fails the open at once, naming the user and the file but not the key") {
  psk_server s(true);
  temp_dir mine;
  const auto file = mine.path() / "other.psk";
  const std::string key = xbd::test::write_psk_file(file, "alice");
  auto t = s.target();
  t.tls_psk_file = file.string();
  rig r;
  open_fails(r, t);
  CHECK(has(r.detail, "TLS with a pre-shared key failed: the server does not take the key of user \"alice\" in " +
                          file.string()));
  CHECK_FALSE(has(r.detail, key));
  CHECK_FALSE(has(r.detail, s.key));
  // A user the file has no key for, in libnbd's words.
  rig bob;
  open_fails(bob, s.target("bob"));
  CHECK(has(bob.detail, "username bob was not found in PSK file"));
}

TEST_CASE("a server that requires TLS refuses nbd:// and the reason says to use nbds://") {
  psk_server s(true);
  auto t = s.target();
  t.tls = false;
  t.tls_psk_file.clear();
  t.tls_username.clear();
  rig r;
  open_fails(r, t);
  CHECK(has(r.detail, "the server requires TLS: use nbds://"));
}

TEST_CASE("nbds:// to a server without TLS fails, saying the server does not offer it") {
  nbd_server srv([] {
    server_options o;
    o.tcp = true;
    return o;
  }());
  temp_dir keys;
  auto t = srv.target();
  t.tls = true;
  t.tls_psk_file = (keys.path() / "keys.psk").string();
  t.tls_username = "alice";
  xbd::test::write_psk_file(t.tls_psk_file, "alice");
  rig r;
  open_fails(r, t);
  CHECK(has(r.detail, "the server does not offer TLS, which nbds:// requires"));
}

TEST_CASE("a missing or unreadable tls-psk-file fails the open before connecting, naming the file") {
  psk_server s(true);
  temp_dir keys;
  auto t = s.target();
  t.tls_psk_file = (keys.path() / "missing.psk").string();
  rig r;
  CHECK(open_fails(r, t) == boost::system::errc::no_such_file_or_directory);
  CHECK(has(r.detail, "cannot read the tls-psk-file \"" + t.tls_psk_file + "\": No such file or directory"));

  t.tls_psk_file = keys.path().string();
  rig dir;
  CHECK(open_fails(dir, t) == boost::system::errc::is_a_directory);
  CHECK(has(dir.detail, "cannot read the tls-psk-file \"" + t.tls_psk_file + "\": Is a directory"));

  // Root reads any file: the mode is tried as an ordinary user.
  const auto locked = keys.path() / "locked.psk";
  fs::copy_file(s.file, locked);
  fs::permissions(locked, fs::perms::none);
  t.tls_psk_file = locked.string();
  ordinary_user u(keys.path());
  rig denied;
  CHECK(open_fails(denied, t) == boost::system::errc::permission_denied);
  CHECK(has(denied.detail, "cannot read the tls-psk-file \"" + t.tls_psk_file + "\": Permission denied"));
}

TEST_CASE("a certificates directory without a CA, or half a client pair, fails the open before connecting") {
  // Without ca-cert.pem libnbd would skip the directory and take any
  // server: one whose certificate no CA of ours signed, and which checks
  // no client.
  x509_server stranger("localhost", false);
  temp_dir mine;
  const auto ours = xbd::test::make_x509(mine.path(), "localhost");
  fs::remove(ours.client / "ca-cert.pem");
  auto t = stranger.target("localhost");
  t.tls_certificates = ours.client.string();
  rig r;
  CHECK(open_fails(r, t) == boost::system::errc::no_such_file_or_directory);
  CHECK(has(r.detail, "the tls-certificates directory \"" + t.tls_certificates + "\" has no usable ca-cert.pem"));
  CHECK(has(r.detail, "would accept any server"));

  fs::copy_file(mine.path() / "ca-cert.pem", ours.client / "ca-cert.pem");
  fs::remove(ours.client / "client-key.pem");
  rig half;
  CHECK(open_fails(half, t));
  CHECK(has(half.detail, "has client-cert.pem but no readable client-key.pem"));

  t.tls_certificates = (mine.path() / "nowhere").string();
  rig missing;
  CHECK(open_fails(missing, t) == boost::system::errc::no_such_file_or_directory);
  CHECK(has(missing.detail, "cannot use the tls-certificates directory \"" + t.tls_certificates + "\""));
}

TEST_CASE("nbds+unix:// with certificates: libnbd 1.14 checks no server certificate over a unix socket") {
  // A limit of libnbd's (docs/storage.md, "TLS"): it has no host name to
  // check there and checks nothing, so a CA that signed nothing of the
  // server's is accepted. If this fails, libnbd checks now: say so there.
  temp_dir dir;
  const auto certs = xbd::test::make_x509(dir.path(), "localhost");
  temp_dir other;
  const auto foreign = xbd::test::make_x509(other.path(), "localhost");
  nbd_server srv([&] {
    server_options o;
    o.tls_certificates = certs.server;
    return o;
  }());
  auto t = srv.target();
  t.tls = true;
  t.tls_certificates = foreign.client.string();
  rig r;
  const error_code ec = r.open(t, quick());
  CHECK_MESSAGE(!ec, r.detail);
}
