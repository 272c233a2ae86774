// The cost model of one rank's prefill and the planner built on it.
//
// predict_layer walks the phases of Engine::attention_block, flashcomm2_o_proj
// and mlp_block (src/engine/engine.cpp) in their order, with the same buffer
// shapes: every collective's buffer is the one the engine hands to the
// communicator, so comm_bytes equals what CommStats counts for that call.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>

#include "flashcomm/cost_model.hpp"
#include "flashcomm/error.hpp"

namespace flashcomm {

double gemm_rate(const HardwareProfile& profile, double rows) {
  const auto& table = profile.gemm_flops_by_rows;
  if (table.empty()) {
    return profile.gemm_flops;
  }
  if (rows <= table.front().first) {
    return table.front().second;
  }
  for (size_t i = 1; i < table.size(); ++i) {
    if (rows <= table[i].first) {
      const double x0 = std::log(table[i - 1].first);
      const double x1 = std::log(table[i].first);
      const double t = (std::log(rows) - x0) / (x1 - x0);
      return table[i - 1].second + t * (table[i].second - table[i - 1].second);
    }
  }
  return table.back().second;
}

double collective_seconds(const HardwareProfile& profile, CommOp op, int group_size,
                          std::int64_t bytes_sent, bool crosses_nodes) {
  FC_ASSERT(group_size >= 1 && bytes_sent >= 0, "group_size {} bytes_sent {}", group_size,
            bytes_sent);
  if (group_size == 1) {
    return 0.0;
  }
  // Groups larger than a node cross nodes by necessity; the main table's
  // large sizes describe them.
  const bool small_crossing = crosses_nodes && profile.ranks_per_node > 0 &&
                              group_size <= profile.ranks_per_node &&
                              profile.cross_node_collectives.count(op) > 0;
  const auto& table = small_crossing ? profile.cross_node_collectives : profile.collectives;
  const auto it = table.find(op);
  FC_ASSERT(it != table.end() && !it->second.empty(), "profile {} has no fit for {}", profile.name,
            to_string(op));

  // The nearest measured group size; on a tie the larger, the safer guess.
  const CollectiveFit* best = nullptr;
  for (const CollectiveFit& f : it->second) {
    const int distance = std::abs(f.group_size - group_size);
    if (best == nullptr || distance < std::abs(best->group_size - group_size) ||
        (distance == std::abs(best->group_size - group_size) && f.group_size > best->group_size)) {
      best = &f;
    }
  }
  return best->latency_s + static_cast<double>(bytes_sent) / best->bandwidth_Bps;
}

const PhaseCost* LayerCost::find(Phase phase) const {
  for (const PhaseCost& p : phases) {
    if (p.phase == phase) {
      return &p;
    }
  }
  return nullptr;
}

namespace {

// The shapes of one rank's pass, named as in the engine.
struct Shapes {
  std::int64_t n = 0;  // n_tokens
  std::int64_t n_padded = 0;
  std::int64_t n_slice = 0;  // n_padded / tp_size
  std::int64_t n_res = 0;  // rows of the residual stream on this rank
  std::int64_t d = 0;  // d_model
  std::int64_t q_dim = 0;
  std::int64_t q_local = 0;  // this rank's query heads * head_dim
  std::int64_t kv_local = 0;  // this rank's KV heads * head_dim (one head when replicated)
  std::int64_t hid = 0;  // hidden_dim / tp_size
  int tp = 1;
  int k = 0;  // otp_size; 0 when FlashComm2 is off
  int g = 1;  // odp_size
  bool flashcomm1 = false;
  bool flashcomm2 = false;
};

Shapes shapes_of(const ModelConfig& m, const ParallelConfig& pc, int n_tokens) {
  Shapes s;
  s.tp = pc.tp_size;
  s.n = n_tokens;
  s.n_padded = padded_tokens(n_tokens, pc.tp_size);
  s.n_slice = s.n_padded / pc.tp_size;
  // As Engine::plan_pass: FlashComm1 does nothing on one rank.
  s.flashcomm1 = pc.flashcomm1 && pc.tp_size > 1;
  s.flashcomm2 = pc.flashcomm2_on();
  s.n_res = s.flashcomm1 ? s.n_slice : s.n;
  s.k = pc.otp_size();
  s.g = pc.odp_size();
  const HeadShard heads = head_shard(m, pc.tp_size, 0);
  s.d = m.d_model;
  s.q_dim = m.q_dim();
  s.q_local = std::int64_t{heads.n_q_heads} * m.head_dim;
  s.kv_local = std::int64_t{heads.n_kv_heads} * m.head_dim;
  s.hid = m.hidden_dim / pc.tp_size;
  return s;
}

// Which groups of the layout span nodes: a collective is as slow as its
// slowest group, since every rank waits for it at the next one.
struct Crossings {
  bool tp = false;
  bool odp = false;
  bool otp = false;
};

// The groups of layout.hpp are arithmetic progressions of world ranks
// (first, first + stride, ...), and a rank's node grows with the rank, so a
// group spans nodes exactly when its first and last ranks do.
Crossings crossings_of(const HardwareProfile& profile, const ParallelConfig& pc) {
  Crossings c;
  const int per_node = profile.ranks_per_node;
  if (per_node <= 0) {
    return c;
  }
  const auto spans = [per_node](int first, int stride, int count) {
    return first / per_node != (first + (count - 1) * stride) / per_node;
  };
  const int tp = pc.tp_size;
  const int g = pc.odp_size();
  for (int d = 0; d < pc.dp_size; ++d) {
    c.tp = c.tp || spans(d * tp, 1, tp);
    if (pc.flashcomm2_on()) {
      for (int j = 0; j < pc.otp_size(); ++j) {
        c.odp = c.odp || spans(d * tp + j * g, 1, g);  // odp_group_ranks(pc, d, j)
      }
      for (int i = 0; i < g; ++i) {
        c.otp = c.otp || spans(d * tp + i, g, pc.otp_size());  // otp_group_ranks(pc, d, i)
      }
    }
  }
  return c;
}

// Builds the phases of one layer with the profile's rates.
class LayerBuilder {
 public:
  explicit LayerBuilder(const HardwareProfile& profile)
      : profile_(profile), elem_(profile.activation_bytes) {
    cost_.phases.reserve(kPhaseCount);
  }

