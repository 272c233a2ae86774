// Tests of config.json parsing: every field, each model type's defaults and
// flags, the sliding-window cap, and every refusal naming its field.
#include <gtest/gtest.h>

#include <initializer_list>
#include <string>

#include <nlohmann/json.hpp>

#include "flashcomm/error.hpp"
#include "flashcomm/hf.hpp"

namespace flashcomm {
namespace {

using nlohmann::json;

// A Llama-style config of stories260K's shape.
json llama_config() {
  return {{"model_type", "llama"},       {"hidden_size", 64},
          {"intermediate_size", 172},    {"num_hidden_layers", 5},
          {"num_attention_heads", 8},    {"num_key_value_heads", 4},
          {"vocab_size", 512},           {"max_position_embeddings", 512},
          {"rope_theta", 10000.0},       {"rms_norm_eps", 1e-5},
          {"tie_word_embeddings", true}, {"hidden_act", "silu"},
          {"rope_scaling", nullptr},     {"attention_bias", false}};
}

HfConfig parse(const json& j) {
  return parse_hf_config(j.dump(), "dir/config.json");
}

// Parsing `text` throws a FormatError whose message holds every one of `parts`.
void expect_refused(const std::string& text, std::initializer_list<const char*> parts) {
  try {
    parse_hf_config(text, "dir/config.json");
    ADD_FAILURE() << "accepted: " << text;
  } catch (const FormatError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("dir/config.json"), std::string::npos) << message;
    for (const char* part : parts) {
      EXPECT_NE(message.find(part), std::string::npos) << part << " not in: " << message;
    }
  }
}

void expect_refused(const json& j, std::initializer_list<const char*> parts) {
  expect_refused(j.dump(), parts);
}

json with(json j, const char* key, const json& value) {
  j[key] = value;
  return j;
}

json without(json j, const char* key) {
  j.erase(key);
  return j;
}

TEST(HfConfig, LlamaFieldsBecomeTheModelConfig) {
  const HfConfig h = parse(llama_config());
  EXPECT_EQ(h.model_type, "llama");
  const ModelConfig& c = h.model;
  EXPECT_EQ(c.d_model, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 8) << "hidden_size / num_attention_heads without head_dim";
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.seq_len, 512);
  EXPECT_EQ(c.rope_theta, 10000.0F);
  EXPECT_EQ(c.norm_eps, 1e-5F);
  EXPECT_TRUE(c.shared_classifier);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_EQ(h.sliding_window, 0);
}

TEST(HfConfig, DefaultsAreThoseOfTransformers) {
  json j = llama_config();
  for (const char* key :
       {"num_key_value_heads", "max_position_embeddings", "rope_theta", "rms_norm_eps",
        "tie_word_embeddings", "hidden_act", "rope_scaling", "attention_bias"}) {
    j.erase(key);
  }
  const HfConfig h = parse(j);
  EXPECT_EQ(h.model.n_kv_heads, 8) << "num_key_value_heads defaults to the heads";
  EXPECT_EQ(h.model.seq_len, 2048);
  EXPECT_EQ(h.model.rope_theta, 10000.0F);
  EXPECT_EQ(h.model.norm_eps, 1e-6F);
  EXPECT_FALSE(h.model.shared_classifier);
  // null means absent, as in transformers.
  EXPECT_EQ(parse(with(llama_config(), "num_key_value_heads", nullptr)).model.n_kv_heads, 8);
  EXPECT_EQ(
      parse(with(with(llama_config(), "model_type", "qwen2"), "max_position_embeddings", nullptr))
          .model.seq_len,
      32768);
}

