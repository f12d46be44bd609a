// The toolstack's disk spec (params), read the way QEMU's qdisk reads it.
#include "blkback/storage/spec.hpp"

#include <doctest/doctest.h>

#include <string>
#include <vector>

using namespace xbd::blkback::storage;
using kind = disk_spec::kind;
using transport = nbd_target::transport;

namespace {

disk_spec accepted(std::string_view params) {
  auto r = parse_params(params);
  INFO("params: ", std::string(params));
  INFO("problem: ", r.problem.message);
  REQUIRE(r.spec.has_value());
  CHECK(r.problem.message.empty());
  return *r.spec;
}

nbd_target accepted_nbd(std::string_view params) {
  auto s = accepted(params);
  REQUIRE(s.where == kind::nbd);
  CHECK(s.format == image_format::raw);
  CHECK(s.path.empty());
  // What uri() writes reads back as the same target.
  auto again = parse_params("raw:" + s.nbd.uri());
  INFO("uri: ", s.nbd.uri());
  REQUIRE(again.spec.has_value());
  CHECK(again.spec->nbd == s.nbd);
  return s.nbd;
}

// The refusal's message, checked for each of `words`.
std::string refused(std::string_view params, std::vector<std::string> words) {
  auto r = parse_params(params);
  INFO("params: ", std::string(params));
  REQUIRE_FALSE(r.spec.has_value());
  INFO("message: ", r.problem.message);
  CHECK_FALSE(r.problem.message.empty());
  CHECK(r.problem.message.size() < 1024);
  CHECK(r.problem.message.find('\n') == std::string::npos);
  for (const auto& w : words) {
    INFO("expected word: ", w);
    CHECK(r.problem.message.find(w) != std::string::npos);
  }
  return r.problem.message;
}

}  // namespace

TEST_SUITE("params: local paths and images") {
  TEST_CASE("a plain absolute path is a local raw disk") {
    auto s = accepted("/srv/guests/web.img");
    CHECK(s.where == kind::local);
    CHECK(s.format == image_format::raw);
    CHECK(s.path == "/srv/guests/web.img");
  }

  TEST_CASE("a plain path keeps a colon in it rather than reading a format") {
    auto s = accepted("/srv/a:b.img");
    CHECK(s.where == kind::local);
    CHECK(s.path == "/srv/a:b.img");
  }

  TEST_CASE("aio: and raw: name a local raw disk, as libxl and QEMU write them") {
    for (auto p : {"aio:/dev/vg/web", "raw:/dev/vg/web"}) {
      auto s = accepted(p);
      CHECK(s.where == kind::local);
      CHECK(s.format == image_format::raw);
      CHECK(s.path == "/dev/vg/web");
    }
  }

  TEST_CASE("each image format names an image served through qemu-storage-daemon") {
    const std::pair<const char*, image_format> cases[] = {{"qcow2", image_format::qcow2}, {"qcow", image_format::qcow},
                                                          {"qed", image_format::qed},     {"vhd", image_format::vpc},
                                                          {"vpc", image_format::vpc},     {"vmdk", image_format::vmdk},
                                                          {"vdi", image_format::vdi},     {"vhdx", image_format::vhdx}};
    for (const auto& [name, f] : cases) {
      auto s = accepted(std::string(name) + ":/images/x." + name);
      CHECK(s.where == kind::image);
      CHECK(s.format == f);
      CHECK(s.path == std::string("/images/x.") + name);
    }
  }

  TEST_CASE("to_string gives QEMU's driver names, vpc for vhd") {
    CHECK(to_string(image_format::raw) == "raw");
    CHECK(to_string(image_format::qcow2) == "qcow2");
    CHECK(to_string(image_format::qcow) == "qcow");
    CHECK(to_string(image_format::qed) == "qed");
    CHECK(to_string(image_format::vpc) == "vpc");
    CHECK(to_string(image_format::vmdk) == "vmdk");
    CHECK(to_string(image_format::vdi) == "vdi");
    CHECK(to_string(image_format::vhdx) == "vhdx");
  }

  TEST_CASE("an image path with a colon after the format keeps its colon") {
    auto s = accepted("qcow2:/images/a:b.qcow2");
    CHECK(s.where == kind::image);
    CHECK(s.path == "/images/a:b.qcow2");
  }
}

