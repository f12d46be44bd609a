// A guest or a backend exchanging a blkif ring, grants and events, built
// against the REAL libxenevtchn/libxengnttab: the tests run it with the
// simulator preloaded (or put first on the library path), as the shipped
// daemon is run. Exit status 0 on success; a diagnostic on stderr otherwise.
//
//   xensim-peer which
//       prints the object that provides each Xen call
//   xensim-peer guest <requests> <outfile>
//       shares a ring page and a data page with domain 0, binds an unbound
//       port, writes "<ring-ref> <data-ref> <port>" to <outfile>, then sends
//       <requests> reads one at a time and checks each answer's data
//   xensim-peer backend <guest-domid> <ring-ref> <port> <requests>
//       maps the ring, binds to the port, answers reads by grant-copying a
//       pattern into the request's page
#include "asio_xen/xen.hpp"

#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

std::uint8_t pattern(std::uint64_t sector, std::size_t i) {
  return static_cast<std::uint8_t>(sector * 131 + i * 7 + 1);
}

int fail(const char* what) {
  std::fprintf(stderr, "xensim-peer: %s: %s\n", what, std::strerror(errno));
  return 1;
}

bool provider_is_xensim(void* fn, const char* name, bool print) {
  Dl_info info{};
  if (!dladdr(fn, &info) || !info.dli_fname) return false;
  char real[PATH_MAX];
  const char* path = realpath(info.dli_fname, real) ? real : info.dli_fname;
  if (print) std::printf("%s %s\n", name, path);
  return std::strstr(path, "libxensim.so") != nullptr;
}

bool all_from_xensim(bool print) {
  bool ok = true;
  ok &= provider_is_xensim(reinterpret_cast<void*>(&xenevtchn_open), "xenevtchn_open", print);
  ok &= provider_is_xensim(reinterpret_cast<void*>(&xengnttab_open), "xengnttab_open", print);
  ok &= provider_is_xensim(reinterpret_cast<void*>(&xengntshr_open), "xengntshr_open", print);
  ok &= provider_is_xensim(reinterpret_cast<void*>(&xengnttab_grant_copy), "xengnttab_grant_copy", print);
  return ok;
}

// Waits for an event on `ev` (or times out) and unmasks what fired.
bool wait_event(xenevtchn_handle* ev) {
  pollfd p{xenevtchn_fd(ev), POLLIN, 0};
  if (poll(&p, 1, 5000) != 1) return false;
  int port;
  while ((port = xenevtchn_pending(ev)) >= 0) xenevtchn_unmask(ev, static_cast<evtchn_port_t>(port));
  return true;
}

int guest(int requests, const char* outfile) {
  auto* gs = xengntshr_open(nullptr, 0);
  auto* ev = xenevtchn_open(nullptr, 0);
  if (!gs || !ev) return fail("open");
  std::uint32_t refs[2];
  auto* pages = static_cast<std::uint8_t*>(xengntshr_share_pages(gs, 0, 2, refs, 1));
  if (!pages) return fail("share_pages");
  auto* sring = reinterpret_cast<blkif_sring*>(pages);
  SHARED_RING_INIT(sring);
  blkif_front_ring front;
  FRONT_RING_INIT(&front, sring, xbd::xen::page_size);
  std::uint8_t* data = pages + xbd::xen::page_size;
  int port = xenevtchn_bind_unbound_port(ev, 0);
  if (port < 0) return fail("bind_unbound_port");
  fcntl(xenevtchn_fd(ev), F_SETFL, O_NONBLOCK);
  std::string tmp = std::string(outfile) + ".tmp";
  if (FILE* f = std::fopen(tmp.c_str(), "w")) {
    std::fprintf(f, "%u %u %d\n", refs[0], refs[1], port);
    std::fclose(f);
  }
  if (rename(tmp.c_str(), outfile) != 0) return fail("rename");

  for (int i = 0; i < requests; ++i) {
    blkif_request* req = RING_GET_REQUEST(&front, front.req_prod_pvt);
    std::memset(req, 0, sizeof *req);
    req->operation = BLKIF_OP_READ;
    req->nr_segments = 1;
    req->id = static_cast<std::uint64_t>(i);
    req->sector_number = static_cast<blkif_sector_t>(i);
    req->seg[0].gref = refs[1];
    req->seg[0].first_sect = 0;
    req->seg[0].last_sect = 7;
    front.req_prod_pvt++;
    int notify = 0;
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&front, notify);
    // Until the backend binds, notifications are dropped (Xen); its
    // bind-time event makes it look at the ring anyway.
    if (notify) xenevtchn_notify(ev, static_cast<evtchn_port_t>(port));
    for (;;) {
      int more = 0;
      RING_FINAL_CHECK_FOR_RESPONSES(&front, more);
      if (more) break;
      if (!wait_event(ev)) {
        std::fprintf(stderr, "xensim-peer guest: no answer to request %d\n", i);
        return 4;
      }
    }
    blkif_response* rsp = RING_GET_RESPONSE(&front, front.rsp_cons);
    front.rsp_cons++;
    if (rsp->id != static_cast<std::uint64_t>(i) || rsp->status != BLKIF_RSP_OKAY) {
      std::fprintf(stderr, "xensim-peer guest: bad response %llu/%d to %d\n", static_cast<unsigned long long>(rsp->id),
                   rsp->status, i);
      return 5;
    }
    for (std::size_t j = 0; j < xbd::xen::page_size; ++j)
      if (data[j] != pattern(static_cast<std::uint64_t>(i), j)) {
        std::fprintf(stderr, "xensim-peer guest: request %d: byte %zu wrong\n", i, j);
        return 6;
      }
  }
  xengntshr_unshare(gs, pages, 2);
  xenevtchn_close(ev);
  xengntshr_close(gs);
  return 0;
}