TEST(HfConfig, QwenTypesSetTheirFlags) {
  json q2 = without(with(llama_config(), "model_type", "qwen2"), "attention_bias");
  const HfConfig h2 = parse(q2);
  EXPECT_TRUE(h2.model.qkv_bias);
  EXPECT_FALSE(h2.model.qk_norm);

  json q3 = with(with(llama_config(), "model_type", "qwen3"), "head_dim", 16);
  const HfConfig h3 = parse(q3);
  EXPECT_FALSE(h3.model.qkv_bias);
  EXPECT_TRUE(h3.model.qk_norm);
  EXPECT_EQ(h3.model.head_dim, 16) << "an explicit head_dim wins over hidden/heads";
  EXPECT_EQ(h3.model.q_dim(), 128);

  const HfConfig m =
      parse(without(with(llama_config(), "model_type", "mistral"), "attention_bias"));
  EXPECT_EQ(m.model_type, "mistral");
  EXPECT_FALSE(m.model.qkv_bias);
}

TEST(HfConfig, AnActiveSlidingWindowCapsTheContext) {
  json m = without(with(llama_config(), "model_type", "mistral"), "attention_bias");
  m["max_position_embeddings"] = 32768;
  m["sliding_window"] = 4096;
  EXPECT_EQ(parse(m).model.seq_len, 4096);
  EXPECT_EQ(parse(m).max_position_embeddings, 32768);
  EXPECT_EQ(parse(m).sliding_window, 4096);
  m["sliding_window"] = nullptr;
  EXPECT_EQ(parse(m).model.seq_len, 32768);
  m["sliding_window"] = 65536;
  EXPECT_EQ(parse(m).model.seq_len, 32768) << "a window wider than the context changes nothing";
  m["sliding_window"] = "4096";
  expect_refused(m, {"sliding_window is \"4096\"", "positive integer"});

  // Qwen's window applies only with use_sliding_window.
  json q = without(with(llama_config(), "model_type", "qwen2"), "attention_bias");
  q["max_position_embeddings"] = 32768;
  q["sliding_window"] = 4096;
  q["use_sliding_window"] = false;
  EXPECT_EQ(parse(q).model.seq_len, 32768);
  q["use_sliding_window"] = true;
  EXPECT_EQ(parse(q).model.seq_len, 4096);
  q["use_sliding_window"] = 1;
  expect_refused(q, {"use_sliding_window is 1", "true or false"});
}

TEST(HfConfig, TheModelTypeMustBeKnown) {
  expect_refused(without(llama_config(), "model_type"),
                 {"model_type is missing", "llama, mistral, qwen2, qwen3"});
  expect_refused(with(llama_config(), "model_type", "gpt2"),
                 {"model_type \"gpt2\" is not supported", "llama, mistral, qwen2, qwen3"});
  expect_refused(with(llama_config(), "model_type", 7), {"model_type is 7", "a string"});
}

TEST(HfConfig, EachNumberIsTypeChecked) {
  expect_refused(with(llama_config(), "hidden_size", "64"),
                 {"hidden_size is \"64\"", "positive integer"});
  expect_refused(with(llama_config(), "hidden_size", 64.0), {"hidden_size is 64.0"});
  expect_refused(with(llama_config(), "num_hidden_layers", 0), {"num_hidden_layers is 0"});
  expect_refused(with(llama_config(), "num_attention_heads", -8), {"num_attention_heads is -8"});
  expect_refused(with(llama_config(), "intermediate_size", 4294967296LL),
                 {"intermediate_size is 4294967296", "at most 2147483647"});
  expect_refused(with(llama_config(), "num_key_value_heads", json::array()),
                 {"num_key_value_heads is []"});
  expect_refused(without(llama_config(), "vocab_size"), {"vocab_size is missing"});
  expect_refused(with(llama_config(), "rope_theta", "big"), {"rope_theta is \"big\"", "number"});
  expect_refused(with(llama_config(), "rope_theta", -1.0), {"rope_theta is -1.0"});
  expect_refused(with(llama_config(), "rms_norm_eps", 0), {"rms_norm_eps is 0"});
  expect_refused(with(llama_config(), "tie_word_embeddings", "yes"),
                 {"tie_word_embeddings is \"yes\"", "true or false"});
  expect_refused(with(llama_config(), "head_dim", 0), {"head_dim is 0"});
}

