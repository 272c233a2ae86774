// Model presets: the shapes of published models, taken from the config.json
// each publisher ships with its weights on the Hugging Face hub (field names
// in the comments are those of config.json). Only shapes matter here: the
// planner predicts times and bytes, it never loads these weights.
#include "flashcomm/presets.hpp"
#include <optional>

#include <algorithm>
#include <functional>
#include <utility>

#include <fmt/ranges.h>

#include "flashcomm/error.hpp"

namespace flashcomm {

namespace {

// The longest context a preset claims. Every byte and FLOP formula of the
// cost model stays far inside 64 bits up to it, and the planner's break-even
// search stays quick.
constexpr int kMaxPresetSeqLen = 131072;

// meta-llama/Meta-Llama-3-8B, config.json: hidden_size 4096,
// intermediate_size 14336, num_hidden_layers 32, num_attention_heads 32,
// num_key_value_heads 8 (head_dim 4096/32 = 128), vocab_size 128256,
// max_position_embeddings 8192, rope_theta 500000, rms_norm_eps 1e-5,
// tie_word_embeddings false.
ModelConfig llama_3_8b() {
  ModelConfig c;
  c.d_model = 4096;
  c.hidden_dim = 14336;
  c.n_layers = 32;
  c.n_heads = 32;
  c.n_kv_heads = 8;
  c.head_dim = 128;
  c.vocab_size = 128256;
  c.seq_len = 8192;
  c.shared_classifier = false;
  c.rope_theta = 500000.0F;
  c.norm_eps = 1e-5F;
  return c;
}

// meta-llama/Meta-Llama-3-70B, config.json: hidden_size 8192,
// intermediate_size 28672, num_hidden_layers 80, num_attention_heads 64,
// num_key_value_heads 8 (head_dim 128), vocab_size 128256,
// max_position_embeddings 8192, rope_theta 500000, rms_norm_eps 1e-5.
ModelConfig llama_3_70b() {
  ModelConfig c = llama_3_8b();
  c.d_model = 8192;
  c.hidden_dim = 28672;
  c.n_layers = 80;
  c.n_heads = 64;
  return c;
}

// Qwen/Qwen3-32B, config.json: hidden_size 5120, intermediate_size 25600,
// num_hidden_layers 64, num_attention_heads 64, num_key_value_heads 8,
// head_dim 128 (so q_dim = 8192 differs from d_model), vocab_size 151936,
// max_position_embeddings 40960, rope_theta 1000000, rms_norm_eps 1e-6,
// tie_word_embeddings false. Qwen3 normalises each head of q and k
// (q_norm, k_norm in its attention) before RoPE: qk_norm. Its projections
// have no bias (attention_bias false).
ModelConfig qwen3_32b() {
  ModelConfig c;
  c.d_model = 5120;
  c.hidden_dim = 25600;
  c.n_layers = 64;
  c.n_heads = 64;
  c.n_kv_heads = 8;
  c.head_dim = 128;
  c.vocab_size = 151936;
  c.seq_len = 40960;
  c.shared_classifier = false;
  c.rope_theta = 1000000.0F;
  c.norm_eps = 1e-6F;
  c.qk_norm = true;
  return c;
}

// Qwen/Qwen2-7B-Instruct, config.json: hidden_size 3584, intermediate_size
// 18944, num_hidden_layers 28, num_attention_heads 28, num_key_value_heads 4
// (head_dim 3584/28 = 128), vocab_size 152064, max_position_embeddings 32768,
// rope_theta 1000000, rms_norm_eps 1e-6, tie_word_embeddings false. Qwen2's
// q, k and v projections carry a bias (o_proj does not): qkv_bias.
ModelConfig qwen2_7b() {
  ModelConfig c;
  c.d_model = 3584;
  c.hidden_dim = 18944;
  c.n_layers = 28;
  c.n_heads = 28;
  c.n_kv_heads = 4;
  c.head_dim = 128;
  c.vocab_size = 152064;
  c.seq_len = 32768;
  c.shared_classifier = false;
  c.rope_theta = 1000000.0F;
  c.norm_eps = 1e-6F;
  c.qkv_bias = true;
  return c;
}

// deepseek-ai/DeepSeek-V3, config.json: hidden_size 7168,
// num_attention_heads 128, num_key_value_heads 128, v_head_dim 128 (so the
// o_proj input is 128*128 = 16384), num_hidden_layers 61, vocab_size 129280,
// intermediate_size 18432 (the dense MLP of its first layers),
// max_position_embeddings 163840 (capped here), rope_theta 10000,
// rms_norm_eps 1e-6.
//
// A stand-in, not the model: the engine runs plain attention and a dense MLP,
// so MLA's compressed KV (kv_lora_rank 512, q_lora_rank 1536, 192-wide q/k
// heads) is replaced by multi-head attention with 128 heads of 128, which
// keeps o_proj's shape [7168, 16384] exactly, the part FlashComm2 changes;
// and every layer's MoE is replaced by the dense MLP of hidden 18432. Its
// QKV, attention and MLP costs are therefore those of the stand-in.
ModelConfig deepseek_v3_attn() {
  ModelConfig c;
  c.d_model = 7168;
  c.hidden_dim = 18432;
  c.n_layers = 61;
  c.n_heads = 128;
  c.n_kv_heads = 128;
  c.head_dim = 128;
  c.vocab_size = 129280;
  c.seq_len = std::min(163840, kMaxPresetSeqLen);
  c.shared_classifier = false;
  c.rope_theta = 10000.0F;
  c.norm_eps = 1e-6F;
  return c;
}

// stories260K (../shared/models/README.md, from its checkpoint header): dim
// 64, hidden_dim 172, n_layers 5, n_heads 8, n_kv_heads 4 (head_dim 8),
// vocab_size 512, seq_len 512, shared embedding, RoPE base 10000 and the
// norm epsilon llama2.c uses.
ModelConfig stories260k() {
  ModelConfig c;
  c.d_model = 64;
  c.hidden_dim = 172;
  c.n_layers = 5;
  c.n_heads = 8;
  c.n_kv_heads = 4;
  c.head_dim = 8;
  c.vocab_size = 512;
  c.seq_len = 512;
  c.shared_classifier = true;
  c.rope_theta = 10000.0F;
  c.norm_eps = 1e-5F;
  return c;
}

using PresetTable = std::vector<std::pair<std::string, std::function<ModelConfig()>>>;

const PresetTable& presets() {
  static const PresetTable table = {
      {"llama-3-8b", llama_3_8b},
      {"llama-3-70b", llama_3_70b},
      {"qwen2-7b", qwen2_7b},
      {"qwen3-32b", qwen3_32b},
      {"deepseek-v3-attn", deepseek_v3_attn},
      {"stories260K", stories260k},
  };
  return table;
}

}  // namespace

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const auto& [name, make] : presets()) {
    names.push_back(name);
  }
  return names;
}

