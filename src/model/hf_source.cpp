// HfSource: an HF checkpoint directory as a WeightSource over mapped
// safetensors files, checked against config.json when opened.
#include <algorithm>
#include <atomic>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "flashcomm/error.hpp"
#include "flashcomm/hf.hpp"
#include "flashcomm/log.hpp"
#include "model/hf_layout.hpp"
#include "model/untrusted_json.hpp"

namespace flashcomm {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr std::uint64_t kMaxConfigBytes = std::uint64_t{16} << 20;
constexpr std::uint64_t kMaxIndexBytes = std::uint64_t{100} << 20;

// A small text file (config.json, the index), read whole.
// Whether `path` exists; a path that cannot be looked at (a symbolic-link
// loop, a directory without search permission) is a bad checkpoint, named.
bool path_exists(const fs::path& path) {
  std::error_code error;
  const bool found = fs::exists(path, error);
  if (error) {
    throw FormatError(fmt::format("{}: cannot look at it: {}", path.string(), error.message()));
  }
  return found;
}

std::string read_text(const std::string& path, std::uint64_t max_bytes) {
  const MappedFile file(path);
  if (file.size() > max_bytes) {
    throw FormatError(
        fmt::format("{}: the file is {} bytes, expected at most {}", path, file.size(), max_bytes));
  }
  return std::string(file.bytes());
}

// A file name from the index must name a file of the directory itself.
void check_shard_name(const std::string& name, const std::string& tensor,
                      const std::string& index) {
  if (name.empty() || name == "." || name == ".." ||
      name.find_first_of(std::string("/\\\0", 3)) != std::string::npos) {
    throw FormatError(fmt::format(
        "{}: weight_map puts {} in \"{}\", expected a plain file name inside the checkpoint "
        "directory",
        index, tensor, name));
  }
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

}  // namespace

struct HfSource::Impl {
  struct Location {
    const SafetensorsFile* file = nullptr;
    const SafetensorsTensor* tensor = nullptr;
  };
  struct Slot {
    const unsigned char* data = nullptr;
    DType dtype = DType::f32;
    int cols = 0;  // of the engine's [rows, cols] view
    bool permute_rows = false;  // q/k rows, rotate-half order within each head
    bool permute_cols = false;  // q/k biases and norms: the same order along [1, n]
  };

  std::string dir;
  HfConfig hf;
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  std::map<std::string, Location> by_name;
  std::map<std::pair<int, int>, Slot> slots;  // (tensor, layer) -> where it lies
  std::atomic<std::uint64_t> bytes_read{0};

