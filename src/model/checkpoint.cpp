// Opening a checkpoint of either format.
#include "flashcomm/checkpoint.hpp"

#include <filesystem>

#include "flashcomm/error.hpp"
#include "flashcomm/hf.hpp"

namespace flashcomm {

namespace {

namespace fs = std::filesystem;

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

}  // namespace

CheckpointFormat checkpoint_format(const std::string& path) {
  std::error_code error;
  if (fs::is_directory(path, error)) {
    return CheckpointFormat::hf;
  }
  const std::string name = fs::path(path).filename().string();
  if (ends_with(name, ".safetensors") || name == "config.json" ||
      name == "model.safetensors.index.json") {
    throw FormatError(fmt::format(
        "{} is a file of a Hugging Face checkpoint; pass its directory ({}), which holds "
        "config.json and the safetensors weights",
        path, fs::path(path).parent_path().string()));
  }
  return CheckpointFormat::llama2c;
}

const char* to_string(CheckpointFormat format) {
  return format == CheckpointFormat::hf ? "hf" : "llama2c";
}

ModelConfig read_checkpoint_config(const std::string& path) {
  if (checkpoint_format(path) == CheckpointFormat::hf) {
    return HfSource(path).config();
  }
  return read_llama2c_config(path);
}

Checkpoint::Checkpoint(const std::string& path) : format_(checkpoint_format(path)) {
  if (format_ == CheckpointFormat::hf) {
    source_ = std::make_unique<HfSource>(path);
  } else {
    weights_ = std::make_unique<ModelWeights>(load_llama2c(path));
    source_ = std::make_unique<MemorySource>(*weights_);
  }
}

Checkpoint::~Checkpoint() = default;
Checkpoint::Checkpoint(Checkpoint&&) noexcept = default;
Checkpoint& Checkpoint::operator=(Checkpoint&&) noexcept = default;

const ModelWeights& Checkpoint::full_weights() {
  if (!weights_) {
    weights_ = std::make_unique<ModelWeights>(materialize(*source_));
  }
  return *weights_;
}

ConfigViewSource::ConfigViewSource(const WeightSource& source, const ModelConfig& config)
    : source_(source), config_(config) {
  ModelConfig same = config;
  const ModelConfig& full = source.config();
  FC_ASSERT(config.n_layers <= full.n_layers && config.seq_len <= full.seq_len,
            "a view of {} layers and seq_len {} of a model of {} and {}", config.n_layers,
            config.seq_len, full.n_layers, full.seq_len);
  same.n_layers = full.n_layers;
  same.seq_len = full.seq_len;
  FC_ASSERT(same.d_model == full.d_model && same.hidden_dim == full.hidden_dim &&
                same.n_heads == full.n_heads && same.n_kv_heads == full.n_kv_heads &&
                same.head_dim == full.head_dim && same.vocab_size == full.vocab_size &&
                same.shared_classifier == full.shared_classifier &&
                same.qkv_bias == full.qkv_bias && same.qk_norm == full.qk_norm,
            "a view may change only n_layers and seq_len");
}

void ConfigViewSource::do_read_block(Tensor tensor, int layer, int row0, int n_rows, int col0,
                                     int n_cols, float* out) const {
  source_.read_block(tensor, layer, row0, n_rows, col0, n_cols, out);
}

}  // namespace flashcomm