  // A GEMM y[rows, out] = x[rows, in] . w[out, in]^T on the roofline: its
  // FLOPs at gemm_flops or its bytes (x, w, y once each) at memory
  // bandwidth, whichever is slower.
  void gemm(Phase phase, std::int64_t rows, std::int64_t in, std::int64_t out) {
    const double flops =
        2.0 * static_cast<double>(rows) * static_cast<double>(in) * static_cast<double>(out);
    const double bytes = static_cast<double>(rows * in + out * in + rows * out) * elem_;
    roofline(phase, flops, bytes, static_cast<double>(rows));
  }

  // `rows`: the activation rows of the GEMMs, which set their rate.
  void roofline(Phase phase, double flops, double bytes, double rows) {
    PhaseCost& p = at(phase);
    p.flops += flops;
    p.bytes_moved += bytes;
    p.seconds += std::max(flops / gemm_rate(profile_, rows), bytes / profile_.memory_bandwidth_Bps);
  }

  // A memory-bound step that reads and writes `elements` elements in all.
  // `count` exp() evaluations, when the profile rates them.
  void exps(Phase phase, double count) {
    if (profile_.exp_per_s > 0) {
      at(phase).seconds += count / profile_.exp_per_s;
    }
  }

  void memory(Phase phase, std::int64_t elements) {
    PhaseCost& p = at(phase);
    const double bytes = static_cast<double>(elements) * elem_;
    p.bytes_moved += bytes;
    p.seconds += bytes / profile_.memory_bandwidth_Bps;
  }

