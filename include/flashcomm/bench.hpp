// The prefill benchmark: per-layer prefill time of every scheme over token
// counts and TP sizes, measured with warm-up and repeats, split into compute
// and communication per phase, beside the cost model's prediction and the
// machine's floor (FLOPs at the measured sgemm rate plus collective bytes at
// the measured bandwidth).
#pragma once

#include <mpi.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "flashcomm/cost_model.hpp"
#include "flashcomm/layout.hpp"
#include "flashcomm/phases.hpp"
#include "flashcomm/weight_source.hpp"

namespace flashcomm {

struct BenchOptions {
  std::vector<int> token_counts;
  std::vector<int> tp_sizes;
  // Schemes to run, by family: "tp", "fc1", "fc2" (every valid K), "fc1+fc2"
  // (every valid K). Empty: all.
  std::vector<std::string> schemes;
  // Variants measured beside each scheme they change, by name: "int8"
  // (--comm-quant int8; schemes with an AllGather or AlltoAll), "bf16"
  // (--comm-dtype bf16; every scheme but TP 1), "overlap" (overlap_chunks
  // chunks; schemes with FlashComm1 or FlashComm2), "mlp" (down_proj
  // FlashComm2 with the scheme's K, or K_mlp = 1 under FlashComm1 alone).
  std::vector<std::string> variants;
  int overlap_chunks = 4;
  int warmup = 2;
  int repeats = 5;
  std::uint64_t seed = 1;
};

struct BenchRow {
  ParallelConfig parallel;
  std::string scheme;  // scheme_name()
  int n_tokens = 0;
  int n_layers = 0;
  // Per layer, over repeats of the slowest rank's whole prefill / n_layers.
  double median_s = 0.0;
  double min_s = 0.0;
  double max_s = 0.0;
  PhaseTimes phases;  // median per layer of each phase (slowest rank)
  double compute_s = 0.0;
  double comm_s = 0.0;
  std::int64_t bytes_per_rank = 0;  // per layer, every collective of one prefill
  double predicted_s = 0.0;  // cost model, per layer
  double predicted_comm_s = 0.0;  // the same prediction's communication phases
  double floor_s = 0.0;  // FLOPs / sgemm rate + bytes / bandwidth, per layer
  double speedup_vs_tp = 0.0;  // plain TP's median / this median, same TP and tokens
  double speedup_vs_fc1 = 0.0;  // FlashComm1's median / this median (0 when absent)
  // Variant rows: the variant's name ("" for a base scheme), and the same
  // scheme's median without it (0 when not measured). Overlap rows' comm_s is
  // the communication left exposed; base_median_s - median_s the time saved.
  std::string variant;
  double base_median_s = 0.0;
  double base_comm_s = 0.0;
};

// The variant of `base` named `variant` (see BenchOptions::variants), or
// nothing when it does not change the scheme.
std::optional<ParallelConfig> bench_variant(const ParallelConfig& base, const std::string& variant);

// Collective over `world` (whose size is at least the largest TP). For each
// TP size the first tp ranks run and the rest sleep; `profile_for(tp)` gives
// the profile its predictions use; `progress` is called on rank 0 after each
// row. Rank 0 returns every row.
std::vector<BenchRow> run_bench(MPI_Comm world, const WeightSource& source,
                                const BenchOptions& options,
                                const std::function<const HardwareProfile&(int)>& profile_for,
                                const std::function<void(const BenchRow&, int, int)>& progress);

// "tp", "fc1", "fc2" or "fc1+fc2": the family --schemes names.
std::string scheme_family(const ParallelConfig& parallel);

// A barrier that sleeps while it waits (MPI_Barrier spins, and ranks idle
// during a smaller TP size would steal the cores of the ranks being timed).
void quiet_barrier(MPI_Comm comm);

// The profile's compute rates (sgemm, memcpy, exp) re-measured on the first
// `ranks` ranks of `world` at once, the others sleeping, so that they share
// the cores as a TP group of that size does; collective over `world`.
HardwareProfile with_compute_rates_of(MPI_Comm world, HardwareProfile profile, int ranks);

// The floor of one layer under `profile`: arithmetic at the fastest measured
// GEMM rate (gemm_flops or any of gemm_flops_by_rows) plus every collective's
// bytes at its fitted bandwidth, no latency, no memory traffic; never above
// predict_layer's total.
double layer_floor(const LayerCost& cost, const HardwareProfile& profile,
                   const ParallelConfig& parallel);

}  // namespace flashcomm
