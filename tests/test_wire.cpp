// The payload codecs of wire.hpp against their stated error bounds.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "flashcomm/wire.hpp"

namespace flashcomm {
namespace {

std::vector<float> round_trip(Wire wire, const std::vector<float>& x, int rows, int cols) {
  std::vector<std::byte> bytes(row_bytes(wire, cols) * static_cast<size_t>(rows));
  encode_rows(wire, x.data(), cols, rows, cols, bytes.data());
  std::vector<float> y(x.size());
  decode_rows(wire, bytes.data(), rows, cols, y.data(), cols);
  return y;
}

std::vector<float> random_rows(int rows, int cols, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0F, 1.0F);
  std::vector<float> x(static_cast<size_t>(rows) * static_cast<size_t>(cols));
  for (size_t i = 0; i < x.size(); ++i) {
    // Rows of very different scales: each has its own.
    x[i] = dist(gen) * std::pow(10.0F, static_cast<float>(i / static_cast<size_t>(cols) % 7) - 3);
  }
  return x;
}

TEST(Wire, RowBytes) {
  EXPECT_EQ(row_bytes(Wire::f32, 10), 40U);
  EXPECT_EQ(row_bytes(Wire::bf16, 10), 20U);
  EXPECT_EQ(row_bytes(Wire::int8, 10), 14U);  // ten values and a float scale
}

TEST(Wire, F32IsExact) {
  const std::vector<float> x = random_rows(5, 9, 1);
  EXPECT_EQ(round_trip(Wire::f32, x, 5, 9), x);
}

TEST(Wire, Int8WithinHalfAStepOfEachRow) {
  const int rows = 14;
  const int cols = 33;
  const std::vector<float> x = random_rows(rows, cols, 2);
  const std::vector<float> y = round_trip(Wire::int8, x, rows, cols);
  for (int r = 0; r < rows; ++r) {
    float max_abs = 0.0F;
    for (int c = 0; c < cols; ++c) {
      max_abs = std::max(max_abs, std::fabs(x[static_cast<size_t>(r * cols + c)]));
    }
    double worst = 0.0;
    for (int c = 0; c < cols; ++c) {
      const auto i = static_cast<size_t>(r * cols + c);
      worst = std::max(worst, static_cast<double>(std::fabs(y[i] - x[i])));
    }
    // Half a step of max/127, with float rounding of the scale and product.
    EXPECT_LE(worst, max_abs / 254.0 * (1 + 1e-5)) << "row " << r;
    EXPECT_GT(worst, 0.0) << "row " << r << " came back exact: not quantized";
  }
}

TEST(Wire, Int8ZeroRowAndNonFiniteRow) {
  std::vector<float> x = {0, 0, 0, 1, std::numeric_limits<float>::infinity(), 2};
  const std::vector<float> y = round_trip(Wire::int8, x, 2, 3);
  EXPECT_EQ(y[0], 0.0F);
  EXPECT_EQ(y[1], 0.0F);
  EXPECT_EQ(y[2], 0.0F);
  for (int i = 3; i < 6; ++i) {
    EXPECT_TRUE(std::isnan(y[static_cast<size_t>(i)])) << "a row with Inf has no scale";
  }
}

TEST(Wire, Bf16WithinHalfAnUlp) {
  const std::vector<float> x = random_rows(6, 20, 3);
  const std::vector<float> y = round_trip(Wire::bf16, x, 6, 20);
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_LE(std::fabs(y[i] - x[i]), std::fabs(x[i]) * 0x1p-8) << i;
  }
}

TEST(Wire, StridedRowsEncodeOnlyTheirColumns) {
  // A [2, 4] block of a [2, 6] matrix.
  const std::vector<float> wide = {1, 2, 3, 4, 99, 99, 5, 6, 7, 8, 99, 99};
  std::vector<std::byte> bytes(row_bytes(Wire::f32, 4) * 2);
  encode_rows(Wire::f32, wide.data(), 6, 2, 4, bytes.data());
  std::vector<float> out(12, -1.0F);
  decode_rows(Wire::f32, bytes.data(), 2, 4, out.data(), 6);
  EXPECT_EQ(out, (std::vector<float>{1, 2, 3, 4, -1, -1, 5, 6, 7, 8, -1, -1}));
}

TEST(Wire, WiresOfAConfig) {
  ParallelConfig c;
  EXPECT_EQ(move_wire(c), Wire::f32);
  EXPECT_EQ(reduce_wire(c), Wire::f32);
  c.comm_dtype = CommDtype::bf16;
  EXPECT_EQ(move_wire(c), Wire::bf16);
  EXPECT_EQ(reduce_wire(c), Wire::bf16);
  c.comm_quant = CommQuant::int8;
  EXPECT_EQ(move_wire(c), Wire::int8);
  EXPECT_EQ(reduce_wire(c), Wire::bf16);
  c.comm_dtype = CommDtype::f32;
  EXPECT_EQ(reduce_wire(c), Wire::f32);
}

}  // namespace
}  // namespace flashcomm
