// Tests of HF checkpoints: stories260K written as an HF checkpoint in each
// dtype gives the llama2.c model's logits; Qwen-style checkpoints (q/k/v
// biases; q/k norms with head_dim != d_model/n_heads) in bfloat16 give the
// logits of an independent forward pass written with HF's own conventions
// (rotate-half RoPE) on the file's raw tensors; sharded checkpoints; per-rank
// slicing; every refusal of a bad checkpoint, naming the tensor or file.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "flashcomm/checkpoint.hpp"
#include "flashcomm/context.hpp"
#include "flashcomm/engine.hpp"
#include "flashcomm/error.hpp"
#include "flashcomm/hf.hpp"
#include "flashcomm/layout.hpp"
#include "flashcomm/model.hpp"
#include "flashcomm/safetensors.hpp"
#include "model_fixtures.hpp"
#include "test_support.hpp"

namespace flashcomm {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::qwen2_config;
using test::qwen3_config;
using test::random_model;
using test::rounded;

// --- helpers ---------------------------------------------------------------

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

void expect_same_weights(ModelWeights a, ModelWeights b) {
  auto ta = test::all_tensors(a);
  auto tb = test::all_tensors(b);
  ASSERT_EQ(ta.size(), tb.size());
  for (size_t i = 0; i < ta.size(); ++i) {
    const std::vector<float>& x = *ta[i].second;
    const std::vector<float>& y = *tb[i].second;
    ASSERT_EQ(x.size(), y.size()) << ta[i].first;
    EXPECT_TRUE(x.empty() || std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0)
        << ta[i].first << " differs";
  }
}

// Every tensor of a source into memory, optional ones included (the shapes of
// model.hpp's LayerWeights).
ModelWeights read_all(const WeightSource& s) {
  const ModelConfig& c = s.config();
  ModelWeights w;
  w.config = c;
  auto whole = [&](Tensor t, int layer) {
    if (!has_tensor(c, t)) {
      return std::vector<float>();
    }
    return s.rows(t, layer, 0, tensor_shape(c, t).rows);
  };
  w.token_embedding = whole(Tensor::token_embedding, 0);
  w.final_norm = whole(Tensor::final_norm, 0);
  w.classifier = whole(Tensor::classifier, 0);
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights x;
    x.attn_norm = whole(Tensor::attn_norm, l);
    x.wq = whole(Tensor::wq, l);
    x.wk = whole(Tensor::wk, l);
    x.wv = whole(Tensor::wv, l);
    x.wo = whole(Tensor::wo, l);
    x.bq = whole(Tensor::bq, l);
    x.bk = whole(Tensor::bk, l);
    x.bv = whole(Tensor::bv, l);
    x.q_norm = whole(Tensor::q_norm, l);
    x.k_norm = whole(Tensor::k_norm, l);
    x.ffn_norm = whole(Tensor::ffn_norm, l);
    x.w_gate = whole(Tensor::w_gate, l);
    x.w_down = whole(Tensor::w_down, l);
    x.w_up = whole(Tensor::w_up, l);
    w.layers.push_back(std::move(x));
  }
  return w;
}

// A forward pass written from HF's definitions, on the raw tensors of a
// single-file checkpoint: rows as the file stores them and rotate-half RoPE
// (x[i], x[i + head_dim/2]), in double. It shares no code with the engine or
// HfSource beyond the file and config parsers, so it checks the row
// permutation against HF's convention rather than against its own inverse.
class HfReference {
 public:
  explicit HfReference(const std::string& dir)
      : hf_(parse_hf_config(read_text(dir + "/config.json"), "config.json")),
        file_(dir + "/model.safetensors") {}

