// Every row of docs/bad-input.md, run end to end: `flashcomm run` at TP 2
// (two ranks that must both end) with the row's fault must exit with the
// row's code and print the row's message exactly once. The table is the
// source of truth: a row without a case here, or a case without a row, fails.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
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

#include <filesystem>

#include <nlohmann/json.hpp>

#include "flashcomm/hf.hpp"
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

// stories260K as a float32 HF checkpoint in dir/hf, then `spoil` applied to
// its config.json and safetensors header (both parsed as JSON) or to its
// directory; the case runs it.
struct HfFiles {
  std::string dir;
  nlohmann::json config;
  nlohmann::json header;
  std::string data;  // the bytes after the header
};

Case hf_case(std::function<void(HfFiles&)> spoil) {
  return [spoil](const TempDir& tmp) {
    HfFiles f;
    f.dir = tmp.file("hf");
    save_hf_checkpoint(load_llama2c(test::stories_checkpoint()), f.dir, DType::f32, "llama");
    const std::vector<char> file = read_bytes(f.dir + "/model.safetensors");
    std::uint64_t n = 0;
    std::memcpy(&n, file.data(), sizeof(n));
    f.header = nlohmann::json::parse(file.begin() + 8, file.begin() + 8 + static_cast<long>(n));
    f.data.assign(file.begin() + 8 + static_cast<long>(n), file.end());
    const std::vector<char> config = read_bytes(f.dir + "/config.json");
    f.config = nlohmann::json::parse(config.begin(), config.end());
    spoil(f);
    if (!f.config.is_null()) {
      const std::string text = f.config.dump();
      write_bytes(f.dir + "/config.json", {text.begin(), text.end()});
    }
    if (!f.header.is_null()) {
      const std::string text = f.header.dump();
      std::vector<char> bytes(8);
      const std::uint64_t length = text.size();
      std::memcpy(bytes.data(), &length, sizeof(length));
      bytes.insert(bytes.end(), text.begin(), text.end());
      bytes.insert(bytes.end(), f.data.begin(), f.data.end());
      write_bytes(f.dir + "/model.safetensors", bytes);
    }
    return run_args(f.dir, test::stories_tokenizer(), "");
  };
}

// Leaves a file as the test wrote it: f.config or f.header set to null.
void write_raw(const std::string& path, const std::string& bytes) {
  write_bytes(path, {bytes.begin(), bytes.end()});
}

