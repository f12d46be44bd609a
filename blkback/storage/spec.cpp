#include "blkback/storage/spec.hpp"

#include <arpa/inet.h>

#include <array>
#include <charconv>
#include <cstddef>
#include <string>
#include <utility>

namespace xbd::blkback::storage {

namespace {

// Beyond any path or URI a toolstack writes (PATH_MAX is 4096), and
// NBD_MAX_STRING_SIZE bounds an export name the same way.
constexpr std::size_t max_params = 4096;
// What a message shows of guest- or toolstack-controlled text.
constexpr std::size_t shown = 256;

constexpr std::string_view accepted_formats = "aio, raw, qcow2, qcow, qed, vhd (or vpc), vmdk, vdi, vhdx";
constexpr std::string_view accepted_forms =
    "an absolute path, <format>:<absolute path>, raw:<NBD URI> (nbd://, nbds://, nbd+unix://, nbds+unix://, "
    "nbd:HOST:PORT, nbd:unix:PATH), or raw:rbd:POOL/IMAGE";

// Text for a message, in double quotes: control characters, quotes and
// backslashes escaped, and cut (at a character boundary) once the shown
// part reaches `shown` bytes.
std::string quote(std::string_view s) {
  std::string out = "\"";
  std::size_t i = 0;
  for (; i < s.size() && out.size() < shown; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      constexpr std::string_view hex = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 0xf];
    } else {
      if (c == '"' || c == '\\') out += '\\';
      out += static_cast<char>(c);
    }
  }
  // Do not end in the middle of a UTF-8 sequence.
  while (i < s.size() && (static_cast<unsigned char>(s[i]) & 0xc0) == 0x80 && out.size() < shown + 4) out += s[i++];
  out += '"';
  if (i < s.size()) out += "... (" + std::to_string(s.size()) + " bytes)";
  return out;
}

parsed_spec refuse(std::string message) { return {std::nullopt, spec_problem{std::move(message)}}; }

parsed_spec accept(disk_spec s) { return {std::move(s), {}}; }

bool is_control(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u < 0x20 || u == 0x7f;
}

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// RFC 3986 percent-decoding; nullopt on a '%' not followed by two hex digits.
std::optional<std::string> percent_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    if (i + 2 >= s.size()) return std::nullopt;
    const int hi = hex_value(s[i + 1]);
    const int lo = hex_value(s[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return out;
}

bool unreserved(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
         c == '_' || c == '~';
}

// Everything but RFC 3986's unreserved characters (and `keep`) escaped:
// more than the RFC requires, so that any URI parser reads it back whole.
std::string percent_encode(std::string_view s, std::string_view keep = {}) {
  constexpr std::string_view hex = "0123456789ABCDEF";
  std::string out;
  for (char c : s) {
    if (unreserved(c) || keep.find(c) != std::string_view::npos) {
      out += c;
    } else {
      const auto u = static_cast<unsigned char>(c);
      out += '%';
      out += hex[u >> 4];
      out += hex[u & 0xf];
    }
  }
  return out;
}

// A TCP port, 1-65535, as canonical decimal; nullopt otherwise.
std::optional<std::string> parse_port(std::string_view s) {
  if (s.empty() || s.size() > 5) return std::nullopt;
  unsigned v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || end != s.data() + s.size() || v == 0 || v > 65535) return std::nullopt;
  return std::to_string(v);
}

// A host as a name or IPv4 address ([A-Za-z0-9-._~]), or an IPv6 literal.
bool valid_host(std::string_view h, bool v6) {
  if (h.empty()) return false;
  if (v6) {
    std::array<unsigned char, 16> buf{};
    const std::string z(h);
    return ::inet_pton(AF_INET6, z.c_str(), buf.data()) == 1;
  }
  for (char c : h)
    if (!unreserved(c)) return false;
  return true;
}

// Protocols QEMU's block layer (or libnbd) knows that are not ours to serve.
bool is_foreign_protocol(std::string_view name) {
  constexpr std::array<std::string_view, 19> known = {
      "iscsi",       "iser",        "http",         "https",        "ftp",       "ftps",     "ssh",
      "gluster",     "gluster+tcp", "gluster+unix", "gluster+rdma", "nfs",       "sheepdog", "vxhs",
      "host_device", "host_cdrom",  "nvme",         "nbd+vsock",    "nbds+vsock"};
  const std::string l = lower(name);
  for (auto p : known)
    if (l == p) return true;
  return false;
}

