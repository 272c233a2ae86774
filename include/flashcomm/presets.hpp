// Named model shapes of published Llama-family models, for the planner: the
// cost model needs a model's dimensions, never its weights, so a preset is a
// ModelConfig alone.
#pragma once

#include <string>
#include <vector>

#include "flashcomm/model.hpp"

namespace flashcomm {

// The configuration of a preset; throws ConfigError listing the known names
// for an unknown one.
ModelConfig preset_config(const std::string& name);

// Every preset's name, in a fixed order.
std::vector<std::string> preset_names();

}  // namespace flashcomm
