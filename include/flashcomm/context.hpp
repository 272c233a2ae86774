// The communicators of one rank, created once from a parent MPI communicator
// and freed exactly once when the context goes away.
#pragma once

#include <mpi.h>

#include <map>
#include <memory>
#include <vector>

#include "flashcomm/comm.hpp"
#include "flashcomm/layout.hpp"
#include "flashcomm/mpi_comm.hpp"

namespace flashcomm {

class ParallelContext {
 public:
  // `parent` must hold exactly config.world_size() ranks (MPI_COMM_WORLD or a
  // sub-communicator in tests). Collective over `parent`. Creates the
  // FlashComm2 groups of config.flashcomm2, config.flashcomm2_mlp and every
  // size in `extra_ks` (--flashcomm auto switches between them per pass).
  ParallelContext(MPI_Comm parent, const ParallelConfig& config,
                  const std::vector<int>& extra_ks = {});

  const ParallelConfig& config() const { return config_; }
  const RankPlace& place() const { return place_; }
  CommStats& stats() { return stats_; }

  Communicator& tp() { return *tp_; }
  Communicator& dp() { return *dp_; }
  // FlashComm2 with size k: the AlltoAll group (the TP group itself when
  // k = 1) and, for k > 1, the ReduceScatter group. Without an argument, for
  // o_proj's K of the config.
  Communicator& odp(int k);
  Communicator& otp(int k);
  Communicator& odp() { return odp(config_.flashcomm2); }
  Communicator& otp() { return otp(config_.flashcomm2); }
  bool has_otp() const;
  // Whether the groups of size k exist.
  bool has_flashcomm2_groups(int k) const { return groups_.count(k) > 0; }

  // MPI handles for tests that compare the groups with the formulas.
  MPI_Comm tp_handle() const { return tp_->handle(); }
  MPI_Comm otp_handle() const;
  MPI_Comm odp_handle() const;

 private:
  ParallelConfig config_;
  RankPlace place_;
  CommStats stats_;
  // The groups of one FlashComm2 size.
  struct Flashcomm2Groups {
    std::unique_ptr<MpiCommunicator> otp;  // null when k = 1
    std::unique_ptr<MpiCommunicator> odp_owned;  // null when k = 1
    MpiCommunicator* odp = nullptr;  // odp_owned, or tp_ when k = 1 (an alias)
  };
  const Flashcomm2Groups& groups(int k) const;

  std::unique_ptr<MpiCommunicator> tp_;
  std::unique_ptr<MpiCommunicator> dp_;
  std::map<int, Flashcomm2Groups> groups_;  // by size k
};

}  // namespace flashcomm
