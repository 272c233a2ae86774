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

namespace flashcomm::cli {

namespace {

struct CalibrateCommandOptions {
  int ranks = 2;
  std::vector<std::int64_t> sizes;
  int repeats = 9;
  std::string out;
  std::string log_level;
};

void print_calibration(const Calibration& cal) {
  fmt::print("collectives ({}; the library picks the algorithm of each call)\n", cal.mpi_library);
  fmt::print("  {:<15} {:>5} {:>12} {:>12} {:>12} {:>12}\n", "op", "ranks", "bytes", "time_us",
             "algbw_GB/s", "busbw_GB/s");
  for (const CollectiveSample& s : cal.samples) {
    fmt::print("  {:<15} {:>5} {:>12} {:>12.1f} {:>12.3f} {:>12.3f}\n", to_string(s.op),
               s.group_size, s.buffer_bytes, s.seconds * 1e6, s.algbw_Bps / 1e9, s.busbw_Bps / 1e9);
  }
  fmt::print("fits (time = latency + bytes_sent / bandwidth):\n");
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
  try {
    fault_point("calibrate");
    const Calibration cal = calibrate(MPI_COMM_WORLD, options);
    if (MpiSession::rank() == 0) {
      print_calibration(cal);
      if (!opt.out.empty()) {
        save_profile(cal.profile, opt.out);
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
  cmd->add_option("--log-level", o->log_level, "trace, debug, info, warn, error or off");
  return {cmd, [o, argc, argv] { return calibrate_main(*o, argc, argv); }};
}

}  // namespace flashcomm::cli
