// Calibration of the cost model on the machine in front of us.
#include "flashcomm/calibrate.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>

#include "comm/mpi/mpi_check.hpp"
#include "flashcomm/error.hpp"
#include "flashcomm/kernels.hpp"
#include "flashcomm/mpi_algorithms.hpp"
#include "flashcomm/mpi_comm.hpp"

namespace flashcomm {

double median_of(std::vector<double> v) {
  FC_ASSERT(!v.empty(), "median of nothing");
  std::sort(v.begin(), v.end());
  const size_t mid = v.size() / 2;
  return v.size() % 2 == 1 ? v[mid] : 0.5 * (v[mid - 1] + v[mid]);
}

void run_collective(Communicator& comm, CommOp op, std::vector<float>& in, std::vector<float>& out,
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

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
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
  return median_of(rates);
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
  return median_of(rates);
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
  return median_of(rates);
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

namespace {

// One way to run an op on a group: the library's default, or a forced
// algorithm on its own communicator.
struct Variant {
  std::string algorithm;
  Communicator* comm = nullptr;
  std::unique_ptr<MpiCommunicator> owned;  // forced variants' communicators
  bool refused = false;  // the library refused it; not run again
};

// Every op as the engine calls it, for ops in CommOp order.
constexpr CommOp kOps[] = {CommOp::all_reduce, CommOp::reduce_scatter, CommOp::all_gather,
                           CommOp::all_to_all};

// The forced variants of `op` on the group `sub`; none when the library
// cannot force it.
void add_forced_variants(AlgorithmControl* control, MPI_Comm sub, CommOp op,
                         std::vector<Variant>& variants) {
  if (control == nullptr || !control->available(op)) {
    return;
  }
  for (const MpiAlgorithm& a : control->algorithms(op)) {
    ForcedCommunicator forced = control->duplicate_forcing(sub, op, a);
    Variant v;
    v.algorithm = a.name;
    v.comm = forced.comm.get();
    v.owned = std::move(forced.comm);
    variants.push_back(std::move(v));
  }
}

// Times every variant of `op` at each buffer size on the group `sub`,
// interleaving the variants repeat by repeat so that a machine whose load
// drifts slows them alike.
void time_op(MPI_Comm sub, CommOp op, const CalibrateOptions& options,
             std::vector<Variant>& variants, Calibration& cal) {
  int g = 0;
  FC_CHECK_MPI(MPI_Comm_size(sub, &g));
  for (std::int64_t bytes : options.buffer_bytes) {
    // Round the buffer to g equal blocks of floats.
    const std::size_t floats =
        std::max<std::size_t>(static_cast<std::size_t>(bytes) / 4 / g, 1) * g;
    std::vector<float> in(floats, 1.0F);
    std::vector<float> out(floats, 0.0F);
    std::vector<std::vector<double>> times(variants.size());
    for (int r = 0; r < options.warmup + options.repeats; ++r) {
      for (std::size_t i = 0; i < variants.size(); ++i) {
        Variant& v = variants[i];
        if (v.refused) {
          continue;
        }
        FC_CHECK_MPI(MPI_Barrier(sub));
        std::string failure;
        const double t0 = now_s();
        try {
          run_collective(*v.comm, op, in, out, floats);
        } catch (const CommError& e) {
          failure = e.what();
        }
        // The collective is as slow as its slowest rank; a failure on any
        // rank reaches all of them here.
        double status[2] = {now_s() - t0, failure.empty() ? 0.0 : 1.0};
        FC_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, status, 2, MPI_DOUBLE, MPI_MAX, sub));
        if (status[1] != 0.0) {
          if (failure.empty()) {
            failure = "it failed on another rank";
          }
          if (i == 0) {
            throw CommError(fmt::format("{} of {} bytes on {} ranks failed: {}", to_string(op),
                                        floats * sizeof(float), g, failure));
          }
          v.refused = true;
          cal.skipped.push_back(
              {op, g, v.algorithm, static_cast<std::int64_t>(floats * sizeof(float)), failure});
          continue;
        }
        if (r >= options.warmup) {
          times[i].push_back(status[0]);
        }
      }
    }
    for (std::size_t i = 0; i < variants.size(); ++i) {
      if (times[i].empty()) {
        continue;  // refused
      }
      CollectiveSample s;
      s.op = op;
      s.group_size = g;
      s.algorithm = variants[i].algorithm;
      s.buffer_bytes = static_cast<std::int64_t>(floats * sizeof(float));
      s.bytes_sent = bytes_sent(op, g, s.buffer_bytes);
      s.seconds = median_of(times[i]);
      s.algbw_Bps = static_cast<double>(s.buffer_bytes) / s.seconds;
      s.busbw_Bps = static_cast<double>(s.bytes_sent) / s.seconds;
      cal.samples.push_back(s);
    }
  }
}

// Why algorithms cannot be forced, once per distinct reason.
void note_unavailable(const AlgorithmControl& control, Calibration& cal) {
  std::vector<std::string> reasons;
  std::vector<std::vector<std::string>> ops;
  for (CommOp op : kOps) {
    if (control.available(op)) {
      continue;
    }
    const std::string& reason = control.unavailable_reason(op);
    const auto it = std::find(reasons.begin(), reasons.end(), reason);
    if (it == reasons.end()) {
      reasons.push_back(reason);
      ops.push_back({to_string(op)});
    } else {
      ops[static_cast<std::size_t>(it - reasons.begin())].push_back(to_string(op));
    }
  }
  for (std::size_t i = 0; i < reasons.size(); ++i) {
    cal.warnings.push_back(
        fmt::format("cannot force the algorithm of {}: {}; timing the "
                    "library default only",
                    fmt::join(ops[i], ", "), reasons[i]));
  }
  for (const std::string& w : control.warnings()) {
    cal.warnings.push_back(w);
  }
}

}  // namespace

