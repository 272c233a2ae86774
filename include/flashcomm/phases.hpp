// The phases of one transformer layer's forward pass, shared by the engine's
// timers, the benchmark and the cost model so that measured and predicted
// times line up row by row.
#pragma once

#include <array>
#include <cstdint>

namespace flashcomm {

enum class Phase : std::uint8_t {
  attn_norm,  // RMSNorm before attention (on the resident rows)
  attn_gather,  // FlashComm1: AllGather of the slices before QKV
  qkv_proj,  // QKV GEMM, RoPE, KV cache append
  attention,  // causal softmax attention over this rank's heads
  o_proj_a2a,  // FlashComm2: chunk reorder, AlltoAll over ODP, feature concat
  o_proj_gemm,  // o_proj GEMM
  o_proj_reduce,  // AllReduce / ReduceScatter over TP, or FlashComm2's OTP ReduceScatter
  o_proj_gather,  // FlashComm2 without FlashComm1: AllGather over TP
  attn_residual,  // residual add after attention
  mlp_norm,  // RMSNorm before the MLP
  mlp_gather,  // FlashComm1: AllGather before gate/up
  gate_up_proj,  // gate/up GEMM
  activation,  // SiLU(gate) * up
  mlp_a2a,  // FlashComm2 for down_proj: chunk reorder, AlltoAll over its ODP, feature concat
  down_proj,  // down GEMM
  mlp_reduce,  // AllReduce, FlashComm1's ReduceScatter, or down_proj FlashComm2's OTP ReduceScatter
  mlp_out_gather,  // down_proj FlashComm2 without FlashComm1: AllGather over TP
  mlp_residual,  // residual add after the MLP
};

inline constexpr int kPhaseCount = 18;

// "compute" phases run kernels; "comm" phases are collectives (with the
// copies that arrange their buffers, and the quantization of their payloads).
// Under overlap (ParallelConfig::overlap_chunks > 1) a comm phase holds only
// the time its collectives stayed exposed: posting, waiting and copies.
enum class PhaseKind : std::uint8_t { compute, comm };

const char* to_string(Phase phase);
PhaseKind kind_of(Phase phase);

// Seconds spent in each phase, summed over layers and passes.
struct PhaseTimes {
  std::array<double, kPhaseCount> seconds{};
  double& operator[](Phase p) { return seconds[static_cast<int>(p)]; }
  double operator[](Phase p) const { return seconds[static_cast<int>(p)]; }
};

}  // namespace flashcomm