ModelConfig preset_config(const std::string& name) {
  for (const auto& [preset, make] : presets()) {
    if (preset == name) {
      ModelConfig c = make();
      check_config(c, "preset " + name);
      return c;
    }
  }
  throw ConfigError(fmt::format("unknown model preset '{}': the presets are {}", name,
                                fmt::join(preset_names(), ", ")));
}

std::optional<ModelConfig> named_model(const std::string& name) {
  const std::vector<std::string> names = preset_names();
  if (std::find(names.begin(), names.end(), name) != names.end()) {
    return preset_config(name);
  }
  const std::string prefix = "shape:";
  if (name.rfind(prefix, 0) != 0) {
    return std::nullopt;
  }
  ModelConfig c;
  c.vocab_size = 32000;
  c.seq_len = 4096;
  c.shared_classifier = false;
  const std::pair<const char*, int ModelConfig::*> keys[] = {
      {"d_model", &ModelConfig::d_model},       {"hidden_dim", &ModelConfig::hidden_dim},
      {"n_layers", &ModelConfig::n_layers},     {"n_heads", &ModelConfig::n_heads},
      {"n_kv_heads", &ModelConfig::n_kv_heads}, {"head_dim", &ModelConfig::head_dim},
      {"vocab_size", &ModelConfig::vocab_size}, {"seq_len", &ModelConfig::seq_len},
  };
  // Architecture flags, 0 or 1: Qwen2's q/k/v biases, Qwen3's q/k norms.
  const std::pair<const char*, bool ModelConfig::*> flags[] = {
      {"qkv_bias", &ModelConfig::qkv_bias},
      {"qk_norm", &ModelConfig::qk_norm},
  };
  std::string rest = name.substr(prefix.size());
  while (!rest.empty()) {
    const size_t comma = rest.find(',');
    const std::string item = rest.substr(0, comma);
    rest = comma == std::string::npos ? "" : rest.substr(comma + 1);
    const size_t eq = item.find('=');
    const std::string key = item.substr(0, eq);
    const std::string value = eq == std::string::npos ? "" : item.substr(eq + 1);
    int ModelConfig::*field = nullptr;
    for (const auto& [k, f] : keys) {
      if (key == k) {
        field = f;
      }
    }
    bool ModelConfig::*flag = nullptr;
    for (const auto& [k, f] : flags) {
      if (key == k) {
        flag = f;
      }
    }
    if (flag != nullptr) {
      if (value != "0" && value != "1") {
        throw ConfigError(fmt::format("{}: {}={} is not 0 or 1", name, key, value));
      }
      c.*flag = value == "1";
      continue;
    }
    if (field == nullptr) {
      throw ConfigError(fmt::format(
          "{}: '{}' is not one of d_model, hidden_dim, n_layers, n_heads, n_kv_heads, head_dim, "
          "vocab_size, seq_len, qkv_bias, qk_norm",
          name, key));
    }
    size_t used = 0;
    int parsed = 0;
    try {
      parsed = std::stoi(value, &used, 10);
    } catch (const std::exception&) {
      used = 0;
    }
    if (value.empty() || used != value.size() || parsed < 1) {
      throw ConfigError(fmt::format("{}: {}={} is not a positive integer", name, key, value));
    }
    c.*field = parsed;
  }
  for (const char* required : {"d_model", "hidden_dim", "n_layers", "n_heads", "n_kv_heads"}) {
    for (const auto& [k, f] : keys) {
      if (std::string(k) == required && c.*f == 0) {
        throw ConfigError(fmt::format("{}: {} is missing", name, required));
      }
    }
  }
  if (c.head_dim == 0) {
    if (c.d_model % c.n_heads != 0) {
      throw ConfigError(fmt::format("{}: give head_dim, d_model {} is not a multiple of n_heads {}",
                                    name, c.d_model, c.n_heads));
    }
    c.head_dim = c.d_model / c.n_heads;
  }
  try {
    check_config(c, name);
  } catch (const FormatError& e) {
    throw ConfigError(e.what());
  }
  return c;
}

}  // namespace flashcomm
