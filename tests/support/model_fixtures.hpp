// Models for the checkpoint tests: random weights of any config with every
// optional tensor (q/k/v biases, q/k norms), Qwen-style shapes, and weights
// rounded as a float16 or bfloat16 checkpoint holds them.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "flashcomm/model.hpp"
#include "flashcomm/safetensors.hpp"

namespace flashcomm::test {

// Every tensor of a model with a name for messages, the optional ones
// (empty when absent) included.
std::vector<std::pair<std::string, std::vector<float>*>> all_tensors(ModelWeights& weights);

// Random weights of `config`, biases and q/k norms included when its flags
// ask for them: norms near 1 and biases large enough that a misplaced
// element changes the logits.
ModelWeights random_model(const ModelConfig& config, unsigned seed);

// Every tensor as `dtype` holds it (round to nearest even; F32 unchanged).
ModelWeights rounded(ModelWeights weights, DType dtype);

// Qwen2-style: q/k/v biases, 6 query and 2 KV heads of 8, separate classifier.
ModelConfig qwen2_config();
// Qwen3-style: q/k norms, 4 query and 2 KV heads of 16 (head_dim != d_model / n_heads).
ModelConfig qwen3_config();

}  // namespace flashcomm::test
