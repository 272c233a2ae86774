// The tensor-parallel engine: one rank's shard of the model and its forward
// pass under plain TP, FlashComm1, FlashComm2 (for o_proj and down_proj) or
// both, with the payload formats of wire.hpp and optional overlap.
//
// Prefill runs all prompt tokens through one batched pass (each projection is
// one GEMM per rank, or one per 64-row panel where FlashComm1's gathers or
// FlashComm2's AlltoAlls feed it; see kPanelRows in layout.hpp) with the
// schemes the ParallelConfig asks for, or those a chooser picks per pass;
// decode steps add one token at a time with the KV cache under plain TP.
#pragma once

#include <functional>
#include <vector>

#include "flashcomm/comm.hpp"
#include "flashcomm/context.hpp"
#include "flashcomm/model.hpp"
#include "flashcomm/phases.hpp"
#include "flashcomm/weight_source.hpp"
#include "flashcomm/wire.hpp"

namespace flashcomm {

// What this rank holds of one layer.
struct ShardedLayer {
  std::vector<float> attn_norm;  // [d_model]
  std::vector<float> w_qkv;  // [q_local + 2*kv_local, d_model]: this rank's q, k, v rows
  std::vector<float> b_qkv;  // [q_local + 2*kv_local]: the biases of those rows (qkv_bias)
  std::vector<float> q_norm;  // [head_dim], replicated (qk_norm)
  std::vector<float> k_norm;  // [head_dim], replicated (qk_norm)
  std::vector<float> wo;  // [d_model, wo_cols]: o_proj columns of this rank (see below)
  std::vector<float> ffn_norm;  // [d_model]
  std::vector<float> w_gate_up;  // [2*hidden_local, d_model]: gate rows, then up rows
  std::vector<float> w_down;  // [d_model, down_cols]: down_proj columns of this rank (see below)
};

// One rank's weights. o_proj holds the columns of the rank's own heads
// (plain TP, FlashComm1, decode) or, under FlashComm2, the wider block j of K
// (q_dim/K columns), which contains the rank's own heads at column offset
// wo_own_col, so decode reuses it instead of keeping a second copy. It also
// contains the block of every K' that K divides (layout.hpp's
// flashcomm2_block_col), so --flashcomm auto can switch K per pass. down_proj
// likewise: the rank's hidden_local columns, or down_proj FlashComm2's block
// of K_mlp (hidden_dim/K_mlp columns).
struct ShardedWeights {
  ModelConfig config;
  HeadShard heads;
  int tp_size = 1;
  int tp_rank = 0;
  int hidden_local = 0;
  int wo_k = 0;  // the FlashComm2 K whose o_proj block is held; 0: own heads only
  int wo_cols = 0;
  int wo_own_col = 0;
  int down_k = 0;  // the K_mlp whose down_proj block is held; 0: own columns only
  int down_cols = 0;
  int down_own_col = 0;
  // Replicated; empty in a layers-only engine (benchmarks of large shapes).
  std::vector<float> token_embedding;  // [vocab_size, d_model]
  std::vector<float> final_norm;  // [d_model]
  std::vector<float> classifier;  // [vocab_size, d_model]; empty when shared
  std::vector<ShardedLayer> layers;

  const std::vector<float>& output() const {
    return config.shared_classifier ? token_embedding : classifier;
  }
};

// This rank's shard; `with_vocab` false leaves out the embedding, final norm
// and classifier.
ShardedWeights shard_weights(const WeightSource& source, const ParallelConfig& config,
                             const RankPlace& place, bool with_vocab);

class Engine {
 public:
  // Construction is local: collectives happen only in the passes. The KV
  // cache holds `context` tokens (0: the model's seq_len).
  Engine(const WeightSource& source, ParallelContext& ctx, bool with_vocab = true, int context = 0);
  Engine(const ModelWeights& full, ParallelContext& ctx, int context = 0);

  // Clears the KV cache and runs the prompt (1 <= n_tokens <= seq_len) in one
  // pass; returns the logits [vocab_size] of the last position.
  std::vector<float> prefill(const std::vector<int>& tokens);

  // Runs `token` at the next position; returns its logits [vocab_size].
  std::vector<float> decode(int token);

  // Prefill of the layers alone, from hidden states [n_tokens, d_model] given
  // on every TP rank (clears the KV cache). Returns the rows this rank holds
  // afterwards: all n_tokens, or under FlashComm1 its slice [n_padded/tp_size].
  std::vector<float> prefill_layers(const std::vector<float>& hidden, int n_tokens);

  // The scheme of each pass, from its token count and kind: --flashcomm
  // auto's choice. It may pick FlashComm1 on or off, any FlashComm2 size that
  // the held weights and the context's groups serve (a multiple of the
  // config's, for o_proj and down_proj alike), the wire formats and the
  // chunks; tp_size and dp_size must stay the context's. Unset: every pass
  // runs the context's config (decode under plain TP with its dtype).
  using SchemeChooser = std::function<ParallelConfig(int n_tokens, Pass pass)>;
  void set_scheme_chooser(SchemeChooser chooser) { chooser_ = std::move(chooser); }