int backend(std::uint32_t domid, std::uint32_t ring_ref, std::uint32_t port, int requests) {
  auto* gt = xengnttab_open(nullptr, 0);
  auto* ev = xenevtchn_open(nullptr, 0);
  if (!gt || !ev) return fail("open");
  void* ring = xengnttab_map_grant_ref(gt, domid, ring_ref, PROT_READ | PROT_WRITE);
  if (!ring) return fail("map_grant_ref");
  blkif_back_ring back;
  BACK_RING_INIT(&back, static_cast<blkif_sring*>(ring), xbd::xen::page_size);
  int lport = xenevtchn_bind_interdomain(ev, domid, port);
  if (lport < 0) return fail("bind_interdomain");
  fcntl(xenevtchn_fd(ev), F_SETFL, O_NONBLOCK);
  static std::uint8_t buf[4096];
  int done = 0;
  while (done < requests) {
    if (!wait_event(ev)) {
      std::fprintf(stderr, "xensim-peer backend: no event after %d answers\n", done);
      return 4;
    }
    for (;;) {
      while (RING_HAS_UNCONSUMED_REQUESTS(&back)) {
        blkif_request req = *RING_GET_REQUEST(&back, back.req_cons);
        back.req_cons++;
        for (std::size_t j = 0; j < sizeof buf; ++j) buf[j] = pattern(req.sector_number, j);
        xengnttab_grant_copy_segment_t seg{};
        seg.source.virt = buf;
        seg.dest.foreign.ref = req.seg[0].gref;
        seg.dest.foreign.offset = 0;
        seg.dest.foreign.domid = static_cast<std::uint16_t>(domid);
        seg.len = sizeof buf;
        seg.flags = GNTCOPY_dest_gref;
        if (xengnttab_grant_copy(gt, 1, &seg) != 0 || seg.status != GNTST_okay) {
          std::fprintf(stderr, "xensim-peer backend: copy failed (%d)\n", seg.status);
          return 7;
        }
        blkif_response* rsp = RING_GET_RESPONSE(&back, back.rsp_prod_pvt);
        rsp->id = req.id;
        rsp->operation = req.operation;
        rsp->status = BLKIF_RSP_OKAY;
        back.rsp_prod_pvt++;
        int notify = 0;
        RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&back, notify);
        if (notify) xenevtchn_notify(ev, static_cast<evtchn_port_t>(lport));
        ++done;
      }
      int more = 0;
      RING_FINAL_CHECK_FOR_REQUESTS(&back, more);
      if (!more) break;
    }
  }
  xengnttab_unmap(gt, ring, 1);
  xenevtchn_close(ev);
  xengnttab_close(gt);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "which") return all_from_xensim(true) ? 0 : 3;
  if (!all_from_xensim(false)) {
    std::fprintf(stderr, "xensim-peer: the Xen calls do not come from libxensim.so\n");
    return 3;
  }
  if (mode == "guest" && argc == 4) return guest(std::atoi(argv[2]), argv[3]);
  if (mode == "backend" && argc == 6)
    return backend(static_cast<std::uint32_t>(std::strtoul(argv[2], nullptr, 0)),
                   static_cast<std::uint32_t>(std::strtoul(argv[3], nullptr, 0)),
                   static_cast<std::uint32_t>(std::strtoul(argv[4], nullptr, 0)), std::atoi(argv[5]));
  std::fprintf(stderr, "usage: xensim-peer which | guest N FILE | backend DOMID RING PORT N\n");
  return 2;
}
