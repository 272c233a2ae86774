// The communicators of one rank, created once from a parent MPI communicator
// and freed exactly once when the context goes away.
#pragma once

#include <mpi.h>

#include <memory>

#include "flashcomm/comm.hpp"
#include "flashcomm/layout.hpp"
#include "flashcomm/mpi_comm.hpp"

namespace flashcomm {

class ParallelContext {
 public:
  // `parent` must hold exactly config.world_size() ranks (MPI_COMM_WORLD or a
  // sub-communicator in tests). Collective over `parent`.
  ParallelContext(MPI_Comm parent, const ParallelConfig& config);

  const ParallelConfig& config() const { return config_; }
  const RankPlace& place() const { return place_; }
  CommStats& stats() { return stats_; }

  Communicator& tp() { return *tp_; }
  Communicator& dp() { return *dp_; }
  // FlashComm2 only: the AlltoAll group (the TP group itself when K = 1).
  Communicator& odp();
  // FlashComm2 with K > 1 only: the o_proj ReduceScatter group.
  Communicator& otp();
  bool has_otp() const { return otp_ != nullptr; }

  // MPI handles for tests that compare the groups with the formulas.
  MPI_Comm tp_handle() const { return tp_->handle(); }
  MPI_Comm otp_handle() const;
  MPI_Comm odp_handle() const;

 private:
  ParallelConfig config_;
  RankPlace place_;
  CommStats stats_;
  std::unique_ptr<MpiCommunicator> tp_;
  std::unique_ptr<MpiCommunicator> dp_;
  std::unique_ptr<MpiCommunicator> otp_;  // null unless FlashComm2 with K > 1
  std::unique_ptr<MpiCommunicator> odp_owned_;  // null unless FlashComm2 with K > 1
  MpiCommunicator* odp_ = nullptr;  // odp_owned_, or tp_ when K = 1 (an alias)
};

}  // namespace flashcomm
