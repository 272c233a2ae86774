// The cost model: predicted time of one rank's prefill, phase by phase, under
// plain TP, FlashComm1 and FlashComm2, on a described piece of hardware; and
// the planner that compares the schemes and recommends one.
//
// It follows the engine (src/engine/engine.cpp) exactly: the same phases
// (phases.hpp), the same buffer shapes, padding to n_padded, and the same
// collectives, so the bytes it predicts equal the bytes the engine counts
// (comm.hpp), and predicted and measured times line up row by row.
//
// A phase costs
//   GEMMs and attention: max(flops / gemm_flops, bytes / memory_bandwidth)
//     (a roofline: with few tokens a GEMM only streams its weights),
//   memory-bound steps (norms, residual adds, SiLU, RoPE, KV cache appends,
//     Qwen2's q/k/v bias add, Qwen3's per-head q/k norm, FlashComm2's reorder
//     and concatenation copies): bytes / memory_bandwidth,
//   a collective: latency + bytes_sent / bandwidth, from the profile's fit for
//     its op and group size, with bytes_sent exactly comm.hpp's bytes_sent.
// Elements (activations and weights alike) are activation_bytes wide.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "flashcomm/comm.hpp"
#include "flashcomm/layout.hpp"
#include "flashcomm/model.hpp"
#include "flashcomm/phases.hpp"

namespace flashcomm {

// ---- Hardware profiles -------------------------------------------------

// One collective on a group of group_size ranks takes
// latency_s + bytes_sent / bandwidth_Bps. With bytes_sent as comm.hpp counts
// it, bandwidth_Bps is nccl-tests' "bus bandwidth" for all four ops (for
// AllReduce busbw = 2(n-1)/n * S / t, which is our bytes_sent / t).
struct CollectiveFit {
  int group_size = 0;
  double latency_s = 0.0;
  double bandwidth_Bps = 0.0;
};

struct HardwareProfile {
  std::string name;
  std::string description;
  std::string source;  // where the numbers come from
  double gemm_flops = 0.0;  // achieved dense GEMM FLOP/s of one rank
  double memory_bandwidth_Bps = 0.0;  // achieved memory bandwidth of one rank
  int activation_bytes = 2;  // bytes per element: 4 for the fp32 CPU engine, 2 for bf16
  // exp() evaluations per second of one rank (softmax, SiLU); 0 leaves them
  // out, as on GPUs and NPUs, whose special-function units hide them behind
  // the memory traffic. On a CPU they can dominate attention.
  double exp_per_s = 0.0;
  // Measured GEMM rates by rows of the activation (m of an m x 1024 x 1024
  // sgemm), ascending: skinny GEMMs of few tokens run far below gemm_flops on
  // a CPU. Empty: gemm_flops at every size.
  std::vector<std::pair<int, double>> gemm_flops_by_rows;
  // Per op, fits for the group sizes measured or derived, sorted by size.
  std::map<CommOp, std::vector<CollectiveFit>> collectives;

  // Multi-node machines. ranks_per_node > 0 places world rank r on node
  // r / ranks_per_node. A group no larger than a node whose members still sit
  // on several nodes (FlashComm2's OTP groups are strided by G) is timed with
  // cross_node_collectives instead. 0: one node holds every group.
  int ranks_per_node = 0;
  std::map<CommOp, std::vector<CollectiveFit>> cross_node_collectives;

  // The share, 0 to 1, of a non-blocking collective's transfer time that
  // elapses while the rank computes instead of waiting in MPI_Wait: 1 when
  // the transfer runs on its own engine (NCCL / HCCL streams, DMA), 0 when it
  // only moves while the rank is inside the library (OpenMPI on CPUs without
  // a progress thread: a large message waits for the wait). It prices the
  // overlap of ParallelConfig::overlap_chunks; 0 unless measured.
  double overlap_efficiency = 0.0;
};

// The GEMM rate for an activation of `rows` rows: gemm_flops_by_rows
// interpolated in log(rows) and held at its ends, else gemm_flops.
double gemm_rate(const HardwareProfile& profile, double rows);

// Seconds of one collective: 0 for a group of 1; otherwise the fit of the
// nearest group size in the table (the larger one on a tie).
// crosses_nodes selects cross_node_collectives (when the profile has them)
// for a group no larger than a node.
double collective_seconds(const HardwareProfile& profile, CommOp op, int group_size,
                          std::int64_t bytes_sent, bool crosses_nodes = false);

// Throws FormatError naming `source` and the field when the profile is not
// usable: empty name, non-positive rates, a missing op, bad group sizes.
void check_profile(const HardwareProfile& profile, const std::string& source);

// JSON files (format in src/planner/profiles.cpp). load_profile throws
// FormatError naming the file and the field; save_profile ConfigError when
// the file cannot be written.
HardwareProfile load_profile(const std::string& path);
void save_profile(const HardwareProfile& profile, const std::string& path);

// Built-in profiles from datasheets; each documents its numbers in `source`.
HardwareProfile builtin_profile(const std::string& name);  // ConfigError when unknown
std::vector<std::string> builtin_profile_names();

// A built-in name, or else the path of a JSON profile; ConfigError naming
// the built-ins when it is neither.
HardwareProfile resolve_profile(const std::string& name_or_path);

// ---- Per-layer and whole-prefill predictions ---------------------------

struct PhaseCost {
  Phase phase = Phase::attn_norm;
  double flops = 0.0;  // arithmetic timed at gemm_flops (GEMMs, attention)
  double bytes_moved = 0.0;  // bytes read and written in memory (not sent)
  std::int64_t comm_bytes = 0;  // bytes_sent of the collective; 0 when none
  CommOp op = CommOp::all_reduce;  // the collective, when group is not empty
  std::string group;  // "tp", "otp", "odp"; empty when the phase has no collective
  double seconds = 0.0;

