// llama2.c checkpoints: the legacy layout (version 0) and version 1 ("ak42").
//
// Both are a small header followed by raw little-endian float32 tensors; they
// differ in the header and in the order of the tensors. One table of tensors
// in file order (tensors_in_file_order) serves the reader and the writer, so
// the two cannot drift apart. Nothing read from a file is trusted: the header
// is validated and the exact file size it implies is compared with the real
// one before a single weight buffer is allocated. Every byte is read through a
// bounds-checked ByteReader (byte_reader.hpp): a file here, memory in fuzz/.
#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "flashcomm/error.hpp"
#include "flashcomm/model.hpp"
#include "model/byte_reader.hpp"

namespace flashcomm {

namespace {

// The tensors are copied between file and memory without byte swapping.
static_assert(std::endian::native == std::endian::little,
              "llama2.c checkpoints are little-endian; a big-endian host needs byte swapping");
static_assert(sizeof(float) == 4);

constexpr std::uint32_t kMagicV1 = 0x616b3432;  // "ak42" read as a little-endian uint32
constexpr std::int64_t kLegacyHeaderBytes = std::int64_t{7} * 4;
constexpr std::int64_t kV1HeaderBytes = 256;
constexpr std::int64_t kV1ParamsOffset = 8;  // after magic and version
constexpr std::int64_t kV1SharedOffset = 8 + 7 * 4;  // the shared_classifier byte

// ---------------------------------------------------------------------------
// The tensors of a checkpoint, in file order.

template <typename Weights>  // ModelWeights (reading) or const ModelWeights (writing)
struct TensorSlot {
  using Tensor =
      std::conditional_t<std::is_const_v<Weights>, const std::vector<float>, std::vector<float>>;
  Tensor* tensor = nullptr;  // nullptr: a legacy RoPE table, skipped on read, computed on write
  std::string name;
  std::int64_t floats = 0;
};

// `weights.layers` must already hold config.n_layers entries.
template <typename Weights>
std::vector<TensorSlot<Weights>> tensors_in_file_order(Weights& weights, int version) {
  const ModelConfig& c = weights.config;
  const std::int64_t d = c.d_model;
  const std::int64_t q_dim = c.q_dim();
  const std::int64_t kv_dim = c.kv_dim();
  const std::int64_t hidden = c.hidden_dim;
  const std::int64_t vocab = c.vocab_size;

  std::vector<TensorSlot<Weights>> slots;
  // All layers' copies of one tensor lie next to each other in both layouts.
  auto per_layer = [&](auto member, const char* name, std::int64_t floats) {
    for (size_t l = 0; l < weights.layers.size(); ++l) {
      slots.push_back(
          {&(weights.layers[l].*member), fmt::format("layers[{}].{}", l, name), floats});
    }
  };

  if (version == 0) {
    slots.push_back({&weights.token_embedding, "token_embedding", vocab * d});
    per_layer(&LayerWeights::attn_norm, "attn_norm", d);
    per_layer(&LayerWeights::wq, "wq", q_dim * d);
    per_layer(&LayerWeights::wk, "wk", kv_dim * d);
    per_layer(&LayerWeights::wv, "wv", kv_dim * d);
    per_layer(&LayerWeights::wo, "wo", d * q_dim);
    per_layer(&LayerWeights::ffn_norm, "ffn_norm", d);
    per_layer(&LayerWeights::w_gate, "w_gate", hidden * d);
    per_layer(&LayerWeights::w_down, "w_down", d * hidden);
    per_layer(&LayerWeights::w_up, "w_up", hidden * d);
    slots.push_back({&weights.final_norm, "final_norm", d});
    // RoPE tables [seq_len, head_dim/2], cos then sin; the engine computes its own.
    const std::int64_t table = std::int64_t{c.seq_len} * c.head_dim / 2;
    slots.push_back({nullptr, "freq_cis_real", table});
    slots.push_back({nullptr, "freq_cis_imag", table});
  } else {
    per_layer(&LayerWeights::attn_norm, "attn_norm", d);
    per_layer(&LayerWeights::ffn_norm, "ffn_norm", d);
    slots.push_back({&weights.final_norm, "final_norm", d});
    slots.push_back({&weights.token_embedding, "token_embedding", vocab * d});
    per_layer(&LayerWeights::wq, "wq", q_dim * d);
    per_layer(&LayerWeights::wk, "wk", kv_dim * d);
    per_layer(&LayerWeights::wv, "wv", kv_dim * d);
    per_layer(&LayerWeights::wo, "wo", d * q_dim);
    per_layer(&LayerWeights::w_gate, "w_gate", hidden * d);
    per_layer(&LayerWeights::w_down, "w_down", d * hidden);
    per_layer(&LayerWeights::w_up, "w_up", hidden * d);
  }
  if (!c.shared_classifier) {
    slots.push_back({&weights.classifier, "classifier", vocab * d});
  }
  return slots;
}

// Bytes of a whole checkpoint of this (checked) configuration; check_config
// bounds the parameter count, so this cannot overflow.
std::int64_t checkpoint_bytes(const ModelConfig& config, int version) {
  ModelWeights shape;
  shape.config = config;
  shape.layers.resize(static_cast<size_t>(config.n_layers));
  std::int64_t floats = 0;
  for (const auto& slot : tensors_in_file_order(shape, version)) {
    floats += slot.floats;
  }
  return (version == 0 ? kLegacyHeaderBytes : kV1HeaderBytes) + floats * 4;
}

// ---------------------------------------------------------------------------
// Reading.

std::int32_t int32_at(const unsigned char* bytes, std::int64_t offset) {
  std::int32_t value = 0;
  std::memcpy(&value, bytes + offset, sizeof(value));
  return value;
}

struct Header {
  ModelConfig config;
  int version = 0;
};

// The seven llama2.c parameters (dim, hidden_dim, n_layers, n_heads,
// n_kv_heads, vocab_size, seq_len) as a ModelConfig. In the legacy layout a
// negative vocab_size means a separate classifier.
ModelConfig config_from_params(const unsigned char* p, bool vocab_sign_is_sharing,
                               const std::string& path) {
  ModelConfig c;
  c.d_model = int32_at(p, 0);
  c.hidden_dim = int32_at(p, 4);
  c.n_layers = int32_at(p, 8);
  c.n_heads = int32_at(p, 12);
  c.n_kv_heads = int32_at(p, 16);
  const std::int64_t vocab = int32_at(p, 20);  // 64 bits: -INT32_MIN must not overflow
  c.seq_len = int32_at(p, 24);
  if (vocab_sign_is_sharing) {
    c.shared_classifier = vocab > 0;
    c.vocab_size = static_cast<int>(std::min<std::int64_t>(vocab < 0 ? -vocab : vocab, INT32_MAX));
  } else {
    c.vocab_size = static_cast<int>(vocab);
  }
  // The format has no head_dim: heads split d_model evenly. Sizes that are not
  // positive are left for check_config to name.
  if (c.d_model > 0 && c.n_heads > 0 && c.d_model % c.n_heads != 0) {
    throw FormatError(
        fmt::format("{}: dim {} is not a multiple of n_heads {}", path, c.d_model, c.n_heads));
  }
  c.head_dim = c.n_heads > 0 ? c.d_model / c.n_heads : 0;
  c.rope_theta = 10000.0F;
  c.norm_eps = 1e-5F;
  return c;
}

Header read_header(detail::ByteReader& in) {
  const std::string& path = in.name();
  if (in.size() < 4) {
    throw FormatError(fmt::format(
        "{}: truncated: the file is {} bytes, too short for a llama2.c checkpoint header", path,
        in.size()));
  }
  // Read as much as the longer header needs.
  unsigned char bytes[kV1HeaderBytes] = {};
  in.read(0, bytes, std::min(in.size(), kV1HeaderBytes), "the header");
  std::uint32_t magic = 0;
  std::memcpy(&magic, bytes, sizeof(magic));

  Header header;
  if (magic == kMagicV1) {
    header.version = 1;
    if (in.size() < kV1HeaderBytes) {
      throw FormatError(fmt::format("{}: truncated: the file is {} bytes, a version 1 header is {}",
                                    path, in.size(), kV1HeaderBytes));
    }
    const std::int32_t version = int32_at(bytes, 4);
    if (version != 1) {
      throw FormatError(fmt::format(
          "{}: unsupported llama2.c checkpoint version {} after the \"ak42\" magic, expected 1",
          path, version));
    }
    const unsigned shared = bytes[kV1SharedOffset];
    if (shared > 1) {
      throw FormatError(
          fmt::format("{}: shared_classifier byte is {}, expected 0 or 1", path, shared));
    }
    for (std::int64_t i = kV1SharedOffset + 1; i < kV1HeaderBytes; ++i) {
      if (bytes[i] != 0) {
        throw FormatError(
            fmt::format("{}: header padding byte {} is {}, expected 0 (corrupt version 1 header)",
                        path, i, static_cast<unsigned>(bytes[i])));
      }
    }
    header.config = config_from_params(bytes + kV1ParamsOffset, false, path);
    header.config.shared_classifier = shared == 1;
    check_config(header.config, path);
    return header;
  }

  header.version = 0;
  if (in.size() < kLegacyHeaderBytes) {
    throw FormatError(fmt::format("{}: truncated: the file is {} bytes, a legacy header is {}",
                                  path, in.size(), kLegacyHeaderBytes));
  }
  // A legacy file has no magic, so a version 1 file with a damaged magic lands
  // here; say so, since the sizes it yields are then meaningless.
  try {
    header.config = config_from_params(bytes, true, path);
    check_config(header.config, path);
  } catch (const FormatError& e) {
    throw FormatError(fmt::format(
        "{} (read as a legacy llama2.c checkpoint, since the file does not start with the "
        "version 1 magic \"ak42\")",
        e.what()));
  }
  return header;
}

// Validates a checkpoint's header and its exact size.
Header open_checkpoint(detail::ByteReader& in) {
  Header header = read_header(in);
  const std::int64_t expected = checkpoint_bytes(header.config, header.version);
  if (in.size() != expected) {
    const ModelConfig& c = header.config;
    throw FormatError(fmt::format(
        "{}: {}: the file is {} bytes, expected {} for a version {} checkpoint with dim {}, "
        "hidden_dim {}, n_layers {}, n_heads {}, n_kv_heads {}, vocab_size {}, seq_len {}, {} "
        "classifier",
        in.name(),
        in.size() < expected ? "truncated" : fmt::format("{} extra bytes", in.size() - expected),
        in.size(), expected, header.version, c.d_model, c.hidden_dim, c.n_layers, c.n_heads,
        c.n_kv_heads, c.vocab_size, c.seq_len, c.shared_classifier ? "shared" : "separate"));
  }
  return header;
}

// ---------------------------------------------------------------------------
// Writing.

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

class OutputFile {
 public:
  explicit OutputFile(const std::string& path)
      : path_(path), file_(std::fopen(path.c_str(), "wb")) {
    if (!file_) {
      throw ConfigError(fmt::format("{}: cannot create: {}", path, std::strerror(errno)));
    }
  }

