// The llama2.c tokenizer: loading its vocabulary file, BPE encoding by merge
// scores, and decoding one token at a time.
//
// File layout (little-endian): int32 max_token_length, then vocab_size
// entries of {float32 score, int32 len, len bytes}. Every field is checked
// against the file's real size before it is used.
#include "flashcomm/tokenizer.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "flashcomm/error.hpp"
#include "model/byte_reader.hpp"

namespace flashcomm {

namespace {

constexpr std::int32_t kMaxTokenLength = 1 << 16;
constexpr int kFirstByteToken = 3;  // <0x00>; ids 0..2 are <unk>, <s>, </s>

// Sequential reads through a ByteReader that know how many bytes remain, so
// that no length field from the file is used before it is known to fit.
class Cursor {
 public:
  explicit Cursor(detail::ByteReader& in) : in_(in) {}

  std::int64_t remaining() const { return in_.size() - offset_; }

  void read(void* dst, std::int64_t bytes, const std::string& what) {
    in_.read(offset_, dst, bytes, what);
    offset_ += bytes;
  }

  template <typename T>
  T read_value(const std::string& what) {
    T value{};
    read(&value, sizeof(value), what);
    return value;
  }

 private:
  detail::ByteReader& in_;
  std::int64_t offset_ = 0;
};

// The byte of a piece spelled "<0xHH>", or -1.
int byte_piece_value(const std::string& piece) {
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') {
    return -1;
  }
  int value = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = piece[i];
    int digit = 0;
    if (c >= '0' && c <= '9') {
      digit = c - '0';
    } else if (c >= 'A' && c <= 'F') {
      digit = c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      digit = c - 'a' + 10;
    } else {
      return -1;
    }
    value = value * 16 + digit;
  }
  return value;
}

}  // namespace

Llama2cTokenizer Llama2cTokenizer::load(const std::string& path, int vocab_size) {
  detail::FileReader file(path, "tokenizer");
  return detail::load_llama2c_tokenizer(file, vocab_size);
}

Llama2cTokenizer detail::load_llama2c_tokenizer(ByteReader& file, int vocab_size) {
  const std::string& path = file.name();
  if (vocab_size <= 0) {
    throw ConfigError(
        fmt::format("{}: tokenizer vocab_size is {}, expected a positive value", path, vocab_size));
  }
  Cursor in(file);
  const auto max_len = in.read_value<std::int32_t>("max_token_length");
  if (max_len <= 0 || max_len > kMaxTokenLength) {
    throw FormatError(
        fmt::format("{}: max_token_length is {}, expected 1..{}", path, max_len, kMaxTokenLength));
  }
  // Each entry takes at least 8 bytes: refuse before reserving for a vocabulary
  // the file cannot hold.
  if (in.remaining() < std::int64_t{8} * vocab_size) {
    throw FormatError(
        fmt::format("{}: truncated tokenizer: {} bytes after the header cannot hold {} entries",
                    path, in.remaining(), vocab_size));
  }

  Llama2cTokenizer tok;
  tok.pieces_.reserve(static_cast<size_t>(vocab_size));
  tok.scores_.reserve(static_cast<size_t>(vocab_size));
  for (int id = 0; id < vocab_size; ++id) {
    const auto score =
        in.read_value<float>(fmt::format("the score of entry {} of {}", id, vocab_size));
    const auto len = in.read_value<std::int32_t>(fmt::format("the length of entry {}", id));
    if (!std::isfinite(score)) {
      throw FormatError(
          fmt::format("{}: entry {} has score {}, expected a finite value", path, id, score));
    }
    if (len < 0 || len > max_len) {
      throw FormatError(fmt::format("{}: entry {} has length {}, expected 0..{} (max_token_length)",
                                    path, id, len, max_len));
    }
    if (len > in.remaining()) {
      throw FormatError(
          fmt::format("{}: truncated tokenizer: entry {} has length {} but only {} bytes remain",
                      path, id, len, in.remaining()));
    }
    std::string piece(static_cast<size_t>(len), '\0');
    in.read(piece.data(), len, fmt::format("the bytes of entry {}", id));
    // A duplicated piece keeps its first id, so lookups are deterministic.
    tok.ids_.emplace(piece, id);
    tok.pieces_.push_back(std::move(piece));
    tok.scores_.push_back(score);
  }
  if (in.remaining() != 0) {
    throw FormatError(fmt::format("{}: {} extra bytes after the {} tokenizer entries", path,
                                  in.remaining(), vocab_size));
  }
  return tok;
}

