// Models for the checkpoint tests.
#include "model_fixtures.hpp"

#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace flashcomm::test {

// Every tensor of a model with its name, including the optional ones.
std::vector<std::pair<std::string, std::vector<float>*>> all_tensors(ModelWeights& w) {
  std::vector<std::pair<std::string, std::vector<float>*>> out = {
      {"token_embedding", &w.token_embedding},
      {"final_norm", &w.final_norm},
      {"classifier", &w.classifier}};
  for (size_t l = 0; l < w.layers.size(); ++l) {
    LayerWeights& x = w.layers[l];
    const std::string at = "layer " + std::to_string(l) + " ";
    for (auto [name, v] :
         std::vector<std::pair<const char*, std::vector<float>*>>{{"attn_norm", &x.attn_norm},
                                                                  {"wq", &x.wq},
                                                                  {"wk", &x.wk},
                                                                  {"wv", &x.wv},
                                                                  {"wo", &x.wo},
                                                                  {"bq", &x.bq},
                                                                  {"bk", &x.bk},
                                                                  {"bv", &x.bv},
                                                                  {"q_norm", &x.q_norm},
                                                                  {"k_norm", &x.k_norm},
                                                                  {"ffn_norm", &x.ffn_norm},
                                                                  {"w_gate", &x.w_gate},
                                                                  {"w_down", &x.w_down},
                                                                  {"w_up", &x.w_up}}) {
      out.emplace_back(at + name, v);
    }
  }
  return out;
}

// Random weights of any config, biases and q/k norms included; norms near
// 1 and biases large enough that a misplaced element changes the logits.
ModelWeights random_model(const ModelConfig& c, unsigned seed) {
  std::mt19937 rng(seed);
  auto fill = [&](size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> u(lo, hi);
    std::vector<float> v(n);
    for (float& x : v) {
      x = u(rng);
    }
    return v;
  };
  const auto d = static_cast<size_t>(c.d_model);
  const auto q = static_cast<size_t>(c.q_dim());
  const auto kv = static_cast<size_t>(c.kv_dim());
  const auto hid = static_cast<size_t>(c.hidden_dim);
  const auto hd = static_cast<size_t>(c.head_dim);
  const float wd = 1.0F / std::sqrt(static_cast<float>(d));
  ModelWeights w;
  w.config = c;
  w.token_embedding = fill(static_cast<size_t>(c.vocab_size) * d, -1.0F, 1.0F);
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights x;
    x.attn_norm = fill(d, 0.8F, 1.2F);
    x.wq = fill(q * d, -wd, wd);
    x.wk = fill(kv * d, -wd, wd);
    x.wv = fill(kv * d, -wd, wd);
    x.wo = fill(d * q, -1.0F / std::sqrt(static_cast<float>(q)),
                1.0F / std::sqrt(static_cast<float>(q)));
    if (c.qkv_bias) {
      x.bq = fill(q, -0.5F, 0.5F);
      x.bk = fill(kv, -0.5F, 0.5F);
      x.bv = fill(kv, -0.5F, 0.5F);
    }
    if (c.qk_norm) {
      x.q_norm = fill(hd, 0.5F, 1.5F);
      x.k_norm = fill(hd, 0.5F, 1.5F);
    }
    x.ffn_norm = fill(d, 0.8F, 1.2F);
    x.w_gate = fill(hid * d, -wd, wd);
    x.w_up = fill(hid * d, -wd, wd);
    x.w_down = fill(d * hid, -1.0F / std::sqrt(static_cast<float>(hid)),
                    1.0F / std::sqrt(static_cast<float>(hid)));
    w.layers.push_back(std::move(x));
  }
  w.final_norm = fill(d, 0.8F, 1.2F);
  if (!c.shared_classifier) {
    w.classifier = fill(static_cast<size_t>(c.vocab_size) * d, -wd, wd);
  }
  return w;
}

// Qwen2-style: q/k/v biases, 6 query and 2 KV heads, separate classifier.
ModelConfig qwen2_config() {
  ModelConfig c;
  c.d_model = 48;
  c.hidden_dim = 64;
  c.n_layers = 2;
  c.n_heads = 6;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.vocab_size = 97;
  c.seq_len = 64;
  c.shared_classifier = false;
  c.rope_theta = 1000000.0F;
  c.norm_eps = 1e-6F;
  c.qkv_bias = true;
  return c;
}

// Qwen3-style: q/k norms and head_dim 16 != d_model / n_heads = 12.
ModelConfig qwen3_config() {
  ModelConfig c;
  c.d_model = 48;
  c.hidden_dim = 80;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 16;
  c.vocab_size = 101;
  c.seq_len = 64;
  c.shared_classifier = true;
  c.rope_theta = 1000000.0F;
  c.norm_eps = 1e-6F;
  c.qk_norm = true;
  return c;
}

// The weights as the checkpoint's dtype holds them.
ModelWeights rounded(ModelWeights w, DType dtype) {
  for (auto& [name, v] : all_tensors(w)) {
    for (float& x : *v) {
      x = dtype == DType::f16    ? f16_to_f32(f32_to_f16(x))
          : dtype == DType::bf16 ? bf16_to_f32(f32_to_bf16(x))
                                 : x;
    }
  }
  return w;
}

}  // namespace flashcomm::test
