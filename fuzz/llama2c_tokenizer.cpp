// Fuzz target: llama2.c tokenizer files.
//
// Input: vocab_size as a little-endian uint16 (the loader takes it from the
// model), then the bytes of a whole tokenizer file. Seeds:
// corpus/llama2c_tokenizer/. A vocabulary that loads is then used: encoding a
// few texts (ASCII, UTF-8, broken UTF-8) must give ids inside it or a
// flashcomm::Error, and every id it gives must decode.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "flashcomm/tokenizer.hpp"
#include "fuzz_support.hpp"
#include "model/byte_reader.hpp"

namespace {

using flashcomm::fuzz::check;
using flashcomm::fuzz::error_of;

constexpr std::string_view kTexts[] = {
    "a",
    "Once upon a time, there was a little girl named Lily.",
    "  two spaces, digits 123 and \"quotes\"\n",
    "cr\xC3\xA8me br\xC3\xBBl\xC3\xA9\x65 \xF0\x9F\x98\x80",
    "broken \xFF\xFE utf-8 \x80\xC3",
};

void use(const flashcomm::Llama2cTokenizer& tok) {
  const int longest = tok.max_piece_bytes();
  check(longest >= 1, "max_piece_bytes() >= 1");
  for (int id = 0; id < tok.vocab_size(); ++id) {
    check(static_cast<int>(tok.piece(id).size()) <= longest, "no piece longer than the longest");
  }
  for (const std::string_view text : kTexts) {
    for (const bool bos : {false, true}) {
      std::vector<int> tokens;
      if (!error_of([&] { tokens = tok.encode(text, bos); }).empty()) {
        continue;  // e.g. no " " piece or no byte token for a byte: a FormatError
      }
      check(!tokens.empty(), "a non-empty text encodes to tokens");
      check(!bos || tokens[0] == flashcomm::Llama2cTokenizer::kBos, "BOS first when asked");
      int prev = flashcomm::Llama2cTokenizer::kBos;
      for (const int t : tokens) {
        check(t >= 0 && t < tok.vocab_size(), "encode gives ids inside the vocabulary");
        check(error_of([&] { tok.decode(prev, t); }).empty(), "every encoded id decodes");
        prev = t;
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) {
    return 0;
  }
  const int vocab_size = data[0] | (data[1] << 8);
  flashcomm::detail::MemoryReader in({data + 2, size - 2}, "input");

  flashcomm::Llama2cTokenizer tok;
  if (error_of([&] { tok = flashcomm::detail::load_llama2c_tokenizer(in, vocab_size); }).empty()) {
    check(tok.vocab_size() == vocab_size, "the tokenizer holds vocab_size entries");
    use(tok);
  }
  return 0;
}
