// TLS for the NBD driver: what libnbd does not check, or does not say, itself.
//
// libnbd reads the credential files a URI names when it connects. Some of its
// choices would leave a connection unauthenticated without a word (libnbd
// 1.14, lib/crypto.c): a certificates directory without ca-cert.pem is
// skipped, and so is a URI that names none when libnbd's default directory
// has none; libnbd then trusts the system's CAs but never checks the server's
// certificate against them, so any server is taken. And a failed handshake
// is reported in GnuTLS's words ("The TLS connection was non-properly
// terminated"), which do not say what to fix. So the files are checked
// before each connection, and a failure's reason is explained
// (docs/storage.md, "TLS").
#pragma once

#include "blkback/storage/spec.hpp"

#include <string>

namespace xbd::blkback::storage::nbd {

// Empty if `t` is not TLS or its credentials can be used; otherwise why
// not, one sentence, with `err` set (an errno value). Reads no secret: a
// file is opened to see that it can be, never read.
std::string check_tls_credentials(const nbd_target& t, int& err);

// libnbd's reason `why` for a failed connection to `t`, with what it means
// in front when it is about TLS (a key the server does not take, a
// certificate that does not verify, TLS on one side only).
std::string explain_failure(const nbd_target& t, const std::string& why);

}  // namespace xbd::blkback::storage::nbd
