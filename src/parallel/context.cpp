// Creation of the TP, DP, OTP and ODP communicators from the layout formulas.
#include "flashcomm/context.hpp"

#include "comm/mpi/mpi_check.hpp"
#include "flashcomm/error.hpp"

namespace flashcomm {

ParallelContext::ParallelContext(MPI_Comm parent, const ParallelConfig& config) : config_(config) {
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
  if (config.flashcomm2_on() && config.otp_size() > 1) {
    const int g = config.odp_size();
    const int k = config.otp_size();
    otp_ = MpiCommunicator::split(parent, p.dp_rank * g + p.otp_group, p.odp_group, "otp", &stats_);
    odp_owned_ =
        MpiCommunicator::split(parent, p.dp_rank * k + p.odp_group, p.otp_group, "odp", &stats_);
    odp_ = odp_owned_.get();
  } else if (config.flashcomm2_on()) {
    odp_ = tp_.get();
  }
}

Communicator& ParallelContext::odp() {
  FC_ASSERT(odp_ != nullptr, "no ODP group without FlashComm2");
  return *odp_;
}

Communicator& ParallelContext::otp() {
  FC_ASSERT(otp_ != nullptr, "no OTP group unless FlashComm2 has K > 1");
  return *otp_;
}

MPI_Comm ParallelContext::otp_handle() const {
  return otp_ ? otp_->handle() : MPI_COMM_NULL;
}

MPI_Comm ParallelContext::odp_handle() const {
  return odp_ ? odp_->handle() : MPI_COMM_NULL;
}

}  // namespace flashcomm
