// Tests of the compute kernels: each optimised kernel against its reference
// on random inputs of several shapes (strided, odd, single-row, decode-like),
// plus tiny hand-computed cases that pin down the semantics themselves.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "flashcomm/kernels.hpp"

namespace flashcomm::kernels {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// A row-major matrix with row stride ld >= cols. The padding holds NaN: a
// kernel that reads it poisons its output, one that writes it is caught by
// padding_intact().
struct Matrix {
  int rows = 0;
  int cols = 0;
  int ld = 0;
  std::vector<float> data;

  float* ptr() { return data.data(); }
  const float* ptr() const { return data.data(); }
  float& at(int r, int c) { return data[static_cast<std::size_t>(r) * ld + c]; }
  float at(int r, int c) const { return data[static_cast<std::size_t>(r) * ld + c]; }
};

// All NaN, valid block included, so an output the kernel forgets stays NaN.
Matrix nan_matrix(int rows, int cols, int pad) {
  Matrix m;
  m.rows = rows;
  m.cols = cols;
  m.ld = cols + pad;
  m.data.assign(static_cast<std::size_t>(rows) * m.ld, kNaN);
  return m;
}

Matrix random_matrix(int rows, int cols, int pad, std::mt19937& rng, float lo = -1.0f,
                     float hi = 1.0f) {
  Matrix m = nan_matrix(rows, cols, pad);
  std::uniform_real_distribution<float> dist(lo, hi);
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) {
      m.at(r, c) = dist(rng);
    }
  }
  return m;
}

std::vector<float> random_vector(std::size_t n, std::mt19937& rng, float lo = -1.0f,
                                 float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) {
    x = dist(rng);
  }
  return v;
}

// The rows x cols block without padding, for comparisons.
std::vector<float> block(const Matrix& m) {
  std::vector<float> out;
  out.reserve(static_cast<std::size_t>(m.rows) * m.cols);
  for (int r = 0; r < m.rows; ++r) {
    for (int c = 0; c < m.cols; ++c) {
      out.push_back(m.at(r, c));
    }
  }
  return out;
}

bool padding_intact(const Matrix& m) {
  for (int r = 0; r < m.rows; ++r) {
    for (int c = m.cols; c < m.ld; ++c) {
      if (!std::isnan(m.at(r, c))) {
        return false;
      }
    }
  }
  return true;
}

float max_abs(const std::vector<float>& v) {
  float m = 0.0f;
  for (float x : v) {
    m = std::max(m, std::fabs(x));
  }
  return m;
}

// Every element within abs_tol + rel_tol * |want|; the failure names the
// worst element so a tolerance can be judged from the message alone.
::testing::AssertionResult all_near(const std::vector<float>& got, const std::vector<float>& want,
                                    double abs_tol, double rel_tol) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "sizes differ: " << got.size() << " vs " << want.size();
  }
  std::size_t worst = 0;
  double worst_excess = -1.0;
  bool ok = true;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
    const double tol = abs_tol + rel_tol * std::fabs(static_cast<double>(want[i]));
    // A NaN err fails the comparison below, so it counts as out of tolerance.
    const double excess = err <= tol ? err - tol : std::numeric_limits<double>::infinity();
    if (excess > 0.0) {
      ok = false;
    }
    if (excess > worst_excess) {
      worst_excess = excess;
      worst = i;
    }
  }
  if (ok) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << "element " << worst << " of " << got.size() << ": got " << got[worst] << ", want "
         << want[worst] << " (abs_tol " << abs_tol << ", rel_tol " << rel_tol << ")";
}

// ---------------------------------------------------------------- matmul_wt

