// An nbdkit of a test's own, in a private directory, on a unix socket or on a
// free TCP port of 127.0.0.1, with TLS or without; killed (if still
// running) and its directory removed when the object goes. Every wait is
// bounded. Also the TLS credentials for it: PSK files and X.509
// certificates, made at test time.
#pragma once

#include "blkback/storage/spec.hpp"
#include "test/integration/process.hpp"

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace xbd::test {

// A directory of the test's own under /tmp, removed with its contents.
class temp_dir {
 public:
  temp_dir();
  ~temp_dir();
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

class nbd_server {
 public:
  struct options {
    bool tcp = false;
    bool read_only = false;
    std::vector<std::string> filters;                     // "error", "delay", ...
    std::vector<std::string> plugin = {"memory", "64M"};  // the plugin and its parameters
    std::vector<std::string> params;                      // the filters' parameters
    // TLS (nbdkit-tls(1)): required with a PSK file or a certificates
    // directory (x509_dirs::server), refused (--tls=off) with neither.
    std::filesystem::path tls_psk;
    std::filesystem::path tls_certificates;
    bool tls_verify_peer = false;  // the client must show a certificate of the CA's
  };

  explicit nbd_server(options o);
  ~nbd_server();
  nbd_server(const nbd_server&) = delete;
  nbd_server& operator=(const nbd_server&) = delete;

  // Starts nbdkit and waits until it accepts connections (it writes its pid
  // file then); throws if it does not within 10 s.
  void start();
  // SIGKILL, and waits for it to be gone.
  void kill();
  bool running() const { return proc_ && proc_->running(); }
  // SIGSTOP, and waits until it is stopped (it answers nothing after);
  // resume() sends SIGCONT.
  void pause();
  void resume();

  // Where it listens (the same across restarts).
  blkback::storage::nbd_target target() const;
  const std::filesystem::path& dir() const { return dir_.path(); }
  // The libnbd URI, until nbd_target::uri() exists.
  std::string uri() const;

 private:
  options opt_;
  temp_dir dir_;
  unsigned port_ = 0;
  int generation_ = 0;
  std::unique_ptr<process> proc_;
};

// A PSK file as nbdkit and libnbd read it ("USER:KEY", the key in hex) with
// a new random key for `user`; the key, for tests that look for it.
std::string write_psk_file(const std::filesystem::path& file, const std::string& user);

// X.509 credentials made with openssl under `dir`: a CA of their own, the
// server's directory as nbdkit reads it (ca-cert.pem, server-cert.pem for
// `server_name`, server-key.pem) and the client's as libnbd reads it
// (ca-cert.pem, client-cert.pem, client-key.pem). Throws with openssl's
// words if it fails (openssl missing among them).
struct x509_dirs {
  std::filesystem::path server;
  std::filesystem::path client;
};
x509_dirs make_x509(const std::filesystem::path& dir, const std::string& server_name);

}  // namespace xbd::test
