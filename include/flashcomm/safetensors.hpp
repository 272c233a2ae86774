// The safetensors format (Hugging Face): an 8-byte little-endian header
// length N, N bytes of JSON naming each tensor's dtype, shape and byte range
// [begin, end) inside the data section that follows, then the data section.
//
// Reading is split in two so that a fuzzer can drive it: pure functions from
// bytes to a validated header (no file I/O), and a memory-mapped file that
// applies them. Nothing the file says is trusted: the header length, every
// shape and every offset are checked against the file's length before use.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace flashcomm {

// Element types the engine converts to float32. Other safetensors dtypes are
// parsed (so their sizes are checked) but refused where a weight is read.
enum class DType : std::uint8_t { f32, f16, bf16, other };

const char* safetensors_name(DType dtype);  // "F32", "F16", "BF16"
std::size_t dtype_bytes(DType dtype);  // 4, 2, 2 (0 for other)

// IEEE binary16 and bfloat16 <-> float32. Widening is exact; narrowing rounds
// to nearest, ties to even, and overflow gives infinity; a NaN stays a NaN
// with its sign (made quiet, as hardware conversions do, except when a
// bfloat16 is widened: that is a plain shift).
float f16_to_f32(std::uint16_t h);
float bf16_to_f32(std::uint16_t b);
std::uint16_t f32_to_f16(float f);
std::uint16_t f32_to_bf16(float f);

// out[0, n) <- n elements of `dtype` at `src` (little-endian, any alignment).
void convert_to_f32(DType dtype, const unsigned char* src, std::size_t n, float* out);
// n elements of `dtype` at `dst` <- in[0, n), rounded as above.
void convert_from_f32(DType dtype, const float* in, std::size_t n, unsigned char* dst);

struct SafetensorsTensor {
  std::string name;
  std::string dtype_name;  // as the file spells it: "F32", "BF16", "I64", ...
  DType dtype = DType::other;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;  // byte range inside the data section
  std::uint64_t end = 0;
  std::uint64_t elements() const;  // product of shape (checked not to overflow when parsed)
};

struct SafetensorsHeader {
  std::uint64_t data_offset = 0;  // 8 + header length: where the data section starts
  std::vector<SafetensorsTensor> tensors;  // in the order of their data offsets
};

// The most header bytes accepted (the safetensors library's own limit).
inline constexpr std::uint64_t kMaxSafetensorsHeaderBytes = std::uint64_t{100} << 20;

// The header length from the file's first bytes (at least 8 of them), checked
// against the limit and the file's size. `source` names the file in messages.
std::uint64_t parse_safetensors_header_length(std::string_view first_bytes, std::uint64_t file_size,
                                              const std::string& source);

// The header's JSON (the N bytes after the length) of a file of `file_size`
// bytes: every tensor's dtype, shape and offsets, checked: a JSON object of
// objects (plus an optional "__metadata__" object), known dtypes, shapes of
// non-negative integers whose product does not overflow, begin <= end within
// the data section, end - begin == elements * dtype size, no two tensors
// overlapping. Throws FormatError naming `source`, the tensor and the field.
SafetensorsHeader parse_safetensors_header(std::string_view header_json, std::uint64_t file_size,
                                           const std::string& source);

// Both of the above on a whole file's bytes.
SafetensorsHeader parse_safetensors(std::string_view file_bytes, const std::string& source);

// A regular file mapped read-only into memory; pages are read from disk only
// when touched, so a rank that reads only its shard reads only those pages.
// The file must not shrink while mapped (that would fault on access).
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);  // throws FormatError
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) = delete;

  const std::string& path() const { return path_; }
  std::uint64_t size() const { return size_; }
  std::string_view bytes() const {
    return {static_cast<const char*>(data_), static_cast<std::size_t>(size_)};
  }

 private:
  std::string path_;
  void* data_ = nullptr;
  std::uint64_t size_ = 0;
};

// A mapped safetensors file with its validated header.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);  // throws FormatError
  const std::string& path() const { return file_.path(); }
  const std::vector<SafetensorsTensor>& tensors() const { return header_.tensors; }
  const SafetensorsTensor* find(const std::string& name) const;  // nullptr when absent
  // The first byte of a tensor of this file's header.
  const unsigned char* data(const SafetensorsTensor& tensor) const;

 private:
  MappedFile file_;
  SafetensorsHeader header_;
};

// One tensor to write: `bytes` already in `dtype` (elements of shape).
struct SafetensorsBlob {
  std::string name;
  DType dtype = DType::f32;
  std::vector<std::int64_t> shape;
  std::vector<unsigned char> bytes;
};

// Writes a safetensors file (header padded with spaces to a multiple of 8
// bytes, as the reference writer does). Throws ConfigError when it cannot.
void write_safetensors(const std::string& path, const std::vector<SafetensorsBlob>& tensors);

}  // namespace flashcomm
