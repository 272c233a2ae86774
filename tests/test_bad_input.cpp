// Every row of docs/bad-input.md, run end to end: `flashcomm run` at TP 2
// (two ranks that must both end) with the row's fault must exit with the
// row's code and print the row's message exactly once. The table is the
// source of truth: a row without a case here, or a case without a row, fails.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <ostream>
#include <regex>
#include <string>
#include <vector>

#include "flashcomm/model.hpp"
#include "test_support.hpp"

namespace flashcomm {
namespace {

using test::quote;
using test::TempDir;

struct Row {
  std::string id;
  int exit_code = -1;
  std::string message;
};

void PrintTo(const Row& row, std::ostream* os) {
  *os << row.id;
}

std::vector<Row> read_table() {
  const std::string path = std::string(FLASHCOMM_SOURCE_DIR) + "/docs/bad-input.md";
  std::ifstream in(path);
  if (!in) {
    throw std::runtime_error("cannot read " + path);
  }
  // | id | input | exit | `message` |
  const std::regex row(R"(^\| ([a-z0-9-]+) \|.*\| (\d+) \| `(.*)` \|$)");
  std::vector<Row> rows;
  std::string line;
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_match(line, m, row)) {
      rows.push_back({m[1], std::stoi(m[2]), m[3]});
    }
  }
  return rows;
}

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream(path, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// The stories260K file with one int32 at byte `offset` replaced.
std::vector<char> patched(const std::string& source, std::size_t offset, std::int32_t value) {
  std::vector<char> bytes = read_bytes(source);
  std::memcpy(bytes.data() + offset, &value, sizeof(value));
  return bytes;
}

// The arguments after `flashcomm` for one case, with its files in `dir`.
using Case = std::function<std::string(const TempDir& dir)>;

std::string run_args(const std::string& model, const std::string& tokenizer,
                     const std::string& extra) {
  return fmt::format("run --model {} --tokenizer {} --tp 2 {}", quote(model), quote(tokenizer),
                     extra);
}

std::string stories(const std::string& extra) {
  return run_args(test::stories_checkpoint(), test::stories_tokenizer(), extra);
}

// A case whose model file is `bytes`.
Case with_model(std::function<std::vector<char>()> bytes) {
  return [bytes](const TempDir& dir) {
    write_bytes(dir.file("model.bin"), bytes());
    return run_args(dir.file("model.bin"), test::stories_tokenizer(), "");
  };
}

// A case whose tokenizer file is `bytes`.
Case with_tokenizer(std::function<std::vector<char>()> bytes) {
  return [bytes](const TempDir& dir) {
    write_bytes(dir.file("tok.bin"), bytes());
    return run_args(test::stories_checkpoint(), dir.file("tok.bin"), "");
  };
}

std::vector<char> truncated(const std::string& path, std::size_t size) {
  std::vector<char> bytes = read_bytes(path);
  bytes.resize(size);
  return bytes;
}

// Legacy header: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
// seq_len (int32 each); version 1: "ak42", version, then the same fields.
constexpr std::size_t kHiddenDim = 4;
constexpr std::size_t kKvHeads = 16;
constexpr std::size_t kVocab = 20;
// Tokenizer: max_token_length, then per entry a float score, int32 length, bytes.
constexpr std::size_t kFirstLength = 8;

const std::map<std::string, Case>& cases() {
  static const std::map<std::string, Case> all = {
      {"flag-unknown", [](const TempDir&) { return stories("--no-such-flag"); }},
      {"number-not-decimal", [](const TempDir&) { return stories("--steps abc"); }},
      {"number-octal-looking", [](const TempDir&) { return stories("--steps 010"); }},
      {"number-overflow", [](const TempDir&) { return stories("--steps 99999999999999999999"); }},
      {"number-negative", [](const TempDir&) { return stories("--steps -1"); }},
      {"layout-tp", [](const TempDir&) { return stories("--tp 3"); }},
      {"layout-dp", [](const TempDir&) { return stories("--dp 0"); }},
      {"prompt-empty", [](const TempDir&) { return stories("--prompt '' --steps 30"); }},
      {"prompt-too-long",
       [](const TempDir&) {
         std::string text;
         for (int i = 0; i < 400; ++i) {
           text += "hello world ";
         }
         return stories("--prompt " + quote(text));
       }},
      {"json-dir-missing",
       [](const TempDir&) { return stories("--json /no/such/dir/report.json"); }},
      {"model-missing",
       [](const TempDir&) {
         return run_args("/no/such/model.bin", test::stories_tokenizer(), "");
       }},
      {"model-empty", with_model([] { return std::vector<char>{}; })},
      {"model-truncated", with_model([] { return truncated(test::stories_checkpoint(), 1000); })},
      {"model-zero-dim", with_model([] { return patched(test::stories_checkpoint(), 0, 0); })},
      {"model-negative-dim",
       with_model([] { return patched(test::stories_checkpoint(), kHiddenDim, -5); })},
      {"model-absurd-vocab",
       with_model([] { return patched(test::stories_checkpoint(), kVocab, 1 << 30); })},
      {"model-heads", with_model([] { return patched(test::stories_checkpoint(), kKvHeads, 3); })},
      {"model-v1-version", with_model([] { return patched(test::stories_checkpoint_v1(), 4, 7); })},
      {"tokenizer-missing",
       [](const TempDir&) { return run_args(test::stories_checkpoint(), "/no/such/tok.bin", ""); }},
      {"tokenizer-truncated",
       with_tokenizer([] { return truncated(test::stories_tokenizer(), 500); })},
      {"tokenizer-negative-length",
       with_tokenizer([] { return patched(test::stories_tokenizer(), kFirstLength, -3); })},
      {"tokenizer-length-beyond-file",
       with_tokenizer([] { return patched(test::stories_tokenizer(), kFirstLength, 1000000000); })},
      {"tokenizer-vocab-mismatch",
       [](const TempDir& dir) {
         ModelConfig c = load_llama2c(test::stories_checkpoint()).config;
         c.vocab_size = 256;
         save_llama2c(random_weights(c, 5), dir.file("model.bin"), 0);
         return run_args(dir.file("model.bin"), test::stories_tokenizer(), "");
       }},
  };
  return all;
}

TEST(BadInput, EveryRowOfTheTableHasACaseAndEveryCaseARow) {
  const std::vector<Row> rows = read_table();
  ASSERT_GE(rows.size(), 20U) << "the table in docs/bad-input.md did not parse";
  std::map<std::string, int> seen;
  for (const Row& r : rows) {
    EXPECT_EQ(++seen[r.id], 1) << "row " << r.id << " appears twice";
    EXPECT_TRUE(cases().count(r.id) == 1) << "row " << r.id << " has no case in this test";
  }
  for (const auto& [id, c] : cases()) {
    EXPECT_TRUE(seen.count(id) == 1) << "case " << id << " has no row in docs/bad-input.md";
  }
}

class BadInputRow : public testing::TestWithParam<Row> {};

TEST_P(BadInputRow, EndsWithItsCodeAndMessageOnEveryRank) {
  const Row& row = GetParam();
  const auto it = cases().find(row.id);
  ASSERT_NE(it, cases().end()) << row.id;
  const TempDir dir("bad-input");
  const test::Outcome o = test::shell(test::flashcomm(it->second(dir)), 120);
  EXPECT_EQ(o.exit_code, row.exit_code) << o.output;
  EXPECT_EQ(test::count(o.output, row.message), 1U)
      << "expected the message '" << row.message << "' exactly once in:\n"
      << o.output;
}

// The same with the two ranks started by mpiexec: each reads the files and
// parses the flags itself, and still only one speaks.
TEST_P(BadInputRow, EndsTheSameUnderMpiexec) {
  const Row& row = GetParam();
  const auto it = cases().find(row.id);
  ASSERT_NE(it, cases().end()) << row.id;
  const TempDir dir("bad-input");
  const std::string mpiexec = fmt::format("mpiexec {}--oversubscribe --bind-to none -n 2 ",
                                          geteuid() == 0 ? "--allow-run-as-root " : "");
  const test::Outcome o = test::shell(mpiexec + test::flashcomm(it->second(dir)), 120);
  EXPECT_EQ(o.exit_code, row.exit_code) << o.output;
  EXPECT_EQ(test::count(o.output, row.message), 1U)
      << "expected the message '" << row.message << "' exactly once in:\n"
      << o.output;
}

std::string row_name(const testing::TestParamInfo<Row>& info) {
  return std::regex_replace(info.param.id, std::regex("-"), "_");
}

INSTANTIATE_TEST_SUITE_P(Table, BadInputRow, testing::ValuesIn(read_table()), row_name);

}  // namespace
}  // namespace flashcomm
