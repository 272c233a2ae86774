// End-to-end tests of `flashcomm plan`: the table, the JSON, presets,
// checkpoints and profile files as inputs, bad inputs refused with exit code
// 2 and one clear message, and the predicted bytes against a real
// `flashcomm run` of the engine.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "flashcomm/cost_model.hpp"
#include "flashcomm/presets.hpp"
#include "test_support.hpp"

namespace flashcomm {
namespace {

using test::count;
using test::flashcomm;
using test::Outcome;
using test::quote;
using test::shell;

TEST(PlanCli, TablePrintsEverySchemeAndTheRecommendation) {
  const Outcome o =
      shell(flashcomm("plan --model llama-3-8b --hardware h100-sxm --tp 8 --tokens 512 4096"));
  ASSERT_EQ(o.exit_code, 0) << o.output;
  for (const char* text :
       {"llama-3-8b", "h100-sxm", "layer ms", "prefill ms", "vs TP", "vs FC1", "extra o_proj MiB",
        "FlashComm2 K=4", "FlashComm1+FlashComm2 K=1", "break-even:"}) {
    EXPECT_NE(o.output.find(text), std::string::npos) << text << "\n" << o.output;
  }
  EXPECT_EQ(count(o.output, "  plain TP   "), 2U) << o.output;  // one row per token count
  EXPECT_EQ(count(o.output, "<- recommended"), 2U) << o.output;
  EXPECT_EQ(count(o.output, "over budget"), 0U) << o.output;
}

TEST(PlanCli, JsonParsesAndHoldsOneRecommendationPerTokenCount) {
  const Outcome o = shell(flashcomm("plan --model deepseek-v3-attn --hardware h100-sxm --tp 8 "
                                    "--tokens 1 16384 --memory-budget 6 --json"),
                          120, "/dev/null");
  ASSERT_EQ(o.exit_code, 0) << o.output;
  const nlohmann::json j = nlohmann::json::parse(o.output);
  EXPECT_EQ(j["model"]["q_dim"], 16384);
  EXPECT_EQ(j["hardware"]["name"], "h100-sxm");
  EXPECT_FALSE(j["hardware"]["source"].get<std::string>().empty());
  EXPECT_EQ(j["parallel"]["tp"], 8);
  EXPECT_EQ(j["memory_budget_gib"], 6.0);
  ASSERT_EQ(j["rows"].size(), 2U);
  for (const auto& row : j["rows"]) {
    ASSERT_EQ(row["schemes"].size(), 8U);  // plain, FC1, FC2 and FC1+FC2 with K = 1, 2, 4
    int recommended = 0;
    for (const auto& s : row["schemes"]) {
      if (s["recommended"].get<bool>()) {
        ++recommended;
        EXPECT_EQ(s["scheme"], row["recommended"]);
        EXPECT_TRUE(s["fits_budget"].get<bool>());
      }
      if (s["flashcomm2"] == 1) {
        EXPECT_FALSE(s["fits_budget"].get<bool>()) << "K=1 needs 11.7 GiB more";
      }
      EXPECT_GT(s["prefill_seconds"].get<double>(), s["layer_seconds"].get<double>());
    }
    EXPECT_EQ(recommended, 1);
    EXPECT_EQ(row["schemes"][0]["scheme"], "plain TP");
    EXPECT_DOUBLE_EQ(row["schemes"][0]["speedup_vs_tp"].get<double>(), 1.0);
    EXPECT_DOUBLE_EQ(row["schemes"][1]["speedup_vs_flashcomm1"].get<double>(), 1.0);
  }
  EXPECT_EQ(j["rows"][1]["recommended"], "FlashComm1+FlashComm2 K=2");
  EXPECT_TRUE(j["break_even"]["n_tokens"].is_number_integer());
  EXPECT_EQ(j["break_even"]["searched_up_to"], 16384);
}

TEST(PlanCli, TakesACheckpointAndAProfileFile) {
  const test::TempDir dir("plancli");
  HardwareProfile p = builtin_profile("l40-pcie");
  p.name = "my-l40";
  save_profile(p, dir.file("my.json"));
  const Outcome o =
      shell(flashcomm(fmt::format("plan --model {} --hardware {} --tp 4 --tokens 117",
                                  quote(test::stories_checkpoint()), quote(dir.file("my.json")))));
  ASSERT_EQ(o.exit_code, 0) << o.output;
  EXPECT_NE(o.output.find("d_model 64"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("hardware my-l40"), std::string::npos) << o.output;

  const Outcome one =
      shell(flashcomm("plan --model stories260K --hardware a100-sxm --tp 1 "
                      "--tokens 100"));
  ASSERT_EQ(one.exit_code, 0) << one.output;
  EXPECT_EQ(count(one.output, "FlashComm"), 0U) << one.output;
  EXPECT_NE(one.output.find("break-even: none"), std::string::npos) << one.output;
}

// A refused invocation: exit code, and the message exactly once.
void expect_refused(const std::string& args, int code, const std::string& message) {
  const Outcome o = shell(flashcomm(args));
  EXPECT_EQ(o.exit_code, code) << args << "\n" << o.output;
  EXPECT_EQ(count(o.output, message), 1U) << args << "\n" << o.output;
}

TEST(PlanCli, BadInputsAreRefusedWithAClearMessage) {
  expect_refused(
      "plan --model llama-9 --hardware h100-sxm --tp 8 --tokens 16", 2,
      "--model llama-9 is neither a preset (llama-3-8b, llama-3-70b, qwen2-7b, qwen3-32b, "
      "deepseek-v3-attn, stories260K), a shape:... nor a checkpoint file or directory");
  expect_refused("plan --model llama-3-8b --hardware tpu-v9 --tp 8 --tokens 16", 2,
                 "unknown hardware profile 'tpu-v9': not a built-in profile (ascend-910b, "
                 "h100-sxm, h200-sxm, a100-sxm, l40-pcie, ib-cluster, cpu-openmpi) and no such "
                 "JSON file");
  expect_refused("plan --model llama-3-8b --hardware h100-sxm --tp 3 --tokens 16", 2,
                 "--tp 3 must divide the model's n_heads 32");
  expect_refused("plan --model llama-3-8b --hardware h100-sxm --tp 8 --tokens 0", 2,
                 "--tokens 0 must be at least 1");
  expect_refused("plan --model llama-3-8b --hardware h100-sxm --tp 8 --tokens 8193", 2,
                 "--tokens 8193 exceeds the model's context (seq_len) 8192");
  expect_refused(
      "plan --model llama-3-8b --hardware h100-sxm --tp 8 --tokens 16 "
      "--memory-budget -1",
      2, "--memory-budget -1 must be 0 GiB or more");
  EXPECT_EQ(shell(flashcomm("plan --model llama-3-8b --hardware h100-sxm --tokens 16")).exit_code,
            2)
      << "--tp is required";
  EXPECT_EQ(
      shell(flashcomm("plan --model llama-3-8b --hardware h100-sxm --tp x --tokens 16")).exit_code,
      2);

  // A profile file that does not hold a profile: exit 3, naming the field.
  const test::TempDir dir("planbad");
  std::ofstream(dir.file("bad.json")) << R"({"name": "x"})";
  expect_refused(fmt::format("plan --model llama-3-8b --hardware {} --tp 8 --tokens 16",
                             quote(dir.file("bad.json"))),
                 3, "description is missing");
}

TEST(PlanCli, PredictedBytesEqualAMeasuredRun) {
  // The engine on 4 ranks counts every byte it sends in prefill; the cost
  // model with 4-byte (fp32) elements must predict each (op, group) total.
  const test::TempDir dir("planrun");
  const std::string report = dir.file("run.json");
  const Outcome o = shell(flashcomm(fmt::format(
      "run --model {} --tokenizer {} --tp 4 --flashcomm1 --flashcomm2 2 --steps 0 "
      "--prompt 'Lily had a cat named Tom' --json {}",
      quote(test::stories_checkpoint()), quote(test::stories_tokenizer()), quote(report))));
  ASSERT_EQ(o.exit_code, 0) << o.output;
  std::ifstream file(report);
  const nlohmann::json j = nlohmann::json::parse(file);
  const int n_tokens = static_cast<int>(j["prompt_tokens"].size());
  std::map<std::string, std::int64_t> measured;
  for (const auto& r : j["prefill"]["comm"]) {
    measured[r["op"].get<std::string>() + "/" + r["group"].get<std::string>()] =
        r["bytes_sent"].get<std::int64_t>();
  }

  HardwareProfile p = builtin_profile("h100-sxm");
  p.activation_bytes = 4;
  const PrefillCost cost =
      predict_prefill_cost(preset_config("stories260K"), {1, 4, true, 2}, n_tokens, p);
  std::map<std::string, std::int64_t> predicted;
  for (const PhaseCost& ph : cost.layer.phases) {
    if (ph.has_collective()) {
      predicted[std::string(to_string(ph.op)) + "/" + ph.group] += cost.n_layers * ph.comm_bytes;
    }
  }
  predicted["all_gather/tp"] += cost.final_gather_bytes;
  EXPECT_EQ(predicted, measured) << n_tokens << " prompt tokens";
}

}  // namespace
}  // namespace flashcomm
