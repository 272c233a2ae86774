// Forcing the algorithm of an MPI collective, where the MPI library allows it.
//
// OpenMPI's coll/tuned component, which serves intra-communicators of two or
// more ranks, picks an algorithm for each call from the group and message
// size and does not report its choice. Through the MPI tool interface (MPI_T)
// it exposes one control variable per collective,
// coll_tuned_<collective>_algorithm, whose enumeration names the algorithms
// it has; coll/tuned reads the variable when it attaches to a communicator,
// so a communicator created while the variable holds a value runs that
// algorithm for every call of that collective, whatever the variable holds
// later. It honours these variables only when coll_tuned_use_dynamic_rules is
// true, and MPI_T cannot change that one after MPI_Init (its scope is
// read-only): request_algorithm_control() sets it through the environment
// before MPI_Init.
//
// Each op maps to the MPI call MpiCommunicator makes for it:
//   all_reduce      MPI_Allreduce             coll_tuned_allreduce_algorithm
//   reduce_scatter  MPI_Reduce_scatter_block  coll_tuned_reduce_scatter_block_algorithm
//   all_gather      MPI_Allgather             coll_tuned_allgather_algorithm
//   all_to_all      MPI_Alltoall              coll_tuned_alltoall_algorithm
#pragma once

#include <mpi.h>

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "flashcomm/comm.hpp"
#include "flashcomm/mpi_comm.hpp"

namespace flashcomm {

struct MpiAlgorithm {
  int value = 0;  // the control variable's value that forces it
  std::string name;  // the library's own name, from the variable's enumeration
};

// Sets OMPI_MCA_coll_tuned_use_dynamic_rules=1 in this process's environment,
// where OpenMPI reads it at MPI_Init, so that coll/tuned honours forced
// algorithms; call before MPI_Init. The library's own choices stay as they
// are: with no rules file and nothing forced, coll/tuned's dynamic decision
// falls back to its fixed one.
void request_algorithm_control();

// A communicator whose calls of one op run one algorithm.
struct ForcedCommunicator {
  std::unique_ptr<MpiCommunicator> comm;
  int value_read_back = 0;  // the control variable when comm was created
};

// The algorithm control variables of one process, agreed over a group.
class AlgorithmControl {
 public:
  // Collective over `comm`: every rank looks the variables up and the ranks
  // agree, so that an op is forcible on all of them or on none. A library
  // without them (another MPI, coll/tuned excluded or never selected,
  // dynamic rules off) is not an error: available() is false and
  // unavailable_reason() names what is missing. Throws CommError only when a
  // collective over `comm` fails.
  explicit AlgorithmControl(MPI_Comm comm);
  // Restores every variable to its value at construction and ends this use
  // of MPI_T; call before MPI_Finalize.
  ~AlgorithmControl();
  AlgorithmControl(const AlgorithmControl&) = delete;
  AlgorithmControl& operator=(const AlgorithmControl&) = delete;

  bool available(CommOp op) const { return ops_[index(op)].available; }
  // What is missing, e.g. "control variable coll_tuned_allreduce_algorithm not
  // found"; empty when the op can be forced.
  const std::string& unavailable_reason(CommOp op) const { return ops_[index(op)].reason; }
  const std::string& variable(CommOp op) const { return ops_[index(op)].variable; }
  // The algorithms the library offers for `op`, in its enumeration's order,
  // without its "let the library decide" value 0; empty when not available.
  const std::vector<MpiAlgorithm>& algorithms(CommOp op) const {
    return ops_[index(op)].algorithms;
  }
  // Conditions that may defeat forcing without making it impossible (a
  // component above coll/tuned's priority, a variable already set by the
  // user), one sentence each.
  const std::vector<std::string>& warnings() const { return warnings_; }

  // A duplicate of `parent` whose calls of `op` run `algorithm`: writes the
  // variable, duplicates `parent`, reads the variable back and restores it,
  // so communicators created later keep the library's choice. Collective
  // over `parent`, whose ranks must all hold this control; throws CommError on
  // every rank of `parent` when the write, read-back or restore fails on any
  // of them. ConfigError when `op` is not available.
  ForcedCommunicator duplicate_forcing(MPI_Comm parent, CommOp op, const MpiAlgorithm& algorithm);

  // The variable's value in this process now (for checks); throws CommError
  // when it cannot be read, ConfigError when `op` is not available.
  int current_value(CommOp op) const;

 private:
  struct OpControl {
    std::string variable;
    bool available = false;
    std::string reason;
    std::vector<MpiAlgorithm> algorithms;
    MPI_T_cvar_handle handle = MPI_T_CVAR_HANDLE_NULL;
    int original = 0;
  };
  static std::size_t index(CommOp op) { return static_cast<std::size_t>(op); }
  void look_up_locally();

  bool mpi_t_started_ = false;
  std::array<OpControl, 4> ops_;
  std::vector<std::string> warnings_;
};

}  // namespace flashcomm
