// The forward pass of one rank under plain TP, FlashComm1 and FlashComm2 (for
// o_proj and down_proj), with the payload formats of wire.hpp and the overlap
// of collectives with GEMMs.
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
  const Pass pass = prefill ? Pass::prefill : Pass::decode;
  const ParallelConfig scheme = chooser_ ? chooser_(n_tokens, pass) : pc;
  FC_ASSERT(scheme.tp_size == pc.tp_size && scheme.dp_size == pc.dp_size,
            "a pass's scheme must keep tp {} and dp {}", pc.tp_size, pc.dp_size);
  // A FlashComm2 size is served by held weights of a size dividing it and by
  // the context's groups of that size.
  const auto served = [&](int k, int held) {
    return k == 0 || (held > 0 && k % held == 0 && k < pc.tp_size && pc.tp_size % k == 0 &&
                      ctx_.has_flashcomm2_groups(k));
  };
  FC_ASSERT(served(scheme.flashcomm2, w_.wo_k), "o_proj FlashComm2 K={} with the block of K={}",
            scheme.flashcomm2, w_.wo_k);
  FC_ASSERT(served(scheme.flashcomm2_mlp, w_.down_k),
            "down_proj FlashComm2 K={} with the block of K={}", scheme.flashcomm2_mlp, w_.down_k);
  FC_ASSERT(scheme.overlap_chunks >= 1, "overlap chunks {}", scheme.overlap_chunks);
  Plan plan;
  plan.n_tokens = n_tokens;
  plan.n_padded = padded_tokens(n_tokens, pc.tp_size);
  plan.n_slice = plan.n_padded / pc.tp_size;
  plan.flashcomm1 = prefill && scheme.flashcomm1 && pc.tp_size > 1;
  plan.k = prefill ? scheme.flashcomm2 : 0;
  plan.k_mlp = prefill ? scheme.flashcomm2_mlp : 0;
  plan.move = move_wire(scheme);
  plan.reduce = reduce_wire(scheme);
  plan.chunks = prefill ? scheme.overlap_chunks : 1;
  ctx_.stats().set_pass(pass);
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

// Gathers the slices [n_slice, d_model] of every TP rank on `wire` and drops
// the padding: -> full [n_tokens, d_model]. Every rank decodes its own slice
// too, so that all hold the same values.
Buffer gather_tokens(Communicator& tp, Wire wire, const Buffer& slice, int n_slice, int n_tokens,
                     int d_model) {
  Buffer full(sz(n_slice * tp.size(), d_model));
  if (wire == Wire::f32) {
    tp.all_gather(slice.data(), full.data(), sz(n_slice, d_model));
  } else {
    const size_t bytes = row_bytes(wire, d_model) * static_cast<size_t>(n_slice);
    std::vector<std::byte> send(bytes);
    std::vector<std::byte> recv(bytes * static_cast<size_t>(tp.size()));
    encode_rows(wire, slice.data(), d_model, n_slice, d_model, send.data());
    tp.all_gather(send.data(), recv.data(), bytes, Elem::byte);
    decode_rows(wire, recv.data(), n_tokens, d_model, full.data(), d_model);
  }
  full.resize(sz(n_tokens, d_model));
  return full;
}

