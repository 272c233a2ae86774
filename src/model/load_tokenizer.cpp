// Choosing the tokenizer format by content.
//
// A SentencePiece model is a serialized protobuf ModelProto whose top-level
// fields are 1 pieces (repeated), 2 trainer_spec, 3 normalizer_spec, then the
// optional 4 self_test_data and 5 denormalizer_spec; protobuf writes fields
// in number order, so the file begins with byte 0x0A (field 1, length-
// delimited). A llama2.c tokenizer begins with its int32 max_token_length.
// Only the top-level framing is walked here (keys, lengths against the
// file's size); libsentencepiece parses the contents.
#include <sys/stat.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>

#include "flashcomm/error.hpp"
#include "flashcomm/log.hpp"
#include "flashcomm/tokenizer.hpp"

namespace flashcomm {

namespace {

constexpr unsigned char kFirstPieceKey = 0x0A;  // field 1, wire type 2
// Far above any tokenizer (a 256k-piece SentencePiece model is ~5 MiB), so a
// wrong path to a huge file fails before it is read into memory.
constexpr std::int64_t kMaxTokenizerBytes = std::int64_t{256} << 20;

std::string read_tokenizer_file(const std::string& path) {
  struct stat info {};
  if (stat(path.c_str(), &info) != 0) {
    throw FormatError(fmt::format("{}: cannot open tokenizer: {}", path, std::strerror(errno)));
  }
  if (!S_ISREG(info.st_mode)) {
    throw FormatError(fmt::format("{}: not a readable regular file", path));
  }
  if (info.st_size == 0) {
    throw FormatError(fmt::format(
        "{}: the file is empty, expected a llama2.c tokenizer or a SentencePiece model", path));
  }
  if (info.st_size > kMaxTokenizerBytes) {
    throw FormatError(fmt::format("{}: {} bytes is more than any tokenizer (at most {} MiB)", path,
                                  info.st_size, kMaxTokenizerBytes >> 20));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw FormatError(fmt::format("{}: cannot open tokenizer: {}", path, std::strerror(errno)));
  }
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad() || static_cast<std::int64_t>(bytes.size()) != info.st_size) {
    throw FormatError(fmt::format("{}: read {} of its {} bytes", path, bytes.size(), info.st_size));
  }
  return bytes;
}

// Strips "path: " from a message that starts with it.
std::string without_path(const std::string& message, const std::string& path) {
  const std::string prefix = path + ": ";
  return message.compare(0, prefix.size(), prefix) == 0 ? message.substr(prefix.size()) : message;
}

}  // namespace

bool looks_like_sentencepiece(std::string_view bytes, std::string* why) {
  auto no = [why](std::string reason) {
    if (why != nullptr) {
      *why = std::move(reason);
    }
    return false;
  };
  if (bytes.empty() || static_cast<unsigned char>(bytes[0]) != kFirstPieceKey) {
    return no("it does not begin with byte 0x0A, the key of the first piece");
  }
  std::size_t at = 0;
  auto varint = [&](std::uint64_t& value) {
    value = 0;
    for (int shift = 0; shift < 64 && at < bytes.size(); shift += 7) {
      const auto byte = static_cast<unsigned char>(bytes[at++]);
      value |= std::uint64_t{byte & 0x7FU} << shift;
      if ((byte & 0x80U) == 0) {
        return true;
      }
    }
    return false;
  };
  bool seen[4] = {false, false, false, false};
  const char* names[4] = {"", "pieces", "trainer_spec", "normalizer_spec"};
  while (at < bytes.size()) {
    const std::size_t key_at = at;
    std::uint64_t key = 0;
    if (!varint(key)) {
      return no(fmt::format("the field key at byte {} is cut off", key_at));
    }
    const std::uint64_t field = key >> 3U;
    const auto wire = static_cast<unsigned>(key & 7U);
    if (field == 0) {
      return no(fmt::format("byte {} holds field number 0, which protobuf never writes", key_at));
    }
    if (field <= 3 && wire != 2) {
      return no(fmt::format("field {} ({}) at byte {} has wire type {}, expected 2 (a message)",
                            field, names[field], key_at, wire));
    }
    std::uint64_t skip = 0;
    switch (wire) {
      case 0: {  // varint
        std::uint64_t ignored = 0;
        if (!varint(ignored)) {
          return no(fmt::format("the value of field {} at byte {} is cut off", field, key_at));
        }
        break;
      }
      case 1:  // 64-bit
        skip = 8;
        break;
      case 2:  // length-delimited
        if (!varint(skip)) {
          return no(fmt::format("the length of field {} at byte {} is cut off", field, key_at));
        }
        break;
      case 5:  // 32-bit
        skip = 4;
        break;
      default:
        return no(fmt::format("field {} at byte {} has wire type {}, expected 0, 1, 2 or 5", field,
                              key_at, wire));
    }
    if (skip > bytes.size() - at) {
      return no(fmt::format(
          "field {} at byte {} needs {} bytes but {} remain: the file is truncated or not a "
          "SentencePiece model",
          field, key_at, skip, bytes.size() - at));
    }
    at += static_cast<std::size_t>(skip);
    if (field <= 3) {
      seen[field] = true;
    }
  }
  for (int field = 1; field <= 3; ++field) {
    if (!seen[field]) {
      return no(
          fmt::format("it has no {} (field {}), which SentencePiece always writes: the file "
                      "is truncated",
                      names[field], field));
    }
  }
  return true;
}

