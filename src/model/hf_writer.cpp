// save_hf_checkpoint: ModelWeights -> config.json + safetensors, in HF's
// conventions (rotate-half q/k rows, 1-D norms and biases, optional shards).
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "flashcomm/error.hpp"
#include "flashcomm/hf.hpp"
#include "model/hf_layout.hpp"

namespace flashcomm {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::vector<float>& weights_of(const ModelWeights& w, Tensor t, int layer) {
  switch (t) {
    case Tensor::token_embedding:
      return w.token_embedding;
    case Tensor::final_norm:
      return w.final_norm;
    case Tensor::classifier:
      return w.classifier;
    default:
      break;
  }
  const LayerWeights& l = w.layers[static_cast<size_t>(layer)];
  switch (t) {
    case Tensor::attn_norm:
      return l.attn_norm;
    case Tensor::wq:
      return l.wq;
    case Tensor::wk:
      return l.wk;
    case Tensor::wv:
      return l.wv;
    case Tensor::wo:
      return l.wo;
    case Tensor::bq:
      return l.bq;
    case Tensor::bk:
      return l.bk;
    case Tensor::bv:
      return l.bv;
    case Tensor::q_norm:
      return l.q_norm;
    case Tensor::k_norm:
      return l.k_norm;
    case Tensor::ffn_norm:
      return l.ffn_norm;
    case Tensor::w_gate:
      return l.w_gate;
    case Tensor::w_up:
      return l.w_up;
    case Tensor::w_down:
      return l.w_down;
    default:
      break;
  }
  throw InternalError(fmt::format("no weights for tensor {}", to_string(t)));
}

// The engine's [rows, cols] tensor in HF's element order.
std::vector<float> in_hf_order(const std::vector<float>& v, Tensor t, const ModelConfig& c) {
  const TensorShape s = tensor_shape(c, t);
  const auto cols = static_cast<size_t>(s.cols);
  std::vector<float> out(v.size());
  for (int r = 0; r < s.rows; ++r) {
    const int dst_row = hf_layout::rows_permuted(t) ? hf_layout::hf_index(r, c.head_dim) : r;
    for (int col = 0; col < s.cols; ++col) {
      const int dst_col = hf_layout::cols_permuted(t) ? hf_layout::hf_index(col, c.head_dim) : col;
      out[static_cast<size_t>(dst_row) * cols + static_cast<size_t>(dst_col)] =
          v[static_cast<size_t>(r) * cols + static_cast<size_t>(col)];
    }
  }
  return out;
}

// The shortest decimal that reads back as the same float, so config.json
// says 1e-05 rather than 9.999999747378752e-06.
double as_written(float f) {
  return std::stod(fmt::format("{}", f));
}

json config_json(const ModelConfig& c, const std::string& model_type, DType dtype) {
  const char* architecture = model_type == "llama"     ? "LlamaForCausalLM"
                             : model_type == "mistral" ? "MistralForCausalLM"
                             : model_type == "qwen2"   ? "Qwen2ForCausalLM"
                                                       : "Qwen3ForCausalLM";
  json j = {{"architectures", {architecture}},
            {"model_type", model_type},
            {"hidden_size", c.d_model},
            {"intermediate_size", c.hidden_dim},
            {"num_hidden_layers", c.n_layers},
            {"num_attention_heads", c.n_heads},
            {"num_key_value_heads", c.n_kv_heads},
            {"head_dim", c.head_dim},
            {"vocab_size", c.vocab_size},
            {"max_position_embeddings", c.seq_len},
            {"rope_theta", as_written(c.rope_theta)},
            {"rms_norm_eps", as_written(c.norm_eps)},
            {"tie_word_embeddings", c.shared_classifier},
            {"hidden_act", "silu"},
            {"rope_scaling", nullptr},
            {"torch_dtype", dtype == DType::f32   ? "float32"
                            : dtype == DType::f16 ? "float16"
                                                  : "bfloat16"}};
  if (model_type == "llama" || model_type == "qwen3") {
    j["attention_bias"] = false;
  }
  if (model_type == "mistral") {
    j["sliding_window"] = nullptr;
  }
  if (model_type == "qwen2" || model_type == "qwen3") {
    j["use_sliding_window"] = false;
  }
  return j;
}

void check_savable(const ModelWeights& w, const std::string& dir, DType dtype,
                   const std::string& model_type, int shards) {
  const ModelConfig& c = w.config;
  if (dtype == DType::other) {
    throw ConfigError(fmt::format("{}: an HF checkpoint is written as F32, F16 or BF16", dir));
  }
  const bool qwen2 = model_type == "qwen2";
  const bool qwen3 = model_type == "qwen3";
  if (!qwen2 && !qwen3 && model_type != "llama" && model_type != "mistral") {
    throw ConfigError(fmt::format("{}: model_type \"{}\" is not one of {}", dir, model_type,
                                  hf_supported_model_types()));
  }
  if (c.qkv_bias != qwen2 || c.qk_norm != qwen3) {
    throw ConfigError(fmt::format(
        "{}: a {} checkpoint {} q/k/v biases and {} q/k norms, but the model has qkv_bias {} and "
        "qk_norm {}",
        dir, model_type, qwen2 ? "has" : "has no", qwen3 ? "has" : "has no", c.qkv_bias,
        c.qk_norm));
  }
  try {
    check_config(c, dir);
  } catch (const FormatError& e) {
    throw ConfigError(e.what());
  }
  if (w.layers.size() != static_cast<size_t>(c.n_layers)) {
    throw ConfigError(fmt::format("{}: the weights have {} layers, the config says {}", dir,
                                  w.layers.size(), c.n_layers));
  }
  const std::vector<hf_layout::Entry> entries = hf_layout::entries(c);
  if (shards < 1 || static_cast<size_t>(shards) > entries.size()) {
    throw ConfigError(
        fmt::format("{}: shards is {}, expected 1 to {} (one tensor per file at most)", dir, shards,
                    entries.size()));
  }
  for (const hf_layout::Entry& e : entries) {
    const TensorShape s = tensor_shape(c, e.tensor);
    const size_t need = static_cast<size_t>(s.rows) * static_cast<size_t>(s.cols);
    if (weights_of(w, e.tensor, e.layer).size() != need) {
      throw ConfigError(fmt::format("{}: {} has {} floats, the config needs {}", dir, e.name,
                                    weights_of(w, e.tensor, e.layer).size(), need));
    }
  }
}

void write_text(const fs::path& path, const std::string& text) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    throw ConfigError(fmt::format("{}: cannot create: {}", path.string(), std::strerror(errno)));
  }
  const bool wrote = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  if (std::fclose(f) != 0 || !wrote) {
    throw ConfigError(fmt::format("{}: cannot write: {}", path.string(), std::strerror(errno)));
  }
}

}  // namespace