// Sums the partial products [n_tokens, d_model] of the TP ranks and leaves
// this rank's slice: pads to n_padded, ReduceScatter -> [n_slice, d_model].
Buffer reduce_scatter_tokens(Communicator& tp, Wire wire, Buffer partial, int n_slice,
                             int d_model) {
  partial.resize(sz(n_slice * tp.size(), d_model), 0.0F);
  Buffer slice(sz(n_slice, d_model));
  reduce_scatter_on(tp, wire, partial.data(), slice.data(), sz(n_slice, d_model));
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
    h = gather_tokens(ctx_.tp(), plan.move, h, plan.n_slice, n, d);
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
// 2-3. QKV projection (one GEMM; under FlashComm1 fed by the AllGather of the
//    slices over TP, in 64-row panels, chunk by chunk under overlap), its bias (Qwen2), the
//    per-head q/k RMSNorm (Qwen3), RoPE, append K and V to the cache.
// 4. Causal attention over this rank's heads.
// 5. o_proj with its collectives, by scheme.
// 6. Residual add.
void Engine::attention_block(int layer, std::vector<float>& x, const Plan& plan) {
  const ModelConfig& c = w_.config;
  const ShardedLayer& lw = w_.layers[static_cast<size_t>(layer)];
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

  // 2-3. (gather [n_slice, d] -> [n, d]) qkv [n, q_local | kv_local | kv_local]
  Buffer qkv(sz(n, qkv_cols));
  if (plan.flashcomm1) {
    gather_gemm(h, lw.w_qkv.data(), d, qkv_cols, qkv.data(), plan, Phase::attn_gather,
                Phase::qkv_proj);
  } else {
    PhaseTimer timer(t, Phase::qkv_proj);
    kernels::matmul_wt(h.data(), d, lw.w_qkv.data(), d, qkv.data(), qkv_cols, n, d, qkv_cols);
  }
  // bias, q/k norm, rope, cache
  Buffer& kc = k_cache_[static_cast<size_t>(layer)];
  Buffer& vc = v_cache_[static_cast<size_t>(layer)];
  {
    PhaseTimer timer(t, Phase::qkv_proj);
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
  const Buffer y = output_projection(
      att, q_local, lw.wo.data(), w_.wo_cols, w_.wo_own_col, w_.wo_k, plan.k, c.q_dim(), plan,
      {Phase::o_proj_a2a, Phase::o_proj_gemm, Phase::o_proj_reduce, Phase::o_proj_gather});

  // 6. residual
  PhaseTimer timer(t, Phase::attn_residual);
  kernels::add_inplace(x.data(), y.data(), n_res, d);
}

namespace {

// y rows of tokens first_token .. first_token+rows-1 (those below n_tokens) =
// x[rows, n_in] . w^T, in panels of kPanelRows rows (layout.hpp), so that a
// row's result depends only on its place in its panel.
void panel_gemm(const float* x, int ldx, const float* w, int ldw, int n_in, int n_out, int rows,
                int first_token, int n_tokens, float* y, Buffer& scratch) {
  for (int p = 0; p < rows; p += kPanelRows) {
    const int m = std::min(kPanelRows, rows - p);
    const int token = first_token + p;
    const int keep = std::clamp(n_tokens - token, 0, m);
    if (keep == m) {
      kernels::matmul_wt(x + sz(p, ldx), ldx, w, ldw, y + sz(token, n_out), n_out, m, n_in, n_out);
      continue;
    }
    // The panel runs into the padding: the same GEMM, only its real rows kept.
    scratch.resize(sz(m, n_out));
    kernels::matmul_wt(x + sz(p, ldx), ldx, w, ldw, scratch.data(), n_out, m, n_in, n_out);
    std::copy_n(scratch.data(), sz(keep, n_out), y + sz(token, n_out));
  }
}

}  // namespace

// FlashComm1's AllGather feeding a GEMM:
//   x [n_slice, d_model] on each TP rank -> y [n_tokens, n_out] =
//   (the slices of every rank, in token order, padding dropped) . w^T
// Chunk c of the overlap holds rows [row0, row0+rows) of every slice (one
// chunk without overlap). All AllGathers are posted at once; then each is
// waited for and its rows multiplied while the later ones travel. The GEMMs
// run in the same panels either way (panel_gemm), hence the same bits.
void Engine::gather_gemm(const std::vector<float>& x, const float* w, int ldw, int n_out, float* y,
                         const Plan& plan, Phase comm_phase, Phase gemm_phase) {
  Communicator& tp = ctx_.tp();
  const int d = w_.config.d_model;
  const int n_ranks = tp.size();
  const bool f32 = plan.move == Wire::f32;
  PhaseTimes& t = phase_times_;
  const std::vector<RowRange> chunks = overlap_row_chunks(plan.n_slice, plan.chunks);
  const bool blocking = chunks.size() == 1;

  // Post: send [rows, d] (encoded unless f32) -> recv [n_ranks][rows].
  const size_t row = row_bytes(plan.move, d);
  std::vector<std::vector<std::byte>> send(chunks.size());
  std::vector<std::vector<std::byte>> recv(chunks.size());
  std::vector<Buffer> gathered(chunks.size());
  std::vector<std::unique_ptr<PendingCollective>> pending(chunks.size());
  {
    PhaseTimer timer(t, comm_phase);
    for (size_t c = 0; c < chunks.size(); ++c) {
      const int rows = chunks[c].rows;
      gathered[c].resize(sz(n_ranks * rows, d));
      const float* mine = x.data() + sz(chunks[c].row0, d);
      if (f32) {
        if (blocking) {
          tp.all_gather(mine, gathered[c].data(), sz(rows, d));
        } else {
          pending[c] = tp.start_all_gather(mine, gathered[c].data(), sz(rows, d), Elem::f32);
        }
        continue;
      }
      const size_t bytes = row * static_cast<size_t>(rows);
      send[c].resize(bytes);
      recv[c].resize(bytes * static_cast<size_t>(n_ranks));
      encode_rows(plan.move, mine, d, rows, d, send[c].data());
      if (blocking) {
        tp.all_gather(send[c].data(), recv[c].data(), bytes, Elem::byte);
      } else {
        pending[c] = tp.start_all_gather(send[c].data(), recv[c].data(), bytes, Elem::byte);
      }
    }
  }
  // Wait, decode, and multiply each rank's rows into their tokens.
  Buffer scratch;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const int rows = chunks[c].rows;
    {
      PhaseTimer timer(t, comm_phase);
      if (pending[c]) {
        pending[c]->wait();
      }
      if (!f32) {
        decode_rows(plan.move, recv[c].data(), n_ranks * rows, d, gathered[c].data(), d);
      }
    }
    PhaseTimer timer(t, gemm_phase);
    for (int r = 0; r < n_ranks; ++r) {
      panel_gemm(gathered[c].data() + sz(r * rows, d), d, w, ldw, d, n_out, rows,
                 r * plan.n_slice + chunks[c].row0, plan.n_tokens, y, scratch);
    }
  }
}

// FlashComm2's projection of size k (o_proj: local_cols = q_local; down_proj:
// hidden_local), phases (1)-(3) of the scheme:
//   in [n_tokens, local_cols] (all tokens, this rank's input features)
//   -> [n_slice, d_model] (token chunk tp_rank, every feature, fully reduced)
// (1) Pad to n_padded; order the tp_size chunks [i, i+G, ..., i+(K-1)G] for
//     i = 0..G-1; AlltoAll over ODP; concatenate what arrives along the
//     feature axis: [K*n_slice, G*local_cols] (the G blocks of ODP group j).
// (2) Multiply by the weight block j (w, row stride ldw): [K*n_slice, d_model],
//     partial over j, in panels of each of the K token chunks.
// (3) K > 1: ReduceScatter over OTP, leaving chunk tp_rank summed over all j.
// (4) The AllGather, or FlashComm1's keeping of the slice, is the caller's.
// Under overlap, (1) and (2) run per chunk of rows [row0, row0+rows) of every
// token chunk: all AlltoAlls posted, then each waited for and multiplied.
std::vector<float> Engine::flashcomm2_project(const std::vector<float>& in, int local_cols,
                                              const float* w, int ldw, int k, const Plan& plan,
                                              Phase a2a_phase, Phase gemm_phase,
                                              Phase reduce_phase) {
  const int tp_size = ctx_.config().tp_size;
  const int g = tp_size / k;
  const int d = w_.config.d_model;
  const int feats = g * local_cols;  // the block's width
  Communicator& odp = ctx_.odp(k);
  PhaseTimes& t = phase_times_;
  const std::vector<int> order = flashcomm2_chunk_order(tp_size, k);
  const std::vector<RowRange> chunks = overlap_row_chunks(plan.n_slice, plan.chunks);
  const size_t row = row_bytes(plan.move, local_cols);
  const Buffer zero_row(static_cast<size_t>(local_cols), 0.0F);

  // (1) post: send [G dest][K slots][rows] -> recv [G src][K slots][rows]
  std::vector<std::vector<std::byte>> send(chunks.size());
  std::vector<std::vector<std::byte>> recv(chunks.size());
  std::vector<std::unique_ptr<PendingCollective>> pending(chunks.size());
  {
    PhaseTimer timer(t, a2a_phase);
    for (size_t c = 0; c < chunks.size(); ++c) {
      const int rows = chunks[c].rows;
      const size_t block = row * static_cast<size_t>(k) * static_cast<size_t>(rows);
      send[c].resize(block * static_cast<size_t>(g));
      recv[c].resize(send[c].size());
      for (int slot = 0; slot < tp_size; ++slot) {
        const int first = order[static_cast<size_t>(slot)] * plan.n_slice + chunks[c].row0;
        const int n_real = std::clamp(plan.n_tokens - first, 0, rows);
        std::byte* dst = send[c].data() + row * sz(slot, rows);
        if (n_real > 0) {
          encode_rows(plan.move, in.data() + sz(first, local_cols), local_cols, n_real, local_cols,
                      dst);
        }
        for (int r = n_real; r < rows; ++r) {  // padding
          encode_rows(plan.move, zero_row.data(), local_cols, 1, local_cols,
                      dst + row * static_cast<size_t>(r));
        }
      }
      if (chunks.size() == 1) {
        odp.all_to_all(send[c].data(), recv[c].data(), block, Elem::byte);
      } else {
        pending[c] = odp.start_all_to_all(send[c].data(), recv[c].data(), block, Elem::byte);
      }
    }
  }

  // (1) concatenate, (2) multiply, per chunk: a [K*rows, feats] -> z rows
  Buffer z(sz(k * plan.n_slice, d));
  Buffer a;
  Buffer scratch;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const int rows = chunks[c].rows;
    const int m = k * rows;
    {
      PhaseTimer timer(t, a2a_phase);
      if (pending[c]) {
        pending[c]->wait();
      }
      a.resize(sz(m, feats));
      for (int src = 0; src < g; ++src) {
        decode_rows(plan.move, recv[c].data() + row * sz(src, m), m, local_cols,
                    a.data() + sz(src, local_cols), feats);
      }
    }
    PhaseTimer timer(t, gemm_phase);
    for (int slot = 0; slot < k; ++slot) {
      const int first = slot * plan.n_slice + chunks[c].row0;  // row of z
      panel_gemm(a.data() + sz(slot * rows, feats), feats, w, ldw, feats, d, rows, first,
                 k * plan.n_slice, z.data(), scratch);
    }
  }
  if (k == 1) {
    return z;
  }

  // (3) ReduceScatter over OTP: [K][n_slice, d_model] -> [n_slice, d_model]
  PhaseTimer timer(t, reduce_phase);
  Buffer out(sz(plan.n_slice, d));
  reduce_scatter_on(ctx_.otp(k), plan.reduce, z.data(), out.data(), sz(plan.n_slice, d));
  return out;
}

