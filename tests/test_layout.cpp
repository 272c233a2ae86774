// The layout formulas, padding, chunk order, head shards, configuration
// checks and byte formulas, without MPI.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "flashcomm/comm.hpp"
#include "flashcomm/error.hpp"
#include "flashcomm/layout.hpp"
#include "flashcomm/presets.hpp"

namespace flashcomm {
namespace {

ParallelConfig layout(int dp, int tp, int k) {
  ParallelConfig c;
  c.dp_size = dp;
  c.tp_size = tp;
  c.flashcomm2 = k;
  return c;
}

// Every (DP, TP, K) with TP up to 16 and DP up to 3.
std::vector<ParallelConfig> all_layouts() {
  std::vector<ParallelConfig> out;
  for (int dp = 1; dp <= 3; ++dp) {
    for (int tp = 2; tp <= 16; ++tp) {
      for (int k = 1; k < tp; ++k) {
        if (tp % k == 0) {
          out.push_back(layout(dp, tp, k));
        }
      }
    }
  }
  return out;
}

TEST(Layout, GroupsFollowTheFormulas) {
  for (const ParallelConfig& c : all_layouts()) {
    const int tp = c.tp_size;
    const int k = c.otp_size();
    const int g = tp / k;
    for (int d = 0; d < c.dp_size; ++d) {
      for (int i = 0; i < g; ++i) {
        const std::vector<int> otp = otp_group_ranks(c, d, i);
        ASSERT_EQ(otp.size(), static_cast<size_t>(k));
        for (int j = 0; j < k; ++j) {
          EXPECT_EQ(otp[j], d * tp + i + j * g) << "dp " << d << " tp " << tp << " K " << k;
        }
      }
      for (int j = 0; j < k; ++j) {
        const std::vector<int> odp = odp_group_ranks(c, d, j);
        ASSERT_EQ(odp.size(), static_cast<size_t>(g));
        for (int i = 0; i < g; ++i) {
          EXPECT_EQ(odp[i], d * tp + j * g + i);
        }
      }
    }
  }
}

TEST(Layout, EveryRankSitsInOneOtpAndOneOdpGroupAtItsPlace) {
  for (const ParallelConfig& c : all_layouts()) {
    const int g = c.odp_size();
    std::multiset<int> in_otp;
    std::multiset<int> in_odp;
    for (int d = 0; d < c.dp_size; ++d) {
      for (int i = 0; i < g; ++i) {
        const auto ranks = otp_group_ranks(c, d, i);
        in_otp.insert(ranks.begin(), ranks.end());
      }
      for (int j = 0; j < c.otp_size(); ++j) {
        const auto ranks = odp_group_ranks(c, d, j);
        in_odp.insert(ranks.begin(), ranks.end());
      }
    }
    for (int w = 0; w < c.world_size(); ++w) {
      EXPECT_EQ(in_otp.count(w), 1U);
      EXPECT_EQ(in_odp.count(w), 1U);
      const RankPlace p = place_of(c, w);
      EXPECT_EQ(p.dp_rank * c.tp_size + p.tp_rank, w);
      // The rank is member j of OTP group i and member i of ODP group j.
      EXPECT_EQ(otp_group_ranks(c, p.dp_rank, p.otp_group)[p.odp_group], w);
      EXPECT_EQ(odp_group_ranks(c, p.dp_rank, p.odp_group)[p.otp_group], w);
      // An OTP group lies in one DP replica; so does the TP group.
      for (int r : otp_group_ranks(c, p.dp_rank, p.otp_group)) {
        EXPECT_EQ(r / c.tp_size, p.dp_rank);
      }
    }
  }
}

TEST(Layout, WithKOneTheOdpGroupIsTheTpGroup) {
  for (int dp = 1; dp <= 2; ++dp) {
    for (int tp = 2; tp <= 8; ++tp) {
      const ParallelConfig c = layout(dp, tp, 1);
      for (int d = 0; d < dp; ++d) {
        EXPECT_EQ(odp_group_ranks(c, d, 0), tp_group_ranks(c, d));
      }
    }
  }
}

TEST(Layout, DpGroupsHoldOneRankOfEachReplica) {
  const ParallelConfig c = layout(3, 4, 0);
  EXPECT_EQ(dp_group_ranks(c, 1), (std::vector<int>{1, 5, 9}));
  EXPECT_EQ(tp_group_ranks(c, 2), (std::vector<int>{8, 9, 10, 11}));
}

TEST(Layout, ChunkOrder) {
  EXPECT_EQ(flashcomm2_chunk_order(4, 1), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(flashcomm2_chunk_order(4, 2), (std::vector<int>{0, 2, 1, 3}));
  EXPECT_EQ(flashcomm2_chunk_order(6, 3), (std::vector<int>{0, 2, 4, 1, 3, 5}));
  EXPECT_EQ(flashcomm2_chunk_order(8, 2), (std::vector<int>{0, 4, 1, 5, 2, 6, 3, 7}));
  EXPECT_EQ(flashcomm2_chunk_order(8, 4), (std::vector<int>{0, 2, 4, 6, 1, 3, 5, 7}));
  for (const ParallelConfig& c : all_layouts()) {
    std::vector<int> order = flashcomm2_chunk_order(c.tp_size, c.otp_size());
    // Slot block i (K chunks) goes to ODP rank i, whose OTP group is
    // exactly those chunks' owners, in OTP order.
    for (int i = 0; i < c.odp_size(); ++i) {
      for (int j = 0; j < c.otp_size(); ++j) {
        EXPECT_EQ(order[i * c.otp_size() + j], otp_group_ranks(c, 0, i)[j]);
      }
    }
    std::sort(order.begin(), order.end());
    for (int t = 0; t < c.tp_size; ++t) {
      EXPECT_EQ(order[t], t);
    }
  }
}

TEST(Layout, Padding) {
  for (int tp = 1; tp <= 8; ++tp) {
    EXPECT_EQ(padded_tokens(1, tp), tp);
    EXPECT_EQ(padded_tokens(tp, tp), tp);
    EXPECT_EQ(padded_tokens(tp + 1, tp), 2 * tp);
    EXPECT_EQ(padded_tokens(0, tp), tp);
    if (tp > 1) {
      EXPECT_EQ(padded_tokens(tp - 1, tp), tp);
      EXPECT_EQ(padded_tokens(5 * tp + 1, tp), 6 * tp);
    }
  }
}

// The shapes whose messages the README quotes.
ModelConfig stories_like() {
  return preset_config("stories260K");
}

TEST(Layout, HeadShards) {
  const ModelConfig m = stories_like();
  HeadShard s = head_shard(m, 2, 1);
  EXPECT_EQ(s.q_head0, 4);
  EXPECT_EQ(s.n_q_heads, 4);
  EXPECT_EQ(s.kv_head0, 2);
  EXPECT_EQ(s.n_kv_heads, 2);
  // TP 8 > n_kv_heads 4: each KV head serves two ranks.
  for (int t = 0; t < 8; ++t) {
    s = head_shard(m, 8, t);
    EXPECT_EQ(s.n_q_heads, 1);
    EXPECT_EQ(s.n_kv_heads, 1);
    EXPECT_EQ(s.kv_head0, t / 2);
    // The rank's query head reads that KV head in the unsharded model too.
    EXPECT_EQ(s.q_head0 / (m.n_heads / m.n_kv_heads), s.kv_head0);
  }
}

void expect_config_error(const ModelConfig& m, const ParallelConfig& c, int world,
                         const std::string& expected) {
  try {
    check_parallel_config(m, c, world);
    ADD_FAILURE() << "no error; expected: " << expected;
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), expected);
  }
}

TEST(Layout, BadConfigurationsNameTheOptionAndValues) {
  const ModelConfig m = stories_like();
  expect_config_error(m, layout(1, 4, 3), 4,
                      "--flashcomm2 3 must divide the tensor-parallel size 4");
  expect_config_error(m, layout(1, 4, 4), 4,
                      "--flashcomm2 4 must be smaller than the tensor-parallel size 4");
  expect_config_error(m, layout(1, 1, 1), 1,
                      "--flashcomm2 1 needs a tensor-parallel size above 1, but --tp is 1");
  expect_config_error(m, layout(1, 3, 0), 3, "--tp 3 must divide the model's n_heads 8");
  expect_config_error(m, layout(1, 8, 0), 8, "--tp 8 must divide the model's hidden_dim 172");
  expect_config_error(m, layout(1, 0, 0), 0, "--tp 0 must be at least 1");
  expect_config_error(m, layout(0, 2, 0), 0, "--dp 0 must be at least 1");
  expect_config_error(
      m, layout(1, 2, -1), 2,
      "--flashcomm2 -1 must be 0 (off) or a tensor-parallel size K >= 1 of the projection");
  expect_config_error(m, layout(2, 2, 0), 3, "the job has 3 ranks but --dp 2 x --tp 2 needs 4");
  ModelConfig kv = m;
  kv.n_heads = 12;
  kv.n_kv_heads = 8;
  kv.hidden_dim = 120;
  expect_config_error(kv, layout(1, 12, 0), 12,
                      "--tp 12 must divide the model's n_kv_heads 8 (to shard them) or be a "
                      "multiple of it (to replicate them)");
  expect_config_error(kv, layout(1, 6, 0), 6,
                      "--tp 6 must divide the model's n_kv_heads 8 (to shard them) or be a "
                      "multiple of it (to replicate them)");
  expect_config_error(m, layout(2147483647, 2, 0), -1,
                      "--dp 2147483647 x --tp 2 exceeds the limit of 1048576 ranks");
  EXPECT_NO_THROW(check_parallel_config(m, layout(2, 4, 2), 8));
  EXPECT_NO_THROW(check_parallel_config(m, layout(1, 4, 0), -1));
}

TEST(Layout, PromptMustFitTheContext) {
  const ModelConfig m = stories_like();
  EXPECT_NO_THROW(check_prompt_fits(m, 512));
  EXPECT_THROW(check_prompt_fits(m, 513), ConfigError);
}

TEST(CommBytes, FormulasPerOp) {
  EXPECT_EQ(bytes_sent(CommOp::all_reduce, 4, 1024), 2 * 3 * 1024 / 4);
  EXPECT_EQ(bytes_sent(CommOp::reduce_scatter, 4, 1024), 3 * 1024 / 4);
  EXPECT_EQ(bytes_sent(CommOp::all_gather, 4, 1024), 3 * 1024 / 4);
  EXPECT_EQ(bytes_sent(CommOp::all_to_all, 8, 4096), 7 * 4096 / 8);
  EXPECT_EQ(bytes_sent(CommOp::all_reduce, 1, 4096), 0);
}

TEST(CommBytes, StatsSumPerPassOpAndGroup) {
  CommStats stats;
  stats.add(CommOp::all_gather, "tp", 100, 0.5);
  stats.add(CommOp::all_gather, "tp", 50, 0.25);
  stats.set_pass(Pass::decode);
  stats.add(CommOp::all_reduce, "tp", 7, 0.1);
  EXPECT_EQ(stats.bytes(Pass::prefill, CommOp::all_gather, "tp"), 150);
  EXPECT_EQ(stats.bytes(Pass::decode, CommOp::all_reduce, "tp"), 7);
  EXPECT_EQ(stats.bytes(Pass::prefill, CommOp::all_reduce, "tp"), 0);
  const auto prefill = stats.records(Pass::prefill);
  ASSERT_EQ(prefill.size(), 1U);
  EXPECT_EQ(prefill[0].calls, 2);
  EXPECT_DOUBLE_EQ(prefill[0].seconds, 0.75);
}

}  // namespace
}  // namespace flashcomm
