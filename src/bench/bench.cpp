// The prefill benchmark over schemes, TP sizes and token counts.
#include "flashcomm/bench.hpp"

#include <algorithm>
#include <chrono>
#include <map>
#include <random>
#include <thread>
#include <tuple>

#include "comm/mpi/mpi_check.hpp"
#include "flashcomm/calibrate.hpp"
#include "flashcomm/context.hpp"
#include "flashcomm/engine.hpp"
#include "flashcomm/error.hpp"
#include "flashcomm/log.hpp"

namespace flashcomm {

namespace {

// Hidden states [n_tokens, d_model], the same on every rank.
std::vector<float> random_hidden(int n_tokens, int d_model, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<float> h(static_cast<size_t>(n_tokens) * static_cast<size_t>(d_model));
  for (float& v : h) {
    v = static_cast<float>(static_cast<double>(rng() >> 11) * 0x1.0p-53 * 2.0 - 1.0);
  }
  return h;
}

}  // namespace

std::optional<ParallelConfig> bench_variant(const ParallelConfig& base,
                                            const std::string& variant) {
  ParallelConfig v = base;
  const bool moves = base.tp_size > 1 && (base.flashcomm1 || base.flashcomm2_on());
  if (variant == "int8" && moves) {
    v.comm_quant = CommQuant::int8;
  } else if (variant == "bf16" && base.tp_size > 1) {
    v.comm_dtype = CommDtype::bf16;
  } else if (variant == "overlap" && moves) {
    v.overlap_chunks = 0;  // set by the caller
  } else if (variant == "mlp" && base.tp_size > 1 && (base.flashcomm1 || base.flashcomm2_on())) {
    v.flashcomm2_mlp = base.flashcomm2_on() ? base.flashcomm2 : 1;
  } else {
    return std::nullopt;
  }
  return v;
}

std::string scheme_family(const ParallelConfig& pc) {
  if (pc.flashcomm1 && pc.flashcomm2_on()) {
    return "fc1+fc2";
  }
  if (pc.flashcomm2_on()) {
    return "fc2";
  }
  return pc.flashcomm1 ? "fc1" : "tp";
}

void quiet_barrier(MPI_Comm comm) {
  MPI_Request request = MPI_REQUEST_NULL;
  FC_CHECK_MPI(MPI_Ibarrier(comm, &request));
  int done = 0;
  while (done == 0) {
    FC_CHECK_MPI(MPI_Test(&request, &done, MPI_STATUS_IGNORE));
    if (done == 0) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
}

HardwareProfile with_compute_rates_of(MPI_Comm world, HardwareProfile profile, int ranks) {
  int rank = 0;
  FC_CHECK_MPI(MPI_Comm_rank(world, &rank));
  // gemm_flops, memory, exp, then the GEMM rate at 4, 16, 64, 256 rows.
  double rates[7] = {};
  quiet_barrier(world);
  if (rank < ranks) {
    rates[0] = measure_gemm_flops(256, 1024, 1024, 5);
    rates[1] = measure_memory_bandwidth(std::size_t{64} << 20, 5);
    rates[2] = measure_exp_rate(std::size_t{1} << 20, 5);
    const auto table = measure_gemm_flops_by_rows(5);
    for (size_t i = 0; i < table.size(); ++i) {
      rates[3 + i] = table[i].second;
    }
  }
  quiet_barrier(world);
  FC_CHECK_MPI(MPI_Bcast(rates, 7, MPI_DOUBLE, 0, world));
  profile.gemm_flops = rates[0];
  profile.memory_bandwidth_Bps = rates[1];
  profile.exp_per_s = rates[2];
  profile.gemm_flops_by_rows = {{4, rates[3]}, {16, rates[4]}, {64, rates[5]}, {256, rates[6]}};
  return profile;
}

namespace {

// One (scheme, token count) on the ranks of `comm`; every member returns the row.
BenchRow measure(MPI_Comm comm, const WeightSource& source, const ParallelConfig& pc, int n_tokens,
                 int context, const BenchOptions& options) {
  ParallelContext ctx(comm, pc);
  Engine engine(source, ctx, false, context);
  const int n_layers = source.config().n_layers;
  const std::vector<float> hidden = random_hidden(n_tokens, source.config().d_model, options.seed);

  std::vector<double> totals;
  std::vector<PhaseTimes> phases;
  for (int r = 0; r < options.warmup + options.repeats; ++r) {
    engine.reset_phase_times();
    FC_CHECK_MPI(MPI_Barrier(comm));
    const auto t0 = std::chrono::steady_clock::now();
    engine.prefill_layers(hidden, n_tokens);
    double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // A pass is as slow as its slowest rank, phase by phase too.
    PhaseTimes p = engine.phase_times();
    FC_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, comm));
    FC_CHECK_MPI(
        MPI_Allreduce(MPI_IN_PLACE, p.seconds.data(), kPhaseCount, MPI_DOUBLE, MPI_MAX, comm));
    if (r >= options.warmup) {
      totals.push_back(t / n_layers);
      phases.push_back(p);
    }
  }

  BenchRow row;
  row.parallel = pc;
  row.scheme = scheme_name(pc);
  row.n_tokens = n_tokens;
  row.n_layers = n_layers;
  row.median_s = median_of(totals);
  row.min_s = *std::min_element(totals.begin(), totals.end());
  row.max_s = *std::max_element(totals.begin(), totals.end());
  for (int i = 0; i < kPhaseCount; ++i) {
    std::vector<double> v;
    for (const PhaseTimes& p : phases) {
      v.push_back(p.seconds[static_cast<size_t>(i)] / n_layers);
    }
    row.phases.seconds[static_cast<size_t>(i)] = median_of(v);
    (kind_of(static_cast<Phase>(i)) == PhaseKind::comm ? row.comm_s : row.compute_s) +=
        row.phases.seconds[static_cast<size_t>(i)];
  }
  std::int64_t bytes = 0;
  for (const CommRecord& rec : ctx.stats().records(Pass::prefill)) {
    bytes += rec.bytes_sent;
  }
  row.bytes_per_rank = bytes / (options.warmup + options.repeats) / n_layers;
  return row;
}

}  // namespace