  // Logits [vocab_size] of every position.
  std::vector<std::vector<double>> logits(const std::vector<int>& tokens) const {
    const ModelConfig& c = hf_.model;
    const int n = static_cast<int>(tokens.size());
    const int d = c.d_model;
    const int hd = c.head_dim;
    const int group = c.n_heads / c.n_kv_heads;
    const std::vector<double> embed = get("model.embed_tokens.weight");
    std::vector<std::vector<double>> x(static_cast<size_t>(n));
    for (int t = 0; t < n; ++t) {
      x[t].assign(embed.begin() + static_cast<long>(tokens[t]) * d,
                  embed.begin() + static_cast<long>(tokens[t] + 1) * d);
    }
    for (int l = 0; l < c.n_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      std::vector<std::vector<double>> q(n), k(n), v(n);
      for (int t = 0; t < n; ++t) {
        const std::vector<double> h = rmsnorm(x[t], get(p + "input_layernorm.weight"));
        q[t] = linear(get(p + "self_attn.q_proj.weight"), h);
        k[t] = linear(get(p + "self_attn.k_proj.weight"), h);
        v[t] = linear(get(p + "self_attn.v_proj.weight"), h);
        if (c.qkv_bias) {
          add(q[t], get(p + "self_attn.q_proj.bias"));
          add(k[t], get(p + "self_attn.k_proj.bias"));
          add(v[t], get(p + "self_attn.v_proj.bias"));
        }
        for (auto [vec, norm, heads] :
             {std::tuple{&q[t], "q_norm", c.n_heads}, std::tuple{&k[t], "k_norm", c.n_kv_heads}}) {
          for (int head = 0; head < heads; ++head) {
            std::vector<double> part(vec->begin() + head * hd, vec->begin() + (head + 1) * hd);
            if (c.qk_norm) {
              part = rmsnorm(part, get(p + "self_attn." + norm + ".weight"));
            }
            rotate_half(part, t);
            std::copy(part.begin(), part.end(), vec->begin() + head * hd);
          }
        }
      }
      const std::vector<double> wo = get(p + "self_attn.o_proj.weight");
      for (int t = 0; t < n; ++t) {
        std::vector<double> att(static_cast<size_t>(c.q_dim()), 0.0);
        for (int head = 0; head < c.n_heads; ++head) {
          const int kvh = head / group;
          std::vector<double> score(static_cast<size_t>(t + 1));
          double top = -1e300;
          for (int s = 0; s <= t; ++s) {
            double dot = 0;
            for (int i = 0; i < hd; ++i) {
              dot += q[t][head * hd + i] * k[s][kvh * hd + i];
            }
            score[s] = dot / std::sqrt(static_cast<double>(hd));
            top = std::max(top, score[s]);
          }
          double sum = 0;
          for (double& e : score) {
            e = std::exp(e - top);
            sum += e;
          }
          for (int s = 0; s <= t; ++s) {
            for (int i = 0; i < hd; ++i) {
              att[head * hd + i] += score[s] / sum * v[s][kvh * hd + i];
            }
          }
        }
        add(x[t], linear(wo, att));
      }
      for (int t = 0; t < n; ++t) {
        const std::vector<double> h = rmsnorm(x[t], get(p + "post_attention_layernorm.weight"));
        std::vector<double> gate = linear(get(p + "mlp.gate_proj.weight"), h);
        const std::vector<double> up = linear(get(p + "mlp.up_proj.weight"), h);
        for (size_t i = 0; i < gate.size(); ++i) {
          gate[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
        }
        add(x[t], linear(get(p + "mlp.down_proj.weight"), gate));
      }
    }
    const std::vector<double> out = c.shared_classifier ? embed : get("lm_head.weight");
    std::vector<std::vector<double>> logits;
    for (int t = 0; t < n; ++t) {
      logits.push_back(linear(out, rmsnorm(x[t], get("model.norm.weight"))));
    }
    return logits;
  }

 private:
  std::vector<double> get(const std::string& name) const {
    const SafetensorsTensor* t = file_.find(name);
    if (t == nullptr) {
      throw std::runtime_error("the reference found no " + name);
    }
    std::vector<float> f(t->elements());
    convert_to_f32(t->dtype, file_.data(*t), f.size(), f.data());
    return {f.begin(), f.end()};
  }

  static std::vector<double> linear(const std::vector<double>& w, const std::vector<double>& x) {
    std::vector<double> y(w.size() / x.size(), 0.0);
    for (size_t r = 0; r < y.size(); ++r) {
      for (size_t i = 0; i < x.size(); ++i) {
        y[r] += w[r * x.size() + i] * x[i];
      }
    }
    return y;
  }

  static void add(std::vector<double>& a, const std::vector<double>& b) {
    for (size_t i = 0; i < a.size(); ++i) {
      a[i] += b[i];
    }
  }

  std::vector<double> rmsnorm(const std::vector<double>& x, const std::vector<double>& w) const {
    double ss = 0;
    for (double e : x) {
      ss += e * e;
    }
    const double scale = 1.0 / std::sqrt(ss / static_cast<double>(x.size()) + hf_.model.norm_eps);
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      y[i] = x[i] * scale * w[i];
    }
    return y;
  }

  // HF's apply_rotary_pos_emb: x * cos + rotate_half(x) * sin, where
  // rotate_half(x) = (-x2, x1) for the halves x1, x2 of the head.
  void rotate_half(std::vector<double>& x, int position) const {
    const size_t half = x.size() / 2;
    for (size_t i = 0; i < half; ++i) {
      const double freq = std::pow(static_cast<double>(hf_.model.rope_theta),
                                   -2.0 * static_cast<double>(i) / static_cast<double>(x.size()));
      const double a = position * freq;
      const double x1 = x[i];
      const double x2 = x[i + half];
      x[i] = x1 * std::cos(a) - x2 * std::sin(a);
      x[i + half] = x2 * std::cos(a) + x1 * std::sin(a);
    }
  }

