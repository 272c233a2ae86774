// CPU sharing among the ranks of one machine.
#include "cli/mpi_session.hpp"

#include <algorithm>
#include <cstdlib>
#include <thread>

#include "flashcomm/kernels.hpp"
#include "flashcomm/log.hpp"

namespace flashcomm::cli {

void MpiSession::share_cores_among_local_ranks() {
  if (std::getenv("OPENBLAS_NUM_THREADS") != nullptr) {
    return;
  }
  MPI_Comm local = MPI_COMM_NULL;
  FC_CHECK_MPI(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local));
  int local_ranks = 1;
  FC_CHECK_MPI(MPI_Comm_size(local, &local_ranks));
  FC_CHECK_MPI(MPI_Comm_free(&local));
  const int cores = static_cast<int>(std::max(1U, std::thread::hardware_concurrency()));
  const int threads = std::max(1, cores / local_ranks);
  kernels::set_blas_threads(threads);
  log::debug("{} ranks on this machine with {} cores: {} BLAS threads per rank", local_ranks, cores,
             threads);
}

}  // namespace flashcomm::cli