std::vector<AlgorithmSummary> summarize_algorithms(const std::vector<CollectiveSample>& samples) {
  std::vector<AlgorithmSummary> out;
  for (const CollectiveSample& d : samples) {
    if (d.algorithm != kDefaultAlgorithm) {
      continue;
    }
    AlgorithmSummary sum;
    sum.op = d.op;
    sum.group_size = d.group_size;
    sum.buffer_bytes = d.buffer_bytes;
    sum.default_s = d.seconds;
    double nearest_distance = 0.0;
    for (const CollectiveSample& f : samples) {
      if (f.algorithm == kDefaultAlgorithm || f.op != d.op || f.group_size != d.group_size ||
          f.buffer_bytes != d.buffer_bytes) {
        continue;
      }
      const double distance = std::abs(std::log(f.seconds / d.seconds));
      if (sum.nearest.empty() || distance < nearest_distance) {
        sum.nearest = f.algorithm;
        sum.nearest_s = f.seconds;
        nearest_distance = distance;
      }
      if (sum.fastest.empty() || f.seconds < sum.fastest_s) {
        sum.fastest = f.algorithm;
        sum.fastest_s = f.seconds;
      }
    }
    if (!sum.nearest.empty()) {
      out.push_back(sum);
    }
  }
  return out;
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

  // Collective over the world, as the groups below are.
  std::unique_ptr<AlgorithmControl> control;
  if (options.algorithms) {
    control = std::make_unique<AlgorithmControl>(world);
    note_unavailable(*control, cal);
    cal.algorithms_forced = std::any_of(std::begin(kOps), std::end(kOps),
                                        [&](CommOp op) { return control->available(op); });
  }

  HardwareProfile& p = cal.profile;
  p.name = "calibrated";
  p.activation_bytes = 4;
  // A layer-like GEMM: a few hundred tokens against a square weight.
  p.gemm_flops = measure_gemm_flops(256, 1024, 1024, options.repeats);
  p.memory_bandwidth_Bps = measure_memory_bandwidth(std::size_t{64} << 20, options.repeats);
  p.exp_per_s = measure_exp_rate(std::size_t{1} << 20, options.repeats);
  p.gemm_flops_by_rows = measure_gemm_flops_by_rows(options.repeats);

  for (int g : sizes) {
    // Ranks [0, g) form the group; the others wait below. A failure inside
    // the group is agreed over the world, so no rank is left waiting.
    std::exception_ptr error;
    MPI_Comm sub = MPI_COMM_NULL;
    FC_CHECK_MPI(MPI_Comm_split(world, rank < g ? 0 : MPI_UNDEFINED, rank, &sub));
    if (sub != MPI_COMM_NULL) {
      try {
        MpiCommunicator comm(sub, "calibrate", nullptr);
        for (CommOp op : kOps) {
          std::vector<Variant> variants(1);
          variants[0].algorithm = kDefaultAlgorithm;
          variants[0].comm = &comm;
          add_forced_variants(control.get(), sub, op, variants);
          const std::size_t first = cal.samples.size();
          time_op(sub, op, options, variants, cal);
          std::vector<CollectiveSample> defaults;
          std::copy_if(cal.samples.begin() + static_cast<std::ptrdiff_t>(first), cal.samples.end(),
                       std::back_inserter(defaults),
                       [](const CollectiveSample& s) { return s.algorithm == kDefaultAlgorithm; });
          // The cost model predicts the engine, which runs the default.
          p.collectives[op].push_back(fit_collective(defaults));
        }
      } catch (...) {
        error = std::current_exception();
      }
    }
    int failed = error ? 1 : 0;
    FC_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, world));
    if (error) {
      std::rethrow_exception(error);
    }
    if (failed != 0) {
      throw CommError(fmt::format("calibrating groups of {} ranks failed on another rank", g));
    }
  }
  cal.summaries = summarize_algorithms(cal.samples);
  p.description = fmt::format("calibrated on {} ranks with {}", world_size, cal.mpi_library);
  p.source = "measured by flashcomm calibrate";
  return cal;
}

