#include "test/fakes/fake_xenstore.hpp"

#include <sys/eventfd.h>
#include <unistd.h>
#include <cerrno>
#include <deque>

namespace xbd::fakes {

using asio_xen::error_code;
using asio_xen::result;
using asio_xen::transaction_id;
using asio_xen::xs_permission;
using asio_xen::xs_watch_event;

namespace {

error_code err(int e) { return {e, boost::system::generic_category()}; }

bool is_under(const std::string& path, const std::string& ancestor) {
  if (ancestor == "/") return path.size() > 1 && path[0] == '/';
  return path.size() > ancestor.size() && path.compare(0, ancestor.size(), ancestor) == 0 &&
         path[ancestor.size()] == '/';
}

std::string parent_of(const std::string& path) {
  auto pos = path.rfind('/');
  if (pos == 0 || pos == std::string::npos) return "/";
  return path.substr(0, pos);
}

bool valid_path(const std::string& p) {
  if (p.empty()) return false;
  if (p[0] == '@') return true;
  if (p[0] != '/') return false;
  if (p.size() > 1 && p.back() == '/') return false;
  return p.find("//") == std::string::npos;
}

xs_permission::access access_of(const std::vector<xs_permission>& perms, unsigned domid) {
  if (domid == 0) return xs_permission::access::both;
  if (perms.empty()) return xs_permission::access::none;
  if (perms[0].domid == domid) return xs_permission::access::both;
  for (std::size_t i = 1; i < perms.size(); ++i)
    if (perms[i].domid == domid) return perms[i].perm;
  return perms[0].perm;
}

bool can_read(const std::vector<xs_permission>& p, unsigned d) {
  auto a = access_of(p, d);
  return a == xs_permission::access::read || a == xs_permission::access::both;
}
bool can_write(const std::vector<xs_permission>& p, unsigned d) {
  auto a = access_of(p, d);
  return a == xs_permission::access::write || a == xs_permission::access::both;
}

}  // namespace

class fake_xenstore::connection final : public asio_xen::xs_driver {
 public:
  connection(fake_xenstore& s, unsigned domid) : store_(s), domid_(domid), efd_(::eventfd(0, EFD_NONBLOCK)) {}
  ~connection() override {
    std::lock_guard lock(store_.mu_);
    store_.connections_.erase(this);
    ::close(efd_);
  }

  result<std::string> read(transaction_id t, const std::string& path) override {
    std::lock_guard lock(store_.mu_);
    auto* tr = tree_for(t);
    if (!tr) return err(ESRCH);
    auto it = tr->find(path);
    if (it == tr->end()) return err(ENOENT);
    if (!can_read(it->second.perms, domid_)) return err(EACCES);
    return it->second.value;
  }

  error_code write(transaction_id t, const std::string& path, std::string_view value) override {
    std::lock_guard lock(store_.mu_);
    return modify(t, path, [&](fake_xenstore::tree& tr) -> error_code {
      if (auto ec = create(tr, path)) return ec;
      tr[path].value = std::string(value);
      return {};
    });
  }

  error_code mkdir(transaction_id t, const std::string& path) override {
    std::lock_guard lock(store_.mu_);
    return modify(t, path, [&](fake_xenstore::tree& tr) { return create(tr, path); });
  }

  error_code rm(transaction_id t, const std::string& path) override {
    std::lock_guard lock(store_.mu_);
    auto* tr = tree_for(t);
    if (!tr) return err(ESRCH);
    if (!valid_path(path) || path == "/") return err(EINVAL);
    auto it = tr->find(path);
    if (it == tr->end()) return tr->count(parent_of(path)) ? error_code{} : err(ENOENT);
    auto parent = tr->find(parent_of(path));
    if (!can_write(it->second.perms, domid_) || (parent != tr->end() && !can_write(parent->second.perms, domid_)))
      return err(EACCES);
    for (auto i = tr->begin(); i != tr->end();) {
      if (i->first == path || is_under(i->first, path))
        i = tr->erase(i);
      else
        ++i;
    }
    changed(t, path, true);
    return {};
  }

  result<std::vector<std::string>> directory(transaction_id t, const std::string& path) override {
    std::lock_guard lock(store_.mu_);
    auto* tr = tree_for(t);
    if (!tr) return err(ESRCH);
    auto it = tr->find(path);
    if (it == tr->end()) return err(ENOENT);
    if (!can_read(it->second.perms, domid_)) return err(EACCES);
    std::vector<std::string> out;
    for (auto i = std::next(it); i != tr->end() && is_under(i->first, path); ++i) {
      std::string rest = i->first.substr(path == "/" ? 1 : path.size() + 1);
      if (rest.find('/') == std::string::npos) out.push_back(rest);
    }
    return out;
  }

