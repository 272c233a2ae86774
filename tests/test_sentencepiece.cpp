// Tests of SentencePiece tokenizers and of choosing a tokenizer format:
// encoding and decoding checked against libsentencepiece itself on models
// trained here, streamed decoding equal to whole-text decoding, BOS and EOS,
// byte fallback, the vocabulary check, and bad files refused naming the file.
#include <gtest/gtest.h>
#include <sentencepiece_processor.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "flashcomm/error.hpp"
#include "flashcomm/tokenizer.hpp"
#include "test_support.hpp"

namespace flashcomm {
namespace {

// As Llama's tokenizer.model: BPE, byte fallback, no normalization, spaces
// kept as they are.
const std::string kLlamaLike =
    "--model_type=bpe --vocab_size=320 --byte_fallback=true --normalization_rule_name=identity "
    "--remove_extra_whitespaces=false";
// SentencePiece's defaults: unigram, NFKC, runs of spaces collapsed, unknown
// characters become <unk>.
const std::string kDefaults = "--model_type=unigram --vocab_size=70";
// No space added before a text, so none is dropped when decoding one.
const std::string kNoDummyPrefix = kLlamaLike + " --add_dummy_prefix=false";

const std::string& model_bytes(const std::string& flags) {
  static std::map<std::string, std::string> trained;
  auto it = trained.find(flags);
  if (it == trained.end()) {
    it = trained.emplace(flags, test::train_sentencepiece(flags)).first;
  }
  return it->second;
}

SentencePieceTokenizer tokenizer(const std::string& flags) {
  return SentencePieceTokenizer::from_bytes(model_bytes(flags), "test.model");
}

// libsentencepiece on the same bytes: what every answer is checked against.
std::unique_ptr<sentencepiece::SentencePieceProcessor> oracle(const std::string& flags) {
  auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto status = sp->LoadFromSerializedProto(model_bytes(flags));
  EXPECT_TRUE(status.ok()) << status.ToString();
  return sp;
}

// Token by token, as `flashcomm run` prints them.
std::string streamed(const Tokenizer& tok, const std::vector<int>& ids) {
  std::string text;
  int prev = -1;
  for (int id : ids) {
    text += tok.decode(prev, id);
    prev = id;
  }
  return text;
}

using test::format_error_of;

std::vector<std::string> texts() {
  std::vector<std::string> all = {
      "Once upon a time, there was a little girl named Lily.",
      "  two  leading spaces, digits 12345 and punctuation;:?",
      "Lily ate a cr\xC3\xA8me br\xC3\xBBl\xC3\xA9\x65 \xF0\x9F\x98\x80 with Tom.",
      "a",
      " ",
  };
  const auto& training = test::sentencepiece_training_text();
  all.insert(all.end(), training.begin(), training.begin() + 6);
  return all;
}

// ---------------------------------------------------------------------------
// Encoding and decoding

TEST(SentencePieceTest, EncodingIsTheLibrarysWithBosFirstWhenAsked) {
  for (const std::string& flags : {kLlamaLike, kDefaults}) {
    SCOPED_TRACE(flags);
    const SentencePieceTokenizer tok = tokenizer(flags);
    const auto sp = oracle(flags);
    EXPECT_EQ(tok.vocab_size(), sp->GetPieceSize());
    EXPECT_EQ(tok.format(), "sentencepiece");
    for (const std::string& text : texts()) {
      SCOPED_TRACE(text);
      const std::vector<int> ids = tok.encode(text, false);
      EXPECT_EQ(ids, sp->EncodeAsIds(text));
      for (int id : ids) {
        EXPECT_GE(id, 0);
        EXPECT_LT(id, tok.vocab_size());
      }
      std::vector<int> with_bos = {sp->bos_id()};
      with_bos.insert(with_bos.end(), ids.begin(), ids.end());
      EXPECT_EQ(tok.encode(text, true), with_bos);
    }
  }
}

TEST(SentencePieceTest, DecodeOfEncodeGivesTheTextBack) {
  // Without normalization every text, unknown characters included (byte
  // fallback), comes back byte for byte.
  const SentencePieceTokenizer tok = tokenizer(kLlamaLike);
  for (const std::string& text : texts()) {
    SCOPED_TRACE(text);
    EXPECT_EQ(streamed(tok, tok.encode(text, true)), text);
    EXPECT_EQ(streamed(tok, tok.encode(text, false)), text);
  }
}

TEST(SentencePieceTest, StreamedDecodingEqualsWholeTextDecoding) {
  for (const std::string& flags : {kLlamaLike, kDefaults, kNoDummyPrefix}) {
    SCOPED_TRACE(flags);
    const SentencePieceTokenizer tok = tokenizer(flags);
    const auto sp = oracle(flags);
    for (const std::string& text : texts()) {
      SCOPED_TRACE(text);
      for (bool bos : {true, false}) {
        const std::vector<int> ids = tok.encode(text, bos);
        EXPECT_EQ(streamed(tok, ids), sp->DecodeIds(ids));
      }
    }
  }
  // Any sequence a model may generate: word pieces and <unk>, after BOS or
  // at the start. (Byte pieces need not spell valid UTF-8, which whole-text
  // decoding would replace by U+FFFD; streaming passes the bytes on.) Only
  // for a model that keeps spaces: one that collapses them also drops the
  // space of a piece after leading pieces that decode to nothing, which a
  // decoder seeing one previous token cannot know; its encoder never gives
  // such a sequence (the texts above cover it).
  for (const std::string& flags : {kLlamaLike, kNoDummyPrefix}) {
    SCOPED_TRACE(flags);
    const SentencePieceTokenizer tok = tokenizer(flags);
    const auto sp = oracle(flags);
    std::vector<int> word_ids;
    for (int id = 0; id < sp->GetPieceSize(); ++id) {
      if (!sp->IsControl(id) && !sp->IsByte(id)) {
        word_ids.push_back(id);
      }
    }
    std::mt19937 rng(7);
    for (int trial = 0; trial < 300; ++trial) {
      std::vector<int> ids;
      if (trial % 2 == 0) {
        ids.push_back(sp->bos_id());
      }
      const int n = 1 + static_cast<int>(rng() % 12);
      for (int i = 0; i < n; ++i) {
        ids.push_back(word_ids[rng() % word_ids.size()]);
      }
      EXPECT_EQ(streamed(tok, ids), sp->DecodeIds(ids)) << testing::PrintToString(ids);
    }
  }
}

TEST(SentencePieceTest, DecodeDropsTheSpaceOfTheFirstWordOnly) {
  const SentencePieceTokenizer tok = tokenizer(kLlamaLike);
  const auto sp = oracle(kLlamaLike);
  const int once = tok.encode("Once", false).front();
  const std::string piece = sp->IdToPiece(once);
  ASSERT_EQ(piece.rfind("\xE2\x96\x81", 0), 0U) << piece;  // begins with U+2581
  const std::string word = piece.substr(3);
  EXPECT_EQ(tok.decode(tok.bos_id(), once), word);
  EXPECT_EQ(tok.decode(-1, once), word);
  EXPECT_EQ(tok.decode(once, once), " " + word);
  EXPECT_EQ(tok.decode(once, tok.bos_id()), "") << "control pieces are invisible";
  EXPECT_EQ(tok.decode(once, tok.eos_id()), "");

  // Without the dummy prefix a text's first space is its own.
  const SentencePieceTokenizer plain = tokenizer(kNoDummyPrefix);
  const std::vector<int> ids = plain.encode(" Once", true);
  EXPECT_EQ(streamed(plain, ids), " Once");
  EXPECT_EQ(streamed(plain, plain.encode("Once", true)), "Once");
}

TEST(SentencePieceTest, ByteFallbackAndUnknownCharacters) {
  const std::string emoji = "\xF0\x9F\x98\x80";  // U+1F600: not in the training text
  {
    const SentencePieceTokenizer tok = tokenizer(kLlamaLike);
    const auto sp = oracle(kLlamaLike);
    const std::vector<int> ids = tok.encode(emoji, false);
    int bytes = 0;
    for (int id : ids) {
      if (sp->IsByte(id)) {
        EXPECT_EQ(tok.decode(id, id), std::string(1, emoji[static_cast<size_t>(bytes)]));
        ++bytes;
      }
    }
    EXPECT_EQ(bytes, 4) << testing::PrintToString(ids);
    EXPECT_EQ(streamed(tok, ids), emoji);
  }
  {
    // Without byte fallback the character is <unk>, which reads as the
    // library writes it.
    const SentencePieceTokenizer tok = tokenizer(kDefaults);
    const auto sp = oracle(kDefaults);
    const std::vector<int> ids = tok.encode(emoji, false);
    ASSERT_NE(std::find(ids.begin(), ids.end(), sp->unk_id()), ids.end());
    EXPECT_EQ(tok.decode(-1, sp->unk_id()), sp->DecodeIds({sp->unk_id()}));
    EXPECT_EQ(streamed(tok, ids), sp->DecodeIds(ids));
  }
}

TEST(SentencePieceTest, BosAndEosComeFromTheModel) {
  const SentencePieceTokenizer tok = tokenizer(kLlamaLike);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.stop_tokens(), (std::vector<int>{2, 1}));
  EXPECT_EQ(tok.encode("", true), std::vector<int>{1});
  EXPECT_TRUE(tok.encode("", false).empty());
  EXPECT_EQ(tok.fewest_tokens(100000), 0U) << "normalization may shrink a text: no bound";

