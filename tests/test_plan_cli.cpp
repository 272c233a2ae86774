// End-to-end tests of `flashcomm plan`: the table, the JSON, presets,
// checkpoints and profile files as inputs, the variant options and the
// automatic choice, bad inputs refused with exit code 2 and one clear
// message, and the predicted bytes against a real `flashcomm run` of the
// engine.
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
  // Without the variant options the table is as it always was.
  EXPECT_NE(o.output.find("\n tokens  scheme                       layer ms  prefill ms   vs TP  "
                          "vs FC1  extra o_proj MiB\n"),
            std::string::npos)
      << o.output;
  EXPECT_NE(o.output.find("memory budget for the extra o_proj: unlimited (2-byte weights)\n\n"),
            std::string::npos)
      << o.output;
  for (const char* absent : {"auto", "int8", "bf16", "C=", "MLP", "down"}) {
    EXPECT_EQ(o.output.find(absent), std::string::npos) << absent << "\n" << o.output;
  }
}

TEST(PlanCli, VariantOptionsAddTheirSchemesAndTheAutomaticChoice) {
  const Outcome o =
      shell(flashcomm("plan --model llama-3-8b --hardware h100-sxm --tp 4 --tokens 1,4096 "
                      "--comm-quant int8 --overlap-chunks 4 --flashcomm2-mlp --memory-budget 2"));
  ASSERT_EQ(o.exit_code, 0) << o.output;
  for (const char* text :
       {"memory budget for the extra o_proj and down_proj: 2.00 GiB per rank",
        "auto (as --flashcomm auto): holds o_proj K0=1 and down_proj K_mlp0=2",
        "payloads f32, int8,", "overlap chunks 1,4", "extra down MiB", "FlashComm1 int8 C=4",
        "FlashComm1+FlashComm2 K=2 +MLP K=1 int8 C=4", "FlashComm2 MLP K=2", "auto: "}) {
    EXPECT_NE(o.output.find(text), std::string::npos) << text << "\n" << o.output;
  }
  EXPECT_EQ(o.output.find(" bf16"), std::string::npos) << "not asked for\n" << o.output;
  EXPECT_EQ(count(o.output, "  auto: "), 2U) << "one per token count\n" << o.output;
  EXPECT_EQ(count(o.output, "<- recommended"), 2U) << o.output;
  EXPECT_NE(o.output.find("      1  auto: plain TP "), std::string::npos) << o.output;

  // --auto alone: the default list and the choice among the default schemes.
  const Outcome a =
      shell(flashcomm("plan --model llama-3-8b --hardware h100-sxm --tp 8 --tokens 1 --auto"));
  ASSERT_EQ(a.exit_code, 0) << a.output;
  EXPECT_NE(a.output.find("payloads f32, overlap chunks 1"), std::string::npos) << a.output;
  EXPECT_EQ(count(a.output, "      1  "), 9U) << "8 schemes and auto\n" << a.output;
}

TEST(PlanCli, VariantJsonRecordsTheLayoutsAndTheChoice) {
  const Outcome o = shell(flashcomm("plan --model llama-3-8b --hardware h100-sxm --tp 8 "
                                    "--tokens 16,8192 --comm-dtype bf16 --comm-quant int8 "
                                    "--overlap-chunks 2,4 --json"),
                          120, "/dev/null");
  ASSERT_EQ(o.exit_code, 0) << o.output;
  const nlohmann::json j = nlohmann::json::parse(o.output);
  EXPECT_EQ(j["variants"]["comm_quant_int8"], true);
  EXPECT_EQ(j["variants"]["comm_dtype_bf16"], true);
  EXPECT_EQ(j["variants"]["overlap_chunks"], nlohmann::json::array({2, 4}));
  EXPECT_EQ(j["variants"]["flashcomm2_mlp"], false);
  EXPECT_EQ(j["auto_space"]["o_proj_k"], 1);
  EXPECT_EQ(j["auto_space"]["mlp_k"], 0);
  EXPECT_EQ(j["auto_space"]["chunk_options"], nlohmann::json::array({1, 2, 4}));
  ASSERT_EQ(j["rows"].size(), 2U);
  std::set<std::string> quants;
  for (const auto& row : j["rows"]) {
    const auto& a = row["auto"];
    ASSERT_TRUE(a.is_object()) << row.dump();
    EXPECT_DOUBLE_EQ(a["speedup_vs_tp"].get<double>(),
                     a["plain_tp_seconds"].get<double>() / a["prefill_seconds"].get<double>());
    EXPECT_DOUBLE_EQ(a["plain_tp_seconds"].get<double>(),
                     row["schemes"][0]["prefill_seconds"].get<double>());
    for (const auto& s : row["schemes"]) {
      quants.insert(s["comm_quant"].get<std::string>() + "/" + s["comm_dtype"].get<std::string>());
      EXPECT_TRUE(s.contains("overlap_chunks"));
      EXPECT_EQ(s["flashcomm2_mlp"], 0);
      EXPECT_EQ(s["extra_down_proj_bytes"], 0.0);
    }
  }
  EXPECT_EQ(quants, (std::set<std::string>{"none/f32", "int8/f32", "none/bf16", "int8/bf16"}));
  EXPECT_EQ(j["rows"][0]["auto"]["scheme"], "plain TP");
  EXPECT_NE(j["rows"][1]["auto"]["scheme"], "plain TP");

  // Without the variant options the JSON is as it was: no auto, no layout fields.
  const Outcome d =
      shell(flashcomm("plan --model llama-3-8b --hardware h100-sxm --tp 8 --tokens 16 --json"), 120,
            "/dev/null");
  ASSERT_EQ(d.exit_code, 0) << d.output;
  const nlohmann::json dj = nlohmann::json::parse(d.output);
  EXPECT_FALSE(dj.contains("auto_space"));
  EXPECT_FALSE(dj.contains("variants"));
  EXPECT_FALSE(dj["rows"][0].contains("auto"));
  std::set<std::string> keys;
  for (const auto& [key, value] : dj["rows"][0]["schemes"][0].items()) {
    keys.insert(key);
  }
  EXPECT_EQ(keys,
            (std::set<std::string>{"scheme", "flashcomm1", "flashcomm2", "layer_seconds",
                                   "prefill_seconds", "speedup_vs_tp", "speedup_vs_flashcomm1",
                                   "extra_o_proj_bytes", "fits_budget", "recommended"}));
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
  const std::string base = "plan --model llama-3-8b --hardware h100-sxm --tp 8 --tokens 16 ";
  expect_refused(base + "--comm-quant fp4", 2,
                 "--comm-quant fp4 is not a payload quantization: expected none or int8");
  expect_refused(base + "--comm-dtype fp16", 2,
                 "--comm-dtype fp16 is not a payload element type: expected f32 or bf16");
  expect_refused(base + "--overlap-chunks 0", 2,
                 "--overlap-chunks 0 must be between 1 (no overlap) and 64");
  expect_refused(base + "--overlap-chunks 4,65", 2,
                 "--overlap-chunks 65 must be between 1 (no overlap) and 64");
  const Outcome x = shell(flashcomm(base + "--overlap-chunks four"));
  EXPECT_EQ(x.exit_code, 2) << x.output;
  EXPECT_NE(x.output.find("four"), std::string::npos) << x.output;

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