  result<std::vector<xs_permission>> get_permissions(transaction_id t, const std::string& path) override {
    std::lock_guard lock(store_.mu_);
    auto* tr = tree_for(t);
    if (!tr) return err(ESRCH);
    auto it = tr->find(path);
    if (it == tr->end()) return err(ENOENT);
    if (!can_read(it->second.perms, domid_)) return err(EACCES);
    return it->second.perms;
  }

  error_code set_permissions(transaction_id t, const std::string& path, std::span<const xs_permission> perms) override {
    std::lock_guard lock(store_.mu_);
    if (perms.empty()) return err(EINVAL);
    return modify(t, path, [&](fake_xenstore::tree& tr) -> error_code {
      auto it = tr.find(path);
      if (it == tr.end()) return err(ENOENT);
      if (!can_write(it->second.perms, domid_)) return err(EACCES);
      // Only a privileged domain may hand a node to someone else.
      if (domid_ != 0 && perms[0].domid != it->second.perms[0].domid) return err(EPERM);
      it->second.perms.assign(perms.begin(), perms.end());
      return {};
    });
  }

  result<transaction_id> transaction_start() override {
    std::lock_guard lock(store_.mu_);
    transaction_id id = next_tid_++;
    txs_[id] = tx{store_.nodes_, store_.generation_, {}};
    return id;
  }

  error_code transaction_end(transaction_id t, bool abort) override {
    std::lock_guard lock(store_.mu_);
    auto it = txs_.find(t);
    if (it == txs_.end()) return err(ESRCH);
    tx x = std::move(it->second);
    txs_.erase(it);
    if (abort) return {};
    if (store_.fail_commits_ > 0 || x.generation != store_.generation_) {
      if (store_.fail_commits_ > 0) --store_.fail_commits_;
      ++store_.conflicts_;
      return err(EAGAIN);
    }
    store_.nodes_ = std::move(x.nodes);
    ++store_.generation_;
    ++store_.commits_;
    for (auto& [path, removed] : x.changes) store_.fire_locked(path, removed);
    return {};
  }

  error_code watch(const std::string& path, const std::string& token) override {
    std::lock_guard lock(store_.mu_);
    if (!valid_path(path)) return err(EINVAL);
    for (auto& w : watches_)
      if (w.first == path && w.second == token) return err(EEXIST);
    watches_.emplace_back(path, token);
    // xenstored fires a new watch once, so the watcher reads the initial
    // state without a race.
    enqueue({path, token});
    return {};
  }

  error_code unwatch(const std::string& path, const std::string& token) override {
    std::lock_guard lock(store_.mu_);
    for (auto it = watches_.begin(); it != watches_.end(); ++it) {
      if (it->first == path && it->second == token) {
        watches_.erase(it);
        // As with XS_UNWATCH_FILTER: nothing more for this watch.
        std::erase_if(queue_, [&](const xs_watch_event& e) { return e.token == token && e.path.starts_with(path); });
        if (queue_.empty()) drain_fd();
        return {};
      }
    }
    return err(ENOENT);
  }

  int watch_fd() override { return efd_; }

  result<bool> is_domain_introduced(unsigned domid) override {
    std::lock_guard lock(store_.mu_);
    return store_.dead_.count(domid) == 0;
  }

  result<std::optional<xs_watch_event>> check_watch() override {
    std::lock_guard lock(store_.mu_);
    if (queue_.empty()) return std::optional<xs_watch_event>{};
    xs_watch_event e = std::move(queue_.front());
    queue_.pop_front();
    if (queue_.empty()) drain_fd();
    return std::optional<xs_watch_event>{std::move(e)};
  }

  // Called with the store locked.
  void notify_change(const std::string& path, bool removed, const fake_xenstore::tree& nodes) {
    for (auto& [wpath, token] : watches_) {
      if (path[0] == '@' || wpath[0] == '@') {
        if (path == wpath) enqueue({path, token});
        continue;
      }
      bool hit = path == wpath || is_under(path, wpath);
      if (removed && is_under(wpath, path)) {
        // An ancestor went: the watched node went with it.
        enqueue({wpath, token});
        continue;
      }
      if (!hit) continue;
      auto n = nodes.find(path);
      if (n != nodes.end() && !can_read(n->second.perms, domid_)) continue;
      enqueue({path, token});
    }
  }

  std::size_t queued() const { return queue_.size(); }

