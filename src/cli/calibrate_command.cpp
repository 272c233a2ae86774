// `flashcomm calibrate`: measures this machine's collectives, GEMM rate and
// memory bandwidth on N ranks and saves them as a hardware profile.
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <memory>

#include <unistd.h>

#include "cli/command.hpp"
#include "cli/fault.hpp"
#include "cli/launcher.hpp"
#include "cli/mpi_session.hpp"
#include "cli/options.hpp"
#include "cli/run_command.hpp"
#include "flashcomm/calibrate.hpp"
#include "flashcomm/error.hpp"
#include "flashcomm/log.hpp"
#include "flashcomm/mpi_algorithms.hpp"

namespace flashcomm::cli {

namespace {

struct CalibrateCommandOptions {
  int ranks = 2;
  std::vector<std::int64_t> sizes;
  int repeats = 9;
  std::string out;
  std::string log_level;
  bool algorithms = false;
};

// How the table names the library's own choice.
constexpr const char* kDefaultLabel = "default (MPI decides)";

std::string algorithm_label(const std::string& algorithm) {
  return algorithm == kDefaultAlgorithm ? kDefaultLabel : algorithm;
}

void print_calibration(const Calibration& cal) {
  fmt::print(
      "collectives ({}; \"{}\": the library picks each call's algorithm and does not "
      "report it{})\n",
      cal.mpi_library, kDefaultLabel,
      cal.algorithms_forced ? "; the others are forced through MPI_T" : "");
  fmt::print("  {:>10} {:<15} {:>5} {:<22} {:>11} {:>11} {:>11}\n", "bytes", "op", "ranks",
             "algorithm", "time_us", "algbw_GB/s", "busbw_GB/s");
  for (const CollectiveSample& s : cal.samples) {
    fmt::print("  {:>10} {:<15} {:>5} {:<22} {:>11.1f} {:>11.3f} {:>11.3f}\n", s.buffer_bytes,
               to_string(s.op), s.group_size, algorithm_label(s.algorithm), s.seconds * 1e6,
               s.algbw_Bps / 1e9, s.busbw_Bps / 1e9);
  }
  if (!cal.summaries.empty()) {
    fmt::print(
        "default beside the forced algorithms (nearest: the forced algorithm whose time is "
        "nearest the default's,\n  an inference by timing: the library does not report its "
        "choice; fastest: the fastest forced one)\n");
    fmt::print("  {:>10} {:<15} {:>5} {:>11} {:<20} {:>11} {:<20} {:>11}\n", "bytes", "op", "ranks",
               "default_us", "nearest", "nearest_us", "fastest", "fastest_us");
    for (const AlgorithmSummary& a : cal.summaries) {
      fmt::print("  {:>10} {:<15} {:>5} {:>11.1f} {:<20} {:>11.1f} {:<20} {:>11.1f}\n",
                 a.buffer_bytes, to_string(a.op), a.group_size, a.default_s * 1e6, a.nearest,
                 a.nearest_s * 1e6, a.fastest, a.fastest_s * 1e6);
    }
  }
  for (const SkippedAlgorithm& k : cal.skipped) {
    fmt::print("not run: {} on {} ranks with {} (refused from {} bytes on): {}\n", to_string(k.op),
               k.group_size, k.algorithm, k.buffer_bytes, k.reason);
  }
  fmt::print("fits of the default (time = latency + bytes_sent / bandwidth):\n");
  for (const auto& [op, fits] : cal.profile.collectives) {
    for (const CollectiveFit& f : fits) {
      fmt::print("  {:<15} {:>5} ranks: latency {:8.1f} us, bandwidth {:8.3f} GB/s\n",
                 to_string(op), f.group_size, f.latency_s * 1e6, f.bandwidth_Bps / 1e9);
    }
  }
  fmt::print(
      "sgemm: {:.2f} GFLOP/s per rank; memcpy: {:.2f} GB/s (read + write); exp: {:.0f} M/s\n",
      cal.profile.gemm_flops / 1e9, cal.profile.memory_bandwidth_Bps / 1e9,
      cal.profile.exp_per_s / 1e6);
}

int calibrate_main(const CalibrateCommandOptions& opt, int argc, char** argv) {
  if (opt.ranks < 2 || opt.ranks > 64) {
    throw ConfigError(fmt::format("--ranks {} must be between 2 and 64 on one machine", opt.ranks));
  }
  std::vector<std::int64_t> distinct = opt.sizes;
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  if (!opt.sizes.empty() && distinct.size() < 2) {
    throw ConfigError("--sizes needs at least two different sizes to fit latency and bandwidth");
  }
  if (!opt.out.empty()) {
    // Fail before measuring, not after.
    const std::filesystem::path dir = std::filesystem::absolute(opt.out).parent_path();
    if (std::filesystem::is_directory(opt.out) || !std::filesystem::is_directory(dir) ||
        access(dir.c_str(), W_OK) != 0) {
      throw ConfigError(
          fmt::format("--out {} cannot be written: expected a file in a writable "
                      "directory",
                      opt.out));
    }
  }
  if (opt.repeats < 1) {
    throw ConfigError(fmt::format("--repeats {} must be at least 1", opt.repeats));
  }
  for (std::int64_t s : opt.sizes) {
    if (s < 4 || s > (std::int64_t{1} << 31)) {
      throw ConfigError(fmt::format("--sizes {} must be between 4 bytes and 2 GiB", s));
    }
  }
  arm_fault_from_environment(opt.ranks, {"calibrate"});
  if (!under_mpi_launcher()) {
    return relaunch_under_mpiexec(argc, argv, opt.ranks);
  }
  if (opt.algorithms) {
    // OpenMPI reads this one only at MPI_Init.
    request_algorithm_control();
  }
  MpiSession mpi;
  log::init(MpiSession::rank(), opt.log_level);
  MpiSession::share_cores_among_local_ranks();
  if (MpiSession::size() != opt.ranks) {
    if (MpiSession::rank() == 0) {
      fmt::print(stderr, "flashcomm: error: the job has {} ranks but --ranks is {}\n",
                 MpiSession::size(), opt.ranks);
    }
    return kExitUsage;
  }
  CalibrateOptions options;
  if (!opt.sizes.empty()) {
    options.buffer_bytes = distinct;
  }
  options.repeats = opt.repeats;
  options.algorithms = opt.algorithms;
  try {
    fault_point("calibrate");
    const Calibration cal = calibrate(MPI_COMM_WORLD, options);
    if (MpiSession::rank() == 0) {
      for (const std::string& w : cal.warnings) {
        fmt::print(stderr, "flashcomm: warning: {}\n", w);
      }
      print_calibration(cal);
      if (!opt.out.empty()) {
        save_calibration(cal, opt.out);
        fmt::print("profile written to {}\n", opt.out);
      }
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "flashcomm: error on rank {}: {}\n", MpiSession::rank(), e.what());
    MPI_Abort(MPI_COMM_WORLD, exit_code_for(e));
  }
  return kExitOk;
}

}  // namespace

Command add_calibrate_command(CLI::App& app, int argc, char** argv) {
  auto o = std::make_shared<CalibrateCommandOptions>();
  CLI::App* cmd = app.add_subcommand(
      "calibrate", "measure collectives, GEMM rate and memory bandwidth; save a hardware profile");
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("--ranks", o->ranks, "ranks to measure with (groups of 2, 4, ... up to it)")
      ->capture_default_str()
      ->transform(decimal_integer());
  cmd->add_option("--sizes", o->sizes,
                  "buffer sizes in bytes (default 4 KiB, 64 KiB, 1 MiB, 8 MiB)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->delimiter(',');
  cmd->add_option("--repeats", o->repeats, "timed repeats per size (the median is kept)")
      ->capture_default_str()
      ->transform(decimal_integer());
  cmd->add_option("--out", o->out, "write the hardware profile (JSON) here");
  cmd->add_flag("--algorithms", o->algorithms,
                "also time every algorithm the MPI library lets us force (OpenMPI coll/tuned, "
                "through MPI_T) beside its default");
  cmd->add_option("--log-level", o->log_level, "trace, debug, info, warn, error or off");
  return {cmd, [o, argc, argv] { return calibrate_main(*o, argc, argv); }};
}

}  // namespace flashcomm::cli
