// Grants: the map checks, stitching, limits, unmap checks, grant copy's
// statuses, unmap notifications, sharing and revoking.
#include "sim_env.hpp"

#include <cstring>
#include <vector>

using namespace xst;

namespace {

constexpr std::size_t kPg = 4096;

// The guest's memory and grant table, seen directly.
struct GuestView {
  std::uint8_t* mem;
  grant_entry_v1_t* gnt;
  explicit GuestView(unsigned domid) {
    REQUIRE(xensim_domain_create(domid) == 0);
    mem = static_cast<std::uint8_t*>(xensim_domain_memory(domid, nullptr));
    gnt = xensim_grant_table(domid, nullptr);
    REQUIRE(mem != nullptr);
    REQUIRE(gnt != nullptr);
  }
  std::uint8_t* frame(std::uint32_t f) const { return mem + f * kPg; }
};

std::uint32_t grant(unsigned domid, unsigned to, std::uint32_t frame, bool readonly = false) {
  int ref = xensim_grant_access(domid, to, frame, readonly);
  REQUIRE(ref >= 8);
  return static_cast<std::uint32_t>(ref);
}

std::uint32_t pins(unsigned domid, std::uint32_t ref) {
  std::uint32_t ro = 0, rw = 0;
  REQUIRE(xensim_grant_status(domid, ref, &ro, &rw) >= 0);
  return ro + rw;
}

std::uint16_t flags(unsigned domid, std::uint32_t ref) {
  int f = xensim_grant_status(domid, ref, nullptr, nullptr);
  REQUIRE(f >= 0);
  return static_cast<std::uint16_t>(f);
}

}  // namespace