TEST_SUITE("params: NBD URIs") {
  TEST_CASE("raw:nbd://host/export connects over TCP to port 10809") {
    auto n = accepted_nbd("raw:nbd://storage.example/web");
    CHECK(n.via == transport::tcp);
    CHECK(n.host == "storage.example");
    CHECK(n.port == "10809");
    CHECK(n.export_name == "web");
    CHECK_FALSE(n.tls);
    CHECK(n.uri() == "nbd://storage.example/web");
  }

  TEST_CASE("aio: works as raw: in front of an NBD URI") {
    auto n = accepted_nbd("aio:nbd://10.0.0.5:10810/disk0");
    CHECK(n.host == "10.0.0.5");
    CHECK(n.port == "10810");
    CHECK(n.export_name == "disk0");
  }

  TEST_CASE("no path or a bare slash is the server's default export") {
    CHECK(accepted_nbd("raw:nbd://h").export_name.empty());
    CHECK(accepted_nbd("raw:nbd://h/").export_name.empty());
    CHECK(accepted_nbd("raw:nbd://h:1234").port == "1234");
  }

  TEST_CASE("the export name is the path less one slash, percent-decoded") {
    CHECK(accepted_nbd("raw:nbd://h//disk").export_name == "/disk");
    CHECK(accepted_nbd("raw:nbd://h/hello%20world").export_name == "hello world");
    CHECK(accepted_nbd("raw:nbd://h/a/b%2Fc").export_name == "a/b/c");
    CHECK(accepted_nbd("raw:nbd://h/%C3%A9t%C3%A9").export_name == "\xc3\xa9t\xc3\xa9");
  }

  TEST_CASE("an IPv6 literal in brackets is stored without them and written back with them") {
    auto n = accepted_nbd("raw:nbd://[::1]:10900/e");
    CHECK(n.host == "::1");
    CHECK(n.port == "10900");
    CHECK(n.uri() == "nbd://[::1]:10900/e");
    CHECK(accepted_nbd("raw:nbd://[fe80::1]/").host == "fe80::1");
  }

  TEST_CASE("a port with leading zeros is read as its number") {
    CHECK(accepted_nbd("raw:nbd://h:00080/").port == "80");
  }

  TEST_CASE("nbd+unix:///export?socket=PATH connects to a unix socket") {
    auto n = accepted_nbd("raw:nbd+unix:///web?socket=/run/nbd/web.sock");
    CHECK(n.via == transport::unix_socket);
    CHECK(n.socket == "/run/nbd/web.sock");
    CHECK(n.export_name == "web");
    CHECK(n.host.empty());
    CHECK(n.uri() == "nbd+unix:///web?socket=/run/nbd/web.sock");
  }

  TEST_CASE("nbd+unix:///?socket=PATH is the default export on a unix socket") {
    auto n = accepted_nbd("raw:nbd+unix:///?socket=/run/a%20b.sock");
    CHECK(n.export_name.empty());
    CHECK(n.socket == "/run/a b.sock");
  }

  TEST_CASE("nbds:// requires TLS and reads the credential files from the query") {
    auto n = accepted_nbd("raw:nbds://alice@h/e?tls-psk-file=/etc/xbd/keys.psk");
    CHECK(n.tls);
    CHECK(n.tls_username == "alice");
    CHECK(n.tls_psk_file == "/etc/xbd/keys.psk");
    CHECK(n.uri() == "nbds://alice@h/e?tls-psk-file=/etc/xbd/keys.psk");
    auto c = accepted_nbd("raw:nbds://h/e?tls-certificates=/etc/pki/xbd&tls-username=bob");
    CHECK(c.tls_certificates == "/etc/pki/xbd");
    CHECK(c.tls_username == "bob");
  }

  TEST_CASE("nbds+unix:// is TLS over a unix socket") {
    auto n = accepted_nbd("raw:nbds+unix:///e?socket=/run/s.sock&tls-certificates=/etc/pki/xbd");
    CHECK(n.tls);
    CHECK(n.via == transport::unix_socket);
    CHECK(n.socket == "/run/s.sock");
    CHECK(n.tls_certificates == "/etc/pki/xbd");
  }

  TEST_CASE("QEMU's nbd+tcp:// is nbd://, and schemes are case-insensitive") {
    auto n = accepted_nbd("raw:nbd+tcp://h:1/e");
    CHECK(n.via == transport::tcp);
    CHECK(n.uri() == "nbd://h:1/e");
    CHECK(accepted_nbd("raw:NBD://h/e").host == "h");
  }

  TEST_CASE("a bare NBD target without a format is read as raw") {
    CHECK(accepted_nbd("nbd://h/e").export_name == "e");
    CHECK(accepted_nbd("nbd:unix:/run/s.sock").socket == "/run/s.sock");
  }

  TEST_CASE("empty query items are skipped") { CHECK(accepted_nbd("raw:nbd+unix:///e?&socket=/s&").socket == "/s"); }
}

