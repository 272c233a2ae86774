// Cutting the full weights into one rank's shard.
//
// Row blocks are copied whole; column blocks are copied row by row. QKV and
// gate/up are fused into one matrix each so each projection is one GEMM.
#include <algorithm>

#include "flashcomm/engine.hpp"
#include "flashcomm/error.hpp"

namespace flashcomm {

namespace {

// Appends rows [row0, row0+n_rows) of m[.., n_cols] to out.
void append_rows(std::vector<float>& out, const std::vector<float>& m, int n_cols, int row0,
                 int n_rows) {
  const auto begin = m.begin() + static_cast<std::ptrdiff_t>(row0) * n_cols;
  out.insert(out.end(), begin, begin + static_cast<std::ptrdiff_t>(n_rows) * n_cols);
}

// Columns [col0, col0+n) of m[n_rows, n_cols], as [n_rows, n].
std::vector<float> columns(const std::vector<float>& m, int n_rows, int n_cols, int col0, int n) {
  FC_ASSERT(col0 >= 0 && col0 + n <= n_cols, "columns {}+{} of {}", col0, n, n_cols);
  std::vector<float> out(static_cast<size_t>(n_rows) * n);
  for (int r = 0; r < n_rows; ++r) {
    const float* src = m.data() + static_cast<size_t>(r) * n_cols + col0;
    std::copy(src, src + n, out.data() + static_cast<size_t>(r) * n);
  }
  return out;
}

}  // namespace

ShardedWeights shard_weights(const ModelWeights& full, const ParallelConfig& config,
                             const RankPlace& place) {
  const ModelConfig& c = full.config;
  ShardedWeights s;
  s.config = c;
  s.heads = head_shard(c, config.tp_size, place.tp_rank);
  s.hidden_local = c.hidden_dim / config.tp_size;
  const int hd = c.head_dim;
  const int q_local = s.heads.n_q_heads * hd;

  // o_proj columns: the rank's own heads, or FlashComm2's block j of K, which
  // holds the G head blocks of ODP group j with the rank's own at index i.
  if (config.flashcomm2_on()) {
    s.wo_cols = c.q_dim() / config.otp_size();
    s.wo_own_col = place.otp_group * q_local;
  } else {
    s.wo_cols = q_local;
    s.wo_own_col = 0;
  }
  const int wo_col0 =
      config.flashcomm2_on() ? place.odp_group * s.wo_cols : place.tp_rank * q_local;

  s.token_embedding = full.token_embedding;
  s.final_norm = full.final_norm;
  s.output = full.output_weight();
  for (const LayerWeights& l : full.layers) {
    ShardedLayer sl;
    sl.attn_norm = l.attn_norm;
    sl.ffn_norm = l.ffn_norm;
    append_rows(sl.w_qkv, l.wq, c.d_model, s.heads.q_head0 * hd, q_local);
    append_rows(sl.w_qkv, l.wk, c.d_model, s.heads.kv_head0 * hd, s.heads.n_kv_heads * hd);
    append_rows(sl.w_qkv, l.wv, c.d_model, s.heads.kv_head0 * hd, s.heads.n_kv_heads * hd);
    sl.wo = columns(l.wo, c.d_model, c.q_dim(), wo_col0, s.wo_cols);
    const int h0 = place.tp_rank * s.hidden_local;
    append_rows(sl.w_gate_up, l.w_gate, c.d_model, h0, s.hidden_local);
    append_rows(sl.w_gate_up, l.w_up, c.d_model, h0, s.hidden_local);
    sl.w_down = columns(l.w_down, c.d_model, c.hidden_dim, h0, s.hidden_local);
    s.layers.push_back(std::move(sl));
  }
  return s;
}

}  // namespace flashcomm