std::optional<image_format> parse_format(std::string_view name) {
  if (name == "aio" || name == "raw") return image_format::raw;
  if (name == "qcow2") return image_format::qcow2;
  if (name == "qcow") return image_format::qcow;
  if (name == "qed") return image_format::qed;
  if (name == "vhd" || name == "vpc") return image_format::vpc;
  if (name == "vmdk") return image_format::vmdk;
  if (name == "vdi") return image_format::vdi;
  if (name == "vhdx") return image_format::vhdx;
  return std::nullopt;
}

// Whether the text is an NBD target: a URI with one of the NBD schemes
// (QEMU's nbd+tcp among them), or QEMU's "nbd:..." spelling.
bool looks_like_nbd(std::string_view t) {
  const auto sep = t.find("://");
  if (sep != std::string_view::npos) {
    const std::string scheme = lower(t.substr(0, sep));
    return scheme == "nbd" || scheme == "nbds" || scheme == "nbd+tcp" || scheme == "nbd+unix" || scheme == "nbds+unix";
  }
  return starts_with(lower(t.substr(0, 4)), "nbd:");
}

// The text before the first ':' when it reads as a URI scheme or a QEMU
// protocol name (letters, digits, '+', '-', '.').
std::string_view protocol_of(std::string_view t) {
  const auto colon = t.find(':');
  if (colon == std::string_view::npos || colon == 0) return {};
  for (std::size_t i = 0; i < colon; ++i) {
    const char c = t[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '+' ||
                    c == '-' || c == '.' || c == '_';
    if (!ok) return {};
  }
  return t.substr(0, colon);
}

// The result of reading an NBD target: the target, or a message.
struct nbd_parse {
  std::optional<nbd_target> target;
  std::string problem;
};

nbd_parse nbd_problem(std::string m) { return {std::nullopt, std::move(m)}; }

// QEMU's legacy spelling: nbd:unix:PATH[:exportname=NAME] or
// nbd:HOST:PORT[:exportname=NAME] (block/nbd.c). The export name is the
// rest of the text after the first ":exportname=", verbatim.
nbd_parse parse_qemu_nbd(std::string_view t) {
  const std::string q = quote(t);
  nbd_target n;
  std::string_view spec = t.substr(4);  // after "nbd:"
  constexpr std::string_view en = ":exportname=";
  if (auto at = spec.find(en); at != std::string_view::npos) {
    n.export_name = std::string(spec.substr(at + en.size()));
    spec = spec.substr(0, at);
    if (n.export_name.empty())
      return nbd_problem("NBD target " + q + " has an empty exportname=: name the export or leave the option out");
  }
  if (spec.empty())
    return nbd_problem("NBD target " + q + " names no server: expected nbd:HOST:PORT or nbd:unix:/PATH");
  if (starts_with(spec, "unix:")) {
    const std::string_view path = spec.substr(5);
    if (path.empty() || path.front() != '/')
      return nbd_problem("NBD target " + q + ": the unix socket must be an absolute path (nbd:unix:/PATH)");
    n.via = nbd_target::transport::unix_socket;
    n.socket = std::string(path);
    return {std::move(n), {}};
  }
  if (spec.find(',') != std::string_view::npos)
    return nbd_problem("NBD target " + q + ": socket options after ',' are not accepted; use nbd:HOST:PORT");
  std::string_view host;
  std::string_view port;
  bool v6 = false;
  if (spec.front() == '[') {
    const auto close = spec.find(']');
    if (close == std::string_view::npos)
      return nbd_problem("NBD target " + q + ": the IPv6 address has no closing ']'");
    host = spec.substr(1, close - 1);
    v6 = true;
    const std::string_view rest = spec.substr(close + 1);
    if (rest.empty() || rest.front() != ':')
      return nbd_problem("NBD target " + q + " has no port: expected nbd:[ADDRESS]:PORT");
    port = rest.substr(1);
  } else {
    const auto colon = spec.find(':');
    if (colon == std::string_view::npos)
      return nbd_problem("NBD target " + q + " has no port: expected nbd:HOST:PORT (NBD's port is 10809)");
    host = spec.substr(0, colon);
    port = spec.substr(colon + 1);
  }
  if (host.empty()) return nbd_problem("NBD target " + q + " has no host: expected nbd:HOST:PORT");
  if (!valid_host(host, v6))
    return nbd_problem("NBD target " + q + ": " + quote(host) + " is not a host name or " +
                       (v6 ? "IPv6 address" : "address (IPv6 goes in brackets: nbd:[::1]:PORT)"));
  auto p = parse_port(port);
  if (!p) return nbd_problem("NBD target " + q + ": the port " + quote(port) + " is not a number from 1 to 65535");
  n.host = std::string(host);
  n.port = *p;
  return {std::move(n), {}};
}

// An NBD URI (NetworkBlockDevice/nbd doc/uri.md), with the query keys
// libnbd reads. QEMU's "nbd+tcp" is read as "nbd".
nbd_parse parse_nbd_uri(std::string_view t) {
  const std::string q = quote(t);
  const auto sep = t.find("://");
  const std::string scheme = lower(t.substr(0, sep));
  nbd_target n;
  n.tls = scheme == "nbds" || scheme == "nbds+unix";
  const bool unix_socket = scheme == "nbd+unix" || scheme == "nbds+unix";
  n.via = unix_socket ? nbd_target::transport::unix_socket : nbd_target::transport::tcp;

  std::string_view rest = t.substr(sep + 3);
  if (rest.find('#') != std::string_view::npos)
    return nbd_problem("NBD URI " + q + " has a fragment ('#'), which means nothing to NBD");
  const auto auth_end = rest.find_first_of("/?");
  const std::string_view authority = rest.substr(0, auth_end);
  rest = auth_end == std::string_view::npos ? std::string_view{} : rest.substr(auth_end);
  const auto qmark = rest.find('?');
  const std::string_view path = rest.substr(0, qmark);
  const std::string_view query = qmark == std::string_view::npos ? std::string_view{} : rest.substr(qmark + 1);

  // Authority: [user@]host[:port] for TCP, at most user@ for a unix socket.
  std::string_view hostport = authority;
  std::optional<std::string> username;
  if (auto at = authority.rfind('@'); at != std::string_view::npos) {
    const std::string_view user = authority.substr(0, at);
    hostport = authority.substr(at + 1);
    if (!n.tls) return nbd_problem("NBD URI " + q + " names a user, which only TLS uses: use nbds:// or nbds+unix://");
    if (user.find(':') != std::string_view::npos)
      return nbd_problem("NBD URI " + q + " carries a password: give credentials in a tls-psk-file instead");
    auto u = percent_decode(user);
    if (!u || u->empty()) return nbd_problem("NBD URI " + q + ": the user name before '@' is empty or malformed");
    username = std::move(*u);
  }
  if (unix_socket) {
    if (!hostport.empty())
      return nbd_problem("NBD URI " + q + " names a host, but " + scheme + ":// takes none: write " + scheme +
                         ":///EXPORT?socket=/PATH");
  } else {
    if (hostport.empty())
      return nbd_problem("NBD URI " + q + " has no host: expected " + scheme + "://HOST[:PORT]/EXPORT");
    std::string_view host;
    std::optional<std::string_view> port;
    bool v6 = false;
    if (hostport.front() == '[') {
      const auto close = hostport.find(']');
      if (close == std::string_view::npos) return nbd_problem("NBD URI " + q + ": the IPv6 address has no closing ']'");
      host = hostport.substr(1, close - 1);
      v6 = true;
      const std::string_view after = hostport.substr(close + 1);
      if (!after.empty()) {
        if (after.front() != ':') return nbd_problem("NBD URI " + q + ": expected ':PORT' after the IPv6 address");
        port = after.substr(1);
      }
    } else {
      const auto colon = hostport.find(':');
      host = hostport.substr(0, colon);
      if (colon != std::string_view::npos) port = hostport.substr(colon + 1);
    }
    if (host.empty()) return nbd_problem("NBD URI " + q + " has no host: expected " + scheme + "://HOST[:PORT]/EXPORT");
    if (!valid_host(host, v6))
      return nbd_problem("NBD URI " + q + ": " + quote(host) + " is not a host name or " +
                         (v6 ? "IPv6 address" : "address (IPv6 goes in brackets: nbd://[::1]/)"));
    n.host = std::string(host);
    if (port) {
      auto p = parse_port(*port);
      if (!p) return nbd_problem("NBD URI " + q + ": the port " + quote(*port) + " is not a number from 1 to 65535");
      n.port = *p;
    }
  }

  // The path less its leading '/' is the export name.
  if (!path.empty()) {
    auto e = percent_decode(path.substr(1));
    if (!e) return nbd_problem("NBD URI " + q + ": the export name has a '%' not followed by two hex digits");
    for (char c : *e)
      if (is_control(c))
        return nbd_problem("NBD URI " + q + ": the export name contains a control character once decoded");
    n.export_name = std::move(*e);
  }

  // Query: key=value pairs separated by '&', each key at most once.
  bool have_socket = false;
  for (std::string_view items = query; !items.empty();) {
    const auto amp = items.find('&');
    const std::string_view item = items.substr(0, amp);
    items = amp == std::string_view::npos ? std::string_view{} : items.substr(amp + 1);
    if (item.empty()) continue;
    const auto eq = item.find('=');
    auto key = percent_decode(item.substr(0, eq));
    if (!key) return nbd_problem("NBD URI " + q + ": a query key has a '%' not followed by two hex digits");
    if (eq == std::string_view::npos)
      return nbd_problem("NBD URI " + q + ": the query key " + quote(*key) + " has no value (expected KEY=VALUE)");
    auto value = percent_decode(item.substr(eq + 1));
    if (!value) return nbd_problem("NBD URI " + q + ": the value of " + quote(*key) + " is malformed ('%' escape)");
    for (char c : *value)
      if (is_control(c))
        return nbd_problem("NBD URI " + q + ": the value of " + quote(*key) +
                           " contains a control character once decoded (abstract sockets are not supported)");
    const auto absolute = [&](std::string_view what) -> std::string {
      if (value->empty() || value->front() != '/')
        return "NBD URI " + q + ": " + std::string(what) + " must be an absolute path, not " + quote(*value);
      return {};
    };
    const auto tls_only = [&]() -> std::string {
      if (n.tls) return {};
      std::string m = "NBD URI " + q + ": " + quote(*key) + " only applies to TLS: use nbds:// or nbds+unix:// (";
      m += scheme;
      m += ":// connects without TLS)";
      return m;
    };
    std::string m;  // a refusal from absolute() or tls_only()
    if (*key == "socket") {
      if (!unix_socket) {
        std::string m = "NBD URI " + q + ": socket= belongs to nbd+unix:// and nbds+unix:// URIs, not ";
        m += scheme;
        m += "://";
        return nbd_problem(std::move(m));
      }
      if (have_socket) return nbd_problem("NBD URI " + q + " gives socket= twice");
      if (!(m = absolute("the socket")).empty()) return nbd_problem(std::move(m));
      n.socket = *value;
      have_socket = true;
    } else if (*key == "tls-psk-file") {
      if (!(m = tls_only()).empty() || !(m = absolute("tls-psk-file")).empty()) return nbd_problem(std::move(m));
      if (!n.tls_psk_file.empty()) return nbd_problem("NBD URI " + q + " gives tls-psk-file= twice");
      n.tls_psk_file = *value;
    } else if (*key == "tls-certificates") {
      if (!(m = tls_only()).empty() || !(m = absolute("tls-certificates")).empty()) return nbd_problem(std::move(m));
      if (!n.tls_certificates.empty()) return nbd_problem("NBD URI " + q + " gives tls-certificates= twice");
      n.tls_certificates = *value;
    } else if (*key == "tls-username") {
      if (!(m = tls_only()).empty()) return nbd_problem(std::move(m));
      if (username) return nbd_problem("NBD URI " + q + " gives the TLS user name twice (before '@' and in the query)");
      if (value->empty()) return nbd_problem("NBD URI " + q + ": tls-username= is empty");
      username = *value;
    } else {
      return nbd_problem("NBD URI " + q + " has the unknown query key " + quote(*key) +
                         "; accepted: socket (nbd+unix://, nbds+unix://), tls-psk-file, tls-certificates, tls-username "
                         "(nbds://, nbds+unix://)");
    }
  }
  if (unix_socket && !have_socket)
    return nbd_problem("NBD URI " + q + " names no socket: expected " + scheme + ":///EXPORT?socket=/PATH");
  // libnbd would use the PSK and ignore the certificates without a word.
  if (!n.tls_psk_file.empty() && !n.tls_certificates.empty())
    return nbd_problem("NBD URI " + q + " gives both tls-psk-file and tls-certificates: name one");
  // Without a user libnbd takes $LOGNAME or the login name, which a service
  // has none of (getlogin_r fails without a terminal).
  if (!n.tls_psk_file.empty() && !username)
    return nbd_problem("NBD URI " + q + " gives a tls-psk-file but no user: write " + scheme +
                       "://USER@... or add tls-username=USER (the PSK identity)");
  if (username) n.tls_username = std::move(*username);
  return {std::move(n), {}};
}

nbd_parse parse_nbd(std::string_view t) {
  if (t.find("://") != std::string_view::npos) return parse_nbd_uri(t);
  return parse_qemu_nbd(t);
}

// --- RBD ---------------------------------------------------------------

// The text up to the first unescaped `delim` (a backslash escapes the next
// character), and the rest after it; the rest is nullopt when there is no
// such delimiter.
std::pair<std::string_view, std::optional<std::string_view>> next_token(std::string_view s, char delim) {
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\') {
      ++i;
    } else if (s[i] == delim) {
      return {s.substr(0, i), s.substr(i + 1)};
    }
  }
  return {s, std::nullopt};
}

