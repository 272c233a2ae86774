// Seeded random weights of any valid shape, for tests and benchmarks that need
// a model but not a trained one (like vLLM's "dummy" load format).
//
// The values depend only on the seed and the shape, on every platform:
// std::mt19937_64 is fully specified by the standard, and the conversion of its
// output to floats is done here rather than by a standard distribution, whose
// algorithm is left to each library. Tensors are filled in a fixed order
// (embedding, then each layer's tensors in LayerWeights order, final norm,
// classifier), so a change to that order changes every model.
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "flashcomm/model.hpp"

namespace flashcomm {

namespace {

class UniformSource {
 public:
  explicit UniformSource(std::uint64_t seed) : engine_(seed) {}

  // A float uniform in [lo, hi): the top 53 bits of one draw give a double in [0, 1).
  float next(double lo, double hi) {
    const double unit = static_cast<double>(engine_() >> 11) * 0x1.0p-53;
    // Two statements, so that no compiler fuses them into a multiply-add,
    // which would round differently on machines that have one.
    const double offset = (hi - lo) * unit;
    return static_cast<float>(lo + offset);
  }

  std::vector<float> fill(size_t n, double lo, double hi) {
    std::vector<float> v(n);
    for (float& x : v) {
      x = next(lo, hi);
    }
    return v;
  }

  // A row-major [rows, in] matrix scaled like a default linear-layer init, so
  // activations keep roughly unit size through the layers.
  std::vector<float> matrix(int rows, int in) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    return fill(static_cast<size_t>(rows) * static_cast<size_t>(in), -bound, bound);
  }

  // Norm weights near 1, different enough from 1 that a missing multiply shows.
  std::vector<float> norm(int n) { return fill(static_cast<size_t>(n), 0.8, 1.2); }

 private:
  std::mt19937_64 engine_;
};

}  // namespace

ModelWeights random_weights(const ModelConfig& config, std::uint64_t seed) {
  check_config(config, "random_weights");
  UniformSource rng(seed);
  const int d = config.d_model;

  ModelWeights w;
  w.config = config;
  w.token_embedding =
      rng.fill(static_cast<size_t>(config.vocab_size) * static_cast<size_t>(d), -1.0, 1.0);
  w.layers.resize(static_cast<size_t>(config.n_layers));
  for (LayerWeights& layer : w.layers) {
    layer.attn_norm = rng.norm(d);
    layer.wq = rng.matrix(config.q_dim(), d);
    layer.wk = rng.matrix(config.kv_dim(), d);
    layer.wv = rng.matrix(config.kv_dim(), d);
    layer.wo = rng.matrix(d, config.q_dim());
    layer.ffn_norm = rng.norm(d);
    layer.w_gate = rng.matrix(config.hidden_dim, d);
    layer.w_down = rng.matrix(d, config.hidden_dim);
    layer.w_up = rng.matrix(config.hidden_dim, d);
  }
  w.final_norm = rng.norm(d);
  if (!config.shared_classifier) {
    w.classifier = rng.matrix(config.vocab_size, d);
  }
  return w;
}

}  // namespace flashcomm
