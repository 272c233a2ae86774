// Starting the ranks: `flashcomm run --tp 4 ...` started by hand runs itself
// under mpiexec with the world size the layout needs, and waits for the job.
#pragma once

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

}  // namespace flashcomm::cli
