// The forward pass of one rank under plain TP, FlashComm1 and FlashComm2.
//
// Activations are row-major [tokens, features]. Between blocks the residual
// stream x is either every token, replicated on the TP ranks ([n_tokens,
// d_model]; plain TP and FlashComm2 alone), or under FlashComm1 this rank's
// slice of the padded tokens ([n_slice, d_model], slice r = tokens
// [r*n_slice, (r+1)*n_slice) with n_slice = n_padded/tp_size). Padding rows
// are zero. Every phase of a layer is timed under its name in phases.hpp.
#include "flashcomm/engine.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "flashcomm/error.hpp"
#include "flashcomm/kernels.hpp"

namespace flashcomm {

namespace {

using Buffer = std::vector<float>;

size_t sz(int a, int b) {
  return static_cast<size_t>(a) * static_cast<size_t>(b);
}

// Adds the time until it goes out of scope to one phase.
class PhaseTimer {
 public:
  PhaseTimer(PhaseTimes& times, Phase phase)
      : slot_(times[phase]), start_(std::chrono::steady_clock::now()) {}
  ~PhaseTimer() {
    slot_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  PhaseTimer(const PhaseTimer&) = delete;
  PhaseTimer& operator=(const PhaseTimer&) = delete;

 private:
  double& slot_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace

std::int64_t kv_cache_bytes(const ModelConfig& config, int tp_size, int context) {
  const HeadShard heads = head_shard(config, tp_size, 0);
  return std::int64_t{2} * config.n_layers * context * heads.n_kv_heads * config.head_dim *
         static_cast<std::int64_t>(sizeof(float));
}

Engine::Engine(const WeightSource& source, ParallelContext& ctx, bool with_vocab, int context)
    : ctx_(ctx), w_(shard_weights(source, ctx.config(), ctx.place(), with_vocab)) {
  const ModelConfig& c = w_.config;
  FC_ASSERT(context >= 0 && context <= c.seq_len, "context {} of seq_len {}", context, c.seq_len);
  context_ = context == 0 ? c.seq_len : context;
  const size_t cache = sz(context_, w_.heads.n_kv_heads * c.head_dim);
  k_cache_.assign(static_cast<size_t>(c.n_layers), Buffer(cache, 0.0F));
  v_cache_.assign(static_cast<size_t>(c.n_layers), Buffer(cache, 0.0F));
}

Engine::Engine(const ModelWeights& full, ParallelContext& ctx, int context)
    : Engine(MemorySource(full), ctx, true, context) {}

std::vector<float> Engine::prefill(const std::vector<int>& tokens) {
  position_ = 0;
  return forward(tokens, true);
}

std::vector<float> Engine::decode(int token) {
  return forward({token}, false);
}

Engine::Plan Engine::plan_pass(int n_tokens, bool prefill) {
  const ParallelConfig& pc = ctx_.config();
  FC_ASSERT(n_tokens >= 1 && position_ + n_tokens <= context_,
            "{} tokens at position {} with context {}", n_tokens, position_, context_);
  Plan plan;
  plan.n_tokens = n_tokens;
  plan.n_padded = padded_tokens(n_tokens, pc.tp_size);
  plan.n_slice = plan.n_padded / pc.tp_size;
  plan.flashcomm1 = prefill && pc.flashcomm1 && pc.tp_size > 1;
  plan.flashcomm2 = prefill && pc.flashcomm2_on();
  ctx_.stats().set_pass(prefill ? Pass::prefill : Pass::decode);
  return plan;
}

std::vector<float> Engine::prefill_layers(const std::vector<float>& hidden, int n_tokens) {
  const int d = w_.config.d_model;
  FC_ASSERT(hidden.size() == sz(n_tokens, d), "hidden holds {} floats, not {} x {}", hidden.size(),
            n_tokens, d);
  position_ = 0;
  const Plan plan = plan_pass(n_tokens, true);
  Buffer x(sz(plan.n_resident(), d), 0.0F);
  const int first = plan.flashcomm1 ? ctx_.place().tp_rank * plan.n_slice : 0;
  const int n_real = std::clamp(n_tokens - first, 0, plan.n_resident());
  std::copy_n(hidden.data() + sz(first, d), sz(n_real, d), x.data());
  run_layers(x, plan);
  return x;
}

namespace {

// Gathers the FlashComm1 slices of every TP rank and drops the padding:
// slice [n_slice, d_model] -> full [n_tokens, d_model].
Buffer gather_tokens(Communicator& tp, const Buffer& slice, int n_slice, int n_tokens,
                     int d_model) {
  Buffer full(sz(n_slice * tp.size(), d_model));
  tp.all_gather(slice.data(), full.data(), sz(n_slice, d_model));
  full.resize(sz(n_tokens, d_model));
  return full;
}

// Sums the partial products [n_tokens, d_model] of the TP ranks and leaves
// this rank's slice: pads to n_padded, ReduceScatter -> [n_slice, d_model].
Buffer reduce_scatter_tokens(Communicator& tp, Buffer partial, int n_slice, int d_model) {
  partial.resize(sz(n_slice * tp.size(), d_model), 0.0F);
  Buffer slice(sz(n_slice, d_model));
  tp.reduce_scatter(partial.data(), slice.data(), sz(n_slice, d_model));
  return slice;
}

}  // namespace

std::vector<float> Engine::forward(const std::vector<int>& tokens, bool prefill) {
  const ModelConfig& c = w_.config;
  const int d = c.d_model;
  FC_ASSERT(!w_.token_embedding.empty(), "a layers-only engine has no embedding");
  const Plan plan = plan_pass(static_cast<int>(tokens.size()), prefill);
  const int n = plan.n_tokens;
  const int n_res = plan.n_resident();

  // Embedding of the resident tokens; FlashComm1 padding rows stay zero.
  Buffer x(sz(n_res, d), 0.0F);
  const int first = plan.flashcomm1 ? ctx_.place().tp_rank * plan.n_slice : 0;
  for (int r = 0; r < n_res && first + r < n; ++r) {
    const int token = tokens[static_cast<size_t>(first) + static_cast<size_t>(r)];
    FC_ASSERT(token >= 0 && token < c.vocab_size, "token {} of vocabulary {}", token, c.vocab_size);
    std::memcpy(&x[sz(r, d)], &w_.token_embedding[sz(token, d)], sizeof(float) * d);
  }

  run_layers(x, plan);

  // Final norm on the resident rows; FlashComm1 gathers them so that every
  // rank holds the last position for the (replicated) output projection.
  Buffer h(x.size());
  kernels::rmsnorm(x.data(), w_.final_norm.data(), h.data(), n_res, d, c.norm_eps);
  if (plan.flashcomm1) {
    h = gather_tokens(ctx_.tp(), h, plan.n_slice, n, d);
  }
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));
  kernels::matmul_wt(h.data() + sz(n - 1, d), d, w_.output().data(), d, logits.data(), c.vocab_size,
                     1, d, c.vocab_size);
  return logits;
}

void Engine::run_layers(std::vector<float>& x, const Plan& plan) {
  for (int l = 0; l < w_.config.n_layers; ++l) {
    attention_block(l, x, plan);
    mlp_block(l, x, plan);
  }
  position_ += plan.n_tokens;
}

// Attention block of layer l, on the resident rows x:
// 1. RMSNorm.
// 2. FlashComm1: AllGather the slices over TP, drop the padding.
// 3. QKV projection (one GEMM), its bias (Qwen2), the per-head q/k RMSNorm
//    (Qwen3), RoPE, append K and V to the cache.
// 4. Causal attention over this rank's heads.
// 5. o_proj with its collectives, by scheme.
// 6. Residual add.
void Engine::attention_block(int layer, std::vector<float>& x, const Plan& plan) {
  const ModelConfig& c = w_.config;
  const ShardedLayer& lw = w_.layers[static_cast<size_t>(layer)];
  Communicator& tp = ctx_.tp();
  const int d = c.d_model;
  const int hd = c.head_dim;
  const int n = plan.n_tokens;
  const int n_res = plan.n_resident();
  const int q_local = w_.heads.n_q_heads * hd;
  const int kv_local = w_.heads.n_kv_heads * hd;
  const int qkv_cols = q_local + 2 * kv_local;
  const int pos0 = position_;
  PhaseTimes& t = phase_times_;

  // 1. norm [n_res, d]
  Buffer h(sz(n_res, d));
  {
    PhaseTimer timer(t, Phase::attn_norm);
    kernels::rmsnorm(x.data(), lw.attn_norm.data(), h.data(), n_res, d, c.norm_eps);
  }

  // 2. gather [n_slice, d] -> [n, d]
  if (plan.flashcomm1) {
    PhaseTimer timer(t, Phase::attn_gather);
    h = gather_tokens(tp, h, plan.n_slice, n, d);
  }

  // 3. qkv [n, q_local | kv_local | kv_local], bias, q/k norm, rope, cache
  Buffer qkv(sz(n, qkv_cols));
  Buffer& kc = k_cache_[static_cast<size_t>(layer)];
  Buffer& vc = v_cache_[static_cast<size_t>(layer)];
  {
    PhaseTimer timer(t, Phase::qkv_proj);
    kernels::matmul_wt(h.data(), d, lw.w_qkv.data(), d, qkv.data(), qkv_cols, n, d, qkv_cols);
    if (c.qkv_bias) {
      kernels::add_bias(qkv.data(), qkv_cols, lw.b_qkv.data(), n, qkv_cols);
    }
    if (c.qk_norm) {
      // Per head, before RoPE: a head's norm is the same whichever rank holds it.
      kernels::head_rmsnorm(qkv.data(), qkv_cols, lw.q_norm.data(), n, w_.heads.n_q_heads, hd,
                            c.norm_eps);
      kernels::head_rmsnorm(qkv.data() + q_local, qkv_cols, lw.k_norm.data(), n,
                            w_.heads.n_kv_heads, hd, c.norm_eps);
    }
    kernels::rope(qkv.data(), qkv_cols, n, w_.heads.n_q_heads, hd, pos0, c.rope_theta);
    kernels::rope(qkv.data() + q_local, qkv_cols, n, w_.heads.n_kv_heads, hd, pos0, c.rope_theta);
    for (int r = 0; r < n; ++r) {
      const float* row = &qkv[sz(r, qkv_cols)];
      std::memcpy(&kc[sz(pos0 + r, kv_local)], row + q_local, sizeof(float) * kv_local);
      std::memcpy(&vc[sz(pos0 + r, kv_local)], row + q_local + kv_local, sizeof(float) * kv_local);
    }
  }

  // 4. attention [n, q_local]
  Buffer att(sz(n, q_local));
  {
    PhaseTimer timer(t, Phase::attention);
    kernels::attention(qkv.data(), qkv_cols, kc.data(), vc.data(), kv_local, att.data(), q_local, n,
                       pos0, w_.heads.n_q_heads, w_.heads.n_kv_heads, hd);
  }

  // 5. o_proj -> y: [n_res, d] (FlashComm1) or [n, d]
  Buffer y;
  if (plan.flashcomm2) {
    y = flashcomm2_o_proj(lw, std::move(att), plan);
    if (!plan.flashcomm1) {
      // (4) AllGather the chunks: [n_slice, d] -> [n_padded, d], drop padding.
      PhaseTimer timer(t, Phase::o_proj_gather);
      y = gather_tokens(tp, y, plan.n_slice, n, d);
    }
  } else {
    y.resize(sz(n, d));
    {
      PhaseTimer timer(t, Phase::o_proj_gemm);
      kernels::matmul_wt(att.data(), q_local, lw.wo.data() + w_.wo_own_col, w_.wo_cols, y.data(), d,
                         n, q_local, d);
    }
    PhaseTimer timer(t, Phase::o_proj_reduce);
    if (plan.flashcomm1) {
      y = reduce_scatter_tokens(tp, std::move(y), plan.n_slice, d);
    } else if (tp.size() > 1) {
      tp.all_reduce(y.data(), sz(n, d));
    }
  }

  // 6. residual
  PhaseTimer timer(t, Phase::attn_residual);
  kernels::add_inplace(x.data(), y.data(), n_res, d);
}

// FlashComm2 o_proj, phases (1)-(3) of the scheme:
//   att [n_tokens, q_local] (all tokens, this rank's heads)
//   -> [n_slice, d_model] (token chunk tp_rank, all heads, fully reduced)
// (1) Pad to n_padded; order the tp_size chunks [i, i+G, ..., i+(K-1)G] for
//     i = 0..G-1; AlltoAll over ODP; concatenate what arrives along the
//     feature axis: [K*n_slice, q_dim/K] (the G head blocks of ODP group j).
// (2) Multiply by the o_proj block j: [K*n_slice, d_model], partial over j.
// (3) K > 1: ReduceScatter over OTP, leaving chunk tp_rank summed over all j.
// (4) The AllGather, or FlashComm1's keeping of the slice, is the caller's.
std::vector<float> Engine::flashcomm2_o_proj(const ShardedLayer& lw, std::vector<float> att,
                                             const Plan& plan) {
  const ParallelConfig& pc = ctx_.config();
  const int k = pc.otp_size();
  const int g = pc.odp_size();
  const int d = w_.config.d_model;
  const int q_local = w_.heads.n_q_heads * w_.config.head_dim;
  const int rows = k * plan.n_slice;  // tokens this rank multiplies
  const size_t block = sz(rows, q_local);
  PhaseTimes& t = phase_times_;

  // (1) order, AlltoAll, concatenate
  Buffer a(sz(rows, w_.wo_cols));
  {
    PhaseTimer timer(t, Phase::o_proj_a2a);
    Buffer send;
    if (k == 1) {
      // The chunk order is the identity: send the padded activations as they are.
      att.resize(sz(plan.n_padded, q_local), 0.0F);
      send = std::move(att);
    } else {
      send.assign(sz(plan.n_padded, q_local), 0.0F);
      const std::vector<int> order = flashcomm2_chunk_order(pc.tp_size, k);
      for (size_t slot = 0; slot < order.size(); ++slot) {
        const int row0 = order[slot] * plan.n_slice;
        const int n_real = std::clamp(plan.n_tokens - row0, 0, plan.n_slice);
        std::copy_n(att.data() + sz(row0, q_local), sz(n_real, q_local),
                    send.data() + slot * sz(plan.n_slice, q_local));
      }
    }
    Buffer recv(send.size());
    ctx_.odp().all_to_all(send.data(), recv.data(), block);
    for (int src = 0; src < g; ++src) {
      for (int r = 0; r < rows; ++r) {
        std::copy_n(recv.data() + src * block + sz(r, q_local), q_local,
                    a.data() + sz(r, w_.wo_cols) + sz(src, q_local));
      }
    }
  }

  // (2) o_proj block j: [rows, q_dim/K] . [d_model, q_dim/K]^T
  Buffer z(sz(rows, d));
  {
    PhaseTimer timer(t, Phase::o_proj_gemm);
    kernels::matmul_wt(a.data(), w_.wo_cols, lw.wo.data(), w_.wo_cols, z.data(), d, rows,
                       w_.wo_cols, d);
  }
  if (k == 1) {
    return z;
  }

  // (3) ReduceScatter over OTP: [K][n_slice, d_model] -> [n_slice, d_model]
  PhaseTimer timer(t, Phase::o_proj_reduce);
  Buffer out(sz(plan.n_slice, d));
  ctx_.otp().reduce_scatter(z.data(), out.data(), sz(plan.n_slice, d));
  return out;
}

// MLP block of layer l, on the resident rows x:
// 1. RMSNorm.
// 2. FlashComm1: AllGather the slices over TP, drop the padding.
// 3. gate/up projection (one GEMM), SiLU(gate) * up.
// 4. down projection; AllReduce over TP, or FlashComm1's ReduceScatter.
// 5. Residual add.
void Engine::mlp_block(int layer, std::vector<float>& x, const Plan& plan) {
  const ModelConfig& c = w_.config;
  const ShardedLayer& lw = w_.layers[static_cast<size_t>(layer)];
  Communicator& tp = ctx_.tp();
  const int d = c.d_model;
  const int n = plan.n_tokens;
  const int n_res = plan.n_resident();
  const int hid = w_.hidden_local;
  PhaseTimes& t = phase_times_;

  // 1. norm [n_res, d]
  Buffer h(sz(n_res, d));
  {
    PhaseTimer timer(t, Phase::mlp_norm);
    kernels::rmsnorm(x.data(), lw.ffn_norm.data(), h.data(), n_res, d, c.norm_eps);
  }

  // 2. gather [n_slice, d] -> [n, d]
  if (plan.flashcomm1) {
    PhaseTimer timer(t, Phase::mlp_gather);
    h = gather_tokens(tp, h, plan.n_slice, n, d);
  }

  // 3. gate/up [n, 2*hid] -> act [n, hid]
  Buffer gu(sz(n, 2 * hid));
  {
    PhaseTimer timer(t, Phase::gate_up_proj);
    kernels::matmul_wt(h.data(), d, lw.w_gate_up.data(), d, gu.data(), 2 * hid, n, d, 2 * hid);
  }
  Buffer act(sz(n, hid));
  {
    PhaseTimer timer(t, Phase::activation);
    kernels::silu_mul(gu.data(), gu.data() + hid, 2 * hid, act.data(), n, hid);
  }

  // 4. down [n, d], then its reduction
  Buffer y(sz(n, d));
  {
    PhaseTimer timer(t, Phase::down_proj);
    kernels::matmul_wt(act.data(), hid, lw.w_down.data(), hid, y.data(), d, n, hid, d);
  }
  {
    PhaseTimer timer(t, Phase::mlp_reduce);
    if (plan.flashcomm1) {
      y = reduce_scatter_tokens(tp, std::move(y), plan.n_slice, d);
    } else if (tp.size() > 1) {
      tp.all_reduce(y.data(), sz(n, d));
    }
  }

  // 5. residual
  PhaseTimer timer(t, Phase::mlp_residual);
  kernels::add_inplace(x.data(), y.data(), n_res, d);
}

}  // namespace flashcomm
