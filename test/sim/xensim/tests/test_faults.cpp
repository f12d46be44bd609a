// Fault knobs: the control file (shared by the simulation, changeable at run
// time) and XENSIM_FAULTS (this process).
#include "sim_env.hpp"

#include <cstring>
#include <fstream>
#include <vector>

using namespace xst;

namespace {

constexpr std::size_t kPg = 4096;

std::uint32_t grant(std::uint32_t frame) {
  REQUIRE(xensim_domain_create(kGuest) == 0);
  int ref = xensim_grant_access(kGuest, kBack, frame, 0);
  REQUIRE(ref >= 8);
  return static_cast<std::uint32_t>(ref);
}

bool map_ok(xengnttab_handle* gt, std::uint32_t ref, int* err = nullptr) {
  errno = 0;
  void* p = xengnttab_map_grant_ref(gt, kGuest, ref, PROT_READ);
  if (err) *err = errno;
  if (!p) return false;
  xengnttab_unmap(gt, p, 1);
  return true;
}

// Drains whatever is pending on `h` and unmasks it.
void quiet(xenevtchn_handle* h) {
  int p;
  while ((p = xenevtchn_pending(h)) >= 0) xenevtchn_unmask(h, static_cast<evtchn_port_t>(p));
}

}  // namespace

