#include "test_support.hpp"

#include "flashcomm/error.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <utility>

#include <sentencepiece_trainer.h>

#include <sys/wait.h>

#include <fmt/format.h>
#include <gtest/gtest.h>

namespace flashcomm::test {

std::string model_file(const std::string& relative) {
  const std::filesystem::path path = std::filesystem::path(FLASHCOMM_MODELS_DIR) / relative;
  if (!std::filesystem::exists(path)) {
    throw std::runtime_error(fmt::format(
        "test data {} is missing: the models must lie in ../shared/models beside the checkout",
        path.string()));
  }
  return path.string();
}

std::string stories_checkpoint() {
  return model_file("stories260K/stories260K.bin");
}
std::string stories_checkpoint_v1() {
  return model_file("stories260K/stories260K-v1.bin");
}
std::string stories_tokenizer() {
  return model_file("stories260K/tok512.bin");
}

std::string flashcomm_binary() {
  return FLASHCOMM_BINARY;
}

Outcome shell(const std::string& command, int timeout_s, const std::string& stderr_to) {
  const std::string line = fmt::format("timeout -k 5 {} {} 2>{}", timeout_s, command,
                                       stderr_to.empty() ? std::string("&1") : stderr_to);
  Outcome out;
  FILE* pipe = popen(line.c_str(), "r");
  if (pipe == nullptr) {
    throw std::runtime_error("popen failed for " + line);
  }
  char buf[4096];
  size_t n = 0;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) {
    out.output.append(buf, n);
  }
  const int status = pclose(pipe);
  out.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return out;
}

size_t count(const std::string& haystack, const std::string& needle) {
  size_t n = 0;
  for (size_t at = haystack.find(needle); at != std::string::npos;
       at = haystack.find(needle, at + 1)) {
    ++n;
  }
  return n;
}

std::string format_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const FormatError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected FormatError, got: " << e.what();
    return {};
  }
  ADD_FAILURE() << "expected FormatError, nothing was thrown";
  return {};
}

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  }
  return q + "'";
}

std::string flashcomm(const std::string& args) {
  return quote(flashcomm_binary()) + " " + args;
}

std::vector<ModelConfig> random_test_configs() {
  ModelConfig a;
  a.d_model = 40;
  a.hidden_dim = 72;
  a.n_layers = 2;
  a.n_heads = 6;
  a.n_kv_heads = 3;
  a.head_dim = 12;
  a.vocab_size = 97;
  a.seq_len = 64;
  a.shared_classifier = false;

  ModelConfig b = a;
  b.d_model = 48;
  b.hidden_dim = 64;
  b.n_layers = 3;
  b.n_heads = 8;
  b.n_kv_heads = 1;
  b.head_dim = 4;
  b.vocab_size = 61;
  b.rope_theta = 500000.0F;
  return {a, b};
}

std::vector<ModelConfig> qwen_test_configs() {
  const std::pair<bool, bool> variants[] = {{true, false}, {false, true}, {true, true}};
  std::vector<ModelConfig> out;
  for (const ModelConfig& base : random_test_configs()) {
    for (const auto& [bias, norm] : variants) {
      ModelConfig c = base;
      c.qkv_bias = bias;
      c.qk_norm = norm;
      out.push_back(c);
    }
  }
  return out;
}

namespace {

// Feeds the trainer from memory, so no corpus file is needed.
class Sentences : public sentencepiece::SentenceIterator {
 public:
  explicit Sentences(const std::vector<std::string>& sentences) : sentences_(sentences) {}
  bool done() const override { return at_ >= sentences_.size(); }
  void Next() override { ++at_; }
  const std::string& value() const override { return sentences_[at_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>& sentences_;
  size_t at_ = 0;
};

}  // namespace

const std::vector<std::string>& sentencepiece_training_text() {
  static const std::vector<std::string> text = [] {
    const std::vector<std::string> stories = {
        "Once upon a time, there was a little girl named Lily.",
        "She loved to play outside in the park with her friend Tom.",
        "One day, she saw a big, red ball under the old tree.",
        "\"Can I play with it?\" asked Tom. Lily said yes, and they played all day.",
        "The cat sat on the mat, and the dog ran to the river to drink.",
        "They were happy, and the sun was warm in the sky.",
    };
    std::vector<std::string> repeated;
    for (int i = 0; i < 20; ++i) {
      repeated.insert(repeated.end(), stories.begin(), stories.end());
    }
    return repeated;
  }();
  return text;
}

std::string train_sentencepiece(const std::string& flags) {
  Sentences sentences(sentencepiece_training_text());
  std::string model;
  const sentencepiece::util::Status status = sentencepiece::SentencePieceTrainer::Train(
      flags + " --minloglevel=2 --num_threads=1", &sentences, &model);
  if (!status.ok()) {
    throw std::runtime_error(
        fmt::format("training a SentencePiece model with {} failed: {}", flags, status.ToString()));
  }
  return model;
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) {
    throw std::runtime_error("cannot write " + path);
  }
}

TempDir::TempDir(const std::string& tag) {
  std::string pattern =
      (std::filesystem::temp_directory_path() / ("flashcomm-" + tag + "-XXXXXX")).string();
  if (mkdtemp(pattern.data()) == nullptr) {
    throw std::runtime_error("mkdtemp failed for " + pattern);
  }
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

}  // namespace flashcomm::test
