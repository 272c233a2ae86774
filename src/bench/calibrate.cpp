// Calibration of the cost model on the machine in front of us.
#include "flashcomm/calibrate.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>

#include "comm/mpi/mpi_check.hpp"
#include "flashcomm/error.hpp"
#include "flashcomm/kernels.hpp"
#include "flashcomm/mpi_comm.hpp"

namespace flashcomm {

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  FC_ASSERT(!v.empty(), "median of nothing");
  std::sort(v.begin(), v.end());
  const size_t mid = v.size() / 2;
  return v.size() % 2 == 1 ? v[mid] : 0.5 * (v[mid - 1] + v[mid]);
}

// One timed collective on `comm` with a buffer of `buffer_bytes` (S).
void run_op(Communicator& comm, CommOp op, std::vector<float>& in, std::vector<float>& out,
            std::size_t buffer_floats) {
  const std::size_t n = static_cast<std::size_t>(comm.size());
  switch (op) {
    case CommOp::all_reduce:
      comm.all_reduce(in.data(), buffer_floats);
      break;
    case CommOp::reduce_scatter:
      comm.reduce_scatter(in.data(), out.data(), buffer_floats / n);
      break;
    case CommOp::all_gather:
      comm.all_gather(in.data(), out.data(), buffer_floats / n);
      break;
    case CommOp::all_to_all:
      comm.all_to_all(in.data(), out.data(), buffer_floats / n);
      break;
  }
}

}  // namespace

double measure_gemm_flops(int m, int n, int k, int repeats) {
  std::vector<float> a(static_cast<size_t>(m) * k, 0.5F);
  std::vector<float> w(static_cast<size_t>(n) * k, 0.25F);
  std::vector<float> y(static_cast<size_t>(m) * n);
  std::vector<double> rates;
  for (int r = 0; r < repeats + 1; ++r) {
    const double t0 = now_s();
    kernels::matmul_wt(a.data(), k, w.data(), k, y.data(), n, m, k, n);
    const double t = now_s() - t0;
    if (r > 0) {  // the first call pays for thread start-up and page faults
      rates.push_back(2.0 * m * n * k / t);
    }
  }
  return median(rates);
}

std::vector<std::pair<int, double>> measure_gemm_flops_by_rows(int repeats) {
  std::vector<std::pair<int, double>> table;
  for (int rows : {4, 16, 64, 256}) {
    table.emplace_back(rows, measure_gemm_flops(rows, 1024, 1024, repeats));
  }
  return table;
}

double measure_memory_bandwidth(std::size_t bytes, int repeats) {
  std::vector<char> src(bytes, 1);
  std::vector<char> dst(bytes, 0);
  std::vector<double> rates;
  for (int r = 0; r < repeats + 1; ++r) {
    const double t0 = now_s();
    std::memcpy(dst.data(), src.data(), bytes);
    const double t = now_s() - t0;
    if (r > 0) {
      rates.push_back(2.0 * static_cast<double>(bytes) / t);  // read + write
    }
  }
  return median(rates);
}

double measure_exp_rate(std::size_t count, int repeats) {
  std::vector<float> x(count);
  for (std::size_t i = 0; i < count; ++i) {
    x[i] = -static_cast<float>(i % 1000) * 0.01F;  // softmax inputs: max-shifted, <= 0
  }
  std::vector<float> y(count);
  std::vector<double> rates;
  for (int r = 0; r < repeats + 1; ++r) {
    const double t0 = now_s();
    for (std::size_t i = 0; i < count; ++i) {
      y[i] = std::exp(x[i]);
    }
    const double t = now_s() - t0;
    if (r > 0) {
      rates.push_back(static_cast<double>(count) / t);
    }
  }
  return median(rates);
}

CollectiveFit fit_collective(const std::vector<CollectiveSample>& samples) {
  FC_ASSERT(!samples.empty(), "no samples to fit");
  CollectiveFit fit;
  fit.group_size = samples.front().group_size;
  // Weighted by 1/t^2, so each sample counts by its relative error: an
  // unweighted fit lets the largest messages swallow the latency.
  double sw = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (const CollectiveSample& s : samples) {
    const double x = static_cast<double>(s.bytes_sent);
    const double w = 1.0 / (s.seconds * s.seconds);
    sw += w;
    sx += w * x;
    sy += w * s.seconds;
    sxx += w * x * x;
    sxy += w * x * s.seconds;
  }
  const double denom = sw * sxx - sx * sx;
  double slope = denom > 0 ? (sw * sxy - sx * sy) / denom : 0.0;
  double intercept = (sy - slope * sx) / sw;
  if (intercept < 0) {
    // A negative latency fits noise; refit the slope through the origin.
    intercept = 0;
    slope = sxx > 0 ? sxy / sxx : 0.0;
  }
  if (slope <= 0) {
    // No growth with size measured: bandwidth from the largest sample.
    const auto& big =
        *std::max_element(samples.begin(), samples.end(),
                          [](const auto& a, const auto& b) { return a.bytes_sent < b.bytes_sent; });
    slope = big.seconds / static_cast<double>(std::max<std::int64_t>(big.bytes_sent, 1));
  }
  fit.latency_s = intercept;
  fit.bandwidth_Bps = 1.0 / slope;
  return fit;
}

