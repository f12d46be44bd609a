/*
 * xensim: what the simulated Xen offers beyond libxenevtchn/libxengnttab.
 *
 * The guest kernel's side of grants (a frontend that grants its own pages
 * ref by ref, as Linux's blkfront does, rather than through gntshr), direct
 * views of a domain's memory and grant table for tests, and the controls a
 * test or toolstack needs: fault knobs, raising events, reaping dead
 * processes.
 *
 * Every function acts on the simulation named by XENSIM_DIR. Unless said
 * otherwise they return 0 (or a non-negative value) on success and -1 with
 * errno set on failure. Exported with symbol version XENSIM_1.0 from
 * libxensim.so.
 */
#ifndef XENSIM_H
#define XENSIM_H

#include <stdint.h>

#include <xen/grant_table.h>
#include <xen/xen.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Frames 0..XENSIM_FIRST_FREE_FRAME-1 of every domain are never handed out
 * by the frame allocator (for the toolstack: xenstore/console pages). */
#define XENSIM_FIRST_FREE_FRAME 16
#define XENSIM_NR_FRAMES 65536
#define XENSIM_NR_GRANTS 32768
#define XENSIM_NR_PORTS 4096

/* Creates domain `domid` (its memory and tables) if it does not exist. A
 * domain also comes to exist when a process with XENSIM_DOMID=domid opens a
 * handle. Mapping or copying from a domain that does not exist gives
 * GNTST_bad_domain; binding to it, ESRCH. */
int xensim_domain_create(uint32_t domid);

/* The whole memory of `domid` (frame f at offset f * 4096), mapped shared
 * into the caller; *nr_frames (if not NULL) receives its size in frames.
 * Stays mapped for the life of the process. NULL on failure. */
void *xensim_domain_memory(uint32_t domid, uint32_t *nr_frames);

/* The v1 grant table of `domid`, writable, as the guest sees it. NULL on
 * failure. Refs 0..7 are the toolstack's. Writing entries directly is
 * allowed (tests build odd states this way); refs for real use should come
 * from xensim_grant_access() so that they do not collide with gntshr's. */
grant_entry_v1_t *xensim_grant_table(uint32_t domid, uint32_t *nr_entries);

/* Allocates `count` free frames of `domid` (zero-filled) into frames[]. */
int xensim_frames_alloc(uint32_t domid, uint32_t count, uint32_t *frames);
/* Frees frames (their contents are discarded). */
int xensim_frames_free(uint32_t domid, uint32_t count, const uint32_t *frames);

/* Linux's gnttab_grant_foreign_access(): grants `frame` of `domid` to
 * `to_domid`, read-only if `readonly`. Returns the new ref. */
int xensim_grant_access(uint32_t domid, uint32_t to_domid, uint32_t frame, int readonly);

/* Linux's gnttab_end_foreign_access_ref() + freeing the ref: 0 if access
 * ended (the entry is cleared, the ref free again); -1 with EBUSY if the
 * grantee still has it mapped or a copy in flight (GTF_reading/GTF_writing
 * set), in which case nothing changes. Grants held only by processes that
 * have died are released first, as their kernel would have at exit. */
int xensim_end_access(uint32_t domid, uint32_t ref);

/* The hypervisor's view of a grant: returns the entry's flags (GTF_*) and
 * fills the number of read-only and writable pins (mappings and copies in
 * flight). */
int xensim_grant_status(uint32_t domid, uint32_t ref, uint32_t *pins_ro, uint32_t *pins_rw);

/* Event-channel port state, as the hypervisor sees it. */
enum { XENSIM_PORT_FREE = 0, XENSIM_PORT_UNBOUND = 1, XENSIM_PORT_INTERDOMAIN = 2, XENSIM_PORT_VIRQ = 3 };
typedef struct xensim_port_info {
  uint32_t state;       /* XENSIM_PORT_* */
  uint32_t remote_dom;  /* unbound: who may bind it; interdomain: the peer */
  uint32_t remote_port; /* interdomain: the peer's port */
  uint32_t virq;
  int pending; /* an event is latched (arrived while masked) */
  int masked;
  int queued; /* delivered to its handle, not yet returned by pending() */
  int bound;  /* bound to a live xenevtchn handle */
  /* The ready count of the handle it is bound to: the ports queued for it,
   * which keep its descriptor readable (0 without a handle). */
  int handle_ready;
} xensim_port_info_t;
int xensim_port_info(uint32_t domid, uint32_t port, xensim_port_info_t *out);

/* Raises an event on port `port` of `domid` as if its peer had notified
 * (a spurious event when the peer did not). */
int xensim_raise(uint32_t domid, uint32_t port);

/* Raises VIRQ `virq` in `domid` (e.g. VIRQ_DOM_EXC for a toolstack). */
int xensim_send_virq(uint32_t domid, uint32_t virq);

/* Releases now what processes that died still held (grant mappings with
 * their unmap notifications, shared pages, bound ports), as their kernel
 * would have at exit. Otherwise this happens lazily: when binding, when
 * joining the simulation, and when ending access to a grant still in use.
 * A harness that has just reaped a child can call it to get the peer's
 * notifications at once. Returns the number of processes reaped. */
int xensim_reap(void);

/* Replaces the contents of $XENSIM_DIR/xensim.faults with `spec` (NULL or ""
 * removes it) and makes every process of the simulation apply it at its next
 * operation. See README.md for the knobs. */
int xensim_set_faults(const char *spec);

#ifdef __cplusplus
}
#endif

#endif /* XENSIM_H */