int Llama2cTokenizer::lookup(std::string_view piece) const {
  const auto it = ids_.find(std::string(piece));
  return it == ids_.end() ? -1 : it->second;
}

std::vector<int> Llama2cTokenizer::encode(std::string_view text, bool bos) const {
  std::vector<int> tokens;
  if (bos) {
    tokens.push_back(kBos);
  }
  if (text.empty()) {
    return tokens;
  }
  const size_t first = tokens.size();  // BOS takes no part in merges

  // SentencePiece's dummy prefix: a word at the start of the text is spelled
  // like one after a space.
  const int space = lookup(" ");
  if (space < 0) {
    throw FormatError("the tokenizer vocabulary has no \" \" piece for the dummy prefix");
  }
  tokens.push_back(space);

  // Step 1: one token per UTF-8 code point (a lead byte and up to three
  // continuation bytes 10xxxxxx), or one byte token per byte when the code
  // point is not in the vocabulary.
  for (size_t i = 0; i < text.size();) {
    size_t len = 1;
    while (len < 4 && i + len < text.size() &&
           (static_cast<unsigned char>(text[i + len]) & 0xC0) == 0x80) {
      ++len;
    }
    const std::string_view code_point = text.substr(i, len);
    const int id = lookup(code_point);
    if (id >= 0) {
      tokens.push_back(id);
    } else {
      for (const char c : code_point) {
        const int byte_id = kFirstByteToken + static_cast<unsigned char>(c);
        if (byte_id >= vocab_size()) {
          throw FormatError(fmt::format(
              "the tokenizer has no byte token for 0x{:02X}: id {} is beyond vocab_size {}",
              static_cast<unsigned char>(c), byte_id, vocab_size()));
        }
        tokens.push_back(byte_id);
      }
    }
    i += len;
  }

  // Step 2: merge the adjacent pair with the best score until no pair is a
  // piece; the first pair wins a tie. Quadratic, which is fine for prompts.
  std::string pair;
  while (true) {
    int best_id = -1;
    size_t best_at = 0;
    for (size_t i = first; i + 1 < tokens.size(); ++i) {
      pair = pieces_[static_cast<size_t>(tokens[i])];
      pair += pieces_[static_cast<size_t>(tokens[i + 1])];
      const int id = lookup(pair);
      if (id >= 0 && (best_id < 0 ||
                      scores_[static_cast<size_t>(id)] > scores_[static_cast<size_t>(best_id)])) {
        best_id = id;
        best_at = i;
      }
    }
    if (best_id < 0) {
      break;
    }
    tokens[best_at] = best_id;
    tokens.erase(tokens.begin() + static_cast<std::ptrdiff_t>(best_at) + 1);
  }
  return tokens;
}

std::string Llama2cTokenizer::decode(int prev, int token) const {
  if (token < 0 || token >= vocab_size()) {
    throw ConfigError(fmt::format("token id {} is out of range for a vocabulary of {} tokens",
                                  token, vocab_size()));
  }
  const std::string& piece = pieces_[static_cast<size_t>(token)];
  // The dummy prefix of encode() is not part of the text.
  if ((prev == kBos || prev < 0) && !piece.empty() && piece[0] == ' ') {
    return piece.substr(1);
  }
  const int byte = byte_piece_value(piece);
  if (byte >= 0) {
    return std::string(1, static_cast<char>(byte));
  }
  return piece;
}

int Llama2cTokenizer::max_piece_bytes() const {
  size_t longest = 1;
  for (const std::string& p : pieces_) {
    longest = std::max(longest, p.size());
  }
  return static_cast<int>(longest);
}

std::size_t Llama2cTokenizer::fewest_tokens(std::size_t text_bytes) const {
  return text_bytes / static_cast<std::size_t>(max_piece_bytes());
}

}  // namespace flashcomm