  // A collective on a buffer of `buffer_elements` (S_in for ReduceScatter,
  // S_out for AllGather, as comm.hpp counts).
  void collective(Phase phase, CommOp op, const char* group, int group_size,
                  std::int64_t buffer_elements, bool crosses_nodes) {
    PhaseCost& p = at(phase);
    FC_ASSERT(!p.has_collective(), "phase {} already has a collective", to_string(phase));
    p.op = op;
    p.group = group;
    p.comm_bytes = bytes_sent(op, group_size, buffer_elements * elem_);
    p.seconds += collective_seconds(profile_, op, group_size, p.comm_bytes, crosses_nodes);
  }

  LayerCost finish() {
    for (const PhaseCost& p : cost_.phases) {
      (kind_of(p.phase) == PhaseKind::comm ? cost_.comm_s : cost_.compute_s) += p.seconds;
    }
    cost_.total_s = cost_.compute_s + cost_.comm_s;
    return std::move(cost_);
  }

 private:
  // The phase's entry, appended when it first appears (so in engine order).
  PhaseCost& at(Phase phase) {
    if (cost_.phases.empty() || cost_.phases.back().phase != phase) {
      FC_ASSERT(cost_.find(phase) == nullptr, "phase {} twice", to_string(phase));
      PhaseCost p;
      p.phase = phase;
      cost_.phases.push_back(p);
    }
    return cost_.phases.back();
  }

