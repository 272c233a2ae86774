// llama2.c tokenizer files: a vocabulary of byte strings with merge scores.
//
// Encoding follows SentencePiece BPE as llama2.c does: a leading space is
// added to non-empty text, every UTF-8 code point is looked up (unknown ones
// fall back to byte tokens <0xXX>), then the adjacent pair whose merge has the
// best score is merged until no pair is in the vocabulary.
#pragma once

#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace flashcomm {

class Tokenizer;

namespace detail {
class ByteReader;
// The parser behind Tokenizer::load, on any bytes (src/model/byte_reader.hpp).
Tokenizer load_tokenizer(ByteReader& file, int vocab_size);
}  // namespace detail

class Tokenizer {
 public:
  static constexpr int kBos = 1;
  static constexpr int kEos = 2;

  // Reads a llama2.c tokenizer file holding exactly `vocab_size` entries.
  // Throws FormatError for a missing, truncated or corrupt file.
  static Tokenizer load(const std::string& path, int vocab_size);

  // Token ids of `text`, starting with BOS when `bos`. Empty text gives [BOS].
  std::vector<int> encode(std::string_view text, bool bos) const;

  // The text of `token` when it follows `prev`: the leading space after BOS is
  // dropped and byte tokens <0xXX> become that byte.
  std::string decode(int prev, int token) const;

  int vocab_size() const { return static_cast<int>(pieces_.size()); }
  // Bytes of the longest piece: a text of B bytes encodes to at least
  // B / max_piece_bytes() tokens.
  int max_piece_bytes() const;
  const std::string& piece(int token) const { return pieces_.at(static_cast<size_t>(token)); }

 private:
  friend Tokenizer detail::load_tokenizer(detail::ByteReader& file, int vocab_size);

  int lookup(std::string_view piece) const;  // -1 when absent

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int> ids_;
};

}  // namespace flashcomm
