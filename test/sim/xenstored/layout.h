/*
 * The files through which the simulated hypervisor is shared between
 * processes: the LD_PRELOAD shim inside xenstored, the dom0 side (tests, the
 * CLI) and guests in any process. Everything lives in the xenstored run
 * directory (XENSTORED_RUNDIR), so knowing that directory and a domid is
 * enough to join.
 *
 *  xs-evtchn          FIFO into xenstored: its fake event-channel device.
 *                     Every kick is one 4-byte native-endian message: the
 *                     domid whose ring changed, or XBD_XS_KICK_VIRQ for
 *                     VIRQ_DOM_EXC (a domain's state changed). Messages are
 *                     smaller than PIPE_BUF, so concurrent writers never
 *                     interleave.
 *  xs-dom<N>.page     the domain's xenstore ring page (one 4 KiB page,
 *                     struct xenstore_domain_interface), mapped MAP_SHARED
 *                     by xenstored (as its "grant map") and by the guest.
 *  xs-dom<N>.evtchn   FIFO from xenstored to the guest: one byte per notify.
 *  xs-dom<N>.dying    exists while the domain is dying: xc_domain_getinfo
 *                     reports it dying and shut down.
 *  xenstored.pid      pid of the daemon (written by whoever started it).
 *
 * Both FIFOs are opened O_RDWR by their reader, so they never report EOF or
 * HUP when writers come and go, and a writer's O_NONBLOCK open only fails
 * (ENXIO) when nobody reads: for xs-evtchn, that means xenstored is gone.
 */
#ifndef XBD_SIM_XENSTORED_LAYOUT_H
#define XBD_SIM_XENSTORED_LAYOUT_H

#define XBD_XS_KICK_FIFO "xs-evtchn"
#define XBD_XS_PAGE_FMT "xs-dom%u.page"
#define XBD_XS_NOTIFY_FMT "xs-dom%u.evtchn"
#define XBD_XS_DYING_FMT "xs-dom%u.dying"
#define XBD_XS_PID_FILE "xenstored.pid"

/* Size of xs-dom<N>.page: one page, as the grant it stands for. */
#define XBD_XS_PAGE_SIZE 4096

/* Kick message meaning "VIRQ_DOM_EXC" rather than a domain's ring. */
#define XBD_XS_KICK_VIRQ 0xffffffffu

/* The event-channel port dom0's own xenstore page is said to use. */
#define XBD_XS_DOM0_PORT 1

/* The guest-side port dom0 passes in XS_INTRODUCE. xenstored only requires
 * it to be positive; the shim's event channels need no port numbers from the
 * guest (kicks carry the domid). */
#define XBD_XS_GUEST_PORT 1

#endif
