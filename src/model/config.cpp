// Validation of a ModelConfig: every loader and generator of weights calls
// check_config before it sizes a buffer, so that a corrupt header or a typo in
// a shape fails with a message instead of a huge allocation or an overflow.
#include <cmath>
#include <cstdint>
#include <string>

#include "flashcomm/error.hpp"
#include "flashcomm/model.hpp"

namespace flashcomm {

namespace {

// Generous ceilings: far above any published Llama-family model, low enough
// that products of two of them fit comfortably in 64 bits.
constexpr std::int64_t kMaxDim = std::int64_t{1} << 20;  // d_model, hidden_dim, head_dim
constexpr std::int64_t kMaxHeads = std::int64_t{1} << 16;  // n_heads, n_kv_heads
constexpr std::int64_t kMaxVocab = std::int64_t{1} << 22;  // vocab_size
constexpr std::int64_t kMaxLayers = 4096;  // n_layers
constexpr std::int64_t kMaxSeqLen = std::int64_t{1} << 22;  // seq_len
constexpr std::int64_t kMaxParameters = std::int64_t{1} << 37;  // floats in the whole model

void check_range(const std::string& source, const char* field, std::int64_t value,
                 std::int64_t max) {
  if (value <= 0) {
    throw FormatError(fmt::format("{}: {} is {}, expected a positive value", source, field, value));
  }
  if (value > max) {
    throw FormatError(fmt::format("{}: {} is {}, expected at most {}", source, field, value, max));
  }
}

// Floats of the model with this (already range-checked) shape; the ranges keep
// every product below 2^62, so int64 cannot overflow here.
std::int64_t parameter_count(const ModelConfig& c) {
  const std::int64_t d = c.d_model;
  const std::int64_t q_dim = std::int64_t{c.n_heads} * c.head_dim;
  const std::int64_t kv_dim = std::int64_t{c.n_kv_heads} * c.head_dim;
  const std::int64_t per_layer = 2 * d  // attention and ffn norms
                                 + q_dim * d + 2 * kv_dim * d + d * q_dim  // wq wk wv wo
                                 + 3 * std::int64_t{c.hidden_dim} * d  // gate up down
                                 + (c.qkv_bias ? q_dim + 2 * kv_dim : 0)  // bq bk bv
                                 + (c.qk_norm ? 2 * std::int64_t{c.head_dim} : 0);  // q/k norms
  const std::int64_t embedding = std::int64_t{c.vocab_size} * d;
  return embedding + std::int64_t{c.n_layers} * per_layer + d +
         (c.shared_classifier ? 0 : embedding);
}

}  // namespace

void check_config(const ModelConfig& config, const std::string& source) {
  check_range(source, "d_model", config.d_model, kMaxDim);
  check_range(source, "hidden_dim", config.hidden_dim, kMaxDim);
  check_range(source, "n_layers", config.n_layers, kMaxLayers);
  check_range(source, "n_heads", config.n_heads, kMaxHeads);
  check_range(source, "n_kv_heads", config.n_kv_heads, kMaxHeads);
  check_range(source, "head_dim", config.head_dim, kMaxDim);
  check_range(source, "vocab_size", config.vocab_size, kMaxVocab);
  check_range(source, "seq_len", config.seq_len, kMaxSeqLen);

  // Grouped-query attention shares each key/value head among a whole number
  // of query heads.
  if (config.n_heads % config.n_kv_heads != 0) {
    throw FormatError(fmt::format("{}: n_heads is {}, expected a multiple of n_kv_heads {}", source,
                                  config.n_heads, config.n_kv_heads));
  }
  // RoPE rotates pairs of a head's dimensions.
  if (config.head_dim % 2 != 0) {
    throw FormatError(
        fmt::format("{}: head_dim is {}, expected an even value", source, config.head_dim));
  }
  // q_dim() and kv_dim() are int products; keep them inside the same ceiling.
  const std::int64_t q_dim = std::int64_t{config.n_heads} * config.head_dim;
  if (q_dim > kMaxDim) {
    throw FormatError(fmt::format("{}: q_dim = n_heads {} * head_dim {} is {}, expected at most {}",
                                  source, config.n_heads, config.head_dim, q_dim, kMaxDim));
  }

  if (!std::isfinite(config.rope_theta) || config.rope_theta <= 0.0F) {
    throw FormatError(fmt::format("{}: rope_theta is {}, expected a positive finite value", source,
                                  config.rope_theta));
  }
  if (!std::isfinite(config.norm_eps) || config.norm_eps <= 0.0F) {
    throw FormatError(fmt::format("{}: norm_eps is {}, expected a positive finite value", source,
                                  config.norm_eps));
  }

  const std::int64_t parameters = parameter_count(config);
  if (parameters > kMaxParameters) {
    throw FormatError(fmt::format("{}: the model has {} parameters, expected at most {}", source,
                                  parameters, kMaxParameters));
  }
}

}  // namespace flashcomm
