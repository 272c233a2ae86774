// Tests of the model configuration, the llama2.c checkpoint reader and writer,
// the seeded random weights, and Qwen's attention features in the reference
// forward pass. Corrupt checkpoints are made by editing a copy of the real
// stories260K file in a temporary directory. The bounds-checked byte readers
// under the parsers, and the in-memory entry points that the fuzz targets
// call, are tested here too.
#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "flashcomm/engine.hpp"
#include "flashcomm/error.hpp"
#include "flashcomm/model.hpp"
#include "model/byte_reader.hpp"
#include "test_support.hpp"

namespace flashcomm {
namespace {

using Bytes = std::vector<char>;

Bytes read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

void set_int32(Bytes& bytes, size_t offset, std::int32_t value) {
  std::memcpy(bytes.data() + offset, &value, sizeof(value));
}

// The message of the FormatError that `f` throws; fails the test when it
// throws nothing or something else.
using test::format_error_of;

// Bitwise equality, so that -0.0 vs 0.0 or a changed NaN payload is caught.
void expect_bits_equal(const std::vector<float>& a, const std::vector<float>& b,
                       const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  // memcmp may not be given the null data() of an empty vector.
  EXPECT_TRUE(a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0) << what;
}

void expect_same_config(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.d_model, b.d_model);
  EXPECT_EQ(a.hidden_dim, b.hidden_dim);
  EXPECT_EQ(a.n_layers, b.n_layers);
  EXPECT_EQ(a.n_heads, b.n_heads);
  EXPECT_EQ(a.n_kv_heads, b.n_kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.seq_len, b.seq_len);
  EXPECT_EQ(a.shared_classifier, b.shared_classifier);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.norm_eps, b.norm_eps);
}

void expect_same_weights(const ModelWeights& a, const ModelWeights& b) {
  expect_same_config(a.config, b.config);
  expect_bits_equal(a.token_embedding, b.token_embedding, "token_embedding");
  ASSERT_EQ(a.layers.size(), b.layers.size());
  for (size_t l = 0; l < a.layers.size(); ++l) {
    const LayerWeights& x = a.layers[l];
    const LayerWeights& y = b.layers[l];
    const std::string at = "layer " + std::to_string(l) + " ";
    expect_bits_equal(x.attn_norm, y.attn_norm, at + "attn_norm");
    expect_bits_equal(x.wq, y.wq, at + "wq");
    expect_bits_equal(x.wk, y.wk, at + "wk");
    expect_bits_equal(x.wv, y.wv, at + "wv");
    expect_bits_equal(x.wo, y.wo, at + "wo");
    expect_bits_equal(x.ffn_norm, y.ffn_norm, at + "ffn_norm");
    expect_bits_equal(x.w_gate, y.w_gate, at + "w_gate");
    expect_bits_equal(x.w_down, y.w_down, at + "w_down");
    expect_bits_equal(x.w_up, y.w_up, at + "w_up");
  }
  expect_bits_equal(a.final_norm, b.final_norm, "final_norm");
  expect_bits_equal(a.classifier, b.classifier, "classifier");
}

// A shape that llama2.c files can hold (head_dim * n_heads == d_model) but
// unlike stories260K, so that a swapped dimension shows.
ModelConfig savable_config(bool shared) {
  ModelConfig c;
  c.d_model = 48;
  c.hidden_dim = 100;
  c.n_layers = 3;
  c.n_heads = 6;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.vocab_size = 67;
  c.seq_len = 32;
  c.shared_classifier = shared;
  return c;
}

// Legacy header offsets (int32 each): dim, hidden_dim, n_layers, n_heads,
// n_kv_heads, vocab_size, seq_len. Version 1 puts them after magic and version.
constexpr size_t kDim = 0;
constexpr size_t kLayers = 8;
constexpr size_t kHeads = 12;
constexpr size_t kKvHeads = 16;
constexpr size_t kVocab = 20;
constexpr size_t kV1Params = 8;

// ---------------------------------------------------------------------------
// Configuration

