// What the testbed measures of this machine: the GEMM rate its ranks get
// (before they start, to choose the link), and the collectives of the shaped
// link with every rank of the group sending, as in the benchmark.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "comm/mpi/mpi_check.hpp"
#include "flashcomm/bench.hpp"
#include "flashcomm/calibrate.hpp"
#include "flashcomm/error.hpp"
#include "flashcomm/kernels.hpp"
#include "flashcomm/mpi_comm.hpp"
#include "flashcomm/testbed.hpp"

namespace flashcomm::testbed {

namespace {

// Enough repeats of a GEMM of a few milliseconds that the probes share the
// cores for most of their run, rather than the first ones finishing before
// the last ones start.
constexpr int kProbeRepeats = 40;

}  // namespace

double measure_concurrent_gemm_flops(int processes) {
  FC_ASSERT(processes >= 1, "processes={}", processes);
  const int cores = static_cast<int>(std::max(1U, std::thread::hardware_concurrency()));
  const int threads = std::max(1, cores / processes);

  // Each process waits on `go` until all are forked, so they run at once,
  // and writes its rate to `rates`.
  std::array<int, 2> go{};
  std::array<int, 2> rates{};
  if (pipe(go.data()) != 0 || pipe(rates.data()) != 0) {
    throw InternalError(fmt::format("cannot create a pipe: {}", std::strerror(errno)));
  }
  std::vector<pid_t> children;
  for (int i = 0; i < processes; ++i) {
    const pid_t child = fork();
    if (child < 0) {
      throw InternalError(fmt::format("cannot fork a GEMM probe: {}", std::strerror(errno)));
    }
    if (child == 0) {
      close(go[1]);
      close(rates[0]);
      char byte = 0;
      while (read(go[0], &byte, 1) < 0 && errno == EINTR) {
      }
      double rate = 0.0;
      try {
        kernels::set_blas_threads(threads);
        rate = measure_gemm_flops(256, 1024, 1024, kProbeRepeats);
      } catch (...) {
        rate = 0.0;
      }
      (void)!write(rates[1], &rate, sizeof(rate));
      _exit(0);
    }
    children.push_back(child);
  }
  close(go[0]);
  close(rates[1]);
  close(go[1]);  // end of file: every probe starts now

  std::vector<double> measured;
  double rate = 0.0;
  for (;;) {
    const ssize_t n = read(rates[0], &rate, sizeof(rate));
    if (n == static_cast<ssize_t>(sizeof(rate))) {
      if (rate > 0.0) {
        measured.push_back(rate);
      }
    } else if (n == 0 || errno != EINTR) {
      break;
    }
  }
  close(rates[0]);
  for (pid_t child : children) {
    while (waitpid(child, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
  if (measured.size() != static_cast<size_t>(processes)) {
    throw InternalError(
        fmt::format("only {} of {} GEMM probes reported a rate", measured.size(), processes));
  }
  std::sort(measured.begin(), measured.end());
  return measured[measured.size() / 2];
}

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

constexpr CommOp kOps[] = {CommOp::all_reduce, CommOp::reduce_scatter, CommOp::all_gather,
                           CommOp::all_to_all};

}  // namespace

HardwareProfile calibrate_busy_link(MPI_Comm world, int ranks, const CalibrateOptions& options) {
  int rank = 0;
  int world_size = 0;
  FC_CHECK_MPI(MPI_Comm_rank(world, &rank));
  FC_CHECK_MPI(MPI_Comm_size(world, &world_size));
  FC_ASSERT(ranks >= 2 && ranks <= world_size, "ranks={} world={}", ranks, world_size);
  FC_ASSERT(!options.group_sizes.empty() && options.repeats >= 1, "group sizes {}, repeats {}",
            options.group_sizes.size(), options.repeats);

  HardwareProfile profile;
  profile.name = "calibrated-shaped-link";
  profile.activation_bytes = 4;
  // The busy ranks, [0, ranks); the others wait at the end.
  MPI_Comm busy = MPI_COMM_NULL;
  FC_CHECK_MPI(MPI_Comm_split(world, rank < ranks ? 0 : MPI_UNDEFINED, rank, &busy));
  if (busy != MPI_COMM_NULL) {
    for (int g : options.group_sizes) {
      FC_ASSERT(g >= 2 && ranks % g == 0, "group size {} of {} ranks", g, ranks);
      // Groups of g consecutive ranks, as the engine's TP, K-way and G-way
      // groups all run at once.
      const std::unique_ptr<MpiCommunicator> comm =
          MpiCommunicator::split(busy, rank / g, rank, "testbed", nullptr);
      for (CommOp op : kOps) {
        std::vector<CollectiveSample> samples;
        for (std::int64_t bytes : options.buffer_bytes) {
          const std::size_t floats =
              std::max<std::size_t>(static_cast<std::size_t>(bytes) / 4 / g, 1) * g;
          std::vector<float> in(floats, 1.0F);
          std::vector<float> out(floats, 0.0F);
          std::vector<double> times;
          for (int r = 0; r < options.warmup + options.repeats; ++r) {
            // Every group starts at once, and a sample lasts until the
            // slowest rank of any group is done: the link is shared.
            FC_CHECK_MPI(MPI_Barrier(busy));
            const double t0 = now_s();
            run_collective(*comm, op, in, out, floats);
            double t = now_s() - t0;
            FC_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, busy));
            if (r >= options.warmup) {
              times.push_back(t);
            }
          }
          CollectiveSample s;
          s.op = op;
          s.group_size = g;
          s.buffer_bytes = static_cast<std::int64_t>(floats * sizeof(float));
          s.bytes_sent = bytes_sent(op, g, s.buffer_bytes);
          s.seconds = median_of(times);
          s.algbw_Bps = static_cast<double>(s.buffer_bytes) / s.seconds;
          s.busbw_Bps = static_cast<double>(s.bytes_sent) / s.seconds;
          samples.push_back(s);
        }
        profile.collectives[op].push_back(fit_collective(samples));
      }
    }
    FC_CHECK_MPI(MPI_Comm_free(&busy));
  }
  quiet_barrier(world);
  profile.description = fmt::format(
      "calibrated on the shaped loopback, {} ranks sending at once in groups of each size", ranks);
  profile.source = "measured by flashcomm bench --testbed shaped";
  return profile;
}

}  // namespace flashcomm::testbed
