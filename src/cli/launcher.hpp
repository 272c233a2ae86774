// Starting the ranks: `flashcomm run --tp 4 ...` started by hand re-executes
// itself under mpiexec with the world size the layout needs.
#pragma once

namespace flashcomm::cli {

// True when this process was started by an MPI launcher (mpiexec, srun).
bool under_mpi_launcher();

// Replaces this process by `mpiexec -n world_size <this binary> <argv...>`.
// Returns only by throwing ConfigError (mpiexec missing or not startable).
[[noreturn]] void relaunch_under_mpiexec(int argc, char** argv, int world_size);

}  // namespace flashcomm::cli
