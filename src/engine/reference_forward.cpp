// The unsharded reference forward pass: one token at a time through the
// plain reference kernels, as llama2.c computes it, plus Qwen2's q/k/v biases
// and Qwen3's per-head q/k RMSNorm (before RoPE) when the config has them.
// Every scheme is tested against this.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "flashcomm/engine.hpp"
#include "flashcomm/error.hpp"
#include "flashcomm/kernels.hpp"

namespace flashcomm {

namespace ref = kernels::reference;

double max_relative_error(const std::vector<float>& got, const std::vector<float>& expected) {
  FC_ASSERT(got.size() == expected.size(), "sizes {} and {}", got.size(), expected.size());
  double scale = 0.0;
  double diff = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    // std::max would drop a NaN; a non-finite value is an infinite error.
    if (!std::isfinite(got[i]) || !std::isfinite(expected[i])) {
      return std::numeric_limits<double>::infinity();
    }
    scale = std::max(scale, std::fabs(static_cast<double>(expected[i])));
    diff = std::max(diff, std::fabs(static_cast<double>(got[i]) - expected[i]));
  }
  return scale > 0.0 ? diff / scale : diff;
}

ReferenceModel::ReferenceModel(const ModelWeights& weights, int context) : w_(weights) {
  check_weights(w_, "reference model");
  const ModelConfig& c = w_.config;
  FC_ASSERT(context >= 0 && context <= c.seq_len, "context {} of a model with seq_len {}", context,
            c.seq_len);
  context_ = context == 0 ? c.seq_len : context;
  const size_t cache = static_cast<size_t>(context_) * c.kv_dim();
  k_cache_.assign(static_cast<size_t>(c.n_layers), std::vector<float>(cache, 0.0F));
  v_cache_.assign(static_cast<size_t>(c.n_layers), std::vector<float>(cache, 0.0F));
}

std::vector<float> ReferenceModel::last_logits(const std::vector<int>& tokens) {
  FC_ASSERT(!tokens.empty(), "no tokens");
  reset();
  std::vector<float> logits;
  for (int t : tokens) {
    logits = step(t);
  }
  return logits;
}

std::vector<float> ReferenceModel::step(int token) {
  const ModelConfig& c = w_.config;
  FC_ASSERT(position_ < context_, "position {} beyond context {}", position_, context_);
  FC_ASSERT(token >= 0 && token < c.vocab_size, "token {} of {}", token, c.vocab_size);
  const int d = c.d_model;
  const int pos = position_;
  std::vector<float> x(w_.token_embedding.begin() + static_cast<std::ptrdiff_t>(token) * d,
                       w_.token_embedding.begin() + static_cast<std::ptrdiff_t>(token + 1) * d);
  std::vector<float> h(d);
  std::vector<float> q(c.q_dim());
  std::vector<float> att(c.q_dim());
  std::vector<float> y(d);
  std::vector<float> gate(c.hidden_dim);
  std::vector<float> up(c.hidden_dim);
  std::vector<float> act(c.hidden_dim);

  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& lw = w_.layers[static_cast<size_t>(l)];
    float* k = &k_cache_[static_cast<size_t>(l)][static_cast<size_t>(pos) * c.kv_dim()];
    float* v = &v_cache_[static_cast<size_t>(l)][static_cast<size_t>(pos) * c.kv_dim()];

    ref::rmsnorm(x.data(), lw.attn_norm.data(), h.data(), 1, d, c.norm_eps);
    ref::matmul_wt(h.data(), d, lw.wq.data(), d, q.data(), c.q_dim(), 1, d, c.q_dim());
    ref::matmul_wt(h.data(), d, lw.wk.data(), d, k, c.kv_dim(), 1, d, c.kv_dim());
    ref::matmul_wt(h.data(), d, lw.wv.data(), d, v, c.kv_dim(), 1, d, c.kv_dim());
    if (c.qkv_bias) {
      ref::add_bias(q.data(), c.q_dim(), lw.bq.data(), 1, c.q_dim());
      ref::add_bias(k, c.kv_dim(), lw.bk.data(), 1, c.kv_dim());
      ref::add_bias(v, c.kv_dim(), lw.bv.data(), 1, c.kv_dim());
    }
    if (c.qk_norm) {
      ref::head_rmsnorm(q.data(), c.q_dim(), lw.q_norm.data(), 1, c.n_heads, c.head_dim,
                        c.norm_eps);
      ref::head_rmsnorm(k, c.kv_dim(), lw.k_norm.data(), 1, c.n_kv_heads, c.head_dim, c.norm_eps);
    }
    ref::rope(q.data(), c.q_dim(), 1, c.n_heads, c.head_dim, pos, c.rope_theta);
    ref::rope(k, c.kv_dim(), 1, c.n_kv_heads, c.head_dim, pos, c.rope_theta);
    ref::attention(q.data(), c.q_dim(), k_cache_[static_cast<size_t>(l)].data(),
                   v_cache_[static_cast<size_t>(l)].data(), c.kv_dim(), att.data(), c.q_dim(), 1,
                   pos, c.n_heads, c.n_kv_heads, c.head_dim);
    ref::matmul_wt(att.data(), c.q_dim(), lw.wo.data(), c.q_dim(), y.data(), d, 1, c.q_dim(), d);
    for (int i = 0; i < d; ++i) {
      x[i] += y[i];
    }

    ref::rmsnorm(x.data(), lw.ffn_norm.data(), h.data(), 1, d, c.norm_eps);
    ref::matmul_wt(h.data(), d, lw.w_gate.data(), d, gate.data(), c.hidden_dim, 1, d, c.hidden_dim);
    ref::matmul_wt(h.data(), d, lw.w_up.data(), d, up.data(), c.hidden_dim, 1, d, c.hidden_dim);
    ref::silu_mul(gate.data(), up.data(), c.hidden_dim, act.data(), 1, c.hidden_dim);
    ref::matmul_wt(act.data(), c.hidden_dim, lw.w_down.data(), c.hidden_dim, y.data(), d, 1,
                   c.hidden_dim, d);
    for (int i = 0; i < d; ++i) {
      x[i] += y[i];
    }
  }

  ref::rmsnorm(x.data(), w_.final_norm.data(), h.data(), 1, d, c.norm_eps);
  std::vector<float> logits(c.vocab_size);
  ref::matmul_wt(h.data(), d, w_.output_weight().data(), d, logits.data(), c.vocab_size, 1, d,
                 c.vocab_size);
  ++position_;
  return logits;
}

}  // namespace flashcomm