// The escapes removed; a trailing lone backslash is kept as it is.
std::string unescape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) ++i;
    out += s[i];
  }
  return out;
}

// Whether an unescaped `c` occurs.
bool has_unescaped(std::string_view s, char c) { return next_token(s, c).second.has_value(); }

struct rbd_parse {
  std::optional<rbd_target> target;
  std::string problem;
};

rbd_parse rbd_problem(std::string m) { return {std::nullopt, std::move(m)}; }

// A RADOS option name as librados spells them (mon_host, "mon host").
bool valid_option_name(std::string_view k) {
  if (k.empty() || k.size() > 64) return false;
  for (char c : k)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == ' ' || c == '-')) return false;
  return true;
}

// The KEY=VALUE list after the image: id and conf are ours, the rest goes
// to librados as it is (what QEMU does).
std::string rbd_options(std::string_view q, std::optional<std::string_view> rest, rbd_target& r) {
  while (rest) {
    auto [item, after] = next_token(*rest, ':');
    rest = after;
    auto [name_raw, value_raw] = next_token(item, '=');
    const std::string name = unescape(name_raw);
    if (!value_raw)
      return "RBD target " + std::string(q) + ": the option " + quote(name) + " has no value (expected KEY=VALUE)";
    const std::string value = unescape(*value_raw);
    if (!valid_option_name(name))
      return "RBD target " + std::string(q) + ": " + quote(name) +
             " is not a Ceph option name (lower-case letters, digits and '_')";
    if (name == "id" || name == "conf") {
      std::string& field = name == "id" ? r.user : r.conf;
      if (!field.empty()) return "RBD target " + std::string(q) + " gives " + name + "= twice";
      if (value.empty()) return "RBD target " + std::string(q) + ": " + name + "= is empty";
      if (name == "conf" && value.front() != '/')
        return "RBD target " + std::string(q) + ": conf= must be an absolute path, not " + quote(value);
      if (name == "id" && starts_with(value, "client."))
        return "RBD target " + std::string(q) + ": id= is the client's id without \"client.\" (id=" + value.substr(7) +
               ")";
      field = value;
      continue;
    }
    for (const auto& [k, v] : r.options)
      if (k == name) return "RBD target " + std::string(q) + " gives " + name + "= twice";
    r.options.emplace_back(name, value);
  }
  return {};
}