TEST(MatmulWt, MatchesReference) {
  struct Case {
    int n_rows, n_in, n_out, pad_x, pad_y, pad_w;
  };
  const Case cases[] = {
      {1, 1, 1, 0, 0, 0},       {1, 17, 33, 0, 0, 0},   {7, 64, 48, 0, 0, 5},
      {13, 129, 65, 3, 5, 0},   {5, 288, 768, 0, 0, 0}, {32, 96, 97, 7, 1, 3},
      {1, 768, 512, 16, 16, 0}, {6, 8, 64, 0, 0, 24},
  };
  std::mt19937 rng(1);
  for (const Case& c : cases) {
    SCOPED_TRACE(fmt::format("n_rows={} n_in={} n_out={} pad_x={} pad_y={} pad_w={}", c.n_rows,
                             c.n_in, c.n_out, c.pad_x, c.pad_y, c.pad_w));
    const Matrix x = random_matrix(c.n_rows, c.n_in, c.pad_x, rng);
    // A weight with row stride > n_in: a column block of a wider matrix.
    const Matrix w = random_matrix(c.n_out, c.n_in, c.pad_w, rng);
    Matrix y = nan_matrix(c.n_rows, c.n_out, c.pad_y);
    Matrix y_ref = nan_matrix(c.n_rows, c.n_out, c.pad_y);

    matmul_wt(x.ptr(), x.ld, w.ptr(), w.ld, y.ptr(), y.ld, c.n_rows, c.n_in, c.n_out);
    reference::matmul_wt(x.ptr(), x.ld, w.ptr(), w.ld, y_ref.ptr(), y_ref.ld, c.n_rows, c.n_in,
                         c.n_out);

    // Float sgemm against a double sum: the rounding error grows like
    // sqrt(n_in) * 2^-24 times the output scale, about 1e-6 of it at
    // n_in = 768, so 1e-5 of the largest output leaves a margin of ten.
    const std::vector<float> want = block(y_ref);
    EXPECT_TRUE(all_near(block(y), want, 1e-5 * max_abs(want), 0.0));
    EXPECT_TRUE(padding_intact(y));
  }
}

TEST(MatmulWt, HandComputed) {
  const float x[] = {1, 2, 3, 4};  // [2, 2]
  const float w[] = {1, 0, 1, 1, 0, -1};  // [3, 2]
  const float want[] = {1, 3, -2, 3, 7, -4};  // x . w^T, [2, 3]
  float y[6] = {};
  matmul_wt(x, 2, w, 2, y, 3, 2, 2, 3);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(y[i], want[i]) << "element " << i;
  }
}

TEST(MatmulWt, ZeroInnerDimensionFillsZeros) {
  Matrix y = nan_matrix(3, 4, 2);
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 4; ++c) {
      y.at(r, c) = 7.0f;
    }
  }
  const float unused = 0.0f;
  matmul_wt(&unused, 0, &unused, 0, y.ptr(), y.ld, 3, 0, 4);
  for (float v : block(y)) {
    EXPECT_EQ(v, 0.0f);
  }
  EXPECT_TRUE(padding_intact(y));
}

TEST(MatmulWt, EmptyRowsOrOutputsWriteNothing) {
  std::vector<float> y(8, 5.0f);
  const std::vector<float> x(8, 1.0f);
  matmul_wt(x.data(), 4, x.data(), 4, y.data(), 4, 0, 4, 4);
  matmul_wt(x.data(), 4, x.data(), 4, y.data(), 4, 2, 4, 0);
  for (float v : y) {
    EXPECT_EQ(v, 5.0f);
  }
}

// ------------------------------------------------------------------ rmsnorm

TEST(Rmsnorm, MatchesReference) {
  struct Case {
    int n_rows, dim;
  };
  const Case cases[] = {{1, 1}, {1, 288}, {7, 64}, {5, 768}, {3, 33}};
  std::mt19937 rng(2);
  for (const Case& c : cases) {
    SCOPED_TRACE(fmt::format("n_rows={} dim={}", c.n_rows, c.dim));
    const std::size_t n = static_cast<std::size_t>(c.n_rows) * c.dim;
    const std::vector<float> x = random_vector(n, rng, -3.0f, 3.0f);
    const std::vector<float> weight = random_vector(c.dim, rng, 0.5f, 1.5f);
    std::vector<float> y(n, kNaN);
    std::vector<float> y_ref(n, kNaN);

    rmsnorm(x.data(), weight.data(), y.data(), c.n_rows, c.dim, 1e-5f);
    reference::rmsnorm(x.data(), weight.data(), y_ref.data(), c.n_rows, c.dim, 1e-5f);

    // Each output is x * weight * inv_rms, so the error is relative to the
    // element. The float sum of dim positive squares drifts by about
    // sqrt(dim) * 2^-24 (2e-6 at dim = 768, halved by the sqrt); 1e-5
    // relative covers it with room.
    EXPECT_TRUE(all_near(y, y_ref, 1e-7, 1e-5));
  }
}