  const SentencePieceTokenizer moved =
      tokenizer(kLlamaLike + " --bos_id=5 --eos_id=7 --unk_id=0 --pad_id=3");
  EXPECT_EQ(moved.bos_id(), 5);
  EXPECT_EQ(moved.eos_id(), 7);
  EXPECT_EQ(moved.encode("", true), std::vector<int>{5});
  EXPECT_EQ(moved.stop_tokens(), (std::vector<int>{7, 5}));
  EXPECT_EQ(moved.decode(-1, 3), "") << "<pad> is a control piece";
}

TEST(SentencePieceTest, AModelWithoutBosOrEos) {
  const SentencePieceTokenizer no_bos = tokenizer(kLlamaLike + " --bos_id=-1");
  EXPECT_EQ(no_bos.bos_id(), -1);
  EXPECT_EQ(no_bos.encode("Lily", true), no_bos.encode("Lily", false)) << "no BOS to add";
  EXPECT_TRUE(no_bos.encode("", true).empty());
  EXPECT_EQ(no_bos.stop_tokens(), std::vector<int>{no_bos.eos_id()});

  const SentencePieceTokenizer neither = tokenizer(kLlamaLike + " --bos_id=-1 --eos_id=-1");
  EXPECT_EQ(neither.eos_id(), -1);
  EXPECT_TRUE(neither.stop_tokens().empty());
  EXPECT_EQ(streamed(neither, neither.encode("Once upon a time", true)), "Once upon a time");
}

TEST(SentencePieceTest, DecodeRejectsOutOfRangeIds) {
  const SentencePieceTokenizer tok = tokenizer(kLlamaLike);
  for (int bad : {-1, tok.vocab_size(), 1 << 30}) {
    try {
      tok.decode(-1, bad);
      ADD_FAILURE() << "no exception for token " << bad;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(std::to_string(bad)), std::string::npos) << e.what();
    }
  }
}