  bool has_collective() const { return !group.empty(); }
};

// One layer's prefill on one rank. Only the phases the scheme runs appear,
// in the engine's order. compute_s and comm_s split total_s by kind_of(),
// as the engine's timers do (a comm phase includes its buffer copies).
struct LayerCost {
  std::vector<PhaseCost> phases;
  double compute_s = 0.0;
  double comm_s = 0.0;
  double total_s = 0.0;

  // The phase, or nullptr when the scheme does not run it.
  const PhaseCost* find(Phase phase) const;
};

// Throws ConfigError when the layout cannot run the model
// (check_parallel_config) or n_tokens is outside 1..seq_len.
LayerCost predict_layer(const ModelConfig& model, const ParallelConfig& parallel, int n_tokens,
                        const HardwareProfile& profile);

// The whole prefill's layers plus FlashComm1's AllGather after the final norm
// (outside the layers: every rank's output projection needs the last row).
// The embedding lookup, final norm and one-row output projection are the
// same under every scheme and left out.
struct PrefillCost {
  LayerCost layer;
  int n_layers = 0;
  std::int64_t final_gather_bytes = 0;  // bytes_sent of FlashComm1's final AllGather; else 0
  double final_gather_s = 0.0;
  double total_s = 0.0;  // n_layers * layer.total_s + final_gather_s
};

PrefillCost predict_prefill_cost(const ModelConfig& model, const ParallelConfig& parallel,
                                 int n_tokens, const HardwareProfile& profile);
double predict_prefill(const ModelConfig& model, const ParallelConfig& parallel, int n_tokens,
                       const HardwareProfile& profile);

// Extra o_proj weight bytes per rank of FlashComm2 with o_proj TP size K over
// plain TP: q_dim * d_model * n_layers * (1/K - 1/TP) * weight_bytes.
double extra_o_proj_bytes(const ModelConfig& model, int tp_size, int otp_size, int weight_bytes);

// ---- Planner -----------------------------------------------------------

struct PlanRequest {
  ModelConfig model;
  HardwareProfile profile;
  int tp_size = 1;
  int dp_size = 1;
  std::vector<int> token_counts;  // each 1..seq_len
  std::optional<double> memory_budget_gib;  // per rank, for the extra o_proj; none: unlimited
  int weight_bytes = 2;  // bytes per weight element, for the extra o_proj memory
};

struct SchemeEstimate {
  ParallelConfig parallel;
  std::string name;  // "plain TP", "FlashComm1", "FlashComm2 K=2", "FlashComm1+FlashComm2 K=2"
  double layer_s = 0.0;
  double prefill_s = 0.0;
  double extra_o_proj_bytes = 0.0;
  bool fits_budget = true;
};

struct TokenPlan {
  int n_tokens = 0;
  std::vector<SchemeEstimate> schemes;  // in candidate_schemes() order
  int recommended = 0;  // index into schemes: the fastest that fits the budget
};

struct Plan {
  std::vector<TokenPlan> rows;  // one per requested token count, in request order
  // The smallest token count from which (up to break_even_searched_to) the
  // best FlashComm2 variant that fits the budget, with or without FlashComm1,
  // is strictly faster than both plain TP and FlashComm1; none when it is not
  // faster even at the largest token count searched.
  std::optional<int> break_even;
  int break_even_searched_to = 0;  // the largest requested token count
};

// Every scheme of a TP group: plain TP; then, when tp_size > 1, FlashComm1,
// FlashComm2 with every valid K (K < TP, K | TP), FlashComm1+FlashComm2 with
// every valid K.
std::vector<ParallelConfig> candidate_schemes(int tp_size, int dp_size);
std::string scheme_name(const ParallelConfig& parallel);

// Throws ConfigError for a layout the model cannot run, token counts outside
// 1..seq_len, a negative budget or non-positive weight_bytes.
Plan plan_prefill(const PlanRequest& request);

}  // namespace flashcomm
