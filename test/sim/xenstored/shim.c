/*
 * LD_PRELOAD library that lets Debian's unmodified C xenstored (4.17) run
 * without a hypervisor, as an ordinary user, one instance per run directory.
 *
 * xenstored only needs a handful of hypervisor services, all faked here:
 *  - /proc/xen/xsd_port and /proc/xen/xsd_kva (dom0's own ring) become
 *    memfds: nobody talks to dom0 through that ring, dom0 uses the socket;
 *  - libxenctrl: an interface handle and xc_domain_getinfo, which says every
 *    domain exists and is running unless its xs-dom<N>.dying file exists;
 *  - libxengnttab: "mapping" a domain's xenstore grant maps the file
 *    xs-dom<N>.page of the run directory, so another process can be the guest;
 *  - libxenevtchn: one FIFO (xs-evtchn) stands for the event-channel device;
 *    notifying a domain writes a byte into that domain's xs-dom<N>.evtchn.
 * The file layout and message format are in layout.h.
 *
 * Every symbol xenstored imports from those libraries is defined here
 * without a version: the dynamic linker lets an unversioned definition in a
 * preloaded object satisfy the versioned references (VERS_1.0, VERS_4.17.0),
 * so the real libraries are still loaded but never called.
 *
 * This file must stay free of sanitizers: xenstored is not instrumented, so
 * an ASan runtime inside the preload would refuse to start.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xenctrl.h>
#include <xenevtchn.h>
#include <xengnttab.h>

#include "layout.h"

#define EXPORT __attribute__((visibility("default")))

#define PAGE ((size_t)XBD_XS_PAGE_SIZE)

/* ------------------------------------------------------------------ */
/* Helpers                                                            */

static const char *run_dir(void) { return getenv("XENSTORED_RUNDIR"); }

/* Builds "<run dir>/<name formatted with domid>" (a name without %u ignores
 * the domid); false if it does not fit or the run directory is unknown (then
 * we must not guess one). */
static int sim_path(char *out, size_t size, const char *fmt, unsigned domid) {
  char name[64];
  const char *dir = run_dir();
  int n;

  if (!dir) {
    errno = ENOENT;
    return 0;
  }
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
#pragma GCC diagnostic ignored "-Wformat-extra-args"
  snprintf(name, sizeof(name), fmt, domid);
#pragma GCC diagnostic pop
  n = snprintf(out, size, "%s/%s", dir, name);
  if (n < 0 || (size_t)n >= size) {
    errno = ENAMETOOLONG;
    return 0;
  }
  return 1;
}

static int memfd_with(const char *name, const void *data, size_t len, size_t size) {
  int fd = memfd_create(name, MFD_CLOEXEC);

  if (fd < 0) return -1;
  if (ftruncate(fd, (off_t)size) < 0 || (len && pwrite(fd, data, len, 0) != (ssize_t)len)) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

/* Opens a FIFO for reading and writing without blocking, creating it first
 * if needed: O_RDWR keeps the FIFO from ever reporting EOF/HUP to us when the
 * other side closes, and from blocking in open() when it is not there yet. */
static int open_fifo(const char *path) {
  if (mkfifo(path, 0600) < 0 && errno != EEXIST) return -1;
  return open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
}

/* ------------------------------------------------------------------ */
/* /proc/xen                                                          */

typedef int (*open_fn)(const char *, int, ...);

EXPORT int open(const char *path, int flags, ...) {
  static open_fn real_open;
  mode_t mode = 0;

  /* O_TMPFILE contains O_DIRECTORY's bit: test it whole. */
  if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) {
    va_list ap;
    va_start(ap, flags);
    mode = va_arg(ap, mode_t);
    va_end(ap);
  }

  if (strcmp(path, "/proc/xen/xsd_port") == 0) {
    char port[16];
    int n = snprintf(port, sizeof(port), "%d\n", XBD_XS_DOM0_PORT);
    return memfd_with("xsd_port", port, (size_t)n, (size_t)n);
  }
  if (strcmp(path, "/proc/xen/xsd_kva") == 0) return memfd_with("xsd_kva", NULL, 0, PAGE);

  if (!real_open) real_open = (open_fn)dlsym(RTLD_NEXT, "open");
  return real_open(path, flags, mode);
}

/* ------------------------------------------------------------------ */
/* libxenctrl                                                         */

struct xc_interface_core {
  int unused;
};

