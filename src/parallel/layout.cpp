// Group formulas, padding, chunk order and configuration checks.
#include "flashcomm/layout.hpp"

#include <algorithm>

#include "flashcomm/error.hpp"

namespace flashcomm {

RankPlace place_of(const ParallelConfig& config, int world_rank) {
  FC_ASSERT(world_rank >= 0 && world_rank < config.world_size(), "rank {} of {}", world_rank,
            config.world_size());
  RankPlace p;
  p.world_rank = world_rank;
  p.dp_rank = world_rank / config.tp_size;
  p.tp_rank = world_rank % config.tp_size;
  const int g = config.odp_size();
  p.otp_group = p.tp_rank % g;
  p.odp_group = p.tp_rank / g;
  return p;
}

std::vector<int> tp_group_ranks(const ParallelConfig& config, int dp_rank) {
  std::vector<int> ranks;
  for (int t = 0; t < config.tp_size; ++t) {
    ranks.push_back(dp_rank * config.tp_size + t);
  }
  return ranks;
}

std::vector<int> dp_group_ranks(const ParallelConfig& config, int tp_rank) {
  std::vector<int> ranks;
  for (int d = 0; d < config.dp_size; ++d) {
    ranks.push_back(d * config.tp_size + tp_rank);
  }
  return ranks;
}

std::vector<int> otp_group_ranks(const ParallelConfig& config, int dp_rank, int i) {
  const int g = config.odp_size();
  std::vector<int> ranks;
  for (int j = 0; j < config.otp_size(); ++j) {
    ranks.push_back(dp_rank * config.tp_size + i + j * g);
  }
  return ranks;
}

std::vector<int> odp_group_ranks(const ParallelConfig& config, int dp_rank, int j) {
  const int g = config.odp_size();
  std::vector<int> ranks;
  for (int i = 0; i < g; ++i) {
    ranks.push_back(dp_rank * config.tp_size + j * g + i);
  }
  return ranks;
}

int padded_tokens(int n_tokens, int tp_size) {
  FC_ASSERT(n_tokens >= 0 && tp_size > 0, "n_tokens {} tp_size {}", n_tokens, tp_size);
  const int chunks = n_tokens == 0 ? 1 : (n_tokens + tp_size - 1) / tp_size;
  return chunks * tp_size;
}

std::vector<int> flashcomm2_chunk_order(int tp_size, int otp_size) {
  FC_ASSERT(otp_size > 0 && tp_size % otp_size == 0, "tp_size {} otp_size {}", tp_size, otp_size);
  const int g = tp_size / otp_size;
  std::vector<int> order;
  for (int i = 0; i < g; ++i) {
    for (int j = 0; j < otp_size; ++j) {
      order.push_back(i + j * g);
    }
  }
  return order;
}

HeadShard head_shard(const ModelConfig& model, int tp_size, int tp_rank) {
  HeadShard s;
  s.n_q_heads = model.n_heads / tp_size;
  s.q_head0 = tp_rank * s.n_q_heads;
  if (tp_size <= model.n_kv_heads) {
    s.n_kv_heads = model.n_kv_heads / tp_size;
    s.kv_head0 = tp_rank * s.n_kv_heads;
  } else {
    // Replicated: the rank's query heads all read one KV head.
    s.n_kv_heads = 1;
    s.kv_head0 = tp_rank / (tp_size / model.n_kv_heads);
  }
  return s;
}

Flashcomm2Place flashcomm2_place(int tp_rank, int tp_size, int k) {
  FC_ASSERT(k > 0 && tp_size % k == 0 && tp_rank >= 0 && tp_rank < tp_size,
            "tp_rank {} tp_size {} k {}", tp_rank, tp_size, k);
  const int g = tp_size / k;
  return {tp_rank % g, tp_rank / g};
}

int flashcomm2_block_col(int tp_rank, int tp_size, int k, int total_cols) {
  FC_ASSERT(total_cols % tp_size == 0, "total_cols {} tp_size {}", total_cols, tp_size);
  return flashcomm2_place(tp_rank, tp_size, k).j * (total_cols / k);
}

std::vector<RowRange> overlap_row_chunks(int n_slice, int chunks) {
  FC_ASSERT(n_slice >= 1 && chunks >= 1, "n_slice {} chunks {}", n_slice, chunks);
  const int panels = (n_slice + kPanelRows - 1) / kPanelRows;
  const int n = std::min(chunks, panels);
  std::vector<RowRange> out;
  int panel = 0;
  for (int c = 0; c < n; ++c) {
    const int count = panels / n + (c < panels % n ? 1 : 0);
    const int row0 = panel * kPanelRows;
    out.push_back({row0, std::min((panel + count) * kPanelRows, n_slice) - row0});
    panel += count;
  }
  return out;
}

const char* to_string(CommQuant quant) {
  return quant == CommQuant::int8 ? "int8" : "none";
}

const char* to_string(CommDtype dtype) {
  return dtype == CommDtype::bf16 ? "bf16" : "f32";
}

void check_parallel_config(const ModelConfig& model, const ParallelConfig& config, int world_size) {
  const int tp = config.tp_size;
  const int k = config.flashcomm2;
  if (tp < 1) {
    throw ConfigError(fmt::format("--tp {} must be at least 1", tp));
  }
  if (config.dp_size < 1) {
    throw ConfigError(fmt::format("--dp {} must be at least 1", config.dp_size));
  }
  // Far beyond any machine, and small enough that dp * tp cannot overflow.
  constexpr int kMaxRanks = 1 << 20;
  if (tp > kMaxRanks || config.dp_size > kMaxRanks / tp) {
    throw ConfigError(fmt::format("--dp {} x --tp {} exceeds the limit of {} ranks", config.dp_size,
                                  tp, kMaxRanks));
  }
  // o_proj's K and down_proj's K_mlp obey the same rules.
  const auto check_k = [tp](const char* option, int value) {
    if (value < 0) {
      throw ConfigError(
          fmt::format("{} {} must be 0 (off) or a tensor-parallel size K >= 1 of the projection",
                      option, value));
    }
    if (value > 0 && tp == 1) {
      throw ConfigError(
          fmt::format("{} {} needs a tensor-parallel size above 1, but --tp is 1", option, value));
    }
    if (value > 0 && value >= tp) {
      throw ConfigError(
          fmt::format("{} {} must be smaller than the tensor-parallel size {}", option, value, tp));
    }
    if (value > 0 && tp % value != 0) {
      throw ConfigError(
          fmt::format("{} {} must divide the tensor-parallel size {}", option, value, tp));
    }
  };
  check_k("--flashcomm2", k);
  check_k("--flashcomm2-mlp", config.flashcomm2_mlp);
  constexpr int kMaxChunks = 64;
  if (config.overlap_chunks < 1 || config.overlap_chunks > kMaxChunks) {
    throw ConfigError(fmt::format("--overlap-chunks {} must be between 1 (no overlap) and {}",
                                  config.overlap_chunks, kMaxChunks));
  }
  if (model.n_heads % tp != 0) {
    throw ConfigError(fmt::format("--tp {} must divide the model's n_heads {}", tp, model.n_heads));
  }
  const bool kv_shards = tp <= model.n_kv_heads && model.n_kv_heads % tp == 0;
  const bool kv_replicates = tp > model.n_kv_heads && tp % model.n_kv_heads == 0;
  if (!kv_shards && !kv_replicates) {
    throw ConfigError(fmt::format(
        "--tp {} must divide the model's n_kv_heads {} (to shard them) or be a multiple of it "
        "(to replicate them)",
        tp, model.n_kv_heads));
  }
  if (model.hidden_dim % tp != 0) {
    throw ConfigError(
        fmt::format("--tp {} must divide the model's hidden_dim {}", tp, model.hidden_dim));
  }
  if (world_size >= 0 && world_size != config.world_size()) {
    throw ConfigError(fmt::format("the job has {} ranks but --dp {} x --tp {} needs {}", world_size,
                                  config.dp_size, tp, config.world_size()));
  }
}

void check_prompt_fits(const ModelConfig& model, int n_prompt_tokens) {
  if (n_prompt_tokens > model.seq_len) {
    throw ConfigError(fmt::format(
        "the prompt has {} tokens (BOS included) but the model's context (seq_len) is {}",
        n_prompt_tokens, model.seq_len));
  }
}

}  // namespace flashcomm