  const HardwareProfile& profile_;
  std::int64_t elem_;
  LayerCost cost_;
};

void check_tokens(const ModelConfig& model, int n_tokens) {
  if (n_tokens < 1 || n_tokens > model.seq_len) {
    throw ConfigError(
        fmt::format("a prefill of {} tokens does not fit: it needs 1 to seq_len {} tokens",
                    n_tokens, model.seq_len));
  }
}

// FlashComm2's o_proj, phases (1)-(4) of Engine::flashcomm2_o_proj and its
// caller.
void flashcomm2_o_proj(LayerBuilder& b, const Shapes& s, const Crossings& x) {
  // (1) chunk reorder into the AlltoAll's send buffer [n_padded, q_local]:
  // K = 1 sends the activations as they are, padding rows zeroed; K > 1
  // copies each chunk into its slot. Then AlltoAll over ODP (K = 1: the TP
  // group itself) and the feature concatenation [K*n_slice, q_dim/K], which
  // reads and writes the whole received buffer.
  const std::int64_t send = s.n_padded * s.q_local;
  b.memory(Phase::o_proj_a2a, s.k == 1 ? (s.n_padded - s.n) * s.q_local : s.n * s.q_local + send);
  b.collective(Phase::o_proj_a2a, CommOp::all_to_all, s.k == 1 ? "tp" : "odp", s.g, send, x.odp);
  b.memory(Phase::o_proj_a2a, 2 * send);

  // (2) o_proj block j: [K*n_slice, q_dim/K] . [d_model, q_dim/K]^T
  b.gemm(Phase::o_proj_gemm, s.k * s.n_slice, s.q_dim / s.k, s.d);

  // (3) K > 1: ReduceScatter over OTP, [K*n_slice, d] in.
  if (s.k > 1) {
    b.collective(Phase::o_proj_reduce, CommOp::reduce_scatter, "otp", s.k, s.k * s.n_slice * s.d,
                 x.otp);
  }

  // (4) without FlashComm1: AllGather the chunks over TP, [n_padded, d] out.
  if (!s.flashcomm1) {
    b.collective(Phase::o_proj_gather, CommOp::all_gather, "tp", s.tp, s.n_padded * s.d, x.tp);
  }
}

// The reduction after o_proj or down_proj outside FlashComm2: FlashComm1's
// ReduceScatter of the zero-padded [n_padded, d] partial sums, or the
// AllReduce of [n_tokens, d]; nothing on one rank.
void reduce_partials(LayerBuilder& b, Phase phase, const Shapes& s, const Crossings& x) {
  if (s.flashcomm1) {
    b.memory(phase, (s.n_padded - s.n) * s.d);
    b.collective(phase, CommOp::reduce_scatter, "tp", s.tp, s.n_padded * s.d, x.tp);
  } else if (s.tp > 1) {
    b.collective(phase, CommOp::all_reduce, "tp", s.tp, s.n * s.d, x.tp);
  }
}

}  // namespace

LayerCost predict_layer(const ModelConfig& model, const ParallelConfig& parallel, int n_tokens,
                        const HardwareProfile& profile) {
  check_parallel_config(model, parallel, -1);
  check_tokens(model, n_tokens);
  const Shapes s = shapes_of(model, parallel, n_tokens);
  const Crossings x = crossings_of(profile, parallel);
  LayerBuilder b(profile);

  // ---- Attention block ------------------------------------------------
  // 1. RMSNorm on the resident rows: read x and the weight, write h.
  b.memory(Phase::attn_norm, 2 * s.n_res * s.d + s.d);

  // 2. FlashComm1: AllGather [n_padded, d] out over TP.
  if (s.flashcomm1) {
    b.collective(Phase::attn_gather, CommOp::all_gather, "tp", s.tp, s.n_padded * s.d, x.tp);
  }

  // 3. QKV GEMM; Qwen2's bias add reads and writes every q, k, v column and
  // reads the bias; Qwen3's per-head norm reads and writes the q and k
  // columns and reads its two head_dim weights; RoPE rewrites the q and k
  // columns; K and V rows are copied into the cache.
  const std::int64_t qkv_cols = s.q_local + 2 * s.kv_local;
  b.gemm(Phase::qkv_proj, s.n, s.d, qkv_cols);
  if (model.qkv_bias) {
    b.memory(Phase::qkv_proj, 2 * s.n * qkv_cols + qkv_cols);
  }
  if (model.qk_norm) {
    b.memory(Phase::qkv_proj,
             2 * s.n * (s.q_local + s.kv_local) + 2 * std::int64_t{model.head_dim});
  }
  b.memory(Phase::qkv_proj, 2 * s.n * (s.q_local + s.kv_local) + s.n * s.kv_local * 4);

  // 4. Causal attention from position 0. Two kernels are modelled:
  // - this engine's (a profile that rates exp(), i.e. a calibrated CPU):
  //   per head two GEMMs over the full [n, n] score matrix (the masked half
  //   zeroed, not skipped): 4*n*n*q_local FLOPs; the scores are materialised
  //   and streamed by the softmax (written by QK^T, read for the maximum,
  //   read and written by exp, read and written by the scaling, read by PV)
  //   over n(n+1)/2 live entries per head, with one exp() each;
  // - a fused, causal-skipping kernel such as FlashAttention (GPU and NPU
  //   profiles): 2*n*(n+1)*q_local FLOPs, scores kept on chip.
  // Both read q, k, v once and write out [n, q_local].
  const double n = static_cast<double>(s.n);
  const bool engine_kernel = profile.exp_per_s > 0;
  const double attention_flops = engine_kernel ? 4.0 * n * n * static_cast<double>(s.q_local)
                                               : 2.0 * n * (n + 1) * static_cast<double>(s.q_local);
  b.roofline(
      Phase::attention, attention_flops,
      static_cast<double>(2 * s.n * s.q_local + 2 * s.n * s.kv_local) * profile.activation_bytes,
      n);
  if (engine_kernel) {
    const std::int64_t q_heads = s.q_local / model.head_dim;
    b.memory(Phase::attention, 7 * q_heads * s.n * (s.n + 1) / 2);
    b.exps(Phase::attention, static_cast<double>(q_heads) * n * (n + 1) / 2);
  }

  // 5. o_proj and its collectives, by scheme.
  if (s.flashcomm2) {
    flashcomm2_o_proj(b, s, x);
  } else {
    b.gemm(Phase::o_proj_gemm, s.n, s.q_local, s.d);
    reduce_partials(b, Phase::o_proj_reduce, s, x);
  }

  // 6. Residual add on the resident rows: read x and y, write x.
  b.memory(Phase::attn_residual, 3 * s.n_res * s.d);

  // ---- MLP block ------------------------------------------------------
  b.memory(Phase::mlp_norm, 2 * s.n_res * s.d + s.d);
  if (s.flashcomm1) {
    b.collective(Phase::mlp_gather, CommOp::all_gather, "tp", s.tp, s.n_padded * s.d, x.tp);
  }
  b.gemm(Phase::gate_up_proj, s.n, s.d, 2 * s.hid);
  // SiLU(gate) * up: read both halves, write one.
  b.memory(Phase::activation, 3 * s.n * s.hid);
  b.exps(Phase::activation, static_cast<double>(s.n * s.hid));
  b.gemm(Phase::down_proj, s.n, s.hid, s.d);
  reduce_partials(b, Phase::mlp_reduce, s, x);
  b.memory(Phase::mlp_residual, 3 * s.n_res * s.d);
  return b.finish();
}

PrefillCost predict_prefill_cost(const ModelConfig& model, const ParallelConfig& parallel,
                                 int n_tokens, const HardwareProfile& profile) {
  PrefillCost c;
  c.layer = predict_layer(model, parallel, n_tokens, profile);
  c.n_layers = model.n_layers;
  if (parallel.flashcomm1 && parallel.tp_size > 1) {
    // After the final norm: AllGather [n_padded, d] out over TP.
    const std::int64_t buffer = std::int64_t{padded_tokens(n_tokens, parallel.tp_size)} *
                                model.d_model * profile.activation_bytes;
    c.final_gather_bytes = bytes_sent(CommOp::all_gather, parallel.tp_size, buffer);
    c.final_gather_s = collective_seconds(profile, CommOp::all_gather, parallel.tp_size,
                                          c.final_gather_bytes, crossings_of(profile, parallel).tp);
  }
  c.total_s = c.n_layers * c.layer.total_s + c.final_gather_s;
  return c;
}

double predict_prefill(const ModelConfig& model, const ParallelConfig& parallel, int n_tokens,
                       const HardwareProfile& profile) {
  return predict_prefill_cost(model, parallel, n_tokens, profile).total_s;
}

double extra_o_proj_bytes(const ModelConfig& model, int tp_size, int otp_size, int weight_bytes) {
  FC_ASSERT(tp_size >= 1 && otp_size >= 0 && otp_size <= tp_size && weight_bytes >= 1,
            "tp_size {} otp_size {} weight_bytes {}", tp_size, otp_size, weight_bytes);
  if (otp_size == 0) {
    return 0.0;
  }
  // (1/K - 1/TP) = (TP - K) / (K * TP), kept exact until the last division.
  const double weights = static_cast<double>(model.q_dim()) * model.d_model * model.n_layers;
  return weights * weight_bytes * (tp_size - otp_size) / (static_cast<double>(otp_size) * tp_size);
}

// ---- Planner --------------------------------------------------------------

std::vector<ParallelConfig> candidate_schemes(int tp_size, int dp_size) {
  const ParallelConfig plain{dp_size, tp_size, false, 0};
  std::vector<ParallelConfig> out{plain};
  if (tp_size == 1) {
    return out;
  }
  out.push_back({dp_size, tp_size, true, 0});
  for (const bool fc1 : {false, true}) {
    for (int k = 1; k < tp_size; ++k) {
      if (tp_size % k == 0) {
        out.push_back({dp_size, tp_size, fc1, k});
      }
    }
  }
  return out;
}

std::string scheme_name(const ParallelConfig& pc) {
  const bool fc1 = pc.flashcomm1 && pc.tp_size > 1;
  if (!pc.flashcomm2_on()) {
    return fc1 ? "FlashComm1" : "plain TP";
  }
  return fmt::format("{}FlashComm2 K={}", fc1 ? "FlashComm1+" : "", pc.flashcomm2);
}

namespace {

std::vector<SchemeEstimate> estimate_all(const PlanRequest& r,
                                         const std::vector<ParallelConfig>& schemes, int n_tokens) {
  const double budget = r.memory_budget_gib ? *r.memory_budget_gib * 1024.0 * 1024.0 * 1024.0
                                            : std::numeric_limits<double>::infinity();
  std::vector<SchemeEstimate> out;
  for (const ParallelConfig& pc : schemes) {
    SchemeEstimate e;
    e.parallel = pc;
    e.name = scheme_name(pc);
    const PrefillCost c = predict_prefill_cost(r.model, pc, n_tokens, r.profile);
    e.layer_s = c.layer.total_s;
    e.prefill_s = c.total_s;
    e.extra_o_proj_bytes = extra_o_proj_bytes(r.model, pc.tp_size, pc.flashcomm2, r.weight_bytes);
    e.fits_budget = e.extra_o_proj_bytes <= budget;
    out.push_back(std::move(e));
  }
  return out;
}

// Fastest scheme that fits the budget; plain TP (index 0, no extra memory)
// always fits, and a tie keeps the earlier, simpler scheme.
int fastest_fitting(const std::vector<SchemeEstimate>& schemes) {
  int best = 0;
  for (size_t i = 1; i < schemes.size(); ++i) {
    if (schemes[i].fits_budget &&
        schemes[i].prefill_s < schemes[static_cast<size_t>(best)].prefill_s) {
      best = static_cast<int>(i);
    }
  }
  return best;
}

// Whether the best fitting FlashComm2 variant beats plain TP and FlashComm1.
bool flashcomm2_wins(const std::vector<SchemeEstimate>& schemes) {
  double baseline = std::numeric_limits<double>::infinity();
  double best_fc2 = std::numeric_limits<double>::infinity();
  for (const SchemeEstimate& e : schemes) {
    if (!e.parallel.flashcomm2_on()) {
      baseline = std::min(baseline, e.prefill_s);
    } else if (e.fits_budget) {
      best_fc2 = std::min(best_fc2, e.prefill_s);
    }
  }
  return best_fc2 < baseline;
}

void check_request(const PlanRequest& r) {
  check_parallel_config(r.model, {r.dp_size, r.tp_size, false, 0}, -1);
  if (r.token_counts.empty()) {
    throw ConfigError("--tokens: give at least one token count");
  }
  for (int n : r.token_counts) {
    if (n < 1) {
      throw ConfigError(fmt::format("--tokens {} must be at least 1", n));
    }
    if (n > r.model.seq_len) {
      throw ConfigError(
          fmt::format("--tokens {} exceeds the model's context (seq_len) {}", n, r.model.seq_len));
    }
  }
  if (r.memory_budget_gib && (!std::isfinite(*r.memory_budget_gib) || *r.memory_budget_gib < 0)) {
    throw ConfigError(
        fmt::format("--memory-budget {} must be 0 GiB or more", *r.memory_budget_gib));
  }
  if (r.weight_bytes < 1 || r.weight_bytes > 8) {
    throw ConfigError(fmt::format("--weight-bytes {} must be 1 to 8", r.weight_bytes));
  }
}

}  // namespace

Plan plan_prefill(const PlanRequest& request) {
  check_request(request);
  const std::vector<ParallelConfig> schemes = candidate_schemes(request.tp_size, request.dp_size);
  Plan plan;
  for (int n : request.token_counts) {
    TokenPlan row;
    row.n_tokens = n;
    row.schemes = estimate_all(request, schemes, n);
    row.recommended = fastest_fitting(row.schemes);
    plan.rows.push_back(std::move(row));
  }

  // Break-even: walk down from the largest requested count while FlashComm2
  // keeps winning. Padding to a multiple of TP makes the margin jump with
  // n % TP, so the first win from below need not last; walking down finds
  // the point from which it does.
  plan.break_even_searched_to =
      *std::max_element(request.token_counts.begin(), request.token_counts.end());
  if (request.tp_size > 1) {
    for (int n = plan.break_even_searched_to; n >= 1; --n) {
      if (!flashcomm2_wins(estimate_all(request, schemes, n))) {
        break;
      }
      plan.break_even = n;
    }
  }
  return plan;
}

}  // namespace flashcomm
