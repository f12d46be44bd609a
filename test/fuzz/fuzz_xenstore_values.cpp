// Fuzz target: values a guest (or a buggy toolstack) writes into xenstore,
// through the strict parsers the control plane uses.
#include "asio_xen/xenstore.hpp"
#include "blkback/ring/abi.hpp"
#include "blkback/storage/direct_io.hpp"

#include <cstdint>
#include <string>
#include <string_view>

using namespace xbd;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  // An accepted number prints back as exactly the text it came from: no
  // prefix, suffix, sign or leading zero slipped through.
  if (auto v = asio_xen::parse_value<unsigned>(text)) {
    if (std::to_string(*v) != text && !(text.size() > 1 && text[0] == '0')) __builtin_trap();
  }
  if (auto v = asio_xen::parse_value<std::uint64_t>(text)) {
    if (text.empty() || text.front() == '+' || text.front() == '-' || text.front() == ' ') __builtin_trap();
  }
  if (auto b = asio_xen::parse_value<bool>(text)) {
    if (text != "0" && text != "1") __builtin_trap();
  }
  if (auto a = blkback::parse_protocol(text)) {
    if (blkback::to_string(*a) != text) __builtin_trap();
  }
  auto dio = blkback::parse_direct_io_safe(std::string(text));
  if (dio == blkback::direct_io_key::set && text != "1") __builtin_trap();
  return 0;
}