// A named pipe at `path`: opening it to read would block without a writer.
void make_fifo(const std::string& path) {
  if (mkfifo(path.c_str(), 0600) != 0) {
    throw std::runtime_error("mkfifo failed for " + path);
  }
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
      {"layout-mlp-k", [](const TempDir&) { return stories("--flashcomm2-mlp 3"); }},
      {"overlap-chunks-zero", [](const TempDir&) { return stories("--overlap-chunks 0"); }},
      {"comm-quant-unknown", [](const TempDir&) { return stories("--comm-quant int4"); }},
      {"comm-dtype-unknown", [](const TempDir&) { return stories("--comm-dtype fp16"); }},
      {"flashcomm-mode-unknown", [](const TempDir&) { return stories("--flashcomm on"); }},
      {"flashcomm-auto-with-k",
       [](const TempDir&) { return stories("--flashcomm auto --flashcomm2 1"); }},
      {"flashcomm-auto-budget",
       [](const TempDir&) { return stories("--flashcomm auto --memory-budget -1"); }},
      {"flashcomm-auto-mlp-budget",
       [](const TempDir&) {
         return stories("--flashcomm auto --memory-budget 0 --flashcomm2-mlp 1");
       }},
      {"flashcomm-auto-hardware",
       [](const TempDir&) { return stories("--flashcomm auto --hardware no-such-gpu"); }},
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
      {"tokenizer-sentencepiece-garbage",
       [](const TempDir& dir) {
         std::string bytes(1, '\x0a');
         for (int i = 0; i < 300; ++i) {
           bytes += static_cast<char>((i * 7919 + 13) % 251);
         }
         write_raw(dir.file("tok.model"), bytes);
         return run_args(test::stories_checkpoint(), dir.file("tok.model"), "");
       }},
      {"prompt-tokens-beyond-vocab",
       [](const TempDir&) { return stories("--prompt-tokens 1,600"); }},
      {"prompt-tokens-empty-element",
       [](const TempDir&) { return stories("--prompt-tokens 1,,2"); }},
      {"prompt-tokens-negative", [](const TempDir&) { return stories("--prompt-tokens 1,-2"); }},
      {"prompt-tokens-empty", [](const TempDir&) { return stories("--prompt-tokens ''"); }},
      {"prompt-mixed", [](const TempDir&) { return stories("--prompt Lily --prompt-tokens 1,2"); }},
      {"hf-no-config", hf_case([](HfFiles& f) {
         std::filesystem::remove(f.dir + "/config.json");
         f.config = nullptr;
       })},
      {"hf-config-json", hf_case([](HfFiles& f) {
         write_raw(f.dir + "/config.json", f.config.dump().substr(0, 40));
         f.config = nullptr;
       })},
      {"hf-config-model-type", hf_case([](HfFiles& f) { f.config["model_type"] = "gpt2"; })},
      {"hf-config-string", hf_case([](HfFiles& f) { f.config["hidden_size"] = "64"; })},
      {"hf-config-negative", hf_case([](HfFiles& f) { f.config["num_hidden_layers"] = -1; })},
      {"hf-config-rope-scaling", hf_case([](HfFiles& f) {
         f.config["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8}};
       })},
      {"hf-header-length", hf_case([](HfFiles& f) {
         std::string bytes(8, '\0');
         const std::uint64_t length = 1000000000000ULL;
         std::memcpy(bytes.data(), &length, sizeof(length));
         write_raw(f.dir + "/model.safetensors", bytes + f.header.dump() + f.data);
         f.header = nullptr;
       })},
      {"hf-header-json", hf_case([](HfFiles& f) {
         const std::string text = "{\"a\": ";
         std::string bytes(8, '\0');
         const std::uint64_t length = text.size();
         std::memcpy(bytes.data(), &length, sizeof(length));
         write_raw(f.dir + "/model.safetensors", bytes + text + f.data);
         f.header = nullptr;
       })},
      {"hf-truncated", hf_case([](HfFiles& f) { f.data.resize(f.data.size() / 2); })},
      {"hf-offsets", hf_case([](HfFiles& f) {
         auto& offsets = f.header["model.norm.weight"]["data_offsets"];
         const std::uint64_t size =
             offsets[1].get<std::uint64_t>() - offsets[0].get<std::uint64_t>();
         offsets = {f.data.size() - 4, f.data.size() - 4 + size};
       })},
      {"hf-dtype", hf_case([](HfFiles& f) { f.header["model.norm.weight"]["dtype"] = "I32"; })},
      {"hf-missing-tensor", hf_case([](HfFiles& f) { f.header.erase("model.norm.weight"); })},
      {"hf-shape", hf_case([](HfFiles& f) {
         f.header["model.layers.0.mlp.gate_proj.weight"]["shape"] = {64, 172};
       })},
      {"hf-index-escape", hf_case([](HfFiles& f) {
         std::filesystem::remove(f.dir + "/model.safetensors");
         const nlohmann::json index = {
             {"weight_map", {{"model.norm.weight", "../other/model.safetensors"}}}};
         write_raw(f.dir + "/model.safetensors.index.json", index.dump());
         f.header = nullptr;
       })},
      {"tokenizer-json",
       [](const TempDir& dir) {
         write_raw(dir.file("tok.json"), R"({"version": "1.0", "model": {"type": "BPE"}})");
         return run_args(test::stories_checkpoint(), dir.file("tok.json"), "");
       }},
      {"tokenizer-tiktoken",
       [](const TempDir& dir) {
         write_raw(dir.file("tok.model"), "IQ== 0\nIg== 1\nIw== 2\n");
         return run_args(test::stories_checkpoint(), dir.file("tok.model"), "");
       }},
      {"plan-tokens",
       [](const TempDir&) {
         return std::string("plan --model llama-3-8b --hardware h100-sxm --tp 2 --tokens 512,abc");
       }},
      {"hf-config-deep", hf_case([](HfFiles& f) {
         write_raw(f.dir + "/config.json", std::string(100000, '[') + std::string(100000, ']'));
         f.config = nullptr;
       })},
      {"hf-config-symlink-loop", hf_case([](HfFiles& f) {
         std::filesystem::remove(f.dir + "/config.json");
         std::filesystem::create_symlink("config.json", f.dir + "/config.json");
         f.config = nullptr;
       })},
      {"hf-safetensors-fifo", hf_case([](HfFiles& f) {
         std::filesystem::remove(f.dir + "/model.safetensors");
         make_fifo(f.dir + "/model.safetensors");
         f.header = nullptr;
       })},
      {"model-fifo",
       [](const TempDir& dir) {
         make_fifo(dir.file("model.fifo"));
         return run_args(dir.file("model.fifo"), test::stories_tokenizer(), "");
       }},
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
  ASSERT_GE(rows.size(), 40U) << "the table in docs/bad-input.md did not parse";
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
