// cpuns: the CPU time of whole processes, in nanoseconds, for
// scripts/bench's CPU per I/O.
//
//   cpuns GROUP...   a GROUP is PID[,PID...]; prints one number per GROUP
//                    (the sum over its processes), or "null" for a group
//                    with a process that is gone
//
// A process's CPU clock (clock_getcpuclockid) is the kernel's sum over every
// thread of its thread group, live or exited, io_uring's workers
// (iou-wrk-*, iou-sqp-*) included: they are threads of the process whose
// ring they serve. It is the sum /proc/PID/stat shows as utime + stime, in
// nanoseconds instead of clock ticks (10 ms), which matters for windows of
// a few seconds.
#include <sys/types.h>
#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>

namespace {

bool cpu_ns(pid_t pid, long long& ns) {
  clockid_t c{};
  timespec t{};
  if (clock_getcpuclockid(pid, &c) != 0 || clock_gettime(c, &t) != 0) return false;
  ns = static_cast<long long>(t.tv_sec) * 1000000000LL + t.tv_nsec;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  int status = 0;
  for (int i = 1; i < argc; ++i) {
    std::istringstream group(argv[i]);
    std::string pid;
    long long sum = 0;
    bool ok = true;
    while (ok && std::getline(group, pid, ',')) {
      long long ns = 0;
      ok = cpu_ns(static_cast<pid_t>(std::atol(pid.c_str())), ns);
      sum += ns;
    }
    if (ok) {
      std::printf("%s%lld", i > 1 ? " " : "", sum);
    } else {
      std::printf("%snull", i > 1 ? " " : "");
      status = 1;
    }
  }
  std::printf("\n");
  return status;
}
