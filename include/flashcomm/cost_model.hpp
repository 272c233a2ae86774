// The cost model: predicted time of one rank's prefill, phase by phase, under
// plain TP, FlashComm1 and FlashComm2 (for o_proj and for down_proj), with the
// collectives' payloads in f32, bf16 or int8 and, optionally, overlapped with
// the GEMMs they feed; on a described piece of hardware. And the planner that
// compares the schemes, recommends one, and chooses one per prefill pass.
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
//     and concatenation copies, and the encoding and decoding of bf16 and
//     int8 payloads, which belong to their comm phase): bytes / memory_bandwidth,
//   a collective: latency + bytes_sent / bandwidth, from the profile's fit for
//     its op and group size, with bytes_sent exactly comm.hpp's bytes_sent of
//     the buffer on the wire (f32 or the profile's activation width; bf16: 2
//     bytes per element; int8: cols + 4 bytes per token row).
//   Under overlap (ParallelConfig::overlap_chunks C > 1) an overlapped pair
//     (collective, GEMM) runs as a pipeline of c_eff = min(C, n_slice) chunks:
//     every chunk's collective is posted at once and they complete one after
//     another, each at latency + its bytes / bandwidth; while the rank unpacks
//     and multiplies chunk c, the transfer of later chunks advances at
//     overlap_efficiency of real time, and at full speed while it waits. The
//     comm phase then costs what the engine's timer sees: copies, encoding and
//     the waits (the exposed communication); the GEMM phase the chunks' GEMMs,
//     each on the roofline at its own row count (so each re-reads the weights).
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
  int group_size = 0;  // ranks of that group (o_proj's and down_proj's "odp" may differ)
  int calls = 0;  // collectives issued: 1, or the chunks under overlap
  // Under overlap: the collectives' seconds that passed during the GEMMs
  // (not in `seconds`, which holds only the exposed part); else 0.
  double hidden_s = 0.0;
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

// Extra down_proj weight bytes per rank of FlashComm2 for down_proj with TP
// size K_mlp: d_model * hidden_dim * n_layers * (1/K_mlp - 1/TP) * weight_bytes.
// 0 when mlp_k is 0 (off).
double extra_down_proj_bytes(const ModelConfig& model, int tp_size, int mlp_k, int weight_bytes);

// ---- Scheme names and candidates -----------------------------------------

// A scheme's name: the parts that are on, in this order, separated by spaces.
//   scheme  := base [" int8"] [" bf16"] [" C=" chunks]
//   base    := "plain TP" | "FlashComm1"                  neither projection rewritten
//            | fc1 "FlashComm2 K=" k [" +MLP K=" k_mlp]    o_proj (and down_proj)
//            | fc1 "FlashComm2 MLP K=" k_mlp              down_proj only
//   fc1     := "" | "FlashComm1+"
// int8 is comm_quant, bf16 comm_dtype, C overlap_chunks (shown when above 1).
// At TP 1 FlashComm1 does nothing and the base reads "plain TP". E.g.
// "FlashComm1+FlashComm2 K=2 +MLP K=1 int8 C=4".
std::string scheme_name(const ParallelConfig& parallel);

// The variants candidate_schemes() adds to its default list.
struct CandidateOptions {
  bool int8 = false;  // also with comm_quant int8
  bool bf16 = false;  // also with comm_dtype bf16 (and with int8 + bf16 when int8 is set)
  std::vector<int> overlap_chunks;  // also with each of these C > 1 (1s are ignored)
  bool flashcomm2_mlp = false;  // also with down_proj FlashComm2 at every valid K_mlp
};

// Every scheme of a TP group: plain TP; then, when tp_size > 1, FlashComm1,
// FlashComm2 with every valid K (K < TP, K | TP), FlashComm1+FlashComm2 with
// every valid K.
std::vector<ParallelConfig> candidate_schemes(int tp_size, int dp_size);

// The default list, each scheme followed by its variants: first with
// down_proj FlashComm2 at each K_mlp (ascending), then each of those with
// int8, bf16, int8 + bf16, each of those four with every C. A variant that
// changes nothing is left out: int8 without an AllGather or AlltoAll to
// carry, bf16 when int8 already carries every collective, C without a
// FlashComm1 gather or a FlashComm2 AlltoAll to overlap. ConfigError for a C
// outside 1..64.
std::vector<ParallelConfig> candidate_schemes(int tp_size, int dp_size,
                                              const CandidateOptions& options);

// ---- The automatic choice, per prefill pass ------------------------------