EXPORT xc_interface *xc_interface_open(xentoollog_logger *logger, xentoollog_logger *dombuild_logger,
                                       unsigned open_flags) {
  (void)logger;
  (void)dombuild_logger;
  (void)open_flags;
  return calloc(1, sizeof(struct xc_interface_core));
}

EXPORT int xc_interface_close(xc_interface *xch) {
  free(xch);
  return 0;
}

/* xenstored asks for one domain at a time and checks the domid it gets, so
 * answering exactly the domain asked for is faithful enough. Every domid
 * below DOMID_FIRST_RESERVED "exists": on real Xen the toolstack writes a
 * domain's nodes only after creating it, and the tests do the same. */
EXPORT int xc_domain_getinfo(xc_interface *xch, uint32_t first_domid, unsigned int max_doms, xc_dominfo_t *info) {
  char path[4096];

  (void)xch;
  if (max_doms < 1 || first_domid >= DOMID_FIRST_RESERVED) return 0;

  memset(info, 0, sizeof(*info));
  info->domid = first_domid;
  info->running = 1;
  if (first_domid != 0 && sim_path(path, sizeof(path), XBD_XS_DYING_FMT, first_domid) && access(path, F_OK) == 0) {
    info->running = 0;
    info->dying = 1;
    info->shutdown = 1;
    info->shutdown_reason = SHUTDOWN_poweroff;
  }
  return 1;
}

/* ------------------------------------------------------------------ */
/* libxengnttab                                                       */

struct xengntdev_handle {
  int unused;
};

EXPORT xengnttab_handle *xengnttab_open(struct xentoollog_logger *logger, unsigned open_flags) {
  (void)logger;
  (void)open_flags;
  return calloc(1, sizeof(struct xengntdev_handle));
}

EXPORT int xengnttab_close(xengnttab_handle *xgt) {
  free(xgt);
  return 0;
}

EXPORT int xengnttab_set_max_grants(xengnttab_handle *xgt, uint32_t nr_grants) {
  (void)xgt;
  (void)nr_grants;
  return 0;
}

/* The only grant xenstored maps is a domain's GNTTAB_RESERVED_XENSTORE page,
 * which the dom0 side created as a file before introducing the domain. */
EXPORT void *xengnttab_map_grant_ref(xengnttab_handle *xgt, uint32_t domid, uint32_t ref, int prot) {
  char path[4096];
  void *page;
  int fd, e;

  (void)xgt;
  if (ref != GNTTAB_RESERVED_XENSTORE) {
    errno = EINVAL;
    return NULL;
  }
  if (!sim_path(path, sizeof(path), XBD_XS_PAGE_FMT, domid)) return NULL;
  fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return NULL;
  page = mmap(NULL, PAGE, prot, MAP_SHARED, fd, 0);
  e = errno;
  close(fd);
  errno = e;
  return page == MAP_FAILED ? NULL : page;
}

EXPORT int xengnttab_unmap(xengnttab_handle *xgt, void *start_address, uint32_t count) {
  (void)xgt;
  return munmap(start_address, (size_t)count * PAGE);
}

/* ------------------------------------------------------------------ */
/* libxenevtchn                                                       */

#define MAX_PORTS 4096

enum port_kind { PORT_FREE, PORT_VIRQ, PORT_DOMAIN };

struct port {
  enum port_kind kind;
  uint32_t domid;
  int notify_fd; /* xs-dom<N>.evtchn, or -1 (dom0: nobody listens) */
};

struct xenevtchn_handle {
  int kick_fd;
  struct port ports[MAX_PORTS];
};

static xenevtchn_handle *new_evtchn(void) {
  char path[4096];
  xenevtchn_handle *xce;
  int e;

  if (!sim_path(path, sizeof(path), XBD_XS_KICK_FIFO, 0)) return NULL;
  xce = calloc(1, sizeof(*xce));
  if (!xce) return NULL;
  xce->kick_fd = open_fifo(path);
  if (xce->kick_fd < 0) {
    e = errno;
    free(xce);
    errno = e;
    return NULL;
  }
  return xce;
}

EXPORT xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger, unsigned int flags) {
  (void)logger;
  (void)flags;
  return new_evtchn();
}

/* Only used when xenstored restarts itself for a live update, which the
 * simulation does not do; behave like a fresh open. */
EXPORT xenevtchn_handle *xenevtchn_fdopen(struct xentoollog_logger *logger, int fd, unsigned open_flags) {
  (void)logger;
  (void)fd;
  (void)open_flags;
  return new_evtchn();
}