  HfConfig hf_;
  SafetensorsFile file_;
};

double max_rel_err(const std::vector<float>& got, const std::vector<double>& want) {
  double scale = 0;
  double err = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    scale = std::max(scale, std::fabs(want[i]));
    err = std::max(err, std::fabs(static_cast<double>(got[i]) - want[i]));
  }
  return err / scale;
}

const std::vector<int> kPrompt = {1, 403, 261, 429, 407, 261, 378, 14, 75, 300, 9, 2};

// Logits of every position, one token at a time.
std::vector<std::vector<float>> reference_logits(const ModelWeights& w,
                                                 const std::vector<int>& tokens) {
  ReferenceModel ref(w);
  std::vector<std::vector<float>> out;
  for (int t : tokens) {
    out.push_back(ref.step(t));
  }
  return out;
}

std::vector<std::vector<float>> engine_logits(const WeightSource& source,
                                              const std::vector<int>& tokens) {
  ParallelConfig single;
  ParallelContext ctx(MPI_COMM_SELF, single);
  Engine engine(source, ctx);
  std::vector<std::vector<float>> out = {engine.prefill({tokens[0]})};
  for (size_t i = 1; i < tokens.size(); ++i) {
    out.push_back(engine.decode(tokens[i]));
  }
  return out;
}

void expect_bits_equal(const std::vector<std::vector<float>>& a,
                       const std::vector<std::vector<float>>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t t = 0; t < a.size(); ++t) {
    ASSERT_EQ(a[t].size(), b[t].size()) << what;
    EXPECT_EQ(std::memcmp(a[t].data(), b[t].data(), a[t].size() * sizeof(float)), 0)
        << what << ": logits of position " << t << " differ";
  }
}

const ModelWeights& stories() {
  static const ModelWeights w = load_llama2c(test::stories_checkpoint());
  return w;
}

// --- stories260K -------------------------------------------------------------

TEST(HfCheckpoint, Stories260KInFloat32GivesTheLlama2cLogitsBitForBit) {
  const test::TempDir dir("hf32");
  save_hf_checkpoint(stories(), dir.path(), DType::f32, "llama");
  const json config = json::parse(read_text(dir.file("config.json")));
  EXPECT_EQ(config["model_type"], "llama");
  EXPECT_EQ(config["hidden_size"], 64);
  EXPECT_EQ(config["num_key_value_heads"], 4);
  EXPECT_EQ(config["rms_norm_eps"], 1e-5);
  EXPECT_EQ(config["tie_word_embeddings"], true);
  EXPECT_EQ(config["torch_dtype"], "float32");

  const HfSource source(dir.path());
  EXPECT_EQ(source.hf_config().model_type, "llama");
  ModelWeights back = materialize(source);
  expect_same_weights(back, stories());
  // The llama2.c loader's model and the HF checkpoint's, through the plain
  // reference pass and the engine, at every position.
  expect_bits_equal(reference_logits(back, kPrompt), reference_logits(stories(), kPrompt),
                    "reference pass");
  expect_bits_equal(engine_logits(source, kPrompt), engine_logits(MemorySource(stories()), kPrompt),
                    "engine");
}

TEST(HfCheckpoint, Float16AndBfloat16GiveTheLogitsOfTheRoundedWeights) {
  for (DType dtype : {DType::f16, DType::bf16}) {
    SCOPED_TRACE(safetensors_name(dtype));
    const test::TempDir dir("hf16");
    save_hf_checkpoint(stories(), dir.path(), dtype, "llama");
    const HfSource source(dir.path());
    const ModelWeights expected = rounded(stories(), dtype);
    expect_same_weights(materialize(source), expected);
    expect_bits_equal(engine_logits(source, kPrompt),
                      engine_logits(MemorySource(expected), kPrompt), "engine");
    expect_bits_equal(reference_logits(materialize(source), kPrompt),
                      reference_logits(expected, kPrompt), "reference pass");
  }
}