TEST(ModelConfigTest, StoriesHeadersMatchTheReadme) {
  for (const std::string& path : {test::stories_checkpoint(), test::stories_checkpoint_v1()}) {
    SCOPED_TRACE(path);
    const ModelConfig c = read_llama2c_config(path);
    EXPECT_EQ(c.d_model, 64);
    EXPECT_EQ(c.hidden_dim, 172);
    EXPECT_EQ(c.n_layers, 5);
    EXPECT_EQ(c.n_heads, 8);
    EXPECT_EQ(c.n_kv_heads, 4);
    EXPECT_EQ(c.head_dim, 8);
    EXPECT_EQ(c.vocab_size, 512);
    EXPECT_EQ(c.seq_len, 512);
    EXPECT_TRUE(c.shared_classifier);
    EXPECT_EQ(c.rope_theta, 10000.0F);
    EXPECT_EQ(c.norm_eps, 1e-5F);
    EXPECT_EQ(c.q_dim(), 64);
    EXPECT_EQ(c.kv_dim(), 32);
  }
}

TEST(ModelConfigTest, CheckConfigAcceptsValidShapes) {
  EXPECT_NO_THROW(check_config(savable_config(true), "test"));
  for (const ModelConfig& c : test::random_test_configs()) {
    EXPECT_NO_THROW(check_config(c, "test"));
  }
  EXPECT_NO_THROW(check_config(read_llama2c_config(test::stories_checkpoint()), "test"));
  for (const ModelConfig& c : test::qwen_test_configs()) {
    EXPECT_NO_THROW(check_config(c, "test"));
  }
}

TEST(ModelConfigTest, TheParameterCeilingCountsTheQwenTensors) {
  // A shape just under the 2^37-parameter ceiling that the biases
  // (q_dim + 2*kv_dim = 2^21 per layer) push over it.
  ModelConfig c;
  c.d_model = 5;
  c.hidden_dim = 1 << 20;
  c.n_layers = 4096;
  c.n_heads = 16;
  c.n_kv_heads = 8;
  c.head_dim = 1 << 16;
  c.vocab_size = 1;
  c.seq_len = 1;
  const std::int64_t d = c.d_model;
  const std::int64_t q_dim = c.q_dim();
  const std::int64_t kv_dim = c.kv_dim();
  const std::int64_t per_layer = 2 * d + 2 * q_dim * d + 2 * kv_dim * d + 3 * d * c.hidden_dim;
  const std::int64_t without = d + c.n_layers * per_layer + d;
  const std::int64_t ceiling = std::int64_t{1} << 37;
  ASSERT_LT(without + c.n_layers * 2 * std::int64_t{c.head_dim}, ceiling);
  ASSERT_GT(without + c.n_layers * (q_dim + 2 * kv_dim), ceiling);
  EXPECT_NO_THROW(check_config(c, "test"));
  c.qk_norm = true;  // 2 * head_dim per layer: still under
  EXPECT_NO_THROW(check_config(c, "test"));
  c.qkv_bias = true;
  const std::string message = format_error_of([&] { check_config(c, "my-source"); });
  EXPECT_NE(message.find("parameters"), std::string::npos) << message;
}

TEST(ModelConfigTest, CheckConfigNamesTheBadField) {
  struct Case {
    const char* field;
    std::function<void(ModelConfig&)> edit;
  };
  const std::vector<Case> cases = {
      {"d_model", [](ModelConfig& c) { c.d_model = 0; }},
      {"hidden_dim", [](ModelConfig& c) { c.hidden_dim = -1; }},
      {"n_layers", [](ModelConfig& c) { c.n_layers = 0; }},
      {"n_heads", [](ModelConfig& c) { c.n_heads = -6; }},
      {"n_kv_heads", [](ModelConfig& c) { c.n_kv_heads = 0; }},
      {"head_dim", [](ModelConfig& c) { c.head_dim = 0; }},
      {"vocab_size", [](ModelConfig& c) { c.vocab_size = 0; }},
      {"seq_len", [](ModelConfig& c) { c.seq_len = -512; }},
      {"n_kv_heads", [](ModelConfig& c) { c.n_kv_heads = 4; }},  // 6 % 4 != 0
      {"d_model", [](ModelConfig& c) { c.d_model = (1 << 20) + 1; }},
      {"vocab_size", [](ModelConfig& c) { c.vocab_size = (1 << 22) + 1; }},
      {"n_layers", [](ModelConfig& c) { c.n_layers = 4097; }},
      {"seq_len", [](ModelConfig& c) { c.seq_len = (1 << 22) + 1; }},
      {"head_dim", [](ModelConfig& c) { c.head_dim = 7; }},  // RoPE needs pairs
      {"q_dim",
       [](ModelConfig& c) {
         c.n_heads = 1 << 16;
         c.head_dim = 1 << 20;
       }},
      {"parameters",
       [](ModelConfig& c) {
         // Every field within its own limit, the product far beyond 2^37.
         c.d_model = 1 << 20;
         c.hidden_dim = 1 << 20;
         c.n_layers = 4096;
         c.n_heads = 1 << 10;
         c.n_kv_heads = 1 << 10;
         c.head_dim = 1 << 10;
       }},
      {"rope_theta", [](ModelConfig& c) { c.rope_theta = 0.0F; }},
      {"norm_eps", [](ModelConfig& c) { c.norm_eps = -1.0F; }},
  };
  for (const Case& k : cases) {
    ModelConfig c = savable_config(false);
    k.edit(c);
    const std::string message = format_error_of([&] { check_config(c, "my-source"); });
    EXPECT_NE(message.find(k.field), std::string::npos) << message;
    EXPECT_NE(message.find("my-source"), std::string::npos) << message;
  }
}

