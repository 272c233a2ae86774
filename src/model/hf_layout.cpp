// Names and shapes of HF checkpoint tensors.
#include "model/hf_layout.hpp"

#include <fmt/format.h>

#include "flashcomm/error.hpp"
#include "flashcomm/hf.hpp"

namespace flashcomm {

namespace hf_layout {

namespace {

// Every engine tensor, in the order HF checkpoints usually list them.
constexpr Tensor kLayerTensors[] = {
    Tensor::attn_norm, Tensor::wq,     Tensor::bq,     Tensor::wk,     Tensor::bk,
    Tensor::wv,        Tensor::bv,     Tensor::q_norm, Tensor::k_norm, Tensor::wo,
    Tensor::ffn_norm,  Tensor::w_gate, Tensor::w_up,   Tensor::w_down,
};

// The glossary names of a tensor's HF shape.
std::vector<const char*> dim_names(Tensor t) {
  switch (t) {
    case Tensor::token_embedding:
    case Tensor::classifier:
      return {"vocab_size", "d_model"};
    case Tensor::attn_norm:
    case Tensor::ffn_norm:
    case Tensor::final_norm:
      return {"d_model"};
    case Tensor::wq:
      return {"q_dim", "d_model"};
    case Tensor::wk:
    case Tensor::wv:
      return {"kv_dim", "d_model"};
    case Tensor::wo:
      return {"d_model", "q_dim"};
    case Tensor::w_gate:
    case Tensor::w_up:
      return {"hidden_dim", "d_model"};
    case Tensor::w_down:
      return {"d_model", "hidden_dim"};
    case Tensor::bq:
      return {"q_dim"};
    case Tensor::bk:
    case Tensor::bv:
      return {"kv_dim"};
    case Tensor::q_norm:
    case Tensor::k_norm:
      return {"head_dim"};
  }
  return {};
}

Entry entry(const ModelConfig& c, Tensor t, int layer) {
  Entry e;
  e.tensor = t;
  e.layer = layer;
  e.name = hf_tensor_name(t, layer);
  const TensorShape s = tensor_shape(c, t);
  const std::vector<const char*> names = dim_names(t);
  if (names.size() == 1) {
    e.shape = {s.cols};
    e.shape_names = fmt::format("[{}]", names[0]);
  } else {
    e.shape = {s.rows, s.cols};
    e.shape_names = fmt::format("[{}, {}]", names[0], names[1]);
  }
  return e;
}

}  // namespace

std::vector<Entry> entries(const ModelConfig& c) {
  std::vector<Entry> out;
  out.push_back(entry(c, Tensor::token_embedding, 0));
  for (int l = 0; l < c.n_layers; ++l) {
    for (Tensor t : kLayerTensors) {
      if (has_tensor(c, t)) {
        out.push_back(entry(c, t, l));
      }
    }
  }
  out.push_back(entry(c, Tensor::final_norm, 0));
  if (has_tensor(c, Tensor::classifier)) {
    out.push_back(entry(c, Tensor::classifier, 0));
  }
  return out;
}

bool per_layer(Tensor t) {
  return t != Tensor::token_embedding && t != Tensor::final_norm && t != Tensor::classifier;
}

bool rows_permuted(Tensor t) {
  return t == Tensor::wq || t == Tensor::wk;
}

bool cols_permuted(Tensor t) {
  return t == Tensor::bq || t == Tensor::bk || t == Tensor::q_norm || t == Tensor::k_norm;
}

}  // namespace hf_layout

std::string hf_tensor_name(Tensor t, int layer) {
  const std::string p = fmt::format("model.layers.{}.", layer);
  switch (t) {
    case Tensor::token_embedding:
      return "model.embed_tokens.weight";
    case Tensor::final_norm:
      return "model.norm.weight";
    case Tensor::classifier:
      return "lm_head.weight";
    case Tensor::attn_norm:
      return p + "input_layernorm.weight";
    case Tensor::wq:
      return p + "self_attn.q_proj.weight";
    case Tensor::wk:
      return p + "self_attn.k_proj.weight";
    case Tensor::wv:
      return p + "self_attn.v_proj.weight";
    case Tensor::wo:
      return p + "self_attn.o_proj.weight";
    case Tensor::bq:
      return p + "self_attn.q_proj.bias";
    case Tensor::bk:
      return p + "self_attn.k_proj.bias";
    case Tensor::bv:
      return p + "self_attn.v_proj.bias";
    case Tensor::q_norm:
      return p + "self_attn.q_norm.weight";
    case Tensor::k_norm:
      return p + "self_attn.k_norm.weight";
    case Tensor::ffn_norm:
      return p + "post_attention_layernorm.weight";
    case Tensor::w_gate:
      return p + "mlp.gate_proj.weight";
    case Tensor::w_up:
      return p + "mlp.up_proj.weight";
    case Tensor::w_down:
      return p + "mlp.down_proj.weight";
  }
  throw InternalError(fmt::format("no HF name for tensor {}", static_cast<int>(t)));
}

}  // namespace flashcomm
