// End-to-end tests of `flashcomm run`: the golden story, self-launch and
// mpiexec launch, the JSON report, DP replicas, prompts as token ids,
// SentencePiece tokenizers, and every bad configuration ending with its
// message once, a non-zero exit and no hang.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <set>

#include <nlohmann/json.hpp>

#include "flashcomm/cost_model.hpp"
#include "flashcomm/engine.hpp"
#include "flashcomm/model.hpp"
#include "flashcomm/presets.hpp"
#include "flashcomm/tokenizer.hpp"
#include "test_support.hpp"

namespace flashcomm {
namespace {

using test::count;
using test::flashcomm;
using test::Outcome;
using test::quote;
using test::shell;

std::string stories_args() {
  return fmt::format("run --model {} --tokenizer {}", quote(test::stories_checkpoint()),
                     quote(test::stories_tokenizer()));
}

std::string mpiexec_prefix(int n) {
  const bool root = geteuid() == 0;
  return fmt::format("mpiexec {}--oversubscribe --bind-to none -n {} ",
                     root ? "--allow-run-as-root " : "", n);
}

// The opening the model's README quotes, whitespace-insensitive.
const char* kGoldenStory =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
    "park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.";

std::string squash_spaces(const std::string& s) {
  return std::regex_replace(s, std::regex("\\s+"), " ");
}

void expect_golden(const Outcome& o) {
  EXPECT_EQ(o.exit_code, 0) << o.output;
  EXPECT_EQ(squash_spaces(o.output).rfind(kGoldenStory, 0), 0U)
      << "the output does not start with the golden story:\n"
      << o.output;
}

TEST(Cli, GoldenStoryOnOneRank) {
  expect_golden(shell(flashcomm(stories_args() + " --steps 200")));
}

TEST(Cli, GoldenStorySelfLaunchedFlashComm1AndFlashComm2) {
  const Outcome o =
      shell(flashcomm(stories_args() + " --steps 200 --tp 4 --flashcomm1 --flashcomm2 2"));
  expect_golden(o);
  EXPECT_NE(o.output.find("all_to_all"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("otp"), std::string::npos) << o.output;
}

TEST(Cli, GoldenStoryUnderMpiexec) {
  const Outcome o =
      shell(mpiexec_prefix(4) + flashcomm(stories_args() + " --steps 200 --tp 4 --flashcomm2 1"));
  expect_golden(o);
}

nlohmann::json run_json(const std::string& extra, const std::string& tag) {
  const test::TempDir dir(tag);
  const std::string path = dir.file("report.json");
  const Outcome o = shell(flashcomm(stories_args() + " --json " + quote(path) + " " + extra));
  EXPECT_EQ(o.exit_code, 0) << o.output;
  std::ifstream file(path);
  if (!file) {
    ADD_FAILURE() << "no JSON report at " << path << "\n" << o.output;
    return {};
  }
  return nlohmann::json::parse(file);
}

TEST(Cli, JsonReportHasEveryFieldAndTheCheck) {
  const auto single = run_json("--prompt 'Lily had a cat' --steps 40", "json1");
  const auto sharded = run_json(
      "--prompt 'Lily had a cat' --steps 40 --tp 2 --flashcomm1 --flashcomm2 1 --check", "json2");
  ASSERT_TRUE(sharded.contains("prefill"));
  for (const char* key :
       {"prompt_tokens", "generated_tokens", "text", "prefill", "decode", "check"}) {
    EXPECT_TRUE(sharded.contains(key)) << key;
  }
  EXPECT_EQ(sharded["generated_tokens"], single["generated_tokens"]);
  EXPECT_EQ(sharded["prompt_tokens"], single["prompt_tokens"]);
  EXPECT_EQ(sharded["prompt_tokens"][0], 1) << "BOS first";
  EXPECT_EQ(sharded["generated_tokens"].size(), 40U);
  EXPECT_LT(sharded["check"]["max_rel_err"].get<double>(), 1e-4);
  EXPECT_GT(sharded["prefill"]["seconds"].get<double>(), 0.0);
  std::set<std::string> prefill_ops;
  for (const auto& r : sharded["prefill"]["comm"]) {
    prefill_ops.insert(r["op"].get<std::string>() + "/" + r["group"].get<std::string>());
    EXPECT_GT(r["calls"].get<int>(), 0);
    EXPECT_GT(r["bytes_sent"].get<long>(), 0);
  }
  EXPECT_EQ(prefill_ops,
            (std::set<std::string>{"all_gather/tp", "all_to_all/tp", "reduce_scatter/tp"}));
  ASSERT_EQ(sharded["decode"]["comm"].size(), 1U) << "decode runs plain TP";
  EXPECT_EQ(sharded["decode"]["comm"][0]["op"], "all_reduce");
  // Two AllReduces per layer per decode step.
  EXPECT_EQ(sharded["decode"]["comm"][0]["calls"], 2 * 5 * 39);
}

TEST(Cli, DataParallelReplicasServeTheirOwnPrompts) {
  const auto a = run_json("--prompt 'The dog' --steps 20", "dpa");
  const auto b = run_json("--prompt 'A small bird' --steps 20", "dpb");
  const auto both =
      run_json("--prompt 'The dog' --prompt 'A small bird' --steps 20 --dp 2 --tp 2", "dpab");
  ASSERT_EQ(both["requests"].size(), 2U);
  EXPECT_EQ(both["requests"][0]["dp_rank"], 0);
  EXPECT_EQ(both["requests"][1]["dp_rank"], 1);
  EXPECT_EQ(both["requests"][0]["generated_tokens"], a["generated_tokens"]);
  EXPECT_EQ(both["requests"][1]["generated_tokens"], b["generated_tokens"]);
}

// A bad configuration: its message exactly once, the expected exit code, no hang.
void expect_refused(const std::string& command, int code, const std::string& message) {
  const Outcome o = shell(command, 60);
  EXPECT_EQ(o.exit_code, code) << command << "\n" << o.output;
  EXPECT_EQ(count(o.output, message), 1U) << command << "\n" << o.output;
}

TEST(Cli, BadLayoutsAreRefusedOnce) {
  expect_refused(flashcomm(stories_args() + " --tp 4 --flashcomm2 3"), 2,
                 "--flashcomm2 3 must divide the tensor-parallel size 4");
  expect_refused(flashcomm(stories_args() + " --tp 4 --flashcomm2 4"), 2,
                 "--flashcomm2 4 must be smaller than the tensor-parallel size 4");
  expect_refused(flashcomm(stories_args() + " --flashcomm2 1"), 2,
                 "--flashcomm2 1 needs a tensor-parallel size above 1, but --tp is 1");
  expect_refused(flashcomm(stories_args() + " --tp 3"), 2,
                 "--tp 3 must divide the model's n_heads 8");
  expect_refused(flashcomm(stories_args() + " --tp 8"), 2,
                 "--tp 8 must divide the model's hidden_dim 172");
}

TEST(Cli, BadLayoutsUnderMpiexecAreRefusedOnceOnEveryRank) {
  expect_refused(mpiexec_prefix(4) + flashcomm(stories_args() + " --tp 4 --flashcomm2 3"), 2,
                 "--flashcomm2 3 must divide the tensor-parallel size 4");
  expect_refused(mpiexec_prefix(3) + flashcomm(stories_args() + " --tp 2"), 2,
                 "the job has 3 ranks but --dp 1 x --tp 2 needs 2");
}

TEST(Cli, KvHeadsThatNeitherShardNorReplicateAreRefused) {
  const ModelConfig c = *named_model(
      "shape:d_model=48,hidden_dim=96,n_layers=1,n_heads=12,n_kv_heads=4,head_dim=4,vocab_size=512,"
      "seq_len=32");
  const test::TempDir dir("kv");
  const std::string path = dir.file("model.bin");
  save_llama2c(random_weights(c, 7), path, 1);
  expect_refused(flashcomm(fmt::format("run --model {} --tokenizer {} --tp 6", quote(path),
                                       quote(test::stories_tokenizer()))),
                 2,
                 "--tp 6 must divide the model's n_kv_heads 4 (to shard them) or be a multiple "
                 "of it (to replicate them)");
}

TEST(Cli, PromptLongerThanTheContextIsRefused) {
  std::string long_prompt;
  for (int i = 0; i < 300; ++i) {
    long_prompt += "the cat sat. ";
  }
  const Outcome o = shell(flashcomm(stories_args() + " --tp 2 --prompt " + quote(long_prompt)), 60);
  EXPECT_EQ(o.exit_code, 2) << o.output;
  EXPECT_EQ(count(o.output, "but the model's context (seq_len) is 512"), 1U) << o.output;
}

TEST(Cli, BadFlagsAndFiles) {
  EXPECT_EQ(shell(flashcomm(stories_args() + " --no-such-flag")).exit_code, 2);
  const Outcome nan = shell(flashcomm(stories_args() + " --tp abc"));
  EXPECT_EQ(nan.exit_code, 2);
  EXPECT_NE(nan.output.find("abc"), std::string::npos) << nan.output;
  const Outcome steps = shell(flashcomm(stories_args() + " --steps -1"));
  EXPECT_EQ(steps.exit_code, 2);
  EXPECT_NE(steps.output.find("--steps -1 must be 0 or more"), std::string::npos) << steps.output;
  const Outcome missing = shell(flashcomm("run --model /no/such/model.bin --tokenizer " +
                                          quote(test::stories_tokenizer()) + " --tp 2"));
  EXPECT_EQ(missing.exit_code, 3) << missing.output;
  EXPECT_EQ(count(missing.output, "/no/such/model.bin"), 1U) << missing.output;
}

TEST(Cli, StopsAtTheContextEnd) {
  const ModelConfig c = *named_model(
      "shape:d_model=16,hidden_dim=32,n_layers=1,n_heads=2,n_kv_heads=2,head_dim=8,vocab_size=512,"
      "seq_len=10");
  const test::TempDir dir("ctx");
  const ModelWeights model = random_weights(c, 3);
  save_llama2c(model, dir.file("model.bin"), 0);
  const Outcome o = shell(flashcomm(fmt::format(
      "run --model {} --tokenizer {} --steps 100 --tp 2 --flashcomm1 --json {}",
      quote(dir.file("model.bin")), quote(test::stories_tokenizer()), quote(dir.file("r.json")))));
  ASSERT_EQ(o.exit_code, 0) << o.output;
  std::ifstream file(dir.file("r.json"));
  const auto report = nlohmann::json::parse(file);

  // The reference greedy loop, as llama2.c runs it: at most seq_len tokens
  // are fed (BOS and then each new token but the last), so BOS is followed by
  // at most seq_len new tokens; BOS ends the story earlier.
  ReferenceModel reference(model);
  std::vector<int> expected;
  std::vector<float> logits = reference.step(1);
  int fed = 1;
  for (;;) {
    const int next =
        static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    if (next == 1) {
      break;
    }
    expected.push_back(next);
    if (fed == c.seq_len) {
      break;
    }
    logits = reference.step(next);
    ++fed;
  }
  EXPECT_EQ(report["generated_tokens"].get<std::vector<int>>(), expected);
}

TEST(Cli, TextThatIsNotUtf8StillReports) {
  // A lone 0xFF byte falls back to a byte token; the report must survive it.
  const test::TempDir dir("utf8");
  const Outcome o = shell(flashcomm(stories_args() + " --prompt $'\\xff' --steps 3 --json " +
                                    quote(dir.file("r.json"))));
  EXPECT_EQ(o.exit_code, 0) << o.output;
  std::ifstream file(dir.file("r.json"));
  ASSERT_TRUE(file.good());
  const auto report = nlohmann::json::parse(file);
  EXPECT_EQ(report["generated_tokens"].size(), 3U);
}

TEST(Cli, RanksStartedWithDifferentOptionsAreRefused) {
  const std::string a = flashcomm(stories_args() + " --tp 2 --steps 10");
  const std::string b = flashcomm(stories_args() + " --tp 2 --steps 20");
  const bool root = geteuid() == 0;
  const Outcome o = shell(fmt::format("mpiexec {}--oversubscribe -n 1 {} : -n 1 {}",
                                      root ? "--allow-run-as-root " : "", a, b),
                          60);
  EXPECT_EQ(o.exit_code, 2) << o.output;
  EXPECT_EQ(count(o.output, "the ranks were started with different options"), 1U) << o.output;
}

TEST(Cli, AHugeTextIsRefusedBeforeItIsEncoded) {
  const test::TempDir dir("long");
  {
    std::ofstream f(dir.file("p.txt"));
    f << std::string(100000, 'a');
  }
  const Outcome o = shell(
      flashcomm(stories_args() + " --prompt \"$(cat " + quote(dir.file("p.txt")) + ")\""), 20);
  EXPECT_EQ(o.exit_code, 2) << o.output.substr(0, 400);
  EXPECT_NE(o.output.find("the prompt has 100000 bytes"), std::string::npos)
      << o.output.substr(0, 400);
}

TEST(Cli, CountsAreDecimal) {
  const Outcome octal = shell(flashcomm(stories_args() + " --steps 010 --json /dev/stdout"));
  EXPECT_EQ(octal.exit_code, 0) << octal.output;
  EXPECT_NE(octal.output.find("\"decode\""), std::string::npos);
  const Outcome hex = shell(flashcomm(stories_args() + " --tp 0x2"));
  EXPECT_EQ(hex.exit_code, 2);
  EXPECT_NE(hex.output.find("expected a decimal integer, got '0x2'"), std::string::npos)
      << hex.output;
  const Outcome empty = shell(flashcomm(stories_args() + " --tp ''"));
  EXPECT_EQ(empty.exit_code, 2) << empty.output;
}

TEST(Cli, AReportThatCannotBeWrittenFails) {
  const Outcome o = shell(flashcomm(stories_args() + " --steps 2 --json /dev/full"));
  EXPECT_NE(o.exit_code, 0) << o.output;
  EXPECT_EQ(count(o.output, "--json /dev/full: write failed"), 1U) << o.output;
}

TEST(Cli, AHugeContextCostsOnlyWhatTheRunNeeds) {
  // seq_len 4M with 64 layers would need GiBs of KV cache if sized by seq_len.
  const ModelConfig c = *named_model(
      "shape:d_model=8,hidden_dim=16,n_layers=64,n_heads=2,n_kv_heads=2,head_dim=4,vocab_size=512,"
      "seq_len=4194304");
  const test::TempDir dir("bigctx");
  save_llama2c(random_weights(c, 5), dir.file("model.bin"), 1);
  const Outcome o =
      shell(flashcomm(fmt::format("run --model {} --tokenizer {} --steps 4",
                                  quote(dir.file("model.bin")), quote(test::stories_tokenizer()))),
            60);
  EXPECT_EQ(o.exit_code, 0) << o.output;
}

// ---------------------------------------------------------------------------
// Prompts as token ids, SentencePiece tokenizers

std::string joined(const nlohmann::json& ids) {
  return fmt::format("{}", fmt::join(ids.get<std::vector<int>>(), ","));
}

// The report of a run of `args`; `outcome` gets its exit code and stdout.
nlohmann::json run_json_with(const std::string& args, const std::string& tag, Outcome* outcome) {
  const test::TempDir dir(tag);
  const std::string path = dir.file("report.json");
  *outcome = shell(flashcomm(args + " --json " + quote(path)), 180, dir.file("stderr"));
  const std::string stderr_text = [&] {
    std::ifstream in(dir.file("stderr"));
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }();
  EXPECT_EQ(outcome->exit_code, 0) << args << "\n" << outcome->output << stderr_text;
  std::ifstream file(path);
  if (!file) {
    ADD_FAILURE() << "no JSON report at " << path << "\n" << outcome->output << stderr_text;
    return {};
  }
  return nlohmann::json::parse(file);
}

std::string model_args() {
  return "run --model " + quote(test::stories_checkpoint());
}

TEST(Cli, PromptTokensGiveTheTokensOfTheTextPrompt) {
  const auto text = run_json("--prompt 'Lily had a cat' --steps 30", "ptext");
  ASSERT_EQ(text["generated_tokens"].size(), 30U) << "no BOS before 30 tokens";
  const std::string ids = joined(text["prompt_tokens"]);
  ASSERT_EQ(text["prompt_tokens"][0], 1) << "BOS first";

  // With the tokenizer: the same tokens, text and terminal output.
  Outcome o;
  const auto tokens =
      run_json_with(stories_args() + " --prompt-tokens " + ids + " --steps 30", "ptok", &o);
  EXPECT_EQ(tokens["prompt_tokens"], text["prompt_tokens"]) << "taken verbatim";
  EXPECT_EQ(tokens["generated_tokens"], text["generated_tokens"]);
  EXPECT_EQ(tokens["text"], text["text"]);
  EXPECT_EQ(tokens["requests"][0]["prompt"], "Lily had a cat")
      << "decoded, the leading BOS shown as nothing";
  EXPECT_EQ(o.output.rfind("Lily had a cat" + text["text"].get<std::string>() + "\n", 0), 0U)
      << o.output;

  // Sharded, self-launched: the same again.
  const auto sharded = run_json_with(
      stories_args() + " --prompt-tokens " + ids + " --steps 30 --tp 2 --flashcomm1", "ptok2", &o);
  EXPECT_EQ(sharded["generated_tokens"], text["generated_tokens"]);

  // Without BOS the prompt is another one, and is taken as it is.
  const std::string no_bos = ids.substr(ids.find(',') + 1);
  const auto verbatim =
      run_json_with(stories_args() + " --prompt-tokens " + no_bos + " --steps 5", "pnobos", &o);
  EXPECT_EQ(joined(verbatim["prompt_tokens"]), no_bos);
}

TEST(Cli, PromptTokensWithoutATokenizerReportIds) {
  const auto text = run_json("--prompt 'Lily had a cat' --steps 30", "nttext");
  const std::string ids = joined(text["prompt_tokens"]);
  Outcome o;
  const auto report =
      run_json_with(model_args() + " --prompt-tokens " + ids + " --steps 30", "ntids", &o);
  EXPECT_EQ(report["prompt_tokens"], text["prompt_tokens"]);
  EXPECT_EQ(report["generated_tokens"], text["generated_tokens"]);
  EXPECT_TRUE(report["text"].is_null());
  EXPECT_TRUE(report["tokenizer"].is_null());
  ASSERT_EQ(report["requests"].size(), 1U);
  EXPECT_TRUE(report["requests"][0]["prompt"].is_null());
  EXPECT_TRUE(report["requests"][0]["text"].is_null());
  EXPECT_EQ(o.output.rfind("prompt tokens: " + ids +
                               "\ngenerated tokens: " + joined(text["generated_tokens"]) + "\n",
                           0),
            0U)
      << o.output;

  // Without a tokenizer nothing is known to stop at: BOS does not end the
  // story, --steps does.
  const auto from_bos = run_json("--steps 400", "ntbos");
  ASSERT_LT(from_bos["generated_tokens"].size(), 400U) << "the story ends with BOS";
  const auto through =
      run_json_with(model_args() + " --prompt-tokens 1 --steps 400", "ntthrough", &o);
  ASSERT_EQ(through["generated_tokens"].size(), 400U);
  const auto generated = through["generated_tokens"].get<std::vector<int>>();
  const auto story = from_bos["generated_tokens"].get<std::vector<int>>();
  EXPECT_TRUE(std::equal(story.begin(), story.end(), generated.begin()));
  EXPECT_EQ(generated[story.size()], Llama2cTokenizer::kBos);
}

TEST(Cli, RepeatedPromptTokensAreRequestsOfTheirOwn) {
  const auto a = run_json("--prompt 'The dog' --steps 20", "rpa");
  const auto b = run_json("--prompt 'A small bird' --steps 20", "rpb");
  Outcome o;
  const auto both =
      run_json_with(model_args() + " --prompt-tokens " + joined(a["prompt_tokens"]) +
                        " --prompt-tokens '" + joined(b["prompt_tokens"]) + "' --steps 20 --dp 2",
                    "rpab", &o);
  ASSERT_EQ(both["requests"].size(), 2U);
  EXPECT_EQ(both["requests"][0]["dp_rank"], 0);
  EXPECT_EQ(both["requests"][1]["dp_rank"], 1);
  EXPECT_EQ(both["requests"][0]["generated_tokens"], a["generated_tokens"]);
  EXPECT_EQ(both["requests"][1]["generated_tokens"], b["generated_tokens"]);
}

TEST(Cli, BadPromptTokensAreRefusedOnce) {
  const std::string run = model_args() + " --prompt-tokens ";
  // Ids the model has no embedding for, named with their position.
  expect_refused(flashcomm(run + "1,600"), 2,
                 "--prompt-tokens: id 600 at position 1 (counting from 0) is not below the "
                 "model's vocab_size 512");
  expect_refused(flashcomm(run + "512"), 2,
                 "id 512 at position 0 (counting from 0) is not below the model's vocab_size 512");
  expect_refused(flashcomm(run + "1,2,99999999999999999999999"), 2,
                 "id 99999999999999999999999 at position 2 (counting from 0) is not below");
  // Numbers that are not decimal ids.
  expect_refused(flashcomm(run + "1,,2"), 2,
                 "--prompt-tokens: the id at position 1 (counting from 0) is empty");
  expect_refused(flashcomm(run + "1,2,"), 2, "the id at position 2 (counting from 0) is empty");
  expect_refused(flashcomm(run + "1,-2"), 2,
                 "--prompt-tokens: '-2' at position 1 (counting from 0) is not a token id, "
                 "expected a decimal number from 0 to 511");
  expect_refused(flashcomm(run + "0x10"), 2, "'0x10' at position 0 (counting from 0) is not a");
  expect_refused(flashcomm(run + "'1 2'"), 2, "'1 2' at position 0 (counting from 0) is not a");
  expect_refused(flashcomm(run + "''"), 2, "--prompt-tokens is empty");
  // Blanks around an id are fine.
  EXPECT_EQ(shell(flashcomm(run + "' 1, 2 ' --steps 1")).exit_code, 0);
  // Under several ranks: once, from the first.
  expect_refused(flashcomm(run + "1,600 --tp 2"), 2, "id 600 at position 1");
  expect_refused(mpiexec_prefix(2) + flashcomm(run + "1,600 --tp 2"), 2, "id 600 at position 1");
  // With several prompts, the one at fault is named.
  expect_refused(flashcomm(run + "1,2 --prompt-tokens 1,x"), 2,
                 "prompt 1: --prompt-tokens: 'x' at position 1");
  // Longer than the context.
  std::string long_ids = "1";
  for (int i = 0; i < 600; ++i) {
    long_ids += ",5";
  }
  expect_refused(flashcomm(run + long_ids), 2,
                 "--prompt-tokens has 601 ids but the model's context (seq_len) is 512");
}

TEST(Cli, TextPromptsNeedATokenizerAndDoNotMixWithTokenIds) {
  expect_refused(flashcomm(model_args() + " --prompt 'Lily'"), 2,
                 "--tokenizer is needed to encode --prompt text; without a tokenizer, give the "
                 "prompt as --prompt-tokens IDS");
  expect_refused(flashcomm(model_args()), 2, "--tokenizer is needed to start from BOS alone");
  expect_refused(flashcomm(stories_args() + " --prompt 'Lily' --prompt-tokens 1,2"), 2,
                 "--prompt and --prompt-tokens cannot be mixed in one run");
}

TEST(Cli, ASentencePieceTokenizerRunsTheModel) {
  const test::TempDir dir("spm");
  const std::string model_file = dir.file("tokenizer.model");
  test::write_file(model_file, test::train_sentencepiece("--model_type=bpe --vocab_size=320 "
                                                         "--byte_fallback=true "
                                                         "--normalization_rule_name=identity"));
  Outcome o;
  const auto report = run_json_with(model_args() + " --tokenizer " + quote(model_file) +
                                        " --prompt 'Once upon a time' --steps 12",
                                    "spmrun", &o);
  EXPECT_EQ(report["tokenizer"]["format"], "sentencepiece");
  EXPECT_EQ(report["tokenizer"]["vocab_size"], 320);
  const SentencePieceTokenizer tok = [&] {
    std::ifstream in(model_file, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return SentencePieceTokenizer::from_bytes(bytes, model_file);
  }();
  EXPECT_EQ(report["prompt_tokens"].get<std::vector<int>>(), tok.encode("Once upon a time", true));
  // The model was not trained with this tokenizer: its ids past the 320
  // pieces are padding and have no text, but every generated id is reported.
  const auto generated = report["generated_tokens"].get<std::vector<int>>();
  EXPECT_FALSE(generated.empty());
  std::string expected_text;
  int prev = tok.encode("Once upon a time", true).back();
  for (int t : generated) {
    EXPECT_NE(t, tok.eos_id());
    EXPECT_NE(t, tok.bos_id());
    if (t < tok.vocab_size()) {
      expected_text += tok.decode(prev, t);
    }
    prev = t;
  }
  EXPECT_EQ(report["text"], expected_text);
  EXPECT_EQ(o.output.rfind("Once upon a time" + expected_text, 0), 0U) << o.output;
}

TEST(Cli, BadTokenizerFilesAreFormatErrors) {
  const test::TempDir dir("badtok");
  // A SentencePiece model with more pieces than the model has embeddings.
  const ModelConfig c = *named_model(
      "shape:d_model=16,hidden_dim=32,n_layers=1,n_heads=2,n_kv_heads=2,head_dim=8,vocab_size=300,"
      "seq_len=32");
  save_llama2c(random_weights(c, 3), dir.file("model.bin"), 1);
  const std::string spm = test::train_sentencepiece(
      "--model_type=bpe --vocab_size=320 "
      "--byte_fallback=true");
  test::write_file(dir.file("big.model"), spm);
  expect_refused(flashcomm(fmt::format("run --model {} --tokenizer {} --tp 2",
                                       quote(dir.file("model.bin")), quote(dir.file("big.model")))),
                 3,
                 dir.file("big.model") +
                     ": the SentencePiece model has 320 pieces but the model's vocab_size is 300");

  const std::string run = model_args() + " --tokenizer ";
  test::write_file(dir.file("empty.model"), "");
  expect_refused(flashcomm(run + quote(dir.file("empty.model"))), 3,
                 dir.file("empty.model") + ": the file is empty");
  test::write_file(dir.file("cut.model"), spm.substr(0, spm.size() / 2));
  expect_refused(flashcomm(run + quote(dir.file("cut.model"))), 3,
                 dir.file("cut.model") + ": neither a SentencePiece model");
  test::write_file(dir.file("noise.bin"), std::string(1000, '\x7f'));
  expect_refused(flashcomm(run + quote(dir.file("noise.bin")) + " --tp 2"), 3,
                 dir.file("noise.bin") + ": max_token_length");
}

}  // namespace
}  // namespace flashcomm

namespace flashcomm {
namespace {

// --flashcomm auto: each request's prefill runs the scheme the cost model
// picks for its length (recorded in the report, equal to choose_scheme's),
// and the tokens are those of one rank, short prompt and long alike.
TEST(Cli, FlashcommAutoRecordsEachPassAndKeepsTheTokens) {
  const std::string long_prompt =
      "Lily went to the park. She saw a big dog and a small cat. They played with a red ball "
      "all day. Then the sun went down and Lily went home to her mom. ";
  const std::string prompts =
      " --prompt 'Once upon a time' --prompt " + test::quote(long_prompt + long_prompt);
  // This machine's compute with slow links, the same for every collective:
  // long prompts are then worth FlashComm's fewer bytes, short ones are not
  // (their padding and extra collectives cost more than they save).
  HardwareProfile slow_links = builtin_profile("cpu-openmpi");
  for (auto& [op, fits] : slow_links.collectives) {
    fits = {{2, 5e-5, 1e7}, {4, 5e-5, 1e7}};
  }
  slow_links.name = "slow-links";
  const test::TempDir dir("auto-profile");
  save_profile(slow_links, dir.file("slow.json"));
  const auto single = run_json(prompts + " --steps 16", "auto1");
  const auto chosen = run_json(prompts +
                                   " --steps 16 --tp 4 --flashcomm auto --overlap-chunks 2 "
                                   "--hardware " +
                                   test::quote(dir.file("slow.json")),
                               "auto2");
  ASSERT_TRUE(chosen.contains("requests"));
  ASSERT_EQ(chosen["requests"].size(), 2U);
  const ModelConfig model = read_llama2c_config(test::stories_checkpoint());
  AutoSpace space;
  space.tp_size = 4;
  space.o_proj_k = 1;
  space.chunk_options = {1, 2};
  HardwareProfile cpu = load_profile(dir.file("slow.json"));
  cpu.activation_bytes = 4;
  std::vector<std::string> names;
  for (size_t i = 0; i < 2; ++i) {
    const auto& r = chosen["requests"][i];
    EXPECT_EQ(r["generated_tokens"], single["requests"][i]["generated_tokens"]) << i;
    ASSERT_TRUE(r.contains("scheme")) << r.dump();
    const int n = static_cast<int>(r["prompt_tokens"].size());
    const AutoChoice want = choose_scheme(model, cpu, space, n);
    EXPECT_EQ(r["scheme"]["name"], want.name) << n << " tokens";
    EXPECT_DOUBLE_EQ(r["scheme"]["predicted_s"].get<double>(), want.predicted_s);
    names.push_back(r["scheme"]["name"]);
  }
  EXPECT_EQ(names[0], "plain TP") << "a 5-token prompt stays on plain TP";
  EXPECT_NE(names[1], "plain TP") << "a long prompt should switch on this profile";
  EXPECT_EQ(chosen["parallel"]["flashcomm"], "auto");
}

}  // namespace
}  // namespace flashcomm
