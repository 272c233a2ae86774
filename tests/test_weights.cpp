// Weight sources (Qwen's bias and q/k norm tensors included), the weight
// checks, sharding of those tensors, and the error measure the checks use.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "flashcomm/engine.hpp"
#include "flashcomm/error.hpp"
#include "flashcomm/layout.hpp"
#include "flashcomm/weight_source.hpp"
#include "test_support.hpp"

namespace flashcomm {
namespace {

constexpr Tensor kAll[] = {Tensor::token_embedding,
                           Tensor::attn_norm,
                           Tensor::wq,
                           Tensor::wk,
                           Tensor::wv,
                           Tensor::wo,
                           Tensor::ffn_norm,
                           Tensor::w_gate,
                           Tensor::w_down,
                           Tensor::w_up,
                           Tensor::final_norm,
                           Tensor::classifier,
                           Tensor::bq,
                           Tensor::bk,
                           Tensor::bv,
                           Tensor::q_norm,
                           Tensor::k_norm};
constexpr Tensor kQwen[] = {Tensor::bq, Tensor::bk, Tensor::bv, Tensor::q_norm, Tensor::k_norm};

// Every block a shard could ask for equals the same block of the whole tensor.
void expect_blocks_match_whole(const WeightSource& source) {
  const ModelConfig& c = source.config();
  for (Tensor t : kAll) {
    if (!has_tensor(c, t)) {
      continue;
    }
    const TensorShape s = tensor_shape(c, t);
    const int layer = c.n_layers - 1;
    const std::vector<float> whole = source.rows(t, layer, 0, s.rows);
    ASSERT_EQ(whole.size(), static_cast<size_t>(s.rows) * s.cols) << to_string(t);
    const int row0 = s.rows / 3;
    const int n_rows = std::max(1, s.rows / 2 - row0);
    const int col0 = s.cols / 4;
    const int n_cols = std::max(1, s.cols / 2);
    std::vector<float> block(static_cast<size_t>(n_rows) * n_cols);
    source.read_block(t, layer, row0, n_rows, col0, n_cols, block.data());
    for (int r = 0; r < n_rows; ++r) {
      for (int col = 0; col < n_cols; ++col) {
        ASSERT_EQ(block[static_cast<size_t>(r) * n_cols + col],
                  whole[static_cast<size_t>(row0 + r) * s.cols + col0 + col])
            << to_string(t) << " row " << row0 + r << " col " << col0 + col;
      }
    }
  }
}

TEST(WeightSource, RandomBlocksMatchTheWholeTensor) {
  for (const ModelConfig& c : test::random_test_configs()) {
    expect_blocks_match_whole(RandomSource(c, 99));
  }
}

TEST(WeightSource, MemoryBlocksMatchTheWholeTensor) {
  const ModelWeights w = random_weights(test::random_test_configs()[0], 5);
  expect_blocks_match_whole(MemorySource(w));
  for (const ModelConfig& c : test::qwen_test_configs()) {
    const ModelWeights q = random_weights(c, 6);
    expect_blocks_match_whole(MemorySource(q));
  }
}

TEST(WeightSource, QwenBlocksMatchTheWholeTensor) {
  for (const ModelConfig& c : test::qwen_test_configs()) {
    expect_blocks_match_whole(RandomSource(c, 99));
  }
}

TEST(WeightSource, QwenTensorsHaveTheirShapesAndNames) {
  const ModelConfig c = test::random_test_configs()[0];  // q_dim 72, kv_dim 36, head_dim 12
  EXPECT_EQ(tensor_shape(c, Tensor::bq).rows, 1);
  EXPECT_EQ(tensor_shape(c, Tensor::bq).cols, 72);
  EXPECT_EQ(tensor_shape(c, Tensor::bk).cols, 36);
  EXPECT_EQ(tensor_shape(c, Tensor::bv).cols, 36);
  EXPECT_EQ(tensor_shape(c, Tensor::q_norm).rows, 1);
  EXPECT_EQ(tensor_shape(c, Tensor::q_norm).cols, 12);
  EXPECT_EQ(tensor_shape(c, Tensor::k_norm).cols, 12);
  EXPECT_STREQ(to_string(Tensor::bq), "bq");
  EXPECT_STREQ(to_string(Tensor::bk), "bk");
  EXPECT_STREQ(to_string(Tensor::bv), "bv");
  EXPECT_STREQ(to_string(Tensor::q_norm), "q_norm");
  EXPECT_STREQ(to_string(Tensor::k_norm), "k_norm");
}

TEST(WeightSource, EachFlagBringsItsOwnTensors) {
  ModelConfig c = test::random_test_configs()[0];
  for (Tensor t : kQwen) {
    EXPECT_FALSE(has_tensor(c, t)) << to_string(t);
  }
  c.qkv_bias = true;
  EXPECT_TRUE(has_tensor(c, Tensor::bq) && has_tensor(c, Tensor::bk) && has_tensor(c, Tensor::bv));
  EXPECT_FALSE(has_tensor(c, Tensor::q_norm) || has_tensor(c, Tensor::k_norm));
  c.qkv_bias = false;
  c.qk_norm = true;
  EXPECT_FALSE(has_tensor(c, Tensor::bq) || has_tensor(c, Tensor::bk) || has_tensor(c, Tensor::bv));
  EXPECT_TRUE(has_tensor(c, Tensor::q_norm) && has_tensor(c, Tensor::k_norm));
  EXPECT_TRUE(has_tensor(c, Tensor::wq));
  EXPECT_TRUE(has_tensor(c, Tensor::classifier)) << "this config's classifier is separate";
}

TEST(WeightSource, ReadingAnAbsentTensorIsAnError) {
  const ModelConfig plain = test::random_test_configs()[0];
  const RandomSource random(plain, 3);
  const ModelWeights w = random_weights(plain, 3);
  const MemorySource memory(w);
  float out[1];
  for (Tensor t : kQwen) {
    EXPECT_THROW(random.read_block(t, 0, 0, 1, 0, 1, out), InternalError) << to_string(t);
    EXPECT_THROW(memory.read_block(t, 0, 0, 1, 0, 1, out), InternalError) << to_string(t);
  }
  // One flag does not open the other's tensors.
  ModelConfig bias = plain;
  bias.qkv_bias = true;
  EXPECT_NO_THROW(RandomSource(bias, 3).read_block(Tensor::bk, 1, 0, 1, 0, 1, out));
  EXPECT_THROW(RandomSource(bias, 3).read_block(Tensor::k_norm, 1, 0, 1, 0, 1, out), InternalError);
}

TEST(WeightSource, MaterializeHoldsExactlyThePresentTensors) {
  const ModelConfig plain = test::random_test_configs()[1];
  const ModelWeights p = random_weights(plain, 4);
  for (const LayerWeights& l : p.layers) {
    EXPECT_TRUE(l.bq.empty() && l.bk.empty() && l.bv.empty() && l.q_norm.empty() &&
                l.k_norm.empty());
  }
  for (const ModelConfig& c : test::qwen_test_configs()) {
    SCOPED_TRACE(
        fmt::format("d_model {} qkv_bias {} qk_norm {}", c.d_model, c.qkv_bias, c.qk_norm));
    const ModelWeights w = random_weights(c, 4);
    const RandomSource source(c, 4);
    for (int l = 0; l < c.n_layers; ++l) {
      const LayerWeights& lw = w.layers[static_cast<size_t>(l)];
      EXPECT_EQ(lw.bq.size(), c.qkv_bias ? static_cast<size_t>(c.q_dim()) : 0U);
      EXPECT_EQ(lw.bk.size(), c.qkv_bias ? static_cast<size_t>(c.kv_dim()) : 0U);
      EXPECT_EQ(lw.bv.size(), c.qkv_bias ? static_cast<size_t>(c.kv_dim()) : 0U);
      EXPECT_EQ(lw.q_norm.size(), c.qk_norm ? static_cast<size_t>(c.head_dim) : 0U);
      EXPECT_EQ(lw.k_norm.size(), c.qk_norm ? static_cast<size_t>(c.head_dim) : 0U);
      if (c.qkv_bias) {
        EXPECT_EQ(lw.bk, source.rows(Tensor::bk, l, 0, 1));
      }
      if (c.qk_norm) {
        EXPECT_EQ(lw.q_norm, source.rows(Tensor::q_norm, l, 0, 1));
      }
    }
  }
}

TEST(WeightSource, TheFlagsLeaveTheOtherTensorsUnchanged) {
  // The new tensors' seeds are their own, so a Qwen model and the Llama one
  // of its shape share every other weight.
  const ModelConfig plain = test::random_test_configs()[0];
  ModelConfig both = plain;
  both.qkv_bias = true;
  both.qk_norm = true;
  const ModelWeights a = random_weights(plain, 8);
  const ModelWeights b = random_weights(both, 8);
  EXPECT_EQ(a.token_embedding, b.token_embedding);
  EXPECT_EQ(a.classifier, b.classifier);
  EXPECT_EQ(a.final_norm, b.final_norm);
  for (size_t l = 0; l < a.layers.size(); ++l) {
    EXPECT_EQ(a.layers[l].wq, b.layers[l].wq);
    EXPECT_EQ(a.layers[l].wv, b.layers[l].wv);
    EXPECT_EQ(a.layers[l].w_down, b.layers[l].w_down);
  }
  EXPECT_NE(b.layers[0].bq, b.layers[1].bq) << "each layer has its own biases";
  EXPECT_NE(b.layers[0].bk, b.layers[0].bv) << "k and v biases differ";
  EXPECT_NE(b.layers[0].q_norm, b.layers[0].k_norm);
}

TEST(WeightSource, QwenValuesLieInTheirRanges) {
  ModelConfig c = test::random_test_configs()[0];
  c.qkv_bias = true;
  c.qk_norm = true;
  const RandomSource source(c, 3);
  for (Tensor t : {Tensor::bq, Tensor::bk, Tensor::bv}) {
    float largest = 0.0F;
    for (float v : source.rows(t, 1, 0, 1)) {
      EXPECT_LE(std::fabs(v), 0.5F) << to_string(t);
      largest = std::max(largest, std::fabs(v));
    }
    EXPECT_GT(largest, 0.1F) << to_string(t) << " is large enough to matter";
  }
  for (Tensor t : {Tensor::q_norm, Tensor::k_norm}) {
    for (float v : source.rows(t, 1, 0, 1)) {
      EXPECT_GE(v, 0.8F) << to_string(t);
      EXPECT_LE(v, 1.2F) << to_string(t);
    }
  }
}

// check_weights, which MemorySource and ReferenceModel run: the tensors a
// model holds must be exactly those its flags ask for, at their sizes.
std::string format_error_of(const ModelWeights& w) {
  try {
    check_weights(w, "my-weights");
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}

TEST(CheckWeights, RefusesTensorsThatDisagreeWithTheFlags) {
  ModelConfig c = test::random_test_configs()[0];
  c.qkv_bias = true;
  c.qk_norm = true;
  const ModelWeights good = random_weights(c, 2);
  EXPECT_EQ(format_error_of(good), "");

  ModelWeights short_bias = good;
  short_bias.layers[1].bk.pop_back();
  EXPECT_NE(
      format_error_of(short_bias).find("my-weights: layers[1].bk holds 35 floats, expected 36"),
      std::string::npos)
      << format_error_of(short_bias);
  EXPECT_THROW(MemorySource{short_bias}, FormatError);
  EXPECT_THROW(ReferenceModel{short_bias}, FormatError);

  ModelWeights missing_norm = good;
  missing_norm.layers[0].k_norm.clear();
  EXPECT_NE(format_error_of(missing_norm).find("layers[0].k_norm holds 0 floats, expected 12"),
            std::string::npos)
      << format_error_of(missing_norm);

  // Tensors the flags leave out must be absent: a bias the config does not
  // announce would silently be ignored.
  ModelWeights unannounced = good;
  unannounced.config.qkv_bias = false;
  const std::string message = format_error_of(unannounced);
  EXPECT_NE(message.find("layers[0].bq holds 72 floats, expected 0"), std::string::npos) << message;
  EXPECT_NE(message.find("qkv_bias false"), std::string::npos) << message;

  ModelWeights few_layers = good;
  few_layers.layers.pop_back();
  EXPECT_NE(format_error_of(few_layers).find("1 layers of weights, expected n_layers 2"),
            std::string::npos)
      << format_error_of(few_layers);
}

// ---- Sharding ------------------------------------------------------------

// Index of the row of `matrix` [rows, cols] equal to `row`; -1 when none.
int find_row(const std::vector<float>& matrix, int cols, const float* row) {
  const int rows = static_cast<int>(matrix.size()) / cols;
  for (int r = 0; r < rows; ++r) {
    if (std::equal(row, row + cols, matrix.begin() + static_cast<std::ptrdiff_t>(r) * cols)) {
      return r;
    }
  }
  return -1;
}

// Every rank's q/k/v bias slice lines up with its q/k/v rows: each local row
// of w_qkv is found in the full wq, wk or wv by content, and the bias next
// to it is that row's bias. With tp_size > n_kv_heads a replicated KV head
// brings its bias to every rank that holds it. q/k norms are whole on every
// rank; together the ranks hold every q bias exactly once.
TEST(Sharding, QkvBiasSlicesMatchTheRowsAndNormsAreReplicated) {
  int checked_replicated = 0;
  for (const ModelConfig& c : test::qwen_test_configs()) {
    const ModelWeights full = random_weights(c, 31);
    const MemorySource source(full);
    for (int tp = 1; tp <= 8; ++tp) {
      ParallelConfig pc;
      pc.tp_size = tp;
      try {
        check_parallel_config(c, pc, -1);
      } catch (const ConfigError&) {
        continue;
      }
      checked_replicated += tp > c.n_kv_heads ? 1 : 0;
      std::vector<int> q_bias_hits(static_cast<size_t>(c.q_dim()), 0);
      for (int rank = 0; rank < tp; ++rank) {
        SCOPED_TRACE(fmt::format("d_model {} qkv_bias {} qk_norm {} tp {} rank {}", c.d_model,
                                 c.qkv_bias, c.qk_norm, tp, rank));
        const ShardedWeights s = shard_weights(source, pc, place_of(pc, rank), false);
        const int q_local = s.heads.n_q_heads * c.head_dim;
        const int kv_local = s.heads.n_kv_heads * c.head_dim;
        for (int l = 0; l < c.n_layers; ++l) {
          const ShardedLayer& sl = s.layers[static_cast<size_t>(l)];
          const LayerWeights& fl = full.layers[static_cast<size_t>(l)];
          EXPECT_EQ(sl.q_norm, fl.q_norm);
          EXPECT_EQ(sl.k_norm, fl.k_norm);
          if (!c.qkv_bias) {
            EXPECT_TRUE(sl.b_qkv.empty());
            continue;
          }
          ASSERT_EQ(sl.b_qkv.size(), static_cast<size_t>(q_local + 2 * kv_local));
          for (int i = 0; i < q_local + 2 * kv_local; ++i) {
            const float* row = sl.w_qkv.data() + static_cast<size_t>(i) * c.d_model;
            const bool is_q = i < q_local;
            const bool is_k = !is_q && i < q_local + kv_local;
            const std::vector<float>& w = is_q ? fl.wq : is_k ? fl.wk : fl.wv;
            const std::vector<float>& b = is_q ? fl.bq : is_k ? fl.bk : fl.bv;
            const int r = find_row(w, c.d_model, row);
            ASSERT_GE(r, 0) << "local row " << i;
            EXPECT_EQ(sl.b_qkv[static_cast<size_t>(i)], b[static_cast<size_t>(r)])
                << "local row " << i << " is full row " << r;
            if (is_q && l == 0) {
              ++q_bias_hits[static_cast<size_t>(r)];
            }
          }
        }
      }
      if (c.qkv_bias) {
        EXPECT_EQ(q_bias_hits, std::vector<int>(static_cast<size_t>(c.q_dim()), 1)) << "tp " << tp;
      }
    }
  }
  EXPECT_GT(checked_replicated, 0) << "some layout replicates KV heads";
}

TEST(WeightSource, RandomWeightsAreTheRandomSourceReadWhole) {
  const ModelConfig c = test::random_test_configs()[1];
  const ModelWeights w = random_weights(c, 17);
  const RandomSource source(c, 17);
  EXPECT_EQ(w.layers[1].wo, source.rows(Tensor::wo, 1, 0, c.d_model));
  EXPECT_EQ(w.classifier, source.rows(Tensor::classifier, 0, 0, c.vocab_size));
  EXPECT_NE(w.layers[0].wo, w.layers[1].wo) << "each layer has its own values";
  EXPECT_NE(w.layers[0].wq, random_weights(c, 18).layers[0].wq) << "the seed matters";
}

TEST(WeightSource, ValuesLieInTheirRanges) {
  const ModelConfig c = test::random_test_configs()[0];
  const RandomSource source(c, 3);
  for (float v : source.rows(Tensor::attn_norm, 0, 0, 1)) {
    EXPECT_GE(v, 0.8F);
    EXPECT_LE(v, 1.2F);
  }
  const float bound = 1.0F / std::sqrt(static_cast<float>(c.hidden_dim));
  for (float v : source.rows(Tensor::w_down, 0, 0, c.d_model)) {
    EXPECT_LE(std::fabs(v), bound);
  }
}

TEST(WeightSource, BlocksOutsideTheTensorAreRefused) {
  const ModelConfig c = test::random_test_configs()[0];
  const RandomSource source(c, 3);
  std::vector<float> out(1024);
  EXPECT_THROW(source.read_block(Tensor::wq, 0, c.q_dim(), 1, 0, 1, out.data()), InternalError);
  EXPECT_THROW(source.read_block(Tensor::wq, c.n_layers, 0, 1, 0, 1, out.data()), InternalError);
  EXPECT_THROW(source.read_block(Tensor::wo, 0, 0, 1, c.q_dim() - 1, 2, out.data()), InternalError);
}

TEST(MaxRelativeError, IsRelativeToTheLargestExpectedValue) {
  EXPECT_DOUBLE_EQ(max_relative_error({1.0F, 2.0F}, {1.0F, 4.0F}), 0.5);
  EXPECT_DOUBLE_EQ(max_relative_error({0.0F, 0.0F}, {0.0F, 0.0F}), 0.0);
}

TEST(MaxRelativeError, ANonFiniteValueIsAnInfiniteError) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_TRUE(std::isinf(max_relative_error({nan, 1.0F}, {1.0F, 1.0F})));
  EXPECT_TRUE(std::isinf(max_relative_error({1.0F, 1.0F}, {1.0F, nan})));
  EXPECT_TRUE(std::isinf(max_relative_error({inf, 1.0F}, {1.0F, 1.0F})));
}

}  // namespace
}  // namespace flashcomm
