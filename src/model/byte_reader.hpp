// Bounds-checked reads of a file's bytes, from disk or from memory, and the
// parsers that read through them.
//
// The llama2.c checkpoint and tokenizer parsers take a ByteReader, so one
// parsing code serves the path-based loaders of the public API (FileReader)
// and the fuzz targets in fuzz/ (MemoryReader), which hand it bytes without a
// temporary file. A reader knows its size up front, and a read that does not
// lie inside it is a FormatError, never a short read.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <span>
#include <string>
#include <utility>

#include "flashcomm/model.hpp"
#include "flashcomm/tokenizer.hpp"

namespace flashcomm::detail {

class ByteReader {
 public:
  explicit ByteReader(std::string name) : name_(std::move(name)) {}
  virtual ~ByteReader() = default;

  // The file's path, or a name for bytes in memory; messages start with it.
  const std::string& name() const { return name_; }
  virtual std::int64_t size() const = 0;

  // Copies bytes [offset, offset + bytes) to dst. Throws FormatError naming
  // `what` and the range when it is not inside [0, size()).
  void read(std::int64_t offset, void* dst, std::int64_t bytes, const std::string& what);

 private:
  // Called only with a non-empty range inside [0, size()).
  virtual void read_inside(std::int64_t offset, void* dst, std::int64_t bytes,
                           const std::string& what) = 0;

  std::string name_;
};

// A regular file. `kind` names it in the messages ("checkpoint", "tokenizer").
class FileReader final : public ByteReader {
 public:
  FileReader(const std::string& path, const char* kind);
  std::int64_t size() const override { return size_; }

 private:
  struct Closer {
    void operator()(std::FILE* f) const { std::fclose(f); }
  };

  void read_inside(std::int64_t offset, void* dst, std::int64_t bytes,
                   const std::string& what) override;

  std::unique_ptr<std::FILE, Closer> file_;
  std::int64_t size_ = 0;
  std::int64_t position_ = 0;  // of file_, so that sequential reads do not seek
};

// Bytes in memory, which must outlive the reader.
class MemoryReader final : public ByteReader {
 public:
  MemoryReader(std::span<const unsigned char> bytes, std::string name)
      : ByteReader(std::move(name)), bytes_(bytes) {}
  std::int64_t size() const override { return static_cast<std::int64_t>(bytes_.size()); }

 private:
  void read_inside(std::int64_t offset, void* dst, std::int64_t bytes,
                   const std::string& what) override;

  std::span<const unsigned char> bytes_;
};

// The parsers behind read_llama2c_config, load_llama2c and Llama2cTokenizer::load
// (llama2c.cpp, tokenizer.cpp), with the same checks and messages.
ModelConfig read_llama2c_config(ByteReader& in);
ModelWeights load_llama2c(ByteReader& in);
// (detail::load_llama2c_tokenizer is declared in flashcomm/tokenizer.hpp.)

}  // namespace flashcomm::detail