// ---------------------------------------------------------------------------
// Choosing the format, the vocabulary check

// A llama2.c tokenizer file: {max_len, then {score, len, bytes} per piece}.
std::string llama2c_bytes(std::int32_t max_len, const std::vector<std::string>& pieces) {
  std::string bytes(reinterpret_cast<const char*>(&max_len), sizeof(max_len));
  for (const std::string& p : pieces) {
    const float score = 0.0F;
    const auto len = static_cast<std::int32_t>(p.size());
    bytes.append(reinterpret_cast<const char*>(&score), sizeof(score));
    bytes.append(reinterpret_cast<const char*>(&len), sizeof(len));
    bytes += p;
  }
  return bytes;
}

TEST(TokenizerFormatTest, TheContentDecidesNotTheFileName) {
  const test::TempDir dir("tokformat");
  // A SentencePiece model under a llama2.c-like name...
  test::write_file(dir.file("tok512.bin"), model_bytes(kLlamaLike));
  EXPECT_EQ(load_tokenizer(dir.file("tok512.bin"), 512)->format(), "sentencepiece");
  // ...and a llama2.c file under SentencePiece's.
  std::filesystem::copy_file(test::stories_tokenizer(), dir.file("tokenizer.model"));
  const std::unique_ptr<Tokenizer> llama2c = load_tokenizer(dir.file("tokenizer.model"), 512);
  EXPECT_EQ(llama2c->format(), "llama2.c");
  EXPECT_EQ(llama2c->vocab_size(), 512);
  EXPECT_EQ(llama2c->encode("Once", true),
            Llama2cTokenizer::load(test::stories_tokenizer(), 512).encode("Once", true));

  // A llama2.c max_token_length of 10 begins with 0x0A, as every ModelProto
  // does; the framing tells them apart.
  const std::string ten = llama2c_bytes(10, {"<unk>", "<s>", "</s>", " ", "a", "ab"});
  ASSERT_EQ(ten[0], '\x0A');
  EXPECT_FALSE(looks_like_sentencepiece(ten));
  test::write_file(dir.file("ten.model"), ten);
  EXPECT_EQ(load_tokenizer(dir.file("ten.model"), 6)->format(), "llama2.c");

  EXPECT_TRUE(looks_like_sentencepiece(model_bytes(kLlamaLike)));
  EXPECT_TRUE(looks_like_sentencepiece(model_bytes(kDefaults)));
  std::string why;
  const std::string stories = [] {
    std::ifstream in(test::stories_tokenizer(), std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }();
  EXPECT_FALSE(looks_like_sentencepiece(stories, &why));
  EXPECT_NE(why.find("0x0A"), std::string::npos) << why;
}

TEST(TokenizerFormatTest, TheVocabularyMustFitTheModel) {
  const test::TempDir dir("tokvocab");
  const std::string path = dir.file("tokenizer.model");
  test::write_file(path, model_bytes(kLlamaLike));
  EXPECT_EQ(load_tokenizer(path, 320)->vocab_size(), 320);
  // A padded embedding: more rows than pieces.
  EXPECT_EQ(load_tokenizer(path, 512)->vocab_size(), 320);
  const std::string message = format_error_of([&] { load_tokenizer(path, 319); });
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("320 pieces"), std::string::npos) << message;
  EXPECT_NE(message.find("vocab_size is 319"), std::string::npos) << message;
  // llama2.c files hold exactly the model's vocabulary.
  const std::string llama2c =
      format_error_of([&] { load_tokenizer(test::stories_tokenizer(), 600); });
  EXPECT_NE(llama2c.find("truncated"), std::string::npos) << llama2c;
  EXPECT_NE(llama2c.find("vocab_size is 600"), std::string::npos) << llama2c;
}