namespace {

// Tokenizer files of other engines that users pass by mistake, named so the
// message can say what the file is rather than where llama2.c parsing broke:
// Hugging Face's tokenizer.json (JSON), tiktoken's BPE ranks (Llama 3's
// tokenizer.model: lines of base64 token, space, rank).
const char* other_tokenizer_format(const std::string& bytes) {
  const std::size_t first = bytes.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && bytes[first] == '{') {
    return "a Hugging Face tokenizer.json";
  }
  const std::size_t eol = bytes.find('\n');
  const std::string line = bytes.substr(0, eol == std::string::npos ? 200 : eol);
  const std::size_t space = line.find(' ');
  const bool base64 = space != std::string::npos && space > 0 &&
                      line.find_first_not_of(
                          "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                          "0123456789+/=") == space;
  const bool rank = space != std::string::npos && space + 1 < line.size() &&
                    line.find_first_not_of("0123456789", space + 1) == std::string::npos;
  if (base64 && rank) {
    return "a tiktoken BPE file (the tokenizer.model of Llama 3)";
  }
  return nullptr;
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path, int model_vocab_size) {
  const std::string bytes = read_tokenizer_file(path);

  // Step 1: framed as a ModelProto: SentencePiece, and only SentencePiece.
  std::string why_not_sentencepiece;
  if (looks_like_sentencepiece(bytes, &why_not_sentencepiece)) {
    auto tok =
        std::make_unique<SentencePieceTokenizer>(SentencePieceTokenizer::from_bytes(bytes, path));
    if (tok->vocab_size() > model_vocab_size) {
      throw FormatError(fmt::format(
          "{}: the SentencePiece model has {} pieces but the model's vocab_size is {}: the "
          "tokenizer could emit ids the model has no embedding for",
          path, tok->vocab_size(), model_vocab_size));
    }
    if (tok->vocab_size() < model_vocab_size) {
      log::info("{}: {} pieces for a vocab_size of {}: ids {}..{} are embedding padding", path,
                tok->vocab_size(), model_vocab_size, tok->vocab_size(), model_vocab_size - 1);
    }
    return tok;
  }

  // Step 2: anything else is read as llama2.c. A file that begins like a
  // ModelProto but is not one is reported as both, since either may have
  // been meant (a llama2.c max_token_length of 10 begins with 0x0A too).
  try {
    return std::make_unique<Llama2cTokenizer>(Llama2cTokenizer::load(path, model_vocab_size));
  } catch (const FormatError& e) {
    if (const char* other = other_tokenizer_format(bytes)) {
      throw FormatError(fmt::format(
          "{}: this looks like {}, which flashcomm does not read; use a llama2.c tokenizer or a "
          "SentencePiece tokenizer.model, or give the prompt as --prompt-tokens IDS",
          path, other));
    }
    if (static_cast<unsigned char>(bytes[0]) != kFirstPieceKey) {
      throw FormatError(
          fmt::format("{} (the model's vocab_size is {})", e.what(), model_vocab_size));
    }
    throw FormatError(fmt::format(
        "{}: neither a SentencePiece model ({}) nor a llama2.c tokenizer ({}; the model's "
        "vocab_size is {})",
        path, why_not_sentencepiece, without_path(e.what(), path), model_vocab_size));
  }
}

}  // namespace flashcomm
