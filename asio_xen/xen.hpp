// The one place the Xen C headers enter C++.
//
// Every file that needs a Xen type or macro includes this header and no Xen
// header directly, so that the settings below are always in force:
//  - __XEN_TOOLS__ selects the toolstack view of the public headers (the
//    interface version the userspace libraries are built against);
//  - xen_mb/xen_rmb/xen_wmb are ours: ring.h expects the includer to supply
//    mb()/rmb()/wmb(), which a userspace C++ program does not have;
//  - the headers have no extern "C" guards of their own (xenstore.h included).
// They live in /usr/include, a system directory, so their warnings do not trip
// -Werror.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#ifndef __XEN_TOOLS__
#define __XEN_TOOLS__ 1  // NOLINT(bugprone-reserved-identifier): the Xen headers ask for it
#endif

// Full fence for the ring protocol: producer index updates must be ordered
// against both earlier entry writes and later event-index reads.
#define xen_mb() std::atomic_thread_fence(std::memory_order_seq_cst)
// Read barrier: entries are read only after the producer index that covers
// them.
#define xen_rmb() std::atomic_thread_fence(std::memory_order_acquire)
// Write barrier: entries are written before the producer index is published.
#define xen_wmb() std::atomic_thread_fence(std::memory_order_release)

extern "C" {
#include <xen/event_channel.h>
#include <xen/grant_table.h>
#include <xen/io/blkif.h>
#include <xen/io/protocols.h>
#include <xen/io/ring.h>
#include <xen/io/xenbus.h>
#include <xen/io/xs_wire.h>
#include <xen/xen.h>
#include <xenevtchn.h>
#include <xengnttab.h>
#include <xenstore.h>
}

namespace xbd::xen {

// XEN_PAGE_SIZE is not defined by the public headers the tools see.
inline constexpr std::size_t page_size = std::size_t{1} << XEN_PAGE_SHIFT;
inline constexpr unsigned sector_shift = 9;  // blkif.h: units are always 512 B
inline constexpr unsigned sectors_per_page = page_size >> sector_shift;

}  // namespace xbd::xen
