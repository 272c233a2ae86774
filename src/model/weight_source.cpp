// Weight sources: block reads from memory and from counter-based random values.
#include "flashcomm/weight_source.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "flashcomm/error.hpp"

namespace flashcomm {

namespace {

bool per_layer(Tensor t) {
  return t != Tensor::token_embedding && t != Tensor::final_norm && t != Tensor::classifier;
}

// Which LayerWeights member holds each per-layer tensor.
struct LayerField {
  Tensor tensor;
  std::vector<float> LayerWeights::*member;
};
constexpr LayerField kLayerFields[] = {
    {Tensor::attn_norm, &LayerWeights::attn_norm},
    {Tensor::wq, &LayerWeights::wq},
    {Tensor::wk, &LayerWeights::wk},
    {Tensor::wv, &LayerWeights::wv},
    {Tensor::wo, &LayerWeights::wo},
    {Tensor::ffn_norm, &LayerWeights::ffn_norm},
    {Tensor::w_gate, &LayerWeights::w_gate},
    {Tensor::w_down, &LayerWeights::w_down},
    {Tensor::w_up, &LayerWeights::w_up},
    {Tensor::bq, &LayerWeights::bq},
    {Tensor::bk, &LayerWeights::bk},
    {Tensor::bv, &LayerWeights::bv},
    {Tensor::q_norm, &LayerWeights::q_norm},
    {Tensor::k_norm, &LayerWeights::k_norm},
};

const std::vector<float>& tensor_of(const ModelWeights& w, Tensor t, int layer) {
  switch (t) {
    case Tensor::token_embedding:
      return w.token_embedding;
    case Tensor::final_norm:
      return w.final_norm;
    case Tensor::classifier:
      return w.output_weight();
    default:
      break;
  }
  const LayerWeights& l = w.layers.at(static_cast<size_t>(layer));
  for (const LayerField& f : kLayerFields) {
    if (f.tensor == t) {
      return l.*f.member;
    }
  }
  throw InternalError(fmt::format("no tensor {}", static_cast<int>(t)));
}

// splitmix64's finaliser: a fast, well-mixed 64-bit hash.
std::uint64_t mix(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

}  // namespace

TensorShape tensor_shape(const ModelConfig& c, Tensor t) {
  switch (t) {
    case Tensor::token_embedding:
    case Tensor::classifier:
      return {c.vocab_size, c.d_model};
    case Tensor::attn_norm:
    case Tensor::ffn_norm:
    case Tensor::final_norm:
      return {1, c.d_model};
    case Tensor::wq:
      return {c.q_dim(), c.d_model};
    case Tensor::wk:
    case Tensor::wv:
      return {c.kv_dim(), c.d_model};
    case Tensor::wo:
      return {c.d_model, c.q_dim()};
    case Tensor::w_gate:
    case Tensor::w_up:
      return {c.hidden_dim, c.d_model};
    case Tensor::w_down:
      return {c.d_model, c.hidden_dim};
    case Tensor::bq:
      return {1, c.q_dim()};
    case Tensor::bk:
    case Tensor::bv:
      return {1, c.kv_dim()};
    case Tensor::q_norm:
    case Tensor::k_norm:
      return {1, c.head_dim};
  }
  return {};
}

const char* to_string(Tensor t) {
  switch (t) {
    case Tensor::token_embedding:
      return "token_embedding";
    case Tensor::attn_norm:
      return "attn_norm";
    case Tensor::wq:
      return "wq";
    case Tensor::wk:
      return "wk";
    case Tensor::wv:
      return "wv";
    case Tensor::wo:
      return "wo";
    case Tensor::ffn_norm:
      return "ffn_norm";
    case Tensor::w_gate:
      return "w_gate";
    case Tensor::w_down:
      return "w_down";
    case Tensor::w_up:
      return "w_up";
    case Tensor::final_norm:
      return "final_norm";
    case Tensor::classifier:
      return "classifier";
    case Tensor::bq:
      return "bq";
    case Tensor::bk:
      return "bk";
    case Tensor::bv:
      return "bv";
    case Tensor::q_norm:
      return "q_norm";
    case Tensor::k_norm:
      return "k_norm";
  }
  return "unknown";
}

bool has_tensor(const ModelConfig& c, Tensor t) {
  switch (t) {
    case Tensor::classifier:
      return !c.shared_classifier;
    case Tensor::bq:
    case Tensor::bk:
    case Tensor::bv:
      return c.qkv_bias;
    case Tensor::q_norm:
    case Tensor::k_norm:
      return c.qk_norm;
    default:
      return true;
  }
}

void WeightSource::read_block(Tensor tensor, int layer, int row0, int n_rows, int col0, int n_cols,
                              float* out) const {
  const ModelConfig& c = config();
  const TensorShape s = tensor_shape(c, tensor);
  FC_ASSERT(!per_layer(tensor) || (layer >= 0 && layer < c.n_layers), "{} of layer {} of {}",
            to_string(tensor), layer, c.n_layers);
  FC_ASSERT(tensor != Tensor::classifier || !c.shared_classifier,
            "the classifier is shared with the embedding");
  FC_ASSERT(has_tensor(c, tensor), "the model has no {} (qkv_bias {}, qk_norm {})",
            to_string(tensor), c.qkv_bias, c.qk_norm);
  FC_ASSERT(row0 >= 0 && n_rows >= 0 && row0 + n_rows <= s.rows && col0 >= 0 && n_cols >= 0 &&
                col0 + n_cols <= s.cols,
            "block rows {}+{} cols {}+{} of {} [{}, {}]", row0, n_rows, col0, n_cols,
            to_string(tensor), s.rows, s.cols);
  do_read_block(tensor, layer, row0, n_rows, col0, n_cols, out);
}

std::vector<float> WeightSource::rows(Tensor tensor, int layer, int row0, int n_rows) const {
  const int cols = tensor_shape(config(), tensor).cols;
  std::vector<float> out(static_cast<size_t>(n_rows) * static_cast<size_t>(cols));
  read_block(tensor, layer, row0, n_rows, 0, cols, out.data());
  return out;
}

std::vector<float> WeightSource::columns(Tensor tensor, int layer, int col0, int n_cols) const {
  const int rows = tensor_shape(config(), tensor).rows;
  std::vector<float> out(static_cast<size_t>(rows) * static_cast<size_t>(n_cols));
  read_block(tensor, layer, 0, rows, col0, n_cols, out.data());
  return out;
}

MemorySource::MemorySource(const ModelWeights& weights) : w_(weights) {
  check_weights(w_, "weights in memory");
}

void MemorySource::do_read_block(Tensor tensor, int layer, int row0, int n_rows, int col0,
                                 int n_cols, float* out) const {
  const std::vector<float>& m = tensor_of(w_, tensor, layer);
  const TensorShape shape = tensor_shape(w_.config, tensor);
  const size_t cols = static_cast<size_t>(shape.cols);
  // check_weights at construction makes this hold; a later change to the
  // weights must not turn into a read past the end.
  FC_ASSERT(m.size() == static_cast<size_t>(shape.rows) * cols, "{} of layer {} holds {} floats",
            to_string(tensor), layer, m.size());
  for (int r = 0; r < n_rows; ++r) {
    const float* src = m.data() + static_cast<size_t>(row0 + r) * cols + col0;
    std::copy_n(src, n_cols, out + static_cast<size_t>(r) * static_cast<size_t>(n_cols));
  }
}

RandomSource::RandomSource(const ModelConfig& config, std::uint64_t seed)
    : config_(config), seed_(seed) {
  check_config(config_, "random_weights");
}

void RandomSource::do_read_block(Tensor tensor, int layer, int row0, int n_rows, int col0,
                                 int n_cols, float* out) const {
  const TensorShape s = tensor_shape(config_, tensor);
  double lo = -1.0;
  double hi = 1.0;
  if (tensor == Tensor::attn_norm || tensor == Tensor::ffn_norm || tensor == Tensor::final_norm ||
      tensor == Tensor::q_norm || tensor == Tensor::k_norm) {
    // Near 1, different enough from 1 that a missing multiply shows.
    lo = 0.8;
    hi = 1.2;
  } else if (tensor == Tensor::bq || tensor == Tensor::bk || tensor == Tensor::bv) {
    // Below the projections' own outputs (about 0.6 in size at unit-rms
    // inputs), large enough that a missing or misplaced bias shows.
    lo = -0.5;
    hi = 0.5;
  } else if (tensor != Tensor::token_embedding) {
    // Like a default linear-layer init, so activations keep unit size.
    hi = 1.0 / std::sqrt(static_cast<double>(s.cols));
    lo = -hi;
  }
  const std::uint64_t stream = mix(
      seed_ ^ mix((static_cast<std::uint64_t>(tensor) << 32) | static_cast<std::uint32_t>(layer)));
  for (int r = 0; r < n_rows; ++r) {
    for (int col = 0; col < n_cols; ++col) {
      const std::uint64_t index =
          static_cast<std::uint64_t>(row0 + r) * static_cast<std::uint64_t>(s.cols) +
          static_cast<std::uint64_t>(col0 + col);
      const double unit = static_cast<double>(mix(stream + index) >> 11) * 0x1.0p-53;
      // Two statements, so no compiler fuses them into a differently rounded FMA.
      const double offset = (hi - lo) * unit;
      out[static_cast<size_t>(r) * static_cast<size_t>(n_cols) + static_cast<size_t>(col)] =
          static_cast<float>(lo + offset);
    }
  }
}

ModelWeights materialize(const WeightSource& source) {
  const ModelConfig& c = source.config();
  ModelWeights w;
  w.config = c;
  w.token_embedding = source.rows(Tensor::token_embedding, 0, 0, c.vocab_size);
  w.layers.resize(static_cast<size_t>(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    for (const LayerField& f : kLayerFields) {
      if (has_tensor(c, f.tensor)) {
        w.layers[static_cast<size_t>(l)].*f.member =
            source.rows(f.tensor, l, 0, tensor_shape(c, f.tensor).rows);
      }
    }
  }
  w.final_norm = source.rows(Tensor::final_norm, 0, 0, 1);
  if (!c.shared_classifier) {
    w.classifier = source.rows(Tensor::classifier, 0, 0, c.vocab_size);
  }
  return w;
}

void check_weights(const ModelWeights& w, const std::string& source) {
  const ModelConfig& c = w.config;
  check_config(c, source);
  const auto check = [&](const std::vector<float>& v, Tensor t, const std::string& name) {
    const TensorShape shape = tensor_shape(c, t);
    const size_t want =
        has_tensor(c, t) ? static_cast<size_t>(shape.rows) * static_cast<size_t>(shape.cols) : 0;
    if (v.size() != want) {
      throw FormatError(
          fmt::format("{}: {} holds {} floats, expected {} ([{}, {}]{}; qkv_bias {}, qk_norm {})",
                      source, name, v.size(), want, shape.rows, shape.cols,
                      has_tensor(c, t) ? "" : ", absent", c.qkv_bias, c.qk_norm));
    }
  };
  check(w.token_embedding, Tensor::token_embedding, "token_embedding");
  check(w.final_norm, Tensor::final_norm, "final_norm");
  check(w.classifier, Tensor::classifier, "classifier");
  if (w.layers.size() != static_cast<size_t>(c.n_layers)) {
    throw FormatError(fmt::format("{}: {} layers of weights, expected n_layers {}", source,
                                  w.layers.size(), c.n_layers));
  }
  for (int l = 0; l < c.n_layers; ++l) {
    for (const LayerField& f : kLayerFields) {
      check(w.layers[static_cast<size_t>(l)].*f.member, f.tensor,
            fmt::format("layers[{}].{}", l, to_string(f.tensor)));
    }
  }
}

ModelWeights random_weights(const ModelConfig& config, std::uint64_t seed) {
  return materialize(RandomSource(config, seed));
}

}  // namespace flashcomm
