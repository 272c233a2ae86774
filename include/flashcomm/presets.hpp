// Named model shapes of published Llama-family models (Qwen2 and Qwen3 among
// them), for the planner: the cost model needs a model's dimensions and
// architecture flags, never its weights, so a preset is a ModelConfig alone.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "flashcomm/model.hpp"

namespace flashcomm {

// The configuration of a preset; throws ConfigError listing the known names
// for an unknown one.
ModelConfig preset_config(const std::string& name);

// Every preset's name, in a fixed order.
std::vector<std::string> preset_names();

// A model named without weights: a preset name, or any shape as
// "shape:d_model=4096,n_heads=32,n_kv_heads=8,hidden_dim=14336,n_layers=32"
// (head_dim defaults to d_model/n_heads, vocab_size to 32000, seq_len to
// 4096; the other integer keys are required), with the optional architecture
// flags qkv_bias=0|1 and qk_norm=0|1 (default 0). nullopt when `name` is
// neither (a file, say); ConfigError naming the key for a bad shape.
std::optional<ModelConfig> named_model(const std::string& name);

}  // namespace flashcomm
