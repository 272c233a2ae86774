// Optimised compute kernels of one rank: matrix products and both products
// inside attention go to OpenBLAS; the element-wise kernels are float loops
// written as llama2.c computes them. The definitions they must agree with are
// in reference.cpp.
#include "flashcomm/kernels.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "flashcomm/error.hpp"

namespace flashcomm::kernels {

namespace {

// Offset of row r in a matrix with row stride ld; size_t so that a long
// context times a wide row cannot overflow int.
std::size_t at(int r, int ld) {
  return static_cast<std::size_t>(r) * static_cast<std::size_t>(ld);
}

// cblas_sgemm returns nothing: on a bad argument OpenBLAS prints through
// xerbla and returns with C untouched, which would surface much later as
// wrong numbers. So every call is checked here first, with the values.
void sgemm_checked(CBLAS_TRANSPOSE trans_b, int m, int n, int k, float alpha, const float* a,
                   int lda, const float* b, int ldb, float* c, int ldc) {
  const int b_cols = trans_b == CblasTrans ? k : n;
  FC_ASSERT(m > 0 && n > 0 && k > 0, "sgemm m={} n={} k={}", m, n, k);
  FC_ASSERT(lda >= k && ldb >= b_cols && ldc >= n, "sgemm lda={} ldb={} ldc={} for k={} n={}", lda,
            ldb, ldc, k, n);
  FC_ASSERT(a != nullptr && b != nullptr && c != nullptr, "sgemm got a null matrix");
  cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b, m, n, k, alpha, a, lda, b, ldb, 0.0f, c, ldc);
}

// y[dim] = x / rms(x) * weight; y may alias x.
void rmsnorm_row(const float* x, const float* weight, float* y, int dim, float eps) {
  // Float accumulation as llama2.c does, so logits match its run.c.
  float ss = 0.0f;
  for (int j = 0; j < dim; ++j) {
    ss += x[j] * x[j];
  }
  ss = ss / static_cast<float>(dim) + eps;
  const float inv = 1.0f / std::sqrt(ss);

  // Each x[j] is read before y[j] is written, so y may alias x.
  for (int j = 0; j < dim; ++j) {
    y[j] = weight[j] * (x[j] * inv);
  }
}

}  // namespace

void matmul_wt(const float* x, int ldx, const float* w, int ldw, float* y, int ldy, int n_rows,
               int n_in, int n_out) {
  FC_ASSERT(n_rows >= 0 && n_in >= 0 && n_out >= 0, "n_rows={} n_in={} n_out={}", n_rows, n_in,
            n_out);
  if (n_rows == 0 || n_out == 0) {
    return;
  }
  if (n_in == 0) {
    // An empty sum is zero; BLAS rejects k = 0 with lda = 0, so fill here.
    FC_ASSERT(ldy >= n_out, "ldy={} n_out={}", ldy, n_out);
    for (int r = 0; r < n_rows; ++r) {
      std::fill_n(y + at(r, ldy), n_out, 0.0f);
    }
    return;
  }
  // w is [n_out, n_in] with row stride ldw, read transposed.
  sgemm_checked(CblasTrans, n_rows, n_out, n_in, 1.0f, x, ldx, w, ldw, y, ldy);
}

void rmsnorm(const float* x, const float* weight, float* y, int n_rows, int dim, float eps) {
  FC_ASSERT(n_rows >= 0 && dim >= 0, "n_rows={} dim={}", n_rows, dim);
  if (dim == 0) {
    return;
  }
  for (int r = 0; r < n_rows; ++r) {
    rmsnorm_row(x + at(r, dim), weight, y + at(r, dim), dim, eps);
  }
}

void add_inplace(float* x, const float* y, int n_rows, int dim) {
  FC_ASSERT(n_rows >= 0 && dim >= 0, "n_rows={} dim={}", n_rows, dim);
  const std::size_t n = at(n_rows, dim);
  for (std::size_t i = 0; i < n; ++i) {
    x[i] += y[i];
  }
}

void add_bias(float* x, int ldx, const float* bias, int n_rows, int dim) {
  FC_ASSERT(n_rows >= 0 && dim >= 0 && ldx >= dim, "n_rows={} dim={} ldx={}", n_rows, dim, ldx);
  for (int r = 0; r < n_rows; ++r) {
    float* xr = x + at(r, ldx);
    for (int j = 0; j < dim; ++j) {
      xr[j] += bias[j];
    }
  }
}

void head_rmsnorm(float* x, int ldx, const float* weight, int n_rows, int n_heads, int head_dim,
                  float eps) {
  FC_ASSERT(n_rows >= 0 && n_heads >= 0 && head_dim > 0, "n_rows={} n_heads={} head_dim={}", n_rows,
            n_heads, head_dim);
  FC_ASSERT(ldx >= n_heads * head_dim, "ldx={} n_heads={} head_dim={}", ldx, n_heads, head_dim);
  for (int r = 0; r < n_rows; ++r) {
    for (int h = 0; h < n_heads; ++h) {
      float* xh = x + at(r, ldx) + at(h, head_dim);
      rmsnorm_row(xh, weight, xh, head_dim, eps);
    }
  }
}

