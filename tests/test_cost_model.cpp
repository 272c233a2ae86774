// The cost model and planner: FlashComm2's byte savings, the extra o_proj
// memory, byte-for-byte agreement with the engine's accounting, hardware
// profiles (built-in and JSON), and the planner's choices.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <tuple>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "flashcomm/bench.hpp"
#include "flashcomm/cost_model.hpp"
#include "flashcomm/error.hpp"
#include "flashcomm/presets.hpp"
#include "test_support.hpp"

namespace flashcomm {
namespace {

// The engine runs in fp32: with 4-byte elements the model's bytes are the
// engine's bytes.
HardwareProfile fp32(HardwareProfile p) {
  p.activation_bytes = 4;
  return p;
}

ParallelConfig layout(int tp, bool fc1, int k) {
  return {1, tp, fc1, k};
}

// ---- (a) FlashComm2's AlltoAll against FlashComm1's ReduceScatter --------

// 1 - (FlashComm2 K=1's o_proj AlltoAll bytes) / (FlashComm1's o_proj
// ReduceScatter bytes), both from the predicted phases.
double o_proj_saving(const std::string& preset, int tp, int n_tokens) {
  const ModelConfig m = preset_config(preset);
  const HardwareProfile p = builtin_profile("h100-sxm");
  const LayerCost fc1 = predict_layer(m, layout(tp, true, 0), n_tokens, p);
  const LayerCost fc2 = predict_layer(m, layout(tp, false, 1), n_tokens, p);
  const PhaseCost* rs = fc1.find(Phase::o_proj_reduce);
  const PhaseCost* a2a = fc2.find(Phase::o_proj_a2a);
  EXPECT_TRUE(rs != nullptr && a2a != nullptr);
  if (rs == nullptr || a2a == nullptr) {
    return 0.0;
  }
  EXPECT_EQ(rs->op, CommOp::reduce_scatter);
  EXPECT_EQ(a2a->op, CommOp::all_to_all);
  return 1.0 - static_cast<double>(a2a->comm_bytes) / static_cast<double>(rs->comm_bytes);
}

TEST(CostModel, FlashComm2AlltoAllSavesOverFlashComm1ReduceScatter) {
  // DeepSeek-V3 attention at TP 16: 1 - 16384 / (16 * 7168) = 85.7%.
  const double deepseek = 1.0 - 16384.0 / (16.0 * 7168.0);
  EXPECT_NEAR(deepseek, 0.857, 0.0005);
  for (int n : {4096, 1000, 7}) {
    EXPECT_NEAR(o_proj_saving("deepseek-v3-attn", 16, n), deepseek, 0.001) << n << " tokens";
  }
  // Llama-3-70B at TP 8: 1 - 8192 / (8 * 8192) = 87.5%.
  for (int n : {8192, 333}) {
    EXPECT_NEAR(o_proj_saving("llama-3-70b", 8, n), 0.875, 0.001) << n << " tokens";
  }
}

// ---- (b) extra o_proj memory ----------------------------------------------

TEST(CostModel, ExtraOProjMemoryMatchesTheFormula) {
  const ModelConfig m = preset_config("deepseek-v3-attn");
  // q_dim * d_model * n_layers * weight_bytes = 16384 * 7168 * 61 * 2.
  const double full = 16384.0 * 7168.0 * 61.0 * 2.0;
  EXPECT_DOUBLE_EQ(full, 14327742464.0);
  EXPECT_DOUBLE_EQ(extra_o_proj_bytes(m, 16, 1, 2), full * (1.0 - 1.0 / 16.0));
  EXPECT_DOUBLE_EQ(extra_o_proj_bytes(m, 16, 1, 2), 13432258560.0);
  EXPECT_DOUBLE_EQ(extra_o_proj_bytes(m, 16, 2, 2), full * (1.0 / 2.0 - 1.0 / 16.0));
  EXPECT_DOUBLE_EQ(extra_o_proj_bytes(m, 16, 2, 2), 6268387328.0);
  EXPECT_DOUBLE_EQ(extra_o_proj_bytes(m, 16, 0, 2), 0.0) << "FlashComm2 off";
  EXPECT_DOUBLE_EQ(extra_o_proj_bytes(m, 16, 2, 4), 2 * 6268387328.0) << "fp32 weights";
}

// ---- (c) bytes equal the engine's accounting ---------------------------------

// comm.hpp's table, computed here on its own: AllReduce 2(n-1)/n * S, the
// others (n-1)/n * S (S_in for ReduceScatter, S_out for AllGather), rounded
// to the nearest byte.
std::int64_t formula_bytes(CommOp op, int n, std::int64_t buffer_bytes) {
  const double factor = op == CommOp::all_reduce ? 2.0 : 1.0;
  return std::llround(factor * (n - 1) / n * static_cast<double>(buffer_bytes));
}

using Collective = std::tuple<CommOp, std::string, std::int64_t>;  // op, group, bytes

// The collectives of one layer as the engine issues them, phase by phase,
// worked out from engine.cpp's buffers in floats.
std::map<Phase, Collective> expected_collectives(const ModelConfig& m, int tp, bool fc1, int k,
                                                 int n) {
  const std::int64_t np = std::int64_t{(n + tp - 1) / tp} * tp;
  const std::int64_t ns = np / tp;
  const std::int64_t d = m.d_model;
  const std::int64_t q_local = std::int64_t{m.n_heads} / tp * m.head_dim;
  const std::int64_t f = 4;  // sizeof(float)
  std::map<Phase, Collective> out;
  if (tp == 1) {
    return out;
  }
  if (fc1) {
    out[Phase::attn_gather] = {CommOp::all_gather, "tp",
                               formula_bytes(CommOp::all_gather, tp, np * d * f)};
    out[Phase::mlp_gather] = {CommOp::all_gather, "tp",
                              formula_bytes(CommOp::all_gather, tp, np * d * f)};
    out[Phase::mlp_reduce] = {CommOp::reduce_scatter, "tp",
                              formula_bytes(CommOp::reduce_scatter, tp, np * d * f)};
  } else {
    out[Phase::mlp_reduce] = {CommOp::all_reduce, "tp",
                              formula_bytes(CommOp::all_reduce, tp, n * d * f)};
  }
  if (k == 0) {
    out[Phase::o_proj_reduce] =
        fc1 ? Collective{CommOp::reduce_scatter, "tp",
                         formula_bytes(CommOp::reduce_scatter, tp, np * d * f)}
            : Collective{CommOp::all_reduce, "tp",
                         formula_bytes(CommOp::all_reduce, tp, n * d * f)};
    return out;
  }
  const int g = tp / k;
  // AlltoAll over ODP (TP itself at K = 1) of the padded [n_padded, q_local].
  out[Phase::o_proj_a2a] = {CommOp::all_to_all, k == 1 ? "tp" : "odp",
                            formula_bytes(CommOp::all_to_all, g, np * q_local * f)};
  if (k > 1) {
    out[Phase::o_proj_reduce] = {CommOp::reduce_scatter, "otp",
                                 formula_bytes(CommOp::reduce_scatter, k, k * ns * d * f)};
  }
  if (!fc1) {
    out[Phase::o_proj_gather] = {CommOp::all_gather, "tp",
                                 formula_bytes(CommOp::all_gather, tp, np * d * f)};
  }
  return out;
}

std::map<Phase, Collective> predicted_collectives(const LayerCost& layer) {
  std::map<Phase, Collective> out;
  for (const PhaseCost& p : layer.phases) {
    if (p.has_collective()) {
      out[p.phase] = {p.op, p.group, p.comm_bytes};
    } else {
      EXPECT_EQ(p.comm_bytes, 0) << to_string(p.phase);
    }
  }
  return out;
}

TEST(CostModel, CollectiveBytesEqualTheEngineFormulas) {
  const HardwareProfile p = fp32(builtin_profile("h100-sxm"));
  const std::vector<ModelConfig> randoms = test::random_test_configs();
  struct Case {
    ModelConfig model;
    int tp;
    std::vector<int> tokens;
  };
  const std::vector<Case> cases = {
      {preset_config("stories260K"), 4, {117, 1, 3, 4, 5, 64}},  // n < TP, n % TP != 0
      {preset_config("stories260K"), 2, {1, 9}},
      {randoms[0], 3, {2, 7}},
      {randoms[0], 6, {1, 5, 13}},  // KV heads replicated
      {randoms[1], 8, {3, 17, 64}},  // multi-query
      {preset_config("deepseek-v3-attn"), 16, {1000, 15}},
      {preset_config("qwen3-32b"), 8, {4097}},  // q_dim != d_model
  };
  for (const Case& c : cases) {
    for (const ParallelConfig& pc : candidate_schemes(c.tp, 1)) {
      for (int n : c.tokens) {
        const LayerCost layer = predict_layer(c.model, pc, n, p);
        EXPECT_EQ(predicted_collectives(layer),
                  expected_collectives(c.model, c.tp, pc.flashcomm1, pc.flashcomm2, n))
            << scheme_name(pc) << " at TP " << c.tp << ", " << n << " tokens, d_model "
            << c.model.d_model;
      }
    }
  }
}

// Whole-prefill bytes per (op, group): the layers and FlashComm1's final
// AllGather, as the engine's CommStats sums them.
std::map<std::string, std::int64_t> prefill_bytes(const ModelConfig& m, const ParallelConfig& pc,
                                                  int n, const HardwareProfile& p) {
  const PrefillCost cost = predict_prefill_cost(m, pc, n, p);
  std::map<std::string, std::int64_t> out;
  for (const PhaseCost& ph : cost.layer.phases) {
    if (ph.has_collective()) {
      out[std::string(to_string(ph.op)) + "/" + ph.group] += cost.n_layers * ph.comm_bytes;
    }
  }
  if (cost.final_gather_bytes > 0) {
    out["all_gather/tp"] += cost.final_gather_bytes;
  }
  return out;
}

TEST(CostModel, PrefillBytesEqualTheEngineMeasurementsInTheReadme) {
  // README, "Measured results": stories260K, a 117-token prompt, TP 4, the
  // bytes each rank sent in prefill as `flashcomm run --json` reported them.
  const ModelConfig m = preset_config("stories260K");
  const HardwareProfile p = fp32(builtin_profile("h100-sxm"));
  using Bytes = std::map<std::string, std::int64_t>;
  EXPECT_EQ(prefill_bytes(m, layout(4, false, 0), 117, p), (Bytes{{"all_reduce/tp", 449280}}));
  EXPECT_EQ(prefill_bytes(m, layout(4, true, 0), 117, p),
            (Bytes{{"reduce_scatter/tp", 230400}, {"all_gather/tp", 253440}}));
  EXPECT_EQ(
      prefill_bytes(m, layout(4, false, 1), 117, p),
      (Bytes{{"all_reduce/tp", 224640}, {"all_gather/tp", 115200}, {"all_to_all/tp", 28800}}));
  EXPECT_EQ(prefill_bytes(m, layout(4, false, 2), 117, p), (Bytes{{"all_reduce/tp", 224640},
                                                                  {"reduce_scatter/otp", 38400},
                                                                  {"all_gather/tp", 115200},
                                                                  {"all_to_all/odp", 19200}}));
  EXPECT_EQ(
      prefill_bytes(m, layout(4, true, 1), 117, p),
      (Bytes{{"reduce_scatter/tp", 115200}, {"all_gather/tp", 253440}, {"all_to_all/tp", 28800}}));
  EXPECT_EQ(prefill_bytes(m, layout(4, true, 2), 117, p), (Bytes{{"reduce_scatter/tp", 115200},
                                                                 {"reduce_scatter/otp", 38400},
                                                                 {"all_gather/tp", 253440},
                                                                 {"all_to_all/odp", 19200}}));
}

TEST(CostModel, PhasesFollowTheEngineOrderAndKinds) {
  const ModelConfig m = preset_config("llama-3-8b");
  const HardwareProfile p = builtin_profile("h100-sxm");
  const LayerCost layer = predict_layer(m, layout(8, true, 2), 1000, p);
  std::vector<Phase> order;
  double compute = 0.0;
  double comm = 0.0;
  for (const PhaseCost& ph : layer.phases) {
    order.push_back(ph.phase);
    EXPECT_GT(ph.seconds, 0.0) << to_string(ph.phase);
    (kind_of(ph.phase) == PhaseKind::comm ? comm : compute) += ph.seconds;
    EXPECT_EQ(ph.has_collective(), kind_of(ph.phase) == PhaseKind::comm) << to_string(ph.phase);
  }
  EXPECT_EQ(order, (std::vector<Phase>{Phase::attn_norm, Phase::attn_gather, Phase::qkv_proj,
                                       Phase::attention, Phase::o_proj_a2a, Phase::o_proj_gemm,
                                       Phase::o_proj_reduce, Phase::attn_residual, Phase::mlp_norm,
                                       Phase::mlp_gather, Phase::gate_up_proj, Phase::activation,
                                       Phase::down_proj, Phase::mlp_reduce, Phase::mlp_residual}));
  EXPECT_DOUBLE_EQ(layer.compute_s, compute);
  EXPECT_DOUBLE_EQ(layer.comm_s, comm);
  EXPECT_DOUBLE_EQ(layer.total_s, compute + comm);

  // The whole prefill: every layer, plus FlashComm1's final AllGather.
  const PrefillCost prefill = predict_prefill_cost(m, layout(8, true, 2), 1000, p);
  EXPECT_GT(prefill.final_gather_s, 0.0);
  EXPECT_DOUBLE_EQ(predict_prefill(m, layout(8, true, 2), 1000, p),
                   32 * layer.total_s + prefill.final_gather_s);
  EXPECT_EQ(predict_prefill_cost(m, layout(8, false, 2), 1000, p).final_gather_s, 0.0);
}

TEST(CostModel, GemmsAreComputeBoundForLongPromptsAndWeightBoundForShortOnes) {
  const ModelConfig m = preset_config("llama-3-8b");
  const HardwareProfile p = builtin_profile("h100-sxm");
  // qkv: [n, 4096] . [(4 + 2*1)*128, 4096]^T on 8 ranks.
  // find() points into the LayerCost, so each must outlive its PhaseCost*.
  const LayerCost long_prompt = predict_layer(m, layout(8, false, 0), 8192, p);
  const PhaseCost* big = long_prompt.find(Phase::qkv_proj);
  ASSERT_NE(big, nullptr);
  EXPECT_DOUBLE_EQ(big->flops, 2.0 * 8192 * 4096 * 768);
  const LayerCost one_token = predict_layer(m, layout(8, false, 0), 1, p);
  const PhaseCost* one = one_token.find(Phase::qkv_proj);
  ASSERT_NE(one, nullptr);
  EXPECT_NEAR(one->seconds, one->bytes_moved / p.memory_bandwidth_Bps, 1e-12);
  EXPECT_GT(one->bytes_moved / p.memory_bandwidth_Bps, one->flops / p.gemm_flops);
}

// Qwen2's bias add and Qwen3's q/k norm are memory-bound steps inside
// qkv_proj with exact byte counts; every other phase, and every collective,
// stays as it was.
TEST(CostModel, QkvBiasAndQkNormAddExactMemoryTrafficAndNoCommunication) {
  const HardwareProfile p = fp32(builtin_profile("h100-sxm"));
  ModelConfig plain = preset_config("qwen3-32b");
  plain.qk_norm = false;
  ModelConfig bias = plain;
  bias.qkv_bias = true;
  ModelConfig norm = plain;
  norm.qk_norm = true;
  ModelConfig both = bias;
  both.qk_norm = true;
  // TP 8: 8 query heads and 1 KV head of 128 per rank.
  const std::int64_t q_local = 8 * 128;
  const std::int64_t kv_local = 128;
  for (const ParallelConfig& pc : candidate_schemes(8, 1)) {
    for (const int n : {1, 37, 4096}) {
      const LayerCost base = predict_layer(plain, pc, n, p);
      const std::int64_t bias_elems = 2 * n * (q_local + 2 * kv_local) + q_local + 2 * kv_local;
      const std::int64_t norm_elems = 2 * n * (q_local + kv_local) + 2 * 128;
      const std::vector<std::pair<const ModelConfig*, std::int64_t>> cases = {
          {&bias, bias_elems}, {&norm, norm_elems}, {&both, bias_elems + norm_elems}};
      for (const auto& [model, extra] : cases) {
        SCOPED_TRACE(fmt::format("{}, {} tokens, qkv_bias {} qk_norm {}", scheme_name(pc), n,
                                 model->qkv_bias, model->qk_norm));
        const LayerCost got = predict_layer(*model, pc, n, p);
        ASSERT_EQ(got.phases.size(), base.phases.size());
        for (size_t i = 0; i < got.phases.size(); ++i) {
          const PhaseCost& g = got.phases[i];
          const PhaseCost& b = base.phases[i];
          EXPECT_EQ(g.phase, b.phase);
          EXPECT_EQ(g.comm_bytes, b.comm_bytes) << to_string(g.phase);
          EXPECT_EQ(g.flops, b.flops) << to_string(g.phase);
          if (g.phase == Phase::qkv_proj) {
            EXPECT_DOUBLE_EQ(g.bytes_moved - b.bytes_moved, static_cast<double>(extra) * 4);
            EXPECT_NEAR(g.seconds - b.seconds,
                        static_cast<double>(extra) * 4 / p.memory_bandwidth_Bps, 1e-15);
          } else {
            EXPECT_EQ(g.bytes_moved, b.bytes_moved) << to_string(g.phase);
            EXPECT_EQ(g.seconds, b.seconds) << to_string(g.phase);
          }
        }
      }
    }
  }
}

TEST(CostModel, TheBenchFloorNeverExceedsThePrediction) {
  // Rates by rows measured on a noisy machine can beat the large-GEMM rate;
  // the floor then uses the fastest of them.
  const ModelConfig m = preset_config("llama-3-8b");
  HardwareProfile p = builtin_profile("h100-sxm");
  p.gemm_flops_by_rows = {
      {4, 0.5 * p.gemm_flops}, {16, 2.0 * p.gemm_flops}, {64, 3.0 * p.gemm_flops}};
  for (const ParallelConfig& pc : {layout(1, false, 0), layout(8, true, 2), layout(8, false, 1)}) {
    for (int n_tokens : {1, 16, 64, 4096}) {
      SCOPED_TRACE(fmt::format("tp {} n_tokens {}", pc.tp_size, n_tokens));
      const LayerCost cost = predict_layer(m, pc, n_tokens, p);
      const double floor = layer_floor(cost, p, pc);
      EXPECT_GT(floor, 0.0);
      EXPECT_LE(floor, cost.total_s * (1 + 1e-9));
    }
  }
}

TEST(CostModel, OneRankHasNoCollectives) {
  const LayerCost layer = predict_layer(preset_config("llama-3-8b"), layout(1, true, 0), 512,
                                        builtin_profile("a100-sxm"));
  for (const PhaseCost& ph : layer.phases) {
    EXPECT_FALSE(ph.has_collective()) << to_string(ph.phase);
  }
  EXPECT_EQ(layer.comm_s, 0.0);
}

TEST(CostModel, RefusesWhatTheEngineCannotRun) {
  const ModelConfig m = preset_config("llama-3-8b");
  const HardwareProfile p = builtin_profile("h100-sxm");
  EXPECT_THROW(predict_layer(m, layout(3, false, 0), 16, p), ConfigError);
  EXPECT_THROW(predict_layer(m, layout(8, false, 3), 16, p), ConfigError);
  EXPECT_THROW(predict_layer(m, layout(8, false, 0), 0, p), ConfigError);
  EXPECT_THROW(predict_layer(m, layout(8, false, 0), m.seq_len + 1, p), ConfigError);
}

// ---- collective fits -----------------------------------------------------

HardwareProfile two_sizes() {
  HardwareProfile p = builtin_profile("h100-sxm");
  for (auto& [op, fits] : p.collectives) {
    fits = {{2, 1e-5, 1e11}, {8, 2e-5, 2e11}};
  }
  return p;
}

TEST(CostModel, CollectiveTimeUsesTheNearestGroupSizePreferringTheLarger) {
  const HardwareProfile p = two_sizes();
  const CommOp op = CommOp::all_gather;
  EXPECT_EQ(collective_seconds(p, op, 1, 1000000), 0.0);
  EXPECT_DOUBLE_EQ(collective_seconds(p, op, 2, 1000000), 1e-5 + 1e6 / 1e11);
  EXPECT_DOUBLE_EQ(collective_seconds(p, op, 4, 1000000), 1e-5 + 1e6 / 1e11) << "4 is nearer 2";
  EXPECT_DOUBLE_EQ(collective_seconds(p, op, 5, 1000000), 2e-5 + 1e6 / 2e11) << "a tie: larger";
  EXPECT_DOUBLE_EQ(collective_seconds(p, op, 64, 1000000), 2e-5 + 1e6 / 2e11);
}

TEST(CostModel, GroupsSpanningNodesUseTheInterNodeFits) {
  const HardwareProfile p = builtin_profile("ib-cluster");
  ASSERT_EQ(p.ranks_per_node, 8);
  const ModelConfig m = preset_config("deepseek-v3-attn");
  // TP 16, K 2: ODP groups {0..7}, {8..15} stay inside a node; OTP groups
  // {i, i+8} span two, and go over the NICs.
  const LayerCost layer = predict_layer(m, layout(16, false, 2), 4096, p);
  const PhaseCost* a2a = layer.find(Phase::o_proj_a2a);
  const PhaseCost* rs = layer.find(Phase::o_proj_reduce);
  ASSERT_TRUE(a2a != nullptr && rs != nullptr);
  EXPECT_EQ(a2a->group, "odp");
  EXPECT_EQ(rs->group, "otp");
  const double nvlink = collective_seconds(p, CommOp::reduce_scatter, 2, rs->comm_bytes, false);
  const double ib = collective_seconds(p, CommOp::reduce_scatter, 2, rs->comm_bytes, true);
  EXPECT_GT(ib, 4 * nvlink);
  EXPECT_LT(rs->seconds, ib * 1.0000001);
  EXPECT_GT(rs->seconds, ib * 0.9999999);
  // Without a node boundary (h100-sxm has none) the flag changes nothing.
  const HardwareProfile one_node = builtin_profile("h100-sxm");
  EXPECT_EQ(collective_seconds(one_node, CommOp::all_to_all, 8, 1 << 20, true),
            collective_seconds(one_node, CommOp::all_to_all, 8, 1 << 20, false));
}

// Whether some group of these ranks' kind spans nodes, from layout.hpp's
// own group lists.
bool any_spans(const std::vector<std::vector<int>>& groups, int per_node) {
  for (const std::vector<int>& g : groups) {
    for (int r : g) {
      if (r / per_node != g.front() / per_node) {
        return true;
      }
    }
  }
  return false;
}

TEST(CostModel, NodeCrossingsMatchTheLayoutsGroups) {
  // Nodes of 6 ranks, so that TP groups of 4 straddle node boundaries in
  // some DP replicas.
  HardwareProfile p = builtin_profile("ib-cluster");
  p.ranks_per_node = 6;
  const ModelConfig m = test::random_test_configs()[1];  // 8 heads, 1 KV head
  int crossing = 0;
  for (int dp : {1, 2, 3}) {
    for (int tp : {2, 4, 8}) {
      for (const ParallelConfig& pc : candidate_schemes(tp, dp)) {
        std::vector<std::vector<int>> tp_groups;
        std::vector<std::vector<int>> odp_groups;
        std::vector<std::vector<int>> otp_groups;
        for (int d = 0; d < dp; ++d) {
          tp_groups.push_back(tp_group_ranks(pc, d));
          for (int j = 0; pc.flashcomm2_on() && j < pc.otp_size(); ++j) {
            odp_groups.push_back(odp_group_ranks(pc, d, j));
          }
          for (int i = 0; pc.flashcomm2_on() && i < pc.odp_size(); ++i) {
            otp_groups.push_back(otp_group_ranks(pc, d, i));
          }
        }
        const std::map<std::string, bool> spans = {{"tp", any_spans(tp_groups, 6)},
                                                   {"odp", any_spans(odp_groups, 6)},
                                                   {"otp", any_spans(otp_groups, 6)}};
        for (const PhaseCost& ph : predict_layer(m, pc, 37, p).phases) {
          if (!ph.has_collective()) {
            continue;
          }
          // The group's size: K for OTP, G for the AlltoAll, else TP.
          const int size = ph.group == "otp"               ? pc.otp_size()
                           : ph.phase == Phase::o_proj_a2a ? pc.odp_size()
                                                           : tp;
          // K = 1's AlltoAll runs on the TP group, which is then the ODP group.
          const bool crosses = spans.at(ph.phase == Phase::o_proj_a2a ? "odp" : ph.group);
          crossing += crosses ? 1 : 0;
          const double comm = collective_seconds(p, ph.op, size, ph.comm_bytes, crosses);
          EXPECT_LE(comm, ph.seconds * (1 + 1e-12))
              << scheme_name(pc) << " dp " << dp << " " << to_string(ph.phase);
          // The copies around a collective are tiny next to a NIC's latency.
          EXPECT_GT(comm, ph.seconds * 0.99)
              << scheme_name(pc) << " dp " << dp << " " << to_string(ph.phase);
        }
      }
    }
  }
  EXPECT_GT(crossing, 0) << "no case crossed a node boundary";
}

// ---- (d), (e) profiles ---------------------------------------------------------

void expect_same(const HardwareProfile& a, const HardwareProfile& b) {
  EXPECT_EQ(a.name, b.name);
  EXPECT_EQ(a.description, b.description);
  EXPECT_EQ(a.source, b.source);
  EXPECT_EQ(a.gemm_flops, b.gemm_flops);
  EXPECT_EQ(a.memory_bandwidth_Bps, b.memory_bandwidth_Bps);
  EXPECT_EQ(a.activation_bytes, b.activation_bytes);
  EXPECT_EQ(a.ranks_per_node, b.ranks_per_node);
  EXPECT_EQ(a.overlap_efficiency, b.overlap_efficiency);
  EXPECT_EQ(a.exp_per_s, b.exp_per_s);
  EXPECT_EQ(a.gemm_flops_by_rows, b.gemm_flops_by_rows);
  for (const auto* tables : {&a.collectives, &a.cross_node_collectives}) {
    const auto& other = tables == &a.collectives ? b.collectives : b.cross_node_collectives;
    ASSERT_EQ(tables->size(), other.size());
    for (const auto& [op, fits] : *tables) {
      ASSERT_EQ(other.count(op), 1U) << to_string(op);
      const auto& theirs = other.at(op);
      ASSERT_EQ(fits.size(), theirs.size()) << to_string(op);
      for (size_t i = 0; i < fits.size(); ++i) {
        EXPECT_EQ(fits[i].group_size, theirs[i].group_size);
        EXPECT_EQ(fits[i].latency_s, theirs[i].latency_s);
        EXPECT_EQ(fits[i].bandwidth_Bps, theirs[i].bandwidth_Bps);
      }
    }
  }
}

TEST(Profiles, EveryBuiltInIsValidDocumentedAndRoundTrips) {
  const std::vector<std::string> names = builtin_profile_names();
  EXPECT_EQ(std::set<std::string>(names.begin(), names.end()),
            (std::set<std::string>{"ascend-910b", "h100-sxm", "h200-sxm", "a100-sxm", "l40-pcie",
                                   "ib-cluster", "cpu-openmpi"}));
  const test::TempDir dir("profiles");
  for (const std::string& name : names) {
    const HardwareProfile p = builtin_profile(name);
    EXPECT_EQ(p.name, name);
    EXPECT_FALSE(p.source.empty()) << name;
    EXPECT_FALSE(p.description.empty()) << name;
    EXPECT_EQ(p.activation_bytes, name == "cpu-openmpi" ? 4 : 2)
        << name << " runs bf16 (fp32 on the CPU)";
    EXPECT_NO_THROW(check_profile(p, name));
    EXPECT_EQ(p.collectives.size(), 4U) << name;
    const std::string path = dir.file(name + ".json");
    save_profile(p, path);
    expect_same(load_profile(path), p);
    expect_same(resolve_profile(name), p);
    expect_same(resolve_profile(path), p);
  }
  EXPECT_THROW(builtin_profile("tpu-v9"), ConfigError);
}

TEST(Profiles, BuiltInNumbersFollowTheirDatasheets) {
  // 0.7 x peak dense bf16 and 0.8 x memory and link bandwidth (profiles.cpp).
  const HardwareProfile h100 = builtin_profile("h100-sxm");
  EXPECT_DOUBLE_EQ(h100.gemm_flops, 0.7 * 989.4e12);
  EXPECT_DOUBLE_EQ(h100.memory_bandwidth_Bps, 0.8 * 3.35e12);
  EXPECT_DOUBLE_EQ(h100.collectives.at(CommOp::all_reduce).back().bandwidth_Bps, 0.8 * 450e9);
  EXPECT_DOUBLE_EQ(builtin_profile("h200-sxm").memory_bandwidth_Bps, 0.8 * 4.8e12);
  EXPECT_DOUBLE_EQ(builtin_profile("a100-sxm").gemm_flops, 0.7 * 312e12);
  // PCIe is an order of magnitude below NVLink; HCCS's full mesh grows with the group.
  const HardwareProfile l40 = builtin_profile("l40-pcie");
  EXPECT_LT(l40.collectives.at(CommOp::all_reduce).front().bandwidth_Bps, 30e9);
  const HardwareProfile ascend = builtin_profile("ascend-910b");
  const auto& hccs = ascend.collectives.at(CommOp::all_to_all);
  EXPECT_LT(hccs.front().bandwidth_Bps, hccs.back().bandwidth_Bps);
  // Across nodes an AlltoAll is bound by one NIC per GPU, rings by eight.
  const HardwareProfile ib = builtin_profile("ib-cluster");
  EXPECT_NEAR(collective_seconds(ib, CommOp::all_to_all, 16, 75'000'000'000) - 30e-6, 1.0, 1e-9);
  EXPECT_NEAR(collective_seconds(ib, CommOp::all_gather, 16, 320'000'000'000) - 25e-6, 1.0, 1e-9);
}

void write(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

// A valid profile's JSON text, for the bad-profile tests to break.
std::string good_json() {
  return R"({"name": "mine", "description": "a test", "source": "made up",
             "gemm_flops": 1e12, "memory_bandwidth_Bps": 1e11, "activation_bytes": 4,
             "collectives": {
               "all_reduce": [{"group_size": 2, "latency_s": 1e-5, "bandwidth_Bps": 1e10}],
               "reduce_scatter": [{"group_size": 2, "latency_s": 1e-5, "bandwidth_Bps": 1e10}],
               "all_gather": [{"group_size": 2, "latency_s": 1e-5, "bandwidth_Bps": 1e10}],
               "all_to_all": [{"group_size": 2, "latency_s": 1e-5, "bandwidth_Bps": 1e10}]}})";
}

std::string replaced(std::string text, const std::string& from, const std::string& to) {
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return at == std::string::npos ? text : text.replace(at, from.size(), to);
}

// Loading `text` throws FormatError naming the file and containing `message`.
void expect_bad_profile(const std::string& text, const std::string& message) {
  const test::TempDir dir("badprofile");
  const std::string path = dir.file("bad.json");
  write(path, text);
  try {
    load_profile(path);
    ADD_FAILURE() << "loaded without error; expected: " << message;
  } catch (const FormatError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(path), std::string::npos) << what;
    EXPECT_NE(what.find(message), std::string::npos) << what;
  }
}

TEST(Profiles, JsonLoadsAndBadProfilesAreRefusedWithTheField) {
  const test::TempDir dir("goodprofile");
  write(dir.file("good.json"), good_json());
  const HardwareProfile p = load_profile(dir.file("good.json"));
  EXPECT_EQ(p.name, "mine");
  EXPECT_EQ(p.activation_bytes, 4);
  EXPECT_DOUBLE_EQ(collective_seconds(p, CommOp::all_reduce, 2, 1'000'000), 1e-5 + 1e-4);

  const std::string g = good_json();
  expect_bad_profile("{not json", "not valid JSON");
  expect_bad_profile("[1, 2]", "is not a JSON object");
  expect_bad_profile(replaced(g, R"("gemm_flops": 1e12,)", ""), "gemm_flops is missing");
  expect_bad_profile(replaced(g, "1e12", "0"), "gemm_flops is 0, expected a positive");
  expect_bad_profile(replaced(g, "1e11", R"("fast")"),
                     R"(memory_bandwidth_Bps is "fast", expected a number)");
  expect_bad_profile(replaced(g, R"("activation_bytes": 4)", R"("activation_bytes": 2.5)"),
                     "activation_bytes is 2.5, expected an integer");
  expect_bad_profile(replaced(g, "gemm_flops", "gemm_flop"), "gemm_flop is not a field");
  expect_bad_profile(replaced(g, R"("all_reduce")", R"("allreduce")"),
                     "collectives.allreduce is not a collective");
  expect_bad_profile(replaced(g, R"("all_to_all")", R"("all_reduce")"),
                     "collectives.all_to_all is missing");
  expect_bad_profile(replaced(g, R"("bandwidth_Bps": 1e10}],
               "reduce)",
                              R"("bandwidth_Bps": -1}],
               "reduce)"),
                     "collectives.all_reduce[0].bandwidth_Bps is -1, expected a positive value");
  expect_bad_profile(replaced(g, R"("group_size": 2)", R"("group_size": 1)"),
                     "collectives.all_reduce[0].group_size is 1, expected at least 2");
  expect_bad_profile(replaced(g, R"("latency_s": 1e-5)", R"("latency": 1e-5)"),
                     "collectives.all_reduce[0].latency is not a field");
  expect_bad_profile(replaced(g, R"("name": "mine",)", R"("name": "mine", "ranks_per_node": 8,)"),
                     "cross_node_collectives is missing (required when ranks_per_node > 0)");
  expect_bad_profile(replaced(g, R"("name": "mine",)", R"("name": "mine", "calibration": [],)"),
                     "calibration is not an object");
  // calibrate's measurements beside the profile are kept out of the cost model.
  write(dir.file("calibrated.json"),
        replaced(g, R"("name": "mine",)", R"("name": "mine", "calibration": {"samples": {}},)"));
  EXPECT_EQ(load_profile(dir.file("calibrated.json")).name, "mine");
  EXPECT_THROW(load_profile(dir.file("absent.json")), FormatError);
}

TEST(Profiles, ResolveNamesABuiltInOrAFile) {
  EXPECT_EQ(resolve_profile("l40-pcie").name, "l40-pcie");
  try {
    resolve_profile("/no/such/profile.json");
    ADD_FAILURE() << "resolved a missing file";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("h100-sxm"), std::string::npos) << e.what();
  }
}

TEST(Presets, ShapesOfThePublishedConfigs) {
  EXPECT_EQ(preset_names().size(), 6U);
  const ModelConfig qwen = preset_config("qwen3-32b");
  EXPECT_EQ(qwen.q_dim(), 8192);
  EXPECT_EQ(qwen.d_model, 5120);
  EXPECT_TRUE(qwen.qk_norm) << "Qwen3 normalises q and k per head";
  EXPECT_FALSE(qwen.qkv_bias);
  const ModelConfig qwen2 = preset_config("qwen2-7b");
  EXPECT_EQ(qwen2.q_dim(), 3584);
  EXPECT_EQ(qwen2.n_kv_heads, 4);
  EXPECT_TRUE(qwen2.qkv_bias) << "Qwen2's q, k, v projections have biases";
  EXPECT_FALSE(qwen2.qk_norm);
  for (const char* llama : {"llama-3-8b", "llama-3-70b", "stories260K"}) {
    EXPECT_FALSE(preset_config(llama).qkv_bias || preset_config(llama).qk_norm) << llama;
  }
  const ModelConfig ds = preset_config("deepseek-v3-attn");
  EXPECT_EQ(ds.q_dim(), 16384);
  EXPECT_EQ(ds.n_layers, 61);
  EXPECT_FALSE(ds.shared_classifier);
  const ModelConfig stories = preset_config("stories260K");
  const ModelConfig checkpoint = read_llama2c_config(test::stories_checkpoint());
  EXPECT_EQ(stories.d_model, checkpoint.d_model);
  EXPECT_EQ(stories.hidden_dim, checkpoint.hidden_dim);
  EXPECT_EQ(stories.n_layers, checkpoint.n_layers);
  EXPECT_EQ(stories.n_heads, checkpoint.n_heads);
  EXPECT_EQ(stories.n_kv_heads, checkpoint.n_kv_heads);
  EXPECT_EQ(stories.head_dim, checkpoint.head_dim);
  EXPECT_EQ(stories.vocab_size, checkpoint.vocab_size);
  EXPECT_EQ(stories.seq_len, checkpoint.seq_len);
  try {
    preset_config("llama-9");
    ADD_FAILURE() << "an unknown preset was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("llama-3-70b"), std::string::npos) << e.what();
  }
}

// ---- (f) planner -----------------------------------------------------------------

PlanRequest request(const std::string& preset, const std::string& hardware, int tp,
                    std::vector<int> tokens) {
  PlanRequest r;
  r.model = preset_config(preset);
  r.profile = builtin_profile(hardware);
  r.tp_size = tp;
  r.token_counts = std::move(tokens);
  return r;
}

const SchemeEstimate& recommended(const TokenPlan& row) {
  return row.schemes.at(static_cast<size_t>(row.recommended));
}

const SchemeEstimate& scheme(const TokenPlan& row, bool fc1, int k) {
  for (const SchemeEstimate& e : row.schemes) {
    if (e.parallel.flashcomm1 == fc1 && e.parallel.flashcomm2 == k) {
      return e;
    }
  }
  throw std::runtime_error("no such scheme");
}

TEST(Planner, CandidatesAreEveryValidScheme) {
  std::vector<std::string> names;
  for (const ParallelConfig& pc : candidate_schemes(8, 1)) {
    names.push_back(scheme_name(pc));
  }
  EXPECT_EQ(names,
            (std::vector<std::string>{"plain TP", "FlashComm1", "FlashComm2 K=1", "FlashComm2 K=2",
                                      "FlashComm2 K=4", "FlashComm1+FlashComm2 K=1",
                                      "FlashComm1+FlashComm2 K=2", "FlashComm1+FlashComm2 K=4"}));
  EXPECT_EQ(candidate_schemes(1, 2).size(), 1U);
  EXPECT_EQ(candidate_schemes(6, 1).size(), 2U + 2U * 3U);  // K = 1, 2, 3
}

TEST(Planner, RecommendationHonoursTheMemoryBudget) {
  // DeepSeek-V3 attention at TP 8: K=1 costs 11956 MiB more per rank, K=2
  // 5124 MiB, K=4 1708 MiB.
  PlanRequest r = request("deepseek-v3-attn", "h100-sxm", 8, {16384});
  const Plan unlimited = plan_prefill(r);
  const TokenPlan& free_row = unlimited.rows.at(0);
  EXPECT_EQ(recommended(free_row).parallel.flashcomm2, 1) << recommended(free_row).name;
  for (const SchemeEstimate& e : free_row.schemes) {
    EXPECT_TRUE(e.fits_budget);
    EXPECT_LE(recommended(free_row).prefill_s, e.prefill_s) << e.name;
  }

  r.memory_budget_gib = 6.0;
  const Plan six_plan = plan_prefill(r);
  const TokenPlan& six = six_plan.rows.at(0);
  EXPECT_FALSE(scheme(six, true, 1).fits_budget);
  EXPECT_FALSE(scheme(six, false, 1).fits_budget);
  EXPECT_TRUE(scheme(six, true, 2).fits_budget);
  EXPECT_TRUE(recommended(six).fits_budget);
  EXPECT_EQ(recommended(six).parallel.flashcomm2, 2) << recommended(six).name;
  EXPECT_LE(recommended(six).extra_o_proj_bytes, 6.0 * 1024 * 1024 * 1024);

  r.memory_budget_gib = 0.0;
  const Plan none = plan_prefill(r);
  EXPECT_FALSE(recommended(none.rows.at(0)).parallel.flashcomm2_on());
  EXPECT_FALSE(none.break_even.has_value()) << "no FlashComm2 variant fits";
}

TEST(Planner, OneRankHasOnlyPlainTp) {
  const Plan plan = plan_prefill(request("llama-3-8b", "h100-sxm", 1, {1, 512, 8192}));
  ASSERT_EQ(plan.rows.size(), 3U);
  for (const TokenPlan& row : plan.rows) {
    ASSERT_EQ(row.schemes.size(), 1U);
    EXPECT_EQ(row.schemes[0].name, "plain TP");
    EXPECT_EQ(row.recommended, 0);
  }
  EXPECT_FALSE(plan.break_even.has_value());
}

// Whether the best FlashComm2 variant beats plain TP and FlashComm1 at n.
bool flashcomm2_wins_at(const PlanRequest& base, int n) {
  PlanRequest r = base;
  r.token_counts = {n};
  const TokenPlan row = plan_prefill(r).rows.at(0);
  double baseline = std::min(scheme(row, false, 0).prefill_s, scheme(row, true, 0).prefill_s);
  double best = 1e30;
  for (const SchemeEstimate& e : row.schemes) {
    if (e.parallel.flashcomm2_on()) {
      best = std::min(best, e.prefill_s);
    }
  }
  return best < baseline;
}

TEST(Planner, BreakEvenIsWhereFlashComm2StartsWinningForGood) {
  const PlanRequest r = request("llama-3-70b", "l40-pcie", 8, {256, 8192});
  const Plan plan = plan_prefill(r);
  ASSERT_TRUE(plan.break_even.has_value());
  EXPECT_EQ(plan.break_even_searched_to, 8192);
  const int be = *plan.break_even;
  EXPECT_GT(be, 1) << "with one token the latencies of extra collectives dominate";
  EXPECT_LT(be, 8192);
  EXPECT_FALSE(flashcomm2_wins_at(r, be - 1));
  for (int n = be; n < be + 64; ++n) {
    EXPECT_TRUE(flashcomm2_wins_at(r, n)) << n;
  }
  for (int n = be; n <= 8192; n *= 2) {
    EXPECT_TRUE(flashcomm2_wins_at(r, n)) << n;
  }
  // Searching less far does not move a break-even inside the range.
  EXPECT_EQ(plan_prefill(request("llama-3-70b", "l40-pcie", 8, {be + 100})).break_even, be);

  // FlashComm2 saves bytes on the link: the slower the link, the sooner the
  // saving pays for its extra collective's latency and the wider o_proj.
  const Plan nvlink = plan_prefill(request("llama-3-70b", "h100-sxm", 8, {8192}));
  ASSERT_TRUE(nvlink.break_even.has_value());
  EXPECT_LT(be, *nvlink.break_even);
}

TEST(Planner, FlashComm2BeatsFlashComm1ForDeepSeekAtTp8OnH100) {
  // o_proj's AlltoAll moves q_dim/(TP*d_model) = 2/7 of FlashComm1's
  // ReduceScatter at the same GEMM FLOPs, so FlashComm1+FlashComm2 wins for
  // long prompts. FlashComm2 without FlashComm1 still loses to FlashComm1:
  // its AllGather after o_proj costs what the saving gains, and its norms
  // and residual adds run on every token instead of 1/TP of them.
  const Plan plan = plan_prefill(request("deepseek-v3-attn", "h100-sxm", 8, {8192, 16384, 32768}));
  for (const TokenPlan& row : plan.rows) {
    const SchemeEstimate& fc1 = scheme(row, true, 0);
    EXPECT_LT(scheme(row, true, 1).prefill_s, fc1.prefill_s) << row.n_tokens;
    EXPECT_LT(scheme(row, true, 2).prefill_s, fc1.prefill_s) << row.n_tokens;
    EXPECT_GT(scheme(row, false, 1).prefill_s, fc1.prefill_s) << row.n_tokens;
    EXPECT_LT(scheme(row, false, 1).prefill_s, scheme(row, false, 0).prefill_s) << row.n_tokens;
    EXPECT_TRUE(recommended(row).parallel.flashcomm2_on()) << row.n_tokens;
  }
  ASSERT_TRUE(plan.break_even.has_value());
  EXPECT_LT(*plan.break_even, 8192);
}

TEST(Planner, RefusesBadRequests) {
  EXPECT_THROW(plan_prefill(request("llama-3-8b", "h100-sxm", 3, {16})), ConfigError);
  EXPECT_THROW(plan_prefill(request("llama-3-8b", "h100-sxm", 8, {0})), ConfigError);
  EXPECT_THROW(plan_prefill(request("llama-3-8b", "h100-sxm", 8, {8193})), ConfigError);
  EXPECT_THROW(plan_prefill(request("llama-3-8b", "h100-sxm", 8, {})), ConfigError);
  PlanRequest r = request("llama-3-8b", "h100-sxm", 8, {16});
  r.memory_budget_gib = -1.0;
  EXPECT_THROW(plan_prefill(r), ConfigError);
  r.memory_budget_gib.reset();
  r.weight_bytes = 0;
  EXPECT_THROW(plan_prefill(r), ConfigError);
}

}  // namespace
}  // namespace flashcomm

namespace flashcomm {
namespace {

TEST(Profiles, GemmRateByRowsInterpolatesAndRoundTrips) {
  HardwareProfile p = builtin_profile("l40-pcie");
  EXPECT_DOUBLE_EQ(gemm_rate(p, 7.0), p.gemm_flops) << "no table: the one rate";
  p.gemm_flops_by_rows = {{4, 1e9}, {16, 3e9}, {256, 9e9}};
  EXPECT_DOUBLE_EQ(gemm_rate(p, 1.0), 1e9) << "held at the small end";
  EXPECT_DOUBLE_EQ(gemm_rate(p, 4.0), 1e9);
  EXPECT_NEAR(gemm_rate(p, 8.0), 2e9, 1e-3) << "halfway in log(rows)";
  EXPECT_NEAR(gemm_rate(p, 64.0), 6e9, 1e-3);
  EXPECT_DOUBLE_EQ(gemm_rate(p, 4096.0), 9e9) << "held at the large end";
  p.exp_per_s = 2e8;
  const test::TempDir dir("gemm-rows");
  save_profile(p, dir.file("p.json"));
  const HardwareProfile back = load_profile(dir.file("p.json"));
  EXPECT_EQ(back.gemm_flops_by_rows, p.gemm_flops_by_rows);
  EXPECT_DOUBLE_EQ(back.exp_per_s, p.exp_per_s);

  // Fewer rows, slower GEMM: a 16-token prefill costs more per FLOP.
  const ModelConfig m = preset_config("llama-3-8b");
  ParallelConfig pc;
  const double t16 = predict_layer(m, pc, 16, p).find(Phase::qkv_proj)->seconds;
  const double t256 = predict_layer(m, pc, 256, p).find(Phase::qkv_proj)->seconds;
  EXPECT_GT(t16 / 16.0, t256 / 256.0);

  std::ofstream bad(dir.file("bad.json"));
  nlohmann::json j = nlohmann::json::parse(std::ifstream(dir.file("p.json")));
  j["gemm_flops_by_rows"] = {{16, 1e9}, {4, 2e9}};
  bad << j.dump();
  bad.close();
  EXPECT_THROW(load_profile(dir.file("bad.json")), FormatError);
}

}  // namespace
}  // namespace flashcomm

namespace flashcomm {
namespace {

TEST(Presets, AnyShapeFromAString) {
  const auto m =
      named_model("shape:d_model=4096,n_heads=32,n_kv_heads=8,hidden_dim=14336,n_layers=2");
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->d_model, 4096);
  EXPECT_EQ(m->head_dim, 128) << "d_model / n_heads";
  EXPECT_EQ(m->n_layers, 2);
  EXPECT_EQ(m->vocab_size, 32000);
  const auto q = named_model(
      "shape:d_model=7168,n_heads=128,head_dim=128,n_kv_heads=128,"
      "hidden_dim=18432,n_layers=1,seq_len=65536");
  ASSERT_TRUE(q.has_value());
  EXPECT_EQ(q->q_dim(), 16384);
  EXPECT_EQ(q->seq_len, 65536);
  EXPECT_EQ(named_model("llama-3-8b")->d_model, 4096);
  EXPECT_FALSE(named_model("/some/file.bin").has_value());
  EXPECT_FALSE(m->qkv_bias || m->qk_norm) << "the flags default to off";
  const auto flagged = named_model(
      "shape:d_model=64,n_heads=4,n_kv_heads=2,hidden_dim=96,n_layers=1,qkv_bias=1,qk_norm=1");
  ASSERT_TRUE(flagged.has_value());
  EXPECT_TRUE(flagged->qkv_bias);
  EXPECT_TRUE(flagged->qk_norm);
  const auto off = named_model(
      "shape:d_model=64,n_heads=4,n_kv_heads=2,hidden_dim=96,n_layers=1,qkv_bias=0,qk_norm=1");
  ASSERT_TRUE(off.has_value());
  EXPECT_FALSE(off->qkv_bias);
  EXPECT_TRUE(off->qk_norm);
  try {
    named_model("shape:d_model=64,n_heads=4,n_kv_heads=2,hidden_dim=96,n_layers=1,qk_norm=yes");
    ADD_FAILURE() << "qk_norm=yes was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("qk_norm=yes is not 0 or 1"), std::string::npos)
        << e.what();
  }
  for (const char* bad : {"shape:d_model=4096", "shape:d_model=x,n_heads=2", "shape:width=3",
                          "shape:d_model=64,n_heads=4,n_kv_heads=2,hidden_dim=96,n_layers=1,"
                          "qkv_bias=2",
                          "shape:d_model=64,n_heads=4,n_kv_heads=2,hidden_dim=96,n_layers=1,"
                          "qkv_bias=",
                          "shape:d_model=10,n_heads=3,n_kv_heads=1,hidden_dim=4,n_layers=1",
                          "shape:d_model=64,n_heads=8,n_kv_heads=3,hidden_dim=4,n_layers=1"}) {
    EXPECT_THROW(named_model(bad), ConfigError) << bad;
  }
}

}  // namespace
}  // namespace flashcomm

