// The wait calls glibc exports (wait, waitpid, wait3, wait4, waitid). A child that used
// the simulator has its fd table in the owner, dropped when its socket closes; on a real
// kernel a child's files are closed before its parent's wait returns. So once the host
// call has reaped a child, these return only after the owner dropped that child's table
// (child_reaped), and a parent checking its pins right after wait sees them released.
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>

#include <cerrno>

#include "preload/preload.h"
#include "preload/real.h"

using namespace fastmap::preload;

namespace {

// A stopped or continued child is not reaped; an exited or killed one is.
void after_wait(pid_t r, int status) {
  if (r <= 0 || !(WIFEXITED(status) || WIFSIGNALED(status))) return;
  const int saved = errno;
  child_reaped(r);
  errno = saved;
}

}  // namespace

#pragma GCC visibility push(default)
extern "C" {

pid_t wait4(pid_t pid, int* status, int options, struct rusage* ru) {
  int st = 0;
  const pid_t r = FASTMAP_REAL("wait4", pid_t (*)(pid_t, int*, int, struct rusage*))(
      pid, &st, options, ru);
  if (r > 0 && status) *status = st;
  after_wait(r, st);
  return r;
}

pid_t wait3(int* status, int options, struct rusage* ru) {
  int st = 0;
  const pid_t r = FASTMAP_REAL("wait3", pid_t (*)(int*, int, struct rusage*))(&st, options, ru);
  if (r > 0 && status) *status = st;
  after_wait(r, st);
  return r;
}

pid_t waitpid(pid_t pid, int* status, int options) {
  int st = 0;
  const pid_t r = FASTMAP_REAL("waitpid", pid_t (*)(pid_t, int*, int))(pid, &st, options);
  if (r > 0 && status) *status = st;
  after_wait(r, st);
  return r;
}

pid_t wait(int* status) {
  int st = 0;
  const pid_t r = FASTMAP_REAL("wait", pid_t (*)(int*))(&st);
  if (r > 0 && status) *status = st;
  after_wait(r, st);
  return r;
}

int waitid(idtype_t idtype, id_t id, siginfo_t* info, int options) {
  siginfo_t own{};
  siginfo_t* si = info ? info : &own;
  const int r = FASTMAP_REAL("waitid", int (*)(idtype_t, id_t, siginfo_t*, int))(
      idtype, id, si, options);
  if (r == 0 && !(options & WNOWAIT) && si->si_pid > 0 &&
      (si->si_code == CLD_EXITED || si->si_code == CLD_KILLED || si->si_code == CLD_DUMPED)) {
    const int saved = errno;
    child_reaped(si->si_pid);
    errno = saved;
  }
  return r;
}

}  // extern "C"
#pragma GCC visibility pop
