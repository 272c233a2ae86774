// A model on disk, whatever its format: a llama2.c checkpoint file or a
// Hugging Face checkpoint directory (hf.hpp), recognised from the path.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "flashcomm/model.hpp"
#include "flashcomm/weight_source.hpp"

namespace flashcomm {

enum class CheckpointFormat : std::uint8_t { llama2c, hf };

// A directory is an HF checkpoint, a file a llama2.c one. A file of an HF
// checkpoint (its config.json or a .safetensors file) throws FormatError
// asking for the directory.
CheckpointFormat checkpoint_format(const std::string& path);
const char* to_string(CheckpointFormat format);

// The configuration alone, after the checks that need no weight: the
// llama2.c header and size, or config.json and every safetensors header.
ModelConfig read_checkpoint_config(const std::string& path);

// An opened checkpoint. A llama2.c file is read whole into memory (the format
// is small and flat); an HF checkpoint stays mapped, so each rank's shard is
// read from it block by block.
class Checkpoint {
 public:
  explicit Checkpoint(const std::string& path);  // throws FormatError
  ~Checkpoint();
  Checkpoint(Checkpoint&&) noexcept;
  Checkpoint& operator=(Checkpoint&&) noexcept;

  CheckpointFormat format() const { return format_; }
  const ModelConfig& config() const { return source_->config(); }
  const WeightSource& source() const { return *source_; }
  // Every tensor in memory (for the unsharded reference pass): a llama2.c
  // file's own weights, or an HF checkpoint materialised on first use.
  const ModelWeights& full_weights();

 private:
  CheckpointFormat format_ = CheckpointFormat::llama2c;
  std::unique_ptr<ModelWeights> weights_;
  std::unique_ptr<WeightSource> source_;
};

// Another source seen through a smaller config: its first n_layers layers
// and a shorter seq_len (benchmarks of a few layers of a checkpoint).
class ConfigViewSource final : public WeightSource {
 public:
  // `config` must differ from the source's own only in fewer n_layers or a
  // smaller seq_len; `source` must outlive this view.
  ConfigViewSource(const WeightSource& source, const ModelConfig& config);
  const ModelConfig& config() const override { return config_; }

 protected:
  void do_read_block(Tensor tensor, int layer, int row0, int n_rows, int col0, int n_cols,
                     float* out) const override;

 private:
  const WeightSource& source_;
  ModelConfig config_;
};

}  // namespace flashcomm
