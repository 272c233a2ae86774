// Deterministic fault injection, a testing aid: one rank of a job dies or
// throws at a chosen point, so that the tests can check that the whole job
// still ends promptly, non-zero, naming that rank.
//
//   FLASHCOMM_FAULT="rank=R,at=POINT,action=ACTION"
//
// POINT is where the fault fires, the first time rank R reaches it:
//   prepare     run: while preparing, before the ranks agree to start
//   prefill     run: before the prefill of the rank's first request
//   decode:N    run: before the N-th decode step (N >= 1) of a request
//   bench       bench: before measuring
//   calibrate   calibrate: before measuring
// ACTION is what the rank does there:
//   kill   SIGKILL itself (dies without a word, as the OOM killer does it)
//   segv   raise SIGSEGV    abort  call abort()    exit  call exit(1)
//   throw  throw an InternalError, as a bug inside the engine would
// Unset or empty: nothing happens. The variable is read once per process.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace flashcomm::cli {

enum class FaultAction { kill, segv, abort, exit, throw_error };

struct Fault {
  int rank = 0;
  std::string point;  // "prepare", "prefill", "decode", "bench" or "calibrate"
  int step = 0;  // decode: the step, from 1; 0 for the other points
  FaultAction action = FaultAction::kill;
};

// Parses a FLASHCOMM_FAULT value for a job of `world_size` ranks whose command
// has the fault points `points` ("decode" stands for decode:N). Throws
// ConfigError naming the bad part and what was expected.
Fault parse_fault(const std::string& text, int world_size, const std::vector<std::string>& points);

// Reads FLASHCOMM_FAULT (once) and arms its fault in this process.
void arm_fault_from_environment(int world_size, const std::vector<std::string>& points);

// Fires the armed fault when this process is its rank (MPI's world rank; MPI
// is initialised) and `point` (with `step`) is its point; once at most.
void fault_point(std::string_view point, int step = 0);

}  // namespace flashcomm::cli
