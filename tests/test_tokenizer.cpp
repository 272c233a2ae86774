// Tests of the llama2.c tokenizer: loading tok512.bin, encoding and decoding
// round trips, merge order, byte fallback, and rejection of corrupt files.
// Small hand-made vocabularies pin down the merge rule exactly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "flashcomm/error.hpp"
#include "flashcomm/tokenizer.hpp"
#include "model/byte_reader.hpp"
#include "test_support.hpp"

namespace flashcomm {
namespace {

constexpr int kStoriesVocab = 512;

using Bytes = std::vector<char>;

Bytes read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

template <typename T>
void append(Bytes& bytes, T value) {
  char raw[sizeof(T)];
  std::memcpy(raw, &value, sizeof(T));
  bytes.insert(bytes.end(), raw, raw + sizeof(T));
}

// A tokenizer file with the given {piece, score} entries.
Bytes tokenizer_bytes(std::int32_t max_len, const std::vector<std::pair<std::string, float>>& v) {
  Bytes bytes;
  append(bytes, max_len);
  for (const auto& [piece, score] : v) {
    append(bytes, score);
    append(bytes, static_cast<std::int32_t>(piece.size()));
    bytes.insert(bytes.end(), piece.begin(), piece.end());
  }
  return bytes;
}

using test::format_error_of;

Llama2cTokenizer stories() {
  return Llama2cTokenizer::load(test::stories_tokenizer(), kStoriesVocab);
}

// The text decode() gives for `tokens`, the first of which follows BOS.
std::string decode_all(const Llama2cTokenizer& tok, const std::vector<int>& tokens) {
  std::string text;
  int prev = Llama2cTokenizer::kBos;
  for (int t : tokens) {
    text += tok.decode(prev, t);
    prev = t;
  }
  return text;
}

const std::vector<std::string> kSentences = {
    "Once upon a time, there was a little girl named Lily.",
    "She loved to play outside in the park. One day, she saw a big, red ball.",
    "\"Mom, can I have it?\" asked Tom.\nShe said yes!",
    "  two leading spaces, digits 12345 and punctuation;:?",
};

// ---------------------------------------------------------------------------
// The real vocabulary

TEST(TokenizerTest, LoadsTheStoriesVocabulary) {
  const Llama2cTokenizer tok = stories();
  EXPECT_EQ(tok.vocab_size(), kStoriesVocab);
  EXPECT_EQ(tok.piece(0), "<unk>");
  EXPECT_EQ(tok.piece(Llama2cTokenizer::kBos), "\n<s>\n");
  EXPECT_EQ(tok.piece(Llama2cTokenizer::kEos), "\n</s>\n");
  EXPECT_EQ(tok.piece(3), "<0x00>");
  EXPECT_EQ(tok.piece(3 + 255), "<0xFF>");
}

TEST(TokenizerTest, EmptyTextIsJustBos) {
  const Llama2cTokenizer tok = stories();
  EXPECT_EQ(tok.encode("", true), std::vector<int>{Llama2cTokenizer::kBos});
  EXPECT_TRUE(tok.encode("", false).empty());
}

TEST(TokenizerTest, EncodeStartsWithBosOnlyWhenAsked) {
  const Llama2cTokenizer tok = stories();
  const std::vector<int> with = tok.encode(kSentences[0], true);
  const std::vector<int> without = tok.encode(kSentences[0], false);
  ASSERT_FALSE(with.empty());
  EXPECT_EQ(with[0], Llama2cTokenizer::kBos);
  EXPECT_EQ(std::vector<int>(with.begin() + 1, with.end()), without);
}

TEST(TokenizerTest, DecodeOfEncodeGivesTheTextBack) {
  const Llama2cTokenizer tok = stories();
  for (const std::string& text : kSentences) {
    SCOPED_TRACE(text);
    const std::vector<int> tokens = tok.encode(text, true);
    ASSERT_EQ(tokens.front(), Llama2cTokenizer::kBos);
    EXPECT_EQ(decode_all(tok, std::vector<int>(tokens.begin() + 1, tokens.end())), text);
  }
}

TEST(TokenizerTest, PiecesSpellTheTextWithTheDummyPrefix) {
  const Llama2cTokenizer tok = stories();
  const std::string text = "Once upon a time, there was a little girl named Lily.";
  const std::vector<int> tokens = tok.encode(text, false);
  std::string spelled;
  for (int t : tokens) {
    ASSERT_GE(t, 0);
    ASSERT_LT(t, tok.vocab_size());
    spelled += tok.piece(t);
  }
  EXPECT_EQ(spelled, " " + text);
  // BPE really merged: common words of the training stories are single tokens.
  EXPECT_LT(tokens.size(), text.size() / 2);
}

TEST(TokenizerTest, EncodingIsGreedyByScore) {
  // No adjacent pair of the result may still be a piece of the vocabulary:
  // the merge loop only stops when none is left.
  const Llama2cTokenizer tok = stories();
  std::vector<std::string> all_pieces;
  all_pieces.reserve(static_cast<size_t>(tok.vocab_size()));
  for (int id = 0; id < tok.vocab_size(); ++id) {
    all_pieces.push_back(tok.piece(id));
  }
  for (const std::string& text : kSentences) {
    const std::vector<int> tokens = tok.encode(text, false);
    for (size_t i = 0; i + 1 < tokens.size(); ++i) {
      const std::string pair = tok.piece(tokens[i]) + tok.piece(tokens[i + 1]);
      EXPECT_EQ(std::find(all_pieces.begin(), all_pieces.end(), pair), all_pieces.end())
          << "'" << pair << "' in " << text;
    }
  }
}

TEST(TokenizerTest, UnknownCharactersFallBackToByteTokens) {
  const Llama2cTokenizer tok = stories();
  // U+00FC (2 bytes) and U+1F600 (4 bytes) are not in the 512-token vocabulary.
  for (const std::string text : {"\xC3\xBC", "\xF0\x9F\x98\x80"}) {
    const std::vector<int> tokens = tok.encode(text, false);
    ASSERT_EQ(tokens.size(), text.size() + 1);  // the dummy prefix, then one per byte
    EXPECT_EQ(tok.piece(tokens[0]), " ");
    for (size_t i = 0; i < text.size(); ++i) {
      EXPECT_EQ(tokens[i + 1], 3 + static_cast<unsigned char>(text[i]));
    }
    EXPECT_EQ(decode_all(tok, tokens), text);
  }
  // U+00E9 is: a whole code point is looked up, not its bytes.
  const std::vector<int> e_acute = tok.encode("\xC3\xA9", false);
  ASSERT_EQ(e_acute.size(), 2U);
  EXPECT_EQ(tok.piece(e_acute[1]), "\xC3\xA9");
  // Mixed with known text, the bytes come back in place.
  const std::string mixed = "Lily ate a cr\xC3\xA8me br\xC3\xBBl\xC3\xA9\x65.";
  const std::vector<int> tokens = tok.encode(mixed, true);
  EXPECT_EQ(decode_all(tok, std::vector<int>(tokens.begin() + 1, tokens.end())), mixed);
}

TEST(TokenizerTest, DecodeDropsTheSpaceOnlyAfterBos) {
  const Llama2cTokenizer tok = stories();
  const int once = tok.encode("Once", false).back();
  ASSERT_EQ(tok.piece(once), " Once");
  EXPECT_EQ(tok.decode(Llama2cTokenizer::kBos, once), "Once");
  EXPECT_EQ(tok.decode(-1, once), "Once") << "the start of a text is like BOS";
  EXPECT_EQ(tok.decode(once, once), " Once");
  EXPECT_EQ(tok.decode(0, 3 + 'A'), "A");
  EXPECT_EQ(tok.decode(Llama2cTokenizer::kBos, 3 + ' '), " ");  // a byte token, not a leading space
}

TEST(TokenizerTest, DecodeRejectsOutOfRangeIds) {
  const Llama2cTokenizer tok = stories();
  for (int bad : {-1, kStoriesVocab, 1 << 30}) {
    try {
      tok.decode(Llama2cTokenizer::kBos, bad);
      ADD_FAILURE() << "no exception for token " << bad;
    } catch (const ConfigError& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(std::to_string(bad)), std::string::npos) << message;
      EXPECT_NE(message.find(std::to_string(kStoriesVocab)), std::string::npos) << message;
    }
  }
}

// ---------------------------------------------------------------------------
// Merge rule on hand-made vocabularies

TEST(TokenizerTest, MergesTheBestScoringPairFirstAndTheFirstPairOnATie) {
  test::TempDir dir("tokenizer");
  const std::string path = dir.file("tiny.bin");
  auto encode_with = [&](float score_space_a, float score_ab) {
    write_bytes(path, tokenizer_bytes(5, {{"<unk>", 0},
                                          {"<s>", 0},
                                          {"</s>", 0},
                                          {" ", 0},
                                          {"a", 0},
                                          {"b", 0},
                                          {" a", score_space_a},
                                          {"ab", score_ab}}));
    return Llama2cTokenizer::load(path, 8).encode("ab", false);
  };
  EXPECT_EQ(encode_with(1.0F, 2.0F), (std::vector<int>{3, 7}));  // "ab" scores best
  EXPECT_EQ(encode_with(2.0F, 1.0F), (std::vector<int>{6, 5}));  // " a" scores best
  EXPECT_EQ(encode_with(-3.0F, -3.0F), (std::vector<int>{6, 5}));  // tie: leftmost pair
}

TEST(TokenizerTest, ByteFallbackBeyondASmallVocabularyIsAFormatError) {
  test::TempDir dir("tokenizer");
  const std::string path = dir.file("tiny.bin");
  write_bytes(path, tokenizer_bytes(1, {{"u", 0}, {"s", 0}, {"e", 0}, {" ", 0}, {"a", 0}}));
  const Llama2cTokenizer tok = Llama2cTokenizer::load(path, 5);
  EXPECT_EQ(tok.encode("a", false), (std::vector<int>{3, 4}));
  EXPECT_NE(format_error_of([&] { tok.encode("z", false); }).find("byte token"), std::string::npos);
}

// ---------------------------------------------------------------------------
// Corrupt files

TEST(TokenizerTest, TruncatedFilesAreRejected) {
  test::TempDir dir("tokenizer");
  const std::string path = dir.file("tok.bin");
  const Bytes original = read_bytes(test::stories_tokenizer());
  for (size_t keep :
       {size_t{0}, size_t{2}, size_t{4}, size_t{10}, original.size() / 2, original.size() - 1}) {
    SCOPED_TRACE("cut to " + std::to_string(keep));
    write_bytes(path, Bytes(original.begin(), original.begin() + keep));
    const std::string message =
        format_error_of([&] { Llama2cTokenizer::load(path, kStoriesVocab); });
    EXPECT_NE(message.find(path), std::string::npos) << message;
    if (keep >= 4) {
      EXPECT_NE(message.find("truncated"), std::string::npos) << message;
    }
  }
}

TEST(TokenizerTest, VocabularySizeMustMatchTheFile) {
  const std::string path = test::stories_tokenizer();
  // The file holds 512 entries: asking for more finds it truncated, asking for
  // fewer leaves bytes over.
  EXPECT_NE(
      format_error_of([&] { Llama2cTokenizer::load(path, kStoriesVocab + 1); }).find("truncated"),
      std::string::npos);
  EXPECT_NE(format_error_of([&] { Llama2cTokenizer::load(path, kStoriesVocab - 1); }).find("extra"),
            std::string::npos);
  EXPECT_THROW(Llama2cTokenizer::load(path, 0), ConfigError);
}

TEST(TokenizerTest, BadEntriesAreRejectedNamingTheEntry) {
  test::TempDir dir("tokenizer");
  const std::string path = dir.file("tok.bin");
  const std::vector<std::pair<std::string, float>> good = {{"a", 0}, {"bb", 0}, {"ccc", 0}};
  // Replaces the length field of entry 1 ("bb").
  auto with_length = [&](std::int32_t len) {
    Bytes bytes = tokenizer_bytes(4, good);
    const size_t entry1_len = 4 + (4 + 4 + 1) + 4;
    std::memcpy(bytes.data() + entry1_len, &len, sizeof(len));
    return bytes;
  };

  write_bytes(path, tokenizer_bytes(4, good));
  EXPECT_NO_THROW(Llama2cTokenizer::load(path, 3));

  for (std::int32_t len : {-1, 5, 1 << 20}) {
    SCOPED_TRACE("length " + std::to_string(len));
    write_bytes(path, with_length(len));
    const std::string message = format_error_of([&] { Llama2cTokenizer::load(path, 3); });
    EXPECT_NE(message.find("entry 1"), std::string::npos) << message;
    EXPECT_NE(message.find(path), std::string::npos) << message;
  }

  // A length within max_token_length that runs past the end of the file.
  write_bytes(path, tokenizer_bytes(64, {{"a", 0}, {"bb", 0}, {"ccc", 0}}));
  Bytes bytes = read_bytes(path);
  const std::int32_t long_len = 60;
  std::memcpy(bytes.data() + bytes.size() - 3 - 4, &long_len, sizeof(long_len));
  write_bytes(path, bytes);
  std::string message = format_error_of([&] { Llama2cTokenizer::load(path, 3); });
  EXPECT_NE(message.find("entry 2"), std::string::npos) << message;
  EXPECT_NE(message.find("truncated"), std::string::npos) << message;

  for (std::int32_t max_len : {0, -5, (1 << 16) + 1}) {
    write_bytes(path, tokenizer_bytes(max_len, good));
    message = format_error_of([&] { Llama2cTokenizer::load(path, 3); });
    EXPECT_NE(message.find("max_token_length"), std::string::npos) << message;
  }
}

// ---------------------------------------------------------------------------
// The in-memory entry point of the fuzz target

std::span<const unsigned char> as_span(const Bytes& bytes, size_t from = 0) {
  return {reinterpret_cast<const unsigned char*>(bytes.data()) + from, bytes.size() - from};
}

void expect_same_vocabulary(const Llama2cTokenizer& a, const Llama2cTokenizer& b) {
  ASSERT_EQ(a.vocab_size(), b.vocab_size());
  for (int id = 0; id < a.vocab_size(); ++id) {
    EXPECT_EQ(a.piece(id), b.piece(id)) << id;
  }
  for (const std::string& text : kSentences) {
    EXPECT_EQ(a.encode(text, true), b.encode(text, true)) << text;
  }
}

TEST(TokenizerTest, InMemoryParsingEqualsLoadingTheFile) {
  const Bytes bytes = read_bytes(test::stories_tokenizer());
  detail::MemoryReader in(as_span(bytes), "in memory");
  expect_same_vocabulary(detail::load_llama2c_tokenizer(in, kStoriesVocab), stories());

  const Bytes cut(bytes.begin(), bytes.end() - 1);
  detail::MemoryReader cut_in(as_span(cut), "in memory");
  const std::string message =
      format_error_of([&] { detail::load_llama2c_tokenizer(cut_in, kStoriesVocab); });
  EXPECT_EQ(message.rfind("in memory: truncated", 0), 0U) << message;
  EXPECT_NE(message.find("entry 511"), std::string::npos) << message;
}

// The fuzz target's seeds (fuzz/corpus/llama2c_tokenizer/, written by
// fuzz/make_seeds.cpp): vocab_size as a little-endian uint16, then a tokenizer
// file cut from tok512.bin.
TEST(TokenizerTest, FuzzSeedsAreCutsOfTheRealVocabulary) {
  const Llama2cTokenizer full = stories();
  const std::string corpus = std::string(FLASHCOMM_FUZZ_CORPUS_DIR) + "/llama2c_tokenizer/";
  for (const auto& [name, vocab_size] : std::vector<std::pair<std::string, int>>{
           {"tok512-first8.bin", 8}, {"tok512-no-space.bin", 300}, {"tok512-trimmed.bin", 360}}) {
    SCOPED_TRACE(name);
    const Bytes seed = read_bytes(corpus + name);
    ASSERT_GE(seed.size(), 2U);
    EXPECT_EQ(static_cast<unsigned char>(seed[0]) | (static_cast<unsigned char>(seed[1]) << 8),
              vocab_size);
    detail::MemoryReader in(as_span(seed, 2), name);
    const Llama2cTokenizer tok = detail::load_llama2c_tokenizer(in, vocab_size);
    for (int id = 0; id < std::min(vocab_size, 300); ++id) {
      EXPECT_EQ(tok.piece(id), full.piece(id)) << id;
    }
  }
}

TEST(TokenizerTest, MissingFileIsAFormatErrorNamingThePath) {
  test::TempDir dir("tokenizer");
  const std::string path = dir.file("missing.bin");
  const std::string message = format_error_of([&] { Llama2cTokenizer::load(path, kStoriesVocab); });
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find(std::strerror(ENOENT)), std::string::npos) << message;
}

}  // namespace
}  // namespace flashcomm