void save_hf_checkpoint(const ModelWeights& weights, const std::string& dir, DType dtype,
                        const std::string& model_type, int shards) {
  check_savable(weights, dir, dtype, model_type, shards);
  const ModelConfig& c = weights.config;

  std::vector<SafetensorsBlob> blobs;
  std::uint64_t total = 0;
  for (const hf_layout::Entry& e : hf_layout::entries(c)) {
    const std::vector<float> values =
        in_hf_order(weights_of(weights, e.tensor, e.layer), e.tensor, c);
    SafetensorsBlob b;
    b.name = e.name;
    b.dtype = dtype;
    b.shape = e.shape;
    b.bytes.resize(values.size() * dtype_bytes(dtype));
    convert_from_f32(dtype, values.data(), values.size(), b.bytes.data());
    total += b.bytes.size();
    blobs.push_back(std::move(b));
  }

  std::error_code error;
  fs::create_directories(dir, error);
  if (error || !fs::is_directory(dir)) {
    throw ConfigError(fmt::format("{}: cannot create the directory: {}", dir, error.message()));
  }
  // Left over from an earlier checkpoint, they would shadow (a single file
  // wins over an index) or confuse what is written now.
  fs::remove(fs::path(dir) / "model.safetensors", error);
  fs::remove(fs::path(dir) / "model.safetensors.index.json", error);

  if (shards == 1) {
    write_safetensors((fs::path(dir) / "model.safetensors").string(), blobs);
  } else {
    // Consecutive tensors per file, cut where the running total passes each
    // 1/shards of the bytes, every file holding at least one tensor.
    json weight_map = json::object();
    size_t next = 0;
    std::uint64_t written = 0;
    for (int s = 0; s < shards; ++s) {
      const std::string name = fmt::format("model-{:05}-of-{:05}.safetensors", s + 1, shards);
      const std::uint64_t target = total * static_cast<std::uint64_t>(s + 1) / shards;
      std::vector<SafetensorsBlob> part;
      while (next < blobs.size() &&
             (part.empty() || s == shards - 1 ||
              (written < target && blobs.size() - next > static_cast<size_t>(shards - s - 1)))) {
        written += blobs[next].bytes.size();
        weight_map[blobs[next].name] = name;
        part.push_back(std::move(blobs[next]));
        ++next;
      }
      write_safetensors((fs::path(dir) / name).string(), part);
    }
    const json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    write_text(fs::path(dir) / "model.safetensors.index.json", index.dump(2) + "\n");
  }
  write_text(fs::path(dir) / "config.json", config_json(c, model_type, dtype).dump(2) + "\n");
}

}  // namespace flashcomm
