// Where a rank's weights come from. A WeightSource hands out any block of any
// tensor, so each rank takes only the rows and columns it owns: from a model
// in memory, or from seeded random values computed block by block (which lets
// a benchmark build one rank's shard of a 70B layer without the whole layer).
#pragma once

#include <cstdint>
#include <vector>

#include "flashcomm/model.hpp"

namespace flashcomm {

enum class Tensor : std::uint8_t {
  token_embedding,  // [vocab_size, d_model]
  attn_norm,  // [1, d_model]         per layer
  wq,  // [q_dim, d_model]      per layer
  wk,  // [kv_dim, d_model]     per layer
  wv,  // [kv_dim, d_model]     per layer
  wo,  // [d_model, q_dim]      per layer
  ffn_norm,  // [1, d_model]          per layer
  w_gate,  // [hidden_dim, d_model] per layer
  w_down,  // [d_model, hidden_dim] per layer
  w_up,  // [hidden_dim, d_model] per layer
  final_norm,  // [1, d_model]
  classifier,  // [vocab_size, d_model] (only when not shared)
  // Per layer, present only when the config's flag is set. Listed last so that
  // adding them left the seeded values of the tensors above unchanged.
  bq,  // [1, q_dim]            qkv_bias
  bk,  // [1, kv_dim]           qkv_bias
  bv,  // [1, kv_dim]           qkv_bias
  q_norm,  // [1, head_dim]         qk_norm
  k_norm,  // [1, head_dim]         qk_norm
};

// Whether the model has this tensor: the classifier only when not shared, the
// biases and q/k norms only when their flag is set. Reading an absent tensor
// is an error.
bool has_tensor(const ModelConfig& config, Tensor tensor);

struct TensorShape {
  int rows = 0;
  int cols = 0;
};
TensorShape tensor_shape(const ModelConfig& config, Tensor tensor);
const char* to_string(Tensor tensor);

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual const ModelConfig& config() const = 0;

  // out[n_rows, n_cols] <- rows [row0, row0+n_rows) and columns [col0,
  // col0+n_cols) of `tensor` (of `layer` for per-layer tensors).
  void read_block(Tensor tensor, int layer, int row0, int n_rows, int col0, int n_cols,
                  float* out) const;

  // Convenience: a row block (all columns), a column block (all rows).
  std::vector<float> rows(Tensor tensor, int layer, int row0, int n_rows) const;
  std::vector<float> columns(Tensor tensor, int layer, int col0, int n_cols) const;

 protected:
  // Called with a block already checked against the tensor's shape.
  virtual void do_read_block(Tensor tensor, int layer, int row0, int n_rows, int col0, int n_cols,
                             float* out) const = 0;
};

// A view of a model in memory (which must outlive the source).
class MemorySource final : public WeightSource {
 public:
  // Throws FormatError (check_weights) when the weights do not match their config.
  explicit MemorySource(const ModelWeights& weights);
  const ModelConfig& config() const override { return w_.config; }

 protected:
  void do_read_block(Tensor tensor, int layer, int row0, int n_rows, int col0, int n_cols,
                     float* out) const override;

 private:
  const ModelWeights& w_;
};

// Seeded random weights: each element is a hash of (seed, tensor, layer,
// index), so any block is computed on its own and every rank agrees.
// Matrices are uniform in +-1/sqrt(in), norm weights (q/k norms included) in
// [0.8, 1.2], the q/k/v biases in [-0.5, 0.5], the embedding in [-1, 1].
class RandomSource final : public WeightSource {
 public:
  RandomSource(const ModelConfig& config, std::uint64_t seed);
  const ModelConfig& config() const override { return config_; }

 protected:
  void do_read_block(Tensor tensor, int layer, int row0, int n_rows, int col0, int n_cols,
                     float* out) const override;

 private:
  ModelConfig config_;
  std::uint64_t seed_;
};

// Every tensor of the source, in memory.
ModelWeights materialize(const WeightSource& source);

}  // namespace flashcomm
