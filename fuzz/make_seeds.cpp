// Writes the seed corpora of the fuzz targets from the real stories260K files:
//
//   build-fuzz/fuzz/fuzz_make_seeds ../shared/models/stories260K fuzz/corpus
//
// The seeds are small on purpose (libFuzzer mutates faster, and the model
// files themselves stay out of the repository): a 2-layer model trimmed from
// stories260K's weights in both layouts with a shared and a separate
// classifier, the real files' headers alone, and the real tokenizer cut down
// to a few hundred of its entries.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "flashcomm/error.hpp"
#include "flashcomm/model.hpp"
#include "flashcomm/tokenizer.hpp"

namespace {

using flashcomm::ModelConfig;
using flashcomm::ModelWeights;

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw flashcomm::ConfigError(path + ": cannot open");
  }
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    throw flashcomm::ConfigError(path + ": cannot write");
  }
  std::printf("%s: %zu bytes\n", path.c_str(), bytes.size());
}

// The top-left [rows, cols] block of a row-major [src_rows, src_cols] matrix,
// starting at row `first_row`.
std::vector<float> block(const std::vector<float>& m, int src_cols, int rows, int cols,
                         int first_row = 0) {
  std::vector<float> out;
  out.reserve(static_cast<size_t>(rows) * static_cast<size_t>(cols));
  for (int r = first_row; r < first_row + rows; ++r) {
    const auto row = m.begin() + static_cast<std::ptrdiff_t>(r) * src_cols;
    out.insert(out.end(), row, row + cols);
  }
  return out;
}

// stories260K cut down to d_model 8 (2 heads of 4, 1 KV head), hidden_dim 12,
// 2 layers, 16 tokens, seq_len 4.
ModelWeights tiny_model(const ModelWeights& full, bool shared) {
  const ModelConfig& f = full.config;
  ModelConfig c = f;
  c.d_model = 8;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.head_dim = 4;
  c.hidden_dim = 12;
  c.n_layers = 2;
  c.vocab_size = 16;
  c.seq_len = 4;
  c.shared_classifier = shared;

  ModelWeights w;
  w.config = c;
  w.token_embedding = block(full.token_embedding, f.d_model, c.vocab_size, c.d_model);
  for (int l = 0; l < c.n_layers; ++l) {
    const flashcomm::LayerWeights& src = full.layers[static_cast<size_t>(l)];
    flashcomm::LayerWeights dst;
    dst.attn_norm = block(src.attn_norm, f.d_model, 1, c.d_model);
    dst.wq = block(src.wq, f.d_model, c.q_dim(), c.d_model);
    dst.wk = block(src.wk, f.d_model, c.kv_dim(), c.d_model);
    dst.wv = block(src.wv, f.d_model, c.kv_dim(), c.d_model);
    dst.wo = block(src.wo, f.q_dim(), c.d_model, c.q_dim());
    dst.ffn_norm = block(src.ffn_norm, f.d_model, 1, c.d_model);
    dst.w_gate = block(src.w_gate, f.d_model, c.hidden_dim, c.d_model);
    dst.w_down = block(src.w_down, f.hidden_dim, c.d_model, c.hidden_dim);
    dst.w_up = block(src.w_up, f.d_model, c.hidden_dim, c.d_model);
    w.layers.push_back(std::move(dst));
  }
  w.final_norm = block(full.final_norm, f.d_model, 1, c.d_model);
  if (!shared) {
    // Other rows of the embedding, so that classifier and embedding differ.
    w.classifier = block(full.token_embedding, f.d_model, c.vocab_size, c.d_model, c.vocab_size);
  }
  return w;
}

// The tokenizer fuzz input: vocab_size as a little-endian uint16, then the
// real file's 4-byte header and its entries {score, length, bytes} with ids
// in [first, last) of each range, in order.
std::vector<char> tokenizer_seed(const std::vector<char>& file,
                                 const flashcomm::Llama2cTokenizer& tok,
                                 const std::vector<std::pair<int, int>>& ranges) {
  std::vector<size_t> offsets = {4};  // offsets[id]: where entry id starts
  for (int id = 0; id < tok.vocab_size(); ++id) {
    offsets.push_back(offsets.back() + 8 + tok.piece(id).size());
  }
  std::vector<char> entries(file.begin(), file.begin() + 4);
  int count = 0;
  for (const auto& [first, last] : ranges) {
    entries.insert(entries.end(), file.begin() + static_cast<std::ptrdiff_t>(offsets[first]),
                   file.begin() + static_cast<std::ptrdiff_t>(offsets[last]));
    count += last - first;
  }
  std::vector<char> seed = {static_cast<char>(count & 0xFF), static_cast<char>(count >> 8)};
  seed.insert(seed.end(), entries.begin(), entries.end());
  return seed;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s STORIES260K_DIR CORPUS_DIR\n", argv[0]);
    return 2;
  }
  try {
    const std::string models = argv[1];
    const std::string corpus = argv[2];
    const std::string checkpoints = corpus + "/llama2c_checkpoint";
    const std::string tokenizers = corpus + "/llama2c_tokenizer";
    std::filesystem::create_directories(checkpoints);
    std::filesystem::create_directories(tokenizers);

    const ModelWeights full = flashcomm::load_llama2c(models + "/stories260K.bin");
    for (const int version : {0, 1}) {
      for (const bool shared : {true, false}) {
        const std::string path = checkpoints + "/tiny-v" + std::to_string(version) +
                                 (shared ? "-shared" : "-separate") + ".bin";
        flashcomm::save_llama2c(tiny_model(full, shared), path, version);
        std::printf("%s: %ju bytes\n", path.c_str(),
                    static_cast<std::uintmax_t>(std::filesystem::file_size(path)));
      }
    }
    // The real headers over no weights: a truncated file, with real sizes.
    std::vector<char> legacy = read_bytes(models + "/stories260K.bin");
    legacy.resize(size_t{7} * 4);  // the seven int32 parameters
    write_bytes(checkpoints + "/stories260K-v0-header.bin", legacy);
    std::vector<char> v1 = read_bytes(models + "/stories260K-v1.bin");
    v1.resize(256);
    write_bytes(checkpoints + "/stories260K-v1-header.bin", v1);

    const std::string tok_path = models + "/tok512.bin";
    const flashcomm::Llama2cTokenizer tok =
        flashcomm::Llama2cTokenizer::load(tok_path, full.config.vocab_size);
    const std::vector<char> tok_file = read_bytes(tok_path);
    // tok512: ids 0..2 the specials, 3..258 the byte tokens <0x00>..<0xFF>,
    // 259..409 merges by falling score, 410.. single characters (" " first).
    write_bytes(tokenizers + "/tok512-first8.bin", tokenizer_seed(tok_file, tok, {{0, 8}}));
    write_bytes(tokenizers + "/tok512-no-space.bin", tokenizer_seed(tok_file, tok, {{0, 300}}));
    write_bytes(tokenizers + "/tok512-trimmed.bin",
                tokenizer_seed(tok_file, tok, {{0, 300}, {410, 470}}));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
