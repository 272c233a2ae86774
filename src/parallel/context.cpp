// Creation of the TP, DP, OTP and ODP communicators from the layout formulas.
#include "flashcomm/context.hpp"

#include <set>

#include "comm/mpi/mpi_check.hpp"
#include "flashcomm/error.hpp"

namespace flashcomm {

ParallelContext::ParallelContext(MPI_Comm parent, const ParallelConfig& config,
                                 const std::vector<int>& extra_ks)
    : config_(config) {
  int rank = 0;
  int size = 0;
  FC_CHECK_MPI(MPI_Comm_rank(parent, &rank));
  FC_CHECK_MPI(MPI_Comm_size(parent, &size));
  if (size != config.world_size()) {
    throw ConfigError(fmt::format("the job has {} ranks but --dp {} x --tp {} needs {}", size,
                                  config.dp_size, config.tp_size, config.world_size()));
  }
  place_ = place_of(config, rank);
  const RankPlace& p = place_;

  // Colors pick the group, keys the order inside it (see layout.hpp).
  tp_ = MpiCommunicator::split(parent, p.dp_rank, p.tp_rank, "tp", &stats_);
  dp_ = MpiCommunicator::split(parent, p.tp_rank, p.dp_rank, "dp", &stats_);
  // Every rank walks the same sizes in the same (sorted) order, since each
  // split is collective over `parent`.
  std::set<int> ks(extra_ks.begin(), extra_ks.end());
  ks.insert(config.flashcomm2);
  ks.insert(config.flashcomm2_mlp);
  ks.erase(0);
  for (const int k : ks) {
    FC_ASSERT(k > 0 && config.tp_size % k == 0, "FlashComm2 size {} of tp {}", k, config.tp_size);
    Flashcomm2Groups& g = groups_[k];
    if (k == 1) {
      g.odp = tp_.get();
      continue;
    }
    const int n_odp = config.tp_size / k;
    const Flashcomm2Place f = flashcomm2_place(p.tp_rank, config.tp_size, k);
    g.otp = MpiCommunicator::split(parent, p.dp_rank * n_odp + f.i, f.j, "otp", &stats_);
    g.odp_owned = MpiCommunicator::split(parent, p.dp_rank * k + f.j, f.i, "odp", &stats_);
    g.odp = g.odp_owned.get();
  }
}

const ParallelContext::Flashcomm2Groups& ParallelContext::groups(int k) const {
  const auto it = groups_.find(k);
  FC_ASSERT(it != groups_.end(), "no FlashComm2 groups of size {}", k);
  return it->second;
}

Communicator& ParallelContext::odp(int k) {
  return *groups(k).odp;
}

Communicator& ParallelContext::otp(int k) {
  const Flashcomm2Groups& g = groups(k);
  FC_ASSERT(g.otp != nullptr, "no OTP group for FlashComm2 size {}", k);
  return *g.otp;
}

bool ParallelContext::has_otp() const {
  const auto it = groups_.find(config_.flashcomm2);
  return it != groups_.end() && it->second.otp != nullptr;
}

MPI_Comm ParallelContext::otp_handle() const {
  const auto it = groups_.find(config_.flashcomm2);
  return it != groups_.end() && it->second.otp ? it->second.otp->handle() : MPI_COMM_NULL;
}

MPI_Comm ParallelContext::odp_handle() const {
  const auto it = groups_.find(config_.flashcomm2);
  return it != groups_.end() ? it->second.odp->handle() : MPI_COMM_NULL;
}

}  // namespace flashcomm