// o_proj or down_proj, whose input `in` [n_tokens, local_cols] is sharded by
// its features, with its collectives by scheme -> [n_resident, d_model]:
// FlashComm2 of size k (the pass's block inside the held block of held_k;
// without FlashComm1 an AllGather of the chunks after it), or this rank's own
// columns (at own_col of the held block) then an AllReduce, or FlashComm1's
// ReduceScatter. `w` is the held block [d_model, ldw].
std::vector<float> Engine::output_projection(const std::vector<float>& in, int local_cols,
                                             const float* w, int ldw, int own_col, int held_k,
                                             int k, int total_cols, const Plan& plan,
                                             const ProjectionPhases& phases) {
  Communicator& tp = ctx_.tp();
  const int d = w_.config.d_model;
  const int n = plan.n_tokens;
  PhaseTimes& t = phase_times_;
  if (k > 0) {
    const int col = flashcomm2_block_col(w_.tp_rank, w_.tp_size, k, total_cols) -
                    flashcomm2_block_col(w_.tp_rank, w_.tp_size, held_k, total_cols);
    Buffer y = flashcomm2_project(in, local_cols, w + col, ldw, k, plan, phases.a2a, phases.gemm,
                                  phases.reduce);
    if (!plan.flashcomm1) {
      // (4) AllGather the chunks: [n_slice, d] -> [n_padded, d], drop padding.
      PhaseTimer timer(t, phases.gather);
      y = gather_tokens(tp, plan.move, y, plan.n_slice, n, d);
    }
    return y;
  }
  Buffer y(sz(n, d));
  {
    PhaseTimer timer(t, phases.gemm);
    kernels::matmul_wt(in.data(), local_cols, w + own_col, ldw, y.data(), d, n, local_cols, d);
  }
  PhaseTimer timer(t, phases.reduce);
  if (plan.flashcomm1) {
    y = reduce_scatter_tokens(tp, plan.reduce, std::move(y), plan.n_slice, d);
  } else if (tp.size() > 1) {
    all_reduce_on(tp, plan.reduce, y.data(), sz(n, d));
  }
  return y;
}

