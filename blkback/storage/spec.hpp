// The toolstack's disk spec: what `params` names, read the way QEMU's qdisk
// reads it, so that xl configs written for backendtype=qdisk work unchanged
// (docs/xl.md shows each form with a complete disk line).
//
// libxl writes params as "<format>:<target>" (raw images as "aio:"), other
// toolstacks a plain path. The target is a local path, or an NBD server in
// one of the spellings QEMU accepts. The parser only reads text: nothing is
// opened or resolved here, and every refusal says what was wrong and what
// would have been accepted.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace xbd::blkback::storage {

// An NBD server and export (the NBD protocol's names: docs/storage.md).
struct nbd_target {
  enum class transport { tcp, unix_socket };
  transport via = transport::tcp;
  std::string host;              // tcp: a name or an address ([v6] in URIs)
  std::string port = "10809";    // tcp: NBD's registered port unless given
  std::filesystem::path socket;  // unix_socket: absolute path
  std::string export_name;       // empty: the server's default export
  // TLS (nbds:// and nbds+unix://): the credentials are files named in the
  // URI's query, as libnbd reads them; never their contents.
  bool tls = false;
  std::string tls_psk_file;
  std::string tls_certificates;  // a directory
  std::string tls_username;

  // The NBD URI (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/uri.md)
  // that libnbd's nbd_connect_uri / nbd_aio_connect_uri take.
  std::string uri() const;
  // For log lines and error nodes: where it is, no credentials.
  std::string describe() const;

  friend bool operator==(const nbd_target&, const nbd_target&) = default;
};

// A Ceph RBD image, as QEMU's rbd driver names it:
// rbd:POOL[/NAMESPACE]/IMAGE[@SNAPSHOT][:KEY=VALUE...], with a backslash escaping
// the next character in each part (so "mon_host=10.0.0.1\:6789" keeps its
// colon). What the spec leaves out comes from the [rbd] section of the
// configuration file.
struct rbd_target {
  std::string pool;
  std::string ns;  // RADOS namespace; empty: the pool's default
  std::string image;
  std::string snapshot;  // empty: the image itself; a snapshot is served read-only
  std::string user;      // id=: the client's id, without "client."; empty: [rbd] client-id
  std::string conf;      // conf=: a ceph.conf path; empty: [rbd] conf
  // Every other KEY=VALUE, in order, for librados's rados_conf_set
  // (mon_host, keyring, key, auth_supported, ...). Values may be secrets
  // (key=): they are never logged or shown.
  std::vector<std::pair<std::string, std::string>> options;

  // For log lines and error nodes: pool, namespace, image and snapshot, the
  // client id when given; never an option's value.
  std::string describe() const;

  friend bool operator==(const rbd_target&, const rbd_target&) = default;
};

// Image formats, by QEMU's driver names ("vhd" in an xl config is QEMU's
// "vpc"; libxl's "aio" is raw).
enum class image_format { raw, qcow2, qcow, qed, vpc, vmdk, vdi, vhdx };
std::string_view to_string(image_format f);

struct disk_spec {
  enum class kind {
    local,  // a raw file or block device on this host, served directly
    image,  // an image file in another format, served through qemu-storage-daemon
    nbd,    // an NBD export, served through libnbd
    rbd,    // a Ceph RBD image, served through librbd
  };
  kind where = kind::local;
  image_format format = image_format::raw;
  std::filesystem::path path;  // local, image: absolute
  nbd_target nbd;              // nbd
  rbd_target rbd;              // rbd

  friend bool operator==(const disk_spec&, const disk_spec&) = default;
};

// A spec refused, and why: one sentence naming the format or target and
// what is accepted instead. Guest- and toolstack-controlled text in it is
// truncated, so an enormous value never reaches the error node whole.
struct spec_problem {
  std::string message;
};

struct parsed_spec {
  std::optional<disk_spec> spec;
  spec_problem problem;  // when !spec
};

// What the spec names, for log lines and the `error` node: the path and its
// format, or the NBD target's describe().
std::string describe(const disk_spec& s);

// params as libxl writes it for qdisk ("aio:/p", "raw:/p", "qcow2:/p",
// "vhd:/p", "raw:nbd://h:p/e", "raw:nbd:unix:/s:exportname=e",
// "aio:rbd:pool/image:id=xen", ...) or a plain absolute path.
parsed_spec parse_params(std::string_view params);

}  // namespace xbd::blkback::storage
