// Measuring this machine: collective latency and bandwidth over message and
// group sizes (reported as nccl-tests does: algorithm and bus bandwidth), the
// GEMM rate and the memory bandwidth, fitted into a HardwareProfile that the
// cost model reads.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "flashcomm/comm.hpp"
#include "flashcomm/cost_model.hpp"

namespace flashcomm {

struct CollectiveSample {
  CommOp op = CommOp::all_reduce;
  int group_size = 0;
  std::int64_t buffer_bytes = 0;  // S of comm.hpp's table (S_in, S_out for RS, AG)
  std::int64_t bytes_sent = 0;  // per rank, comm.hpp's formula
  double seconds = 0.0;  // median over repeats of the slowest rank's time
  double algbw_Bps = 0.0;  // buffer_bytes / seconds
  double busbw_Bps = 0.0;  // bytes_sent / seconds (nccl-tests' bus bandwidth)
};

struct CalibrateOptions {
  std::vector<std::int64_t> buffer_bytes = {4 << 10, 64 << 10, 1 << 20, 8 << 20};
  std::vector<int> group_sizes;  // empty: 2, 4, 8, ... up to the world, and the world
  int warmup = 2;
  int repeats = 9;
};

struct Calibration {
  HardwareProfile profile;
  std::vector<CollectiveSample> samples;
  std::string mpi_library;  // MPI_Get_library_version, first line
};

// Median FLOP/s of one sgemm [m, k] . [k, n] through the engine's GEMM
// wrapper, and bytes/s of memcpy (read + write) of `bytes`.
double measure_gemm_flops(int m, int n, int k, int repeats);
double measure_memory_bandwidth(std::size_t bytes, int repeats);
// measure_gemm_flops at 4, 16, 64 and 256 rows against a 1024 x 1024 weight.
std::vector<std::pair<int, double>> measure_gemm_flops_by_rows(int repeats);
// Median exp() evaluations per second over `count` values.
double measure_exp_rate(std::size_t count, int repeats);

// Collective over `world`: every rank takes part in every group size (ranks
// outside the group of a size wait at a barrier). Rank 0's result is complete.
Calibration calibrate(MPI_Comm world, const CalibrateOptions& options);

// latency + bytes_sent / bandwidth fitted to samples of one op and group size
// by least squares; latency is clamped to >= 0.
CollectiveFit fit_collective(const std::vector<CollectiveSample>& samples);

}  // namespace flashcomm