TEST(Rmsnorm, InPlaceMatchesOutOfPlace) {
  std::mt19937 rng(3);
  const int n_rows = 4;
  const int dim = 50;
  std::vector<float> x = random_vector(static_cast<std::size_t>(n_rows) * dim, rng);
  const std::vector<float> weight = random_vector(dim, rng);
  std::vector<float> y(x.size());
  rmsnorm(x.data(), weight.data(), y.data(), n_rows, dim, 1e-5f);
  rmsnorm(x.data(), weight.data(), x.data(), n_rows, dim, 1e-5f);
  EXPECT_EQ(x, y);

  std::vector<float> x_ref = random_vector(static_cast<std::size_t>(n_rows) * dim, rng);
  std::vector<float> y_ref(x_ref.size());
  reference::rmsnorm(x_ref.data(), weight.data(), y_ref.data(), n_rows, dim, 1e-5f);
  reference::rmsnorm(x_ref.data(), weight.data(), x_ref.data(), n_rows, dim, 1e-5f);
  EXPECT_EQ(x_ref, y_ref);
}

TEST(Rmsnorm, KnownVector) {
  // rms(3, -3, 3, -3) = 3, so y = sign(x) * weight.
  const float x[] = {3, -3, 3, -3};
  const float weight[] = {1, 2, 3, 4};
  const float want[] = {1, -2, 3, -4};
  float y[4];
  float y_ref[4];
  rmsnorm(x, weight, y, 1, 4, 0.0f);
  reference::rmsnorm(x, weight, y_ref, 1, 4, 0.0f);
  for (int i = 0; i < 4; ++i) {
    EXPECT_FLOAT_EQ(y[i], want[i]) << "element " << i;
    EXPECT_FLOAT_EQ(y_ref[i], want[i]) << "element " << i;
  }
}

TEST(Rmsnorm, EpsIsAddedToTheMeanSquare) {
  // mean square 1, plus eps 3, gives rms 2: y = x * weight / 2 exactly.
  const float x[] = {1, -1};
  const float weight[] = {2, 6};
  float y[2];
  float y_ref[2];
  rmsnorm(x, weight, y, 1, 2, 3.0f);
  reference::rmsnorm(x, weight, y_ref, 1, 2, 3.0f);
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], -3.0f);
  EXPECT_EQ(y_ref[0], 1.0f);
  EXPECT_EQ(y_ref[1], -3.0f);
}

// -------------------------------------------------------------- add_inplace

TEST(AddInplace, AddsElementwise) {
  std::vector<float> x = {1, 2, 3, 4, 5, 6};
  const std::vector<float> y = {10, 20, 30, -4, -5, 0.5f};
  add_inplace(x.data(), y.data(), 2, 3);
  EXPECT_EQ(x, (std::vector<float>{11, 22, 33, 0, 0, 6.5f}));
}

TEST(AddInplace, TouchesOnlyNRowsTimesDim) {
  std::vector<float> x(7, 1.0f);
  const std::vector<float> y(7, 2.0f);
  add_inplace(x.data(), y.data(), 3, 2);
  EXPECT_EQ(x, (std::vector<float>{3, 3, 3, 3, 3, 3, 1}));
}

// ----------------------------------------------------------------- add_bias

