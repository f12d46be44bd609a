#include "blkback/storage/nbd_tls.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace xbd::blkback::storage::nbd {

namespace {

std::string quoted(const std::string& s) { return "\"" + s + "\""; }

bool contains(const std::string& s, const char* what) { return s.find(what) != std::string::npos; }

// Empty if `path` opens for reading and is a regular file; why not
// otherwise. O_NONBLOCK: a FIFO put there must not hold the ring's thread.
std::string unreadable(const std::string& path, int& err) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) {
    err = errno;
    return std::strerror(err);
  }
  struct stat st {};
  const int r = ::fstat(fd, &st);
  err = r != 0 ? errno : S_ISDIR(st.st_mode) ? EISDIR : S_ISREG(st.st_mode) ? 0 : EINVAL;
  ::close(fd);
  if (err == EINVAL) return "not a regular file";
  return err != 0 ? std::strerror(err) : std::string{};
}

bool readable(const std::string& path) { return ::access(path.c_str(), R_OK) == 0; }

// Where libnbd looks for certificates when the URI names no directory, in
// its order (lib/crypto.c: /etc/pki/libnbd for root, else under $HOME).
std::vector<std::string> default_certificate_dirs() {
  if (::geteuid() == 0) return {"/etc/pki/libnbd"};
  const char* home = std::getenv("HOME");
  if (!home) return {};
  return {std::string(home) + "/.pki/libnbd", std::string(home) + "/.config/pki/libnbd"};
}

// The directory libnbd takes its certificates from for `t`: the URI's, or
// the first default one with a CA in it; empty if none.
std::string certificate_dir(const nbd_target& t) {
  if (!t.tls_certificates.empty()) return t.tls_certificates;
  for (const auto& d : default_certificate_dirs())
    if (readable(d + "/ca-cert.pem")) return d;
  return {};
}

// libnbd loads a directory only if ca-cert.pem is readable there, and our
// certificate only if both of its files are: anything less is skipped
// silently, and the connection goes unauthenticated.
std::string check_certificate_dir(const std::string& dir, int& err) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    err = errno;
    return "cannot use the tls-certificates directory " + quoted(dir) + ": " + std::strerror(err);
  }
  if (!S_ISDIR(st.st_mode)) {
    err = ENOTDIR;
    return "the tls-certificates path " + quoted(dir) + " is not a directory";
  }
  if (auto why = unreadable(dir + "/ca-cert.pem", err); !why.empty())
    return "the tls-certificates directory " + quoted(dir) + " has no usable ca-cert.pem (" + why +
           "): without the CA's certificate libnbd would accept any server";
  const bool cert = readable(dir + "/client-cert.pem");
  const bool key = readable(dir + "/client-key.pem");
  if (cert != key) {
    err = ENOENT;
    return "the tls-certificates directory " + quoted(dir) + " has " + (cert ? "client-cert.pem" : "client-key.pem") +
           " but no readable " + (cert ? "client-key.pem" : "client-cert.pem") + ": both or neither";
  }
  return {};
}

std::string psk_user(const nbd_target& t) {
  return t.tls_username.empty() ? "the login name" : "user " + quoted(t.tls_username);
}

std::string explain_certificate(const nbd_target& t, const std::string& why) {
  const std::string dir = certificate_dir(t);
  const std::string ca = dir.empty() ? std::string("the CA") : "the CA in " + dir + "/ca-cert.pem";
  if (contains(why, "certificate verification")) {
    // Over a unix socket libnbd has no name to check (docs/storage.md).
    if (t.via == nbd_target::transport::unix_socket)
      return "the server's TLS certificate was refused: it is not signed by " + ca + ", or not valid now (" + why + ")";
    return "the server's TLS certificate was refused: it is not issued for " + quoted(t.host) +
           " (the host in the URI), not signed by " + ca + ", or not valid now (" + why + ")";
  }
  return "the TLS session failed; if the server checks client certificates, " +
         (dir.empty() ? std::string("the certificates directory") : dir) +
         " needs client-cert.pem and client-key.pem signed by a CA it trusts (" + why + ")";
}

}  // namespace

std::string check_tls_credentials(const nbd_target& t, int& err) {
  err = 0;
  if (!t.tls) return {};
  if (!t.tls_psk_file.empty()) {
    if (auto why = unreadable(t.tls_psk_file, err); !why.empty())
      return "cannot read the tls-psk-file " + quoted(t.tls_psk_file) + ": " + why;
    return {};
  }
  if (!t.tls_certificates.empty()) return check_certificate_dir(t.tls_certificates, err);
  const std::string dir = certificate_dir(t);
  if (!dir.empty()) return check_certificate_dir(dir, err);
  std::string where;
  for (const auto& d : default_certificate_dirs()) where += (where.empty() ? "" : ", ") + d;
  err = ENOENT;
  return "no tls-psk-file or tls-certificates, and no ca-cert.pem in libnbd's default directory (" +
         (where.empty() ? std::string("none without $HOME") : where) +
         "): without a CA libnbd would accept any server; name one of them";
}

std::string explain_failure(const nbd_target& t, const std::string& why) {
  if (!t.tls) {
    if (contains(why, "requires TLS"))
      return "the server requires TLS: use nbds:// (or nbds+unix://) with a tls-psk-file or tls-certificates (" + why +
             ")";
    return why;
  }
  if (contains(why, "server refused TLS")) return "the server does not offer TLS, which nbds:// requires (" + why + ")";
  // Only the TLS session's own failures; a missing user in the PSK file,
  // a refused connection, an unknown export say what they are already.
  if (!contains(why, "gnutls_")) return why;
  if (!t.tls_psk_file.empty())
    return "TLS with a pre-shared key failed: the server does not take the key of " + psk_user(t) + " in " +
           t.tls_psk_file + " (" + why + ")";
  return explain_certificate(t, why);
}

}  // namespace xbd::blkback::storage::nbd
