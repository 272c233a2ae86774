// config.json of a Hugging Face checkpoint -> ModelConfig.
//
// Only what changes the computation is read; every such field is
// type-checked, and a setting the engine does not implement (another
// activation, RoPE scaling, an o_proj or MLP bias) is refused by name rather
// than silently computed wrong. Defaults are those of the transformers
// configuration class of each model type.
#include <atomic>
#include <climits>
#include <cmath>
#include <string>

#include <nlohmann/json.hpp>

#include "flashcomm/error.hpp"
#include "flashcomm/hf.hpp"
#include "flashcomm/log.hpp"
#include "model/untrusted_json.hpp"

namespace flashcomm {

namespace {

using nlohmann::json;

struct ModelType {
  const char* name;
  int default_max_positions;  // the transformers class's max_position_embeddings
  bool qkv_bias;  // q/k/v biases always present (Qwen2)
  bool qk_norm;  // per-head q/k RMSNorm (Qwen3)
  bool has_attention_bias_field;  // attention_bias would add o_proj's bias too
  bool window_needs_flag;  // sliding_window applies only with use_sliding_window
};
constexpr ModelType kModelTypes[] = {
    {"llama", 2048, false, false, true, false},
    {"mistral", 4096 * 32, false, false, false, false},
    {"qwen2", 32768, true, false, false, true},
    {"qwen3", 32768, false, true, true, true},
};

std::string shown(const json& v) {
  std::string text = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 60) {
    text = text.substr(0, 57) + "...";
  }
  return text;
}

// Reads the fields of one config object, naming each in its messages.
class Fields {
 public:
  Fields(const json& doc, const std::string& source) : doc_(doc), source_(source) {}

  bool present(const char* key) const { return doc_.contains(key) && !doc_[key].is_null(); }

  [[noreturn]] void fail(const char* key, const std::string& expected) const {
    throw FormatError(
        fmt::format("{}: {} is {}, expected {}", source_, key, shown(doc_[key]), expected));
  }

  int positive_int(const char* key) const {
    if (!present(key)) {
      throw FormatError(
          fmt::format("{}: {} is missing, expected a positive integer", source_, key));
    }
    const json& v = doc_[key];
    bool ok = false;
    if (v.is_number_unsigned()) {
      ok = v.get<std::uint64_t>() >= 1 && v.get<std::uint64_t>() <= INT_MAX;
    } else if (v.is_number_integer()) {
      ok = v.get<std::int64_t>() >= 1 && v.get<std::int64_t>() <= INT_MAX;
    }
    if (!ok) {
      fail(key, fmt::format("a positive integer (at most {})", INT_MAX));
    }
    return v.get<int>();
  }

  int positive_int(const char* key, int fallback) const {
    return present(key) ? positive_int(key) : fallback;
  }

  double positive_number(const char* key, double fallback) const {
    if (!present(key)) {
      return fallback;
    }
    const json& v = doc_[key];
    if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() <= 0.0) {
      fail(key, "a positive number");
    }
    return v.get<double>();
  }

  bool boolean(const char* key, bool fallback) const {
    if (!present(key)) {
      return fallback;
    }
    if (!doc_[key].is_boolean()) {
      fail(key, "true or false");
    }
    return doc_[key].get<bool>();
  }

  std::string string(const char* key, const char* fallback) const {
    if (!present(key)) {
      return fallback;
    }
    if (!doc_[key].is_string()) {
      fail(key, "a string");
    }
    return doc_[key].get<std::string>();
  }

  const json& value(const char* key) const { return doc_[key]; }

 private:
  const json& doc_;
  const std::string& source_;
};

// check_config names the engine's fields; say which config.json key each is.
constexpr std::pair<const char*, const char*> kEngineNames[] = {
    {"d_model", "hidden_size"},
    {"hidden_dim", "intermediate_size"},
    {"n_layers", "num_hidden_layers"},
    {"n_heads", "num_attention_heads"},
    {"n_kv_heads", "num_key_value_heads"},
    {"head_dim", "head_dim"},
    {"vocab_size", "vocab_size"},
    {"seq_len", "max_position_embeddings"},
    {"rope_theta", "rope_theta"},
    {"norm_eps", "rms_norm_eps"},
};

void check_with_hf_names(const ModelConfig& c, const std::string& source) {
  try {
    check_config(c, source);
  } catch (const FormatError& e) {
    const std::string message = e.what();
    for (const auto& [engine, hf] : kEngineNames) {
      if (std::string_view(engine) != hf &&
          message.rfind(fmt::format("{}: {} ", source, engine), 0) == 0) {
        throw FormatError(
            fmt::format("{} (the engine's {} is config.json's {})", message, engine, hf));
      }
    }
    throw;
  }
}

}  // namespace

const char* hf_supported_model_types() {
  return "llama, mistral, qwen2, qwen3";
}

