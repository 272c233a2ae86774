// Names and kinds of the layer phases.
#include "flashcomm/phases.hpp"

namespace flashcomm {

const char* to_string(Phase phase) {
  switch (phase) {
    case Phase::attn_norm:
      return "attn_norm";
    case Phase::attn_gather:
      return "attn_gather";
    case Phase::qkv_proj:
      return "qkv_proj";
    case Phase::attention:
      return "attention";
    case Phase::o_proj_a2a:
      return "o_proj_a2a";
    case Phase::o_proj_gemm:
      return "o_proj_gemm";
    case Phase::o_proj_reduce:
      return "o_proj_reduce";
    case Phase::o_proj_gather:
      return "o_proj_gather";
    case Phase::attn_residual:
      return "attn_residual";
    case Phase::mlp_norm:
      return "mlp_norm";
    case Phase::mlp_gather:
      return "mlp_gather";
    case Phase::gate_up_proj:
      return "gate_up_proj";
    case Phase::activation:
      return "activation";
    case Phase::mlp_a2a:
      return "mlp_a2a";
    case Phase::down_proj:
      return "down_proj";
    case Phase::mlp_reduce:
      return "mlp_reduce";
    case Phase::mlp_out_gather:
      return "mlp_out_gather";
    case Phase::mlp_residual:
      return "mlp_residual";
  }
  return "unknown";
}

PhaseKind kind_of(Phase phase) {
  switch (phase) {
    case Phase::attn_gather:
    case Phase::o_proj_a2a:
    case Phase::o_proj_reduce:
    case Phase::o_proj_gather:
    case Phase::mlp_gather:
    case Phase::mlp_a2a:
    case Phase::mlp_reduce:
    case Phase::mlp_out_gather:
      return PhaseKind::comm;
    default:
      return PhaseKind::compute;
  }
}

}  // namespace flashcomm
