// The parallel layout: which ranks form which group, how tokens are padded and
// ordered, and which configurations a model allows. Pure functions, no MPI,
// so every formula here is tested on its own.
//
// World = dp_size x tp_size ranks; world rank = dp_rank*tp_size + tp_rank.
// FlashComm2 with o_proj tensor-parallel size K (otp_size), G = tp_size/K
// (odp_size), inside DP replica d:
//   OTP group i (i = 0..G-1): ranks d*TP + i + j*G, j = 0..K-1, in order of j
//   ODP group j (j = 0..K-1): ranks d*TP + j*G + i, i = 0..G-1, in order of i
// so tp_rank t sits at i = t % G, j = t / G. With K = 1 there is no OTP group
// and the ODP group is the TP group.
#pragma once

#include <cstdint>
#include <vector>

#include "flashcomm/model.hpp"

namespace flashcomm {

// How collective payloads travel. int8 applies to the collectives that move
// activations without summing them (AlltoAll, AllGather): symmetric int8 with
// one float scale per token row, the scales sent along. bf16 applies to every
// collective int8 does not cover (and to all of them without int8); the
// reductions then sum in bf16.
enum class CommQuant : std::uint8_t { none, int8 };
enum class CommDtype : std::uint8_t { f32, bf16 };
const char* to_string(CommQuant quant);
const char* to_string(CommDtype dtype);

struct ParallelConfig {
  int dp_size = 1;
  int tp_size = 1;
  bool flashcomm1 = false;  // sequence parallelism around the norms
  int flashcomm2 = 0;  // o_proj tensor-parallel size K; 0 = FlashComm2 off
  // FlashComm2's rewrite applied to down_proj (AlltoAll of the activation
  // [n_tokens, hidden_dim/TP] before it, then a [n_slice, hidden_dim/K_mlp]
  // GEMM): its tensor-parallel size K_mlp; 0 = off. Its OTP/ODP groups follow
  // the same formulas as o_proj's with K_mlp in place of K.
  int flashcomm2_mlp = 0;
  CommQuant comm_quant = CommQuant::none;
  CommDtype comm_dtype = CommDtype::f32;
  // C >= 1: FlashComm2's AlltoAlls and FlashComm1's AllGathers split into C
  // token chunks, the collective of later chunks in flight during the GEMM of
  // earlier ones (non-blocking collectives). 1: no overlap.
  int overlap_chunks = 1;

  bool flashcomm2_on() const { return flashcomm2 > 0; }
  int otp_size() const { return flashcomm2; }
  int odp_size() const { return flashcomm2 > 0 ? tp_size / flashcomm2 : tp_size; }
  bool flashcomm2_mlp_on() const { return flashcomm2_mlp > 0; }
  int world_size() const { return dp_size * tp_size; }
};

// Where one rank sits in the layout.
struct RankPlace {
  int world_rank = 0;
  int dp_rank = 0;
  int tp_rank = 0;
  int otp_group = 0;  // i: which OTP group, and this rank's index in its ODP group
  int odp_group = 0;  // j: which ODP group, and this rank's index in its OTP group
};

RankPlace place_of(const ParallelConfig& config, int world_rank);

// World ranks of each group, in group order.
std::vector<int> tp_group_ranks(const ParallelConfig& config, int dp_rank);
std::vector<int> dp_group_ranks(const ParallelConfig& config, int tp_rank);
std::vector<int> otp_group_ranks(const ParallelConfig& config, int dp_rank, int i);
std::vector<int> odp_group_ranks(const ParallelConfig& config, int dp_rank, int j);

// n_tokens rounded up to a multiple of tp_size (at least tp_size).
int padded_tokens(int n_tokens, int tp_size);

// FlashComm2's AlltoAll order of the tp_size token chunks:
// [i, i+G, ..., i+(K-1)G] for i = 0..G-1, so ODP rank i receives the K chunks
// that its OTP group's ReduceScatter then hands one to each member.
std::vector<int> flashcomm2_chunk_order(int tp_size, int otp_size);

// Where tp_rank sits for FlashComm2 with size K (o_proj's K or down_proj's
// K_mlp): index i = tp_rank % G in its ODP group, j = tp_rank / G in its OTP
// group (G = tp_size / K).
struct Flashcomm2Place {
  int i = 0;
  int j = 0;
};
Flashcomm2Place flashcomm2_place(int tp_rank, int tp_size, int k);

// First column of the block of a projection's `total_cols` input features
// that tp_rank multiplies under FlashComm2 with size k (block j, total/k
// wide); k = tp_size gives the rank's own shard. The block for k is inside
// the block for any k0 dividing k, so weights held for k0 serve every such k.
int flashcomm2_block_col(int tp_rank, int tp_size, int k, int total_cols);

// FlashComm1's gathered GEMMs (QKV, gate/up) and FlashComm2's projections
// multiply each slice (or token chunk) in panels of kPanelRows rows, one GEMM
// per panel, whether or not the collective before them is overlapped. A BLAS
// result depends on a row's position inside its call, so fixed panels are
// what makes overlap bit-identical to no overlap; 64 rows already reach the
// large-GEMM rate of a CPU BLAS.
inline constexpr int kPanelRows = 64;

// The token chunks of overlap: the panels of n_slice rows split into
// min(chunks, panels) runs of nearly equal length (the first ones one panel
// longer), so that every chunk but the last is whole panels.
struct RowRange {
  int row0 = 0;
  int rows = 0;
};
std::vector<RowRange> overlap_row_chunks(int n_slice, int chunks);

// Attention heads a rank owns: query heads [q_head0, q_head0+n_q_heads),
// key/value heads [kv_head0, kv_head0+n_kv_heads). When tp_size exceeds the
// model's n_kv_heads, each KV head is replicated on tp_size/n_kv_heads ranks.
struct HeadShard {
  int q_head0 = 0;
  int n_q_heads = 0;
  int kv_head0 = 0;
  int n_kv_heads = 0;
};
HeadShard head_shard(const ModelConfig& model, int tp_size, int tp_rank);

// Throws ConfigError, naming the option and the values, when the layout
// cannot run the model. `world_size` < 0 skips the world-size check (used
// before ranks are launched).
void check_parallel_config(const ModelConfig& model, const ParallelConfig& config, int world_size);

// Throws ConfigError when n_prompt_tokens (BOS included) exceeds the context.
void check_prompt_fits(const ModelConfig& model, int n_prompt_tokens);

}  // namespace flashcomm