// rbd:POOL[/NAMESPACE]/IMAGE[@SNAPSHOT][:KEY=VALUE...], as QEMU reads it
// (block/rbd.c's legacy filename): the pool ends at the first '/', the
// snapshot starts at the first '@', the options at the first ':' after.
rbd_parse parse_rbd(std::string_view t) {
  const std::string q = quote(t);
  const std::string_view body = t.substr(4);  // after "rbd:"
  auto [pool_raw, after_pool] = next_token(body, '/');
  if (!after_pool) return rbd_problem("RBD target " + q + " names no image: expected rbd:POOL/IMAGE");
  rbd_target r;
  r.pool = unescape(pool_raw);
  std::string_view image_part;
  std::optional<std::string_view> opts;
  if (has_unescaped(*after_pool, '@')) {
    auto [img, snap_and_opts] = next_token(*after_pool, '@');
    image_part = img;
    auto [snap, o] = next_token(*snap_and_opts, ':');
    r.snapshot = unescape(snap);
    opts = o;
    if (r.snapshot.empty()) return rbd_problem("RBD target " + q + " has an empty snapshot name after '@'");
  } else {
    auto [img, o] = next_token(*after_pool, ':');
    image_part = img;
    opts = o;
  }
  if (auto [ns, image] = next_token(image_part, '/'); image) {
    if (has_unescaped(*image, '/'))
      return rbd_problem("RBD target " + q + " has more than pool, namespace and image: expected POOL/NAMESPACE/IMAGE");
    r.ns = unescape(ns);
    r.image = unescape(*image);
    if (r.ns.empty()) return rbd_problem("RBD target " + q + " has an empty namespace: expected POOL/NAMESPACE/IMAGE");
  } else {
    r.image = unescape(image_part);
  }
  if (r.pool.empty()) return rbd_problem("RBD target " + q + " has an empty pool name: expected rbd:POOL/IMAGE");
  if (r.image.empty()) return rbd_problem("RBD target " + q + " has an empty image name: expected rbd:POOL/IMAGE");
  if (auto m = rbd_options(q, opts, r); !m.empty()) return rbd_problem(std::move(m));
  return {std::move(r), {}};
}