// ---------------------------------------------------------------------------
// Loading the real checkpoints

TEST(Llama2cTest, StoriesWeightsHaveTheConfiguredShapes) {
  const ModelWeights w = load_llama2c(test::stories_checkpoint());
  const ModelConfig& c = w.config;
  EXPECT_EQ(w.token_embedding.size(), size_t{512} * 64);
  ASSERT_EQ(w.layers.size(), 5U);
  for (const LayerWeights& layer : w.layers) {
    EXPECT_EQ(layer.attn_norm.size(), 64U);
    EXPECT_EQ(layer.wq.size(), static_cast<size_t>(c.q_dim() * c.d_model));
    EXPECT_EQ(layer.wk.size(), static_cast<size_t>(c.kv_dim() * c.d_model));
    EXPECT_EQ(layer.wv.size(), static_cast<size_t>(c.kv_dim() * c.d_model));
    EXPECT_EQ(layer.wo.size(), static_cast<size_t>(c.d_model * c.q_dim()));
    EXPECT_EQ(layer.ffn_norm.size(), 64U);
    EXPECT_EQ(layer.w_gate.size(), size_t{172} * 64);
    EXPECT_EQ(layer.w_down.size(), size_t{64} * 172);
    EXPECT_EQ(layer.w_up.size(), size_t{172} * 64);
  }
  EXPECT_EQ(w.final_norm.size(), 64U);
  EXPECT_TRUE(w.classifier.empty());
  EXPECT_EQ(&w.output_weight(), &w.token_embedding);
  // Trained norm weights are far from zero; a misplaced offset would read
  // matrix entries here instead.
  for (float x : w.final_norm) {
    EXPECT_GT(std::fabs(x), 0.1F);
  }
}

TEST(Llama2cTest, LegacyAndVersion1LoadToBitIdenticalWeights) {
  const ModelWeights legacy = load_llama2c(test::stories_checkpoint());
  const ModelWeights v1 = load_llama2c(test::stories_checkpoint_v1());
  expect_same_weights(legacy, v1);
}

TEST(Llama2cTest, SavingStoriesReproducesBothFiles) {
  test::TempDir dir("model");
  const ModelWeights w = load_llama2c(test::stories_checkpoint());
  save_llama2c(w, dir.file("v0.bin"), 0);
  save_llama2c(w, dir.file("v1.bin"), 1);
  EXPECT_TRUE(read_bytes(dir.file("v1.bin")) == read_bytes(test::stories_checkpoint_v1()));

  // The legacy file also holds RoPE tables [seq_len, head_dim/2] (cos, then
  // sin) just before the end. The writer computes them in float32 like
  // llama2.c's exporter, but PyTorch's vectorised cos and sin differ from the
  // C library's by up to one ulp, so those are compared with a tolerance.
  const Bytes written = read_bytes(dir.file("v0.bin"));
  const Bytes original = read_bytes(test::stories_checkpoint());
  ASSERT_EQ(written.size(), original.size());
  const size_t table_bytes = size_t{2} * 512 * (8 / 2) * sizeof(float);
  const size_t tables_at = original.size() - table_bytes;
  EXPECT_TRUE(std::equal(written.begin(), written.begin() + tables_at, original.begin()));
  std::vector<float> ours(table_bytes / sizeof(float));
  std::vector<float> theirs(ours.size());
  std::memcpy(ours.data(), written.data() + tables_at, table_bytes);
  std::memcpy(theirs.data(), original.data() + tables_at, table_bytes);
  EXPECT_EQ(ours[0], 1.0F);  // cos(0)
  for (size_t i = 0; i < ours.size(); ++i) {
    ASSERT_NEAR(ours[i], theirs[i], 1e-6) << "RoPE table entry " << i;
  }
}

