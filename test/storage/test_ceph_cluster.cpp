// The Ceph fixture itself (scripts/ceph-cluster, started by ctest's
// "ceph: start"): what the RBD driver's tests rely on works, so a failure
// there is the driver's, not the cluster's.
#include "test/storage/ceph_cluster.hpp"

#include <doctest/doctest.h>

#include <algorithm>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace {

using xbd::test::ceph_cluster;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;
constexpr std::uint64_t mib = 1024 * 1024;

std::vector<char> pattern(std::uint64_t bytes, std::uint32_t seed) {
  std::vector<char> v(bytes);
  std::uint32_t x = seed;
  for (auto& c : v) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return v;
}

void write_file(const std::filesystem::path& p, const std::vector<char>& data) {
  std::ofstream out(p, std::ios::binary);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  REQUIRE(out.good());
}

std::vector<char> read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

TEST_SUITE("rbd") {
  TEST_CASE("ceph fixture: an image is created, resized, snapshotted, exported, locked and removed") {
    const auto cluster = ceph_cluster::from_env();
    const auto data = pattern(8 * mib, 1);
    write_file(cluster.scratch() / "in.raw", data);
    const auto name = ceph_cluster::unique_name("xbd-fixture");
    cluster.import_image(cluster.scratch() / "in.raw", name);
    CHECK(cluster.image_exists(name));
    CHECK(cluster.image_size(name) == 8 * mib);
    CHECK(cluster.watchers(name).empty());

    cluster.snap_create(name, "before");
    cluster.resize_image(name, 16);
    CHECK(cluster.image_size(name) == 16 * mib);
    cluster.export_image(name, cluster.scratch() / "now.raw");
    auto now = read_file(cluster.scratch() / "now.raw");
    REQUIRE(now.size() == 16 * mib);
    CHECK(std::equal(data.begin(), data.end(), now.begin()));
    CHECK(std::all_of(now.begin() + 8 * mib, now.end(), [](char c) { return c == 0; }));
    cluster.export_image(name + "@before", cluster.scratch() / "before.raw");
    CHECK(read_file(cluster.scratch() / "before.raw") == data);

    cluster.lock_add(name, "fixture-lock");
    const auto locks = cluster.locks(name);
    REQUIRE(locks.size() == 1);
    CHECK(locks[0].id == "fixture-lock");
    CHECK(locks[0].locker.starts_with("client."));
    cluster.lock_remove(name, locks[0]);
    CHECK(cluster.locks(name).empty());

    cluster.remove_image(name);
    CHECK_FALSE(cluster.image_exists(name));
    // Unique names: two in a row differ.
    const auto a = cluster.create_image(1), b = cluster.create_image(1);
    CHECK(a != b);
    cluster.remove_image(a);
    cluster.remove_image(b);
  }

  TEST_CASE("ceph fixture: the OSD stopped and started again keeps the data, and I/O waits meanwhile") {
    const auto cluster = ceph_cluster::from_env();
    const auto data = pattern(4 * mib, 2);
    write_file(cluster.scratch() / "in.raw", data);
    const auto name = ceph_cluster::unique_name("xbd-fixture-osd");
    cluster.import_image(cluster.scratch() / "in.raw", name);

    auto t0 = clock_type::now();
    cluster.osd_stop();
    MESSAGE("osd-stop: " << std::chrono::duration<double>(clock_type::now() - t0).count() << " s");
    CHECK_FALSE(cluster.running());
    // No OSD: a read does not fail, it waits (here: until our bound kills it).
    auto r = cluster.try_rbd({"export", "--no-progress", std::string(ceph_cluster::pool) + "/" + name,
                              (cluster.scratch() / "stalled.raw").string()},
                             3s);
    CHECK(r.status == -1);

    t0 = clock_type::now();
    cluster.osd_start();
    MESSAGE("osd-start: " << std::chrono::duration<double>(clock_type::now() - t0).count() << " s");
    CHECK(cluster.running());
    cluster.export_image(name, cluster.scratch() / "after.raw");
    CHECK(read_file(cluster.scratch() / "after.raw") == data);
    cluster.remove_image(name);
  }

  TEST_CASE("ceph fixture: clients with too few caps or an unknown key are refused") {
    const auto cluster = ceph_cluster::from_env();
    const auto name = cluster.create_image(1, "xbd-fixture-auth");

    const auto nobody = cluster.restricted_client();
    auto r = cluster.rbd_as(nobody, {"info", std::string(ceph_cluster::pool) + "/" + name}, 20s);
    CHECK(r.status > 0);
    CHECK_MESSAGE(r.output.find("Operation not permitted") != std::string::npos, r.output);

    const auto stranger = cluster.unknown_key_client();
    r = cluster.rbd_as(stranger, {"info", std::string(ceph_cluster::pool) + "/" + name}, 20s);
    CHECK(r.status > 0);  // 13: EACCES
    CHECK_MESSAGE(r.output.find("couldn't connect to the cluster") != std::string::npos, r.output);

    cluster.remove_image(name);
  }
}