bool looks_like_rbd(std::string_view t) { return lower(t.substr(0, 4)) == "rbd:"; }

std::string foreign_protocol_message(std::string_view params, std::string_view protocol) {
  if (lower(protocol) == "file")
    return "params " + quote(params) +
           ": \"file:\" is not a format (QEMU's qdisk refuses it too); write the path alone "
           "or as raw:/PATH";
  return "params " + quote(params) + ": the " + quote(protocol) +
         " protocol is not served; use a local path, or export the disk over NBD (qemu-storage-daemon, qemu-nbd, "
         "nbdkit) and name it as raw:nbd://HOST/EXPORT or raw:nbd+unix:///EXPORT?socket=/PATH";
}

}  // namespace

std::string_view to_string(image_format f) {
  switch (f) {
    case image_format::raw:
      return "raw";
    case image_format::qcow2:
      return "qcow2";
    case image_format::qcow:
      return "qcow";
    case image_format::qed:
      return "qed";
    case image_format::vpc:
      return "vpc";
    case image_format::vmdk:
      return "vmdk";
    case image_format::vdi:
      return "vdi";
    case image_format::vhdx:
      return "vhdx";
  }
  return "unknown";
}

std::string nbd_target::uri() const {
  const bool unix_socket = via == transport::unix_socket;
  std::string u = tls ? "nbds" : "nbd";
  if (unix_socket) u += "+unix";
  u += "://";
  // libnbd takes the TLS user name from the URI's userinfo.
  if (!tls_username.empty()) u += percent_encode(tls_username) + "@";
  if (!unix_socket) {
    u += host.find(':') != std::string::npos ? "[" + host + "]" : host;
    if (port != "10809") u += ":" + port;
  }
  u += "/" + percent_encode(export_name, "/");
  std::string query;
  auto add = [&](std::string_view key, const std::string& value) {
    if (value.empty()) return;
    query += query.empty() ? "?" : "&";
    query += std::string(key) + "=" + percent_encode(value, "/");
  };
  if (unix_socket) add("socket", socket.string());
  add("tls-psk-file", tls_psk_file);
  add("tls-certificates", tls_certificates);
  return u + query;
}

