// The forward pass of one rank under plain TP, FlashComm1 and FlashComm2.
//
// Activations are row-major [tokens, features]. Between blocks the residual
// stream x is either every token, replicated on the TP ranks ([n_tokens,
// d_model]; plain TP and FlashComm2 alone), or under FlashComm1 this rank's
// slice of the padded tokens ([n_padded/tp_size, d_model], slice r = tokens
// [r*n_padded/tp_size, (r+1)*n_padded/tp_size)). Padding rows are zero.
#include "flashcomm/engine.hpp"

#include <algorithm>
#include <cstring>

#include "flashcomm/error.hpp"
#include "flashcomm/kernels.hpp"
#include "flashcomm/log.hpp"

namespace flashcomm {

namespace {

using Buffer = std::vector<float>;

size_t sz(int a, int b) {
  return static_cast<size_t>(a) * static_cast<size_t>(b);
}

// The schemes one forward pass runs with.
struct PassPlan {
  int n_tokens = 0;
  int n_padded = 0;  // n_tokens rounded up to a multiple of tp_size
  int n_slice = 0;  // n_padded / tp_size: tokens of one FlashComm1 slice / chunk
  bool flashcomm1 = false;
  bool flashcomm2 = false;
  int n_resident() const { return flashcomm1 ? n_slice : n_tokens; }  // rows of x
};

}  // namespace

Engine::Engine(const ModelWeights& full, ParallelContext& ctx)
    : ctx_(ctx), w_(shard_weights(full, ctx.config(), ctx.place())) {
  const ModelConfig& c = w_.config;
  const size_t cache = sz(c.seq_len, w_.heads.n_kv_heads * c.head_dim);
  k_cache_.assign(static_cast<size_t>(c.n_layers), Buffer(cache, 0.0F));
  v_cache_.assign(static_cast<size_t>(c.n_layers), Buffer(cache, 0.0F));
}

std::vector<float> Engine::prefill(const std::vector<int>& tokens) {
  position_ = 0;
  return forward(tokens, true);
}

std::vector<float> Engine::decode(int token) {
  return forward({token}, false);
}

namespace {

// Gathers the FlashComm1 slices of every TP rank and drops the padding:
// slice [n_slice, d_model] -> full [n_tokens, d_model].
Buffer gather_tokens(Communicator& tp, const Buffer& slice, const PassPlan& plan, int d_model) {
  Buffer full(sz(plan.n_padded, d_model));
  tp.all_gather(slice.data(), full.data(), sz(plan.n_slice, d_model));
  full.resize(sz(plan.n_tokens, d_model));
  return full;
}

// Sums the partial products [n_tokens, d_model] of the TP ranks and leaves
// this rank's slice: pads to n_padded, ReduceScatter -> [n_slice, d_model].
Buffer reduce_scatter_tokens(Communicator& tp, Buffer partial, const PassPlan& plan, int d_model) {
  partial.resize(sz(plan.n_padded, d_model), 0.0F);
  Buffer slice(sz(plan.n_slice, d_model));
  tp.reduce_scatter(partial.data(), slice.data(), sz(plan.n_slice, d_model));
  return slice;
}

// FlashComm2 o_proj, all four phases:
//   att [n_tokens, q_local] (all tokens, this rank's heads)
//   -> [n_slice, d_model] (token chunk tp_rank, all heads, fully reduced)
// 1. Pad to n_padded; order the tp_size chunks [i, i+G, ..., i+(K-1)G] for
//    i = 0..G-1; AlltoAll over ODP; concatenate what arrives along the
//    feature axis: [K*n_slice, q_dim/K] (G head blocks of ODP group j).
// 2. Multiply by the o_proj block j: [K*n_slice, d_model], partial over j.
// 3. K > 1: ReduceScatter over OTP, leaving chunk tp_rank summed over all j.
// (4. The AllGather, or FlashComm1's keeping of the slice, is the caller's.)
Buffer flashcomm2_o_proj(ParallelContext& ctx, const ShardedWeights& w, const ShardedLayer& lw,
                         Buffer att, const PassPlan& plan) {
  const int k = ctx.config().otp_size();
  const int g = ctx.config().odp_size();
  const int d = w.config.d_model;
  const int q_local = w.heads.n_q_heads * w.config.head_dim;
  const int rows = k * plan.n_slice;  // tokens this rank multiplies
  const size_t block = sz(rows, q_local);

  // 1. order, AlltoAll, concatenate
  Buffer send;
  if (k == 1) {
    // Chunk order is the identity: send the padded activations as they are.
    att.resize(sz(plan.n_padded, q_local), 0.0F);
    send = std::move(att);
  } else {
    send.assign(sz(plan.n_padded, q_local), 0.0F);
    const std::vector<int> order = flashcomm2_chunk_order(ctx.config().tp_size, k);
    for (size_t slot = 0; slot < order.size(); ++slot) {
      const int chunk = order[slot];
      const int row0 = chunk * plan.n_slice;
      const int n_real = std::clamp(plan.n_tokens - row0, 0, plan.n_slice);
      std::copy_n(att.data() + sz(row0, q_local), sz(n_real, q_local),
                  send.data() + slot * sz(plan.n_slice, q_local));
    }
  }
  Buffer recv(send.size());
  ctx.odp().all_to_all(send.data(), recv.data(), block);
  Buffer a(sz(rows, w.wo_cols));
  for (int src = 0; src < g; ++src) {
    for (int r = 0; r < rows; ++r) {
      std::copy_n(recv.data() + src * block + sz(r, q_local), q_local,
                  a.data() + sz(r, w.wo_cols) + sz(src, q_local));
    }
  }

  // 2. o_proj block j: [rows, q_dim/K] . [d_model, q_dim/K]^T
  Buffer z(sz(rows, d));
  kernels::matmul_wt(a.data(), w.wo_cols, lw.wo.data(), w.wo_cols, z.data(), d, rows, w.wo_cols, d);
  if (k == 1) {
    return z;
  }

  // 3. ReduceScatter over OTP: [K][n_slice, d_model] -> [n_slice, d_model]
  Buffer out(sz(plan.n_slice, d));
  ctx.otp().reduce_scatter(z.data(), out.data(), sz(plan.n_slice, d));
  return out;
}

}  // namespace

std::vector<float> Engine::forward(const std::vector<int>& tokens, bool prefill) {
  const ModelConfig& c = w_.config;
  const ParallelConfig& pc = ctx_.config();
  const int tp_size = pc.tp_size;
  const int tp_rank = ctx_.place().tp_rank;
  const int d = c.d_model;
  const int hd = c.head_dim;
  const int q_local = w_.heads.n_q_heads * hd;
  const int kv_local = w_.heads.n_kv_heads * hd;
  const int qkv_cols = q_local + 2 * kv_local;
  const int hid = w_.hidden_local;
  const int pos0 = position_;
  Communicator& tp = ctx_.tp();

  PassPlan plan;
  plan.n_tokens = static_cast<int>(tokens.size());
  FC_ASSERT(plan.n_tokens >= 1 && pos0 + plan.n_tokens <= c.seq_len,
            "{} tokens at position {} with context {}", plan.n_tokens, pos0, c.seq_len);
  plan.n_padded = padded_tokens(plan.n_tokens, tp_size);
  plan.n_slice = plan.n_padded / tp_size;
  plan.flashcomm1 = prefill && pc.flashcomm1 && tp_size > 1;
  plan.flashcomm2 = prefill && pc.flashcomm2_on();
  ctx_.stats().set_pass(prefill ? Pass::prefill : Pass::decode);
  const int n = plan.n_tokens;
  const int n_res = plan.n_resident();

  // Embedding of the resident tokens; FlashComm1 padding rows stay zero.
  Buffer x(sz(n_res, d), 0.0F);
  const int first = plan.flashcomm1 ? tp_rank * plan.n_slice : 0;
  for (int r = 0; r < n_res && first + r < n; ++r) {
    const int token = tokens[static_cast<size_t>(first) + static_cast<size_t>(r)];
    FC_ASSERT(token >= 0 && token < c.vocab_size, "token {} of vocabulary {}", token, c.vocab_size);
    std::memcpy(&x[sz(r, d)], &w_.token_embedding[sz(token, d)], sizeof(float) * d);
  }

  Buffer h(sz(n_res, d));
  for (int l = 0; l < c.n_layers; ++l) {
    const ShardedLayer& lw = w_.layers[static_cast<size_t>(l)];

    // ---- Attention block ------------------------------------------------
    // 1. RMSNorm on the resident rows.
    // 2. FlashComm1: AllGather the slices over TP.
    // 3. QKV projection, RoPE, append K and V to the cache.
    // 4. Causal attention over this rank's heads.
    // 5. o_proj and its collectives, by scheme; residual add.

    // 1. norm
    kernels::rmsnorm(x.data(), lw.attn_norm.data(), h.data(), n_res, d, c.norm_eps);

    // 2. gather: [n_slice, d] -> [n_tokens, d]
    Buffer gathered;
    const float* h_all = h.data();
    if (plan.flashcomm1) {
      gathered = gather_tokens(tp, h, plan, d);
      h_all = gathered.data();
    }

    // 3. qkv [n, q_local | kv_local | kv_local]
    Buffer qkv(sz(n, qkv_cols));
    kernels::matmul_wt(h_all, d, lw.w_qkv.data(), d, qkv.data(), qkv_cols, n, d, qkv_cols);
    kernels::rope(qkv.data(), qkv_cols, n, w_.heads.n_q_heads, hd, pos0, c.rope_theta);
    kernels::rope(qkv.data() + q_local, qkv_cols, n, w_.heads.n_kv_heads, hd, pos0, c.rope_theta);
    Buffer& kc = k_cache_[static_cast<size_t>(l)];
    Buffer& vc = v_cache_[static_cast<size_t>(l)];
    for (int r = 0; r < n; ++r) {
      const float* row = &qkv[sz(r, qkv_cols)];
      std::memcpy(&kc[sz(pos0 + r, kv_local)], row + q_local, sizeof(float) * kv_local);
      std::memcpy(&vc[sz(pos0 + r, kv_local)], row + q_local + kv_local, sizeof(float) * kv_local);
    }

    // 4. attention [n, q_local]
    Buffer att(sz(n, q_local));
    kernels::attention(qkv.data(), qkv_cols, kc.data(), vc.data(), kv_local, att.data(), q_local, n,
                       pos0, w_.heads.n_q_heads, w_.heads.n_kv_heads, hd);

    // 5. o_proj
    if (plan.flashcomm2) {
      Buffer y = flashcomm2_o_proj(ctx_, w_, lw, std::move(att), plan);
      if (plan.flashcomm1) {
        kernels::add_inplace(x.data(), y.data(), n_res, d);
      } else {
        // (4) AllGather the chunks: [n_slice, d] -> [n_padded, d], drop padding.
        Buffer full(sz(plan.n_padded, d));
        tp.all_gather(y.data(), full.data(), sz(plan.n_slice, d));
        kernels::add_inplace(x.data(), full.data(), n, d);
      }
    } else {
      Buffer y(sz(n, d));
      kernels::matmul_wt(att.data(), q_local, lw.wo.data() + w_.wo_own_col, w_.wo_cols, y.data(), d,
                         n, q_local, d);
      if (plan.flashcomm1) {
        const Buffer slice = reduce_scatter_tokens(tp, std::move(y), plan, d);
        kernels::add_inplace(x.data(), slice.data(), n_res, d);
      } else {
        if (tp_size > 1) {
          tp.all_reduce(y.data(), sz(n, d));
        }
        kernels::add_inplace(x.data(), y.data(), n, d);
      }
    }

    // ---- MLP block ------------------------------------------------------
    // 1. RMSNorm on the resident rows.
    // 2. FlashComm1: AllGather the slices over TP.
    // 3. gate/up projection, SiLU(gate) * up.
    // 4. down projection; AllReduce (or FlashComm1: ReduceScatter); residual add.

    // 1. norm
    kernels::rmsnorm(x.data(), lw.ffn_norm.data(), h.data(), n_res, d, c.norm_eps);

    // 2. gather
    h_all = h.data();
    if (plan.flashcomm1) {
      gathered = gather_tokens(tp, h, plan, d);
      h_all = gathered.data();
    }

    // 3. gate/up [n, 2*hid] -> act [n, hid]
    Buffer gu(sz(n, 2 * hid));
    kernels::matmul_wt(h_all, d, lw.w_gate_up.data(), d, gu.data(), 2 * hid, n, d, 2 * hid);
    Buffer act(sz(n, hid));
    kernels::silu_mul(gu.data(), gu.data() + hid, 2 * hid, act.data(), n, hid);

    // 4. down [n, d]
    Buffer y(sz(n, d));
    kernels::matmul_wt(act.data(), hid, lw.w_down.data(), hid, y.data(), d, n, hid, d);
    if (plan.flashcomm1) {
      const Buffer slice = reduce_scatter_tokens(tp, std::move(y), plan, d);
      kernels::add_inplace(x.data(), slice.data(), n_res, d);
    } else {
      if (tp_size > 1) {
        tp.all_reduce(y.data(), sz(n, d));
      }
      kernels::add_inplace(x.data(), y.data(), n, d);
    }
  }

  // Final norm on the resident rows; FlashComm1 gathers them so that every
  // rank holds the last position for the (replicated) output projection.
  kernels::rmsnorm(x.data(), w_.final_norm.data(), h.data(), n_res, d, c.norm_eps);
  Buffer gathered;
  const float* final_all = h.data();
  if (plan.flashcomm1) {
    gathered = gather_tokens(tp, h, plan, d);
    final_all = gathered.data();
  }
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));
  kernels::matmul_wt(final_all + sz(n - 1, d), d, w_.output.data(), d, logits.data(), c.vocab_size,
                     1, d, c.vocab_size);
  position_ += n;
  return logits;
}

}  // namespace flashcomm
