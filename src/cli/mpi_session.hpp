// MPI_Init / MPI_Finalize for the lifetime of a command.
#pragma once

#include <mpi.h>

#include "cli/crash_report.hpp"
#include "comm/mpi/mpi_check.hpp"

namespace flashcomm::cli {

class MpiSession {
 public:
  // A rank that ends abnormally names itself first (cli/crash_report.hpp).
  MpiSession() {
    FC_CHECK_MPI(MPI_Init(nullptr, nullptr));
    install_crash_report(rank());
  }
  ~MpiSession() { MPI_Finalize(); }
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  static int rank() {
    int r = 0;
    FC_CHECK_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &r));
    return r;
  }
  // Ranks that share a machine share its cores: unless the user chose
  // (OPENBLAS_NUM_THREADS), each rank's GEMMs get cores / local ranks
  // threads, so that oversubscribed ranks do not also oversubscribe BLAS
  // threads. Collective over the world; call after log::init.
  static void share_cores_among_local_ranks();

  static int size() {
    int s = 0;
    FC_CHECK_MPI(MPI_Comm_size(MPI_COMM_WORLD, &s));
    return s;
  }
};

}  // namespace flashcomm::cli
