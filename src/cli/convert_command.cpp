// `flashcomm convert`: writes a model as a Hugging Face checkpoint directory
// (config.json + safetensors), from a llama2.c file, another HF checkpoint or
// a preset/shape with seeded random weights. One process, no MPI.
//
// It exists so that a user can try every path of the engine (HF loading,
// float16/bfloat16, sharded checkpoints, Qwen's biases and q/k norms) from
// the models at hand, and so that a checkpoint can be re-saved in another
// dtype or number of shards.
#include <fmt/format.h>

#include <cstdint>
#include <memory>
#include <string>

#include "cli/command.hpp"
#include "cli/options.hpp"
#include "flashcomm/checkpoint.hpp"
#include "flashcomm/error.hpp"
#include "flashcomm/hf.hpp"
#include "flashcomm/presets.hpp"

namespace flashcomm::cli {

namespace {

struct ConvertOptions {
  std::string model;
  std::string out;
  std::string dtype = "f32";
  std::string model_type;  // empty: from the model's features
  int shards = 1;
  std::uint64_t seed = 1;
};

DType parse_dtype(const std::string& name) {
  if (name == "f32" || name == "float32") {
    return DType::f32;
  }
  if (name == "f16" || name == "float16") {
    return DType::f16;
  }
  if (name == "bf16" || name == "bfloat16") {
    return DType::bf16;
  }
  throw ConfigError(fmt::format("--dtype {} is not one of f32, f16, bf16", name));
}

// The model_type whose tensors the model has: Qwen2 has q/k/v biases, Qwen3
// q/k norms; a plain Llama-family model is written as llama.
std::string default_model_type(const ModelConfig& c) {
  if (c.qkv_bias && c.qk_norm) {
    throw ConfigError(
        "the model has both q/k/v biases and q/k norms, which no supported model_type holds");
  }
  return c.qkv_bias ? "qwen2" : c.qk_norm ? "qwen3" : "llama";
}

int convert_command(const ConvertOptions& o) {
  const DType dtype = parse_dtype(o.dtype);
  ModelWeights weights;
  std::string what;
  if (const std::optional<ModelConfig> shape = named_model(o.model)) {
    weights = random_weights(*shape, o.seed);
    what = fmt::format("{} (seeded random weights, seed {})", o.model, o.seed);
  } else {
    Checkpoint checkpoint(o.model);
    weights = checkpoint.full_weights();
    what = fmt::format("{} ({})", o.model, to_string(checkpoint.format()));
  }
  const std::string model_type =
      o.model_type.empty() ? default_model_type(weights.config) : o.model_type;
  save_hf_checkpoint(weights, o.out, dtype, model_type, o.shards);
  fmt::print("wrote {} as a {} checkpoint in {} ({}, {} file{})\n", what, model_type, o.out,
             o.dtype, o.shards, o.shards == 1 ? "" : "s");
  return kExitOk;
}

}  // namespace

Command add_convert_command(CLI::App& app) {
  auto o = std::make_shared<ConvertOptions>();
  CLI::App* cmd = app.add_subcommand(
      "convert",
      "write a model as a Hugging Face checkpoint directory (config.json + safetensors)");
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("--model", o->model,
                  "llama2.c checkpoint, HF checkpoint directory, or a preset/shape (random "
                  "weights)")
      ->required();
  cmd->add_option("--out", o->out, "directory to write (created if missing)")->required();
  cmd->add_option("--dtype", o->dtype, "f32, f16 or bf16")->capture_default_str();
  cmd->add_option("--model-type", o->model_type,
                  "llama, mistral, qwen2 or qwen3 (default: qwen2 for a model with q/k/v "
                  "biases, qwen3 for one with q/k norms, else llama)");
  cmd->add_option("--shards", o->shards, "safetensors files, with an index when more than one")
      ->capture_default_str()
      ->transform(decimal_integer());
  cmd->add_option("--seed", o->seed, "seed of the random weights of a preset or shape")
      ->capture_default_str();
  return {cmd, [o] { return convert_command(*o); }};
}

}  // namespace flashcomm::cli
