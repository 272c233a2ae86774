// Shared helpers of the test suite.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "flashcomm/model.hpp"

namespace flashcomm::test {

// Path of a file under ../shared/models; throws (failing the test loudly)
// when it does not exist, so a missing model is never a silent skip.
std::string model_file(const std::string& relative);

std::string stories_checkpoint();  // stories260K/stories260K.bin (legacy layout)
std::string stories_checkpoint_v1();  // stories260K/stories260K-v1.bin ("ak42")
std::string stories_tokenizer();  // stories260K/tok512.bin

// The flashcomm command-line binary built beside the tests.
std::string flashcomm_binary();

// A command line's result.
struct Outcome {
  int exit_code = -1;
  std::string output;  // stdout, and stderr too unless sent elsewhere
};

// Runs a shell command line under a hard time limit, so that a hang fails the
// test with exit code 124 instead of blocking the suite. stderr joins stdout
// unless `stderr_to` names a file for it.
Outcome shell(const std::string& command, int timeout_s = 180, const std::string& stderr_to = "");

// Occurrences of `needle` in `haystack` (a message must appear exactly once).
size_t count(const std::string& haystack, const std::string& needle);

// The message of the FormatError `f` throws; a test failure (and "") when it
// throws something else or nothing.
std::string format_error_of(const std::function<void()>& f);

// `s` single-quoted for the shell.
std::string quote(const std::string& s);

// The command line that runs the flashcomm binary with `args`.
std::string flashcomm(const std::string& args);

// Small random models with shapes unlike stories260K, separate classifiers
// and q_dim != d_model:
//   [0] n_heads 6, n_kv_heads 3, head_dim 12, d_model 40: TP 1, 3, 6 (6 replicates KV)
//   [1] n_heads 8, n_kv_heads 1 (multi-query), head_dim 4, d_model 48: TP 1, 2, 4, 8
std::vector<ModelConfig> random_test_configs();

// Each of random_test_configs() with Qwen's attention features: with
// qkv_bias, with qk_norm, and with both (in that order, shape by shape).
std::vector<ModelConfig> qwen_test_configs();

// A SentencePiece model trained on a few short stories, serialized (the bytes
// of a tokenizer.model). `flags` are the trainer's, e.g. "--model_type=bpe
// --vocab_size=320 --byte_fallback=true". Takes well under a second.
std::string train_sentencepiece(const std::string& flags);

// The sentences train_sentencepiece() learns from.
const std::vector<std::string>& sentencepiece_training_text();

// Writes `bytes` to `path`; throws when it cannot.
void write_file(const std::string& path, const std::string& bytes);

// A fresh temporary directory, removed with everything in it when the
// object goes away.
class TempDir {
 public:
  explicit TempDir(const std::string& tag);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace flashcomm::test
