// Weight sources and the error measure the checks use.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "flashcomm/engine.hpp"
#include "flashcomm/error.hpp"
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
                           Tensor::classifier};

// Every block a shard could ask for equals the same block of the whole tensor.
void expect_blocks_match_whole(const WeightSource& source) {
  const ModelConfig& c = source.config();
  for (Tensor t : kAll) {
    if (t == Tensor::classifier && c.shared_classifier) {
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