TEST_SUITE("params: QEMU's nbd: spellings") {
  TEST_CASE("nbd:unix:PATH is the default export on a unix socket") {
    auto n = accepted_nbd("raw:nbd:unix:/run/nbd.sock");
    CHECK(n.via == transport::unix_socket);
    CHECK(n.socket == "/run/nbd.sock");
    CHECK(n.export_name.empty());
  }

  TEST_CASE("nbd:unix:PATH:exportname=NAME names the export") {
    auto n = accepted_nbd("raw:nbd:unix:/run/nbd.sock:exportname=web");
    CHECK(n.socket == "/run/nbd.sock");
    CHECK(n.export_name == "web");
  }

  TEST_CASE("nbd:HOST:PORT and nbd:HOST:PORT:exportname=NAME connect over TCP") {
    auto n = accepted_nbd("aio:nbd:storage:10809");
    CHECK(n.via == transport::tcp);
    CHECK(n.host == "storage");
    CHECK(n.port == "10809");
    CHECK(n.export_name.empty());
    auto e = accepted_nbd("raw:nbd:10.1.2.3:10900:exportname=a b/c%d");
    CHECK(e.host == "10.1.2.3");
    CHECK(e.port == "10900");
    CHECK(e.export_name == "a b/c%d");  // verbatim: QEMU does not decode it
    CHECK(e.uri() == "nbd://10.1.2.3:10900/a%20b/c%25d");
  }

  TEST_CASE("nbd:[v6]:PORT takes an IPv6 address") {
    auto n = accepted_nbd("raw:nbd:[::1]:10809:exportname=e");
    CHECK(n.host == "::1");
    CHECK(n.export_name == "e");
  }
}

TEST_SUITE("params: describe") {
  TEST_CASE("describe says where the export is and nothing of the credentials") {
    auto n = accepted_nbd("raw:nbds://alice@h:99/e?tls-psk-file=/etc/k.psk");
    const auto d = n.describe();
    CHECK(d.find("\"e\"") != std::string::npos);
    CHECK(d.find("h:99") != std::string::npos);
    CHECK(d.find("TLS") != std::string::npos);
    CHECK(d.find("alice") == std::string::npos);
    CHECK(d.find("k.psk") == std::string::npos);
    auto u = accepted_nbd("raw:nbd:unix:/run/s.sock");
    CHECK(u.describe().find("/run/s.sock") != std::string::npos);
    CHECK(u.describe().find("default") != std::string::npos);
  }
}

