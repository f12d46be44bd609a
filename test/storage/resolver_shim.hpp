// A resolver the storage tests control: this binary's own getaddrinfo, which
// answers a few made-up names itself (a hung DNS server, a name that does
// not exist, a name with two addresses) and passes every other name to the
// C library's. Being the executable's, it is the one libnbd calls too.
#pragma once

namespace xbd::test::resolver {

// The made-up names (".test" is reserved: no real DNS answers for it):
//   "hang.test"   no answer until release() or 3 s, then EAI_AGAIN;
//   "absent.test" EAI_NONAME at once;
//   "two.test"    127.0.0.2 (which nothing listens on), then 127.0.0.1;
//   "slow.test"   127.0.0.1, or no answer, like "hang.test", while hold(true).
inline constexpr const char* hang = "hang.test";
inline constexpr const char* absent = "absent.test";
inline constexpr const char* two = "two.test";
inline constexpr const char* slow = "slow.test";

void hold(bool on);
// Ends every hang in progress now.
void release();
// Lookups hanging right now.
int hanging();

}  // namespace xbd::test::resolver
