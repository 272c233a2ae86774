// Measuring this machine: collective latency and bandwidth over message and
// group sizes (reported as nccl-tests does: algorithm and bus bandwidth), the
// GEMM rate and the memory bandwidth, fitted into a HardwareProfile that the
// cost model reads.
//
// Each collective runs as the library chooses ("default": OpenMPI's
// coll/tuned picks an algorithm per call and does not say which) and, on
// request, under every algorithm the library lets us force
// (flashcomm/mpi_algorithms.hpp). Which forced algorithm the default's time
// is nearest is then an inference by timing, not the library's word.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "flashcomm/comm.hpp"
#include "flashcomm/cost_model.hpp"

namespace flashcomm {

// The algorithm of samples the library chose for itself.
inline constexpr const char* kDefaultAlgorithm = "default";

struct CollectiveSample {
  CommOp op = CommOp::all_reduce;
  int group_size = 0;
  std::string algorithm = kDefaultAlgorithm;  // else the library's name of the forced one
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
  // Also time every algorithm the library lets us force, beside the default.
  bool algorithms = false;
};

// For one op, group size and buffer: the default beside the forced algorithms.
struct AlgorithmSummary {
  CommOp op = CommOp::all_reduce;
  int group_size = 0;
  std::int64_t buffer_bytes = 0;
  double default_s = 0.0;
  std::string nearest;  // the forced algorithm whose time is nearest the default's, in ratio
  double nearest_s = 0.0;
  std::string fastest;  // the fastest forced algorithm
  double fastest_s = 0.0;
};

// A forced algorithm that the library refused (e.g. one for two ranks only
// on a larger group); it is not run at larger buffers of that op and group.
struct SkippedAlgorithm {
  CommOp op = CommOp::all_reduce;
  int group_size = 0;
  std::string algorithm;
  std::int64_t buffer_bytes = 0;  // the buffer it first failed at
  std::string reason;
};

struct Calibration {
  HardwareProfile profile;  // collectives fitted to the default samples only
  // By group size, op and buffer; at each buffer the default, then the forced
  // algorithms in the library's order.
  std::vector<CollectiveSample> samples;
  std::vector<AlgorithmSummary> summaries;  // where forced algorithms were timed
  std::vector<SkippedAlgorithm> skipped;
  // Why some or all algorithms could not be forced, and what may defeat
  // forcing; one sentence each (rank 0's view).
  std::vector<std::string> warnings;
  bool algorithms_forced = false;  // some op was timed under forced algorithms
  std::string mpi_library;  // MPI_Get_library_version, first line
};

// Median FLOP/s of one sgemm [m, k] . [k, n] through the engine's GEMM
// wrapper, and bytes/s of memcpy (read + write) of `bytes`.
double measure_gemm_flops(int m, int n, int k, int repeats);

// The median of a non-empty list of timings (the mean of the two middle
// values for an even count).
double median_of(std::vector<double> v);

// One collective on `comm` on a buffer of `buffer_floats` elements (S of
// comm.hpp's table), as the engine calls it; `in` and `out` hold S floats.
void run_collective(Communicator& comm, CommOp op, std::vector<float>& in, std::vector<float>& out,
                    std::size_t buffer_floats);
double measure_memory_bandwidth(std::size_t bytes, int repeats);
// measure_gemm_flops at 4, 16, 64 and 256 rows against a 1024 x 1024 weight.
std::vector<std::pair<int, double>> measure_gemm_flops_by_rows(int repeats);
// Median exp() evaluations per second over `count` values.
double measure_exp_rate(std::size_t count, int repeats);

// Collective over `world`: every rank takes part in every group size (ranks
// outside the group of a size wait at a barrier). Rank 0's result is complete.
// With options.algorithms, a library that cannot force algorithms is not an
// error: warnings say what is missing and only the default is timed. An MPI
// failure of the default throws CommError on every rank of the group.
Calibration calibrate(MPI_Comm world, const CalibrateOptions& options);

// Per op, group size and buffer with a default sample and forced ones: the
// forced algorithm nearest the default (smallest |log(t / t_default)|) and
// the fastest. Samples as calibrate() orders them.
std::vector<AlgorithmSummary> summarize_algorithms(const std::vector<CollectiveSample>& samples);

// The profile (save_profile's format) with a "calibration" object beside it
// holding the samples per op with their algorithms, the summaries, skipped
// algorithms and warnings; load_profile reads the profile and ignores that
// object. ConfigError when the file cannot be written.
void save_calibration(const Calibration& cal, const std::string& path);

// latency + bytes_sent / bandwidth fitted to samples of one op and group size
// by least squares; latency is clamped to >= 0.
CollectiveFit fit_collective(const std::vector<CollectiveSample>& samples);

}  // namespace flashcomm