TEST(AddBias, MatchesReferenceOnStridedBlocks) {
  struct Case {
    int n_rows, dim, pad;
  };
  const Case cases[] = {{1, 1, 0}, {1, 96, 0}, {7, 20, 12}, {19, 33, 5}};
  std::mt19937 rng(21);
  for (const Case& c : cases) {
    SCOPED_TRACE(fmt::format("n_rows={} dim={} pad={}", c.n_rows, c.dim, c.pad));
    Matrix x = random_matrix(c.n_rows, c.dim, c.pad, rng);
    Matrix x_ref = x;
    const std::vector<float> bias = random_vector(c.dim, rng);
    add_bias(x.ptr(), x.ld, bias.data(), c.n_rows, c.dim);
    reference::add_bias(x_ref.ptr(), x_ref.ld, bias.data(), c.n_rows, c.dim);
    // One float addition per element in both: bit-identical.
    EXPECT_EQ(block(x), block(x_ref));
    EXPECT_TRUE(padding_intact(x));
  }
}

TEST(AddBias, AddsTheSameBiasToEveryRow) {
  // Two rows of a [2, 4] matrix, bias on its first 3 columns only.
  std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8};
  const float bias[] = {10, -1, 0.5f};
  add_bias(x.data(), 4, bias, 2, 3);
  EXPECT_EQ(x, (std::vector<float>{11, 1, 3.5f, 4, 15, 5, 7.5f, 8}));
}

// ------------------------------------------------------------- head_rmsnorm

TEST(HeadRmsnorm, MatchesReference) {
  struct Case {
    int n_rows, n_heads, head_dim, pad;
  };
  const Case cases[] = {{1, 1, 2, 0}, {1, 8, 128, 0}, {7, 4, 8, 3}, {5, 3, 12, 17}, {13, 6, 64, 0}};
  std::mt19937 rng(22);
  for (const Case& c : cases) {
    SCOPED_TRACE(fmt::format("n_rows={} n_heads={} head_dim={} pad={}", c.n_rows, c.n_heads,
                             c.head_dim, c.pad));
    Matrix x = random_matrix(c.n_rows, c.n_heads * c.head_dim, c.pad, rng, -3.0f, 3.0f);
    Matrix x_ref = x;
    const std::vector<float> weight = random_vector(c.head_dim, rng, 0.5f, 1.5f);
    head_rmsnorm(x.ptr(), x.ld, weight.data(), c.n_rows, c.n_heads, c.head_dim, 1e-6f);
    reference::head_rmsnorm(x_ref.ptr(), x_ref.ld, weight.data(), c.n_rows, c.n_heads, c.head_dim,
                            1e-6f);
    // As rmsnorm: a float sum of head_dim squares against a double one.
    EXPECT_TRUE(all_near(block(x), block(x_ref), 1e-7, 1e-5));
    EXPECT_TRUE(padding_intact(x));
  }
}

TEST(HeadRmsnorm, NormalisesEachHeadOnItsOwn) {
  // One row, two heads of head_dim 2 with different scales, one shared
  // weight: rms(3, -3) = 3 and rms(0.5, 0.5) = 0.5, so each head becomes
  // sign(x) * weight whatever its scale; eps 0 keeps it exact.
  const float weight[] = {2, 5};
  const std::vector<float> want = {2, -5, 2, 5};
  std::vector<float> x = {3, -3, 0.5f, 0.5f};
  std::vector<float> x_ref = x;
  head_rmsnorm(x.data(), 4, weight, 1, 2, 2, 0.0f);
  reference::head_rmsnorm(x_ref.data(), 4, weight, 1, 2, 2, 0.0f);
  EXPECT_EQ(x, want);
  EXPECT_EQ(x_ref, want);
}

TEST(HeadRmsnorm, EpsIsAddedToEachHeadsMeanSquare) {
  // Mean square 1, plus eps 3, gives rms 2 in each head.
  const float weight[] = {2, 6};
  std::vector<float> x = {1, -1, -1, 1};
  std::vector<float> x_ref = x;
  head_rmsnorm(x.data(), 4, weight, 1, 2, 2, 3.0f);
  reference::head_rmsnorm(x_ref.data(), 4, weight, 1, 2, 2, 3.0f);
  EXPECT_EQ(x, (std::vector<float>{1, -3, -1, 3}));
  EXPECT_EQ(x_ref, (std::vector<float>{1, -3, -1, 3}));
}