// ---- (g) payload formats, overlap, FlashComm2 for down_proj -------------------

namespace flashcomm {
namespace {

// Every variant candidate_schemes() can list, C = 3 for overlap.
CandidateOptions every_variant() {
  CandidateOptions o;
  o.int8 = true;
  o.bf16 = true;
  o.overlap_chunks = {3};
  o.flashcomm2_mlp = true;
  return o;
}

// (op, group, group size, bytes, calls) of one phase's collectives.
using Call = std::tuple<CommOp, std::string, int, std::int64_t, int>;

// Bytes on the wire of `rows` token rows of `cols` floats (layout.hpp and
// the engine's wire formats): int8 rows of cols bytes plus a 4-byte scale
// for AllGather and AlltoAll; 2-byte elements under bf16; else 4 bytes.
std::int64_t wire(const ParallelConfig& pc, CommOp op, std::int64_t rows, std::int64_t cols) {
  const bool moves = op == CommOp::all_gather || op == CommOp::all_to_all;
  if (moves && pc.comm_quant == CommQuant::int8) {
    return rows * (cols + 4);
  }
  return rows * cols * (pc.comm_dtype == CommDtype::bf16 ? 2 : 4);
}

// The collectives of one fp32 layer under any ParallelConfig, from the
// engine's buffers: overlap splits an overlapped pair's collective into
// min(C, ceil(n_slice / 64)) calls, one run of whole 64-row panels each,
// whose bytes add up to the unsplit one's.
std::map<Phase, Call> expected_calls(const ModelConfig& m, const ParallelConfig& pc, int n) {
  const int tp = pc.tp_size;
  const std::int64_t np = std::int64_t{(n + tp - 1) / tp} * tp;
  const std::int64_t ns = np / tp;
  const std::int64_t d = m.d_model;
  const std::int64_t q_local = std::int64_t{m.n_heads} / tp * m.head_dim;
  const std::int64_t hid = m.hidden_dim / tp;
  const std::int64_t panels = (ns + 63) / 64;
  const int chunks = static_cast<int>(std::min<std::int64_t>(pc.overlap_chunks, panels));
  std::map<Phase, Call> out;
  if (tp == 1) {
    return out;
  }
  const auto call = [&](CommOp op, const std::string& group, int size, std::int64_t rows,
                        std::int64_t cols, int calls) {
    return Call{op, group, size, formula_bytes(op, size, wire(pc, op, rows, cols)), calls};
  };
  const auto reduction = [&](Phase phase) {
    out[phase] = pc.flashcomm1 ? call(CommOp::reduce_scatter, "tp", tp, np, d, 1)
                               : call(CommOp::all_reduce, "tp", tp, n, d, 1);
  };
  // o_proj (in = q_local per rank) or down_proj (in = hid per rank).
  const auto flashcomm2 = [&](int k, std::int64_t in, Phase a2a, Phase reduce, Phase gather) {
    out[a2a] = call(CommOp::all_to_all, k == 1 ? "tp" : "odp", tp / k, np, in, chunks);
    if (k > 1) {
      out[reduce] = call(CommOp::reduce_scatter, "otp", k, k * ns, d, 1);
    }
    if (!pc.flashcomm1) {
      out[gather] = call(CommOp::all_gather, "tp", tp, np, d, 1);
    }
  };
  if (pc.flashcomm1) {
    out[Phase::attn_gather] = call(CommOp::all_gather, "tp", tp, np, d, chunks);
    out[Phase::mlp_gather] = call(CommOp::all_gather, "tp", tp, np, d, chunks);
  }
  if (pc.flashcomm2_on()) {
    flashcomm2(pc.flashcomm2, q_local, Phase::o_proj_a2a, Phase::o_proj_reduce,
               Phase::o_proj_gather);
  } else {
    reduction(Phase::o_proj_reduce);
  }
  if (pc.flashcomm2_mlp_on()) {
    flashcomm2(pc.flashcomm2_mlp, hid, Phase::mlp_a2a, Phase::mlp_reduce, Phase::mlp_out_gather);
  } else {
    reduction(Phase::mlp_reduce);
  }
  return out;
}

std::map<Phase, Call> predicted_calls(const LayerCost& layer) {
  std::map<Phase, Call> out;
  for (const PhaseCost& p : layer.phases) {
    if (p.has_collective()) {
      out[p.phase] = {p.op, p.group, p.group_size, p.comm_bytes, p.calls};
    }
  }
  return out;
}

TEST(CostModel, VariantBytesEqualTheEngineFormulas) {
  const HardwareProfile p = fp32(builtin_profile("h100-sxm"));
  const std::vector<ModelConfig> randoms = test::random_test_configs();
  struct Case {
    ModelConfig model;
    int tp;
    std::vector<int> tokens;
  };
  const std::vector<Case> cases = {
      // n_slice 30, 1, 2, 4: one panel, so one call whatever C.
      {preset_config("stories260K"), 4, {117, 1, 5, 13}},
      // n_slice 64 (one panel), 65 and 100 (two panels: 2 calls at C = 3).
      {preset_config("stories260K"), 4, {256, 257, 400}},
      // n_slice 5, and 250 (four panels: 3 calls of 2, 1 and 1 panels).
      {preset_config("stories260K"), 2, {9, 500}},
      {randoms[0], 6, {1, 13}},
      {randoms[1], 8, {3, 64}},
      {preset_config("qwen3-32b"), 8, {4097}},
  };
  int checked = 0;
  for (const Case& c : cases) {
    for (const ParallelConfig& pc : candidate_schemes(c.tp, 1, every_variant())) {
      for (int n : c.tokens) {
        SCOPED_TRACE(fmt::format("{} at TP {}, {} tokens, d_model {}", scheme_name(pc), c.tp, n,
                                 c.model.d_model));
        const PrefillCost cost = predict_prefill_cost(c.model, pc, n, p);
        EXPECT_EQ(predicted_calls(cost.layer), expected_calls(c.model, pc, n));
        // FlashComm1's final AllGather, [n_padded, d] out, never overlapped.
        const std::int64_t np = std::int64_t{(n + c.tp - 1) / c.tp} * c.tp;
        EXPECT_EQ(cost.final_gather_bytes,
                  pc.flashcomm1 ? formula_bytes(CommOp::all_gather, c.tp,
                                                wire(pc, CommOp::all_gather, np, c.model.d_model))
                                : 0);
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 1000);
}

TEST(CostModel, VariantBytesByHand) {
  // stories260K (d_model 64, 8 heads of 8, hidden 172) at TP 4, 117 tokens:
  // n_padded 120, n_slice 30; per rank q_local 16, hid 43.
  const ModelConfig m = preset_config("stories260K");
  const HardwareProfile p = fp32(builtin_profile("h100-sxm"));
  const auto bytes = [&](ParallelConfig pc, Phase phase) {
    const LayerCost layer = predict_layer(m, pc, 117, p);
    const PhaseCost* ph = layer.find(phase);
    return ph == nullptr ? std::int64_t{-1} : ph->comm_bytes;
  };
  ParallelConfig fc1 = layout(4, true, 0);
  fc1.comm_quant = CommQuant::int8;
  EXPECT_EQ(bytes(fc1, Phase::attn_gather), 6120) << "3/4 * 120 rows * (64 + 4)";
  EXPECT_EQ(bytes(fc1, Phase::o_proj_reduce), 23040) << "reductions stay f32: 3/4 * 120*64*4";
  fc1.comm_dtype = CommDtype::bf16;
  EXPECT_EQ(bytes(fc1, Phase::attn_gather), 6120) << "int8 wins over bf16";
  EXPECT_EQ(bytes(fc1, Phase::o_proj_reduce), 11520) << "3/4 * 120*64*2";

  ParallelConfig plain = layout(4, false, 0);
  plain.comm_dtype = CommDtype::bf16;
  EXPECT_EQ(bytes(plain, Phase::mlp_reduce), 22464) << "2 * 3/4 * 117*64*2";

  ParallelConfig fc2 = layout(4, false, 2);
  fc2.comm_quant = CommQuant::int8;
  EXPECT_EQ(bytes(fc2, Phase::o_proj_a2a), 1200) << "1/2 * 120 rows * (16 + 4), over ODP of 2";

  ParallelConfig down = layout(4, false, 0);
  down.flashcomm2_mlp = 2;
  EXPECT_EQ(bytes(down, Phase::mlp_a2a), 10320) << "1/2 * 120*43*4 over ODP of 2";
  EXPECT_EQ(bytes(down, Phase::mlp_reduce), 7680) << "1/2 * (2*30)*64*4 over OTP of 2";
  EXPECT_EQ(bytes(down, Phase::mlp_out_gather), 23040) << "3/4 * 120*64*4 over TP";
  down.comm_quant = CommQuant::int8;
  EXPECT_EQ(bytes(down, Phase::mlp_a2a), 2820) << "1/2 * 120 * (43 + 4)";
  EXPECT_EQ(bytes(down, Phase::mlp_out_gather), 6120) << "3/4 * 120 * (64 + 4)";
  EXPECT_EQ(bytes(down, Phase::mlp_reduce), 7680);
}

TEST(CostModel, DownProjFlashComm2RunsTheRewrittenShapes) {
  const ModelConfig m = preset_config("llama-3-8b");  // d 4096, hidden 14336, 32 heads
  const HardwareProfile p = builtin_profile("h100-sxm");
  ParallelConfig pc = layout(8, true, 2);
  pc.flashcomm2_mlp = 4;
  const LayerCost layer = predict_layer(m, pc, 1000, p);
  std::vector<Phase> order;
  for (const PhaseCost& ph : layer.phases) {
    order.push_back(ph.phase);
  }
  EXPECT_EQ(order,
            (std::vector<Phase>{
                Phase::attn_norm, Phase::attn_gather, Phase::qkv_proj, Phase::attention,
                Phase::o_proj_a2a, Phase::o_proj_gemm, Phase::o_proj_reduce, Phase::attn_residual,
                Phase::mlp_norm, Phase::mlp_gather, Phase::gate_up_proj, Phase::activation,
                Phase::mlp_a2a, Phase::down_proj, Phase::mlp_reduce, Phase::mlp_residual}))
      << "with FlashComm1 the slice is kept: no mlp_out_gather";
  // n_padded 1000, n_slice 125: down GEMM [4*125, 14336/4] . [4096, 14336/4]^T.
  EXPECT_DOUBLE_EQ(layer.find(Phase::down_proj)->flops, 2.0 * 500 * 3584 * 4096);
  // The engine multiplies each of the 4 token slots in panels of 64 and 61
  // rows: with 61-row GEMMs rated at a quarter of 64-row ones, each panel
  // runs at its own rate; the bytes are x, w and y once each.
  HardwareProfile by_rows = p;
  by_rows.gemm_flops_by_rows = {{61, 1e14}, {64, 4e14}};
  const double panels = 4 * (2.0 * 64 * 3584 * 4096 / 4e14 + 2.0 * 61 * 3584 * 4096 / 1e14);
  const double bytes = (500.0 * 3584 + 4096.0 * 3584 + 500.0 * 4096) * 2;
  const PhaseCost down = *predict_layer(m, pc, 1000, by_rows).find(Phase::down_proj);
  EXPECT_DOUBLE_EQ(down.bytes_moved, bytes);
  EXPECT_DOUBLE_EQ(down.seconds, std::max(panels, bytes / p.memory_bandwidth_Bps));
  EXPECT_GT(panels, bytes / p.memory_bandwidth_Bps) << "compute-bound, so the rates show";
  const PhaseCost* a2a = layer.find(Phase::mlp_a2a);
  EXPECT_EQ(a2a->group, "odp");
  EXPECT_EQ(a2a->group_size, 2) << "G_mlp = 8/4, while o_proj's ODP has 4 ranks";
  EXPECT_EQ(layer.find(Phase::o_proj_a2a)->group_size, 4);
  EXPECT_EQ(layer.find(Phase::mlp_reduce)->group, "otp");
  EXPECT_EQ(layer.find(Phase::mlp_reduce)->group_size, 4);

  // Without FlashComm1 the slices are gathered over TP; with K_mlp = 1
  // there is no OTP ReduceScatter and the AlltoAll runs over TP.
  pc.flashcomm1 = false;
  pc.flashcomm2_mlp = 1;
  const LayerCost k1 = predict_layer(m, pc, 1000, p);
  EXPECT_EQ(k1.find(Phase::mlp_reduce), nullptr);
  EXPECT_EQ(k1.find(Phase::mlp_a2a)->group, "tp");
  EXPECT_EQ(k1.find(Phase::mlp_a2a)->group_size, 8);
  ASSERT_NE(k1.find(Phase::mlp_out_gather), nullptr);
  EXPECT_EQ(k1.find(Phase::mlp_out_gather)->op, CommOp::all_gather);
  EXPECT_DOUBLE_EQ(k1.find(Phase::down_proj)->flops, 2.0 * 125 * 14336 * 4096);
  // The copies around the AlltoAll: K = 1 packs its send buffer as K > 1
  // does (reads the 1000 token rows of hid = 1792, writes the 1000 padded
  // rows), and the concatenation reads and writes the received buffer.
  EXPECT_DOUBLE_EQ(k1.find(Phase::mlp_a2a)->bytes_moved,
                   (1000.0 * 1792 + 1000.0 * 1792 + 2.0 * 1000 * 1792) * 2);
}

TEST(CostModel, ExtraDownProjMemoryMatchesTheFormula) {
  const ModelConfig m = preset_config("deepseek-v3-attn");
  // d_model * hidden_dim * n_layers * weight_bytes = 7168 * 18432 * 61 * 2.
  const double full = 7168.0 * 18432.0 * 61.0 * 2.0;
  EXPECT_DOUBLE_EQ(extra_down_proj_bytes(m, 8, 4, 2), full * (1.0 / 4 - 1.0 / 8));
  EXPECT_DOUBLE_EQ(extra_down_proj_bytes(m, 8, 4, 2), 2014838784.0);
  EXPECT_DOUBLE_EQ(extra_down_proj_bytes(m, 8, 1, 2), full * 7.0 / 8);
  EXPECT_DOUBLE_EQ(extra_down_proj_bytes(m, 8, 0, 2), 0.0) << "off";
}

TEST(CostModel, PayloadConversionIsMemoryTrafficOfTheCommPhase) {
  // fp32 activations (the CPU engine): FlashComm1 at TP 4, 117 tokens of
  // stories260K; n_padded 120, n_slice 30, d 64.
  const ModelConfig m = preset_config("stories260K");
  const HardwareProfile p = fp32(builtin_profile("h100-sxm"));
  const ParallelConfig f32 = layout(4, true, 0);
  ParallelConfig q = f32;
  q.comm_quant = CommQuant::int8;
  q.comm_dtype = CommDtype::bf16;
  const LayerCost base = predict_layer(m, f32, 117, p);
  const LayerCost conv = predict_layer(m, q, 117, p);
  // int8 AllGather: encode reads the own 30 rows twice and writes 30*(64+4)
  // bytes; decode reads all 120 rows' bytes and writes 120 rows of floats.
  const double gather = 2.0 * 30 * 64 * 4 + 30 * 68 + 120 * 68 + 120 * 64 * 4;
  // bf16 ReduceScatter: encode [120, 64] floats, decode the [30, 64] slice.
  const double reduce = 120.0 * 64 * (4 + 2) + 30.0 * 64 * (2 + 4);
  for (Phase phase :
       {Phase::attn_gather, Phase::mlp_gather, Phase::o_proj_reduce, Phase::mlp_reduce}) {
    const PhaseCost* a = base.find(phase);
    const PhaseCost* b = conv.find(phase);
    ASSERT_TRUE(a != nullptr && b != nullptr) << to_string(phase);
    const double extra = b->op == CommOp::all_gather ? gather : reduce;
    EXPECT_DOUBLE_EQ(b->bytes_moved - a->bytes_moved, extra) << to_string(phase);
  }
  // Compute phases are untouched.
  for (size_t i = 0; i < base.phases.size(); ++i) {
    if (kind_of(base.phases[i].phase) == PhaseKind::compute) {
      EXPECT_EQ(base.phases[i].seconds, conv.phases[i].seconds) << to_string(base.phases[i].phase);
    }
  }

  // With 2-byte activations (the GPU profiles) bf16 is what is sent already:
  // no conversion, the same bytes and seconds.
  const HardwareProfile gpu = builtin_profile("h100-sxm");
  ParallelConfig bf16 = f32;
  bf16.comm_dtype = CommDtype::bf16;
  const LayerCost g0 = predict_layer(m, f32, 117, gpu);
  const LayerCost g1 = predict_layer(m, bf16, 117, gpu);
  EXPECT_EQ(g0.total_s, g1.total_s);
  EXPECT_EQ(predicted_calls(g0), predicted_calls(g1));
}

// The exposed seconds of an overlapped comm phase, and its hidden ones.
struct Exposure {
  double seconds = 0.0;
  double hidden = 0.0;
  std::int64_t bytes = 0;
};

Exposure exposure(const LayerCost& layer, Phase phase) {
  const PhaseCost* p = layer.find(phase);
  EXPECT_NE(p, nullptr) << to_string(phase);
  return p == nullptr ? Exposure{} : Exposure{p->seconds, p->hidden_s, p->comm_bytes};
}

TEST(CostModel, OverlapHidesTransfersOnlyWhenTheyProgressDuringCompute) {
  // Llama-3-70B at TP 8, 8192 tokens, every overlapped pair present.
  const ModelConfig m = preset_config("llama-3-70b");
  HardwareProfile async = builtin_profile("h100-sxm");
  ASSERT_EQ(async.overlap_efficiency, 1.0);
  HardwareProfile blocking = async;
  blocking.overlap_efficiency = 0.0;
  ParallelConfig pc = layout(8, true, 1);
  pc.flashcomm2_mlp = 2;
  const std::vector<Phase> pairs = {Phase::attn_gather, Phase::mlp_gather, Phase::o_proj_a2a,
                                    Phase::mlp_a2a};
  const LayerCost one = predict_layer(m, pc, 8192, async);
  for (int c : {2, 4, 8}) {
    ParallelConfig chunked = pc;
    chunked.overlap_chunks = c;
    const LayerCost fast = predict_layer(m, chunked, 8192, async);
    const LayerCost slow = predict_layer(m, chunked, 8192, blocking);
    for (Phase phase : pairs) {
      SCOPED_TRACE(fmt::format("C={} {}", c, to_string(phase)));
      const Exposure base = exposure(one, phase);
      const Exposure f = exposure(fast, phase);
      const Exposure s = exposure(slow, phase);
      EXPECT_EQ(f.bytes, base.bytes) << "overlap sends the same bytes";
      EXPECT_EQ(s.bytes, base.bytes);
      EXPECT_EQ(base.hidden, 0.0);
      EXPECT_GT(f.hidden, 0.0);
      EXPECT_LT(f.seconds, base.seconds) << "exposed communication shrinks";
      EXPECT_EQ(s.hidden, 0.0);
      EXPECT_GT(s.seconds, base.seconds) << "without progress chunks only add latencies";
    }
    EXPECT_LT(fast.total_s, one.total_s) << c;
    EXPECT_GT(slow.total_s, one.total_s) << c;
    // The reductions after the GEMMs are not overlapped.
    EXPECT_EQ(exposure(fast, Phase::mlp_reduce).hidden, 0.0);
  }
}

TEST(CostModel, OverlapPipelineByHand) {
  // GEMMs so slow that every later chunk's transfer completes during the
  // GEMM before it: with full progress the rank waits for chunk 0 alone.
  const ModelConfig m = preset_config("llama-3-8b");
  HardwareProfile p = fp32(builtin_profile("h100-sxm"));
  ASSERT_TRUE(p.gemm_flops_by_rows.empty());
  p.gemm_flops = 1e9;
  ParallelConfig pc = layout(8, true, 0);
  pc.overlap_chunks = 3;
  // 1600 tokens: n_slice 200, four panels of 64, 64, 64 and 8 rows, in
  // chunks of 2, 1 and 1 panels: 128, 64 and 8 rows of every slice.
  const LayerCost layer = predict_layer(m, pc, 1600, p);
  const PhaseCost* gather = layer.find(Phase::attn_gather);
  ASSERT_NE(gather, nullptr);
  EXPECT_EQ(gather->calls, 3);
  const auto transfer = [&](std::int64_t rows) {
    return collective_seconds(p, CommOp::all_gather, 8,
                              bytes_sent(CommOp::all_gather, 8, 8 * rows * 4096 * 4));
  };
  // No unpacking copy: the GEMMs read the gathered rows where they arrived.
  EXPECT_NEAR(gather->seconds, transfer(128), 1e-12);
  EXPECT_NEAR(gather->hidden_s, transfer(64) + transfer(8), 1e-12);
  EXPECT_EQ(gather->bytes_moved, 0.0) << "f32 on the wire: nothing encoded, decoded or unpacked";
  // The chunk GEMMs: each rank's rows . [768, 4096]^T, 8*200 rows in all.
  EXPECT_DOUBLE_EQ(layer.find(Phase::qkv_proj)->flops, 2.0 * 1600 * 4096 * 768);

  // Half the progress: chunk 1 advances half its GEMM's time, and so on.
  p.overlap_efficiency = 0.5;
  const double g0 = predict_layer(m, pc, 1600, p).find(Phase::attn_gather)->seconds;
  EXPECT_NEAR(g0, transfer(128), 1e-12) << "the GEMMs still outlast the transfers";
  p.gemm_flops = 1e18;  // GEMMs at the memory roofline, far shorter than the transfers
  p.overlap_efficiency = 0.0;
  const double none = predict_layer(m, pc, 1600, p).find(Phase::attn_gather)->seconds;
  EXPECT_NEAR(none, transfer(128) + transfer(64) + transfer(8), 1e-12);
  p.overlap_efficiency = 1.0;
  const PhaseCost full = *predict_layer(m, pc, 1600, p).find(Phase::attn_gather);
  EXPECT_LT(full.seconds, none);
  EXPECT_NEAR(full.seconds + full.hidden_s, none, 1e-12)
      << "what is not waited for was hidden behind the GEMMs";

  // The gate/up GEMM of each chunk: 8 rank slices in panels of 2 x 64, 64
  // and 8 rows, [rows, 4096] . [3584, 4096]^T, each panel at its own rate;
  // its bytes are x, w and y once per chunk. 8-row GEMMs at a tenth of the
  // rate of 64-row ones.
  p.gemm_flops_by_rows = {{8, 1e11}, {64, 1e12}};
  const double panel = 2.0 * 4096 * 3584;  // FLOPs per row
  double expected = 0.0;
  for (const auto& [rows, compute] :
       std::vector<std::pair<double, double>>{{128, 8 * 2 * 64 * panel / 1e12},
                                              {64, 8 * 64 * panel / 1e12},
                                              {8, 8 * 8 * panel / 1e11}}) {
    const double bytes = (8 * rows * 4096 + 3584.0 * 4096 + 8 * rows * 3584) * 4;
    expected += std::max(compute, bytes / p.memory_bandwidth_Bps);
  }
  const PhaseCost up = *predict_layer(m, pc, 1600, p).find(Phase::gate_up_proj);
  EXPECT_DOUBLE_EQ(up.flops, 1600 * panel);
  EXPECT_NEAR(up.seconds, expected, 1e-12 * expected);
}

TEST(CostModel, OverlapChunksAreRunsOfWholePanels) {
  const ModelConfig m = preset_config("llama-3-8b");
  const HardwareProfile p = builtin_profile("h100-sxm");
  ParallelConfig pc = layout(8, true, 1);
  pc.overlap_chunks = 16;
  const auto calls = [&](int n_tokens) {
    const LayerCost layer = predict_layer(m, pc, n_tokens, p);
    EXPECT_EQ(layer.find(Phase::o_proj_reduce), nullptr) << "K = 1 with FlashComm1: no reduction";
    const int gather = layer.find(Phase::attn_gather)->calls;
    EXPECT_EQ(layer.find(Phase::o_proj_a2a)->calls, gather) << n_tokens;
    EXPECT_EQ(layer.find(Phase::mlp_gather)->calls, gather) << n_tokens;
    return gather;
  };
  // n_slice = ceil(n / 8); one chunk per 64-row panel at most.
  EXPECT_EQ(calls(20), 1) << "n_slice 3: one panel, no overlap";
  EXPECT_EQ(calls(512), 1) << "n_slice 64: still one panel";
  EXPECT_EQ(calls(513), 2) << "n_slice 65: a panel and one row";
  EXPECT_EQ(calls(8192), 16) << "n_slice 1024: 16 panels";
  EXPECT_EQ(calls(8000), 16) << "n_slice 1000: 16 panels, the last of 40 rows";
  pc.overlap_chunks = 4;
  EXPECT_EQ(calls(8192), 4) << "16 panels in 4 chunks";
  EXPECT_EQ(calls(1536), 3) << "n_slice 192: 3 panels, 3 chunks";
  EXPECT_EQ(predict_layer(m, pc, 20, p).find(Phase::attn_gather)->hidden_s, 0.0)
      << "a single chunk hides nothing";
}

TEST(CostModel, SchemeNamesFollowTheGrammar) {
  const auto name = [](int tp, bool fc1, int k, int mlp, CommQuant q, CommDtype d, int c) {
    ParallelConfig pc{1, tp, fc1, k};
    pc.flashcomm2_mlp = mlp;
    pc.comm_quant = q;
    pc.comm_dtype = d;
    pc.overlap_chunks = c;
    return scheme_name(pc);
  };
  using Q = CommQuant;
  using D = CommDtype;
  EXPECT_EQ(name(8, true, 2, 1, Q::int8, D::f32, 4), "FlashComm1+FlashComm2 K=2 +MLP K=1 int8 C=4");
  EXPECT_EQ(name(8, false, 0, 2, Q::none, D::f32, 1), "FlashComm2 MLP K=2");
  EXPECT_EQ(name(8, true, 0, 4, Q::none, D::bf16, 1), "FlashComm1+FlashComm2 MLP K=4 bf16");
  EXPECT_EQ(name(8, false, 0, 0, Q::none, D::bf16, 1), "plain TP bf16");
  EXPECT_EQ(name(8, true, 0, 0, Q::int8, D::bf16, 2), "FlashComm1 int8 bf16 C=2");
  EXPECT_EQ(name(8, false, 4, 0, Q::none, D::f32, 1), "FlashComm2 K=4");
  EXPECT_EQ(name(1, true, 0, 0, Q::none, D::f32, 1), "plain TP") << "FlashComm1 is off at TP 1";
}

TEST(Planner, ExtendedCandidatesAddEveryVariantThatChangesSomething) {
  // With no options: exactly the default list.
  const std::vector<ParallelConfig> defaults = candidate_schemes(8, 1);
  std::vector<std::string> default_names;
  for (const ParallelConfig& pc : candidate_schemes(8, 1, CandidateOptions{})) {
    default_names.push_back(scheme_name(pc));
  }
  std::vector<std::string> expected;
  for (const ParallelConfig& pc : defaults) {
    expected.push_back(scheme_name(pc));
  }
  EXPECT_EQ(default_names, expected);

  const ModelConfig m = preset_config("llama-3-8b");
  const std::vector<ParallelConfig> all = candidate_schemes(4, 1, every_variant());
  std::set<std::string> names;
  for (const ParallelConfig& pc : all) {
    EXPECT_NO_THROW(check_parallel_config(m, pc, 4)) << scheme_name(pc);
    EXPECT_TRUE(names.insert(scheme_name(pc)).second) << "twice: " << scheme_name(pc);
  }
  // TP 4: 6 base schemes x K_mlp in {0, 1, 2} = 18. Plain TP without
  // down_proj FlashComm2 moves no activations: f32 and bf16 only (2). With
  // FlashComm2 K=1 on both projections (with or without FlashComm1) there is
  // no reduction, so no bf16 beside int8: 3 payloads x 2 chunkings (2 x 6).
  // The other 15: 4 payloads x 2 chunkings (15 x 8).
  EXPECT_EQ(all.size(), 2U + 12U + 120U);
  EXPECT_EQ(all.front().tp_size, 4);
  EXPECT_EQ(scheme_name(all.front()), "plain TP");
  for (const char* absent :
       {"plain TP int8", "plain TP C=3", "FlashComm1+FlashComm2 K=1 +MLP K=1 int8 bf16"}) {
    EXPECT_EQ(names.count(absent), 0U) << absent;
  }
  for (const char* present :
       {"plain TP bf16", "FlashComm1 int8 C=3", "FlashComm2 MLP K=2 int8 bf16 C=3",
        "FlashComm1+FlashComm2 K=1 +MLP K=1 int8 C=3", "FlashComm1+FlashComm2 K=2 +MLP K=1 bf16"}) {
    EXPECT_EQ(names.count(present), 1U) << present;
  }
  // Each variant follows the scheme it modifies.
  std::vector<std::string> order;
  for (const ParallelConfig& pc : all) {
    order.push_back(scheme_name(pc));
  }
  const auto at = [&](const std::string& n) {
    return std::find(order.begin(), order.end(), n) - order.begin();
  };
  EXPECT_LT(at("FlashComm1"), at("FlashComm1 int8"));
  EXPECT_LT(at("FlashComm1 int8"), at("FlashComm1 int8 C=3"));
  EXPECT_LT(at("FlashComm2 K=1"), at("FlashComm2 K=1 +MLP K=2"));

  CandidateOptions bad;
  bad.overlap_chunks = {0};
  try {
    candidate_schemes(4, 1, bad);
    ADD_FAILURE() << "C = 0 was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--overlap-chunks 0 must be between 1"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace flashcomm

// ---- (h) overlap efficiency in profiles, and the automatic choice -------------

namespace flashcomm {
namespace {

TEST(Profiles, OverlapEfficiencyIsOptionalCheckedAndRoundTrips) {
  for (const std::string& name : builtin_profile_names()) {
    const HardwareProfile p = builtin_profile(name);
    if (name == "cpu-openmpi") {
      EXPECT_EQ(p.overlap_efficiency, 0.0) << "OpenMPI on CPUs has no progress thread";
    } else {
      EXPECT_EQ(p.overlap_efficiency, 1.0) << name << ": NCCL / HCCL run on their own stream";
      EXPECT_NE(p.source.find("overlap_efficiency 1"), std::string::npos) << name;
    }
  }
  const test::TempDir dir("overlap");
  write(dir.file("none.json"), good_json());
  EXPECT_EQ(load_profile(dir.file("none.json")).overlap_efficiency, 0.0) << "absent: 0";
  HardwareProfile p = load_profile(dir.file("none.json"));
  p.overlap_efficiency = 0.25;
  save_profile(p, dir.file("quarter.json"));
  EXPECT_EQ(load_profile(dir.file("quarter.json")).overlap_efficiency, 0.25);

  const std::string g = good_json();
  const auto with = [&](const std::string& value) {
    return replaced(g, R"("name": "mine",)",
                    fmt::format(R"("name": "mine", "overlap_efficiency": {},)", value));
  };
  expect_bad_profile(with("1.5"), "overlap_efficiency is 1.5, expected a value from 0 to 1");
  expect_bad_profile(with("-0.1"), "overlap_efficiency is -0.1, expected a value from 0 to 1");
  expect_bad_profile(with(R"("full")"), R"(overlap_efficiency is "full", expected a number)");
  p.overlap_efficiency = 2.0;
  EXPECT_THROW(check_profile(p, "test"), FormatError);
}

TEST(Planner, AutoCandidatesAreWhatTheHeldBlocksAllow) {
  AutoSpace space;
  space.tp_size = 8;
  space.o_proj_k = 2;
  std::vector<std::string> names;
  for (const ParallelConfig& pc : auto_candidates(space)) {
    names.push_back(scheme_name(pc));
  }
  EXPECT_EQ(names,
            (std::vector<std::string>{"plain TP", "FlashComm1", "FlashComm2 K=2", "FlashComm2 K=4",
                                      "FlashComm1+FlashComm2 K=2", "FlashComm1+FlashComm2 K=4"}))
      << "K = 1 needs a larger block than K0 = 2";

  space.o_proj_k = 0;
  space.mlp_k = 4;
  space.allow_int8 = true;
  space.chunk_options = {1, 2};
  names.clear();
  for (const ParallelConfig& pc : auto_candidates(space)) {
    names.push_back(scheme_name(pc));
    EXPECT_EQ(pc.comm_dtype, CommDtype::f32) << "bf16 not allowed";
    EXPECT_FALSE(pc.flashcomm2_on()) << "no o_proj block held";
  }
  EXPECT_EQ(names,
            (std::vector<std::string>{
                "plain TP", "FlashComm2 MLP K=4", "FlashComm2 MLP K=4 C=2",
                "FlashComm2 MLP K=4 int8", "FlashComm2 MLP K=4 int8 C=2", "FlashComm1",
                "FlashComm1 C=2", "FlashComm1 int8", "FlashComm1 int8 C=2",
                "FlashComm1+FlashComm2 MLP K=4", "FlashComm1+FlashComm2 MLP K=4 C=2",
                "FlashComm1+FlashComm2 MLP K=4 int8", "FlashComm1+FlashComm2 MLP K=4 int8 C=2"}));

  AutoSpace one;
  EXPECT_EQ(auto_candidates(one).size(), 1U) << "TP 1: plain TP only";

  const auto message = [](const AutoSpace& s) {
    try {
      auto_candidates(s);
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  AutoSpace bad;
  bad.tp_size = 8;
  bad.o_proj_k = 3;
  EXPECT_EQ(message(bad),
            "the held o_proj block's K 3 must be 0 (none) or divide the tensor-parallel size 8 "
            "and be below it");
  bad.o_proj_k = 8;
  EXPECT_NE(message(bad).find("o_proj block's K 8"), std::string::npos);
  bad.o_proj_k = 0;
  bad.mlp_k = -1;
  EXPECT_NE(message(bad).find("down_proj block's K -1"), std::string::npos);
  bad.mlp_k = 0;
  bad.chunk_options = {1, 65};
  EXPECT_EQ(message(bad), "--overlap-chunks 65 must be between 1 (no overlap) and 64");
}

// The candidates of a space, built here from the rules alone (every
// combination, no-op variants included: those predict the same time as
// the scheme they leave unchanged).
std::vector<ParallelConfig> every_combination(const AutoSpace& s) {
  const auto ks = [&](int k0) {
    std::vector<int> out{0};
    for (int k = k0; k0 > 0 && k < s.tp_size; k += k0) {
      if (s.tp_size % k == 0) {
        out.push_back(k);
      }
    }
    return out;
  };
  std::vector<ParallelConfig> out;
  for (const bool fc1 : {false, true}) {
    for (int k : ks(s.o_proj_k)) {
      for (int mlp : ks(s.mlp_k)) {
        for (const bool int8 : {false, true}) {
          for (const bool bf16 : {false, true}) {
            for (int c : s.chunk_options) {
              if ((int8 && !s.allow_int8) || (bf16 && !s.allow_bf16)) {
                continue;
              }
              ParallelConfig pc{s.dp_size, s.tp_size, fc1, k};
              pc.flashcomm2_mlp = mlp;
              pc.comm_quant = int8 ? CommQuant::int8 : CommQuant::none;
              pc.comm_dtype = bf16 ? CommDtype::bf16 : CommDtype::f32;
              pc.overlap_chunks = c;
              out.push_back(pc);
            }
          }
        }
      }
    }
  }
  return out;
}

// Every count to 512, then about 12 per octave up to 8192 (odd ones that
// pad among them).
std::vector<int> decision_tokens() {
  std::vector<int> out;
  for (int n = 1; n <= 512; ++n) {
    out.push_back(n);
  }
  for (double n = 512; n < 8192;) {
    n *= 1.06;
    out.push_back(std::min(8192, static_cast<int>(n)));
  }
  return out;
}

struct Table {
  int first_not_plain = 0;  // the first count whose choice is not plain TP; 0: none
  int last_plain = 0;  // the last count whose choice is plain TP
  std::map<int, std::string> choice;  // by token count
  bool overlaps = false;  // some choice overlaps (C > 1)
};

Table decision_table(const ModelConfig& m, const HardwareProfile& p, const AutoSpace& space) {
  Table t;
  const std::vector<ParallelConfig> all = every_combination(space);
  for (int n : decision_tokens()) {
    SCOPED_TRACE(fmt::format("{} at {} tokens", p.name, n));
    const AutoChoice choice = choose_scheme(m, p, space, n);
    double best = std::numeric_limits<double>::infinity();
    for (const ParallelConfig& pc : all) {
      best = std::min(best, predict_prefill(m, pc, n, p));
    }
    EXPECT_EQ(choice.predicted_s, best) << choice.name;
    EXPECT_EQ(predict_prefill(m, choice.parallel, n, p), choice.predicted_s);
    EXPECT_EQ(choice.plain_tp_s, predict_prefill(m, {space.dp_size, space.tp_size}, n, p));
    EXPECT_EQ(choice.name, scheme_name(choice.parallel));
    EXPECT_LE(choice.predicted_s, choice.plain_tp_s);
    // Where plain TP is as fast as anything, it stays.
    if (choice.plain_tp_s == best) {
      EXPECT_EQ(choice.name, "plain TP");
    }
    if (choice.name != "plain TP" && t.first_not_plain == 0) {
      t.first_not_plain = n;
    }
    if (choice.name == "plain TP") {
      t.last_plain = n;
    }
    t.choice[n] = choice.name;
    t.overlaps = t.overlaps || choice.parallel.overlap_chunks > 1;
  }
  return t;
}

TEST(Planner, TheAutomaticChoiceIsTheFastestPredictedScheme) {
  const ModelConfig m = preset_config("llama-3-8b");
  AutoSpace space;
  space.tp_size = 8;
  space.o_proj_k = 1;
  space.mlp_k = 2;
  space.allow_int8 = true;
  space.allow_bf16 = true;
  space.chunk_options = {1, 4};
  std::map<std::string, Table> tables;
  for (const char* hw : {"cpu-openmpi", "h100-sxm", "a100-sxm", "ascend-910b"}) {
    tables[hw] = decision_table(m, builtin_profile(hw), space);
  }
  for (auto& [hw, t] : tables) {
    EXPECT_EQ(t.choice[1], "plain TP") << hw << ": decode-like prompts stay on plain TP";
  }
  // The break-evens observed. Plain TP up to the first count, never again
  // after the last: between them FlashComm1 with int8 gathers wins or loses
  // by n % TP, since it pays for the padding rows that plain TP skips.
  const auto range = [&](const std::string& hw) {
    return std::pair<int, int>{tables[hw].first_not_plain, tables[hw].last_plain};
  };
  EXPECT_EQ(range("h100-sxm"), (std::pair<int, int>{296, 314}));
  EXPECT_EQ(range("a100-sxm"), (std::pair<int, int>{192, 218}));
  EXPECT_EQ(range("ascend-910b"), (std::pair<int, int>{400, 425}));
  EXPECT_EQ(tables["h100-sxm"].choice[300], "plain TP");
  EXPECT_EQ(tables["h100-sxm"].choice[304], "FlashComm1 int8") << "304 = 38 * 8: no padding";
  // Long prompts: FlashComm1+FlashComm2, overlapped where transfers progress
  // during the GEMMs. down_proj's FlashComm2 at K_mlp = 2 runs its AlltoAll
  // in groups of 4: NVSwitch gives them the full bandwidth, HCCS's full mesh
  // only 3 of its 7 links, so it pays on the GPUs only. int8's encoding and
  // decoding are memory traffic that the A100's 2 TB/s no longer repays
  // (f32 gathers have no unpacking copy either), the H100's 3.35 TB/s does.
  EXPECT_EQ(tables["h100-sxm"].choice[8192], "FlashComm1+FlashComm2 K=1 +MLP K=2 int8 C=4");
  EXPECT_EQ(tables["a100-sxm"].choice[8192], "FlashComm1+FlashComm2 K=1 +MLP K=2 C=4");
  EXPECT_EQ(tables["ascend-910b"].choice[8192], "FlashComm1+FlashComm2 K=1 int8 C=4");
  EXPECT_TRUE(tables["h100-sxm"].overlaps);
  // The CPU stays on plain TP at every length: the engine multiplies the
  // gathered and FlashComm2 projections in 64-row panels, which the profile
  // rates at 51.7 GFLOP/s against 54.8 for plain TP's GEMMs of 256 rows and
  // more, and the projections dominate a CPU layer more than the
  // communication the schemes save over shared memory.
  EXPECT_EQ(range("cpu-openmpi"), (std::pair<int, int>{0, 8192}));
  EXPECT_FALSE(tables["cpu-openmpi"].overlaps) << "no progress during compute: no overlap";
  HardwareProfile flat = builtin_profile("cpu-openmpi");
  ASSERT_EQ(flat.gemm_flops_by_rows.back(), (std::pair<int, double>{256, 54.8e9}));
  flat.gemm_flops_by_rows.back().second = 51.7e9;  // as fast as a 64-row panel
  EXPECT_NE(choose_scheme(m, flat, space, 8192).name, "plain TP")
      << "with panels at the full-GEMM rate the schemes win again";
}

TEST(Planner, TheAutomaticChoiceWithoutQuantizationNeverQuantizes) {
  const ModelConfig m = preset_config("llama-3-70b");
  const HardwareProfile p = builtin_profile("l40-pcie");
  AutoSpace space;
  space.tp_size = 8;
  space.o_proj_k = 1;
  for (int n : {1, 100, 1000, 8000}) {
    const AutoChoice c = choose_scheme(m, p, space, n);
    EXPECT_EQ(c.parallel.comm_quant, CommQuant::none) << n;
    EXPECT_EQ(c.parallel.comm_dtype, CommDtype::f32) << n;
    EXPECT_EQ(c.parallel.overlap_chunks, 1) << n;
  }
  // Allowed, int8 wins on the slow link for long prompts.
  space.allow_int8 = true;
  EXPECT_EQ(choose_scheme(m, p, space, 8000).parallel.comm_quant, CommQuant::int8);
  EXPECT_THROW(choose_scheme(m, p, space, 0), ConfigError);
}

TEST(Planner, HeldBlocksAreTheSmallestKsThatFitTheBudget) {
  // DeepSeek-V3 attention at TP 8: extra o_proj K=1 11956 MiB, K=2 5124
  // MiB, K=4 1708 MiB; extra down_proj K=4 1921.5 MiB, K=2 5764.5 MiB.
  const ModelConfig m = preset_config("deepseek-v3-attn");
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  const auto held = [&](double gib, bool mlp) {
    const HeldBlocks h = held_blocks_for_budget(m, 8, gib * kGiB, 2, mlp);
    return std::pair<int, int>{h.o_proj_k, h.mlp_k};
  };
  EXPECT_EQ(held(6, false), (std::pair<int, int>{2, 0}));
  EXPECT_EQ(held(6, true), (std::pair<int, int>{2, 0})) << "1020 MiB left: no down block fits";
  EXPECT_EQ(held(8, true), (std::pair<int, int>{2, 4})) << "3068 MiB left";
  EXPECT_EQ(held(1, true), (std::pair<int, int>{0, 0}));
  EXPECT_EQ(held(0, false), (std::pair<int, int>{0, 0}));
  const HeldBlocks unlimited =
      held_blocks_for_budget(m, 8, std::numeric_limits<double>::infinity(), 2, true);
  EXPECT_EQ(unlimited.o_proj_k, 1);
  EXPECT_EQ(unlimited.mlp_k, 1);
  EXPECT_EQ(held_blocks_for_budget(m, 1, 1e30, 2, true).o_proj_k, 0) << "TP 1";
  EXPECT_THROW(held_blocks_for_budget(m, 8, -1.0, 2, true), ConfigError);
}

TEST(Planner, PlanRowsCarryTheAutomaticChoiceWhenAsked) {
  PlanRequest r = request("deepseek-v3-attn", "h100-sxm", 8, {512, 16384});
  r.memory_budget_gib = 6.0;
  const Plan plain = plan_prefill(r);
  EXPECT_FALSE(plain.auto_space.has_value());
  for (const TokenPlan& row : plain.rows) {
    EXPECT_FALSE(row.auto_choice.has_value());
    EXPECT_EQ(row.schemes.size(), 8U);
  }

  r.auto_choice = true;
  r.variants.int8 = true;
  r.variants.overlap_chunks = {4};
  const Plan plan = plan_prefill(r);
  ASSERT_TRUE(plan.auto_space.has_value());
  EXPECT_EQ(plan.auto_space->o_proj_k, 2) << "6 GiB hold K0 = 2";
  EXPECT_EQ(plan.auto_space->mlp_k, 0);
  EXPECT_TRUE(plan.auto_space->allow_int8);
  EXPECT_FALSE(plan.auto_space->allow_bf16);
  EXPECT_EQ(plan.auto_space->chunk_options, (std::vector<int>{1, 4}));
  EXPECT_EQ(plan.break_even, plain.break_even) << "the variants do not move the break-even";
  for (const TokenPlan& row : plan.rows) {
    ASSERT_TRUE(row.auto_choice.has_value());
    const AutoChoice expected = choose_scheme(r.model, r.profile, *plan.auto_space, row.n_tokens);
    EXPECT_EQ(row.auto_choice->name, expected.name);
    EXPECT_EQ(row.auto_choice->predicted_s, expected.predicted_s);
    EXPECT_EQ(row.auto_choice->plain_tp_s, row.schemes.front().prefill_s);
    EXPECT_GT(row.schemes.size(), 8U);
    // The recommendation looks at every listed scheme within the budget.
    for (const SchemeEstimate& e : row.schemes) {
      if (e.fits_budget) {
        EXPECT_LE(recommended(row).prefill_s, e.prefill_s) << e.name;
      }
    }
  }
  r.variants.overlap_chunks = {65};
  EXPECT_THROW(plan_prefill(r), ConfigError);
}

}  // namespace
}  // namespace flashcomm
