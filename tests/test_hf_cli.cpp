// `flashcomm run`, `bench` and `plan` with a Hugging Face checkpoint
// directory: the golden story from stories260K written as an HF checkpoint,
// the same tokens at every TP size and scheme as at TP 1, and bad
// checkpoints refused once with exit code 3.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include <nlohmann/json.hpp>

#include "flashcomm/hf.hpp"
#include "flashcomm/model.hpp"
#include "model_fixtures.hpp"
#include "test_support.hpp"

namespace flashcomm {
namespace {

namespace fs = std::filesystem;
using test::count;
using test::flashcomm;
using test::Outcome;
using test::quote;
using test::shell;

const char* kGoldenStory =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
    "park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.";

std::string squash_spaces(const std::string& s) {
  return std::regex_replace(s, std::regex("\\s+"), " ");
}

std::string run_args(const std::string& model_dir) {
  return fmt::format("run --model {} --tokenizer {}", quote(model_dir),
                     quote(test::stories_tokenizer()));
}

nlohmann::json run_json(const std::string& model_dir, const std::string& extra) {
  const test::TempDir out("hfcli-json");
  const std::string path = out.file("r.json");
  const Outcome o = shell(flashcomm(run_args(model_dir) + " --json " + quote(path) + " " + extra));
  EXPECT_EQ(o.exit_code, 0) << extra << "\n" << o.output;
  std::ifstream file(path);
  if (!file) {
    ADD_FAILURE() << "no JSON report\n" << o.output;
    return {};
  }
  return nlohmann::json::parse(file);
}

TEST(HfCli, GoldenStoryFromAnHfCheckpoint) {
  const test::TempDir dir("hfcli-gold");
  save_hf_checkpoint(load_llama2c(test::stories_checkpoint()), dir.path(), DType::f32, "llama");
  const Outcome o = shell(flashcomm(run_args(dir.path()) + " --steps 200"));
  EXPECT_EQ(o.exit_code, 0) << o.output;
  EXPECT_EQ(squash_spaces(o.output).rfind(kGoldenStory, 0), 0U) << o.output;

  // Token for token what the llama2.c file gives, with a prompt.
  const auto hf = run_json(dir.path(), "--prompt 'Lily had a cat' --steps 40");
  const auto l2c = run_json(test::stories_checkpoint(), "--prompt 'Lily had a cat' --steps 40");
  EXPECT_EQ(hf["generated_tokens"], l2c["generated_tokens"]);
  EXPECT_EQ(hf["generated_tokens"].size(), 40U);
}

TEST(HfCli, EveryTpSizeAndSchemeGivesTheTokensOfOneRank) {
  const test::TempDir dir("hfcli-tp");
  // bfloat16, in three shards: each rank maps the shards and reads its part.
  save_hf_checkpoint(load_llama2c(test::stories_checkpoint()), dir.path(), DType::bf16, "llama", 3);
  const std::string prompt = "--prompt 'The little dog ran to the park and' --steps 30";
  const auto single = run_json(dir.path(), prompt + " --check");
  ASSERT_FALSE(single.empty());
  EXPECT_LT(single["check"]["max_rel_err"].get<double>(), 1e-4);
  for (const char* layout : {"--tp 2", "--tp 2 --flashcomm1 --flashcomm2 1", "--tp 4 --flashcomm1",
                             "--tp 4 --flashcomm2 2", "--tp 4 --flashcomm1 --flashcomm2 1"}) {
    const auto sharded = run_json(dir.path(), prompt + " --check " + layout);
    EXPECT_EQ(sharded["generated_tokens"], single["generated_tokens"]) << layout;
    EXPECT_LT(sharded["check"]["max_rel_err"].get<double>(), 1e-4) << layout;
  }
}

TEST(HfCli, QwenStyleCheckpointsGiveTheSameTokensAtEveryLayout) {
  // The tokenizer has 512 tokens, so the random models do too; 8 query and
  // 4 KV heads (2 for Qwen2, replicated at TP 4) allow TP 1, 2 and 4.
  ModelConfig q2 = test::qwen2_config();
  q2.d_model = 64;
  q2.n_heads = 8;
  q2.head_dim = 8;
  ModelConfig q3 = test::qwen3_config();
  q3.n_heads = 8;
  q3.n_kv_heads = 4;
  q3.hidden_dim = 96;
  for (ModelConfig* c : {&q2, &q3}) {
    c->vocab_size = 512;
    c->seq_len = 128;
  }
  for (const auto& [type, config] : {std::pair{"qwen2", q2}, std::pair{"qwen3", q3}}) {
    SCOPED_TRACE(type);
    const test::TempDir dir("hfcli-qwen");
    save_hf_checkpoint(test::random_model(config, 21), dir.path(), DType::bf16, type);
    const std::string prompt = "--prompt 'Once upon a time' --steps 12 --check";
    const auto single = run_json(dir.path(), prompt);
    ASSERT_FALSE(single.empty());
    EXPECT_EQ(single["generated_tokens"].size(), 12U) << "random models rarely emit BOS";
    for (const char* layout :
         {"--tp 2 --flashcomm1", "--tp 4 --flashcomm2 2", "--tp 4 --flashcomm1 --flashcomm2 1"}) {
      const auto sharded = run_json(dir.path(), prompt + " " + layout);
      EXPECT_EQ(sharded["generated_tokens"], single["generated_tokens"]) << layout;
      EXPECT_LT(sharded["check"]["max_rel_err"].get<double>(), 1e-4) << layout;
    }
  }
}

// One refused run: exit code 3 and the message exactly once, on one rank and
// on two.
void expect_format_error(const std::string& model, const std::string& message) {
  for (const char* ranks : {"", " --tp 2"}) {
    const Outcome o = shell(flashcomm(run_args(model) + " --steps 4" + ranks));
    EXPECT_EQ(o.exit_code, 3) << ranks << "\n" << o.output;
    EXPECT_EQ(count(o.output, message), 1U) << ranks << "\n" << o.output;
  }
}

TEST(HfCli, BadCheckpointsExitWithCode3AndOneMessage) {
  const test::TempDir dir("hfcli-bad");
  save_hf_checkpoint(load_llama2c(test::stories_checkpoint()), dir.path(), DType::f16, "llama");
  expect_format_error(dir.file("model.safetensors"), "is a file of a Hugging Face checkpoint");

  // config.json claims a layer the weights do not have.
  const std::string config_path = dir.file("config.json");
  std::ifstream in(config_path);
  nlohmann::json config = nlohmann::json::parse(in);
  in.close();
  config["num_hidden_layers"] = 6;
  std::ofstream(config_path, std::ios::trunc) << config.dump();
  expect_format_error(dir.path(), "tensor model.layers.5.input_layernorm.weight is missing");

  config["num_hidden_layers"] = 5;
  config["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  std::ofstream(config_path, std::ios::trunc) << config.dump();
  expect_format_error(dir.path(), "RoPE scaling (\"yarn\") is not implemented");

  fs::resize_file(dir.file("model.safetensors"), fs::file_size(dir.file("model.safetensors")) / 2);
  config.erase("rope_scaling");
  std::ofstream(config_path, std::ios::trunc) << config.dump();
  expect_format_error(dir.path(), "past the data section");
}

TEST(HfCli, BenchAndPlanTakeAnHfCheckpoint) {
  const test::TempDir dir("hfcli-bench");
  save_hf_checkpoint(load_llama2c(test::stories_checkpoint()), dir.path(), DType::bf16, "llama");
  const Outcome bench =
      shell(flashcomm(fmt::format("bench --model {} --layers 2 --tokens 8 --tp 1,2 --schemes tp "
                                  "--warmup 0 --repeats 1 --hardware h100-sxm --out {}",
                                  quote(dir.path()), quote(dir.file("bench")))),
            300);
  ASSERT_EQ(bench.exit_code, 0) << bench.output;
  std::ifstream file(dir.file("bench/bench.json"));
  ASSERT_TRUE(file.good()) << bench.output;
  const auto doc = nlohmann::json::parse(file);
  ASSERT_EQ(doc["rows"].size(), 2U) << bench.output;
  EXPECT_EQ(doc["rows"][0]["layers"], 2);

  const Outcome plan = shell(flashcomm(
      fmt::format("plan --model {} --hardware h100-sxm --tp 4 --tokens 64", quote(dir.path()))));
  ASSERT_EQ(plan.exit_code, 0) << plan.output;
  EXPECT_NE(plan.output.find("d_model 64"), std::string::npos) << plan.output;
}

// `convert` writes what `run` reads: the golden story from a sharded
// checkpoint of stories260K, and a Qwen3-style checkpoint from a shape whose
// TP 2 run matches the unsharded pass; bad options are refused.
TEST(HfCli, ConvertWritesCheckpointsThatRunReads) {
  const test::TempDir dir("hfcli-convert");
  const std::string stories = dir.file("stories");
  const Outcome wrote =
      shell(flashcomm(fmt::format("convert --model {} --out {} --shards 3",
                                  quote(test::stories_checkpoint()), quote(stories))));
  ASSERT_EQ(wrote.exit_code, 0) << wrote.output;
  EXPECT_TRUE(fs::exists(fs::path(stories) / "model.safetensors.index.json"));
  const Outcome gold = shell(flashcomm(run_args(stories) + " --tp 2 --steps 200"));
  EXPECT_EQ(gold.exit_code, 0) << gold.output;
  EXPECT_EQ(squash_spaces(gold.output).rfind(kGoldenStory, 0), 0U) << gold.output;

  const std::string qwen = dir.file("qwen3");
  const Outcome shaped = shell(
      flashcomm("convert --model shape:d_model=48,n_heads=4,n_kv_heads=2,head_dim=16,hidden_dim=96,"
                "n_layers=2,vocab_size=512,qk_norm=1 --dtype bf16 --out " +
                quote(qwen)));
  ASSERT_EQ(shaped.exit_code, 0) << shaped.output;
  EXPECT_NE(shaped.output.find("as a qwen3 checkpoint"), std::string::npos) << shaped.output;
  const nlohmann::json report = run_json(qwen, "--tp 2 --flashcomm1 --steps 4 --check");
  ASSERT_TRUE(report.contains("check")) << report.dump();
  EXPECT_LT(report["check"]["max_rel_err"].get<double>(), 1e-4) << report.dump();

  const Outcome dtype = shell(flashcomm(fmt::format(
      "convert --model {} --out {} --dtype f8", quote(test::stories_checkpoint()), quote(qwen))));
  EXPECT_EQ(dtype.exit_code, 2) << dtype.output;
  EXPECT_EQ(count(dtype.output, "--dtype f8 is not one of f32, f16, bf16"), 1U) << dtype.output;
  const Outcome type =
      shell(flashcomm(fmt::format("convert --model {} --out {} --model-type qwen2",
                                  quote(test::stories_checkpoint()), quote(dir.file("x")))));
  EXPECT_EQ(type.exit_code, 2) << type.output;
  EXPECT_EQ(count(type.output, "a qwen2 checkpoint has q/k/v biases"), 1U) << type.output;
}

// Without --tokenizer, a checkpoint directory's own tokenizer.model is used;
// with token-id prompts, none is.
TEST(HfCli, TheCheckpointsOwnTokenizerIsTheDefault) {
  const test::TempDir dir("hfcli-tok");
  save_hf_checkpoint(load_llama2c(test::stories_checkpoint()), dir.path(), DType::f32, "llama");
  test::write_file(dir.file("tokenizer.model"),
                   test::train_sentencepiece("--model_type=bpe --vocab_size=320 "
                                             "--byte_fallback=true"));
  const std::string report_path = dir.file("r.json");
  const Outcome o =
      shell(flashcomm(fmt::format("run --model {} --prompt 'Once upon a time' "
                                  "--steps 4 --tp 2 --json {}",
                                  quote(dir.path()), quote(report_path))));
  ASSERT_EQ(o.exit_code, 0) << o.output;
  std::ifstream file(report_path);
  const nlohmann::json report = nlohmann::json::parse(file);
  EXPECT_EQ(report["tokenizer"]["format"], "sentencepiece") << report.dump();
  EXPECT_EQ(report["tokenizer"]["file"], dir.file("tokenizer.model")) << report.dump();

  const Outcome ids = shell(
      flashcomm(fmt::format("run --model {} --prompt-tokens 1,403 --steps 4", quote(dir.path()))));
  EXPECT_EQ(ids.exit_code, 0) << ids.output;
  EXPECT_NE(ids.output.find("generated tokens:"), std::string::npos) << ids.output;
}

}  // namespace
}  // namespace flashcomm