// ----------------------------------------------------------------- silu_mul

TEST(SiluMul, MatchesReference) {
  struct Case {
    int n_rows, dim, pad;
  };
  const Case cases[] = {{1, 1, 0}, {1, 768, 0}, {6, 37, 5}, {16, 128, 128}};
  std::mt19937 rng(4);
  for (const Case& c : cases) {
    SCOPED_TRACE(fmt::format("n_rows={} dim={} pad={}", c.n_rows, c.dim, c.pad));
    // Gate over [-12, 12] reaches both tails of the sigmoid.
    const Matrix gate = random_matrix(c.n_rows, c.dim, c.pad, rng, -12.0f, 12.0f);
    const Matrix up = random_matrix(c.n_rows, c.dim, c.pad, rng);
    const std::size_t n = static_cast<std::size_t>(c.n_rows) * c.dim;
    std::vector<float> out(n, kNaN);
    std::vector<float> out_ref(n, kNaN);

    silu_mul(gate.ptr(), up.ptr(), gate.ld, out.data(), c.n_rows, c.dim);
    reference::silu_mul(gate.ptr(), up.ptr(), gate.ld, out_ref.data(), c.n_rows, c.dim);

    // A few float roundings (exp, add, divide, multiply), each 2^-24
    // relative: 1e-6 relative is about four times that bound.
    EXPECT_TRUE(all_near(out, out_ref, 1e-30, 1e-6));
  }
}

TEST(SiluMul, KnownValues) {
  // Row stride 5 over 4 columns; the fifth column is poison.
  const float gate[] = {0, 1, -1, 30, kNaN};
  const float up[] = {5, 2, 2, 1, kNaN};
  float out[4];
  silu_mul(gate, up, 5, out, 1, 4);
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_FLOAT_EQ(out[1], 2.0f * 0.7310585786f);  // 1 / (1 + e^-1)
  EXPECT_FLOAT_EQ(out[2], 2.0f * -0.2689414214f);  // -1 / (1 + e)
  EXPECT_FLOAT_EQ(out[3], 30.0f);  // silu(g) -> g for large g
}

// ------------------------------------------------------------------- argmax

TEST(Argmax, FindsTheLargest) {
  const float a[] = {0.5f};
  EXPECT_EQ(argmax(a, 1), 0);
  const float b[] = {-5, -1, -7, -2};
  EXPECT_EQ(argmax(b, 4), 1);
  const float c[] = {1, 2, 3, 4, 9};
  EXPECT_EQ(argmax(c, 5), 4);
}

TEST(Argmax, FirstIndexOnTies) {
  const float a[] = {1, 3, 2, 3, 3};
  EXPECT_EQ(argmax(a, 5), 1);
  const float b[] = {4, 4, 4};
  EXPECT_EQ(argmax(b, 3), 0);
}

// --------------------------------------------------------------------- rope