Calibration calibrate(MPI_Comm world, const CalibrateOptions& options) {
  int rank = 0;
  int world_size = 0;
  FC_CHECK_MPI(MPI_Comm_rank(world, &rank));
  FC_CHECK_MPI(MPI_Comm_size(world, &world_size));
  std::vector<int> sizes = options.group_sizes;
  if (sizes.empty()) {
    for (int g = 2; g <= world_size; g *= 2) {
      sizes.push_back(g);
    }
    if (world_size > 1 && sizes.back() != world_size) {
      sizes.push_back(world_size);
    }
  }
  for (int g : sizes) {
    if (g < 2 || g > world_size) {
      throw ConfigError(
          fmt::format("group size {} must be between 2 and the {} ranks", g, world_size));
    }
  }

  Calibration cal;
  char version[MPI_MAX_LIBRARY_VERSION_STRING] = {};
  int length = 0;
  FC_CHECK_MPI(MPI_Get_library_version(version, &length));
  cal.mpi_library = std::string(version, static_cast<size_t>(length));
  cal.mpi_library = cal.mpi_library.substr(0, cal.mpi_library.find_first_of("\n,"));

  HardwareProfile& p = cal.profile;
  p.name = "calibrated";
  p.activation_bytes = 4;
  // A layer-like GEMM: a few hundred tokens against a square weight.
  p.gemm_flops = measure_gemm_flops(256, 1024, 1024, options.repeats);
  p.memory_bandwidth_Bps = measure_memory_bandwidth(std::size_t{64} << 20, options.repeats);
  p.exp_per_s = measure_exp_rate(std::size_t{1} << 20, options.repeats);
  p.gemm_flops_by_rows = measure_gemm_flops_by_rows(options.repeats);

  for (int g : sizes) {
    // Ranks [0, g) form the group; the others wait at the barrier below.
    MPI_Comm sub = MPI_COMM_NULL;
    FC_CHECK_MPI(MPI_Comm_split(world, rank < g ? 0 : MPI_UNDEFINED, rank, &sub));
    if (sub != MPI_COMM_NULL) {
      MpiCommunicator comm(sub, "calibrate", nullptr);
      for (CommOp op :
           {CommOp::all_reduce, CommOp::reduce_scatter, CommOp::all_gather, CommOp::all_to_all}) {
        std::vector<CollectiveSample> op_samples;
        for (std::int64_t bytes : options.buffer_bytes) {
          // Round the buffer to g equal blocks of floats.
          const std::size_t floats =
              std::max<std::size_t>(static_cast<std::size_t>(bytes) / 4 / g, 1) * g;
          std::vector<float> in(floats, 1.0F);
          std::vector<float> out(floats, 0.0F);
          std::vector<double> times;
          for (int r = 0; r < options.warmup + options.repeats; ++r) {
            FC_CHECK_MPI(MPI_Barrier(sub));
            const double t0 = now_s();
            run_op(comm, op, in, out, floats);
            double t = now_s() - t0;
            // The collective is as slow as its slowest rank.
            FC_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, sub));
            if (r >= options.warmup) {
              times.push_back(t);
            }
          }
          CollectiveSample s;
          s.op = op;
          s.group_size = g;
          s.buffer_bytes = static_cast<std::int64_t>(floats * sizeof(float));
          s.bytes_sent = bytes_sent(op, g, s.buffer_bytes);
          s.seconds = median(times);
          s.algbw_Bps = static_cast<double>(s.buffer_bytes) / s.seconds;
          s.busbw_Bps = static_cast<double>(s.bytes_sent) / s.seconds;
          op_samples.push_back(s);
          cal.samples.push_back(s);
        }
        p.collectives[op].push_back(fit_collective(op_samples));
      }
    }
    FC_CHECK_MPI(MPI_Barrier(world));
  }
  p.description = fmt::format("calibrated on {} ranks with {}", world_size, cal.mpi_library);
  p.source = "measured by flashcomm calibrate";
  return cal;
}

}  // namespace flashcomm
