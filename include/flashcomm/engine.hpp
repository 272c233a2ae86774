// The tensor-parallel engine: one rank's shard of the model and its forward
// pass under plain TP, FlashComm1, FlashComm2 or both.
//
// Prefill runs all prompt tokens through one batched pass (every projection is
// one GEMM per rank) with the schemes the ParallelConfig asks for; decode
// steps add one token at a time with the KV cache, always under plain TP.
#pragma once

#include <vector>

#include "flashcomm/context.hpp"
#include "flashcomm/model.hpp"

namespace flashcomm {

// What this rank holds of one layer.
struct ShardedLayer {
  std::vector<float> attn_norm;  // [d_model]
  std::vector<float> w_qkv;  // [q_local + 2*kv_local, d_model]: this rank's q, k, v rows
  std::vector<float> wo;  // [d_model, wo_cols]: o_proj columns of this rank (see below)
  std::vector<float> ffn_norm;  // [d_model]
  std::vector<float> w_gate_up;  // [2*hidden_local, d_model]: gate rows, then up rows
  std::vector<float> w_down;  // [d_model, hidden_local]
};

// One rank's weights. o_proj holds the columns of the rank's own heads
// (plain TP, FlashComm1, decode) or, under FlashComm2, the wider block j of K
// (q_dim/K columns), which contains the rank's own heads at column offset
// wo_own_col, so decode reuses it instead of keeping a second copy.
struct ShardedWeights {
  ModelConfig config;
  HeadShard heads;
  int hidden_local = 0;
  int wo_cols = 0;
  int wo_own_col = 0;
  std::vector<float> token_embedding;  // [vocab_size, d_model], replicated
  std::vector<float> final_norm;  // [d_model]
  std::vector<float> output;  // [vocab_size, d_model], replicated
  std::vector<ShardedLayer> layers;
};

ShardedWeights shard_weights(const ModelWeights& full, const ParallelConfig& config,
                             const RankPlace& place);

class Engine {
 public:
  // Collective over ctx's ranks only through later calls; construction is local.
  Engine(const ModelWeights& full, ParallelContext& ctx);

  // Clears the KV cache and runs the prompt (1 <= n_tokens <= seq_len) in one
  // pass; returns the logits [vocab_size] of the last position.
  std::vector<float> prefill(const std::vector<int>& tokens);

  // Runs `token` at the next position; returns its logits [vocab_size].
  std::vector<float> decode(int token);

  // Tokens in the KV cache.
  int position() const { return position_; }
  const ShardedWeights& weights() const { return w_; }

 private:
  // Runs tokens at positions position_ .. position_+n_tokens-1; `prefill`
  // selects the configured schemes, otherwise plain TP.
  std::vector<float> forward(const std::vector<int>& tokens, bool prefill);

  ParallelContext& ctx_;
  ShardedWeights w_;
  std::vector<std::vector<float>> k_cache_;  // per layer [seq_len, kv_local*head_dim]
  std::vector<std::vector<float>> v_cache_;
  int position_ = 0;
};

// Greedy generation: prefill, then up to `steps` new tokens; stops before BOS
// (which ends a story and is not returned; unless `stop_at_bos` is false) or
// when the context is full.
struct Generation {
  std::vector<int> tokens;  // the new tokens
  std::vector<float> prefill_logits;  // [vocab_size] of the prompt's last position
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;
};
Generation generate(Engine& engine, const std::vector<int>& prompt, int steps,
                    bool stop_at_bos = true);

// max_i |got_i - expected_i| / max_i |expected_i|: the error relative to the
// scale of the expected values (an elementwise ratio explodes near zero).
double max_relative_error(const std::vector<float>& got, const std::vector<float>& expected);

// The plain reference: the unsharded model, one token at a time, with the
// reference kernels. Defines what every scheme must compute.
class ReferenceModel {
 public:
  explicit ReferenceModel(const ModelWeights& weights);
  void reset() { position_ = 0; }
  // Logits [vocab_size] of `token` at the next position.
  std::vector<float> step(int token);
  // Runs `tokens` from an empty cache; logits of the last one.
  std::vector<float> last_logits(const std::vector<int>& tokens);

 private:
  const ModelWeights& w_;
  std::vector<std::vector<float>> k_cache_;
  std::vector<std::vector<float>> v_cache_;
  int position_ = 0;
};

}  // namespace flashcomm