EXPORT int xenevtchn_close(xenevtchn_handle *xce) {
  unsigned i;

  if (!xce) return 0;
  for (i = 0; i < MAX_PORTS; i++)
    if (xce->ports[i].kind == PORT_DOMAIN && xce->ports[i].notify_fd >= 0) close(xce->ports[i].notify_fd);
  close(xce->kick_fd);
  free(xce);
  return 0;
}

EXPORT int xenevtchn_fd(xenevtchn_handle *xce) { return xce->kick_fd; }

/* Port 0 is never valid on Xen; dom0's port number is fixed by xsd_port. */
static int alloc_port(xenevtchn_handle *xce, enum port_kind kind, uint32_t domid) {
  unsigned i;

  for (i = XBD_XS_DOM0_PORT + 1; i < MAX_PORTS; i++) {
    if (xce->ports[i].kind == PORT_FREE) {
      xce->ports[i].kind = kind;
      xce->ports[i].domid = domid;
      xce->ports[i].notify_fd = -1;
      return (int)i;
    }
  }
  errno = ENOSPC;
  return -1;
}

static struct port *find_port(xenevtchn_handle *xce, evtchn_port_t port) {
  if (port >= MAX_PORTS || xce->ports[port].kind == PORT_FREE) {
    errno = EINVAL;
    return NULL;
  }
  return &xce->ports[port];
}

EXPORT xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *xce, uint32_t domid,
                                                            evtchn_port_t remote_port) {
  char path[4096];
  int port;

  if (remote_port == 0) {
    errno = EINVAL;
    return -1;
  }
  if (domid == 0) {
    /* dom0's ring (xsd_kva) is a private memfd: nobody to notify.
     * Its port keeps the number from xsd_port. */
    if (remote_port < MAX_PORTS && xce->ports[remote_port].kind == PORT_FREE) {
      xce->ports[remote_port].kind = PORT_DOMAIN;
      xce->ports[remote_port].domid = 0;
      xce->ports[remote_port].notify_fd = -1;
      return (int)remote_port;
    }
    return alloc_port(xce, PORT_DOMAIN, 0);
  }

  if (!sim_path(path, sizeof(path), XBD_XS_NOTIFY_FMT, domid)) return -1;
  port = alloc_port(xce, PORT_DOMAIN, domid);
  if (port < 0) return -1;
  xce->ports[port].notify_fd = open_fifo(path);
  if (xce->ports[port].notify_fd < 0) {
    int e = errno;
    xce->ports[port].kind = PORT_FREE;
    errno = e;
    return -1;
  }
  return port;
}

EXPORT xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *xce, unsigned int virq) {
  if (virq != VIRQ_DOM_EXC) {
    errno = EINVAL;
    return -1;
  }
  return alloc_port(xce, PORT_VIRQ, 0);
}

EXPORT int xenevtchn_unbind(xenevtchn_handle *xce, evtchn_port_t port) {
  struct port *p = find_port(xce, port);

  if (!p) return -1;
  if (p->notify_fd >= 0) close(p->notify_fd);
  p->kind = PORT_FREE;
  p->notify_fd = -1;
  return 0;
}

EXPORT int xenevtchn_notify(xenevtchn_handle *xce, evtchn_port_t port) {
  struct port *p = find_port(xce, port);
  const char byte = 1;

  if (!p) return -1;
  /* A full FIFO already holds a wake-up the guest has not consumed;
   * dropping this one loses nothing. */
  if (p->notify_fd >= 0 && write(p->notify_fd, &byte, 1) < 0 && errno != EAGAIN) return -1;
  return 0;
}

/* Translates one kick message into the local port xenstored knows. A kick
 * for a domain it has no port for (released meanwhile) or a spurious wake-up
 * is reported as the VIRQ: that only makes xenstored rescan its domains. */
EXPORT xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *xce) {
  uint32_t msg;
  unsigned i, virq = 0;
  ssize_t n = read(xce->kick_fd, &msg, sizeof(msg));

  for (i = 0; i < MAX_PORTS; i++) {
    if (xce->ports[i].kind == PORT_VIRQ)
      virq = i;
    else if (n == (ssize_t)sizeof(msg) && xce->ports[i].kind == PORT_DOMAIN && xce->ports[i].domid == msg &&
             msg != XBD_XS_KICK_VIRQ)
      return (int)i;
  }
  if (n < 0 && errno != EAGAIN) return -1;
  return (int)virq;
}

EXPORT int xenevtchn_unmask(xenevtchn_handle *xce, evtchn_port_t port) { return find_port(xce, port) ? 0 : -1; }