TEST(Rope, MatchesReference) {
  struct Case {
    int n_rows, n_heads, head_dim, pos0, pad;
    float theta;
  };
  const Case cases[] = {
      {1, 1, 2, 0, 0, 10000.0f},    {1, 6, 48, 0, 0, 10000.0f},   {7, 4, 8, 0, 3, 10000.0f},
      {1, 8, 64, 511, 0, 10000.0f}, {5, 3, 12, 100, 5, 10000.0f}, {9, 2, 6, 37, 1, 500000.0f},
  };
  std::mt19937 rng(5);
  for (const Case& c : cases) {
    SCOPED_TRACE(fmt::format("n_rows={} n_heads={} head_dim={} pos0={} pad={} theta={}", c.n_rows,
                             c.n_heads, c.head_dim, c.pos0, c.pad, c.theta));
    Matrix x = random_matrix(c.n_rows, c.n_heads * c.head_dim, c.pad, rng);
    Matrix x_ref = x;

    rope(x.ptr(), x.ld, c.n_rows, c.n_heads, c.head_dim, c.pos0, c.theta);
    reference::rope(x_ref.ptr(), x_ref.ld, c.n_rows, c.n_heads, c.head_dim, c.pos0, c.theta);

    // The kernel computes the angle pos * theta^(-i/head_dim) in float, as
    // llama2.c does, the reference in double. The float angle is off by at
    // most about 2e-7 * pos radians (a few roundings of a frequency <= 1,
    // plus the exponent's rounding amplified by ln(theta)), which moves a
    // pair of norm <= sqrt(2) by <= 3e-7 * pos; 4e-7 * pos + 1e-6 bounds it.
    const int max_pos = c.pos0 + c.n_rows - 1;
    EXPECT_TRUE(all_near(block(x), block(x_ref), 4e-7 * max_pos + 1e-6, 0.0));
    EXPECT_TRUE(padding_intact(x));
  }
}

TEST(Rope, PositionZeroIsIdentity) {
  std::mt19937 rng(6);
  const std::vector<float> x0 = random_vector(std::size_t{4} * 16, rng);
  std::vector<float> x = x0;
  std::vector<float> x_ref = x0;
  rope(x.data(), 64, 1, 4, 16, 0, 10000.0f);
  reference::rope(x_ref.data(), 64, 1, 4, 16, 0, 10000.0f);
  EXPECT_EQ(x, x0);
  EXPECT_EQ(x_ref, x0);
}

TEST(Rope, PositionOneRotatesPairZeroByOneRadian) {
  // Two rows at positions 0 and 1; two heads of head_dim 4. Pair 0 has
  // frequency 1, pair 1 has frequency 10000^(-2/4) = 0.01.
  const float c1 = std::cos(1.0f);
  const float s1 = std::sin(1.0f);
  const float c01 = std::cos(0.01f);
  const float s01 = std::sin(0.01f);
  const std::vector<float> x0 = {
      1, 0, 1, 0, 0, 1, 0, 1,  // row 0
      1, 0, 1, 0, 0, 1, 0, 1,  // row 1
  };
  const std::vector<float> want = {
      1,  0,  1,   0,   0,   1,  0,    1,  // row 0: position 0, unchanged
      c1, s1, c01, s01, -s1, c1, -s01, c01,  // row 1: (1,0) -> (c,s), (0,1) -> (-s,c)
  };
  std::vector<float> x = x0;
  std::vector<float> x_ref = x0;
  rope(x.data(), 8, 2, 2, 4, 0, 10000.0f);
  reference::rope(x_ref.data(), 8, 2, 2, 4, 0, 10000.0f);
  EXPECT_TRUE(all_near(x, want, 1e-6, 0.0));
  EXPECT_TRUE(all_near(x_ref, want, 1e-6, 0.0));
}

// ---------------------------------------------------------------- attention

struct AttentionInputs {
  Matrix q, k, v;
};

AttentionInputs random_attention(int n_q, int pos0, int n_heads, int n_kv_heads, int head_dim,
                                 int pad_q, int pad_kv, std::mt19937& rng) {
  // q and k over [-2, 2] give scores of spread about 1, so the softmax is
  // neither uniform nor one-hot.
  const int n_keys = pos0 + n_q;
  AttentionInputs in;
  in.q = random_matrix(n_q, n_heads * head_dim, pad_q, rng, -2.0f, 2.0f);
  in.k = random_matrix(n_keys, n_kv_heads * head_dim, pad_kv, rng, -2.0f, 2.0f);
  in.v = random_matrix(n_keys, n_kv_heads * head_dim, pad_kv, rng);
  return in;
}

