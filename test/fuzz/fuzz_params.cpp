// Fuzz target: the toolstack's params, through the disk spec parser.
#include "blkback/storage/spec.hpp"

#include <cstdint>
#include <string>
#include <string_view>

using namespace xbd::blkback::storage;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto r = parse_params(text);
  if (!r.spec) {
    // A refusal always says why, on one line, and never carries the whole
    // of an enormous value.
    const auto& m = r.problem.message;
    if (m.empty() || m.size() > 2048 || m.find('\n') != std::string::npos) __builtin_trap();
    return 0;
  }
  if (!r.problem.message.empty()) __builtin_trap();
  if (text.size() > 4096) __builtin_trap();
  const auto& s = *r.spec;
  switch (s.where) {
    case disk_spec::kind::local:
    case disk_spec::kind::image:
      if (!s.path.is_absolute()) __builtin_trap();
      if ((s.where == disk_spec::kind::local) != (s.format == image_format::raw)) __builtin_trap();
      break;
    case disk_spec::kind::nbd: {
      if (s.format != image_format::raw) __builtin_trap();
      const auto& n = s.nbd;
      if (n.via == nbd_target::transport::unix_socket && !n.socket.is_absolute()) __builtin_trap();
      if (n.via == nbd_target::transport::tcp && (n.host.empty() || n.port.empty())) __builtin_trap();
      if (n.export_name.find('\0') != std::string::npos) __builtin_trap();
      // The URI written for libnbd reads back as the same target (where
      // its escapes still fit in the length params is allowed).
      const auto uri = "raw:" + n.uri();
      const auto again = parse_params(uri);
      if (uri.size() <= 4096 && (!again.spec || again.spec->where != disk_spec::kind::nbd || !(again.spec->nbd == n)))
        __builtin_trap();
      // describe() is a bounded, single line, whatever the names in it.
      const auto d = n.describe();
      if (d.size() > 2048 || d.find('\n') != std::string::npos) __builtin_trap();
      break;
    }
    case disk_spec::kind::rbd: {
      if (s.format != image_format::raw) __builtin_trap();
      const auto& r = s.rbd;
      if (r.pool.empty() || r.image.empty()) __builtin_trap();
      if (!r.conf.empty() && r.conf.front() != '/') __builtin_trap();
      // describe() is bounded, one line, and never shows an option's value.
      const auto d = r.describe();
      if (d.size() > 2048 || d.find('\n') != std::string::npos) __builtin_trap();
      break;
    }
  }
  return 0;
}
