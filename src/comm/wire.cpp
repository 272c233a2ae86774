// Row codecs for collective payloads, and the reductions on a bf16 wire.
#include "flashcomm/wire.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "flashcomm/error.hpp"
#include "flashcomm/safetensors.hpp"

namespace flashcomm {

namespace {

std::size_t at(int row, int ld) {
  return static_cast<std::size_t>(row) * static_cast<std::size_t>(ld);
}

void encode_int8_row(const float* x, int cols, std::byte* out) {
  float max_abs = 0.0F;
  for (int c = 0; c < cols; ++c) {
    max_abs = std::max(max_abs, std::fabs(x[c]));
  }
  const float scale = max_abs / 127.0F;
  std::memcpy(out, &scale, sizeof scale);
  auto* q = reinterpret_cast<std::int8_t*>(out + sizeof scale);
  if (scale == 0.0F || !std::isfinite(scale)) {
    // Zeros stay zeros; a row holding Inf or NaN has no usable scale: it is
    // sent as its non-finite scale, which decodes to a row of NaN.
    std::fill_n(q, cols, std::int8_t{0});
    return;
  }
  const float inv = 1.0F / scale;
  for (int c = 0; c < cols; ++c) {
    const float v = std::nearbyint(x[c] * inv);
    q[c] = static_cast<std::int8_t>(std::clamp(v, -127.0F, 127.0F));
  }
}

void decode_int8_row(const std::byte* in, int cols, float* y) {
  float scale = 0.0F;
  std::memcpy(&scale, in, sizeof scale);
  const auto* q = reinterpret_cast<const std::int8_t*>(in + sizeof scale);
  if (!std::isfinite(scale)) {
    std::fill_n(y, cols, std::numeric_limits<float>::quiet_NaN());
    return;
  }
  for (int c = 0; c < cols; ++c) {
    y[c] = static_cast<float>(q[c]) * scale;
  }
}

}  // namespace

const char* to_string(Wire wire) {
  switch (wire) {
    case Wire::f32:
      return "f32";
    case Wire::bf16:
      return "bf16";
    case Wire::int8:
      return "int8";
  }
  return "unknown";
}

Wire move_wire(const ParallelConfig& config) {
  if (config.comm_quant == CommQuant::int8) {
    return Wire::int8;
  }
  return reduce_wire(config);
}

Wire reduce_wire(const ParallelConfig& config) {
  return config.comm_dtype == CommDtype::bf16 ? Wire::bf16 : Wire::f32;
}

std::size_t row_bytes(Wire wire, int cols) {
  FC_ASSERT(cols >= 0, "cols {}", cols);
  const auto n = static_cast<std::size_t>(cols);
  switch (wire) {
    case Wire::f32:
      return 4 * n;
    case Wire::bf16:
      return 2 * n;
    case Wire::int8:
      return sizeof(float) + n;
  }
  return 0;
}

void encode_rows(Wire wire, const float* in, int ld_in, int n_rows, int cols, std::byte* out) {
  FC_ASSERT(n_rows >= 0 && cols >= 0 && ld_in >= cols, "n_rows {} cols {} ld_in {}", n_rows, cols,
            ld_in);
  const std::size_t stride = row_bytes(wire, cols);
  for (int r = 0; r < n_rows; ++r) {
    const float* x = in + at(r, ld_in);
    std::byte* o = out + static_cast<std::size_t>(r) * stride;
    switch (wire) {
      case Wire::f32:
        std::memcpy(o, x, stride);
        break;
      case Wire::bf16:
        for (int c = 0; c < cols; ++c) {
          const std::uint16_t b = f32_to_bf16(x[c]);
          std::memcpy(o + 2 * static_cast<std::size_t>(c), &b, 2);
        }
        break;
      case Wire::int8:
        encode_int8_row(x, cols, o);
        break;
    }
  }
}

void decode_rows(Wire wire, const std::byte* in, int n_rows, int cols, float* out, int ld_out) {
  FC_ASSERT(n_rows >= 0 && cols >= 0 && ld_out >= cols, "n_rows {} cols {} ld_out {}", n_rows, cols,
            ld_out);
  const std::size_t stride = row_bytes(wire, cols);
  for (int r = 0; r < n_rows; ++r) {
    const std::byte* i = in + static_cast<std::size_t>(r) * stride;
    float* y = out + at(r, ld_out);
    switch (wire) {
      case Wire::f32:
        std::memcpy(y, i, stride);
        break;
      case Wire::bf16:
        for (int c = 0; c < cols; ++c) {
          std::uint16_t b = 0;
          std::memcpy(&b, i + 2 * static_cast<std::size_t>(c), 2);
          y[c] = bf16_to_f32(b);
        }
        break;
      case Wire::int8:
        decode_int8_row(i, cols, y);
        break;
    }
  }
}

namespace {

std::vector<std::uint16_t> to_bf16(const float* x, std::size_t count) {
  std::vector<std::uint16_t> out(count);
  std::transform(x, x + count, out.begin(), f32_to_bf16);
  return out;
}

void from_bf16(const std::vector<std::uint16_t>& in, float* y) {
  std::transform(in.begin(), in.end(), y, bf16_to_f32);
}

}  // namespace

void all_reduce_on(Communicator& comm, Wire wire, float* buf, std::size_t count) {
  FC_ASSERT(wire != Wire::int8, "int8 payloads are not reduced");
  if (wire == Wire::f32) {
    comm.all_reduce(buf, count);
    return;
  }
  std::vector<std::uint16_t> b = to_bf16(buf, count);
  comm.all_reduce(b.data(), count, Elem::bf16);
  from_bf16(b, buf);
}

void reduce_scatter_on(Communicator& comm, Wire wire, const float* in, float* out,
                       std::size_t count) {
  FC_ASSERT(wire != Wire::int8, "int8 payloads are not reduced");
  if (wire == Wire::f32) {
    comm.reduce_scatter(in, out, count);
    return;
  }
  const std::vector<std::uint16_t> b = to_bf16(in, count * static_cast<std::size_t>(comm.size()));
  std::vector<std::uint16_t> r(count);
  comm.reduce_scatter(b.data(), r.data(), count, Elem::bf16);
  from_bf16(r, out);
}

}  // namespace flashcomm
