// Multi-rank tests of forcing collective algorithms through MPI_T and of
// calibrate's per-algorithm timings. CTest runs this binary twice: with
// OMPI_MCA_coll_tuned_use_dynamic_rules=1 (every suite but
// AlgorithmFallback), and with it 0 (AlgorithmFallback only), where the
// library cannot force algorithms and calibrate must say so and carry on.
//
// Every rank runs the same sequence of collectives, so checks use EXPECT_*
// (never an early return that would leave peers waiting). Times are only
// checked to be positive: the machine is shared and noisy.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "flashcomm/calibrate.hpp"
#include "flashcomm/cost_model.hpp"
#include "flashcomm/error.hpp"
#include "flashcomm/mpi_algorithms.hpp"
#include "test_support.hpp"

namespace flashcomm {
namespace {

constexpr CommOp kOps[] = {CommOp::all_reduce, CommOp::reduce_scatter, CommOp::all_gather,
                           CommOp::all_to_all};

int world_rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

int world_size() {
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

CalibrateOptions small_options() {
  CalibrateOptions o;
  o.buffer_bytes = {4096, 65536};
  o.warmup = 1;
  o.repeats = 2;
  o.algorithms = true;
  return o;
}

TEST(AlgorithmControl, EveryOpOffersNamedAlgorithms) {
  const AlgorithmControl control(MPI_COMM_WORLD);
  for (CommOp op : kOps) {
    ASSERT_TRUE(control.available(op)) << to_string(op) << ": " << control.unavailable_reason(op);
    EXPECT_TRUE(control.unavailable_reason(op).empty());
    const std::vector<MpiAlgorithm>& algorithms = control.algorithms(op);
    EXPECT_GE(algorithms.size(), 2U) << to_string(op);
    std::set<std::string> names;
    for (const MpiAlgorithm& a : algorithms) {
      EXPECT_GT(a.value, 0) << a.name << ": 0 is the library's own choice";
      EXPECT_FALSE(a.name.empty()) << to_string(op) << " value " << a.value;
      names.insert(a.name);
    }
    EXPECT_EQ(names.size(), algorithms.size()) << to_string(op) << ": names are distinct";
  }
  // The engine's reduce_scatter is MPI_Reduce_scatter_block.
  EXPECT_EQ(control.variable(CommOp::reduce_scatter), "coll_tuned_reduce_scatter_block_algorithm");
}

TEST(AlgorithmControl, EachForcedCommunicatorReadsItsValueBackAndTheVariableIsRestored) {
  AlgorithmControl control(MPI_COMM_WORLD);
  for (CommOp op : kOps) {
    ASSERT_TRUE(control.available(op)) << control.unavailable_reason(op);
    const int before = control.current_value(op);
    for (const MpiAlgorithm& a : control.algorithms(op)) {
      const ForcedCommunicator forced = control.duplicate_forcing(MPI_COMM_WORLD, op, a);
      ASSERT_NE(forced.comm, nullptr);
      EXPECT_EQ(forced.value_read_back, a.value) << to_string(op) << " " << a.name;
      EXPECT_EQ(forced.comm->size(), world_size());
      EXPECT_EQ(control.current_value(op), before) << "restored after " << a.name;
    }
  }
}

// coll/tuned's two-process allgather refuses a larger group: when forcing is
// in effect the call fails on the forced communicator, and only there.
TEST(AlgorithmControl, ForcingIsInEffectOnTheNewCommunicatorOnly) {
  AlgorithmControl control(MPI_COMM_WORLD);
  ASSERT_TRUE(control.available(CommOp::all_gather));
  const std::vector<MpiAlgorithm>& algorithms = control.algorithms(CommOp::all_gather);
  const auto two = std::find_if(algorithms.begin(), algorithms.end(),
                                [](const MpiAlgorithm& a) { return a.name == "two_proc"; });
  if (two == algorithms.end() || world_size() == 2) {
    GTEST_SKIP() << "needs an allgather algorithm named two_proc (OpenMPI 4.1 coll/tuned) and a "
                    "world of 3 or more ranks";
  }
  const ForcedCommunicator forced =
      control.duplicate_forcing(MPI_COMM_WORLD, CommOp::all_gather, *two);
  MPI_Comm plain = MPI_COMM_NULL;
  ASSERT_EQ(MPI_Comm_dup(MPI_COMM_WORLD, &plain), MPI_SUCCESS);
  MpiCommunicator library_default(plain, "default", nullptr);

  const std::vector<float> in(4, 1.0F);
  std::vector<float> out(4 * static_cast<std::size_t>(world_size()), 0.0F);
  EXPECT_THROW(forced.comm->all_gather(in.data(), out.data(), in.size()), CommError);
  EXPECT_NO_THROW(library_default.all_gather(in.data(), out.data(), in.size()));
  EXPECT_EQ(out.back(), 1.0F);
}

TEST(CalibrateAlgorithms, TimesTheDefaultAndEveryAlgorithmByName) {
  const CalibrateOptions options = small_options();
  const Calibration cal = calibrate(MPI_COMM_WORLD, options);
  EXPECT_TRUE(cal.algorithms_forced);
  const AlgorithmControl control(MPI_COMM_WORLD);
  for (CommOp op : kOps) {
    // The library's choice is untouched afterwards, on every rank.
    EXPECT_EQ(control.current_value(op), 0) << to_string(op);
  }
  if (world_rank() != 0) {
    return;  // only rank 0's result is complete; no collectives follow
  }

  for (CommOp op : kOps) {
    std::set<std::string> timed;
    std::set<std::string> skipped;
    int defaults = 0;
    for (const CollectiveSample& s : cal.samples) {
      if (s.op != op) {
        continue;
      }
      EXPECT_GT(s.seconds, 0.0) << s.algorithm;
      EXPECT_GT(s.busbw_Bps, 0.0) << s.algorithm;
      EXPECT_GT(s.algbw_Bps, 0.0) << s.algorithm;
      if (s.algorithm == kDefaultAlgorithm) {
        ++defaults;
      } else {
        timed.insert(s.algorithm);
      }
    }
    for (const SkippedAlgorithm& k : cal.skipped) {
      if (k.op == op) {
        EXPECT_FALSE(k.reason.empty());
        skipped.insert(k.algorithm);
      }
    }
    // Default group sizes of the world (2, then the world when it is not 2)
    // times the two buffers.
    const int groups = world_size() == 2 ? 1 : 2;
    EXPECT_EQ(defaults, groups * 2) << to_string(op);
    EXPECT_GE(timed.size(), 2U) << to_string(op);
    for (const MpiAlgorithm& a : control.algorithms(op)) {
      EXPECT_TRUE(timed.count(a.name) == 1 || skipped.count(a.name) == 1)
          << to_string(op) << " " << a.name << " neither timed nor reported as refused";
    }
  }

  // One summary per default sample, naming a forced algorithm timed beside it.
  const auto defaults =
      std::count_if(cal.samples.begin(), cal.samples.end(),
                    [](const CollectiveSample& s) { return s.algorithm == kDefaultAlgorithm; });
  EXPECT_EQ(cal.summaries.size(), static_cast<std::size_t>(defaults));
  for (const AlgorithmSummary& a : cal.summaries) {
    EXPECT_NE(a.nearest, kDefaultAlgorithm);
    EXPECT_FALSE(a.nearest.empty());
    EXPECT_FALSE(a.fastest.empty());
    EXPECT_GT(a.default_s, 0.0);
    EXPECT_LE(a.fastest_s, a.nearest_s);
  }
  // Groups of 3 refuse the two-process algorithms.
  if (world_size() == 3) {
    EXPECT_TRUE(std::any_of(cal.skipped.begin(), cal.skipped.end(), [](const SkippedAlgorithm& k) {
      return k.op == CommOp::all_gather && k.group_size == 3 && k.algorithm == "two_proc";
    }));
  }

  // The saved profile keeps the samples with their algorithms and still loads.
  const test::TempDir dir("calibrate-algorithms");
  const std::string path = dir.file("p.json");
  save_calibration(cal, path);
  EXPECT_NO_THROW(load_profile(path));
  std::ifstream file(path);
  const nlohmann::json doc = nlohmann::json::parse(file);
  const nlohmann::json& samples = doc["calibration"]["samples"];
  for (CommOp op : kOps) {
    ASSERT_TRUE(samples.contains(to_string(op))) << doc.dump();
    std::set<std::string> names;
    for (const nlohmann::json& s : samples[to_string(op)]) {
      names.insert(s["algorithm"].get<std::string>());
      EXPECT_GT(s["seconds"].get<double>(), 0.0);
    }
    EXPECT_EQ(names.count(kDefaultAlgorithm), 1U);
    EXPECT_GE(names.size(), 3U) << "the default and two forced algorithms of " << to_string(op);
  }
  EXPECT_EQ(doc["calibration"]["default_vs_forced"].size(), cal.summaries.size());
}

TEST(CalibrateAlgorithms, SummaryPicksTheNearestInRatioAndTheFastest) {
  auto sample = [](const std::string& algorithm, double seconds) {
    CollectiveSample s;
    s.op = CommOp::all_gather;
    s.group_size = 2;
    s.buffer_bytes = 4096;
    s.algorithm = algorithm;
    s.seconds = seconds;
    return s;
  };
  // 10 us: 5 us is a ratio of 2, 19 us of 1.9, so 19 us is nearer.
  const std::vector<AlgorithmSummary> sums = summarize_algorithms(
      {sample(kDefaultAlgorithm, 10e-6), sample("ring", 5e-6), sample("bruck", 19e-6)});
  ASSERT_EQ(sums.size(), 1U);
  EXPECT_EQ(sums[0].nearest, "bruck");
  EXPECT_EQ(sums[0].fastest, "ring");
  EXPECT_DOUBLE_EQ(sums[0].fastest_s, 5e-6);
  EXPECT_TRUE(summarize_algorithms({sample(kDefaultAlgorithm, 1e-5)}).empty())
      << "nothing forced, nothing to compare";
}

TEST(AlgorithmFallback, WithoutDynamicRulesNothingIsForcedAndCalibrateSaysWhy) {
  const AlgorithmControl control(MPI_COMM_WORLD);
  for (CommOp op : kOps) {
    EXPECT_FALSE(control.available(op)) << to_string(op);
    EXPECT_NE(control.unavailable_reason(op).find("coll_tuned_use_dynamic_rules"),
              std::string::npos)
        << control.unavailable_reason(op);
    EXPECT_TRUE(control.algorithms(op).empty());
    EXPECT_THROW(control.current_value(op), ConfigError);
  }

  const Calibration cal = calibrate(MPI_COMM_WORLD, small_options());
  EXPECT_FALSE(cal.algorithms_forced);
  ASSERT_FALSE(cal.warnings.empty());
  EXPECT_NE(cal.warnings[0].find("all_reduce, reduce_scatter, all_gather, all_to_all"),
            std::string::npos)
      << cal.warnings[0];
  EXPECT_NE(cal.warnings[0].find("OMPI_MCA_coll_tuned_use_dynamic_rules=1"), std::string::npos)
      << cal.warnings[0];
  EXPECT_TRUE(cal.summaries.empty());
  EXPECT_TRUE(cal.skipped.empty());
  if (world_rank() != 0) {
    return;  // only rank 0's result is complete
  }
  EXPECT_FALSE(cal.samples.empty());
  for (const CollectiveSample& s : cal.samples) {
    EXPECT_EQ(s.algorithm, kDefaultAlgorithm);
    EXPECT_GT(s.seconds, 0.0);
  }
  EXPECT_EQ(cal.profile.collectives.size(), 4U);
}

}  // namespace
}  // namespace flashcomm