TEST(HfCheckpoint, TheRowOrderIsHfsRotateHalf) {
  // Against a forward pass written from HF's definitions on the file as stored.
  const test::TempDir dir("hfrot");
  save_hf_checkpoint(stories(), dir.path(), DType::f32, "llama");
  const HfReference hf(dir.path());
  const std::vector<std::vector<double>> want = hf.logits(kPrompt);
  const std::vector<std::vector<float>> got = reference_logits(stories(), kPrompt);
  for (size_t t = 0; t < kPrompt.size(); ++t) {
    EXPECT_LT(max_rel_err(got[t], want[t]), 1e-5) << "position " << t;
  }

  // And element by element: engine row 2i + j of head h is HF row
  // h*head_dim + j*head_dim/2 + i.
  const SafetensorsFile file(dir.file("model.safetensors"));
  const SafetensorsTensor* wk = file.find("model.layers.2.self_attn.k_proj.weight");
  ASSERT_NE(wk, nullptr);
  const int hd = 8;
  const int d = 64;
  const std::vector<float>& engine_wk = stories().layers[2].wk;
  for (int head = 0; head < 4; ++head) {
    for (int i = 0; i < hd / 2; ++i) {
      for (int j = 0; j < 2; ++j) {
        float stored = 0;
        const int hf_row = head * hd + j * hd / 2 + i;
        convert_to_f32(DType::f32, file.data(*wk) + static_cast<size_t>(hf_row * d + 5) * 4, 1,
                       &stored);
        EXPECT_EQ(stored, engine_wk[static_cast<size_t>((head * hd + 2 * i + j) * d + 5)]);
      }
    }
  }
}

TEST(HfCheckpoint, AShardedCheckpointReadsAsTheSingleFile) {
  const test::TempDir dir("hfshard");
  save_hf_checkpoint(stories(), dir.path(), DType::bf16, "mistral", 4);
  EXPECT_FALSE(fs::exists(dir.file("model.safetensors")));
  const json index = json::parse(read_text(dir.file("model.safetensors.index.json")));
  std::set<std::string> files;
  for (const auto& [tensor, file] : index["weight_map"].items()) {
    files.insert(file.get<std::string>());
  }
  EXPECT_EQ(files, (std::set<std::string>{
                       "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
                       "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors"}));
  for (const std::string& f : files) {
    EXPECT_TRUE(fs::exists(dir.file(f))) << f;
  }
  const HfSource source(dir.path());
  EXPECT_EQ(source.hf_config().model_type, "mistral");
  expect_same_weights(materialize(source), rounded(stories(), DType::bf16));

  // A single file beside an index wins, as in transformers.
  save_hf_checkpoint(stories(), dir.path() + "/single", DType::f32, "llama");
  fs::copy_file(dir.file("single/model.safetensors"), dir.file("model.safetensors"));
  expect_same_weights(materialize(HfSource(dir.path())), stories());
}

TEST(HfCheckpoint, SymbolicLinksAreFollowed) {
  // The Hugging Face cache's snapshot directories link to blobs elsewhere.
  const test::TempDir blobs("hfblobs");
  const test::TempDir snapshot("hfsnap");
  save_hf_checkpoint(stories(), blobs.path(), DType::f16, "llama");
  fs::create_symlink(blobs.file("model.safetensors"), snapshot.file("model.safetensors"));
  fs::create_symlink(blobs.file("config.json"), snapshot.file("config.json"));
  expect_same_weights(materialize(HfSource(snapshot.path())), rounded(stories(), DType::f16));
}

// --- Qwen ---------------------------------------------------------------------

TEST(HfCheckpoint, QwenStyleBfloat16CheckpointsMatchHfsDefinition) {
  for (const auto& [type, config] :
       {std::pair{"qwen2", qwen2_config()}, std::pair{"qwen3", qwen3_config()}}) {
    SCOPED_TRACE(type);
    const ModelWeights model = rounded(random_model(config, 7), DType::bf16);
    const test::TempDir dir("hfqwen");
    save_hf_checkpoint(model, dir.path(), DType::bf16, type);
    const HfSource source(dir.path());
    EXPECT_EQ(source.config().qkv_bias, config.qkv_bias);
    EXPECT_EQ(source.config().qk_norm, config.qk_norm);
    EXPECT_EQ(source.config().head_dim, config.head_dim);
    // bfloat16 holds the rounded weights exactly: they come back bit for bit.
    expect_same_weights(read_all(source), model);

    const std::vector<int> prompt = {1, 17, 5, 88, 42, 3, 60, 9};
    const std::vector<std::vector<double>> want = HfReference(dir.path()).logits(prompt);
    const std::vector<std::vector<float>> engine = engine_logits(source, prompt);
    const std::vector<std::vector<float>> reference = reference_logits(read_all(source), prompt);
    for (size_t t = 0; t < prompt.size(); ++t) {
      EXPECT_LT(max_rel_err(engine[t], want[t]), 1e-4) << "engine, position " << t;
      EXPECT_LT(max_rel_err(reference[t], want[t]), 1e-4) << "reference pass, position " << t;
    }
  }
}

// --- per-rank reads ---------------------------------------------------------------

