// One ring's way to an RBD image (rbd.hpp says what the driver is).
//
// Operations go to librbd's asynchronous calls (rbd_aio_read, _write,
// _flush, _discard) straight from the ring's thread: librbd queues them to
// its own threads (rbd_non_blocking_aio, which the cluster connection
// forces on) and returns at once. Their completions come back on librbd's
// threads, and must reach the ring's thread:
//
//  - Not through rbd_set_image_notification + rbd_poll_io_events: that is
//    one eventfd and one completion queue per image, while a vbd's rings run
//    on several threads and each must get its own completions.
//  - Not through asio::post from librbd's thread: a handler allocated per
//    request, from a thread whose allocator cache is not the ring's.
//  - So each channel has a mailbox: a lock-free list of finished operations
//    (librbd's threads push, the ring's thread takes the whole list at
//    once) and an eventfd, written by the push that finds the list empty.
//    The ring's executor watches the eventfd through a wakeable_wait (no
//    Asio cancel: docs/architecture.md, "Asio on io_uring") and completes
//    every operation it finds, in order, on its own thread.
//
// Nothing is allocated per request on our side: the operation is a slot of
// the channel's (one per possible request in flight), the list runs through
// the slots. librbd allocates its own completion object per request.
//
// Lifetime: each operation in flight holds a reference to the channel's
// state (its slots and its mailbox), which librbd's callback moves out of
// the slot before it publishes the operation; so nothing the callback
// touches is freed before it has returned, even when the ring takes the
// operation, finishes and destroys the channel in between. A channel
// destroyed with operations in flight (which the ring never does) keeps its
// state until librbd has returned them all, and delivers none.
#pragma once

#include "blkback/data/log_budget.hpp"
#include "blkback/storage/storage.hpp"

#include <rbd/librbd.h>
#include <boost/asio/any_io_executor.hpp>

#include <memory>
#include <string>

namespace xbd::blkback::storage::rbd {

// What every channel of one store shares.
struct channel_config {
  rbd_image_t image = nullptr;  // open for as long as the store (which outlives its channels)
  std::string name;             // for log lines
  properties props;
  std::shared_ptr<log_budget> budget;  // failed operations, all channels together
};

// Never blocks.
asio_xen::result<std::unique_ptr<channel>> open_channel(const boost::asio::any_io_executor& ex, unsigned depth,
                                                        std::shared_ptr<const channel_config> cfg);

}  // namespace xbd::blkback::storage::rbd
