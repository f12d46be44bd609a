// xbd-hostile-xen: what a hostile guest's kernel can do with its grant
// table and event channels that blkfront-sim's script cannot, for the
// hostile-guest tests (test_hostile.cpp). Runs in the simulation named by
// XENSIM_DIR, through xensim's extension API (the guest kernel's side).
//
//   grant DOMID TO rw|ro [COUNT]     COUNT fresh zeroed frames of DOMID granted
//                                    to domain TO; prints the refs
//   revoke DOMID REF                 ends the grant (gnttab_end_foreign_access);
//                                    exit 3 if the grantee holds it (EBUSY)
//   write DOMID REF OFFSET HEX       writes bytes into the granted frame
//   status DOMID REF                 Xen's view of the grant: "FLAGS PINS_RO PINS_RW"
//   retarget DOMID REF               rewrites the entry to a fresh zeroed frame of
//                                    DOMID, as a guest kernel may write its grant
//                                    table at any time (mapped or not); prints
//                                    "OLD NEW" frames
//   peek DOMID FRAME OFFSET LEN      LEN bytes of a frame, in hex
//   port REMOTE SECONDS              as $XENSIM_DOMID: an unbound port open to
//                                    REMOTE, printed, held for SECONDS (or
//                                    until SIGTERM)
#include <xensim.h>

extern "C" {  // the header has no C++ guards
#include <xenevtchn.h>
}

#include <unistd.h>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

int usage() {
  std::fprintf(stderr,
               "usage: xbd-hostile-xen grant DOMID TO rw|ro [COUNT] | revoke DOMID REF | "
               "write DOMID REF OFFSET HEX | status DOMID REF | retarget DOMID REF | "
               "peek DOMID FRAME OFFSET LEN | port REMOTE SECONDS\n");
  return 2;
}

unsigned long num(const char* s) { return std::strtoul(s, nullptr, 0); }

int grant(int argc, char** argv) {
  if (argc < 5) return usage();
  const auto dom = static_cast<std::uint32_t>(num(argv[2]));
  const auto to = static_cast<std::uint32_t>(num(argv[3]));
  const bool ro = std::strcmp(argv[4], "ro") == 0;
  const auto count = argc > 5 ? static_cast<std::uint32_t>(num(argv[5])) : 1u;
  if (xensim_domain_create(dom) != 0) return std::perror("xensim_domain_create"), 1;
  std::vector<std::uint32_t> frames(count);
  if (xensim_frames_alloc(dom, count, frames.data()) != 0) return std::perror("xensim_frames_alloc"), 1;
  for (std::uint32_t f : frames) {
    const int ref = xensim_grant_access(dom, to, f, ro ? 1 : 0);
    if (ref < 0) return std::perror("xensim_grant_access"), 1;
    std::printf("%d ", ref);
  }
  std::printf("\n");
  return 0;
}

int revoke(int argc, char** argv) {
  if (argc < 4) return usage();
  if (xensim_end_access(static_cast<std::uint32_t>(num(argv[2])), static_cast<std::uint32_t>(num(argv[3]))) == 0)
    return 0;
  const int e = errno;
  std::fprintf(stderr, "xensim_end_access: %s\n", std::strerror(e));
  return e == EBUSY ? 3 : 1;
}

int write_page(int argc, char** argv) {
  if (argc < 6) return usage();
  const auto dom = static_cast<std::uint32_t>(num(argv[2]));
  const auto ref = num(argv[3]);
  const auto off = num(argv[4]);
  const std::string hex = argv[5];
  std::uint32_t entries = 0;
  grant_entry_v1_t* table = xensim_grant_table(dom, &entries);
  std::uint32_t frames = 0;
  auto* mem = static_cast<unsigned char*>(xensim_domain_memory(dom, &frames));
  if (!table || !mem || ref >= entries || table[ref].frame >= frames || off + hex.size() / 2 > 4096 ||
      hex.size() % 2 != 0)
    return std::fprintf(stderr, "bad arguments\n"), 1;
  unsigned char* page = mem + std::size_t{table[ref].frame} * 4096;
  for (std::size_t i = 0; i < hex.size() / 2; ++i)
    page[off + i] = static_cast<unsigned char>(std::stoul(hex.substr(2 * i, 2), nullptr, 16));
  return 0;
}

int status(int argc, char** argv) {
  if (argc < 4) return usage();
  std::uint32_t ro = 0, rw = 0;
  const int flags =
      xensim_grant_status(static_cast<std::uint32_t>(num(argv[2])), static_cast<std::uint32_t>(num(argv[3])), &ro, &rw);
  if (flags < 0) return std::perror("xensim_grant_status"), 1;
  std::printf("%d %u %u\n", flags, ro, rw);
  return 0;
}

// Only the frame changes: the flags (and with them Xen's GTF_reading and
// GTF_writing of a mapped grant) stay as they are.
int retarget(int argc, char** argv) {
  if (argc < 4) return usage();
  const auto dom = static_cast<std::uint32_t>(num(argv[2]));
  const auto ref = num(argv[3]);
  std::uint32_t entries = 0;
  grant_entry_v1_t* table = xensim_grant_table(dom, &entries);
  if (!table || ref >= entries) return std::fprintf(stderr, "bad arguments\n"), 1;
  std::uint32_t frame = 0;
  if (xensim_frames_alloc(dom, 1, &frame) != 0) return std::perror("xensim_frames_alloc"), 1;
  const std::uint32_t old = __atomic_exchange_n(&table[ref].frame, frame, __ATOMIC_SEQ_CST);
  std::printf("%u %u\n", old, frame);
  return 0;
}

int peek(int argc, char** argv) {
  if (argc < 6) return usage();
  const auto dom = static_cast<std::uint32_t>(num(argv[2]));
  const auto frame = num(argv[3]);
  const auto off = num(argv[4]);
  const auto len = num(argv[5]);
  std::uint32_t frames = 0;
  auto* mem = static_cast<const unsigned char*>(xensim_domain_memory(dom, &frames));
  if (!mem || frame >= frames || off + len > 4096) return std::fprintf(stderr, "bad arguments\n"), 1;
  for (unsigned long i = 0; i < len; ++i) std::printf("%02x", mem[frame * 4096 + off + i]);
  std::printf("\n");
  return 0;
}

volatile std::sig_atomic_t stop = 0;

int port(int argc, char** argv) {
  if (argc < 4) return usage();
  xenevtchn_handle* h = xenevtchn_open(nullptr, 0);
  if (!h) return std::perror("xenevtchn_open"), 1;
  const int p = xenevtchn_bind_unbound_port(h, static_cast<std::uint32_t>(num(argv[2])));
  if (p < 0) return std::perror("xenevtchn_bind_unbound_port"), 1;
  std::printf("%d\n", p);
  std::fflush(stdout);
  std::signal(SIGTERM, [](int) { stop = 1; });
  for (unsigned long i = 0; i < num(argv[3]) * 10 && !stop; ++i) ::usleep(100'000);
  xenevtchn_close(h);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  const std::string cmd = argv[1];
  if (cmd == "grant") return grant(argc, argv);
  if (cmd == "revoke") return revoke(argc, argv);
  if (cmd == "write") return write_page(argc, argv);
  if (cmd == "status") return status(argc, argv);
  if (cmd == "retarget") return retarget(argc, argv);
  if (cmd == "peek") return peek(argc, argv);
  if (cmd == "port") return port(argc, argv);
  return usage();
}