TEST_SUITE("params: refusals") {
  TEST_CASE("empty params is refused") { refused("", {"params is empty", "absolute path"}); }

  TEST_CASE("a relative path is refused, with or without a format") {
    refused("web.img", {"\"web.img\"", "relative", "absolute path"});
    refused("raw:web.img", {"\"web.img\"", "relative", "absolute"});
    refused("qcow2:images/x.qcow2", {"relative"});
  }

  TEST_CASE("a format with nothing after it is refused") {
    refused("aio:", {"\"aio:\"", "no image", "absolute path"});
    refused("qcow2:", {"no image"});
  }

  TEST_CASE("an unknown format is refused with the list of formats") {
    refused("qcow3:/x", {"unknown format", "\"qcow3\"", "qcow2", "vhd", "raw", "aio"});
    refused("QCOW2:/x", {"unknown format"});
  }

  TEST_CASE("an image format over NBD is refused: the export must be raw") {
    refused("qcow2:nbd://h/e", {"\"qcow2\"", "raw only", "qemu-storage-daemon", "qcow2:/PATH", "qemu-nbd -f qcow2"});
    refused("vhd:nbd:unix:/s", {"raw only", "driver=vpc"});
  }

  TEST_CASE("protocols QEMU knows and we do not serve are refused, pointing at NBD") {
    for (auto p : {"raw:iscsi://h/iqn/0", "raw:http://h/x.img", "https://h/x.img", "raw:ssh://h/x",
                   "raw:gluster://h/v/x", "raw:nbd+vsock:///e"})
      refused(p, {"protocol is not served", "NBD", "local path"});
  }

  TEST_CASE("file: is refused as QEMU's qdisk refuses it, with the spelling to use") {
    refused("file:/srv/x.img", {"\"file:\"", "raw:/PATH"});
    refused("raw:file:/srv/x.img", {"\"file:\"", "raw:/PATH"});
  }

  TEST_CASE("an unknown URI scheme is refused with the accepted ones") {
    refused("raw:foo://h/e", {"\"foo\"", "scheme", "nbd://", "nbd+unix://"});
    refused("foo://h/e", {"\"foo\"", "scheme", "nbd://"});
  }

  TEST_CASE("NUL and control characters are refused") {
    using namespace std::string_literals;
    refused("/srv/x\0.img"s, {"control character", "byte 6", "\\x00"});
    refused("/srv/x\n.img", {"control character", "\\x0a"});
    refused("raw:nbd://h/e\x7f", {"control character"});
  }

  TEST_CASE("params over 4096 bytes is refused, quoted in part") {
    const std::string big = "/" + std::string(5000, 'a');
    auto m = refused(big, {"4096", "5001 bytes"});
    CHECK(m.size() < 400);
    CHECK(accepted("/" + std::string(4095, 'a')).path.string().size() == 4096);
  }

  TEST_CASE("a bad port is refused") {
    refused("raw:nbd://h:0/e", {"port", "\"0\"", "1 to 65535"});
    refused("raw:nbd://h:65536/e", {"port", "65536"});
    refused("raw:nbd://h:x/e", {"port"});
    refused("raw:nbd://h:/e", {"port"});
    refused("raw:nbd://h:+1/e", {"port"});
    refused("raw:nbd:h:10809x", {"port"});
    refused("raw:nbd:h:1,ipv4=on", {"options", "nbd:HOST:PORT"});
  }

  TEST_CASE("a missing host is refused") {
    refused("raw:nbd:///e", {"no host", "nbd://HOST"});
    refused("raw:nbd://:10809/e", {"no host"});
    refused("raw:nbd::10809", {"no host"});
    refused("raw:nbd:", {"names no server"});
    refused("raw:nbd:h", {"no port", "10809"});
  }

  TEST_CASE("a malformed host is refused") {
    refused("raw:nbd://[::1/e", {"closing ']'"});
    refused("raw:nbd://[zz::1]/e", {"IPv6"});
    refused("raw:nbd://h!x/e", {"\"h!x\"", "host"});
    refused("raw:nbd://[::1]x/e", {"PORT"});
  }

  TEST_CASE("a unix socket URI without socket=, with a host, or with a relative socket is refused") {
    refused("raw:nbd+unix:///e", {"no socket", "socket=/PATH"});
    refused("raw:nbd+unix://h/e?socket=/s", {"names a host", "nbd+unix:///EXPORT?socket=/PATH"});
    refused("raw:nbd+unix:///e?socket=s.sock", {"absolute path", "\"s.sock\""});
    refused("raw:nbd+unix:///e?socket=/a&socket=/b", {"twice"});
    refused("raw:nbd+unix:///e?socket=%00/abstract", {"control character", "abstract"});
    refused("raw:nbd:unix:s.sock", {"absolute path"});
  }

  TEST_CASE("socket= on a TCP URI is refused") { refused("raw:nbd://h/e?socket=/s", {"socket=", "nbd+unix://"}); }

  TEST_CASE("an unknown query key is refused with the accepted keys") {
    refused("raw:nbd://h/e?tls-hostname=x", {"unknown query key", "\"tls-hostname\"", "tls-psk-file", "socket"});
    refused("raw:nbd://h/e?x-foo=1", {"unknown query key"});
    refused("raw:nbd://h/e?socket", {"no value"});
  }

  TEST_CASE("TLS credentials without TLS are refused") {
    refused("raw:nbd://h/e?tls-psk-file=/k", {"TLS", "nbds://"});
    refused("raw:nbd://alice@h/e", {"user", "nbds://"});
    refused("raw:nbds://h/e?tls-certificates=certs", {"absolute path"});
    refused("raw:nbds://a:secret@h/e", {"password"});
    refused("raw:nbds://a@h/e?tls-username=b", {"twice"});
  }

  TEST_CASE("a PSK file without a user, or with certificates too, is refused") {
    // libnbd would take the login name, which a service has none of.
    refused("raw:nbds://h/e?tls-psk-file=/k", {"no user", "nbds://USER@", "tls-username=USER"});
    refused("raw:nbds+unix:///e?socket=/s&tls-psk-file=/k", {"no user", "nbds+unix://USER@"});
    CHECK(accepted_nbd("raw:nbds://h/e?tls-psk-file=/k&tls-username=a").tls_username == "a");
    // libnbd would use the PSK and ignore the certificates.
    refused("raw:nbds://a@h/e?tls-psk-file=/k&tls-certificates=/c", {"both", "name one"});
    CHECK(accepted_nbd("raw:nbds://h/e?tls-certificates=/c").tls_username.empty());
  }

  TEST_CASE("malformed percent escapes and fragments are refused") {
    refused("raw:nbd://h/a%2", {"'%'"});
    refused("raw:nbd://h/a%zz", {"'%'"});
    refused("raw:nbd://h/a%0a", {"control character"});
    refused("raw:nbd://h/e#frag", {"fragment"});
  }

  TEST_CASE("an empty exportname= is refused") { refused("raw:nbd:unix:/s:exportname=", {"empty exportname="}); }

  TEST_CASE("messages quote the toolstack's text at most 256 bytes at a time") {
    const std::string big = "qcow9:/" + std::string(3000, 'x');
    auto m = refused(big, {"unknown format", "bytes)"});
    CHECK(m.size() < 700);
    const std::string ctl(300, '\x01');
    auto c = refused(ctl, {"control character"});
    CHECK(c.size() < 500);
  }
}