TEST(HfSource, EachRanksShardEqualsTheInMemoryShard) {
  // Qwen2 with 2 KV heads of 8 and an MLP of 64 at TP 4: KV heads replicated.
  ModelConfig q2 = qwen2_config();
  q2.n_heads = 8;
  q2.d_model = 64;
  for (const auto& [type, model] :
       {std::pair{"llama", stories()},
        std::pair{"qwen2", rounded(random_model(q2, 4), DType::bf16)},
        std::pair{"qwen3", rounded(random_model(qwen3_config(), 3), DType::bf16)}}) {
    SCOPED_TRACE(type);
    const test::TempDir dir("hfrank");
    save_hf_checkpoint(model, dir.path(), DType::bf16, type);
    const HfSource source(dir.path());
    const ModelWeights expected = read_all(source);
    const MemorySource memory(expected);
    int layouts = 0;
    for (int tp : {1, 2, 4}) {
      for (int k = 0; k < tp; ++k) {
        ParallelConfig pc;
        pc.tp_size = tp;
        pc.flashcomm2 = k;
        if (k > 0 && tp % k != 0) {
          continue;
        }
        try {
          check_parallel_config(source.config(), pc, tp);
        } catch (const ConfigError&) {
          continue;
        }
        ++layouts;
        for (int rank = 0; rank < tp; ++rank) {
          SCOPED_TRACE(fmt::format("tp {} K {} rank {}", tp, k, rank));
          const RankPlace place = place_of(pc, rank);
          const ShardedWeights a = shard_weights(source, pc, place, true);
          const ShardedWeights b = shard_weights(memory, pc, place, true);
          ASSERT_EQ(a.layers.size(), b.layers.size());
          for (size_t l = 0; l < a.layers.size(); ++l) {
            const ShardedLayer& x = a.layers[l];
            const ShardedLayer& y = b.layers[l];
            EXPECT_EQ(x.attn_norm, y.attn_norm);
            EXPECT_EQ(x.w_qkv, y.w_qkv);
            EXPECT_EQ(x.b_qkv, y.b_qkv);
            EXPECT_EQ(x.q_norm, y.q_norm);
            EXPECT_EQ(x.k_norm, y.k_norm);
            EXPECT_EQ(x.wo, y.wo);
            EXPECT_EQ(x.ffn_norm, y.ffn_norm);
            EXPECT_EQ(x.w_gate_up, y.w_gate_up);
            EXPECT_EQ(x.w_down, y.w_down);
          }
          EXPECT_EQ(a.token_embedding, b.token_embedding);
          EXPECT_EQ(a.final_norm, b.final_norm);
          EXPECT_EQ(a.classifier, b.classifier);
        }
      }
    }
    EXPECT_GE(layouts, 4) << "TP 1 and 2 at least, with FlashComm2 K=1";
  }
}

TEST(HfSource, BlocksThatCutHeadsReadTheRightRows) {
  const ModelWeights model = rounded(random_model(qwen2_config(), 11), DType::bf16);
  const test::TempDir dir("hfblock");
  save_hf_checkpoint(model, dir.path(), DType::bf16, "qwen2");
  const HfSource source(dir.path());
  const std::vector<float> wq = source.rows(Tensor::wq, 1, 0, 48);
  const std::vector<float> bq = source.rows(Tensor::bq, 1, 0, 1);
  // Rows 5..17 straddle heads 0, 1 and 2; columns 3..10 of the bias too.
  std::vector<float> block(13 * 7);
  source.read_block(Tensor::wq, 1, 5, 13, 20, 7, block.data());
  for (int r = 0; r < 13; ++r) {
    for (int col = 0; col < 7; ++col) {
      EXPECT_EQ(block[r * 7 + col], wq[(5 + r) * 48 + 20 + col]);
    }
  }
  std::vector<float> bias(8);
  source.read_block(Tensor::bq, 1, 0, 1, 3, 8, bias.data());
  EXPECT_EQ(bias, std::vector<float>(bq.begin() + 3, bq.begin() + 11));
  EXPECT_EQ(bq, model.layers[1].bq);
}

TEST(HfSource, ARankReadsOnlyItsShard) {
  const test::TempDir dir("hfbytes");
  save_hf_checkpoint(stories(), dir.path(), DType::f16, "llama");
  const ModelConfig& c = stories().config;
  ParallelConfig pc;
  pc.tp_size = 4;
  const HfSource source(dir.path());
  shard_weights(source, pc, place_of(pc, 2), false);
  // Per layer, a quarter of every matrix (2 query heads and 1 KV head of 8
  // dims, 43 MLP rows) and both norms, at 2 bytes an element.
  const std::uint64_t d = c.d_model;
  const std::uint64_t per_layer = (16 + 8 + 8) * d + d * 16 + 3 * 43 * d + 2 * d;
  EXPECT_EQ(source.bytes_read(), c.n_layers * per_layer * 2);
}

