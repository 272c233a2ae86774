// A rank that ends abnormally names itself on stderr before it goes, so that
// the job's output says which rank failed:
//   - a fatal signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT):
//     "flashcomm: error on rank R: fatal signal SIGSEGV (...), pid P"; the
//     signal then takes its usual course (MPI's own handler, which prints a
//     backtrace, and the default action), so the rank still dies of it and
//     mpiexec stops the others;
//   - exit() before MPI is finalised (a library that gives up):
//     "flashcomm: error on rank R: exit(C) before the job ended, pid P".
// A rank killed by SIGKILL cannot speak; the launcher names it (launcher.hpp).
#pragma once

namespace flashcomm::cli {

// Installs the handlers; call once MPI is initialised (MPI_Init installs
// signal handlers of its own, which these come before and hand on to).
void install_crash_report(int world_rank);

}  // namespace flashcomm::cli