void rope(float* x, int ldx, int n_rows, int n_heads, int head_dim, int pos0, float theta) {
  FC_ASSERT(n_rows >= 0 && n_heads >= 0 && pos0 >= 0, "n_rows={} n_heads={} pos0={}", n_rows,
            n_heads, pos0);
  FC_ASSERT(head_dim > 0 && head_dim % 2 == 0, "head_dim={} must be even", head_dim);
  FC_ASSERT(ldx >= n_heads * head_dim, "ldx={} n_heads={} head_dim={}", ldx, n_heads, head_dim);
  if (n_rows == 0 || n_heads == 0) {
    return;
  }
  const int n_pairs = head_dim / 2;

  // One cos/sin per (row, pair), shared by every head: the trigonometry is
  // the expensive part and does not depend on the head.
  thread_local std::vector<float> cos_tab;
  thread_local std::vector<float> sin_tab;
  cos_tab.resize(at(n_rows, n_pairs));
  sin_tab.resize(at(n_rows, n_pairs));
  for (int r = 0; r < n_rows; ++r) {
    const float pos = static_cast<float>(pos0 + r);
    for (int i = 0; i < head_dim; i += 2) {
      // Float throughout, as llama2.c computes it.
      const float freq =
          1.0f / std::pow(theta, static_cast<float>(i) / static_cast<float>(head_dim));
      const float angle = pos * freq;
      cos_tab[at(r, n_pairs) + i / 2] = std::cos(angle);
      sin_tab[at(r, n_pairs) + i / 2] = std::sin(angle);
    }
  }

  for (int r = 0; r < n_rows; ++r) {
    const float* cr = cos_tab.data() + at(r, n_pairs);
    const float* sr = sin_tab.data() + at(r, n_pairs);
    for (int h = 0; h < n_heads; ++h) {
      float* xh = x + at(r, ldx) + at(h, head_dim);
      for (int i = 0; i < head_dim; i += 2) {
        const float c = cr[i / 2];
        const float s = sr[i / 2];
        const float x0 = xh[i];
        const float x1 = xh[i + 1];
        xh[i] = x0 * c - x1 * s;
        xh[i + 1] = x0 * s + x1 * c;
      }
    }
  }
}

void attention(const float* q, int ldq, const float* k, const float* v, int ldkv, float* out,
               int ldo, int n_q, int pos0, int n_heads, int n_kv_heads, int head_dim) {
  FC_ASSERT(n_q >= 0 && pos0 >= 0, "n_q={} pos0={}", n_q, pos0);
  FC_ASSERT(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0 && head_dim > 0,
            "n_heads={} n_kv_heads={} head_dim={}", n_heads, n_kv_heads, head_dim);
  FC_ASSERT(ldq >= n_heads * head_dim && ldo >= n_heads * head_dim && ldkv >= n_kv_heads * head_dim,
            "ldq={} ldo={} ldkv={} for n_heads={} n_kv_heads={} head_dim={}", ldq, ldo, ldkv,
            n_heads, n_kv_heads, head_dim);
  if (n_q == 0) {
    return;
  }
  const int n_keys = pos0 + n_q;
  const int group = n_heads / n_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));

  // scores[n_q, n_keys], reused for every head and overwritten by the
  // probabilities in place.
  thread_local std::vector<float> scores;
  scores.resize(at(n_q, n_keys));

  for (int h = 0; h < n_heads; ++h) {
    const int g = h / group;
    const float* qh = q + at(h, head_dim);
    const float* kg = k + at(g, head_dim);
    const float* vg = v + at(g, head_dim);

    // step 1: scores = q_h . k_g^T / sqrt(head_dim), all keys at once.
    sgemm_checked(CblasTrans, n_q, n_keys, head_dim, scale, qh, ldq, kg, ldkv, scores.data(),
                  n_keys);

    // step 2: causal softmax per row; row r sees keys 0 .. pos0 + r. The
    // masked tail is zeroed so that step 3 can multiply the full rows.
    for (int r = 0; r < n_q; ++r) {
      float* sr = scores.data() + at(r, n_keys);
      const int n_seen = pos0 + r + 1;
      const float max_s = *std::max_element(sr, sr + n_seen);
      float sum = 0.0f;
      for (int j = 0; j < n_seen; ++j) {
        sr[j] = std::exp(sr[j] - max_s);
        sum += sr[j];
      }
      const float inv_sum = 1.0f / sum;
      for (int j = 0; j < n_seen; ++j) {
        sr[j] *= inv_sum;
      }
      std::fill(sr + n_seen, sr + n_keys, 0.0f);
    }

    // step 3: out_h = P . v_g.
    sgemm_checked(CblasNoTrans, n_q, head_dim, n_keys, 1.0f, scores.data(), n_keys, vg, ldkv,
                  out + at(h, head_dim), ldo);
  }
}

void silu_mul(const float* gate, const float* up, int ld_in, float* out, int n_rows, int dim) {
  FC_ASSERT(n_rows >= 0 && dim >= 0 && ld_in >= dim, "n_rows={} dim={} ld_in={}", n_rows, dim,
            ld_in);
  for (int r = 0; r < n_rows; ++r) {
    const float* gr = gate + at(r, ld_in);
    const float* ur = up + at(r, ld_in);
    float* outr = out + at(r, dim);
    for (int j = 0; j < dim; ++j) {
      const float g = gr[j];
      outr[j] = g / (1.0f + std::exp(-g)) * ur[j];
    }
  }
}

int argmax(const float* x, int n) {
  FC_ASSERT(n > 0, "argmax of an empty vector (n={})", n);
  int best = 0;
  for (int i = 1; i < n; ++i) {
    // Strictly greater keeps the first index on ties.
    if (x[i] > x[best]) {
      best = i;
    }
  }
  return best;
}

void set_blas_threads(int n_threads) {
  FC_ASSERT(n_threads >= 1, "n_threads={}", n_threads);
  openblas_set_num_threads(n_threads);
}

}  // namespace flashcomm::kernels