void save_calibration(const Calibration& cal, const std::string& path) {
  save_profile(cal.profile, path);

  // The measurements beside the profile, from the file just written, so the
  // profile's own fields keep one writer (save_profile).
  nlohmann::json doc;
  {
    std::ifstream in(path);
    doc = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  }
  if (!doc.is_object()) {
    throw ConfigError(
        fmt::format("{}: the hardware profile just written cannot be read back", path));
  }
  nlohmann::json samples = nlohmann::json::object();
  for (const CollectiveSample& s : cal.samples) {
    samples[to_string(s.op)].push_back({{"group_size", s.group_size},
                                        {"buffer_bytes", s.buffer_bytes},
                                        {"bytes_sent", s.bytes_sent},
                                        {"algorithm", s.algorithm},
                                        {"seconds", s.seconds},
                                        {"algbw_Bps", s.algbw_Bps},
                                        {"busbw_Bps", s.busbw_Bps}});
  }
  nlohmann::json summaries = nlohmann::json::array();
  for (const AlgorithmSummary& a : cal.summaries) {
    summaries.push_back({{"op", to_string(a.op)},
                         {"group_size", a.group_size},
                         {"buffer_bytes", a.buffer_bytes},
                         {"default_s", a.default_s},
                         {"nearest_by_time", a.nearest},
                         {"nearest_s", a.nearest_s},
                         {"fastest", a.fastest},
                         {"fastest_s", a.fastest_s}});
  }
  nlohmann::json skipped = nlohmann::json::array();
  for (const SkippedAlgorithm& k : cal.skipped) {
    skipped.push_back({{"op", to_string(k.op)},
                       {"group_size", k.group_size},
                       {"algorithm", k.algorithm},
                       {"buffer_bytes", k.buffer_bytes},
                       {"reason", k.reason}});
  }
  doc["calibration"] = {
      {"mpi_library", cal.mpi_library},
      {"algorithms", cal.algorithms_forced ? "the library default and each algorithm forced "
                                             "through MPI_T"
                                           : "the library default only"},
      {"default_algorithm",
       "\"default\" samples ran as the library chose; it does not report which algorithm that "
       "was, so nearest_by_time is an inference from timing"},
      {"warnings", cal.warnings},
      {"samples", samples},
      {"default_vs_forced", summaries},
      {"skipped", skipped}};
  std::ofstream out(path);
  out << doc.dump(2) << "\n";
  if (!out) {
    throw ConfigError(fmt::format("{}: writing the calibration failed", path));
  }
}

}  // namespace flashcomm