TEST_SUITE("xensim") {
  TEST_CASE("map refuses grants that do not permit the caller, all or nothing (EINVAL)") {
    SimDir sim;
    GuestView g(kGuest);
    auto* gt = gnttab_as(kBack);
    std::uint32_t ok_rw = grant(kGuest, kBack, 100);
    std::uint32_t ok_ro = grant(kGuest, kBack, 101, true);
    std::uint32_t other = grant(kGuest, 7, 102);
    std::uint32_t never = 500;  // an entry nobody filled in

    auto refused = [&](std::uint32_t ref, int prot) {
      errno = 0;
      void* p = xengnttab_map_grant_ref(gt, kGuest, ref, prot);
      bool ok = p == nullptr && errno == EINVAL;
      if (p) xengnttab_unmap(gt, p, 1);
      return ok;
    };
    CHECK(refused(never, PROT_READ));                 // not granted
    CHECK(refused(other, PROT_READ));                 // granted to another domain
    CHECK(refused(ok_ro, PROT_READ | PROT_WRITE));    // read-only grant, writable map
    CHECK(refused(XENSIM_NR_GRANTS + 5, PROT_READ));  // beyond the table
    errno = 0;
    CHECK(xengnttab_map_grant_ref(gt, 99, ok_rw, PROT_READ) == nullptr);  // no such domain
    CHECK(errno == EINVAL);

    void* ro = xengnttab_map_grant_ref(gt, kGuest, ok_ro, PROT_READ);
    CHECK(ro != nullptr);
    CHECK((flags(kGuest, ok_ro) & GTF_reading) != 0);
    CHECK((flags(kGuest, ok_ro) & GTF_writing) == 0);
    CHECK(xengnttab_unmap(gt, ro, 1) == 0);

    // All or nothing: the good ref of a failed batch is left unpinned.
    std::uint32_t batch[3] = {ok_rw, ok_ro, other};
    errno = 0;
    CHECK(xengnttab_map_domain_grant_refs(gt, 2, kGuest, batch, PROT_READ | PROT_WRITE) == nullptr);
    CHECK(errno == EINVAL);
    CHECK(pins(kGuest, ok_rw) == 0);
    CHECK(flags(kGuest, ok_rw) == GTF_permit_access);
    std::uint32_t doms[2] = {kGuest, kGuest};
    std::uint32_t batch2[2] = {ok_rw, other};
    CHECK(xengnttab_map_grant_refs(gt, 2, doms, batch2, PROT_READ) == nullptr);
    CHECK(pins(kGuest, ok_rw) == 0);

    // A ref mapped by us cannot be mapped by another domain meanwhile.
    void* p = xengnttab_map_grant_ref(gt, kGuest, ok_rw, PROT_READ | PROT_WRITE);
    REQUIRE(p != nullptr);
    CHECK(flags(kGuest, ok_rw) == (GTF_permit_access | GTF_reading | GTF_writing));
    auto* gt7 = gnttab_as(7);
    CHECK(xengnttab_map_grant_ref(gt7, kGuest, ok_rw, PROT_READ) == nullptr);
    CHECK(xengnttab_unmap(gt, p, 1) == 0);
    CHECK(flags(kGuest, ok_rw) == GTF_permit_access);
    xengnttab_close(gt7);
    xengnttab_close(gt);
  }

  TEST_CASE("a mapping stitches scattered frames into one range shared with the guest") {
    SimDir sim;
    GuestView g(kGuest);
    const std::uint32_t frames[3] = {40, 20, 31};
    std::uint32_t refs[3];
    for (int i = 0; i < 3; ++i) {
      std::memset(g.frame(frames[i]), 'a' + i, kPg);
      refs[i] = grant(kGuest, kBack, frames[i]);
    }
    auto* gt = gnttab_as(kBack);
    auto* p = static_cast<std::uint8_t*>(xengnttab_map_domain_grant_refs(gt, 3, kGuest, refs, PROT_READ | PROT_WRITE));
    REQUIRE(p != nullptr);
    for (int i = 0; i < 3; ++i) {
      CHECK(p[i * kPg] == 'a' + i);
      CHECK(p[i * kPg + kPg - 1] == 'a' + i);
    }
    // Writes through the mapping land in the guest's frames, and back.
    p[kPg + 7] = 'X';
    CHECK(g.frame(20)[7] == 'X');
    g.frame(31)[9] = 'Y';
    CHECK(p[2 * kPg + 9] == 'Y');
    // One range: a write across the page boundary reaches two frames.
    std::memcpy(p + kPg - 2, "1234", 4);
    CHECK(std::memcmp(g.frame(40) + kPg - 2, "12", 2) == 0);
    CHECK(std::memcmp(g.frame(20), "34", 2) == 0);
    CHECK(xengnttab_unmap(gt, p, 3) == 0);
    xengnttab_close(gt);
  }

  TEST_CASE("set_max_grants caps the pages mapped at once (ENOMEM beyond)") {
    SimDir sim;
    GuestView g(kGuest);
    std::uint32_t refs[3] = {grant(kGuest, kBack, 50), grant(kGuest, kBack, 51), grant(kGuest, kBack, 52)};
    auto* gt = gnttab_as(kBack);
    REQUIRE(xengnttab_set_max_grants(gt, 2) == 0);
    void* two = xengnttab_map_domain_grant_refs(gt, 2, kGuest, refs, PROT_READ);
    REQUIRE(two != nullptr);
    errno = 0;
    CHECK(xengnttab_map_grant_ref(gt, kGuest, refs[2], PROT_READ) == nullptr);
    CHECK(errno == ENOMEM);
    CHECK(pins(kGuest, refs[2]) == 0);
    REQUIRE(xengnttab_unmap(gt, two, 2) == 0);
    void* three = xengnttab_map_domain_grant_refs(gt, 3, kGuest, refs, PROT_READ);
    CHECK(three == nullptr);
    void* one = xengnttab_map_grant_ref(gt, kGuest, refs[2], PROT_READ);
    CHECK(one != nullptr);
    // Another handle has its own limit.
    auto* gt2 = gnttab_as(kBack);
    void* other = xengnttab_map_domain_grant_refs(gt2, 3, kGuest, refs, PROT_READ);
    CHECK(other != nullptr);
    xengnttab_close(gt2);
    xengnttab_close(gt);
  }

  TEST_CASE("unmap checks the address and the count (EINVAL)") {
    SimDir sim;
    GuestView g(kGuest);
    std::uint32_t refs[2] = {grant(kGuest, kBack, 60), grant(kGuest, kBack, 61)};
    auto* gt = gnttab_as(kBack);
    auto* p = static_cast<std::uint8_t*>(xengnttab_map_domain_grant_refs(gt, 2, kGuest, refs, PROT_READ));
    REQUIRE(p != nullptr);
    errno = 0;
    CHECK(xengnttab_unmap(gt, p + kPg, 1) == -1);
    CHECK(errno == EINVAL);
    errno = 0;
    CHECK(xengnttab_unmap(gt, p, 1) == -1);
    CHECK(errno == EINVAL);
    errno = 0;
    CHECK(xengnttab_unmap(gt, nullptr, 2) == -1);
    CHECK(errno == EINVAL);
    CHECK(pins(kGuest, refs[0]) == 1);
    CHECK(xengnttab_unmap(gt, p, 2) == 0);
    CHECK(pins(kGuest, refs[0]) == 0);
    CHECK(pins(kGuest, refs[1]) == 0);
    CHECK(flags(kGuest, refs[0]) == GTF_permit_access);
    errno = 0;
    CHECK(xengnttab_unmap(gt, p, 2) == -1);
    CHECK(errno == EINVAL);
    xengnttab_close(gt);
  }

  TEST_CASE("grant copy gives each segment its own status") {
    SimDir sim;
    GuestView g(kGuest);
    std::memset(g.frame(70), 'S', kPg);
    std::uint32_t src = grant(kGuest, kBack, 70, true);  // read-only: fine as a source
    std::uint32_t dst = grant(kGuest, kBack, 71);
    std::uint32_t ro = grant(kGuest, kBack, 72, true);
    std::uint32_t other = grant(kGuest, 7, 73);
    std::uint32_t badpage = grant(kGuest, kBack, XENSIM_NR_FRAMES + 1);
    std::uint32_t never = 600;
    auto* gt = gnttab_as(kBack);

    std::vector<std::uint8_t> in(kPg, 0), out(kPg, 'D');
    auto from = [&](std::uint32_t ref, std::uint16_t dom, void* to, std::uint16_t off, std::uint16_t len) {
      xengnttab_grant_copy_segment_t s{};
      s.source.foreign = {ref, off, dom};
      s.dest.virt = to;
      s.len = len;
      s.flags = GNTCOPY_source_gref;
      s.status = 99;
      return s;
    };
    auto into = [&](std::uint32_t ref, std::uint16_t dom, void* fromp, std::uint16_t off, std::uint16_t len) {
      xengnttab_grant_copy_segment_t s{};
      s.source.virt = fromp;
      s.dest.foreign = {ref, off, dom};
      s.len = len;
      s.flags = GNTCOPY_dest_gref;
      s.status = 99;
      return s;
    };
    xengnttab_grant_copy_segment_t segs[] = {
        from(src, kGuest, in.data(), 0, 4096),             // okay
        from(never, kGuest, in.data(), 0, 16),             // not granted
        into(dst, kGuest, out.data() + 100, 512, 64),      // okay
        into(ro, kGuest, out.data(), 0, 16),               // writing a read-only grant
        from(other, kGuest, in.data(), 0, 16),             // granted to another domain
        from(XENSIM_NR_GRANTS, kGuest, in.data(), 0, 16),  // beyond the table
        from(src, 99, in.data(), 0, 16),                   // no such domain
        from(badpage, kGuest, in.data(), 0, 16),           // frame outside the domain
    };
    // Both sides grants: guest to guest.
    xengnttab_grant_copy_segment_t both{};
    both.source.foreign = {src, 8, kGuest};
    both.dest.foreign = {dst, 0, kGuest};
    both.len = 8;
    both.flags = GNTCOPY_source_gref | GNTCOPY_dest_gref;
    std::vector<xengnttab_grant_copy_segment_t> all(std::begin(segs), std::end(segs));
    all.push_back(both);
    REQUIRE(xengnttab_grant_copy(gt, static_cast<uint32_t>(all.size()), all.data()) == 0);
    CHECK(all[0].status == GNTST_okay);
    CHECK(all[1].status == GNTST_general_error);
    CHECK(all[2].status == GNTST_okay);
    CHECK(all[3].status == GNTST_general_error);
    CHECK(all[4].status == GNTST_general_error);
    CHECK(all[5].status == GNTST_bad_gntref);
    CHECK(all[6].status == GNTST_bad_domain);
    CHECK(all[7].status == GNTST_bad_page);
    CHECK(all[8].status == GNTST_okay);
    CHECK(std::all_of(in.begin(), in.end(), [](std::uint8_t b) { return b == 'S'; }));
    CHECK(g.frame(71)[511] == 0);
    CHECK(g.frame(71)[512] == 'D');
    CHECK(g.frame(71)[575] == 'D');
    CHECK(g.frame(71)[576] == 0);
    CHECK(std::memcmp(g.frame(71), "SSSSSSSS", 8) == 0);
    CHECK(g.frame(72)[0] == 0);  // the refused write did not happen
    // Copies leave nothing pinned.
    for (auto r : {src, dst, ro}) {
      CHECK(pins(kGuest, r) == 0);
      CHECK((flags(kGuest, r) & (GTF_reading | GTF_writing)) == 0);
    }
    xengnttab_close(gt);
  }

  TEST_CASE("grant copy: a grant side crossing its page fails the whole call (gntdev: EINVAL)") {
    SimDir sim;
    GuestView g(kGuest);
    std::uint32_t dst = grant(kGuest, kBack, 80);
    auto* gt = gnttab_as(kBack);
    std::vector<std::uint8_t> buf(2 * kPg, 'Z');
    xengnttab_grant_copy_segment_t s[2]{};
    s[0].source.virt = buf.data();
    s[0].dest.foreign = {dst, 0, kGuest};
    s[0].len = 16;
    s[0].flags = GNTCOPY_dest_gref;
    s[1] = s[0];
    s[1].dest.foreign.offset = 4090;  // 4090 + 16 > 4096
    errno = 0;
    CHECK(xengnttab_grant_copy(gt, 2, s) == -1);
    CHECK(errno == EINVAL);
    CHECK(g.frame(80)[0] == 0);  // rejected before copying anything
    // Neither side a grant: also refused.
    xengnttab_grant_copy_segment_t local{};
    local.source.virt = buf.data();
    local.dest.virt = buf.data() + kPg;
    local.len = 8;
    errno = 0;
    CHECK(xengnttab_grant_copy(gt, 1, &local) == -1);
    CHECK(errno == EINVAL);
    // The virtual side may cross pages.
    s[0].source.virt = buf.data() + kPg - 8;
    s[0].len = 4096;
    REQUIRE(xengnttab_grant_copy(gt, 1, s) == 0);
    CHECK(s[0].status == GNTST_okay);
    CHECK(g.frame(80)[4095] == 'Z');
    xengnttab_close(gt);
  }

  TEST_CASE("share_pages grants fresh zeroed pages of the guest and unshare ends the grants") {
    SimDir sim;
    auto* gs = gntshr_as(kGuest);
    GuestView g(kGuest);
    std::uint32_t refs[2] = {};
    auto* p = static_cast<std::uint8_t*>(xengntshr_share_pages(gs, kBack, 2, refs, 1));
    REQUIRE(p != nullptr);
    CHECK(refs[0] >= 8);
    CHECK(refs[0] != refs[1]);
    CHECK(p[0] == 0);
    CHECK(p[2 * kPg - 1] == 0);
    for (auto r : refs) {
      CHECK(g.gnt[r].flags == GTF_permit_access);
      CHECK(g.gnt[r].domid == kBack);
    }
    std::memset(p, 0x5a, 2 * kPg);
    std::uint32_t frame0 = g.gnt[refs[0]].frame;
    CHECK(g.frame(frame0)[10] == 0x5a);  // the pages are the guest's memory

    std::uint32_t ro_ref = 0;
    void* ro = xengntshr_share_pages(gs, kBack, 1, &ro_ref, 0);
    REQUIRE(ro != nullptr);
    CHECK(g.gnt[ro_ref].flags == (GTF_permit_access | GTF_readonly));

    errno = 0;
    CHECK(xengntshr_unshare(gs, p + 1, 1) == -1);  // not page aligned
    CHECK(errno == EINVAL);
    REQUIRE(xengntshr_unshare(gs, p, 2) == 0);
    for (auto r : refs) CHECK(g.gnt[r].flags == 0);
    // Pages come back zeroed; refs are reused.
    std::uint32_t again[2] = {};
    auto* q = static_cast<std::uint8_t*>(xengntshr_share_pages(gs, kBack, 2, again, 1));
    REQUIRE(q != nullptr);
    CHECK(q[10] == 0);
    CHECK(((again[0] == refs[0]) || (again[1] == refs[0])));
    xengntshr_close(gs);
    CHECK(g.gnt[again[0]].flags == 0);  // close ends everything
    CHECK(g.gnt[ro_ref].flags == 0);
  }

  TEST_CASE("revoking a mapped grant: end of access fails, unshare defers it to the unmap") {
    SimDir sim;
    auto* gs = gntshr_as(kGuest);
    GuestView g(kGuest);
    std::uint32_t ref = 0;
    auto* gp = static_cast<std::uint8_t*>(xengntshr_share_pages(gs, kBack, 1, &ref, 1));
    REQUIRE(gp != nullptr);
    std::uint32_t frame = g.gnt[ref].frame;
    auto* gt = gnttab_as(kBack);
    auto* bp = static_cast<std::uint8_t*>(xengnttab_map_grant_ref(gt, kGuest, ref, PROT_READ | PROT_WRITE));
    REQUIRE(bp != nullptr);

    // Linux's gnttab_end_foreign_access_ref fails while Xen has it pinned.
    errno = 0;
    CHECK(xensim_end_access(kGuest, ref) == -1);
    CHECK(errno == EBUSY);
    CHECK(g.gnt[ref].flags == (GTF_permit_access | GTF_reading | GTF_writing));

    // gntalloc defers the end: the guest's mapping goes, the grant stays
    // valid for the backend, and neither ref nor frame is reused meanwhile.
    REQUIRE(xengntshr_unshare(gs, gp, 1) == 0);
    CHECK((g.gnt[ref].flags & GTF_permit_access) != 0);
    bp[0] = 'w';
    CHECK(g.frame(frame)[0] == 'w');
    std::uint32_t r2 = 0;
    void* other = xengntshr_share_pages(gs, kBack, 1, &r2, 1);
    REQUIRE(other != nullptr);
    CHECK(r2 != ref);
    CHECK(g.gnt[r2].frame != frame);

    // The last unmap completes the deferred end: entry cleared, ref and frame
    // free, the page zeroed, and the grant no longer mappable.
    REQUIRE(xengnttab_unmap(gt, bp, 1) == 0);
    CHECK(g.gnt[ref].flags == 0);
    CHECK(g.frame(frame)[0] == 0);
    CHECK(xengnttab_map_grant_ref(gt, kGuest, ref, PROT_READ) == nullptr);

    // The same with a grant made by the guest kernel directly.
    std::uint32_t f2 = 90;
    std::uint32_t kref = grant(kGuest, kBack, f2);
    void* m = xengnttab_map_grant_ref(gt, kGuest, kref, PROT_READ);
    REQUIRE(m != nullptr);
    CHECK(xensim_end_access(kGuest, kref) == -1);
    CHECK(errno == EBUSY);
    REQUIRE(xengnttab_unmap(gt, m, 1) == 0);
    CHECK(xensim_end_access(kGuest, kref) == 0);
    CHECK(g.gnt[kref].flags == 0);
    xengnttab_close(gt);
    xengntshr_close(gs);
  }

  TEST_CASE("map_grant_ref_notify clears the byte and notifies when the mapping goes") {
    SimDir sim;
    Channel ch;
    auto* gs = gntshr_as(kGuest);
    std::uint32_t ref = 0;
    auto* gp = static_cast<std::uint8_t*>(xengntshr_share_pages(gs, kBack, 1, &ref, 1));
    REQUIRE(gp != nullptr);
    auto* gt = gnttab_as(kBack);
    const auto bport = static_cast<evtchn_port_t>(ch.bport);

    // Clearing needs a writable mapping; the event, a bound port.
    errno = 0;
    CHECK(xengnttab_map_grant_ref_notify(gt, kGuest, ref, PROT_READ, 100, bport) == nullptr);
    CHECK(errno == EINVAL);
    errno = 0;
    CHECK(xengnttab_map_grant_ref_notify(gt, kGuest, ref, PROT_READ | PROT_WRITE, 100, 3000) == nullptr);
    CHECK(errno == EINVAL);
    CHECK(xensim_grant_status(kGuest, ref, nullptr, nullptr) == GTF_permit_access);

    // At unmap.
    gp[100] = 0xab;
    gp[101] = 0xcd;
    void* m = xengnttab_map_grant_ref_notify(gt, kGuest, ref, PROT_READ | PROT_WRITE, 100, bport);
    REQUIRE(m != nullptr);
    CHECK_FALSE(readable(xenevtchn_fd(ch.guest)));
    REQUIRE(xengnttab_unmap(gt, m, 1) == 0);
    CHECK(gp[100] == 0);
    CHECK(gp[101] == 0xcd);
    CHECK(readable(xenevtchn_fd(ch.guest), 1000));
    CHECK(xenevtchn_pending(ch.guest) == ch.gport);
    xenevtchn_unmask(ch.guest, static_cast<evtchn_port_t>(ch.gport));

    // At close, the event only.
    gp[100] = 0xab;
    m = xengnttab_map_grant_ref_notify(gt, kGuest, ref, PROT_READ, static_cast<uint32_t>(-1), bport);
    REQUIRE(m != nullptr);
    xengnttab_close(gt);
    CHECK(gp[100] == 0xab);
    CHECK(readable(xenevtchn_fd(ch.guest), 1000));
    CHECK(xenevtchn_pending(ch.guest) == ch.gport);
    xengntshr_close(gs);
  }

  TEST_CASE("share_page_notify clears the byte and notifies the backend at unshare") {
    SimDir sim;
    Channel ch;
    auto* gs = gntshr_as(kGuest);
    std::uint32_t ref = 0;
    auto* gp = static_cast<std::uint8_t*>(
        xengntshr_share_page_notify(gs, kBack, &ref, 1, 8, static_cast<evtchn_port_t>(ch.gport)));
    REQUIRE(gp != nullptr);
    gp[8] = 1;
    auto* gt = gnttab_as(kBack);
    auto* bp = static_cast<std::uint8_t*>(xengnttab_map_grant_ref(gt, kGuest, ref, PROT_READ));
    REQUIRE(bp != nullptr);
    CHECK(bp[8] == 1);
    REQUIRE(xengntshr_unshare(gs, gp, 1) == 0);
    CHECK(bp[8] == 0);  // the backend still maps the page: the end is deferred
    CHECK(readable(xenevtchn_fd(ch.back), 1000));
    CHECK(xenevtchn_pending(ch.back) == ch.bport);
    xengnttab_close(gt);
    xengntshr_close(gs);
  }

}  // TEST_SUITE
