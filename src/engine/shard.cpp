// Cutting one rank's shard out of a weight source.
//
// QKV and gate/up are fused into one matrix each so that each projection is
// one GEMM (the q/k/v biases into one vector beside it); o_proj and down are
// column blocks (their inputs are sharded).
#include <algorithm>

#include "flashcomm/engine.hpp"
#include "flashcomm/error.hpp"

namespace flashcomm {

namespace {

void append(std::vector<float>& out, const std::vector<float>& block) {
  out.insert(out.end(), block.begin(), block.end());
}

}  // namespace

ShardedWeights shard_weights(const WeightSource& source, const ParallelConfig& config,
                             const RankPlace& place, bool with_vocab) {
  const ModelConfig& c = source.config();
  ShardedWeights s;
  s.config = c;
  s.heads = head_shard(c, config.tp_size, place.tp_rank);
  s.tp_size = config.tp_size;
  s.tp_rank = place.tp_rank;
  s.hidden_local = c.hidden_dim / config.tp_size;
  const int hd = c.head_dim;
  const int q_local = s.heads.n_q_heads * hd;

  // o_proj columns: the rank's own heads, or FlashComm2's block j of K, which
  // holds the G head blocks of ODP group j with the rank's own at index i.
  // down_proj the same with K_mlp over the hidden features.
  const int tp = config.tp_size;
  const int t = place.tp_rank;
  s.wo_k = config.flashcomm2;
  s.wo_cols = s.wo_k > 0 ? c.q_dim() / s.wo_k : q_local;
  const int wo_col0 = flashcomm2_block_col(t, tp, s.wo_k > 0 ? s.wo_k : tp, c.q_dim());
  s.wo_own_col = t * q_local - wo_col0;
  s.down_k = config.flashcomm2_mlp;
  s.down_cols = s.down_k > 0 ? c.hidden_dim / s.down_k : s.hidden_local;
  const int down_col0 = flashcomm2_block_col(t, tp, s.down_k > 0 ? s.down_k : tp, c.hidden_dim);
  s.down_own_col = t * s.hidden_local - down_col0;

  if (with_vocab) {
    s.token_embedding = source.rows(Tensor::token_embedding, 0, 0, c.vocab_size);
    s.final_norm = source.rows(Tensor::final_norm, 0, 0, 1);
    if (!c.shared_classifier) {
      s.classifier = source.rows(Tensor::classifier, 0, 0, c.vocab_size);
    }
  }
  const int kv_row0 = s.heads.kv_head0 * hd;
  const int kv_rows = s.heads.n_kv_heads * hd;
  const int h0 = place.tp_rank * s.hidden_local;
  for (int l = 0; l < c.n_layers; ++l) {
    ShardedLayer sl;
    sl.attn_norm = source.rows(Tensor::attn_norm, l, 0, 1);
    sl.ffn_norm = source.rows(Tensor::ffn_norm, l, 0, 1);
    sl.w_qkv = source.rows(Tensor::wq, l, s.heads.q_head0 * hd, q_local);
    append(sl.w_qkv, source.rows(Tensor::wk, l, kv_row0, kv_rows));
    append(sl.w_qkv, source.rows(Tensor::wv, l, kv_row0, kv_rows));
    if (c.qkv_bias) {
      // The same q, k and v rows as w_qkv: a replicated KV head brings its bias along.
      sl.b_qkv = source.columns(Tensor::bq, l, s.heads.q_head0 * hd, q_local);
      append(sl.b_qkv, source.columns(Tensor::bk, l, kv_row0, kv_rows));
      append(sl.b_qkv, source.columns(Tensor::bv, l, kv_row0, kv_rows));
    }
    if (c.qk_norm) {
      // One head_dim weight shared by every head, so every rank holds it whole.
      sl.q_norm = source.rows(Tensor::q_norm, l, 0, 1);
      sl.k_norm = source.rows(Tensor::k_norm, l, 0, 1);
    }
    sl.wo = source.columns(Tensor::wo, l, wo_col0, s.wo_cols);
    sl.w_gate_up = source.rows(Tensor::w_gate, l, h0, s.hidden_local);
    append(sl.w_gate_up, source.rows(Tensor::w_up, l, h0, s.hidden_local));
    sl.w_down = source.columns(Tensor::w_down, l, down_col0, s.down_cols);
    s.layers.push_back(std::move(sl));
  }
  return s;
}

}  // namespace flashcomm