TEST(HfConfig, ShapesTheEngineCannotHoldAreRefusedByTheirHfName) {
  expect_refused(with(llama_config(), "num_attention_heads", 7),
                 {"hidden_size 64 is not a multiple of num_attention_heads 7"});
  expect_refused(with(llama_config(), "num_key_value_heads", 3),
                 {"n_heads is 8, expected a multiple of n_kv_heads 3", "num_attention_heads"});
  expect_refused(with(llama_config(), "vocab_size", 100000000),
                 {"vocab_size is 100000000, expected at most"});
  expect_refused(with(llama_config(), "hidden_size", 1 << 30),
                 {"d_model is 1073741824", "config.json's hidden_size"});
  expect_refused(with(llama_config(), "max_position_embeddings", 1 << 30),
                 {"seq_len is 1073741824", "max_position_embeddings"});
  expect_refused(with(with(llama_config(), "head_dim", 9), "hidden_size", 72),
                 {"head_dim is 9, expected an even value"});
}

TEST(HfConfig, WhatTheEngineDoesNotComputeIsRefusedByName) {
  expect_refused(with(llama_config(), "hidden_act", "gelu"), {"hidden_act is \"gelu\"", "silu"});
  expect_refused(with(llama_config(), "rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}}),
                 {"rope_scaling is", "\"llama3\"", "not implemented"});
  expect_refused(with(llama_config(), "rope_scaling", {{"type", "linear"}}), {"\"linear\""});
  expect_refused(with(llama_config(), "rope_scaling", 2), {"rope_scaling is 2", "unknown type"});
  EXPECT_EQ(parse(with(llama_config(), "rope_scaling", {{"rope_type", "default"}})).model.d_model,
            64)
      << "the default RoPE named explicitly is plain RoPE";
  expect_refused(with(llama_config(), "attention_bias", true),
                 {"attention_bias is true", "o_proj"});
  expect_refused(with(with(llama_config(), "model_type", "qwen3"), "attention_bias", true),
                 {"attention_bias is true"});
  expect_refused(with(llama_config(), "mlp_bias", true), {"mlp_bias is true"});
  expect_refused(with(llama_config(), "partial_rotary_factor", 0.5),
                 {"partial_rotary_factor is 0.5"});
  EXPECT_EQ(parse(with(llama_config(), "partial_rotary_factor", 1.0)).model.d_model, 64);
}

TEST(HfConfig, BadJsonIsRefused) {
  expect_refused(std::string("{\"model_type\": \"llama\""), {"not valid JSON"});
  expect_refused(std::string("[]"), {"expected a JSON object"});
  expect_refused(std::string(""), {"not valid JSON"});
  expect_refused(std::string("{\"model_type\": \"ll\xff\"}"), {"not valid JSON"});
}

// Newer transformers configs keep RoPE's settings in rope_parameters: its
// theta counts when the top level has none, a scaling type is refused.
TEST(HfConfig, RopeParametersGiveThetaAndScalingIsRefused) {
  const json params = {{"rope_type", "default"}, {"rope_theta", 500000.0}};
  EXPECT_EQ(parse(with(without(llama_config(), "rope_theta"), "rope_parameters", params))
                .model.rope_theta,
            500000.0F);
  EXPECT_EQ(parse(with(llama_config(), "rope_parameters", params)).model.rope_theta, 10000.0F)
      << "the top-level rope_theta wins";
  expect_refused(with(llama_config(), "rope_parameters", {{"rope_type", "llama3"}, {"factor", 8}}),
                 {"rope_parameters is", "RoPE scaling (\"llama3\") is not implemented"});
  expect_refused(with(llama_config(), "rope_parameters", 3), {"rope_parameters is 3"});
}

// Nesting beyond any real config is refused before it is dumped or destroyed
// recursively (which would overflow the stack).
TEST(HfConfig, DeepNestingIsRefused) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  try {
    parse_hf_config(deep, "dir/config.json");
    FAIL() << "a deeply nested config parsed";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("dir/config.json: the JSON nests deeper than 64 levels"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace flashcomm
