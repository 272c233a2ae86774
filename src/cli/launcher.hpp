// Starting the ranks: `flashcomm run --tp 4 ...` started by hand runs itself
// under mpiexec with the world size the layout needs, and waits for the job.
#pragma once

#include <string>
#include <vector>

namespace flashcomm::cli {

// True when this process was started by an MPI launcher (mpiexec, srun).
bool under_mpi_launcher();

// Runs `mpiexec -n world_size <this binary> <argv...>` as a child process and
// returns the exit code for the whole job:
//   - the job's own code when it ends normally or a rank calls MPI_Abort
//     (0 success, 1-4 as documented);
//   - 128 + S when a rank was killed by signal S (mpiexec's convention), with
//     a line naming the rank when the rank itself could not say so;
//   - SIGINT, SIGTERM and SIGHUP sent to this process are passed on to
//     mpiexec, which stops the ranks; then this process ends by the same
//     signal (a shell sees 128 + S), after a line saying so.
// The job's stderr passes through this process, which reads it for the name
// of a rank that died. Throws ConfigError when mpiexec cannot be started.
int relaunch_under_mpiexec(int argc, char** argv, int world_size);

// How launch_job starts the launcher.
struct LaunchOptions {
  // Run before the launcher, which it execs in place (e.g. `ip netns exec NAME`).
  std::vector<std::string> wrapper;
  // Launcher flags after flashcomm's own (e.g. `--mca btl tcp,self`).
  std::vector<std::string> launcher_args;
};

struct LaunchResult {
  int exit_code = 0;  // as relaunch_under_mpiexec returns it
  int stop_signal = 0;  // the forwarded signal that stopped the job; 0: none
};

// relaunch_under_mpiexec, except that a job stopped by a signal is not ended
// by that signal here: the caller gets it in stop_signal (after the line
// saying so), tidies up, and ends by it itself.
LaunchResult launch_job(int argc, char** argv, int world_size, const LaunchOptions& options);

}  // namespace flashcomm::cli
