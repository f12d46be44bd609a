#include "test/storage/nbd_server.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <random>
#include <stdexcept>

namespace xbd::test {

temp_dir::temp_dir() {
  std::string tmpl = "/tmp/xbd-nbd-XXXXXX";
  if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

temp_dir::~temp_dir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

nbd_server::nbd_server(options o) : opt_(std::move(o)) {
  if (opt_.tcp) port_ = free_tcp_port();
  start();
}

nbd_server::~nbd_server() { kill(); }

void nbd_server::start() {
  const auto pidfile = dir() / "nbdkit.pid";
  std::error_code ignored;
  std::filesystem::remove(pidfile, ignored);
  std::filesystem::remove(dir() / "sock", ignored);
  std::vector<std::string> argv = {"/usr/bin/nbdkit", "--foreground", "--exit-with-parent", "-P", pidfile.string()};
  if (opt_.read_only) argv.push_back("-r");
  if (opt_.tcp) {
    argv.insert(argv.end(), {"-i", "127.0.0.1", "-p", std::to_string(port_)});
  } else {
    argv.insert(argv.end(), {"-U", (dir() / "sock").string()});
  }
  if (!opt_.tls_psk.empty() || !opt_.tls_certificates.empty()) {
    argv.push_back("--tls=require");
    if (!opt_.tls_psk.empty()) argv.push_back("--tls-psk=" + opt_.tls_psk.string());
    if (!opt_.tls_certificates.empty()) argv.push_back("--tls-certificates=" + opt_.tls_certificates.string());
    if (opt_.tls_verify_peer) argv.push_back("--tls-verify-peer");
  } else {
    argv.push_back("--tls=off");
  }
  for (const auto& f : opt_.filters) argv.push_back("--filter=" + f);
  argv.insert(argv.end(), opt_.plugin.begin(), opt_.plugin.end());
  argv.insert(argv.end(), opt_.params.begin(), opt_.params.end());
  proc_ = std::make_unique<process>(argv, std::vector<std::string>{},
                                    dir() / ("nbdkit." + std::to_string(generation_++) + ".log"));
  if (!eventually([&] { return std::filesystem::exists(pidfile) || !proc_->running(); }, std::chrono::seconds(10)) ||
      !proc_->running())
    throw std::runtime_error("nbdkit did not start: " + proc_->output());
}

void nbd_server::kill() {
  if (!proc_) return;
  proc_->signal(SIGKILL);
  (void)proc_->wait(std::chrono::seconds(5));
  proc_.reset();
}

void nbd_server::pause() {
  if (proc_ && !proc_->pause()) throw std::runtime_error("nbdkit did not stop");
}

void nbd_server::resume() {
  if (proc_) proc_->signal(SIGCONT);
}

blkback::storage::nbd_target nbd_server::target() const {
  blkback::storage::nbd_target t;
  if (opt_.tcp) {
    t.via = blkback::storage::nbd_target::transport::tcp;
    t.host = "127.0.0.1";
    t.port = std::to_string(port_);
  } else {
    t.via = blkback::storage::nbd_target::transport::unix_socket;
    t.socket = dir() / "sock";
  }
  return t;
}

std::string nbd_server::uri() const {
  if (opt_.tcp) return "nbd://127.0.0.1:" + std::to_string(port_) + "/";
  return "nbd+unix:///?socket=" + (dir() / "sock").string();
}

std::string write_psk_file(const std::filesystem::path& file, const std::string& user) {
  std::random_device rd;
  std::string key;
  for (int i = 0; i < 32; ++i) {
    constexpr const char* hex = "0123456789abcdef";
    const unsigned b = rd() & 0xff;
    key += hex[b >> 4];
    key += hex[b & 0xf];
  }
  std::ofstream(file) << user << ":" << key << "\n";
  std::filesystem::permissions(file, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  return key;
}

namespace {

// openssl with `args`, bounded; throws with its output if it fails.
void openssl(const std::filesystem::path& dir, std::vector<std::string> args) {
  args.insert(args.begin(), "/usr/bin/openssl");
  const auto r = run(args, {}, dir / "openssl.log", std::chrono::seconds(20));
  if (r.status != 0)
    throw std::runtime_error("openssl " + args[1] + " failed (status " + std::to_string(r.status) + "): " + r.output);
}

// A P-256 key and a certificate for `cn` signed by the CA in `dir`, with
// the extensions in `ext` (openssl x509 -extfile syntax).
void issue(const std::filesystem::path& dir, const std::filesystem::path& key, const std::filesystem::path& cert,
           const std::string& cn, const std::string& ext) {
  const auto csr = dir / "request.csr";
  const auto extfile = dir / "extensions.cnf";
  std::ofstream(extfile) << ext;
  openssl(dir, {"req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
                key.string(), "-out", csr.string(), "-subj", "/CN=" + cn});
  openssl(dir, {"x509", "-req", "-in", csr.string(), "-CA", (dir / "ca-cert.pem").string(), "-CAkey",
                (dir / "ca-key.pem").string(), "-CAcreateserial", "-days", "2", "-extfile", extfile.string(), "-out",
                cert.string()});
}

}  // namespace

x509_dirs make_x509(const std::filesystem::path& dir, const std::string& server_name) {
  if (::access("/usr/bin/openssl", X_OK) != 0)
    throw std::runtime_error(
        "/usr/bin/openssl is missing: the TLS tests make their certificates with it "
        "(./scripts/install-deps installs it)");
  std::filesystem::create_directories(dir);
  openssl(dir, {"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
                (dir / "ca-key.pem").string(), "-out", (dir / "ca-cert.pem").string(), "-days", "2", "-subj",
                "/CN=xbd test CA", "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
                "keyUsage=critical,keyCertSign,cRLSign"});
  x509_dirs out{dir / "server", dir / "client"};
  std::filesystem::create_directories(out.server);
  std::filesystem::create_directories(out.client);
  // The name as a DNS name, or as an address if it is one: what GnuTLS
  // matches the host a client connects to against.
  unsigned char addr[16];
  const bool numeric =
      ::inet_pton(AF_INET, server_name.c_str(), addr) == 1 || ::inet_pton(AF_INET6, server_name.c_str(), addr) == 1;
  issue(dir, out.server / "server-key.pem", out.server / "server-cert.pem", server_name,
        std::string("subjectAltName=") + (numeric ? "IP:" : "DNS:") + server_name +
            "\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n");
  issue(dir, out.client / "client-key.pem", out.client / "client-cert.pem", "xbd test client",
        "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n");
  std::filesystem::copy_file(dir / "ca-cert.pem", out.server / "ca-cert.pem");
  std::filesystem::copy_file(dir / "ca-cert.pem", out.client / "ca-cert.pem");
  return out;
}

}  // namespace xbd::test