// ---------------------------------------------------------------------------
// Save and load round trips

TEST(Llama2cTest, SaveLoadRoundTripIsBitExact) {
  test::TempDir dir("model");
  for (int version : {0, 1}) {
    for (bool shared : {true, false}) {
      SCOPED_TRACE("version " + std::to_string(version) + (shared ? " shared" : " separate"));
      const ModelWeights w = random_weights(savable_config(shared), 42);
      const std::string path = dir.file("model.bin");
      save_llama2c(w, path, version);
      expect_same_config(read_llama2c_config(path), w.config);
      const ModelWeights back = load_llama2c(path);
      expect_same_weights(back, w);
      EXPECT_EQ(back.classifier.empty(), shared);
    }
  }
}

TEST(Llama2cTest, SaveRejectsShapesTheFormatCannotHold) {
  test::TempDir dir("model");
  // head_dim 12 * n_heads 6 != d_model 40: llama2.c has no head_dim field.
  const ModelWeights odd = random_weights(test::random_test_configs()[0], 1);
  EXPECT_THROW(save_llama2c(odd, dir.file("odd.bin"), 0), ConfigError);
  EXPECT_THROW(save_llama2c(odd, dir.file("odd.bin"), 1), ConfigError);
  EXPECT_FALSE(std::filesystem::exists(dir.file("odd.bin")));

  ModelWeights w = random_weights(savable_config(true), 1);
  EXPECT_THROW(save_llama2c(w, dir.file("v2.bin"), 2), ConfigError);
  w.layers[1].wk.pop_back();
  EXPECT_THROW(save_llama2c(w, dir.file("short.bin"), 1), ConfigError);
}

TEST(Llama2cTest, SaveRefusesQkvBiasAndQkNorm) {
  // The format has no tensor for either; writing such a model would drop
  // weights without a word.
  test::TempDir dir("model");
  for (const auto& [bias, norm] : {std::pair{true, false}, std::pair{false, true}}) {
    ModelConfig c = savable_config(false);
    c.qkv_bias = bias;
    c.qk_norm = norm;
    const ModelWeights w = random_weights(c, 1);
    for (int version : {0, 1}) {
      const std::string path = dir.file(fmt::format("qwen-v{}.bin", version));
      try {
        save_llama2c(w, path, version);
        ADD_FAILURE() << "saved a model with qkv_bias " << bias << " qk_norm " << norm;
      } catch (const ConfigError& e) {
        const std::string message = e.what();
        EXPECT_NE(message.find(fmt::format("qkv_bias {} and qk_norm {}", bias, norm)),
                  std::string::npos)
            << message;
        EXPECT_NE(message.find("llama2.c checkpoints hold no q/k/v biases or q/k norms"),
                  std::string::npos)
            << message;
      }
      EXPECT_FALSE(std::filesystem::exists(path));
    }
  }
}

// ---------------------------------------------------------------------------
// Random weights

// Shapes of every tensor, and values inside the documented ranges.
void expect_random_weights_in_range(const ModelConfig& c) {
  SCOPED_TRACE("d_model " + std::to_string(c.d_model));
  const ModelWeights w = random_weights(c, 3);
  auto expect_within = [](const std::vector<float>& v, double lo, double hi, size_t size,
                          const char* what) {
    ASSERT_EQ(v.size(), size) << what;
    for (float x : v) {
      ASSERT_GE(x, lo) << what;
      ASSERT_LE(x, hi) << what;
    }
  };
  const auto d = static_cast<size_t>(c.d_model);
  const auto q = static_cast<size_t>(c.q_dim());
  const auto kv = static_cast<size_t>(c.kv_dim());
  const auto h = static_cast<size_t>(c.hidden_dim);
  const auto v = static_cast<size_t>(c.vocab_size);
  const double in_d = 1.0 / std::sqrt(static_cast<double>(c.d_model));
  const double in_q = 1.0 / std::sqrt(static_cast<double>(c.q_dim()));
  const double in_h = 1.0 / std::sqrt(static_cast<double>(c.hidden_dim));
  expect_within(w.token_embedding, -1.0, 1.0, v * d, "token_embedding");
  ASSERT_EQ(w.layers.size(), static_cast<size_t>(c.n_layers));
  for (const LayerWeights& l : w.layers) {
    expect_within(l.attn_norm, 0.8, 1.2, d, "attn_norm");
    expect_within(l.wq, -in_d, in_d, q * d, "wq");
    expect_within(l.wk, -in_d, in_d, kv * d, "wk");
    expect_within(l.wv, -in_d, in_d, kv * d, "wv");
    expect_within(l.wo, -in_q, in_q, d * q, "wo");
    expect_within(l.ffn_norm, 0.8, 1.2, d, "ffn_norm");
    expect_within(l.w_gate, -in_d, in_d, h * d, "w_gate");
    expect_within(l.w_down, -in_h, in_h, d * h, "w_down");
    expect_within(l.w_up, -in_d, in_d, h * d, "w_up");
  }
  expect_within(w.final_norm, 0.8, 1.2, d, "final_norm");
  expect_within(w.classifier, -in_d, in_d, v * d, "classifier");
}

