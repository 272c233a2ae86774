// How activation rows travel in a collective: float32, bfloat16, or int8
// with one float scale per row.
//
// int8 is symmetric per row: scale = max|x| / 127 and q = round(x / scale),
// so every value is off by at most scale / 2 = max|x| / 254 (0.4% of the
// row's largest magnitude), plus float rounding. The scale travels in front of the row's bytes. A
// row of zeros has scale 0; a row holding Inf or NaN arrives as NaN. bf16 rounds to nearest even: 8
// significant bits, a relative error of at most 2^-8 (0.4%).
#pragma once

#include <cstddef>
#include <cstdint>

#include "flashcomm/comm.hpp"
#include "flashcomm/layout.hpp"

namespace flashcomm {

enum class Wire : std::uint8_t { f32, bf16, int8 };
const char* to_string(Wire wire);

// The wire of the collectives that move rows without summing them
// (AllGather, AlltoAll): int8 under CommQuant::int8, else the dtype's.
Wire move_wire(const ParallelConfig& config);
// The wire of the reductions (AllReduce, ReduceScatter): f32 or bf16.
Wire reduce_wire(const ParallelConfig& config);

// Bytes of one encoded row of `cols` values: 4*cols, 2*cols or 4 + cols.
std::size_t row_bytes(Wire wire, int cols);

// in[n_rows, cols] (row stride ld_in) -> out[n_rows * row_bytes(wire, cols)]
void encode_rows(Wire wire, const float* in, int ld_in, int n_rows, int cols, std::byte* out);
// in[n_rows * row_bytes(wire, cols)] -> out[n_rows, cols] (row stride ld_out)
void decode_rows(Wire wire, const std::byte* in, int n_rows, int cols, float* out, int ld_out);

// AllReduce / ReduceScatter of float32 data over `comm` on `wire` (f32 or
// bf16, converted before and after). Shapes as Communicator's.
void all_reduce_on(Communicator& comm, Wire wire, float* buf, std::size_t count);
void reduce_scatter_on(Communicator& comm, Wire wire, const float* in, float* out,
                       std::size_t count);

}  // namespace flashcomm
