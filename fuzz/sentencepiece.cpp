// Fuzz target: the bytes of a SentencePiece tokenizer.model, through
// looks_like_sentencepiece (our framing check, which decides whether the
// bytes reach libsentencepiece at all) and, when it accepts them,
// SentencePieceTokenizer::from_bytes and an encode/decode of a short text.
// Seeds: corpus/sentencepiece/ (small trained models).
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "flashcomm/tokenizer.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using flashcomm::fuzz::check;
  using flashcomm::fuzz::error_of;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  if (!flashcomm::looks_like_sentencepiece(bytes)) {
    return 0;
  }
  error_of([&] {
    const auto tok = flashcomm::SentencePieceTokenizer::from_bytes(bytes, "input");
    const std::vector<int> ids = tok.encode("Once upon a time", true);
    int prev = -1;
    for (const int id : ids) {
      check(id >= 0 && id < tok.vocab_size(), "encode gives ids inside the vocabulary");
      tok.decode(prev, id);
      prev = id;
    }
  });
  return 0;
}
