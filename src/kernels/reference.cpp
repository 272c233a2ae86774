// Reference kernels: plain loops, one output element at a time, in double
// where the accumulation matters, and no BLAS. They define what the optimised
// kernels in kernels.cpp must compute; the reference forward pass and the
// tests use them, so they favour being obviously right over being fast.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "flashcomm/error.hpp"
#include "flashcomm/kernels.hpp"

namespace flashcomm::kernels::reference {

namespace {

std::size_t at(int r, int ld) {
  return static_cast<std::size_t>(r) * static_cast<std::size_t>(ld);
}

}  // namespace

void matmul_wt(const float* x, int ldx, const float* w, int ldw, float* y, int ldy, int n_rows,
               int n_in, int n_out) {
  FC_ASSERT(n_rows >= 0 && n_in >= 0 && n_out >= 0, "n_rows={} n_in={} n_out={}", n_rows, n_in,
            n_out);
  FC_ASSERT(ldx >= n_in && ldw >= n_in && ldy >= n_out, "ldx={} ldw={} ldy={} n_in={} n_out={}",
            ldx, ldw, ldy, n_in, n_out);
  for (int r = 0; r < n_rows; ++r) {
    for (int o = 0; o < n_out; ++o) {
      double acc = 0.0;
      for (int i = 0; i < n_in; ++i) {
        acc += static_cast<double>(x[at(r, ldx) + i]) * static_cast<double>(w[at(o, ldw) + i]);
      }
      y[at(r, ldy) + o] = static_cast<float>(acc);
    }
  }
}

void rmsnorm(const float* x, const float* weight, float* y, int n_rows, int dim, float eps) {
  FC_ASSERT(n_rows >= 0 && dim >= 0, "n_rows={} dim={}", n_rows, dim);
  if (dim == 0) {
    return;
  }
  for (int r = 0; r < n_rows; ++r) {
    double ss = 0.0;
    for (int j = 0; j < dim; ++j) {
      const double xj = x[at(r, dim) + j];
      ss += xj * xj;
    }
    const double inv_rms = 1.0 / std::sqrt(ss / dim + static_cast<double>(eps));
    // The whole row's scale is known before any y is written: y may alias x.
    for (int j = 0; j < dim; ++j) {
      y[at(r, dim) + j] =
          static_cast<float>(static_cast<double>(weight[j]) * x[at(r, dim) + j] * inv_rms);
    }
  }
}

void add_bias(float* x, int ldx, const float* bias, int n_rows, int dim) {
  FC_ASSERT(n_rows >= 0 && dim >= 0 && ldx >= dim, "n_rows={} dim={} ldx={}", n_rows, dim, ldx);
  for (int r = 0; r < n_rows; ++r) {
    for (int j = 0; j < dim; ++j) {
      x[at(r, ldx) + j] += bias[j];
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
      // A head is one contiguous row of head_dim values: the plain RMSNorm of it.
      float* xh = x + at(r, ldx) + at(h, head_dim);
      rmsnorm(xh, weight, xh, 1, head_dim, eps);
    }
  }
}

void rope(float* x, int ldx, int n_rows, int n_heads, int head_dim, int pos0, float theta) {
  FC_ASSERT(n_rows >= 0 && n_heads >= 0 && pos0 >= 0, "n_rows={} n_heads={} pos0={}", n_rows,
            n_heads, pos0);
  FC_ASSERT(head_dim > 0 && head_dim % 2 == 0, "head_dim={} must be even", head_dim);
  FC_ASSERT(ldx >= n_heads * head_dim, "ldx={} n_heads={} head_dim={}", ldx, n_heads, head_dim);
  for (int r = 0; r < n_rows; ++r) {
    const double pos = pos0 + r;
    for (int h = 0; h < n_heads; ++h) {
      float* xh = x + at(r, ldx) + at(h, head_dim);
      for (int i = 0; i < head_dim; i += 2) {
        const double angle =
            pos * std::pow(static_cast<double>(theta), -static_cast<double>(i) / head_dim);
        const double x0 = xh[i];
        const double x1 = xh[i + 1];
        xh[i] = static_cast<float>(x0 * std::cos(angle) - x1 * std::sin(angle));
        xh[i + 1] = static_cast<float>(x0 * std::sin(angle) + x1 * std::cos(angle));
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
  const int group = n_heads / n_kv_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  std::vector<double> p;

  for (int r = 0; r < n_q; ++r) {
    // Causal: the query at position pos0 + r sees keys 0 .. pos0 + r.
    const int n_seen = pos0 + r + 1;
    for (int h = 0; h < n_heads; ++h) {
      const int g = h / group;
      const float* qh = q + at(r, ldq) + at(h, head_dim);

      // Scores of every visible key, then a softmax shifted by the maximum.
      p.assign(n_seen, 0.0);
      for (int j = 0; j < n_seen; ++j) {
        const float* kj = k + at(j, ldkv) + at(g, head_dim);
        double dot = 0.0;
        for (int d = 0; d < head_dim; ++d) {
          dot += static_cast<double>(qh[d]) * kj[d];
        }
        p[j] = dot * scale;
      }
      const double max_s = *std::max_element(p.begin(), p.end());
      double sum = 0.0;
      for (double& pj : p) {
        pj = std::exp(pj - max_s);
        sum += pj;
      }

      // One output element at a time: the probability-weighted sum of v.
      for (int d = 0; d < head_dim; ++d) {
        double acc = 0.0;
        for (int j = 0; j < n_seen; ++j) {
          acc += p[j] / sum * v[at(j, ldkv) + at(g, head_dim) + d];
        }
        out[at(r, ldo) + at(h, head_dim) + d] = static_cast<float>(acc);
      }
    }
  }
}

void silu_mul(const float* gate, const float* up, int ld_in, float* out, int n_rows, int dim) {
  FC_ASSERT(n_rows >= 0 && dim >= 0 && ld_in >= dim, "n_rows={} dim={} ld_in={}", n_rows, dim,
            ld_in);
  for (int r = 0; r < n_rows; ++r) {
    for (int j = 0; j < dim; ++j) {
      const double g = gate[at(r, ld_in) + j];
      const double u = up[at(r, ld_in) + j];
      out[at(r, dim) + j] = static_cast<float>(g / (1.0 + std::exp(-g)) * u);
    }
  }
}

}  // namespace flashcomm::kernels::reference