TEST(RandomWeightsTest, DeterministicForASeedAndDifferentForAnother) {
  const ModelConfig c = test::random_test_configs()[0];
  const ModelWeights a = random_weights(c, 7);
  const ModelWeights b = random_weights(c, 7);
  const ModelWeights other = random_weights(c, 8);
  expect_same_weights(a, b);
  EXPECT_NE(a.token_embedding, other.token_embedding);
  EXPECT_NE(a.layers[1].w_down, other.layers[1].w_down);
  EXPECT_NE(a.classifier, other.classifier);
}

TEST(RandomWeightsTest, ValuesLieInTheirRangesWithTheConfiguredShapes) {
  for (const ModelConfig& c : test::random_test_configs()) {
    expect_random_weights_in_range(c);
  }
}

TEST(RandomWeightsTest, SharedClassifierLeavesTheClassifierEmpty) {
  ModelConfig c = test::random_test_configs()[1];
  c.shared_classifier = true;
  const ModelWeights w = random_weights(c, 3);
  EXPECT_TRUE(w.classifier.empty());
  EXPECT_EQ(&w.output_weight(), &w.token_embedding);
}

TEST(RandomWeightsTest, RejectsAnInvalidConfig) {
  ModelConfig c = test::random_test_configs()[0];
  c.n_kv_heads = 4;  // 6 query heads do not group by 4
  EXPECT_THROW(random_weights(c, 1), FormatError);
}

// ---------------------------------------------------------------------------
// Qwen's attention features in the reference forward pass

ModelWeights qwen_model(bool bias, bool norm) {
  ModelConfig c = test::random_test_configs()[0];
  c.qkv_bias = bias;
  c.qk_norm = norm;
  c.norm_eps = 1e-6F;  // Qwen's; keeps the scale tests below tight
  return random_weights(c, 11);
}

const std::vector<int> kPrompt = {1, 5, 9, 2, 7, 40, 3};

std::vector<float> reference_logits(const ModelWeights& w) {
  ReferenceModel reference(w);
  return reference.last_logits(kPrompt);
}

void scale(std::vector<float>& v, float factor) {
  for (float& x : v) {
    x *= factor;
  }
}

TEST(ReferenceQwen, ZeroBiasesAreNoBiasAndSeededOnesMatter) {
  const ModelWeights seeded = qwen_model(true, false);
  ModelWeights zero = seeded;
  ModelWeights none = seeded;
  none.config.qkv_bias = false;
  for (size_t l = 0; l < seeded.layers.size(); ++l) {
    for (auto member : {&LayerWeights::bq, &LayerWeights::bk, &LayerWeights::bv}) {
      std::fill((zero.layers[l].*member).begin(), (zero.layers[l].*member).end(), 0.0F);
      (none.layers[l].*member).clear();
    }
  }
  EXPECT_EQ(reference_logits(zero), reference_logits(none));
  EXPECT_GT(max_relative_error(reference_logits(seeded), reference_logits(none)), 1e-2);
}

