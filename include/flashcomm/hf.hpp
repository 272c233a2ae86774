// Hugging Face checkpoints: a directory with config.json and the weights in
// model.safetensors or in shards named by model.safetensors.index.json, for
// the llama, mistral, qwen2 (q/k/v biases) and qwen3 (per-head q/k RMSNorm)
// model types, in float32, float16 or bfloat16.
//
// Two conventions differ from the engine's (llama2.c's):
//   - RoPE: the engine rotates adjacent pairs (2i, 2i+1) of each head; HF
//     checkpoints of these models store the q and k rows of each head in the
//     rotate-half order, pair (i, i + head_dim/2). HF row j*head_dim/2 + i of
//     a head is the engine's row 2i + j. The source and the writer permute the
//     rows of q_proj/k_proj (and the elements of their biases and of
//     q_norm/k_norm) within each head; v and o_proj are unaffected.
//   - 1-D tensors (norms, biases) are the engine's [1, n] tensors.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "flashcomm/model.hpp"
#include "flashcomm/safetensors.hpp"
#include "flashcomm/weight_source.hpp"

namespace flashcomm {

// What config.json says, as the engine needs it.
struct HfConfig {
  std::string model_type;  // llama, mistral, qwen2 or qwen3
  ModelConfig model;  // seq_len = max_position_embeddings, capped by an active sliding window
  int max_position_embeddings = 0;
  int sliding_window = 0;  // 0: none (or not in effect)
};

// The model types this reader knows, for messages: "llama, mistral, qwen2, qwen3".
const char* hf_supported_model_types();

// Parses config.json's text (no file I/O, so a fuzzer can drive it). Each
// field is type-checked; a missing, mistyped or out-of-range field, an
// unsupported model_type, hidden_act, rope_scaling or bias layout throws
// FormatError naming `source` and the field.
HfConfig parse_hf_config(std::string_view json_text, const std::string& source);

// The HF name of an engine tensor: "model.layers.3.self_attn.q_proj.weight".
std::string hf_tensor_name(Tensor tensor, int layer);

// A checkpoint directory read through memory-mapped files. Opening checks
// every tensor the config implies (present, F32/F16/BF16, the shape the
// config implies, and no tensor the engine would silently ignore) before any
// weight is read; read_block converts just the requested block to float32,
// so a rank touches only the pages of its own shard.
class HfSource final : public WeightSource {
 public:
  explicit HfSource(const std::string& dir);  // throws FormatError
  ~HfSource() override;
  HfSource(const HfSource&) = delete;
  HfSource& operator=(const HfSource&) = delete;

  const ModelConfig& config() const override;
  const HfConfig& hf_config() const;
  // Bytes of tensor data read (converted) so far, over every block.
  std::uint64_t bytes_read() const;

 protected:
  void do_read_block(Tensor tensor, int layer, int row0, int n_rows, int col0, int n_cols,
                     float* out) const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Writes `weights` as an HF checkpoint in `dir` (created if needed):
// config.json and model.safetensors, or with shards > 1 that many
// model-0000i-of-0000N.safetensors files and model.safetensors.index.json.
// Tensors are converted to `dtype` (rounded to nearest even) and q/k rows
// permuted to the rotate-half order. model_type must fit the weights: qwen2
// needs qkv_bias and no qk_norm, qwen3 qk_norm and no qkv_bias, llama and
// mistral neither. Throws ConfigError.
void save_hf_checkpoint(const ModelWeights& weights, const std::string& dir, DType dtype,
                        const std::string& model_type, int shards = 1);

}  // namespace flashcomm
