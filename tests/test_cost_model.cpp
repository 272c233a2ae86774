// The cost model and planner: FlashComm2's byte savings, the extra o_proj
// memory, byte-for-byte agreement with the engine's accounting, hardware
// profiles (built-in and JSON), and the planner's choices.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
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

// ---- (g) overlap efficiency in profiles ----------------------------------------

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

}  // namespace
}  // namespace flashcomm