TEST_SUITE("params: RBD") {
  rbd_target accepted_rbd(std::string_view params) {
    auto s = accepted(params);
    REQUIRE(s.where == kind::rbd);
    CHECK(s.format == image_format::raw);
    CHECK(s.path.empty());
    return s.rbd;
  }

  TEST_CASE("the forms xl writes for qdisk: aio:, raw: and bare") {
    for (auto p : {"aio:rbd:pool/image", "raw:rbd:pool/image", "rbd:pool/image"}) {
      auto r = accepted_rbd(p);
      CHECK(r.pool == "pool");
      CHECK(r.ns.empty());
      CHECK(r.image == "image");
      CHECK(r.snapshot.empty());
      CHECK(r.user.empty());
      CHECK(r.conf.empty());
      CHECK(r.options.empty());
    }
  }

  TEST_CASE("namespace, snapshot, id, conf and librados options") {
    auto r = accepted_rbd(
        "aio:rbd:vms/tenant-a/web@before-upgrade:id=xen:conf=/etc/ceph/"
        "prod.conf:mon_host=10.0.0.1\\:6789\\;10.0.0.2:keyring=/etc/ceph/xen.keyring:auth_supported=cephx");
    CHECK(r.pool == "vms");
    CHECK(r.ns == "tenant-a");
    CHECK(r.image == "web");
    CHECK(r.snapshot == "before-upgrade");
    CHECK(r.user == "xen");
    CHECK(r.conf == "/etc/ceph/prod.conf");
    REQUIRE(r.options.size() == 3);
    CHECK(r.options[0] == std::pair<std::string, std::string>{"mon_host", "10.0.0.1:6789;10.0.0.2"});
    CHECK(r.options[1] == std::pair<std::string, std::string>{"keyring", "/etc/ceph/xen.keyring"});
    CHECK(r.options[2] == std::pair<std::string, std::string>{"auth_supported", "cephx"});
  }

  TEST_CASE("options follow the image directly, and escapes keep separators in names") {
    auto r = accepted_rbd("rbd:p/img:id=admin");
    CHECK(r.image == "img");
    CHECK(r.user == "admin");
    auto e = accepted_rbd("rbd:p/we\\@ird\\:name");
    CHECK(e.image == "we@ird:name");
    CHECK(e.snapshot.empty());
  }

  TEST_CASE("describe names pool, namespace, image, snapshot and client, never an option's value") {
    auto r = accepted_rbd("rbd:vms/ns/web@snap1:id=xen:key=AQBsecretsecret==:mon_host=10.1.2.3");
    const auto d = r.describe();
    for (auto w : {"vms/ns/web", "snap1", "client.xen"}) {
      INFO(w);
      CHECK(d.find(w) != std::string::npos);
    }
    CHECK(d.find("secret") == std::string::npos);
    CHECK(d.find("10.1.2.3") == std::string::npos);
    CHECK(describe(accepted("rbd:vms/ns/web@snap1:id=xen:key=AQBsecretsecret==")) == d);
  }

  TEST_CASE("malformed RBD targets are refused, each with its reason") {
    refused("rbd:pool", {"names no image", "rbd:POOL/IMAGE"});
    refused("rbd:/image", {"empty pool"});
    refused("rbd:pool/", {"empty image"});
    refused("rbd:pool/image@", {"empty snapshot"});
    refused("rbd:pool//image", {"empty namespace"});
    refused("rbd:pool/a/b/c", {"more than pool, namespace and image"});
    refused("rbd:pool/image:id", {"\"id\"", "no value"});
    refused("rbd:pool/image:id=a:id=b", {"id= twice"});
    refused("rbd:pool/image:conf=etc/ceph.conf", {"conf=", "absolute"});
    refused("rbd:pool/image:id=client.xen", {"without \"client.\"", "id=xen"});
    refused("rbd:pool/image:Mon_Host=x", {"not a Ceph option name"});
    refused("rbd:pool/image:mon_host=a:mon_host=b", {"mon_host= twice"});
    refused("rbd:pool/image:id=", {"id= is empty"});
  }

  TEST_CASE("an image format over RBD is refused: the image is raw") {
    refused("qcow2:rbd:pool/image", {"raw only", "aio:rbd:"});
  }
}