TEST(Attention, MatchesReference) {
  struct Case {
    int n_q, pos0, n_heads, n_kv_heads, head_dim, pad_q, pad_kv, pad_o;
  };
  const Case cases[] = {
      {7, 0, 4, 4, 8, 0, 0, 0},  // prefill, one kv head per query head
      {9, 0, 6, 2, 12, 3, 5, 1},  // prefill, grouped, all strided
      {5, 11, 6, 3, 16, 0, 2, 0},  // a chunk after a cache
      {1, 255, 8, 2, 32, 0, 0, 0},  // decode against a long cache, grouped
      {1, 100, 4, 4, 48, 4, 4, 4},  // decode, strided
      {4, 6, 4, 1, 6, 0, 0, 0},  // one kv head for all
      {3, 2, 3, 3, 5, 1, 1, 1},  // odd head_dim
      {1, 0, 2, 1, 4, 0, 0, 0},  // a single query at position 0
      {64, 0, 2, 1, 64, 0, 64, 0},  // a longer prefill
  };
  std::mt19937 rng(7);
  for (const Case& c : cases) {
    SCOPED_TRACE(fmt::format("n_q={} pos0={} n_heads={} n_kv_heads={} head_dim={} pads={},{},{}",
                             c.n_q, c.pos0, c.n_heads, c.n_kv_heads, c.head_dim, c.pad_q, c.pad_kv,
                             c.pad_o));
    const AttentionInputs in = random_attention(c.n_q, c.pos0, c.n_heads, c.n_kv_heads, c.head_dim,
                                                c.pad_q, c.pad_kv, rng);
    Matrix out = nan_matrix(c.n_q, c.n_heads * c.head_dim, c.pad_o);
    Matrix out_ref = out;

    attention(in.q.ptr(), in.q.ld, in.k.ptr(), in.v.ptr(), in.k.ld, out.ptr(), out.ld, c.n_q,
              c.pos0, c.n_heads, c.n_kv_heads, c.head_dim);
    reference::attention(in.q.ptr(), in.q.ld, in.k.ptr(), in.v.ptr(), in.k.ld, out_ref.ptr(),
                         out_ref.ld, c.n_q, c.pos0, c.n_heads, c.n_kv_heads, c.head_dim);

    // Outputs are convex combinations of v in [-1, 1]. A float score error
    // e changes a weight by a factor exp(e) ~ 1 + e; with scores of size a
    // few units summed over head_dim <= 64 terms e stays near 1e-6, and the
    // float softmax and P . v add a few 1e-7 more: 5e-6 absolute.
    EXPECT_TRUE(all_near(block(out), block(out_ref), 5e-6, 0.0));
    EXPECT_TRUE(padding_intact(out));
  }
}

TEST(Attention, SingleKeyReturnsItsValue) {
  // One query at position 0 sees one key: the softmax is exactly 1, so each
  // query head returns the value of its kv head (h / 2 here), whatever q is.
  std::mt19937 rng(8);
  const int n_heads = 4;
  const int n_kv_heads = 2;
  const int head_dim = 3;
  const AttentionInputs in = random_attention(1, 0, n_heads, n_kv_heads, head_dim, 0, 0, rng);
  const std::size_t width = static_cast<std::size_t>(n_heads) * head_dim;
  std::vector<float> out(width, kNaN);
  std::vector<float> out_ref(width, kNaN);
  attention(in.q.ptr(), in.q.ld, in.k.ptr(), in.v.ptr(), in.k.ld, out.data(), n_heads * head_dim, 1,
            0, n_heads, n_kv_heads, head_dim);
  reference::attention(in.q.ptr(), in.q.ld, in.k.ptr(), in.v.ptr(), in.k.ld, out_ref.data(),
                       n_heads * head_dim, 1, 0, n_heads, n_kv_heads, head_dim);
  for (int h = 0; h < n_heads; ++h) {
    for (int d = 0; d < head_dim; ++d) {
      const float want = in.v.at(0, (h / 2) * head_dim + d);
      EXPECT_FLOAT_EQ(out[h * head_dim + d], want) << "head " << h << " d " << d;
      EXPECT_FLOAT_EQ(out_ref[h * head_dim + d], want) << "head " << h << " d " << d;
    }
  }
}