// MLP block of layer l, on the resident rows x:
// 1. RMSNorm.
// 2-3. gate/up projection (one GEMM; under FlashComm1 fed by the AllGather of
//    the slices over TP, in 64-row panels, chunk by chunk under overlap), SiLU(gate) * up.
// 4. down projection and its reduction: AllReduce over TP, FlashComm1's
//    ReduceScatter, or down_proj FlashComm2 (AlltoAll, GEMM on whole hidden
//    rows, OTP ReduceScatter, and without FlashComm1 an AllGather).
// 5. Residual add.
void Engine::mlp_block(int layer, std::vector<float>& x, const Plan& plan) {
  const ModelConfig& c = w_.config;
  const ShardedLayer& lw = w_.layers[static_cast<size_t>(layer)];
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

  // 2-3. (gather [n_slice, d] -> [n, d]) gate/up [n, 2*hid] -> act [n, hid]
  Buffer gu(sz(n, 2 * hid));
  if (plan.flashcomm1) {
    gather_gemm(h, lw.w_gate_up.data(), d, 2 * hid, gu.data(), plan, Phase::mlp_gather,
                Phase::gate_up_proj);
  } else {
    PhaseTimer timer(t, Phase::gate_up_proj);
    kernels::matmul_wt(h.data(), d, lw.w_gate_up.data(), d, gu.data(), 2 * hid, n, d, 2 * hid);
  }
  Buffer act(sz(n, hid));
  {
    PhaseTimer timer(t, Phase::activation);
    kernels::silu_mul(gu.data(), gu.data() + hid, 2 * hid, act.data(), n, hid);
  }

  // 4. down -> y: [n_res, d] (FlashComm1) or [n, d]
  const Buffer y = output_projection(
      act, hid, lw.w_down.data(), w_.down_cols, w_.down_own_col, w_.down_k, plan.k_mlp,
      c.hidden_dim, plan,
      {Phase::mlp_a2a, Phase::down_proj, Phase::mlp_reduce, Phase::mlp_out_gather});

  // 5. residual
  PhaseTimer timer(t, Phase::mlp_residual);
  kernels::add_inplace(x.data(), y.data(), n_res, d);
}

}  // namespace flashcomm