TEST(ReferenceQwen, VBiasAloneMatters) {
  // Softmax weights sum to 1, so a v bias shifts every attention output by
  // itself: it must reach the output too.
  ModelWeights v_only = qwen_model(true, false);
  ModelWeights zero = v_only;
  for (size_t l = 0; l < v_only.layers.size(); ++l) {
    std::fill(v_only.layers[l].bq.begin(), v_only.layers[l].bq.end(), 0.0F);
    std::fill(v_only.layers[l].bk.begin(), v_only.layers[l].bk.end(), 0.0F);
    zero.layers[l].bq = v_only.layers[l].bq;
    zero.layers[l].bk = v_only.layers[l].bk;
    std::fill(zero.layers[l].bv.begin(), zero.layers[l].bv.end(), 0.0F);
  }
  EXPECT_GT(max_relative_error(reference_logits(v_only), reference_logits(zero)), 1e-2);
}

TEST(ReferenceQwen, QkNormMakesAttentionBlindToTheScaleOfQAndK) {
  // RMSNorm is scale-free, so under qk_norm scaling the q and k projections
  // (and their biases, which come before the norm) changes nothing but eps's
  // share; without qk_norm it multiplies every score by 25.
  for (const bool bias : {false, true}) {
    SCOPED_TRACE(fmt::format("qkv_bias {}", bias));
    const ModelWeights normed = qwen_model(bias, true);
    ModelWeights plain = normed;
    plain.config.qk_norm = false;
    for (LayerWeights& l : plain.layers) {
      l.q_norm.clear();
      l.k_norm.clear();
    }
    ModelWeights normed_scaled = normed;
    ModelWeights plain_scaled = plain;
    for (ModelWeights* w : {&normed_scaled, &plain_scaled}) {
      for (LayerWeights& l : w->layers) {
        scale(l.wq, 5.0F);
        scale(l.wk, 5.0F);
        scale(l.bq, 5.0F);
        scale(l.bk, 5.0F);
      }
    }
    EXPECT_LT(max_relative_error(reference_logits(normed_scaled), reference_logits(normed)), 1e-4);
    EXPECT_GT(max_relative_error(reference_logits(plain_scaled), reference_logits(plain)), 1e-2);
  }
}

TEST(ReferenceQwen, QAndKNormWeightsMultiplyTheScores) {
  // A score is q . k: doubling q_norm and halving k_norm leaves it; doubling
  // q_norm alone sharpens every softmax.
  const ModelWeights base = qwen_model(false, true);
  ModelWeights balanced = base;
  ModelWeights sharper = base;
  for (size_t l = 0; l < base.layers.size(); ++l) {
    scale(balanced.layers[l].q_norm, 2.0F);
    scale(balanced.layers[l].k_norm, 0.5F);
    scale(sharper.layers[l].q_norm, 2.0F);
  }
  EXPECT_LT(max_relative_error(reference_logits(balanced), reference_logits(base)), 1e-5);
  EXPECT_GT(max_relative_error(reference_logits(sharper), reference_logits(base)), 1e-2);
}

// ---------------------------------------------------------------------------
// Corrupt checkpoints

// Writes `bytes` to a fresh file and returns the FormatError message of
// loading it (and checks that reading only the config fails the same way).
std::string load_error(const test::TempDir& dir, const Bytes& bytes) {
  const std::string path = dir.file("bad.bin");
  write_bytes(path, bytes);
  const std::string config_message = format_error_of([&] { read_llama2c_config(path); });
  std::string message = format_error_of([&] { load_llama2c(path); });
  EXPECT_EQ(message, config_message);
  EXPECT_NE(message.find(path), std::string::npos) << message;
  return message;
}

TEST(Llama2cTest, TruncatedFilesAreRejected) {
  test::TempDir dir("model");
  for (const std::string& source : {test::stories_checkpoint(), test::stories_checkpoint_v1()}) {
    const Bytes original = read_bytes(source);
    for (size_t keep : {size_t{0}, size_t{3}, size_t{20}, size_t{100}, original.size() / 2,
                        original.size() - 1}) {
      SCOPED_TRACE(source + " cut to " + std::to_string(keep));
      const std::string message = load_error(dir, Bytes(original.begin(), original.begin() + keep));
      EXPECT_NE(message.find("truncated"), std::string::npos) << message;
    }
  }
  const Bytes original = read_bytes(test::stories_checkpoint());
  const std::string message = load_error(dir, Bytes(original.begin(), original.end() - 4));
  // The message names both sizes.
  EXPECT_NE(message.find(std::to_string(original.size())), std::string::npos) << message;
  EXPECT_NE(message.find(std::to_string(original.size() - 4)), std::string::npos) << message;
}