  void open_files();
  void check_and_bind();
};

void HfSource::Impl::open_files() {
  const fs::path single = fs::path(dir) / "model.safetensors";
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  std::map<std::string, std::string> weight_map;  // tensor -> file name, from the index
  std::vector<std::string> names;
  // As transformers does, a single file wins over an index beside it.
  if (path_exists(single)) {
    names.push_back(single.filename().string());
  } else if (path_exists(index)) {
    const std::string path = index.string();
    json doc;
    try {
      doc = detail::parse_untrusted_json(read_text(path, kMaxIndexBytes), path);
    } catch (const json::exception& e) {
      throw FormatError(fmt::format("{}: not valid JSON: {}", path, e.what()));
    }
    if (!doc.is_object() || !doc.contains("weight_map") || !doc["weight_map"].is_object()) {
      throw FormatError(fmt::format(
          "{}: expected a JSON object with a \"weight_map\" object of tensor -> file name", path));
    }
    std::set<std::string> unique;
    for (const auto& [tensor, file] : doc["weight_map"].items()) {
      if (!file.is_string()) {
        throw FormatError(fmt::format("{}: weight_map[\"{}\"] is {}, expected a file name", path,
                                      tensor, file.dump()));
      }
      check_shard_name(file.get<std::string>(), tensor, path);
      weight_map[tensor] = file.get<std::string>();
      unique.insert(file.get<std::string>());
    }
    if (unique.empty()) {
      throw FormatError(fmt::format("{}: weight_map is empty", path));
    }
    names.assign(unique.begin(), unique.end());
  } else {
    throw FormatError(
        fmt::format("{}: neither model.safetensors nor model.safetensors.index.json "
                    "is there (only safetensors weights are read)",
                    dir));
  }

  for (const std::string& name : names) {
    files.push_back(std::make_unique<SafetensorsFile>((fs::path(dir) / name).string()));
    const SafetensorsFile& f = *files.back();
    for (const SafetensorsTensor& t : f.tensors()) {
      const auto [it, fresh] = by_name.emplace(t.name, Location{&f, &t});
      if (!fresh) {
        throw FormatError(fmt::format("{}: tensor {} is in {} and in {}, expected it once", dir,
                                      t.name, it->second.file->path(), f.path()));
      }
    }
  }
  for (const auto& [tensor, file] : weight_map) {
    const auto it = by_name.find(tensor);
    const std::string named = (fs::path(dir) / file).string();
    if (it == by_name.end() || it->second.file->path() != named) {
      throw FormatError(fmt::format(
          "{}: weight_map puts {} in {}, but that file does not hold it{}", index.string(), tensor,
          file, it == by_name.end() ? "" : fmt::format(" ({} does)", it->second.file->path())));
    }
  }
}

void HfSource::Impl::check_and_bind() {
  const ModelConfig& c = hf.model;
  std::set<std::string> used;
  for (const hf_layout::Entry& e : hf_layout::entries(c)) {
    const auto it = by_name.find(e.name);
    if (it == by_name.end()) {
      throw FormatError(fmt::format(
          "{}: tensor {} is missing; a {} model with this config.json (num_hidden_layers {}{}{}{}) "
          "needs it",
          dir, e.name, hf.model_type, c.n_layers, c.shared_classifier ? "" : ", untied lm_head",
          c.qkv_bias ? ", q/k/v biases" : "", c.qk_norm ? ", q/k norms" : ""));
    }
    const SafetensorsTensor& t = *it->second.tensor;
    const std::string& file = it->second.file->path();
    if (t.dtype == DType::other) {
      throw FormatError(fmt::format("{}: tensor {} has dtype {}, expected F32, F16 or BF16", file,
                                    e.name, t.dtype_name));
    }
    if (t.shape != e.shape) {
      throw FormatError(fmt::format("{}: tensor {} has shape {}, expected {} = {} from config.json",
                                    file, e.name, shape_text(t.shape), e.shape_names,
                                    shape_text(e.shape)));
    }
    Slot s;
    s.data = it->second.file->data(t);
    s.dtype = t.dtype;
    s.cols = tensor_shape(c, e.tensor).cols;
    s.permute_rows = hf_layout::rows_permuted(e.tensor);
    s.permute_cols = hf_layout::cols_permuted(e.tensor);
    slots[{static_cast<int>(e.tensor), e.layer}] = s;
    used.insert(e.name);
  }

  for (const auto& [name, loc] : by_name) {
    if (used.count(name) != 0) {
      continue;
    }
    // RoPE's inverse frequencies (a buffer older exporters saved) are
    // recomputed by the engine; a tied lm_head is the embedding itself.
    const std::string inv_freq = "rotary_emb.inv_freq";
    const bool buffer = name.size() >= inv_freq.size() &&
                        name.compare(name.size() - inv_freq.size(), inv_freq.size(), inv_freq) == 0;
    if (buffer || (name == "lm_head.weight" && c.shared_classifier)) {
      log::debug("{}: ignoring tensor {}", loc.file->path(), name);
      continue;
    }
    throw FormatError(fmt::format(
        "{}: unexpected tensor {}: a {} model with this config.json has no such tensor, and "
        "ignoring it would compute another model (a bias or norm the config does not announce, "
        "or more layers than num_hidden_layers {}?)",
        loc.file->path(), name, hf.model_type, c.n_layers));
  }
}

HfSource::HfSource(const std::string& dir) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.dir = dir;
  std::error_code error;
  if (!fs::is_directory(dir, error)) {
    throw FormatError(fmt::format("{}: not a directory (an HF checkpoint is a directory){}", dir,
                                  error ? ": " + error.message() : std::string()));
  }
  const std::string config_path = (fs::path(dir) / "config.json").string();
  if (!path_exists(config_path)) {
    throw FormatError(fmt::format(
        "{}: no config.json (an HF checkpoint directory holds config.json and model.safetensors)",
        dir));
  }
  m.hf = parse_hf_config(read_text(config_path, kMaxConfigBytes), config_path);
  m.open_files();
  m.check_and_bind();
  log::debug("{}: {} model, {} file(s), {} tensors", dir, m.hf.model_type, m.files.size(),
             m.slots.size());
}

HfSource::~HfSource() = default;

const ModelConfig& HfSource::config() const {
  return impl_->hf.model;
}

const HfConfig& HfSource::hf_config() const {
  return impl_->hf;
}

std::uint64_t HfSource::bytes_read() const {
  return impl_->bytes_read.load();
}

void HfSource::do_read_block(Tensor tensor, int layer, int row0, int n_rows, int col0, int n_cols,
                             float* out) const {
  const int layer_key = hf_layout::per_layer(tensor) ? layer : 0;
  const auto it = impl_->slots.find({static_cast<int>(tensor), layer_key});
  FC_ASSERT(it != impl_->slots.end(), "no {} of layer {} in the checkpoint", to_string(tensor),
            layer);
  const Impl::Slot& s = it->second;
  const int hd = impl_->hf.model.head_dim;
  const std::size_t esize = dtype_bytes(s.dtype);
  // The base class checked the block against the shape, and opening checked
  // the shape against the tensor's bytes, so every offset below is inside it.
  for (int r = 0; r < n_rows; ++r) {
    const int src_row = s.permute_rows ? hf_layout::hf_index(row0 + r, hd) : row0 + r;
    const unsigned char* row =
        s.data + static_cast<std::size_t>(src_row) * static_cast<std::size_t>(s.cols) * esize;
    float* dst = out + static_cast<std::size_t>(r) * static_cast<std::size_t>(n_cols);
    if (!s.permute_cols) {
      convert_to_f32(s.dtype, row + static_cast<std::size_t>(col0) * esize,
                     static_cast<std::size_t>(n_cols), dst);
      continue;
    }
    for (int col = 0; col < n_cols; ++col) {
      const auto src_col = static_cast<std::size_t>(hf_layout::hf_index(col0 + col, hd));
      convert_to_f32(s.dtype, row + src_col * esize, 1, dst + col);
    }
  }
  impl_->bytes_read +=
      static_cast<std::uint64_t>(n_rows) * static_cast<std::uint64_t>(n_cols) * esize;
}

}  // namespace flashcomm