TEST_SUITE("xensim") {
  TEST_CASE("fault knob map_fail fails the Nth map with the chosen errno") {
    SimDir sim;
    std::uint32_t ref = grant(100);
    auto* gt = gnttab_as(kBack);
    REQUIRE(xensim_set_faults("map_fail=2 map_errno=EAGAIN") == 0);
    int err = 0;
    CHECK(map_ok(gt, ref));
    CHECK_FALSE(map_ok(gt, ref, &err));
    CHECK(err == EAGAIN);
    CHECK(xensim_grant_status(kGuest, ref, nullptr, nullptr) == GTF_permit_access);
    CHECK(map_ok(gt, ref));
    CHECK(map_ok(gt, ref));

    // First and every second after: 1, 3, 5; the default errno is ENOMEM.
    REQUIRE(xensim_set_faults("map_fail=1/2") == 0);
    CHECK_FALSE(map_ok(gt, ref, &err));
    CHECK(err == ENOMEM);
    CHECK(map_ok(gt, ref));
    CHECK_FALSE(map_ok(gt, ref));
    CHECK(map_ok(gt, ref));
    REQUIRE(xensim_set_faults(nullptr) == 0);
    CHECK(map_ok(gt, ref));
    CHECK(map_ok(gt, ref));

    errno = 0;
    CHECK(xensim_set_faults("map_fail=banana") == -1);
    CHECK(errno == EINVAL);
    xengnttab_close(gt);
  }

  TEST_CASE("fault knob copy_fail fails the Nth segment with the chosen status") {
    SimDir sim;
    std::uint32_t ref = grant(101);
    auto* gt = gnttab_as(kBack);
    REQUIRE(xensim_set_faults("copy_fail=2/2 copy_status=eagain") == 0);
    std::vector<std::uint8_t> bufs[4];
    xengnttab_grant_copy_segment_t s[4]{};
    for (int i = 0; i < 4; ++i) {
      bufs[i].assign(16, 0);
      s[i].source.foreign = {ref, 0, kGuest};
      s[i].dest.virt = bufs[i].data();
      s[i].len = 16;
      s[i].flags = GNTCOPY_source_gref;
    }
    std::memset(static_cast<std::uint8_t*>(xensim_domain_memory(kGuest, nullptr)) + 101 * kPg, 'q', 16);
    REQUIRE(xengnttab_grant_copy(gt, 4, s) == 0);
    CHECK(s[0].status == GNTST_okay);
    CHECK(s[1].status == GNTST_eagain);
    CHECK(s[2].status == GNTST_okay);
    CHECK(s[3].status == GNTST_eagain);
    CHECK(bufs[0][0] == 'q');
    CHECK(bufs[1][0] == 0);
    CHECK(bufs[2][0] == 'q');
    CHECK(bufs[3][0] == 0);
    CHECK(xensim_grant_status(kGuest, ref, nullptr, nullptr) == GTF_permit_access);
    // Any status can be injected, e.g. what XSM would say.
    REQUIRE(xensim_set_faults("copy_fail=1 copy_status=permission_denied") == 0);
    REQUIRE(xengnttab_grant_copy(gt, 2, s) == 0);
    CHECK(s[0].status == GNTST_permission_denied);
    CHECK(s[1].status == GNTST_okay);
    xengnttab_close(gt);
  }

  TEST_CASE("fault knob copy_checks=xen gives Xen's per-segment bad_copy_arg") {
    SimDir sim;
    std::uint32_t ref = grant(102);
    auto* gt = gnttab_as(kBack);
    std::vector<std::uint8_t> buf(kPg, 'v');
    xengnttab_grant_copy_segment_t s[2]{};
    s[0].source.virt = buf.data();
    s[0].dest.foreign = {ref, 4000, kGuest};
    s[0].len = 200;  // crosses the page
    s[0].flags = GNTCOPY_dest_gref;
    s[1] = s[0];
    s[1].dest.foreign.offset = 0;
    CHECK(xengnttab_grant_copy(gt, 2, s) == -1);  // gntdev's check by default
    REQUIRE(xensim_set_faults("copy_checks=xen") == 0);
    REQUIRE(xengnttab_grant_copy(gt, 2, s) == 0);
    CHECK(s[0].status == GNTST_bad_copy_arg);
    CHECK(s[1].status == GNTST_okay);
    auto* mem = static_cast<std::uint8_t*>(xensim_domain_memory(kGuest, nullptr)) + 102 * kPg;
    CHECK(mem[0] == 'v');
    CHECK(mem[4000] == 0);
    xengnttab_close(gt);
  }

  TEST_CASE("fault knob evt_drop loses the Nth notification") {
    SimDir sim;
    Channel ch;
    REQUIRE(xensim_set_faults("evt_drop=1") == 0);
    REQUIRE(xenevtchn_notify(ch.guest, static_cast<evtchn_port_t>(ch.gport)) == 0);
    CHECK_FALSE(readable(xenevtchn_fd(ch.back), 50));
    CHECK(xenevtchn_pending(ch.back) == -1);
    CHECK_FALSE(port_info(kBack, static_cast<unsigned>(ch.bport)).pending);
    REQUIRE(xenevtchn_notify(ch.guest, static_cast<evtchn_port_t>(ch.gport)) == 0);
    CHECK(readable(xenevtchn_fd(ch.back), 1000));
    CHECK(xenevtchn_pending(ch.back) == ch.bport);
  }

  TEST_CASE("fault knob evt_dup delivers the Nth notification twice") {
    SimDir sim;
    Channel ch;
    REQUIRE(xensim_set_faults("evt_dup=1") == 0);
    const auto bport = static_cast<evtchn_port_t>(ch.bport);
    REQUIRE(xenevtchn_notify(ch.guest, static_cast<evtchn_port_t>(ch.gport)) == 0);
    CHECK(xenevtchn_pending(ch.back) == ch.bport);
    CHECK(xenevtchn_pending(ch.back) == -1);
    REQUIRE(xenevtchn_unmask(ch.back, bport) == 0);
    CHECK(readable(xenevtchn_fd(ch.back)));
    CHECK(xenevtchn_pending(ch.back) == ch.bport);  // the duplicate
    REQUIRE(xenevtchn_unmask(ch.back, bport) == 0);
    CHECK(xenevtchn_pending(ch.back) == -1);
    REQUIRE(xenevtchn_notify(ch.guest, static_cast<evtchn_port_t>(ch.gport)) == 0);  // 2nd: once
    CHECK(xenevtchn_pending(ch.back) == ch.bport);
    REQUIRE(xenevtchn_unmask(ch.back, bport) == 0);
    CHECK(xenevtchn_pending(ch.back) == -1);
  }

  TEST_CASE("fault knob evt_delay delivers the Nth notification late") {
    SimDir sim;
    Channel ch;
    REQUIRE(xensim_set_faults("evt_delay=1 evt_delay_us=300000") == 0);
    auto t0 = std::chrono::steady_clock::now();
    REQUIRE(xenevtchn_notify(ch.guest, static_cast<evtchn_port_t>(ch.gport)) == 0);
    CHECK_FALSE(readable(xenevtchn_fd(ch.back), 50));
    CHECK(readable(xenevtchn_fd(ch.back), 2000));
    CHECK(ms_since(t0) >= 290);
    CHECK(xenevtchn_pending(ch.back) == ch.bport);
    xenevtchn_unmask(ch.back, static_cast<evtchn_port_t>(ch.bport));
    t0 = std::chrono::steady_clock::now();
    REQUIRE(xenevtchn_notify(ch.guest, static_cast<evtchn_port_t>(ch.gport)) == 0);
    CHECK(readable(xenevtchn_fd(ch.back), 2000));
    CHECK(ms_since(t0) < 100);
  }

  TEST_CASE("fault knob evt_spurious_us raises events nobody sent") {
    SimDir sim;
    Channel ch;
    REQUIRE(xensim_set_faults("evt_spurious_us=10000") == 0);
    CHECK(xenevtchn_pending(ch.back) == -1);  // applies the knob, starts the thread
    CHECK(readable(xenevtchn_fd(ch.back), 1000));
    CHECK(xenevtchn_pending(ch.back) == ch.bport);
    REQUIRE(xensim_set_faults(nullptr) == 0);
    quiet(ch.back);
    quiet(ch.guest);
    std::this_thread::sleep_for(std::chrono::milliseconds(30));  // a tick in flight
    quiet(ch.back);
    CHECK_FALSE(readable(xenevtchn_fd(ch.back), 100));
  }

  TEST_CASE("the fault control file can be edited by hand while running") {
    SimDir sim;
    std::uint32_t ref = grant(103);
    auto* gt = gnttab_as(kBack);
    CHECK(map_ok(gt, ref));
    { std::ofstream(sim.path + "/xensim.faults") << "# hand-written\nmap_fail=1\n"; }
    std::this_thread::sleep_for(std::chrono::milliseconds(120));
    CHECK_FALSE(map_ok(gt, ref));
    CHECK(map_ok(gt, ref));
    std::filesystem::remove(sim.path + "/xensim.faults");
    std::this_thread::sleep_for(std::chrono::milliseconds(120));
    CHECK(map_ok(gt, ref));
    xengnttab_close(gt);
  }

  TEST_CASE("XENSIM_FAULTS sets knobs for the process") {
    setenv("XENSIM_FAULTS", "map_fail=2", 1);
    SimDir sim;  // a new simulation: the variable is read when the process joins it
    std::uint32_t ref = grant(104);
    auto* gt = gnttab_as(kBack);
    unsetenv("XENSIM_FAULTS");
    CHECK(map_ok(gt, ref));
    CHECK_FALSE(map_ok(gt, ref));
    CHECK(map_ok(gt, ref));
    CHECK(std::filesystem::exists(sim.path + "/xensim.faults") == false);
    xengnttab_close(gt);
  }

}  // TEST_SUITE