HfConfig parse_hf_config(std::string_view json_text, const std::string& source) {
  json doc;
  try {
    doc = detail::parse_untrusted_json(json_text, source);
  } catch (const json::exception& e) {
    throw FormatError(fmt::format("{}: not valid JSON: {}", source, e.what()));
  }
  if (!doc.is_object()) {
    throw FormatError(fmt::format("{}: is {}, expected a JSON object", source, shown(doc)));
  }
  const Fields f(doc, source);

  HfConfig out;
  if (!f.present("model_type")) {
    throw FormatError(fmt::format("{}: model_type is missing, expected one of {}", source,
                                  hf_supported_model_types()));
  }
  out.model_type = f.string("model_type", "");
  const ModelType* type = nullptr;
  for (const ModelType& t : kModelTypes) {
    if (out.model_type == t.name) {
      type = &t;
    }
  }
  if (type == nullptr) {
    throw FormatError(fmt::format("{}: model_type \"{}\" is not supported, expected one of {}",
                                  source, out.model_type, hf_supported_model_types()));
  }

  // Shapes.
  ModelConfig& c = out.model;
  c.d_model = f.positive_int("hidden_size");
  c.hidden_dim = f.positive_int("intermediate_size");
  c.n_layers = f.positive_int("num_hidden_layers");
  c.n_heads = f.positive_int("num_attention_heads");
  c.n_kv_heads = f.positive_int("num_key_value_heads", c.n_heads);
  c.vocab_size = f.positive_int("vocab_size");
  if (f.present("head_dim")) {
    c.head_dim = f.positive_int("head_dim");
  } else {
    if (c.d_model % c.n_heads != 0) {
      throw FormatError(fmt::format(
          "{}: hidden_size {} is not a multiple of num_attention_heads {}, and there is no "
          "head_dim",
          source, c.d_model, c.n_heads));
    }
    c.head_dim = c.d_model / c.n_heads;
  }
  out.max_position_embeddings =
      f.positive_int("max_position_embeddings", type->default_max_positions);
  c.seq_len = out.max_position_embeddings;
  c.rope_theta = static_cast<float>(f.positive_number("rope_theta", 10000.0));
  c.norm_eps = static_cast<float>(f.positive_number("rms_norm_eps", 1e-6));
  c.shared_classifier = f.boolean("tie_word_embeddings", false);
  c.qkv_bias = type->qkv_bias;
  c.qk_norm = type->qk_norm;

  // What the engine computes: SiLU-gated MLP, plain RoPE over the whole head,
  // no o_proj or MLP bias.
  const std::string act = f.string("hidden_act", "silu");
  if (act != "silu") {
    throw FormatError(
        fmt::format("{}: hidden_act is \"{}\", expected \"silu\" (the only MLP "
                    "activation the engine implements)",
                    source, act));
  }
  if (f.present("rope_scaling")) {
    const json& s = f.value("rope_scaling");
    std::string kind;
    if (s.is_object()) {
      for (const char* key : {"rope_type", "type"}) {
        if (s.contains(key) && s[key].is_string()) {
          kind = s[key].get<std::string>();
          break;
        }
      }
    }
    if (kind != "default") {
      throw FormatError(
          fmt::format("{}: rope_scaling is {}, expected null: RoPE scaling ({}) is not implemented",
                      source, shown(s), kind.empty() ? "of an unknown type" : "\"" + kind + "\""));
    }
  }
  // Newer transformers releases keep RoPE's settings in rope_parameters
  // instead: its theta counts when the top level has none, and any type but
  // the default is scaling, refused as above.
  if (f.present("rope_parameters")) {
    const json& r = f.value("rope_parameters");
    if (!r.is_object()) {
      f.fail("rope_parameters", "an object");
    }
    const json kind = r.contains("rope_type") ? r["rope_type"] : json("default");
    if (kind != "default") {
      throw FormatError(fmt::format(
          "{}: rope_parameters is {}, expected rope_type \"default\": RoPE scaling ({}) is not "
          "implemented",
          source, shown(r), shown(kind)));
    }
    if (!f.present("rope_theta") && r.contains("rope_theta")) {
      const std::string where = source + " rope_parameters";
      const Fields inner(r, where);
      c.rope_theta = static_cast<float>(inner.positive_number("rope_theta", 10000.0));
    }
  }
  if (f.present("partial_rotary_factor") &&
      f.positive_number("partial_rotary_factor", 1.0) != 1.0) {
    f.fail("partial_rotary_factor", "1 (RoPE over part of each head is not implemented)");
  }
  if (type->has_attention_bias_field && f.boolean("attention_bias", false)) {
    f.fail("attention_bias",
           fmt::format("false: for {} it adds a bias to o_proj too, which the engine does not "
                       "implement",
                       out.model_type));
  }
  if (f.boolean("mlp_bias", false)) {
    f.fail("mlp_bias", "false (MLP biases are not implemented)");
  }

  // Sliding-window attention equals full attention while the context fits
  // the window, so the context is capped at the window.
  const bool window_on = !type->window_needs_flag || f.boolean("use_sliding_window", false);
  if (window_on && f.present("sliding_window")) {
    out.sliding_window = f.positive_int("sliding_window");
    if (out.sliding_window < c.seq_len) {
      const std::string why = fmt::format(
          "{}: sliding_window {} is below max_position_embeddings {}: the context is capped at "
          "{} tokens, where full attention equals the sliding window",
          source, out.sliding_window, c.seq_len, out.sliding_window);
      // A warning once per process (the configuration is read more than once).
      static std::atomic<bool> said{false};
      if (!said.exchange(true)) {
        log::warn("{}", why);
      } else {
        log::debug("{}", why);
      }
      c.seq_len = out.sliding_window;
    }
  }

  check_with_hf_names(c, source);
  return out;
}

}  // namespace flashcomm
