// End-to-end tests of `flashcomm calibrate` and `flashcomm bench`: they run,
// write what they promise, count the bytes the cost model predicts, and
// refuse bad input. (Their timings are reports, not assertions.)
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "flashcomm/cost_model.hpp"
#include "flashcomm/model.hpp"
#include "test_support.hpp"

namespace flashcomm {
namespace {

using test::flashcomm;
using test::Outcome;
using test::quote;
using test::shell;

// One row of calibrate's collectives table.
struct TableRow {
  std::string op;
  std::string algorithm;
  double time_us = 0.0;
};

// The rows of the table under the header holding busbw_GB/s:
// "bytes op ranks algorithm (one or more words) time_us algbw busbw".
std::vector<TableRow> collective_rows(const std::string& output) {
  std::vector<TableRow> rows;
  std::istringstream lines(output);
  std::string line;
  bool in_table = false;
  while (std::getline(lines, line)) {
    if (line.find("busbw_GB/s") != std::string::npos) {
      in_table = true;
      continue;
    }
    if (!in_table) {
      continue;
    }
    std::istringstream words(line);
    std::vector<std::string> w{std::istream_iterator<std::string>(words), {}};
    if (line.rfind("  ", 0) != 0 || w.size() < 7 ||
        w[0].find_first_not_of("0123456789") != std::string::npos) {
      break;
    }
    TableRow r;
    r.op = w[1];
    for (std::size_t i = 3; i + 3 < w.size(); ++i) {
      r.algorithm += (i > 3 ? " " : "") + w[i];
    }
    r.time_us = std::stod(w[w.size() - 3]);
    rows.push_back(r);
  }
  return rows;
}

const std::set<std::string> kOpNames = {"all_reduce", "reduce_scatter", "all_gather", "all_to_all"};

TEST(CalibrateCli, WritesAProfileTheCostModelLoads) {
  const test::TempDir dir("calibrate");
  const Outcome o = shell(flashcomm("calibrate --ranks 2 --repeats 2 --sizes 4096,65536 --out " +
                                    quote(dir.file("p.json"))),
                          120);
  ASSERT_EQ(o.exit_code, 0) << o.output;
  EXPECT_NE(o.output.find("busbw_GB/s"), std::string::npos) << o.output;
  EXPECT_EQ(o.output.find("warning"), std::string::npos) << o.output;
  const std::vector<TableRow> rows = collective_rows(o.output);
  EXPECT_EQ(rows.size(), 8U) << "4 ops x 2 sizes, the default only\n" << o.output;
  for (const TableRow& r : rows) {
    EXPECT_EQ(r.algorithm, "default (MPI decides)") << o.output;
    EXPECT_EQ(kOpNames.count(r.op), 1U) << r.op;
  }
  const HardwareProfile p = load_profile(dir.file("p.json"));
  EXPECT_GT(p.gemm_flops, 0.0);
  EXPECT_GT(p.memory_bandwidth_Bps, 0.0);
  EXPECT_EQ(p.collectives.size(), 4U) << "every op measured";
  for (const auto& [op, fits] : p.collectives) {
    ASSERT_EQ(fits.size(), 1U) << to_string(op);
    EXPECT_EQ(fits[0].group_size, 2);
    EXPECT_GT(fits[0].bandwidth_Bps, 0.0);
    EXPECT_GE(fits[0].latency_s, 0.0);
  }
}

TEST(CalibrateCli, AlgorithmsTimesEveryForcedAlgorithmByNameAndSavesThem) {
  const test::TempDir dir("calibrate-algorithms");
  const Outcome o =
      shell(flashcomm("calibrate --ranks 2 --algorithms --repeats 1 --sizes 4096,65536 --out " +
                      quote(dir.file("p.json"))),
            180);
  ASSERT_EQ(o.exit_code, 0) << o.output;
  EXPECT_EQ(o.output.find("warning"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("an inference by timing"), std::string::npos) << o.output;
  std::map<std::string, std::set<std::string>> named;
  for (const TableRow& r : collective_rows(o.output)) {
    EXPECT_GT(r.time_us, 0.0) << r.op << " " << r.algorithm;
    named[r.op].insert(r.algorithm);
  }
  ASSERT_EQ(named.size(), 4U) << o.output;
  for (const auto& [op, algorithms] : named) {
    EXPECT_EQ(algorithms.count("default (MPI decides)"), 1U) << op;
    EXPECT_GE(algorithms.size(), 3U) << op << ": the default and two named algorithms\n"
                                     << o.output;
  }

  EXPECT_NO_THROW(load_profile(dir.file("p.json")));
  std::ifstream file(dir.file("p.json"));
  const auto doc = nlohmann::json::parse(file);
  const auto& samples = doc["calibration"]["samples"];
  for (const std::string& op : kOpNames) {
    std::set<std::string> names;
    for (const auto& s : samples[op]) {
      names.insert(s["algorithm"].get<std::string>());
    }
    EXPECT_EQ(names.count("default"), 1U) << op;
    EXPECT_GE(names.size(), 3U) << op << ": " << samples.dump();
  }
  EXPECT_EQ(doc["calibration"]["default_vs_forced"].size(), 8U) << "4 ops x 2 sizes";
}

TEST(CalibrateCli, AlgorithmsWithoutCollTunedWarnsAndTimesTheDefault) {
  const Outcome o =
      shell("env OMPI_MCA_coll=^tuned " + flashcomm("calibrate --ranks 2 --algorithms --repeats 1 "
                                                    "--sizes 4096,65536"),
            180);
  ASSERT_EQ(o.exit_code, 0) << o.output;
  EXPECT_EQ(test::count(o.output,
                        "flashcomm: warning: cannot force the algorithm of all_reduce, "
                        "reduce_scatter, all_gather, all_to_all: control variable "
                        "coll_tuned_use_dynamic_rules not found"),
            1U)
      << o.output;
  const std::vector<TableRow> rows = collective_rows(o.output);
  EXPECT_EQ(rows.size(), 8U) << o.output;
  for (const TableRow& r : rows) {
    EXPECT_EQ(r.algorithm, "default (MPI decides)") << o.output;
  }
}

TEST(BenchCli, EverySchemeRowWithBytesAsPredictedAndItsFiles) {
  const test::TempDir dir("bench");
  const Outcome o =
      shell(flashcomm(fmt::format("bench --model {} --tokens 3,16 --tp 1,2 --warmup 1 --repeats 2 "
                                  "--out {}",
                                  quote(test::stories_checkpoint()), quote(dir.path()))),
            300);
  ASSERT_EQ(o.exit_code, 0) << o.output;
  std::ifstream file(dir.file("bench.json"));
  ASSERT_TRUE(file.good()) << o.output;
  const auto doc = nlohmann::json::parse(file);
  // TP 1: plain TP; TP 2: plain TP, FlashComm1, FlashComm2 K=1, both; two token counts.
  ASSERT_EQ(doc["rows"].size(), 10U) << o.output;

  ModelConfig model = read_llama2c_config(test::stories_checkpoint());
  model.seq_len = 16;
  // Bytes depend only on the element width: the engine's is fp32.
  HardwareProfile any = builtin_profile("h100-sxm");
  any.activation_bytes = 4;
  std::set<std::string> schemes;
  for (const auto& r : doc["rows"]) {
    ParallelConfig pc;
    pc.tp_size = r["tp"];
    pc.flashcomm1 = r["flashcomm1"];
    pc.flashcomm2 = r["flashcomm2"];
    const LayerCost cost = predict_layer(model, pc, r["tokens"], any);
    std::int64_t predicted = 0;
    for (const PhaseCost& p : cost.phases) {
      predicted += p.comm_bytes;
    }
    EXPECT_EQ(r["bytes_per_rank"].get<std::int64_t>(), predicted) << r.dump();
    EXPECT_GT(r["per_layer"]["median_s"].get<double>(), 0.0);
    EXPECT_LE(r["per_layer"]["min_s"].get<double>(), r["per_layer"]["median_s"].get<double>());
    EXPECT_GE(r["per_layer"]["max_s"].get<double>(), r["per_layer"]["median_s"].get<double>());
    EXPECT_GT(r["predicted_s"].get<double>(), 0.0);
    EXPECT_GT(r["floor_s"].get<double>(), 0.0);
    EXPECT_LE(r["floor_s"].get<double>(), r["predicted_s"].get<double>() * (1 + 1e-9))
        << "the floor leaves out latency and memory traffic";
    if (r["scheme"] == "plain TP") {
      EXPECT_DOUBLE_EQ(r["speedup_vs_tp"].get<double>(), 1.0);
    }
    schemes.insert(fmt::format("{} {}", r["tp"].get<int>(), r["scheme"].get<std::string>()));
  }
  EXPECT_EQ(schemes.size(), 5U);
  std::ifstream csv(dir.file("bench.csv"));
  std::string line;
  int lines = 0;
  while (std::getline(csv, line)) {
    ++lines;
  }
  EXPECT_EQ(lines, 11) << "a header and one line per row";
  EXPECT_GT(std::filesystem::file_size(dir.file("bench.png")), 1000U) << o.output;
}

TEST(BenchCli, APresetWithABuiltInProfileSkipsCalibration) {
  const test::TempDir dir("bench-preset");
  const Outcome o = shell(flashcomm("bench --model llama-3-8b --layers 1 --tokens 4 --tp 2 "
                                    "--schemes fc2 --warmup 0 --repeats 1 --hardware h100-sxm "
                                    "--out " +
                                    quote(dir.path())),
                          300);
  ASSERT_EQ(o.exit_code, 0) << o.output;
  EXPECT_EQ(o.output.find("calibrating"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("FlashComm2 K=1"), std::string::npos) << o.output;
}

TEST(BenchCli, BadInputsAreRefused) {
  const std::string model = quote(test::stories_checkpoint());
  struct Case {
    std::string args;
    std::string message;
  };
  const Case cases[] = {
      {"--model " + model + " --schemes foo", "--schemes foo is not one of tp, fc1, fc2, fc1+fc2"},
      {"--model " + model + " --tokens 0", "--tokens 0 must be at least 1"},
      {"--model " + model + " --tp 3", "--tp 3 must divide the model's n_heads 8"},
      {"--model " + model + " --tokens 600", "--tokens 600 exceeds the model's context"},
      {"--model no-such-preset", "no-such-preset"},
      {"--model " + model + " --layers 0", "--layers 0 must be at least 1"},
      {"--model " + model + " --tp 1 --schemes fc1", "no scheme of --schemes fc1 runs at --tp 1"},
      {"--model " + model + " --out /etc/passwd", "--out /etc/passwd is not a writable directory"},
      {"--model " + model + " --repeats 0", "--repeats 0 must be between 1 and 1000"},
      {"--model " + model + " --hardware no-such-profile", "unknown hardware profile"},
      {"--model llama-3-70b --layers 80 --tp 2 --tokens 1 --hardware h100-sxm",
       "use fewer --layers or --tokens"},
  };
  for (const Case& c : cases) {
    const Outcome o = shell(flashcomm("bench " + c.args), 60);
    EXPECT_EQ(o.exit_code, 2) << c.args << "\n" << o.output;
    EXPECT_NE(o.output.find(c.message), std::string::npos) << c.args << "\n" << o.output;
  }
  const Outcome one_size = shell(flashcomm("calibrate --sizes 4096"), 60);
  EXPECT_EQ(one_size.exit_code, 2) << one_size.output;
  EXPECT_NE(one_size.output.find("at least two different sizes"), std::string::npos)
      << one_size.output;
}

}  // namespace
}  // namespace flashcomm