  void write(const void* src, std::int64_t bytes) {
    if (std::fwrite(src, 1, static_cast<size_t>(bytes), file_.get()) !=
        static_cast<size_t>(bytes)) {
      throw ConfigError(fmt::format("{}: cannot write: {}", path_, std::strerror(errno)));
    }
  }

  void close() {
    if (std::fclose(file_.release()) != 0) {
      throw ConfigError(fmt::format("{}: cannot write: {}", path_, std::strerror(errno)));
    }
  }

 private:
  std::string path_;
  std::unique_ptr<std::FILE, FileCloser> file_;
};

// The RoPE table of the legacy layout, [seq_len, head_dim/2], computed in
// float32 the way llama2.c's exporter does, so that real files round-trip.
std::vector<float> rope_table(const ModelConfig& c, bool sine) {
  const int half = c.head_dim / 2;
  std::vector<float> table(static_cast<size_t>(c.seq_len) * static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) {
    const float freq =
        1.0F / std::pow(c.rope_theta, static_cast<float>(2 * i) / static_cast<float>(c.head_dim));
    for (int t = 0; t < c.seq_len; ++t) {
      const float angle = static_cast<float>(t) * freq;
      table[static_cast<size_t>(t) * static_cast<size_t>(half) + static_cast<size_t>(i)] =
          sine ? std::sin(angle) : std::cos(angle);
    }
  }
  return table;
}

void check_savable(const ModelWeights& weights, const std::string& path, int version) {
  const ModelConfig& c = weights.config;
  if (version != 0 && version != 1) {
    throw ConfigError(
        fmt::format("{}: cannot write llama2.c checkpoint version {}, only 0 or 1", path, version));
  }
  try {
    check_config(c, path);
  } catch (const FormatError& e) {
    throw ConfigError(e.what());
  }
  // The format has no place for Qwen's extra tensors.
  if (c.qkv_bias || c.qk_norm) {
    throw ConfigError(fmt::format(
        "{}: llama2.c checkpoints hold no q/k/v biases or q/k norms, got a model with qkv_bias {} "
        "and qk_norm {} (expected both false)",
        path, c.qkv_bias, c.qk_norm));
  }
  // llama2.c stores no head_dim; a reader derives it as dim / n_heads.
  if (c.head_dim * c.n_heads != c.d_model) {
    throw ConfigError(fmt::format(
        "{}: llama2.c checkpoints need head_dim * n_heads == d_model, got {} * {} != {}", path,
        c.head_dim, c.n_heads, c.d_model));
  }
  if (weights.layers.size() != static_cast<size_t>(c.n_layers)) {
    throw ConfigError(fmt::format("{}: the weights have {} layers, the config says {}", path,
                                  weights.layers.size(), c.n_layers));
  }
}

}  // namespace

ModelConfig detail::read_llama2c_config(ByteReader& in) {
  return open_checkpoint(in).config;
}

ModelWeights detail::load_llama2c(ByteReader& in) {
  const Header header = open_checkpoint(in);

  ModelWeights weights;
  weights.config = header.config;
  weights.layers.resize(static_cast<size_t>(header.config.n_layers));
  std::int64_t offset = header.version == 0 ? kLegacyHeaderBytes : kV1HeaderBytes;
  for (const auto& slot : tensors_in_file_order(weights, header.version)) {
    const std::int64_t bytes = slot.floats * 4;
    if (slot.tensor != nullptr) {
      slot.tensor->resize(static_cast<size_t>(slot.floats));
      in.read(offset, slot.tensor->data(), bytes, slot.name);
    }
    offset += bytes;
  }
  return weights;
}

ModelConfig read_llama2c_config(const std::string& path) {
  detail::FileReader in(path, "checkpoint");
  return detail::read_llama2c_config(in);
}

ModelWeights load_llama2c(const std::string& path) {
  detail::FileReader in(path, "checkpoint");
  return detail::load_llama2c(in);
}

void save_llama2c(const ModelWeights& weights, const std::string& path, int version) {
  check_savable(weights, path, version);
  const ModelConfig& c = weights.config;
  const auto slots = tensors_in_file_order(weights, version);
  // Validate every tensor before creating the file, so a bad call leaves nothing behind.
  for (const auto& slot : slots) {
    if (slot.tensor != nullptr && slot.tensor->size() != static_cast<size_t>(slot.floats)) {
      throw ConfigError(fmt::format("{}: {} has {} floats, the config needs {}", path, slot.name,
                                    slot.tensor->size(), slot.floats));
    }
  }

  // Header: the seven parameters, preceded by magic and version in version 1.
  const std::int32_t vocab = version == 0 && !c.shared_classifier ? -c.vocab_size : c.vocab_size;
  const std::int32_t params[7] = {c.d_model,    c.hidden_dim, c.n_layers, c.n_heads,
                                  c.n_kv_heads, vocab,        c.seq_len};
  std::vector<unsigned char> header;
  auto append = [&header](const void* src, size_t bytes) {
    const auto* p = static_cast<const unsigned char*>(src);
    header.insert(header.end(), p, p + bytes);
  };
  if (version == 1) {
    const std::int32_t version_field = 1;
    append(&kMagicV1, sizeof(kMagicV1));
    append(&version_field, sizeof(version_field));
    append(params, sizeof(params));
    header.push_back(c.shared_classifier ? 1 : 0);
    header.resize(static_cast<size_t>(kV1HeaderBytes), 0);
  } else {
    append(params, sizeof(params));
  }

  OutputFile out(path);
  out.write(header.data(), static_cast<std::int64_t>(header.size()));
  for (const auto& slot : slots) {
    if (slot.tensor == nullptr) {
      const std::vector<float> table = rope_table(c, slot.name == "freq_cis_imag");
      out.write(table.data(), slot.floats * 4);
    } else {
      out.write(slot.tensor->data(), slot.floats * 4);
    }
  }
  out.close();
}

}  // namespace flashcomm