TEST(Llama2cTest, ExtraBytesAreRejected) {
  test::TempDir dir("model");
  for (const std::string& source : {test::stories_checkpoint(), test::stories_checkpoint_v1()}) {
    Bytes bytes = read_bytes(source);
    bytes.insert(bytes.end(), 4, '\0');
    const std::string message = load_error(dir, bytes);
    EXPECT_NE(message.find("4 extra bytes"), std::string::npos) << message;
  }
}

TEST(Llama2cTest, BadHeaderFieldsAreRejectedBeforeAllocating) {
  test::TempDir dir("model");
  const Bytes legacy = read_bytes(test::stories_checkpoint());
  const Bytes v1 = read_bytes(test::stories_checkpoint_v1());
  struct Case {
    size_t offset;
    std::int32_t value;
    const char* word;
  };
  const std::vector<Case> cases = {
      {kDim, 0, "d_model"},
      {kDim, -64, "d_model"},
      {kDim, 60, "n_heads"},  // 60 is not a multiple of 8 heads
      {kHeads, 0, "n_heads"},
      {kKvHeads, 3, "n_kv_heads"},
      {kVocab, 1 << 30, "vocab_size"},
      {kLayers, 1 << 30, "n_layers"},
  };
  for (const Case& k : cases) {
    for (size_t base : {size_t{0}, kV1Params}) {
      Bytes bytes = base == 0 ? legacy : v1;
      set_int32(bytes, base + k.offset, k.value);
      SCOPED_TRACE(std::string(k.word) + (base == 0 ? " legacy" : " v1"));
      const std::string message = load_error(dir, bytes);
      EXPECT_NE(message.find(k.word), std::string::npos) << message;
    }
  }
  // A negative vocab_size means a separate classifier in the legacy layout,
  // which is then missing from the file; version 1 has a flag instead.
  Bytes bytes = legacy;
  set_int32(bytes, kVocab, -512);
  EXPECT_NE(load_error(dir, bytes).find("truncated"), std::string::npos);
  bytes = v1;
  set_int32(bytes, kV1Params + kVocab, -512);
  EXPECT_NE(load_error(dir, bytes).find("vocab_size"), std::string::npos);
}

TEST(Llama2cTest, BadVersion1HeadersAreRejected) {
  test::TempDir dir("model");
  const Bytes v1 = read_bytes(test::stories_checkpoint_v1());

  Bytes bytes = v1;
  bytes[0] = 'X';  // the file no longer starts with "ak42"
  EXPECT_NE(load_error(dir, bytes).find("magic"), std::string::npos);

  bytes = v1;
  set_int32(bytes, 4, 2);
  std::string message = load_error(dir, bytes);
  EXPECT_NE(message.find("version 2"), std::string::npos) << message;

  bytes = v1;
  bytes[8 + 7 * 4] = 7;  // shared_classifier must be 0 or 1
  EXPECT_NE(load_error(dir, bytes).find("shared_classifier"), std::string::npos);

  bytes = v1;
  bytes[200] = 1;
  EXPECT_NE(load_error(dir, bytes).find("padding"), std::string::npos);

  bytes = v1;
  bytes[8 + 7 * 4] = 0;  // claims a separate classifier that the file lacks
  EXPECT_NE(load_error(dir, bytes).find("truncated"), std::string::npos);
}

// ---------------------------------------------------------------------------
// Byte readers and the in-memory entry points

std::span<const unsigned char> as_span(const Bytes& bytes) {
  return {reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size()};
}

