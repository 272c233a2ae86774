// Tokenizers: text to token ids and back, one interface over two file formats.
//
// - llama2.c tokenizer files (Llama2cTokenizer): a vocabulary of byte strings
//   with merge scores. Encoding follows SentencePiece BPE as llama2.c does: a
//   leading space is added to non-empty text, every UTF-8 code point is looked
//   up (unknown ones fall back to byte tokens <0xXX>), then the adjacent pair
//   whose merge has the best score is merged until no pair is in the
//   vocabulary.
// - SentencePiece models (SentencePieceTokenizer), the `tokenizer.model` of
//   Llama-family checkpoints, encoded and decoded by libsentencepiece.
//
// load_tokenizer() tells the formats apart by content, never by file name.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}  // namespace sentencepiece

namespace flashcomm {

class Llama2cTokenizer;

namespace detail {
class ByteReader;
// The parser behind Tokenizer::load, on any bytes (src/model/byte_reader.hpp).
Llama2cTokenizer load_llama2c_tokenizer(ByteReader& file, int vocab_size);
}  // namespace detail

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // "llama2.c" or "sentencepiece".
  virtual std::string_view format() const = 0;

  // Token ids of `text`, starting with BOS when `bos` and the tokenizer has
  // one (bos_id() >= 0). Empty text gives [BOS], or nothing without a BOS.
  virtual std::vector<int> encode(std::string_view text, bool bos) const = 0;

  // The text of `token` when it follows `prev` (-1: the start of a text), for
  // streaming output: the leading space of the first word after BOS or at the
  // start is dropped, as whole-text decoding does, and a byte token <0xXX>
  // becomes that byte. Throws ConfigError for an id outside [0, vocab_size()).
  virtual std::string decode(int prev, int token) const = 0;

  // The ids this tokenizer has pieces for: 0 .. vocab_size() - 1. Every id
  // encode() emits is below it.
  virtual int vocab_size() const = 0;
  virtual int bos_id() const = 0;  // -1: none
  virtual int eos_id() const = 0;  // -1: none

  // Generation ends before any of these tokens.
  virtual std::vector<int> stop_tokens() const = 0;

  // A lower bound on the tokens (BOS excluded) that any text of `text_bytes`
  // bytes encodes to, so that a text that cannot fit the context is refused
  // before a slow encoder runs; 0 when the tokenizer gives no useful bound.
  virtual std::size_t fewest_tokens(std::size_t text_bytes) const = 0;

 protected:
  // Implementations copy and move as a whole, never through the interface.
  Tokenizer() = default;
  Tokenizer(const Tokenizer&) = default;
  Tokenizer(Tokenizer&&) = default;
  Tokenizer& operator=(const Tokenizer&) = default;
  Tokenizer& operator=(Tokenizer&&) = default;
};

class Llama2cTokenizer final : public Tokenizer {
 public:
  static constexpr int kBos = 1;
  static constexpr int kEos = 2;

  // Reads a llama2.c tokenizer file holding exactly `vocab_size` entries.
  // Throws FormatError for a missing, truncated or corrupt file.
  static Llama2cTokenizer load(const std::string& path, int vocab_size);

  std::string_view format() const override { return "llama2.c"; }
  std::vector<int> encode(std::string_view text, bool bos) const override;
  std::string decode(int prev, int token) const override;
  int vocab_size() const override { return static_cast<int>(pieces_.size()); }
  // The format has no field for them: llama2.c fixes ids 1 and 2.
  int bos_id() const override { return kBos; }
  int eos_id() const override { return kEos; }
  // BOS alone, as llama2.c's generation loop: its models end a story with it.
  std::vector<int> stop_tokens() const override { return {kBos}; }
  // text_bytes / max_piece_bytes(): the encoder merges pieces of the text.
  std::size_t fewest_tokens(std::size_t text_bytes) const override;

  // Bytes of the longest piece: a text of B bytes encodes to at least
  // B / max_piece_bytes() tokens.
  int max_piece_bytes() const;
  const std::string& piece(int token) const { return pieces_.at(static_cast<size_t>(token)); }

 private:
  friend Llama2cTokenizer detail::load_llama2c_tokenizer(detail::ByteReader& file, int vocab_size);

  int lookup(std::string_view piece) const;  // -1 when absent

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int> ids_;
};

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // Parses a serialized SentencePiece ModelProto (the bytes of a
  // tokenizer.model file); `path` only names it in messages. Throws
  // FormatError when the bytes are not a complete model.
  static SentencePieceTokenizer from_bytes(std::string_view bytes, const std::string& path);

  SentencePieceTokenizer(SentencePieceTokenizer&&) noexcept;
  SentencePieceTokenizer& operator=(SentencePieceTokenizer&&) noexcept;
  SentencePieceTokenizer(const SentencePieceTokenizer&) = delete;
  SentencePieceTokenizer& operator=(const SentencePieceTokenizer&) = delete;
  ~SentencePieceTokenizer() override;

  std::string_view format() const override { return "sentencepiece"; }
  std::vector<int> encode(std::string_view text, bool bos) const override;
  std::string decode(int prev, int token) const override;
  int vocab_size() const override { return vocab_size_; }
  int bos_id() const override { return bos_id_; }
  int eos_id() const override { return eos_id_; }
  // EOS and BOS, those the model has: models trained the llama2.c way end a
  // text with BOS, Hugging Face Llamas with EOS.
  std::vector<int> stop_tokens() const override;
  // 0: normalization may shrink a text (NFKC, collapsed spaces), so bytes
  // bound nothing; the encoder is fast, so the count after encoding decides.
  std::size_t fewest_tokens(std::size_t /*text_bytes*/) const override { return 0; }

 private:
  SentencePieceTokenizer();

  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  int vocab_size_ = 0;
  int bos_id_ = -1;
  int eos_id_ = -1;
  std::string unk_surface_;  // what SentencePiece writes for <unk>
  bool drops_first_space_ = true;  // of the first word of a text, as the library decodes
};

// Tells a SentencePiece model from a llama2.c tokenizer file by its bytes:
// true when they are framed as a serialized ModelProto (top-level protobuf
// fields that fill the file exactly and include the pieces, the trainer spec
// and the normalizer spec). A llama2.c file (an int32 below 2^16, then
// {float, int32, bytes} entries) is not, short of a freak file. `why`, when
// not null, receives the reason when the answer is false.
bool looks_like_sentencepiece(std::string_view bytes, std::string* why = nullptr);

// Reads the tokenizer at `path` in whichever format its content is, for a
// model of `model_vocab_size` tokens: a llama2.c file must hold exactly that
// many entries; a SentencePiece model at most that many pieces (Hugging Face
// checkpoints pad the embedding beyond the tokenizer's vocabulary). Throws
// FormatError naming the file when it cannot be read, is neither format, or
// does not fit the model.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path, int model_vocab_size);

}  // namespace flashcomm
