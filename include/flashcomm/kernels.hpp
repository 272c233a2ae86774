// Compute kernels of one rank: the optimised versions used by the engine and,
// in namespace `reference`, plain loops that define what each must compute.
// Tests compare the two with a tolerance chosen per kernel.
//
// All matrices are row-major. `ld*` is the distance in floats between rows,
// so a kernel can read or write a column block of a wider matrix.
#pragma once

namespace flashcomm::kernels {

// y[n_rows, n_out] = x[n_rows, n_in] . w[n_out, n_in]^T       (one sgemm)
// w's rows are ldw apart, so w may be a column block of a wider weight.
void matmul_wt(const float* x, int ldx, const float* w, int ldw, float* y, int ldy, int n_rows,
               int n_in, int n_out);

// y[n_rows, dim] = x / rms(x) * weight, per row; rms includes eps.
void rmsnorm(const float* x, const float* weight, float* y, int n_rows, int dim, float eps);

// x[n_rows, dim] += y[n_rows, dim]
void add_inplace(float* x, const float* y, int n_rows, int dim);

// x[n_rows, dim] += bias[dim] on every row; x's rows are ldx apart, so x may
// be a column block of a wider matrix (the fused QKV output).
void add_bias(float* x, int ldx, const float* bias, int n_rows, int dim);

// In place on x[n_rows, n_heads*head_dim] (row stride ldx): each head's
// head_dim values become x / rms(x) * weight[head_dim], rms including eps,
// one weight shared by every head (Qwen3's q/k norm).
void head_rmsnorm(float* x, int ldx, const float* weight, int n_rows, int n_heads, int head_dim,
                  float eps);

// Rotary embedding in place on x[n_rows, n_heads*head_dim] (row stride ldx):
// row r is at position pos0 + r; pairs (2i, 2i+1) of each head rotate by
// pos * theta^(-2i/head_dim), as llama2.c does.
void rope(float* x, int ldx, int n_rows, int n_heads, int head_dim, int pos0, float theta);

// Causal grouped-query attention of n_q query rows at positions
// pos0 .. pos0+n_q-1 against keys 0 .. pos0+n_q-1:
//   q   [n_q, n_heads*head_dim]        row stride ldq
//   k,v [pos0+n_q, n_kv_heads*head_dim] row stride ldkv
//   out [n_q, n_heads*head_dim]        row stride ldo
// Query head h reads key/value head h / (n_heads / n_kv_heads).
void attention(const float* q, int ldq, const float* k, const float* v, int ldkv, float* out,
               int ldo, int n_q, int pos0, int n_heads, int n_kv_heads, int head_dim);

// out[n_rows, dim] = silu(gate) * up, gate and up with row stride ld_in.
void silu_mul(const float* gate, const float* up, int ld_in, float* out, int n_rows, int dim);

// Index of the largest value of x[n]; the first one on ties.
int argmax(const float* x, int n);

// Threads the BLAS library may use for one GEMM in this process.
void set_blas_threads(int n_threads);

namespace reference {
void matmul_wt(const float* x, int ldx, const float* w, int ldw, float* y, int ldy, int n_rows,
               int n_in, int n_out);
void rmsnorm(const float* x, const float* weight, float* y, int n_rows, int dim, float eps);
void add_bias(float* x, int ldx, const float* bias, int n_rows, int dim);
void head_rmsnorm(float* x, int ldx, const float* weight, int n_rows, int n_heads, int head_dim,
                  float eps);
void rope(float* x, int ldx, int n_rows, int n_heads, int head_dim, int pos0, float theta);
void attention(const float* q, int ldq, const float* k, const float* v, int ldkv, float* out,
               int ldo, int n_q, int pos0, int n_heads, int n_kv_heads, int head_dim);
void silu_mul(const float* gate, const float* up, int ld_in, float* out, int n_rows, int dim);
}  // namespace reference

}  // namespace flashcomm::kernels