// What the ranks of `--flashcomm auto` can run: the weights they hold and the
// groups they created.
struct AutoSpace {
  int tp_size = 1;
  int dp_size = 1;
  int o_proj_k = 0;  // K0 of the held o_proj block; 0: own heads only (no FlashComm2)
  int mlp_k = 0;  // K_mlp0 of the held down_proj block; 0: own columns only
  // Quantization changes the numerics, so it is a candidate only when the
  // user allowed it (--comm-quant int8 / --comm-dtype bf16 with
  // --flashcomm auto).
  bool allow_int8 = false;
  bool allow_bf16 = false;
  std::vector<int> chunk_options{1};  // overlap_chunks values to consider; empty means {1}
};

// Every scheme the space allows, in the order of candidate_schemes(..., options):
// FlashComm1 on or off; o_proj FlashComm2 off or at each K that is a multiple
// of o_proj_k, divides TP and is below it (a block of K0 holds the block of
// every such K); the same for down_proj with mlp_k; int8 and bf16 only when
// allowed; each chunk option. Plain TP first. ConfigError when o_proj_k or
// mlp_k is not 0 or a valid K, or a chunk option is outside 1..64.
std::vector<ParallelConfig> auto_candidates(const AutoSpace& space);

struct AutoChoice {
  ParallelConfig parallel;
  std::string name;  // scheme_name(parallel)
  double predicted_s = 0.0;  // predict_prefill of the choice
  double plain_tp_s = 0.0;  // predict_prefill of plain TP (f32, no overlap)
};

// The fastest of auto_candidates(space) by predict_prefill at n_tokens; a tie
// goes to the earlier candidate, so to plain TP before anything else and to a
// scheme before its variants. Pure: no MPI, the same answer on every rank.
AutoChoice choose_scheme(const ModelConfig& model, const HardwareProfile& profile,
                         const AutoSpace& space, int n_tokens);

// The blocks to hold under a memory budget per rank for the extra weights
// (bytes; infinity: unlimited): the smallest o_proj K (so the most Ks to
// choose from) whose extra_o_proj_bytes fit, then, with `with_mlp`, the
// smallest K_mlp whose extra_down_proj_bytes fit in what is left. 0 where
// none fits, and at TP 1. ConfigError for a negative or NaN budget.
struct HeldBlocks {
  int o_proj_k = 0;
  int mlp_k = 0;
};
HeldBlocks held_blocks_for_budget(const ModelConfig& model, int tp_size, double budget_bytes,
                                  int weight_bytes, bool with_mlp);

// ---- Planner -----------------------------------------------------------

struct PlanRequest {
  ModelConfig model;
  HardwareProfile profile;
  int tp_size = 1;
  int dp_size = 1;
  std::vector<int> token_counts;  // each 1..seq_len
  // per rank, for the extra o_proj (and down_proj) weights; none: unlimited
  std::optional<double> memory_budget_gib;
  int weight_bytes = 2;  // bytes per weight element, for the extra memory
  CandidateOptions variants;  // extra schemes to list; none by default
  // Also choose per token count as `--flashcomm auto` would, in auto_space_of().
  bool auto_choice = false;
};

struct SchemeEstimate {
  ParallelConfig parallel;
  std::string name;  // scheme_name(parallel)
  double layer_s = 0.0;
  double prefill_s = 0.0;
  double extra_o_proj_bytes = 0.0;
  double extra_down_proj_bytes = 0.0;
  bool fits_budget = true;  // extra o_proj + down_proj bytes within the budget
};

struct TokenPlan {
  int n_tokens = 0;
  std::vector<SchemeEstimate> schemes;  // in candidate_schemes() order
  int recommended = 0;  // index into schemes: the fastest that fits the budget
  std::optional<AutoChoice> auto_choice;  // with PlanRequest::auto_choice
};

struct Plan {
  std::vector<TokenPlan> rows;  // one per requested token count, in request order
  // The smallest token count from which (up to break_even_searched_to) the
  // best FlashComm2 variant that fits the budget, with or without FlashComm1,
  // is strictly faster than both plain TP and FlashComm1; none when it is not
  // faster even at the largest token count searched. Over the default
  // candidates only (f32, no overlap, o_proj FlashComm2), whatever the variants.
  std::optional<int> break_even;
  int break_even_searched_to = 0;  // the largest requested token count
  std::optional<AutoSpace> auto_space;  // with PlanRequest::auto_choice
};

// The space `--flashcomm auto` would have under the request: the blocks
// held_blocks_for_budget picks for its budget (down_proj's only with
// variants.flashcomm2_mlp), int8 and bf16 when the variants list them, and
// chunk options 1 and the variants' overlap_chunks.
AutoSpace auto_space_of(const PlanRequest& request);

// Throws ConfigError for a layout the model cannot run, token counts outside
// 1..seq_len, a negative budget, non-positive weight_bytes or a bad chunk count.
Plan plan_prefill(const PlanRequest& request);

}  // namespace flashcomm