 private:
  struct tx {
    fake_xenstore::tree nodes;
    std::uint64_t generation;
    std::vector<std::pair<std::string, bool>> changes;
  };

  fake_xenstore::tree* tree_for(transaction_id t) {
    if (t == asio_xen::no_transaction) return &store_.nodes_;
    auto it = txs_.find(t);
    return it == txs_.end() ? nullptr : &it->second.nodes;
  }

  template <class F>
  error_code modify(transaction_id t, const std::string& path, F&& f) {
    auto* tr = tree_for(t);
    if (!tr) return err(ESRCH);
    if (!valid_path(path) || path[0] == '@') return err(EINVAL);
    if (auto ec = f(*tr)) return ec;
    changed(t, path, false);
    return {};
  }

  void changed(transaction_id t, const std::string& path, bool removed) {
    if (t == asio_xen::no_transaction) {
      ++store_.generation_;
      store_.fire_locked(path, removed);
    } else {
      txs_[t].changes.emplace_back(path, removed);
    }
  }

  // Creates `path` and missing parents; the deepest existing ancestor must be
  // writable (or the node itself, if it exists).
  error_code create(fake_xenstore::tree& tr, const std::string& path) {
    auto it = tr.find(path);
    if (it != tr.end()) return can_write(it->second.perms, domid_) ? error_code{} : err(EACCES);
    std::vector<std::string> missing{path};
    std::string p = parent_of(path);
    while (!tr.count(p)) {
      missing.push_back(p);
      p = parent_of(p);
    }
    const auto& parent = tr.at(p);
    if (!can_write(parent.perms, domid_)) return err(EACCES);
    auto perms = parent.perms;
    if (domid_ != 0) perms[0].domid = domid_;
    for (auto m = missing.rbegin(); m != missing.rend(); ++m) tr[*m] = fake_xenstore::node{"", perms};
    return {};
  }

  void enqueue(xs_watch_event e) {
    if (queue_.empty()) {
      std::uint64_t one = 1;
      (void)!::write(efd_, &one, sizeof one);
    }
    queue_.push_back(std::move(e));
  }

  void drain_fd() {
    std::uint64_t v;
    (void)!::read(efd_, &v, sizeof v);
  }

  fake_xenstore& store_;
  unsigned domid_;
  int efd_;
  std::vector<std::pair<std::string, std::string>> watches_;
  std::deque<xs_watch_event> queue_;
  std::map<transaction_id, tx> txs_;
  transaction_id next_tid_ = 1;
};

fake_xenstore::fake_xenstore() { nodes_["/"] = node{"", {{0, xs_permission::access::none}}}; }

fake_xenstore::~fake_xenstore() = default;

std::unique_ptr<asio_xen::xs_driver> fake_xenstore::connect(unsigned domid) {
  auto c = std::make_unique<connection>(*this, domid);
  std::lock_guard lock(mu_);
  connections_.insert(c.get());
  return c;
}

void fake_xenstore::fail_next_commits(unsigned n) {
  std::lock_guard lock(mu_);
  fail_commits_ = n;
}

void fake_xenstore::fire_special(const std::string& path) {
  std::lock_guard lock(mu_);
  fire_locked(path, false);
}

void fake_xenstore::kill_domain(unsigned domid) {
  std::lock_guard lock(mu_);
  dead_.insert(domid);
  fire_locked("@releaseDomain", false);
}

void fake_xenstore::fire_locked(const std::string& path, bool removed) {
  for (auto* c : connections_) c->notify_change(path, removed, nodes_);
}

void fake_xenstore::write(const std::string& path, const std::string& value) {
  auto c = connect(0);
  (void)c->write(asio_xen::no_transaction, path, value);
}

std::optional<std::string> fake_xenstore::read(const std::string& path) const {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(path);
  if (it == nodes_.end()) return std::nullopt;
  return it->second.value;
}

bool fake_xenstore::exists(const std::string& path) const {
  std::lock_guard lock(mu_);
  return nodes_.count(path) != 0;
}

void fake_xenstore::set_permissions(const std::string& path, std::vector<xs_permission> perms) {
  auto c = connect(0);
  (void)c->set_permissions(asio_xen::no_transaction, path, perms);
}

std::size_t fake_xenstore::queued_events() const {
  std::lock_guard lock(mu_);
  std::size_t n = 0;
  for (auto* c : connections_) n += c->queued();
  return n;
}

unsigned fake_xenstore::commits() const {
  std::lock_guard lock(mu_);
  return commits_;
}

unsigned fake_xenstore::conflicts() const {
  std::lock_guard lock(mu_);
  return conflicts_;
}

}  // namespace xbd::fakes
