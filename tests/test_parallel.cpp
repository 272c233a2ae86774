// Multi-rank tests: every scheme and every (DP, TP, K) that fits the world
// size against the unsharded forward pass, on stories260K, on random models
// of other shapes, and on random models with Qwen2's q/k/v biases and
// Qwen3's q/k norms; group construction; byte accounting.
//
// Every rank runs the same sequence of collectives, so checks use EXPECT_*
// (never an early return that would leave peers waiting).
#include <gtest/gtest.h>
#include <mpi.h>

#include <optional>
#include <string>

#include "flashcomm/context.hpp"
#include "flashcomm/engine.hpp"
#include "flashcomm/error.hpp"
#include "flashcomm/kernels.hpp"
#include "flashcomm/layout.hpp"
#include "flashcomm/model.hpp"
#include "test_support.hpp"

namespace flashcomm {
namespace {

int world_size() {
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

std::string describe(const ParallelConfig& c) {
  return fmt::format("dp {} tp {} flashcomm1 {} flashcomm2 {}", c.dp_size, c.tp_size, c.flashcomm1,
                     c.flashcomm2);
}

// Every layout of the world size the model allows: each DP x TP split, with
// and without FlashComm1, FlashComm2 off and at each valid K.
std::vector<ParallelConfig> layouts_for(const ModelConfig& m) {
  std::vector<ParallelConfig> out;
  const int world = world_size();
  for (int tp = 1; tp <= world; ++tp) {
    if (world % tp != 0) {
      continue;
    }
    for (int k = 0; k < tp; ++k) {
      if (k > 0 && tp % k != 0) {
        continue;
      }
      for (bool fc1 : {false, true}) {
        ParallelConfig c;
        c.dp_size = world / tp;
        c.tp_size = tp;
        c.flashcomm1 = fc1;
        c.flashcomm2 = k;
        try {
          check_parallel_config(m, c, world);
          out.push_back(c);
        } catch (const ConfigError&) {
          // This model cannot run the layout; the layout tests cover the message.
        }
      }
    }
  }
  return out;
}

// World ranks of the members of `comm`, in its order.
std::vector<int> members(MPI_Comm comm) {
  MPI_Group world_group;
  MPI_Group group;
  MPI_Comm_group(MPI_COMM_WORLD, &world_group);
  MPI_Comm_group(comm, &group);
  int size = 0;
  MPI_Group_size(group, &size);
  std::vector<int> local(static_cast<size_t>(size));
  std::vector<int> world(static_cast<size_t>(size));
  for (int i = 0; i < size; ++i) {
    local[static_cast<size_t>(i)] = i;
  }
  MPI_Group_translate_ranks(group, size, local.data(), world_group, world.data());
  MPI_Group_free(&group);
  MPI_Group_free(&world_group);
  return world;
}

TEST(Parallel, CommunicatorsMatchTheFormulas) {
  const int world = world_size();
  for (int tp = 1; tp <= world; ++tp) {
    if (world % tp != 0) {
      continue;
    }
    for (int k = 0; k < tp; ++k) {
      if (k > 0 && tp % k != 0) {
        continue;
      }
      ParallelConfig c;
      c.dp_size = world / tp;
      c.tp_size = tp;
      c.flashcomm2 = k;
      ParallelContext ctx(MPI_COMM_WORLD, c);
      const RankPlace& p = ctx.place();
      EXPECT_EQ(members(ctx.tp_handle()), tp_group_ranks(c, p.dp_rank)) << describe(c);
      if (k > 1) {
        ASSERT_TRUE(ctx.has_otp());
        EXPECT_EQ(members(ctx.otp_handle()), otp_group_ranks(c, p.dp_rank, p.otp_group))
            << describe(c);
        EXPECT_EQ(members(ctx.odp_handle()), odp_group_ranks(c, p.dp_rank, p.odp_group))
            << describe(c);
      } else if (k == 1) {
        EXPECT_FALSE(ctx.has_otp());
        EXPECT_EQ(ctx.odp_handle(), ctx.tp_handle()) << "K = 1: ODP is the TP group itself";
      }
    }
  }
}

// Prompts of lengths that exercise the padding: 1 token, TP-1, TP, TP+1 and
// a longer one; the DP replica picks a different one to keep replicas apart.
std::vector<std::vector<int>> prompts_for(const ModelConfig& m, int tp, int dp_rank) {
  std::vector<std::vector<int>> prompts;
  for (int n : {1, tp - 1, tp, tp + 1, 2 * tp + 3, 19}) {
    if (n < 1 || n > m.seq_len / 2) {
      continue;
    }
    std::vector<int> p = {1};
    for (int i = 1; i < n; ++i) {
      p.push_back((7 * i + 13 * dp_rank + 3) % m.vocab_size);
    }
    prompts.push_back(p);
  }
  return prompts;
}

// Runs every layout of `model` against the reference pass (logits) and a
// single-rank engine (greedy tokens). Random models may emit BOS at any
// step, so their generation runs on through it.
void check_model_against_unsharded(const ModelWeights& model, int steps, bool stop_at_bos) {
  const std::vector<ParallelConfig> layouts = layouts_for(model.config);
  ASSERT_FALSE(layouts.empty()) << "no layout of " << world_size() << " ranks fits the model";
  ParallelConfig single;
  ParallelContext single_ctx(MPI_COMM_SELF, single);
  Engine single_engine(model, single_ctx);
  ReferenceModel reference(model);

  for (const ParallelConfig& c : layouts) {
    ParallelContext ctx(MPI_COMM_WORLD, c);
    Engine engine(model, ctx);
    for (const std::vector<int>& prompt :
         prompts_for(model.config, c.tp_size, ctx.place().dp_rank)) {
      const Generation sharded = generate(engine, prompt, steps, stop_at_bos);
      const Generation expected = generate(single_engine, prompt, steps, stop_at_bos);
      const std::vector<float> ref_logits = reference.last_logits(prompt);
      EXPECT_LT(max_relative_error(sharded.prefill_logits, ref_logits), 1e-4)
          << describe(c) << ", prompt of " << prompt.size();
      EXPECT_LT(max_relative_error(expected.prefill_logits, ref_logits), 1e-4)
          << "single rank, prompt of " << prompt.size();
      EXPECT_EQ(sharded.tokens, expected.tokens) << describe(c) << ", prompt of " << prompt.size();
      EXPECT_FALSE(expected.tokens.empty());
    }
  }
}

TEST(Parallel, Stories260KEverySchemeMatchesUnsharded) {
  const ModelWeights model = load_llama2c(test::stories_checkpoint());
  const std::vector<ParallelConfig> layouts = layouts_for(model.config);
  if (layouts.empty()) {
    GTEST_SKIP() << "stories260K allows TP 1, 2, 4 (times DP); no layout has " << world_size()
                 << " ranks";
  }
  check_model_against_unsharded(model, 24, true);
}

TEST(Parallel, RandomModelsEverySchemeMatchesUnsharded) {
  int ran = 0;
  for (const ModelConfig& config : test::random_test_configs()) {
    if (layouts_for(config).empty()) {
      continue;
    }
    ++ran;
    const ModelWeights model = random_weights(config, 1234);
    check_model_against_unsharded(model, 12, false);
  }
  if (ran == 0) {
    GTEST_SKIP() << "no random test model fits " << world_size() << " ranks";
  }
}

// Runs every layout of `model` against the reference pass, logits for
// logits: the prefill's last position, then `steps` decode steps fed the
// reference's own greedy token (so every rank takes the same path).
void check_prefill_and_decode_against_reference(const ModelWeights& model, int steps) {
  const ModelConfig& m = model.config;
  const std::vector<ParallelConfig> layouts = layouts_for(m);
  ASSERT_FALSE(layouts.empty()) << "no layout of " << world_size() << " ranks fits the model";
  ReferenceModel reference(model);
  for (const ParallelConfig& c : layouts) {
    ParallelContext ctx(MPI_COMM_WORLD, c);
    Engine engine(model, ctx);
    for (const std::vector<int>& prompt : prompts_for(m, c.tp_size, ctx.place().dp_rank)) {
      const std::string where = fmt::format("{}, prompt of {}, qkv_bias {}, qk_norm {}",
                                            describe(c), prompt.size(), m.qkv_bias, m.qk_norm);
      std::vector<float> expected = reference.last_logits(prompt);
      EXPECT_LT(max_relative_error(engine.prefill(prompt), expected), 1e-4) << where;
      for (int step = 0; step < steps; ++step) {
        const int next = kernels::argmax(expected.data(), m.vocab_size);
        expected = reference.step(next);
        EXPECT_LT(max_relative_error(engine.decode(next), expected), 1e-4)
            << where << ", decode step " << step;
      }
    }
  }
}

// Qwen2's q/k/v biases and Qwen3's q/k norms, alone and together, under
// every scheme and every (DP, TP, K), replicated KV heads included.
TEST(Parallel, QwenFeaturesEverySchemeMatchesTheReference) {
  int ran = 0;
  for (const ModelConfig& config : test::qwen_test_configs()) {
    if (layouts_for(config).empty()) {
      continue;
    }
    ++ran;
    const ModelWeights model = random_weights(config, 4321);
    check_prefill_and_decode_against_reference(model, 6);
  }
  if (ran == 0) {
    GTEST_SKIP() << "no Qwen test model fits " << world_size() << " ranks";
  }
}

// The biases and q/k norms are local work: every collective of a prefill and
// a decode step carries the same bytes as without them.
TEST(Parallel, QwenFeaturesSendTheSameBytes) {
  int ran = 0;
  for (const ModelConfig& config : test::qwen_test_configs()) {
    ModelConfig plain_config = config;
    plain_config.qkv_bias = false;
    plain_config.qk_norm = false;
    const ModelWeights qwen = random_weights(config, 5);
    const ModelWeights plain = random_weights(plain_config, 5);
    for (const ParallelConfig& c : layouts_for(config)) {
      ++ran;
      const std::vector<int> prompt(11, 4);
      std::vector<std::vector<CommRecord>> records;
      for (const ModelWeights* model : {&qwen, &plain}) {
        ParallelContext ctx(MPI_COMM_WORLD, c);
        Engine engine(*model, ctx);
        engine.prefill(prompt);
        engine.decode(3);
        records.push_back(ctx.stats().records(Pass::prefill));
        records.push_back(ctx.stats().records(Pass::decode));
      }
      for (size_t pass = 0; pass < 2; ++pass) {
        const std::vector<CommRecord>& a = records[pass];
        const std::vector<CommRecord>& b = records[pass + 2];
        ASSERT_EQ(a.size(), b.size()) << describe(c);
        for (size_t i = 0; i < a.size(); ++i) {
          EXPECT_EQ(a[i].op, b[i].op) << describe(c);
          EXPECT_EQ(a[i].group, b[i].group) << describe(c);
          EXPECT_EQ(a[i].bytes_sent, b[i].bytes_sent) << describe(c) << ", " << a[i].group;
          EXPECT_EQ(a[i].calls, b[i].calls) << describe(c) << ", " << a[i].group;
        }
      }
    }
  }
  if (ran == 0) {
    GTEST_SKIP() << "no Qwen test model fits " << world_size() << " ranks";
  }
}

// Bytes FlashComm2's AlltoAll must send per rank in one prefill.
std::int64_t expected_all_to_all_bytes(const ModelConfig& m, const ParallelConfig& c,
                                       int n_tokens) {
  const std::int64_t n_padded = padded_tokens(n_tokens, c.tp_size);
  const std::int64_t g = c.odp_size();
  const std::int64_t buffer = n_padded * (m.q_dim() / c.tp_size) * 4;
  return m.n_layers * (g - 1) * buffer / g;
}

TEST(Parallel, FlashComm2BytesMatchTheFormula) {
  const ModelWeights model = load_llama2c(test::stories_checkpoint());
  const ModelConfig& m = model.config;
  const std::vector<int> prompt(13, 5);
  int ran = 0;
  for (const ParallelConfig& c : layouts_for(m)) {
    if (!c.flashcomm2_on()) {
      continue;
    }
    ++ran;
    ParallelContext ctx(MPI_COMM_WORLD, c);
    Engine engine(model, ctx);
    engine.prefill(prompt);
    const std::string group = c.otp_size() == 1 ? "tp" : "odp";
    EXPECT_EQ(ctx.stats().bytes(Pass::prefill, CommOp::all_to_all, group),
              expected_all_to_all_bytes(m, c, 13))
        << describe(c);
    if (c.otp_size() > 1) {
      // The OTP ReduceScatter sums K chunks of [n_slice, d_model].
      const std::int64_t n_slice = padded_tokens(13, c.tp_size) / c.tp_size;
      const std::int64_t k = c.otp_size();
      EXPECT_EQ(ctx.stats().bytes(Pass::prefill, CommOp::reduce_scatter, "otp"),
                m.n_layers * (k - 1) * n_slice * m.d_model * 4)
          << describe(c);
    }
  }
  if (ran == 0) {
    GTEST_SKIP() << "FlashComm2 needs TP > 1; " << world_size() << " ranks give no layout";
  }
}

// FlashComm2 (K = 1) replaces FlashComm1's o_proj ReduceScatter with an
// AlltoAll; their bytes are in the ratio q_dim / (tp_size * d_model).
TEST(Parallel, FlashComm2OverFlashComm1ByteRatio) {
  const ModelWeights model = load_llama2c(test::stories_checkpoint());
  const ModelConfig& m = model.config;
  const std::vector<int> prompt(21, 9);
  int ran = 0;
  for (const ParallelConfig& c : layouts_for(m)) {
    if (!c.flashcomm1 || c.flashcomm2 != 1) {
      continue;
    }
    ++ran;
    ParallelConfig fc1_only = c;
    fc1_only.flashcomm2 = 0;
    ParallelContext ctx1(MPI_COMM_WORLD, fc1_only);
    Engine e1(model, ctx1);
    e1.prefill(prompt);
    ParallelContext ctx2(MPI_COMM_WORLD, c);
    Engine e2(model, ctx2);
    e2.prefill(prompt);
    // FlashComm1 alone ReduceScatters after o_proj and down; with FlashComm2
    // only after down, so the difference is the o_proj ReduceScatter.
    const auto rs1 = ctx1.stats().bytes(Pass::prefill, CommOp::reduce_scatter, "tp");
    const auto rs2 = ctx2.stats().bytes(Pass::prefill, CommOp::reduce_scatter, "tp");
    const auto o_proj_rs = static_cast<double>(rs1 - rs2);
    const auto a2a =
        static_cast<double>(ctx2.stats().bytes(Pass::prefill, CommOp::all_to_all, "tp"));
    ASSERT_GT(o_proj_rs, 0.0);
    EXPECT_DOUBLE_EQ(a2a / o_proj_rs, static_cast<double>(m.q_dim()) / (c.tp_size * m.d_model))
        << describe(c);
  }
  if (ran == 0) {
    GTEST_SKIP() << "needs TP > 1; " << world_size() << " ranks give no layout";
  }
}

}  // namespace
}  // namespace flashcomm
