/*
 * LD_PRELOAD library that lets Debian's unmodified xentop (and its
 * libxenstat) run on the simulated Xen, so that the integration tests read
 * the disk counters exactly as an operator's xentop would.
 *
 * libxenstat needs the hypervisor only for the list of domains and a few
 * figures xentop prints beside the disks; those are faked here:
 *  - libxenctrl: an interface handle, xc_physinfo, xc_domain_getinfolist
 *    (the domains of XBD_XENTOP_DOMAINS, e.g. "0,5", all running),
 *    xc_vcpu_getinfo and xc_version;
 *  - connect(): a unix socket under /var/run/xen/ or /run/xen/ (libxenstat's
 *    qmp-libxenstat-<domid>) is looked for in XBD_XENTOP_RUN_DIR instead,
 *    so that tests running side by side each have their own;
 *  - opendir("/sys/bus/xen-backend/devices"), where Linux's blkback lists
 *    its vbds (libxenstat gives up on the disks without it): an empty
 *    directory, XBD_XENTOP_RUN_DIR itself holds no vbd-like names.
 * xenstore is the simulation's real xenstored (XENSTORED_PATH).
 *
 * The symbols are unversioned: the dynamic linker lets a preloaded
 * definition satisfy libxenstat's versioned references (VERS_4.17.0).
 * Never sanitized (xentop is not instrumented).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <xenctrl.h>

#define EXPORT __attribute__((visibility("default")))

static int handle;

EXPORT xc_interface *xc_interface_open(xentoollog_logger *logger, xentoollog_logger *dombuild_logger,
                                       unsigned open_flags) {
  (void)logger;
  (void)dombuild_logger;
  (void)open_flags;
  return (xc_interface *)&handle;
}

EXPORT int xc_interface_close(xc_interface *xch) {
  (void)xch;
  return 0;
}

EXPORT int xc_physinfo(xc_interface *xch, xc_physinfo_t *info) {
  (void)xch;
  memset(info, 0, sizeof *info);
  info->nr_cpus = 2;
  info->cpu_khz = 2000000;
  info->total_pages = 1u << 20;
  info->free_pages = 1u << 19;
  return 0;
}

EXPORT int xc_domain_getinfolist(xc_interface *xch, uint32_t first_domain, unsigned int max_domains,
                                 xc_domaininfo_t *info) {
  const char *list = getenv("XBD_XENTOP_DOMAINS");
  unsigned n = 0;
  (void)xch;
  while (list && *list && n < max_domains) {
    char *end;
    const unsigned long id = strtoul(list, &end, 10);
    if (end == list) break;
    if (id >= first_domain) {
      memset(&info[n], 0, sizeof info[n]);
      info[n].domain = (domid_t)id;
      info[n].flags = XEN_DOMINF_running;
      info[n].tot_pages = 4096;
      info[n].max_pages = 8192;
      ++n;
    }
    list = *end == ',' ? end + 1 : end;
  }
  return (int)n;
}

EXPORT int xc_vcpu_getinfo(xc_interface *xch, uint32_t domid, uint32_t vcpu, xc_vcpuinfo_t *info) {
  (void)xch;
  (void)domid;
  memset(info, 0, sizeof *info);
  info->vcpu = vcpu;
  info->online = 1;
  return 0;
}

EXPORT int xc_version(xc_interface *xch, int cmd, void *arg) {
  (void)xch;
  if (cmd == XENVER_version) return (4 << 16) | 17;
  if (cmd == XENVER_extraversion) strcpy((char *)arg, ".7-sim");
  return 0;
}

static const char *run_dir(void) { return getenv("XBD_XENTOP_RUN_DIR"); }

EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len) {
  static int (*real)(int, const struct sockaddr *, socklen_t);
  struct sockaddr_un moved;
  const char *dir = run_dir();
  if (!real) real = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
  if (dir && addr && addr->sa_family == AF_UNIX) {
    const char *path = ((const struct sockaddr_un *)addr)->sun_path;
    const char *name = NULL;
    if (strncmp(path, "/var/run/xen/", 13) == 0) name = path + 13;
    if (strncmp(path, "/run/xen/", 9) == 0) name = path + 9;
    if (name) {
      memset(&moved, 0, sizeof moved);
      moved.sun_family = AF_UNIX;
      if ((size_t)snprintf(moved.sun_path, sizeof moved.sun_path, "%s/%s", dir, name) >= sizeof moved.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
      }
      return real(fd, (const struct sockaddr *)&moved, sizeof moved);
    }
  }
  return real(fd, addr, len);
}

EXPORT DIR *opendir(const char *name) {
  static DIR *(*real)(const char *);
  const char *dir = run_dir();
  if (!real) real = (DIR * (*)(const char *)) dlsym(RTLD_NEXT, "opendir");
  if (dir && strcmp(name, "/sys/bus/xen-backend/devices") == 0) return real(dir);
  return real(name);
}
