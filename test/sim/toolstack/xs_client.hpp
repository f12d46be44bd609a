// A small, throwing C++ wrapper over libxenstore, as the simulated toolstack
// (and its tests) use it: one connection opened with xs_open(0), so it
// honours XENSTORED_PATH, and talks as dom0 (a Unix-socket connection is
// always dom0 and privileged).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

struct xs_handle;

namespace xbd::sim {

// Every failure of the simulated toolstack (xenstore errors, bad arguments,
// conditions under which libxl would refuse) is reported with this type.
class toolstack_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// One entry of a node's permission list, as xenstore holds it: the first
// entry names the owner and what everyone not listed may do.
struct xs_perm {
  unsigned domid = 0;
  char access = 'n';  // 'n' none, 'r' read, 'w' write, 'b' both
  bool operator==(const xs_perm&) const = default;
};

// "n0,r5" <-> {{0,'n'},{5,'r'}}: the notation of xenstore-ls and xl.
std::string to_string(const std::vector<xs_perm>& perms);
std::vector<xs_perm> parse_perms(std::string_view text);

class xs_client {
 public:
  using transaction = std::uint32_t;  // xs_transaction_t; 0 = none
  static constexpr transaction no_transaction = 0;

  // Opens a connection with xs_open(0). Throws toolstack_error on failure.
  xs_client();
  ~xs_client();
  xs_client(const xs_client&) = delete;
  xs_client& operator=(const xs_client&) = delete;

  // Reads a node; nullopt when it does not exist (ENOENT). Other errors throw.
  std::optional<std::string> read(const std::string& path, transaction t = no_transaction);
  bool exists(const std::string& path, transaction t = no_transaction);
  void write(const std::string& path, std::string_view value, transaction t = no_transaction);
  void mkdir(const std::string& path, transaction t = no_transaction);
  // Removes a node and its subtree. Returns false if it did not exist.
  bool rm(const std::string& path, transaction t = no_transaction);
  // Children's names; nullopt when the node does not exist.
  std::optional<std::vector<std::string>> directory(const std::string& path, transaction t = no_transaction);
  void set_perms(const std::string& path, const std::vector<xs_perm>& perms, transaction t = no_transaction);
  // Permissions of a node; nullopt when it does not exist.
  std::optional<std::vector<xs_perm>> perms(const std::string& path, transaction t = no_transaction);
  // Shorthand for tests: "n0,r5", or "" when the node does not exist.
  std::string perms_string(const std::string& path);

  // Runs `body` in a transaction, retrying the whole body when the commit
  // fails with EAGAIN (as every libxl transaction loop does). An exception
  // from `body` aborts the transaction and propagates.
  void in_transaction(const std::function<void(transaction)>& body);

  // Waits until `pred(value of path)` is true, re-evaluated on every watch
  // event on `path` (the watch also fires once on registration, so the
  // current value is always looked at). Returns false on timeout.
  bool wait_for(const std::string& path, const std::function<bool(const std::optional<std::string>&)>& pred,
                std::chrono::milliseconds timeout);

  bool introduce_domain(unsigned domid, unsigned long mfn, unsigned port);
  bool release_domain(unsigned domid);

  xs_handle* handle() { return h_; }

 private:
  xs_handle* h_ = nullptr;
  unsigned next_token_ = 0;
};

}  // namespace xbd::sim