// ---------------------------------------------------------------------------
// Bad files

TEST(TokenizerFormatTest, EmptyMissingAndOtherFilesAreRefusedNamingThem) {
  const test::TempDir dir("tokbad");
  test::write_file(dir.file("empty.model"), "");
  std::string message = format_error_of([&] { load_tokenizer(dir.file("empty.model"), 512); });
  EXPECT_NE(message.find(dir.file("empty.model")), std::string::npos) << message;
  EXPECT_NE(message.find("empty"), std::string::npos) << message;

  message = format_error_of([&] { load_tokenizer(dir.file("missing.model"), 512); });
  EXPECT_NE(message.find(dir.file("missing.model")), std::string::npos) << message;
  EXPECT_NE(message.find(std::strerror(ENOENT)), std::string::npos) << message;

  message = format_error_of([&] { load_tokenizer(dir.path(), 512); });
  EXPECT_NE(message.find("not a readable regular file"), std::string::npos) << message;
}

TEST(TokenizerFormatTest, RandomBytesAreRefusedNamingTheFile) {
  const test::TempDir dir("tokrandom");
  const std::string path = dir.file("random.model");
  std::mt19937 rng(11);
  for (int trial = 0; trial < 60; ++trial) {
    std::string bytes(1 + rng() % 3000, '\0');
    for (char& c : bytes) {
      c = static_cast<char>(rng());
    }
    if (trial % 2 == 0) {
      bytes[0] = '\x0A';  // as a ModelProto begins
    }
    test::write_file(path, bytes);
    const std::string message = format_error_of([&] { load_tokenizer(path, 512); });
    EXPECT_NE(message.find(path), std::string::npos) << "trial " << trial << ": " << message;
  }
}