std::string nbd_target::describe() const {
  std::string d = export_name.empty() ? std::string("the default NBD export") : "NBD export " + quote(export_name);
  if (via == transport::unix_socket) {
    d += " on unix socket " + quote(socket.string());
  } else {
    d += " at " + (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + port;
  }
  if (tls) d += " over TLS";
  return d;
}

std::string rbd_target::describe() const {
  std::string d = "RBD image " + quote(pool + "/" + (ns.empty() ? "" : ns + "/") + image);
  if (!snapshot.empty()) d += " at snapshot " + quote(snapshot);
  if (!user.empty()) d += " as " + quote("client." + user);
  return d;
}

namespace {

// An NBD target (raw is the only format it can have), or why not.
parsed_spec nbd_spec(std::string_view target) {
  auto n = parse_nbd(target);
  if (!n.target) return refuse("params: " + n.problem);
  disk_spec s;
  s.where = disk_spec::kind::nbd;
  s.nbd = std::move(*n.target);
  return accept(std::move(s));
}

// An RBD target (raw is the only format it can have), or why not.
parsed_spec rbd_spec(std::string_view target) {
  auto r = parse_rbd(target);
  if (!r.target) return refuse("params: " + r.problem);
  disk_spec s;
  s.where = disk_spec::kind::rbd;
  s.rbd = std::move(*r.target);
  return accept(std::move(s));
}

}  // namespace

parsed_spec parse_params(std::string_view params) {
  if (params.empty()) return refuse(std::string("params is empty: expected ") + std::string(accepted_forms));
  if (params.size() > max_params)
    return refuse("params " + quote(params) + " is longer than the " + std::to_string(max_params) +
                  " bytes accepted for a path or URI");
  for (std::size_t i = 0; i < params.size(); ++i)
    if (is_control(params[i]))
      return refuse("params " + quote(params) + " contains a control character at byte " + std::to_string(i) +
                    "; a path or URI never does");

  // A plain path as non-libxl toolstacks write it; a path with a ':' in it
  // is still a path.
  if (params.front() == '/') {
    disk_spec s;
    s.path = std::string(params);
    return accept(std::move(s));
  }
  // A bare NBD target, with no format: raw is the only thing it can be.
  if (looks_like_nbd(params)) {
    return nbd_spec(params);
  }
  if (looks_like_rbd(params)) return rbd_spec(params);

  const auto colon = params.find(':');
  if (colon == std::string_view::npos)
    return refuse("params " + quote(params) + " is a relative path; expected " + std::string(accepted_forms));
  const std::string_view prefix = params.substr(0, colon);
  const std::string_view target = params.substr(colon + 1);
  const auto format = parse_format(prefix);
  if (!format) {
    if (is_foreign_protocol(prefix) || lower(prefix) == "file") return refuse(foreign_protocol_message(params, prefix));
    if (starts_with(target, "//"))
      return refuse("params " + quote(params) + ": the URI scheme " + quote(prefix) +
                    " is not served; accepted: nbd://, nbds://, nbd+unix://, nbds+unix:// (after raw:)");
    return refuse("params " + quote(params) + " names the unknown format " + quote(prefix) +
                  "; accepted: " + std::string(accepted_formats));
  }
  const std::string fmt(prefix);
  if (target.empty())
    return refuse("params " + quote(params) + " names no image after \"" + fmt +
                  ":\"; expected an absolute path or, for raw, an NBD URI");

  if (target.front() == '/') {
    disk_spec s;
    s.where = *format == image_format::raw ? disk_spec::kind::local : disk_spec::kind::image;
    s.format = *format;
    s.path = std::string(target);
    return accept(std::move(s));
  }
  if (looks_like_nbd(target)) {
    if (*format != image_format::raw)
      return refuse(
          "params " + quote(params) + ": an NBD export is served as raw only, so " + quote(fmt) +
          " cannot be read over NBD; give the image's local path (" + fmt +
          ":/PATH) or serve it as raw with qemu-storage-daemon (--blockdev driver=" + std::string(to_string(*format)) +
          ") or qemu-nbd -f " + std::string(to_string(*format)) + " and name that export as raw:nbd://...");
    return nbd_spec(target);
  }
  if (looks_like_rbd(target)) {
    if (*format != image_format::raw)
      return refuse("params " + quote(params) + ": an RBD image is served as raw only, so " + quote(fmt) +
                    " cannot be read from one; write aio:rbd:... or raw:rbd:...");
    return rbd_spec(target);
  }
  if (auto proto = protocol_of(target); !proto.empty() && (is_foreign_protocol(proto) || lower(proto) == "file"))
    return refuse(foreign_protocol_message(params, proto));
  if (auto proto = protocol_of(target); !proto.empty() && target.find("://") != std::string_view::npos)
    return refuse("params " + quote(params) + ": the URI scheme " + quote(proto) +
                  " is not served; accepted: nbd://, nbds://, nbd+unix://, nbds+unix://");
  return refuse("params " + quote(params) + ": the path " + quote(target) + " is relative; it must be absolute");
}

std::string describe(const disk_spec& s) {
  switch (s.where) {
    case disk_spec::kind::local:
      return s.path.string();
    case disk_spec::kind::image:
      return s.path.string() + " (" + std::string(to_string(s.format)) + ")";
    case disk_spec::kind::nbd:
      return s.nbd.describe();
    case disk_spec::kind::rbd:
      return s.rbd.describe();
  }
  return {};
}

}  // namespace xbd::blkback::storage