TEST(Attention, EqualScoresAverageTheVisibleValues) {
  // q = 0 makes every score equal, so query row r (position pos0 + r)
  // returns the mean of v over keys 0 .. pos0 + r.
  std::mt19937 rng(9);
  const int n_q = 3;
  const int pos0 = 2;
  const int head_dim = 4;
  AttentionInputs in = random_attention(n_q, pos0, 1, 1, head_dim, 0, 0, rng);
  std::fill(in.q.data.begin(), in.q.data.end(), 0.0f);
  std::vector<float> want;
  for (int r = 0; r < n_q; ++r) {
    for (int d = 0; d < head_dim; ++d) {
      double sum = 0.0;
      for (int j = 0; j <= pos0 + r; ++j) {
        sum += in.v.at(j, d);
      }
      want.push_back(static_cast<float>(sum / (pos0 + r + 1)));
    }
  }
  std::vector<float> out(want.size(), kNaN);
  std::vector<float> out_ref(want.size(), kNaN);
  attention(in.q.ptr(), in.q.ld, in.k.ptr(), in.v.ptr(), in.k.ld, out.data(), head_dim, n_q, pos0,
            1, 1, head_dim);
  reference::attention(in.q.ptr(), in.q.ld, in.k.ptr(), in.v.ptr(), in.k.ld, out_ref.data(),
                       head_dim, n_q, pos0, 1, 1, head_dim);
  // A handful of float roundings of values <= 1.
  EXPECT_TRUE(all_near(out, want, 1e-6, 0.0));
  EXPECT_TRUE(all_near(out_ref, want, 1e-6, 0.0));
}

TEST(Attention, FutureKeysDoNotChangeEarlierOutputs) {
  // Rewriting the keys and values at positions >= pos0 + 3 must leave query
  // rows 0..2 bit for bit as they were (their masked weights are exactly 0),
  // and must change the later rows, which see them.
  const int n_q = 6;
  const int pos0 = 2;
  const int n_heads = 4;
  const int n_kv_heads = 2;
  const int head_dim = 8;
  const int width = n_heads * head_dim;
  const int first_changed = pos0 + 3;
  std::mt19937 rng(10);
  AttentionInputs in = random_attention(n_q, pos0, n_heads, n_kv_heads, head_dim, 0, 0, rng);
  AttentionInputs changed = in;
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  for (int j = first_changed; j < pos0 + n_q; ++j) {
    for (int c = 0; c < changed.k.cols; ++c) {
      changed.k.at(j, c) = dist(rng);
      changed.v.at(j, c) = dist(rng);
    }
  }

  using AttentionFn = void (*)(const float*, int, const float*, const float*, int, float*, int, int,
                               int, int, int, int);
  const AttentionFn fns[] = {&attention, &reference::attention};
  for (AttentionFn fn : fns) {
    SCOPED_TRACE(fn == &attention ? "optimised" : "reference");
    std::vector<float> before(static_cast<std::size_t>(n_q) * width);
    std::vector<float> after(before.size());
    fn(in.q.ptr(), in.q.ld, in.k.ptr(), in.v.ptr(), in.k.ld, before.data(), width, n_q, pos0,
       n_heads, n_kv_heads, head_dim);
    fn(changed.q.ptr(), changed.q.ld, changed.k.ptr(), changed.v.ptr(), changed.k.ld, after.data(),
       width, n_q, pos0, n_heads, n_kv_heads, head_dim);
    for (int r = 0; r < n_q; ++r) {
      const auto row_before = before.begin() + static_cast<std::ptrdiff_t>(r) * width;
      const auto row_after = after.begin() + static_cast<std::ptrdiff_t>(r) * width;
      const bool same = std::equal(row_before, row_before + width, row_after);
      if (pos0 + r < first_changed) {
        EXPECT_TRUE(same) << "row " << r << " changed although it cannot see the new keys";
      } else {
        EXPECT_FALSE(same) << "row " << r << " ignored keys it can see";
      }
    }
  }
}

}  // namespace
}  // namespace flashcomm::kernels
