// SentencePiece models (tokenizer.model) through libsentencepiece: the
// library encodes; decoding one token at a time follows the library's own
// whole-text decoding, so streamed output equals it.
#include <sentencepiece_processor.h>
#include <exception>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "flashcomm/error.hpp"
#include "flashcomm/tokenizer.hpp"

namespace flashcomm {

namespace {

// U+2581 LOWER ONE EIGHTH BLOCK: SentencePiece's spelling of a space.
constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";

// The byte of a byte piece "<0xHH>", or -1.
int byte_of(const std::string& piece) {
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') {
    return -1;
  }
  int value = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = piece[i];
    const int digit = c >= '0' && c <= '9'   ? c - '0'
                      : c >= 'A' && c <= 'F' ? c - 'A' + 10
                      : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                             : -1;
    if (digit < 0) {
      return -1;
    }
    value = value * 16 + digit;
  }
  return value;
}

std::string spaces_for_symbols(std::string_view piece) {
  std::string text;
  text.reserve(piece.size());
  for (size_t i = 0; i < piece.size();) {
    if (piece.substr(i, kSpaceSymbol.size()) == kSpaceSymbol) {
      text += ' ';
      i += kSpaceSymbol.size();
    } else {
      text += piece[i++];
    }
  }
  return text;
}

}  // namespace

SentencePieceTokenizer::SentencePieceTokenizer()
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}
SentencePieceTokenizer::SentencePieceTokenizer(SentencePieceTokenizer&&) noexcept = default;
SentencePieceTokenizer& SentencePieceTokenizer::operator=(SentencePieceTokenizer&&) noexcept =
    default;
SentencePieceTokenizer::~SentencePieceTokenizer() = default;

SentencePieceTokenizer SentencePieceTokenizer::from_bytes(std::string_view bytes,
                                                          const std::string& path) {
  // The library accepts a ModelProto cut at a field boundary (fewer pieces, no
  // specs) as a valid model: check the framing first.
  std::string why;
  if (!looks_like_sentencepiece(bytes, &why)) {
    throw FormatError(fmt::format("{}: not a complete SentencePiece model: {}", path, why));
  }
  SentencePieceTokenizer tok;
  // Besides its Status, the library lets exceptions of its dependencies out
  // on some corrupt models (darts_clone: "failed to insert key: zero-length
  // key"); they are a bad file too.
  sentencepiece::util::Status status;
  try {
    status = tok.sp_->LoadFromSerializedProto(bytes);
  } catch (const std::exception& e) {
    throw FormatError(
        fmt::format("{}: libsentencepiece cannot load the model: {}", path, e.what()));
  }
  if (!status.ok()) {
    throw FormatError(
        fmt::format("{}: libsentencepiece cannot load the model: {}", path, status.ToString()));
  }
  tok.vocab_size_ = tok.sp_->GetPieceSize();
  tok.bos_id_ = tok.sp_->bos_id();
  tok.eos_id_ = tok.sp_->eos_id();
  for (const auto& [name, id] : {std::pair{"bos_id", tok.bos_id_}, {"eos_id", tok.eos_id_}}) {
    if (id < -1 || id >= tok.vocab_size_) {
      throw FormatError(fmt::format("{}: {} is {}, expected -1 (none) or an id below {}", path,
                                    name, id, tok.vocab_size_));
    }
  }
  tok.unk_surface_ = tok.sp_->DecodeIds({tok.sp_->unk_id()});

  // Whether the library drops the leading space of a text's first word
  // depends on the normalizer spec (a dummy prefix, or collapsed spaces);
  // ask the library itself with any word piece.
  for (int id = 0; id < tok.vocab_size_; ++id) {
    const std::string& piece = tok.sp_->IdToPiece(id);
    if (!tok.sp_->IsControl(id) && !tok.sp_->IsUnknown(id) && !tok.sp_->IsByte(id) &&
        piece.size() > kSpaceSymbol.size() &&
        piece.compare(0, kSpaceSymbol.size(), kSpaceSymbol) == 0) {
      const std::string alone = tok.sp_->DecodeIds({id});
      tok.drops_first_space_ = alone.empty() || alone[0] != ' ';
      break;
    }
  }
  return tok;
}

std::vector<int> SentencePieceTokenizer::encode(std::string_view text, bool bos) const {
  std::vector<int> ids;
  const sentencepiece::util::Status status = sp_->Encode(text, &ids);
  if (!status.ok()) {
    throw InternalError(fmt::format("libsentencepiece failed to encode: {}", status.ToString()));
  }
  if (bos && bos_id_ >= 0) {
    ids.insert(ids.begin(), bos_id_);
  }
  return ids;
}

std::string SentencePieceTokenizer::decode(int prev, int token) const {
  if (token < 0 || token >= vocab_size_) {
    throw ConfigError(fmt::format("token id {} is out of range for a vocabulary of {} tokens",
                                  token, vocab_size_));
  }
  if (sp_->IsControl(token)) {  // <s>, </s>, <pad>: invisible
    return {};
  }
  if (sp_->IsUnknown(token)) {
    return unk_surface_;
  }
  const std::string& piece = sp_->IdToPiece(token);
  if (sp_->IsByte(token)) {
    const int byte = byte_of(piece);
    if (byte >= 0) {
      return std::string(1, static_cast<char>(byte));
    }
  }
  std::string text = spaces_for_symbols(piece);
  // Whole-text decoding drops the space of the first visible piece; when
  // streaming, that piece is the one after the start or after BOS (or
  // another control token).
  const bool first = prev < 0 || (prev < vocab_size_ && sp_->IsControl(prev));
  if (first && drops_first_space_ && !text.empty() && text[0] == ' ') {
    text.erase(0, 1);
  }
  return text;
}

std::vector<int> SentencePieceTokenizer::stop_tokens() const {
  std::vector<int> stop;
  for (int id : {eos_id_, bos_id_}) {
    if (id >= 0 && std::find(stop.begin(), stop.end(), id) == stop.end()) {
      stop.push_back(id);
    }
  }
  return stop;
}

}  // namespace flashcomm
