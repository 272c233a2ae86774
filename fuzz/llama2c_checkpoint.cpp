// Fuzz target: llama2.c checkpoints, legacy layout (version 0) and version 1
// ("ak42"); the layout is recognised from the first bytes, as for a file.
//
// Input: the bytes of a whole checkpoint. Seeds: corpus/llama2c_checkpoint/.
// Besides "no crash, only flashcomm::Error", it checks that reading the
// config alone and loading the weights agree (same message, or same config),
// and that loaded tensors have the sizes the config implies.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "flashcomm/model.hpp"
#include "fuzz_support.hpp"
#include "model/byte_reader.hpp"

namespace {

using flashcomm::fuzz::check;

bool has_floats(const std::vector<float>& tensor, std::int64_t rows, std::int64_t cols) {
  return tensor.size() == static_cast<size_t>(rows * cols);
}

void check_loaded(const flashcomm::ModelConfig& config, const flashcomm::ModelWeights& w) {
  const flashcomm::ModelConfig& c = w.config;
  check(c.d_model == config.d_model && c.hidden_dim == config.hidden_dim &&
            c.n_layers == config.n_layers && c.n_heads == config.n_heads &&
            c.n_kv_heads == config.n_kv_heads && c.head_dim == config.head_dim &&
            c.vocab_size == config.vocab_size && c.seq_len == config.seq_len &&
            c.shared_classifier == config.shared_classifier,
        "load_llama2c and read_llama2c_config read the same config");
  check(c.head_dim * c.n_heads == c.d_model, "head_dim * n_heads == d_model");
  check(has_floats(w.token_embedding, c.vocab_size, c.d_model), "token_embedding size");
  check(has_floats(w.final_norm, 1, c.d_model), "final_norm size");
  check(c.shared_classifier ? w.classifier.empty()
                            : has_floats(w.classifier, c.vocab_size, c.d_model),
        "classifier size");
  check(w.layers.size() == static_cast<size_t>(c.n_layers), "one LayerWeights per layer");
  for (const flashcomm::LayerWeights& l : w.layers) {
    check(has_floats(l.attn_norm, 1, c.d_model) && has_floats(l.ffn_norm, 1, c.d_model),
          "norm sizes");
    check(has_floats(l.wq, c.q_dim(), c.d_model) && has_floats(l.wk, c.kv_dim(), c.d_model) &&
              has_floats(l.wv, c.kv_dim(), c.d_model) && has_floats(l.wo, c.d_model, c.q_dim()),
          "attention weight sizes");
    check(has_floats(l.w_gate, c.hidden_dim, c.d_model) &&
              has_floats(l.w_up, c.hidden_dim, c.d_model) &&
              has_floats(l.w_down, c.d_model, c.hidden_dim),
          "MLP weight sizes");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  flashcomm::detail::MemoryReader in({data, size}, "input");

  flashcomm::ModelConfig config;
  const std::string config_error =
      flashcomm::fuzz::error_of([&] { config = flashcomm::detail::read_llama2c_config(in); });
  flashcomm::ModelWeights weights;
  const std::string load_error =
      flashcomm::fuzz::error_of([&] { weights = flashcomm::detail::load_llama2c(in); });

  check(config_error == load_error, "read_llama2c_config and load_llama2c fail alike");
  if (load_error.empty()) {
    check_loaded(config, weights);
  }
  return 0;
}