double layer_floor(const LayerCost& cost, const HardwareProfile& profile,
                   const ParallelConfig& parallel) {
  // The fastest GEMM rate the profile knows: its rates by rows are measured
  // apart from its large-GEMM rate, and under load one may come out above it.
  double best_rate = profile.gemm_flops;
  for (const auto& [rows, rate] : profile.gemm_flops_by_rows) {
    best_rate = std::max(best_rate, rate);
  }
  double s = 0.0;
  for (const PhaseCost& p : cost.phases) {
    s += p.flops / best_rate;
    if (p.has_collective() && p.comm_bytes > 0) {
      const int group = p.group_size > 0 ? p.group_size : parallel.tp_size;
      // Bandwidth only: what the bytes cost at the fitted rate, no latency.
      s += collective_seconds(profile, p.op, group, p.comm_bytes) -
           collective_seconds(profile, p.op, group, 0);
    }
  }
  return s;
}

std::vector<BenchRow> run_bench(MPI_Comm world, const WeightSource& source,
                                const BenchOptions& options,
                                const std::function<const HardwareProfile&(int)>& profile_for,
                                const std::function<void(const BenchRow&, int, int)>& progress) {
  int rank = 0;
  int world_size = 0;
  FC_CHECK_MPI(MPI_Comm_rank(world, &rank));
  FC_CHECK_MPI(MPI_Comm_size(world, &world_size));
  const ModelConfig& model = source.config();
  const int context = *std::max_element(options.token_counts.begin(), options.token_counts.end());

  // The work list, the same on every rank.
  struct Item {
    ParallelConfig pc;
    int n_tokens;
    std::string variant;
  };
  std::vector<Item> items;
  for (int tp : options.tp_sizes) {
    for (const ParallelConfig& pc : candidate_schemes(tp, 1)) {
      const std::string family = scheme_family(pc);
      if (!options.schemes.empty() && std::find(options.schemes.begin(), options.schemes.end(),
                                                family) == options.schemes.end()) {
        continue;
      }
      check_parallel_config(model, pc, tp);
      std::vector<std::pair<ParallelConfig, std::string>> runs = {{pc, ""}};
      for (const std::string& name : options.variants) {
        if (std::optional<ParallelConfig> v = bench_variant(pc, name)) {
          if (name == "overlap") {
            v->overlap_chunks = options.overlap_chunks;
          }
          check_parallel_config(model, *v, tp);
          runs.emplace_back(*v, name);
        }
      }
      for (int n : options.token_counts) {
        for (const auto& [run, name] : runs) {
          items.push_back({run, n, name});
        }
      }
    }
  }

  std::vector<BenchRow> rows;
  for (size_t i = 0; i < items.size(); ++i) {
    const Item& item = items[i];
    const int tp = item.pc.tp_size;
    MPI_Comm sub = MPI_COMM_NULL;
    FC_CHECK_MPI(MPI_Comm_split(world, rank < tp ? 0 : MPI_UNDEFINED, rank, &sub));
    if (sub != MPI_COMM_NULL) {
      BenchRow row = measure(sub, source, item.pc, item.n_tokens, context, options);
      row.variant = item.variant;
      FC_CHECK_MPI(MPI_Comm_free(&sub));
      const HardwareProfile& profile = profile_for(tp);
      const LayerCost cost = predict_layer(model, item.pc, item.n_tokens, profile);
      row.predicted_s = cost.total_s;
      row.predicted_comm_s = cost.comm_s;
      row.floor_s = layer_floor(cost, profile, item.pc);
      if (rank == 0) {
        rows.push_back(row);
        if (progress) {
          progress(row, static_cast<int>(i) + 1, static_cast<int>(items.size()));
        }
      }
    }
    // Idle ranks wait here, so no rank runs ahead into the next TP size.
    quiet_barrier(world);
  }

  // Speed-ups against plain TP and FlashComm1 of the same TP size and tokens.
  // Each variant row against its base scheme (same TP size, tokens, scheme).
  std::map<std::pair<int, int>, double> plain;
  std::map<std::pair<int, int>, double> fc1;
  std::map<std::tuple<int, int, std::string>, const BenchRow*> base;
  for (const BenchRow& r : rows) {
    const auto key = std::make_pair(r.parallel.tp_size, r.n_tokens);
    if (!r.variant.empty()) {
      continue;
    }
    base[{r.parallel.tp_size, r.n_tokens, r.scheme}] = &r;
    if (scheme_family(r.parallel) == "tp") {
      plain[key] = r.median_s;
    } else if (scheme_family(r.parallel) == "fc1") {
      fc1[key] = r.median_s;
    }
  }
  std::vector<std::pair<double, double>> base_times(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    const BenchRow& r = rows[i];
    if (r.variant.empty()) {
      continue;
    }
    ParallelConfig b = r.parallel;
    b.comm_quant = CommQuant::none;
    b.comm_dtype = CommDtype::f32;
    b.overlap_chunks = 1;
    if (r.variant == "mlp") {
      b.flashcomm2_mlp = 0;
    }
    const auto it = base.find({b.tp_size, r.n_tokens, scheme_name(b)});
    if (it != base.end()) {
      base_times[i] = {it->second->median_s, it->second->comm_s};
    }
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    BenchRow& r = rows[i];
    const auto key = std::make_pair(r.parallel.tp_size, r.n_tokens);
    r.speedup_vs_tp = plain.count(key) != 0 ? plain[key] / r.median_s : 0.0;
    r.speedup_vs_fc1 = fc1.count(key) != 0 ? fc1[key] / r.median_s : 0.0;
    r.base_median_s = base_times[i].first;
    r.base_comm_s = base_times[i].second;
  }
  return rows;
}

}  // namespace flashcomm
