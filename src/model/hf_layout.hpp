// The tensors of an HF checkpoint of a given config: names, shapes and the
// RoPE row order, shared by the reader (HfSource) and the writer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "flashcomm/model.hpp"
#include "flashcomm/weight_source.hpp"

namespace flashcomm::hf_layout {

struct Entry {
  Tensor tensor;
  int layer = 0;  // 0 for the tensors outside the layers
  std::string name;  // model.layers.{layer}.self_attn.q_proj.weight, ...
  std::vector<std::int64_t> shape;  // as HF stores it: 1-D for norms and biases
  std::string shape_names;  // the same in glossary names: "[q_dim, d_model]"
};

// Every tensor the config implies, in HF's usual order.
std::vector<Entry> entries(const ModelConfig& config);

bool per_layer(Tensor tensor);

// q/k projections: rows are permuted within each head; their biases and the
// q/k norms: elements along [1, n].
bool rows_permuted(Tensor tensor);
bool cols_permuted(Tensor tensor);

// Where the engine's element e (adjacent RoPE pairs: e = head*head_dim + 2i + j)
// lies in HF's rotate-half order: head*head_dim + j*head_dim/2 + i.
inline int hf_index(int e, int head_dim) {
  const int head = e / head_dim;
  const int m = e % head_dim;
  return head * head_dim + (m % 2) * (head_dim / 2) + m / 2;
}

}  // namespace flashcomm::hf_layout