TEST(ByteReaderTest, FileAndMemoryReadTheSameBytesAndRefuseTheSameRanges) {
  test::TempDir dir("reader");
  const std::string path = dir.file("ten.bin");
  const Bytes ten = {'0', '1', '2', '3', '4', '5', '6', '7', '8', '9'};
  write_bytes(path, ten);
  detail::FileReader file(path, "checkpoint");
  detail::MemoryReader memory(as_span(ten), path);
  constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
  for (detail::ByteReader* in : std::vector<detail::ByteReader*>{&file, &memory}) {
    EXPECT_EQ(in->size(), 10);
    EXPECT_EQ(in->name(), path);
    char got[10] = {};
    in->read(7, got, 3, "the tail");
    EXPECT_EQ(std::string(got, 3), "789");
    in->read(0, got, 10, "all");  // backwards: the file reader seeks
    EXPECT_EQ(std::string(got, 10), "0123456789");
    EXPECT_NO_THROW(in->read(10, got, 0, "nothing at the end"));
    // Past the end, negative, and ranges whose end overflows int64.
    for (const auto& range : std::vector<std::pair<std::int64_t, std::int64_t>>{
             {8, 3}, {11, 0}, {-1, 2}, {0, -1}, {1, kMax}, {kMax, 1}, {kMax, kMax}}) {
      const std::int64_t offset = range.first;  // a lambda cannot capture a binding in clang 14
      const std::int64_t bytes = range.second;
      SCOPED_TRACE(std::to_string(offset) + " + " + std::to_string(bytes));
      const std::string message =
          format_error_of([&] { in->read(offset, got, bytes, "a tensor"); });
      EXPECT_NE(message.find(path), std::string::npos) << message;
      EXPECT_NE(message.find("truncated"), std::string::npos) << message;
      EXPECT_NE(message.find("a tensor"), std::string::npos) << message;
      EXPECT_NE(message.find(std::to_string(offset)), std::string::npos) << message;
    }
  }
}

TEST(ByteReaderTest, FileReaderRefusesADirectory) {
  test::TempDir dir("reader");
  const std::string message = format_error_of([&] { detail::FileReader(dir.path(), "tokenizer"); });
  EXPECT_NE(message.find(dir.path()), std::string::npos) << message;
  EXPECT_NE(message.find("not a regular file"), std::string::npos) << message;
}

TEST(Llama2cTest, InMemoryParsingEqualsLoadingTheFile) {
  for (const std::string& path : {test::stories_checkpoint(), test::stories_checkpoint_v1()}) {
    SCOPED_TRACE(path);
    const Bytes bytes = read_bytes(path);
    detail::MemoryReader in(as_span(bytes), "in memory");
    expect_same_config(detail::read_llama2c_config(in), read_llama2c_config(path));
    expect_same_weights(detail::load_llama2c(in), load_llama2c(path));

    // A corrupt copy fails with the same message, its source named as given.
    const Bytes cut(bytes.begin(), bytes.end() - 4);
    detail::MemoryReader cut_in(as_span(cut), "in memory");
    const std::string message = format_error_of([&] { detail::load_llama2c(cut_in); });
    test::TempDir dir("model");
    std::string file_message = load_error(dir, cut);
    file_message.replace(file_message.find(dir.file("bad.bin")), dir.file("bad.bin").size(),
                         "in memory");
    EXPECT_EQ(message, file_message);
  }
}

// The fuzz target's seeds (fuzz/corpus/llama2c_checkpoint/, written by
// fuzz/make_seeds.cpp) stay what they claim: whole tiny models in both layouts,
// and the real headers over no weights.
TEST(Llama2cTest, FuzzSeedsAreTinyModelsAndTruncatedHeaders) {
  const std::string corpus = std::string(FLASHCOMM_FUZZ_CORPUS_DIR) + "/llama2c_checkpoint/";
  for (const char* name : {"tiny-v0-shared.bin", "tiny-v0-separate.bin", "tiny-v1-shared.bin",
                           "tiny-v1-separate.bin"}) {
    SCOPED_TRACE(name);
    const ModelWeights w = load_llama2c(corpus + name);
    EXPECT_EQ(w.config.n_layers, 2);
    EXPECT_EQ(w.config.d_model, 8);
    EXPECT_EQ(w.config.shared_classifier, std::string(name).find("shared") != std::string::npos);
  }
  for (const char* name : {"stories260K-v0-header.bin", "stories260K-v1-header.bin"}) {
    const std::string message = format_error_of([&] { load_llama2c(corpus + name); });
    EXPECT_NE(message.find("truncated"), std::string::npos) << message;
    EXPECT_NE(message.find("hidden_dim 172"), std::string::npos) << message;
  }
}

TEST(Llama2cTest, MissingFileIsAFormatErrorNamingThePath) {
  test::TempDir dir("model");
  const std::string path = dir.file("does-not-exist.bin");
  for (const auto& f : std::vector<std::function<void()>>{[&] { load_llama2c(path); },
                                                          [&] { read_llama2c_config(path); }}) {
    const std::string message = format_error_of(f);
    EXPECT_NE(message.find(path), std::string::npos) << message;
    EXPECT_NE(message.find(std::strerror(ENOENT)), std::string::npos) << message;
  }
}

}  // namespace
}  // namespace flashcomm
