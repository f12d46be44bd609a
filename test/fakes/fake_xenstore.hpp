// An in-process xenstore for unit tests.
//
// One fake_xenstore is the database; connect(domid) gives an xs_driver that
// acts as that domain, so protocol code runs unchanged against it. Semantics
// follow C xenstored where protocol code can tell the difference:
//  - a watch fires once when it is set, then for every change at or below its
//    path (and for the removal of an ancestor), with the changed node's path;
//  - writes create missing parents; rm of a missing node under an existing
//    parent succeeds; a new node inherits its parent's permissions and is
//    owned by an unprivileged creator;
//  - domain 0 is privileged; other domains are held to node permissions
//    (owner: everything; listed domains: their entry; others: the first
//    entry's access) and get EACCES, and see watch events only for nodes
//    they may read;
//  - transactions see a private copy and fail with EAGAIN at commit when
//    anything changed meanwhile; their watch events fire at commit.
// Each connection's event queue is unbounded, as libxenstore's is: bounding
// is the consumer's job, which is what the tests check.
#pragma once

#include "asio_xen/xenstore.hpp"

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

namespace xbd::fakes {

class fake_xenstore {
 public:
  fake_xenstore();
  ~fake_xenstore();
  fake_xenstore(const fake_xenstore&) = delete;
  fake_xenstore& operator=(const fake_xenstore&) = delete;

  std::unique_ptr<asio_xen::xs_driver> connect(unsigned domid = 0);

  // Makes the next `n` transaction commits fail with EAGAIN.
  void fail_next_commits(unsigned n);
  // Fires a special watch ("@releaseDomain", "@introduceDomain").
  void fire_special(const std::string& path);
  // Domains are introduced until killed; killing one fires @releaseDomain.
  void kill_domain(unsigned domid);

  // Direct access for test setup and checks, as dom0, firing watches.
  void write(const std::string& path, const std::string& value);
  std::optional<std::string> read(const std::string& path) const;
  bool exists(const std::string& path) const;
  void set_permissions(const std::string& path, std::vector<asio_xen::xs_permission> perms);

  // Watch events queued in all connections and not yet taken.
  std::size_t queued_events() const;
  // Transactions committed and failed so far.
  unsigned commits() const;
  unsigned conflicts() const;

  struct node {
    std::string value;
    std::vector<asio_xen::xs_permission> perms;
  };
  using tree = std::map<std::string, node>;
  class connection;

 private:
  friend class connection;
  mutable std::mutex mu_;
  tree nodes_;
  std::uint64_t generation_ = 0;
  unsigned fail_commits_ = 0;
  unsigned commits_ = 0;
  unsigned conflicts_ = 0;
  std::set<connection*> connections_;
  std::set<unsigned> dead_;

  void fire_locked(const std::string& path, bool removed);
};

}  // namespace xbd::fakes
