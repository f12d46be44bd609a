// The test suite's Ceph cluster, seen from test code: ctest's "ceph: start"
// fixture starts one per ctest run (scripts/ceph-cluster) and hands its
// ceph.conf to the tests of the doctest suite "rbd" in XBD_CEPH_CONF. These
// helpers drive it with the `rbd` and `ceph` tools (every call bounded) to
// make images, inspect what a driver left behind, and break things: restart
// the OSD, give a client credentials the cluster refuses.
//
// A driver under test opens images as pool "rbd", client.admin (the default
// user), with conf() as its configuration file; images have unique names, so
// tests do not see each other's. The OSD keeps data in RAM (memstore, about
// 2-3x what is written): size images in MiB, tens to a few hundred.
//
//   TEST_SUITE("rbd") {
//     TEST_CASE("...") {
//       const auto cluster = xbd::test::ceph_cluster::from_env();
//       const auto image = cluster.create_image(64);
//       ... open "rbd/" + image with cluster.conf() ...
//       cluster.remove_image(image);
//     }
//   }
//
// Outside ctest, against a cluster of one's own:
//   scripts/ceph-cluster start /tmp/c && XBD_CEPH_CONF=/tmp/c/ceph.conf
//   XBD_CEPH_SCRIPT=$PWD/scripts/ceph-cluster build/default/test/storage/xbd_storage_tests -ts=rbd
#pragma once

#include "test/integration/process.hpp"

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace xbd::test {

class ceph_cluster {
 public:
  // The cluster the ctest fixture started (XBD_CEPH_CONF); throws
  // std::runtime_error saying how to get one if it is unset or missing.
  static ceph_cluster from_env();
  explicit ceph_cluster(std::filesystem::path conf);

  const std::filesystem::path& conf() const { return conf_; }
  static constexpr const char* pool = "rbd";

  // The `rbd`/`ceph` tool with `-c conf()` and `args`, killed after `limit`;
  // returns the output (stdout and stderr) or throws std::runtime_error with
  // the command, its status and its output.
  std::string rbd(const std::vector<std::string>& args,
                  std::chrono::milliseconds limit = std::chrono::seconds(30)) const;
  std::string ceph(const std::vector<std::string>& args,
                   std::chrono::milliseconds limit = std::chrono::seconds(30)) const;
  // The same without throwing: status (-1 if killed at the limit) and output.
  run_result try_rbd(const std::vector<std::string>& args,
                     std::chrono::milliseconds limit = std::chrono::seconds(30)) const;

  // Images of pool "rbd", by bare name. unique_name: `prefix`, then what
  // makes it a name no other test (or test process) uses. create_image:
  // `mib` MiB, with such a name.
  static std::string unique_name(const std::string& prefix = "xbd-test");
  std::string create_image(std::uint64_t mib, const std::string& prefix = "xbd-test") const;
  void remove_image(const std::string& name) const;  // with its snapshots
  bool image_exists(const std::string& name) const;
  std::uint64_t image_size(const std::string& name) const;              // bytes
  void resize_image(const std::string& name, std::uint64_t mib) const;  // grows or shrinks
  void snap_create(const std::string& name, const std::string& snap) const;
  // The image (or "name@snap") to a raw file.
  void export_image(const std::string& name_or_snap, const std::filesystem::path& to) const;
  // A raw file into a new image.
  void import_image(const std::filesystem::path& from, const std::string& name) const;

  // `rbd status`: one line per client watching the image's header
  // ("watcher=127.0.0.1:0/123 client.4150 cookie=..."); empty if none.
  // A client that died stays for osd_client_watch_timeout (30 s).
  std::vector<std::string> watchers(const std::string& name) const;
  // Advisory locks (`rbd lock add/ls/rm`). They are the lock librbd's
  // exclusive-lock feature takes: while one is held, a client that needs the
  // exclusive lock (to write, to snapshot) waits or fails (EROFS), it does
  // not break it.
  struct lock {
    std::string locker;   // "client.4150"
    std::string id;       // the lock id given to lock_add
    std::string address;  // "127.0.0.1:0/123"
  };
  void lock_add(const std::string& name, const std::string& id) const;
  std::vector<lock> locks(const std::string& name) const;
  void lock_remove(const std::string& name, const lock& l) const;

  // Credentials for "refused" tests: a client configuration (a copy of
  // conf() naming another keyring) for user `id` ("nobody": client.nobody).
  struct client {
    std::string id;
    std::filesystem::path keyring;
    std::filesystem::path conf;
  };
  // client.<id> created (or fetched) with these caps: "mon 'allow r'" only
  // by default, so it can connect but not read or write pool "rbd".
  client restricted_client(const std::string& id = "nobody",
                           const std::vector<std::string>& caps = {"mon", "allow r"}) const;
  // client.<id> with a key the cluster does not know (authentication fails).
  client unknown_key_client(const std::string& id = "admin") const;
  // The `rbd` tool as that client (its conf, --id), bounded; never throws.
  run_result rbd_as(const client& c, const std::vector<std::string>& args,
                    std::chrono::milliseconds limit = std::chrono::seconds(30)) const;

  // The OSD: stopped gracefully (its data kept; returns when the process is
  // gone) and started again (returns when it serves I/O). Bounded; throw on
  // failure with the script's output.
  void osd_stop() const;
  void osd_start() const;
  bool running() const;  // `scripts/ceph-cluster status`

  // Where the helpers keep their files (outputs, keyrings, configurations):
  // removed when the last copy of this object goes.
  const std::filesystem::path& scratch() const;

 private:
  run_result run_tool(const std::string& tool, const std::filesystem::path& conf, const std::vector<std::string>& args,
                      std::chrono::milliseconds limit) const;
  run_result run_script(const std::vector<std::string>& args, std::chrono::milliseconds limit) const;
  std::filesystem::path output_file() const;
  std::filesystem::path client_conf(const std::string& id, const std::filesystem::path& keyring) const;

  struct scratch_dir;
  std::filesystem::path conf_;
  std::shared_ptr<scratch_dir> scratch_;
};

}  // namespace xbd::test