TEST(TokenizerFormatTest, TruncatedModelsAreRefused) {
  const std::string& model = model_bytes(kLlamaLike);
  // Every cut, including those at a field boundary, which the library itself
  // would take for a smaller model.
  int accepted_by_the_library = 0;
  for (size_t keep = 1; keep < model.size(); ++keep) {
    const std::string cut = model.substr(0, keep);
    sentencepiece::SentencePieceProcessor sp;
    if (sp.LoadFromSerializedProto(cut).ok()) {
      ++accepted_by_the_library;
    }
    try {
      SentencePieceTokenizer::from_bytes(cut, "cut.model");
      ADD_FAILURE() << "a model cut to " << keep << " of " << model.size() << " bytes was taken";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find("cut.model"), std::string::npos) << e.what();
    }
  }
  EXPECT_GT(accepted_by_the_library, 0) << "no cut at a field boundary was tried";

  // Through the file loader too, with bytes appended after the end.
  const test::TempDir dir("toktrunc");
  const std::string path = dir.file("tokenizer.model");
  for (const std::string& bytes :
       {model.substr(0, 2), model.substr(0, model.size() / 2), model.substr(0, model.size() - 1),
        model + std::string(1, '\0'), model + "trailing"}) {
    test::write_file(path, bytes);
    const std::string message = format_error_of([&] { load_tokenizer(path, 512); });
    EXPECT_NE(message.find(path), std::string::npos) << message;
    EXPECT_NE(message.find("SentencePiece"), std::string::npos) << message;
  }
}

TEST(TokenizerFormatTest, CorruptedModelsLoadOrAreFormatErrors) {
  // Flipped bytes give either another valid model or a FormatError, never a
  // crash or another exception; a model that loads still encodes and decodes.
  const std::string& model = model_bytes(kLlamaLike);
  std::mt19937 rng(5);
  int loaded = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::string bytes = model;
    for (int flip = 0; flip < 3; ++flip) {
      bytes[rng() % bytes.size()] = static_cast<char>(rng());
    }
    try {
      const SentencePieceTokenizer tok = SentencePieceTokenizer::from_bytes(bytes, "flip.model");
      ++loaded;
      for (int id : tok.encode("Once upon a time, Lily", true)) {
        ASSERT_GE(id, 0);
        ASSERT_LT(id, tok.vocab_size());
        tok.decode(-1, id);
      }
    } catch (const FormatError&) {
    }
  }
  RecordProperty("loaded", loaded);
}

// Found by the fuzz target: a model with an empty piece makes a dependency of
// libsentencepiece throw its own exception from the load; it is a bad file
// (FormatError, exit code 3) like any other.
TEST(TokenizerFormatTest, AnExceptionInsideTheLibraryIsAFormatError) {
  const std::string path =
      std::string(FLASHCOMM_FUZZ_CORPUS_DIR) + "/sentencepiece/regression-zero-length-piece.model";
  std::ifstream in(path, std::ios::binary);
  ASSERT_TRUE(in) << path;
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  try {
    SentencePieceTokenizer::from_bytes(bytes, "regression.model");
    FAIL() << "the model loaded";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("regression.model: libsentencepiece cannot load"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace flashcomm
