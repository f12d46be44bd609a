// One ring's connection to an NBD export (nbd.hpp says what the driver is).
//
// A channel owns a libnbd handle of its own, connected in the background on
// the ring's executor; operations that arrive before it is up, or while a
// lost server is being reconnected to, wait in the channel. Each operation
// is either waiting (in the channel), on the wire (libnbd has it), or done
// (its completion posted to the ring's executor).
#pragma once

#include "blkback/data/log_budget.hpp"
#include "blkback/storage/nbd.hpp"
#include "blkback/storage/storage.hpp"

#include <boost/asio/any_io_executor.hpp>

#include <memory>
#include <string>

namespace xbd::blkback::storage::nbd {

// What every channel of one store shares.
struct channel_config {
  nbd_target target;         // for libnbd (nbd_target::uri), its host name resolved by us
  bool local_files = false;  // the URI names TLS files
  std::string name;          // for log lines
  nbd_options opt;
  properties props;
  std::shared_ptr<log_budget> budget;  // connection losses and recoveries, all channels together
};

// Never blocks: the connection is made later, on `ex`.
asio_xen::result<std::unique_ptr<channel>> open_channel(const boost::asio::any_io_executor& ex, unsigned depth,
                                                        std::shared_ptr<const channel_config> cfg);

}  // namespace xbd::blkback::storage::nbd