  // Seconds per layer phase, summed over every pass since the last reset.
  const PhaseTimes& phase_times() const { return phase_times_; }
  void reset_phase_times() { phase_times_ = PhaseTimes{}; }

  // Tokens in the KV cache, and how many it can hold.
  int position() const { return position_; }
  int context() const { return context_; }
  const ShardedWeights& weights() const { return w_; }

 private:
  // The shape of one pass and the schemes it runs with.
  struct Plan {
    int n_tokens = 0;
    int n_padded = 0;  // n_tokens rounded up to a multiple of tp_size
    int n_slice = 0;  // n_padded / tp_size: one FlashComm1 slice / FlashComm2 chunk
    bool flashcomm1 = false;
    int k = 0;  // o_proj FlashComm2 size; 0 = off
    int k_mlp = 0;  // down_proj FlashComm2 size; 0 = off
    Wire move = Wire::f32;  // AllGather and AlltoAll payloads
    Wire reduce = Wire::f32;  // AllReduce and ReduceScatter payloads
    int chunks = 1;  // overlap chunks
    int n_resident() const { return flashcomm1 ? n_slice : n_tokens; }  // rows of x
  };

  Plan plan_pass(int n_tokens, bool prefill);
  // Tokens at positions position_ .. position_+n_tokens-1 -> logits of the last.
  std::vector<float> forward(const std::vector<int>& tokens, bool prefill);
  // Every layer on the resident rows x [n_resident, d_model], in place;
  // appends to the KV cache and advances position_.
  void run_layers(std::vector<float>& x, const Plan& plan);
  void attention_block(int layer, std::vector<float>& x, const Plan& plan);
  void mlp_block(int layer, std::vector<float>& x, const Plan& plan);
  // FlashComm1's AllGather of the slices x [n_slice, d_model] feeding the
  // GEMM y[n_tokens, n_out] = gathered . w^T, chunk by chunk under overlap.
  void gather_gemm(const std::vector<float>& x, const float* w, int ldw, int n_out, float* y,
                   const Plan& plan, Phase comm_phase, Phase gemm_phase);
  // o_proj's or down_proj's phases, for output_projection.
  struct ProjectionPhases {
    Phase a2a;
    Phase gemm;
    Phase reduce;
    Phase gather;
  };
  std::vector<float> output_projection(const std::vector<float>& in, int local_cols, const float* w,
                                       int ldw, int own_col, int held_k, int k, int total_cols,
                                       const Plan& plan, const ProjectionPhases& phases);
  // FlashComm2's AlltoAll feeding a projection of size k (o_proj or down).
  std::vector<float> flashcomm2_project(const std::vector<float>& in, int local_cols,
                                        const float* w, int ldw, int k, const Plan& plan,
                                        Phase a2a_phase, Phase gemm_phase, Phase reduce_phase);

  ParallelContext& ctx_;
  ShardedWeights w_;
  std::vector<std::vector<float>> k_cache_;  // per layer [seq_len, kv_local*head_dim]
  std::vector<std::vector<float>> v_cache_;
  int context_ = 0;
  int position_ = 0;
  PhaseTimes phase_times_;
  SchemeChooser chooser_;
};

// Bytes of one rank's KV cache for `context` tokens.
std::int64_t kv_cache_bytes(const ModelConfig& config, int tp_size, int context);

// Greedy generation: prefill, then up to `steps` new tokens; stops before any
// of `stop_tokens` (which end a text and are not returned; the tokenizer's
// stop_tokens(), empty to run on through them) or when the engine's context
// is full. `before_pass`, when set, is called before the prefill with
// (prefill, 0) and before decode step n with (decode, n), n = 1, 2, ...; the
// command line hangs its fault injection on it.
struct Generation {
  std::vector<int> tokens;  // the new tokens
  std::vector<float> prefill_logits;  // [vocab_size] of the prompt's last position
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;
};
Generation generate(Engine& engine, const std::vector<int>& prompt, int steps,
                    const std::vector<int>& stop_tokens,
                    const std::function<void(Pass pass, int step)>& before_pass = {});

// max_i |got_i - expected_i| / max_i |expected_i|: the error relative to the
// scale of the expected values (an elementwise ratio explodes near zero).
double max_relative_error(const std::vector<float>& got, const std::vector<float>& expected);

// The plain reference: the unsharded model, one token at a time, with the
// reference kernels. Defines what every scheme must compute.
class ReferenceModel {
 public:
  // The KV cache holds `context` tokens (0: the model's seq_len).
  explicit ReferenceModel(const ModelWeights& weights, int context = 0);
  void reset() { position_ = 0; }
  // Logits [vocab_size] of `token` at the next position.
  std::vector<float> step(int token);
  // Runs `tokens` from an empty cache; logits of the last one.
  std::vector<float> last_logits(const std::vector<int>& tokens);

 private:
  const ModelWeights& w_;
  std::vector<std::vector<float>> k_cache_;
  std::vector<std::vector<float>> v_cache_;
  int context_ = 0;
  int position_ = 0;
};

}  // namespace flashcomm