// --- Checkpoint: either format -----------------------------------------------------

TEST(Checkpoint, RecognisesEachFormat) {
  const test::TempDir dir("hfck");
  save_hf_checkpoint(stories(), dir.path(), DType::f32, "llama");
  EXPECT_EQ(checkpoint_format(dir.path()), CheckpointFormat::hf);
  EXPECT_EQ(checkpoint_format(test::stories_checkpoint()), CheckpointFormat::llama2c);
  for (const char* file : {"model.safetensors", "config.json"}) {
    try {
      checkpoint_format(dir.file(file));
      ADD_FAILURE() << file << " accepted";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find("pass its directory"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(read_checkpoint_config(dir.path()).d_model, 64);
  EXPECT_EQ(read_checkpoint_config(test::stories_checkpoint()).d_model, 64);

  Checkpoint hf(dir.path());
  Checkpoint l2c(test::stories_checkpoint());
  EXPECT_EQ(hf.format(), CheckpointFormat::hf);
  EXPECT_EQ(l2c.format(), CheckpointFormat::llama2c);
  expect_same_weights(hf.full_weights(), l2c.full_weights());
  EXPECT_EQ(&hf.full_weights(), &hf.full_weights()) << "materialised once";

  ModelConfig two = hf.config();
  two.n_layers = 2;
  two.seq_len = 16;
  const ConfigViewSource view(hf.source(), two);
  EXPECT_EQ(view.rows(Tensor::w_up, 1, 0, 172), hf.source().rows(Tensor::w_up, 1, 0, 172));
}

// --- bad checkpoints -----------------------------------------------------------------

// The message of the FormatError that opening `dir` throws.
std::string open_error(const std::string& dir) {
  try {
    HfSource source(dir);
  } catch (const FormatError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected FormatError, got: " << e.what();
    return {};
  }
  ADD_FAILURE() << "expected FormatError, " << dir << " was accepted";
  return {};
}

void expect_open_refused(const std::string& dir, std::initializer_list<std::string> parts) {
  const std::string message = open_error(dir);
  for (const std::string& part : parts) {
    EXPECT_NE(message.find(part), std::string::npos) << part << " not in: " << message;
  }
}

// A small model's checkpoint in a fresh directory, for breaking.
struct Broken {
  test::TempDir dir{"hfbad"};
  std::string path() const { return dir.path(); }
  std::string file(const std::string& f) const { return dir.file(f); }

  explicit Broken(DType dtype = DType::f32, int shards = 1, bool shared = true) {
    ModelConfig c = qwen2_config();
    c.qkv_bias = false;
    c.n_layers = 2;
    c.shared_classifier = shared;
    save_hf_checkpoint(random_model(c, 5), path(), dtype, "llama", shards);
  }

  // The single file's tensors, edited by `edit`, written back.
  void edit_tensors(const std::function<void(std::vector<SafetensorsBlob>&)>& edit) const {
    const std::string path = file("model.safetensors");
    std::vector<SafetensorsBlob> blobs;
    {
      const SafetensorsFile f(path);
      for (const SafetensorsTensor& t : f.tensors()) {
        const unsigned char* p = f.data(t);
        blobs.push_back(
            {t.name, t.dtype, t.shape, std::vector<unsigned char>(p, p + (t.end - t.begin))});
      }
    }
    edit(blobs);
    write_safetensors(path, blobs);
  }

  void edit_config(const std::function<void(json&)>& edit) const {
    json j = json::parse(read_text(file("config.json")));
    edit(j);
    write_text(file("config.json"), j.dump());
  }
};

SafetensorsBlob* blob(std::vector<SafetensorsBlob>& blobs, const std::string& name) {
  for (SafetensorsBlob& b : blobs) {
    if (b.name == name) {
      return &b;
    }
  }
  throw std::runtime_error("no blob " + name);
}

TEST(HfBad, MissingDirectoryConfigOrWeights) {
  expect_open_refused("/no/such/dir", {"/no/such/dir", "not a directory"});
  const Broken b;
  fs::remove(b.file("model.safetensors"));
  expect_open_refused(b.path(), {"neither model.safetensors nor model.safetensors.index.json"});
  fs::remove(b.file("config.json"));
  expect_open_refused(b.path(), {"no config.json"});
  const Broken c;
  write_text(c.file("config.json"), "{\"model_type\": ");
  expect_open_refused(c.path(), {"config.json", "not valid JSON"});
}

TEST(HfBad, AMissingTensorIsNamed) {
  const Broken b;
  b.edit_tensors([](std::vector<SafetensorsBlob>& blobs) {
    blobs.erase(std::find_if(blobs.begin(), blobs.end(), [](const SafetensorsBlob& x) {
      return x.name == "model.layers.1.mlp.up_proj.weight";
    }));
  });
  expect_open_refused(b.path(), {"tensor model.layers.1.mlp.up_proj.weight is missing"});

  const Broken untied(DType::f32, 1, false);
  untied.edit_tensors([](std::vector<SafetensorsBlob>& blobs) {
    blobs.erase(std::find_if(blobs.begin(), blobs.end(),
                             [](const SafetensorsBlob& x) { return x.name == "lm_head.weight"; }));
  });
  expect_open_refused(untied.path(), {"tensor lm_head.weight is missing", "untied lm_head"});

  const Broken more;
  more.edit_config([](json& j) { j["num_hidden_layers"] = 3; });
  expect_open_refused(more.path(), {"model.layers.2.input_layernorm.weight is missing"});
}

TEST(HfBad, AWrongShapeIsNamedWithTheExpectedOne) {
  const Broken b;
  b.edit_tensors([](std::vector<SafetensorsBlob>& blobs) {
    blob(blobs, "model.layers.0.self_attn.k_proj.weight")->shape = {48, 16};
  });
  expect_open_refused(b.path(),
                      {"model.safetensors", "tensor model.layers.0.self_attn.k_proj.weight",
                       "has shape [48, 16]", "expected [kv_dim, d_model] = [16, 48]"});
  const Broken norm;
  norm.edit_tensors([](std::vector<SafetensorsBlob>& blobs) {
    blob(blobs, "model.norm.weight")->shape = {1, 48};
  });
  expect_open_refused(norm.path(),
                      {"model.norm.weight has shape [1, 48]", "expected [d_model] = [48]"});
  const Broken vocab;
  vocab.edit_config([](json& j) { j["vocab_size"] = 96; });
  expect_open_refused(vocab.path(), {"model.embed_tokens.weight has shape [97, 48]", "[96, 48]"});
}

TEST(HfBad, AnUnsupportedDtypeIsNamed) {
  const Broken b;
  // Rewrite one tensor's dtype as I32 (same 4-byte size, so the header is valid).
  std::string bytes = read_text(b.file("model.safetensors"));
  std::uint64_t length = 0;
  std::memcpy(&length, bytes.data(), 8);
  std::string header = bytes.substr(8, length);
  json h = json::parse(header);
  h["model.layers.1.self_attn.o_proj.weight"]["dtype"] = "I32";
  std::string rewritten = h.dump();
  rewritten.resize(header.size(), ' ');
  ASSERT_EQ(rewritten.size(), header.size());
  bytes.replace(8, length, rewritten);
  write_text(b.file("model.safetensors"), bytes);
  expect_open_refused(b.path(), {"tensor model.layers.1.self_attn.o_proj.weight has dtype I32",
                                 "expected F32, F16 or BF16"});
}

TEST(HfBad, UnexpectedTensorsAreRefusedExceptHarmlessOnes) {
  const Broken harmless;
  harmless.edit_tensors([](std::vector<SafetensorsBlob>& blobs) {
    blobs.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq",
                     DType::f32,
                     {4},
                     std::vector<unsigned char>(16)});
    SafetensorsBlob lm = *blob(blobs, "model.embed_tokens.weight");
    lm.name = "lm_head.weight";  // tied: the embedding itself
    blobs.push_back(lm);
  });
  EXPECT_EQ(HfSource(harmless.path()).config().n_layers, 2);

  const Broken bias;
  bias.edit_tensors([](std::vector<SafetensorsBlob>& blobs) {
    blobs.push_back({"model.layers.0.self_attn.o_proj.bias",
                     DType::f32,
                     {48},
                     std::vector<unsigned char>(48 * 4)});
  });
  expect_open_refused(bias.path(), {"unexpected tensor model.layers.0.self_attn.o_proj.bias"});

  const Broken fewer;
  fewer.edit_config([](json& j) { j["num_hidden_layers"] = 1; });
  expect_open_refused(fewer.path(), {"unexpected tensor model.layers.1.", "num_hidden_layers 1"});

  // qwen2 biases in a checkpoint whose config says llama.
  ModelConfig c = qwen2_config();
  const test::TempDir q("hfq2");
  save_hf_checkpoint(random_model(c, 1), q.path(), DType::bf16, "qwen2");
  json j = json::parse(read_text(q.file("config.json")));
  j["model_type"] = "llama";
  write_text(q.file("config.json"), j.dump());
  expect_open_refused(q.path(), {"unexpected tensor model.layers.0.self_attn.", "_proj.bias"});
}

TEST(HfBad, ATruncatedFileNamesTheFileAndTensor) {
  const Broken b(DType::f16);
  const std::string bytes = read_text(b.file("model.safetensors"));
  write_text(b.file("model.safetensors"), bytes.substr(0, bytes.size() - 100));
  expect_open_refused(b.path(), {"model.safetensors", "past the data section", "truncated"});
  write_text(b.file("model.safetensors"), bytes.substr(0, 5));
  expect_open_refused(b.path(), {"model.safetensors", "truncated"});
}

TEST(HfBad, TheIndexMustNamePlainFilesThatHoldItsTensors) {
  const Broken b(DType::bf16, 3);
  const std::string index_path = b.file("model.safetensors.index.json");
  const json good = json::parse(read_text(index_path));
  auto with_map = [&](const std::function<void(json&)>& edit) {
    json j = good;
    edit(j["weight_map"]);
    write_text(index_path, j.dump());
  };
  const std::string tensor = "model.norm.weight";
  for (const char* bad :
       {"../model-00001-of-00003.safetensors", "/etc/passwd", "sub/x.safetensors", "..", ""}) {
    with_map([&](json& m) { m[tensor] = bad; });
    expect_open_refused(
        b.path(),
        {"weight_map puts model.norm.weight in \"" + std::string(bad) + "\"", "plain file name"});
  }
  with_map([&](json& m) { m[tensor] = 3; });
  expect_open_refused(b.path(), {"weight_map[\"model.norm.weight\"] is 3"});
  with_map([&](json& m) { m[tensor] = "model-00009-of-00003.safetensors"; });
  expect_open_refused(b.path(), {"model-00009-of-00003.safetensors", "cannot open"});
  // Moved to another existing shard: that shard does not hold it.
  with_map([&](json& m) {
    m[tensor] =
        m["model.embed_tokens.weight"].get<std::string>() == "model-00001-of-00003.safetensors"
            ? (good["weight_map"][tensor] == "model-00001-of-00003.safetensors"
                   ? "model-00002-of-00003.safetensors"
                   : "model-00001-of-00003.safetensors")
            : "model-00001-of-00003.safetensors";
  });
  expect_open_refused(b.path(), {"weight_map puts model.norm.weight in", "does not hold it"});
  with_map([&](json& m) { m = json::object(); });
  expect_open_refused(b.path(), {"weight_map is empty"});
  write_text(index_path, "[1]");
  expect_open_refused(b.path(), {"\"weight_map\" object"});
  write_text(index_path, "{");
  expect_open_refused(b.path(), {"model.safetensors.index.json", "not valid JSON"});

  // The same tensor in two shards.
  write_text(index_path, good.dump());
  const std::string first = b.file("model-00001-of-00003.safetensors");
  const std::string last = b.file("model-00003-of-00003.safetensors");
  std::vector<SafetensorsBlob> blobs;
  {
    const SafetensorsFile f(last);
    for (const SafetensorsTensor& t : f.tensors()) {
      blobs.push_back({t.name, t.dtype, t.shape,
                       std::vector<unsigned char>(f.data(t), f.data(t) + (t.end - t.begin))});
    }
    const SafetensorsFile g(first);
    const SafetensorsTensor& dup = g.tensors().front();
    blobs.push_back({dup.name, dup.dtype, dup.shape,
                     std::vector<unsigned char>(g.data(dup), g.data(dup) + (dup.end - dup.begin))});
  }
  write_safetensors(last, blobs);
  expect_open_refused(b.path(), {"is in", "and in", "expected it once"});
}

TEST(HfWriter, RefusesWhatItCannotWrite) {
  const test::TempDir dir("hfw");
  EXPECT_THROW(save_hf_checkpoint(stories(), dir.path(), DType::f32, "gpt2"), ConfigError);
  EXPECT_THROW(save_hf_checkpoint(stories(), dir.path(), DType::f32, "qwen2"), ConfigError)
      << "qwen2 needs biases";
  EXPECT_THROW(save_hf_checkpoint(stories(), dir.path(), DType::other, "llama"), ConfigError);
  EXPECT_THROW(save_hf_checkpoint(stories(), dir.path(), DType::f32, "llama", 0), ConfigError);
  ModelWeights cut = stories();
  cut.layers[3].wv.pop_back();
  EXPECT_THROW(save_hf_checkpoint(cut, dir.path(), DType::f32, "llama"), ConfigError);
  EXPECT_FALSE(fs::exists(dir.file("config.json"))) << "nothing is written before the checks pass";
}

}  // namespace
}  // namespace flashcomm
