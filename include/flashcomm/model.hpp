// The model: configuration and full (unsharded) weights of a Llama-family
// decoder, with the loaders and writers of the formats it can be read from.
//
// Glossary of dimension names, used in every file of the project:
//   n_tokens    tokens in one forward pass (prompt length in prefill, 1 in decode)
//   n_padded    n_tokens rounded up to a multiple of tp_size (Np)
//   d_model     width of the residual stream
//   n_heads     query heads;  n_kv_heads  key/value heads (grouped-query attention)
//   head_dim    width of one head;  q_dim = n_heads*head_dim;  kv_dim = n_kv_heads*head_dim
//   hidden_dim  width of the MLP (gate/up output, down input)
//   vocab_size  tokens in the vocabulary;  seq_len  context length
//   tp_size, dp_size      tensor- and data-parallel sizes
//   otp_size (K)          o_proj tensor-parallel size of FlashComm2
//   odp_size (G)          tp_size / otp_size, the AlltoAll group size
//
// Weight matrices are row-major [out, in]: y = W x, as llama2.c stores them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace flashcomm {

struct ModelConfig {
  int d_model = 0;
  int hidden_dim = 0;
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int vocab_size = 0;
  int seq_len = 0;
  bool shared_classifier = true;
  float rope_theta = 10000.0F;
  float norm_eps = 1e-5F;
  // q, k and v projections add a bias (Qwen2): tensors bq, bk, bv.
  bool qkv_bias = false;
  // RMSNorm over each head's head_dim of q and of k, with learned weights
  // shared by all heads, after the projection and before RoPE (Qwen3); eps is
  // norm_eps. Tensors q_norm, k_norm.
  bool qk_norm = false;

  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
};

// Throws FormatError naming the field when a configuration cannot describe a
// model (zero or negative sizes, heads that do not group, absurd sizes).
void check_config(const ModelConfig& config, const std::string& source);

struct LayerWeights {
  std::vector<float> attn_norm;  // [d_model]
  std::vector<float> wq;  // [q_dim, d_model]
  std::vector<float> wk;  // [kv_dim, d_model]
  std::vector<float> wv;  // [kv_dim, d_model]
  std::vector<float> wo;  // [d_model, q_dim]   (o_proj)
  // Present only when the config's flag is set, empty otherwise.
  std::vector<float> bq;  // [q_dim]    qkv_bias
  std::vector<float> bk;  // [kv_dim]   qkv_bias
  std::vector<float> bv;  // [kv_dim]   qkv_bias
  std::vector<float> q_norm;  // [head_dim]   qk_norm
  std::vector<float> k_norm;  // [head_dim]   qk_norm
  std::vector<float> ffn_norm;  // [d_model]
  std::vector<float> w_gate;  // [hidden_dim, d_model]   (llama2.c w1)
  std::vector<float> w_down;  // [d_model, hidden_dim]   (llama2.c w2)
  std::vector<float> w_up;  // [hidden_dim, d_model]   (llama2.c w3)
};

struct ModelWeights {
  ModelConfig config;
  std::vector<float> token_embedding;  // [vocab_size, d_model]
  std::vector<LayerWeights> layers;  // [n_layers]
  std::vector<float> final_norm;  // [d_model]
  std::vector<float> classifier;  // [vocab_size, d_model]; empty when shared

  // The output projection: the classifier, or the embedding when shared.
  const std::vector<float>& output_weight() const {
    return config.shared_classifier ? token_embedding : classifier;
  }
};

// Throws FormatError naming the tensor when the weights do not match their
// config (check_config first): a tensor of the wrong size, a bias or q/k norm
// present that the flags leave out (or missing that they ask for), a wrong
// number of layers. Loaders call it before handing weights out.
void check_weights(const ModelWeights& weights, const std::string& source);

// llama2.c checkpoints, legacy layout (version 0) and version 1 (magic "ak42"),
// float32. The format is recognised from the file's first bytes.
ModelConfig read_llama2c_config(const std::string& path);
ModelWeights load_llama2c(const std::string& path);

// Writes a checkpoint that load_llama2c reads back bit for bit (tests, tools).
// version 0: legacy layout; version 1: "ak42" layout.
void save_llama2c(const ModelWeights& weights, const std::string& path, int version);

// A model with seeded random weights of the given shape (like vLLM's dummy
// load format): RandomSource (weight_source.hpp) read whole.
ModelWeights random_weights(const ModelConfig& config, std::uint64_t seed);

}  // namespace flashcomm
