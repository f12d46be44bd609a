// librados and librbd are loaded by the first RBD disk, not at start
// (blkback/storage/ceph_api.hpp).
#include "blkback/storage/ceph_api.hpp"
#include "blkback/storage/rbd_cluster.hpp"

#include <doctest/doctest.h>

#include <fstream>
#include <sstream>
#include <string>

using namespace xbd::blkback::storage::rbd;

namespace {

bool mapped(const std::string& library) {
  std::ifstream in("/proc/self/maps");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str().find(library) != std::string::npos;
}

}  // namespace

// Each case needs a process of its own (ctest runs every case alone): a
// load is kept for the process's life.
TEST_CASE("ceph: the libraries are mapped only once an RBD disk asks for them") {
  REQUIRE_FALSE(ceph_loaded());
  CHECK_FALSE(mapped("librados.so"));
  CHECK_FALSE(mapped("librbd.so"));
  CHECK_FALSE(mapped("libceph-common"));
  std::string why;
  REQUIRE(load_ceph(why));
  CHECK(why.empty());
  CHECK(ceph_loaded());
  CHECK(mapped("librados.so"));
  CHECK(mapped("librbd.so"));
  CHECK(static_cast<bool>(ceph().rados_create2));
  CHECK(static_cast<bool>(ceph().rbd_aio_release));
}

TEST_CASE("ceph: a missing library fails the cluster's connection with the package to install, and is tried again") {
  REQUIRE_FALSE(ceph_loaded());
  set_ceph_library_names("libxbd-no-such-rados.so.2", "librbd.so.1");
  cluster_key key;
  key.name = "ceph";
  key.client_id = "admin";
  key.connect_timeout = std::chrono::seconds(1);
  std::string detail;
  auto c = cluster::get(key, clock::now() + std::chrono::seconds(5), detail);
  REQUIRE_FALSE(c);
  CHECK(detail.find("librados cannot be loaded") != std::string::npos);
  CHECK(detail.find("libxbd-no-such-rados.so.2") != std::string::npos);
  CHECK(detail.find("install librbd1") != std::string::npos);
  CHECK(c.error().value() == ELIBACC);
  CHECK_FALSE(ceph_loaded());
  CHECK(cluster::handles() == 0);

  set_ceph_library_names("librados.so.2", "libxbd-no-such-rbd.so.1");
  std::string why;
  CHECK_FALSE(load_ceph(why));
  CHECK(why.find("librbd cannot be loaded") != std::string::npos);

  // Installed meanwhile: the next disk loads them, no restart.
  set_ceph_library_names("librados.so.2", "librbd.so.1");
  why.clear();
  CHECK(load_ceph(why));
  CHECK(ceph_loaded());
}
