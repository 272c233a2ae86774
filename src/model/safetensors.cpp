// safetensors: header validation, float conversions, the mapped reader and
// the writer.
#include "flashcomm/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <utility>

#include <nlohmann/json.hpp>

#include "flashcomm/error.hpp"
#include "flashcomm/log.hpp"
#include "model/untrusted_json.hpp"

namespace flashcomm {

namespace {

// The header length and every tensor are little-endian; they are copied
// without byte swapping.
static_assert(std::endian::native == std::endian::little,
              "safetensors files are little-endian; a big-endian host needs byte swapping");

using nlohmann::json;

// Every dtype of the safetensors specification with a whole number of bytes
// per element; the engine reads only F32, F16 and BF16.
struct DTypeInfo {
  const char* name;
  std::uint64_t bytes;
  DType dtype;
};
constexpr DTypeInfo kDTypes[] = {
    {"F32", 4, DType::f32},    {"F16", 2, DType::f16},       {"BF16", 2, DType::bf16},
    {"F64", 8, DType::other},  {"I64", 8, DType::other},     {"U64", 8, DType::other},
    {"I32", 4, DType::other},  {"U32", 4, DType::other},     {"I16", 2, DType::other},
    {"U16", 2, DType::other},  {"I8", 1, DType::other},      {"U8", 1, DType::other},
    {"BOOL", 1, DType::other}, {"F8_E4M3", 1, DType::other}, {"F8_E5M2", 1, DType::other},
};

const DTypeInfo* dtype_info(const std::string& name) {
  for (const DTypeInfo& d : kDTypes) {
    if (name == d.name) {
      return &d;
    }
  }
  return nullptr;
}

std::string known_dtype_names() {
  std::string names;
  for (const DTypeInfo& d : kDTypes) {
    names += names.empty() ? "" : ", ";
    names += d.name;
  }
  return names;
}

// A JSON value in a message: short, and readable whatever its type.
std::string shown(const json& v) {
  std::string text = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 60) {
    text = text.substr(0, 57) + "...";
  }
  return text;
}

std::uint64_t uint64_field(const json& v, const std::string& where) {
  if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<std::int64_t>() >= 0)) {
    throw FormatError(fmt::format("{} is {}, expected a non-negative integer", where, shown(v)));
  }
  return v.get<std::uint64_t>();
}

SafetensorsTensor parse_entry(const std::string& name, const json& entry, std::uint64_t data_size,
                              const std::string& source) {
  const std::string where = fmt::format("{}: tensor {}", source, name);
  if (!entry.is_object()) {
    throw FormatError(fmt::format("{} is {}, expected an object with dtype, shape and data_offsets",
                                  where, shown(entry)));
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(key)) {
      throw FormatError(fmt::format("{} has no \"{}\"", where, key));
    }
  }
  SafetensorsTensor t;
  t.name = name;

  const json& dtype = entry["dtype"];
  if (!dtype.is_string()) {
    throw FormatError(fmt::format("{}: dtype is {}, expected a string", where, shown(dtype)));
  }
  t.dtype_name = dtype.get<std::string>();
  const DTypeInfo* info = dtype_info(t.dtype_name);
  if (info == nullptr) {
    throw FormatError(
        fmt::format("{}: dtype \"{}\" is not one of {}", where, t.dtype_name, known_dtype_names()));
  }
  t.dtype = info->dtype;

  const json& shape = entry["shape"];
  if (!shape.is_array()) {
    throw FormatError(
        fmt::format("{}: shape is {}, expected an array of integers", where, shown(shape)));
  }
  // The product is kept below 2^63 so that it, and its size in bytes, fit.
  std::uint64_t elements = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    const std::uint64_t dim = uint64_field(shape[i], fmt::format("{}: shape[{}]", where, i));
    std::uint64_t product = 0;
    if (dim > static_cast<std::uint64_t>(INT64_MAX) ||
        __builtin_mul_overflow(elements, dim, &product) ||
        product > static_cast<std::uint64_t>(INT64_MAX) / 8) {
      throw FormatError(fmt::format("{}: shape {} has too many elements", where, shown(shape)));
    }
    elements = product;
    t.shape.push_back(static_cast<std::int64_t>(dim));
  }

  const json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2) {
    throw FormatError(
        fmt::format("{}: data_offsets is {}, expected [begin, end]", where, shown(offsets)));
  }
  t.begin = uint64_field(offsets[0], where + ": data_offsets[0]");
  t.end = uint64_field(offsets[1], where + ": data_offsets[1]");
  if (t.begin > t.end) {
    throw FormatError(
        fmt::format("{}: data_offsets [{}, {}] end before they begin", where, t.begin, t.end));
  }
  if (t.end > data_size) {
    throw FormatError(fmt::format(
        "{}: data_offsets [{}, {}] reach past the data section of {} bytes (truncated file?)",
        where, t.begin, t.end, data_size));
  }
  const std::uint64_t bytes = elements * info->bytes;
  if (t.end - t.begin != bytes) {
    throw FormatError(fmt::format(
        "{}: data_offsets [{}, {}] hold {} bytes, but shape {} of {} needs {} ({} elements of {} "
        "bytes)",
        where, t.begin, t.end, t.end - t.begin, shown(shape), t.dtype_name, bytes, elements,
        info->bytes));
  }
  return t;
}

std::uint32_t bits_of(float f) {
  return std::bit_cast<std::uint32_t>(f);
}

float float_of(std::uint32_t bits) {
  return std::bit_cast<float>(bits);
}

// x / 2^shift rounded to nearest, ties to even (1 <= shift <= 31).
std::uint32_t shift_round_even(std::uint32_t x, unsigned shift) {
  const std::uint32_t q = x >> shift;
  const std::uint32_t rem = x & ((std::uint32_t{1} << shift) - 1);
  const std::uint32_t half = std::uint32_t{1} << (shift - 1);
  return q + ((rem > half || (rem == half && (q & 1U) != 0)) ? 1U : 0U);
}

std::uint16_t load_u16(const unsigned char* p) {
  std::uint16_t v = 0;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

}  // namespace

const char* safetensors_name(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return "F32";
    case DType::f16:
      return "F16";
    case DType::bf16:
      return "BF16";
    case DType::other:
      break;
  }
  return "other";
}

std::size_t dtype_bytes(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return 4;
    case DType::f16:
    case DType::bf16:
      return 2;
    case DType::other:
      break;
  }
  return 0;
}

float f16_to_f32(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000U) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1FU;
  const std::uint32_t mantissa = h & 0x3FFU;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exact in float32.
    return float_of(sign | bits_of(static_cast<float>(mantissa) * 0x1p-24F));
  }
  if (exponent == 31) {
    // Infinity, or NaN with its payload, made quiet as hardware conversions do.
    return float_of(sign | 0x7F800000U | (mantissa << 13) | (mantissa != 0 ? 0x400000U : 0U));
  }
  return float_of(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

float bf16_to_f32(std::uint16_t b) {
  return float_of(static_cast<std::uint32_t>(b) << 16);
}

std::uint16_t f32_to_f16(float f) {
  const std::uint32_t x = bits_of(f);
  const auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000U);
  const std::uint32_t ax = x & 0x7FFFFFFFU;
  if (ax > 0x7F800000U) {
    return static_cast<std::uint16_t>(sign | 0x7E00U | ((ax >> 13) & 0x3FFU));  // quiet NaN
  }
  if (ax >= 0x477FF000U) {
    // 65520 and above round to infinity (65520 is the tie between 65504, the
    // largest binary16, and 65536, which would be even).
    return static_cast<std::uint16_t>(sign | 0x7C00U);
  }
  if (ax >= 0x38800000U) {
    // Normal in binary16: rebias the exponent (127 -> 15) and round off 13 bits.
    return static_cast<std::uint16_t>(sign | shift_round_even(ax - (112U << 23), 13));
  }
  // Subnormal or zero in binary16: units of 2^-24. The float32's value is
  // m * 2^(e - 150) with m its 24-bit significand, that is m / 2^(126 - e)
  // units; below 2^-25 (shift > 24) everything rounds to zero.
  const std::uint32_t e = ax >> 23;
  const unsigned shift = 126U - e;
  if (shift > 24) {
    return sign;
  }
  const std::uint32_t m = (ax & 0x7FFFFFU) | 0x800000U;
  return static_cast<std::uint16_t>(sign | shift_round_even(m, shift));
}

std::uint16_t f32_to_bf16(float f) {
  const std::uint32_t x = bits_of(f);
  if ((x & 0x7FFFFFFFU) > 0x7F800000U) {
    return static_cast<std::uint16_t>((x >> 16) | 0x40U);  // quiet NaN, sign and high payload kept
  }
  return static_cast<std::uint16_t>(shift_round_even(x, 16));
}

void convert_to_f32(DType dtype, const unsigned char* src, std::size_t n, float* out) {
  switch (dtype) {
    case DType::f32:
      std::memcpy(out, src, n * sizeof(float));
      return;
    case DType::f16:
      for (std::size_t i = 0; i < n; ++i) {
        out[i] = f16_to_f32(load_u16(src + 2 * i));
      }
      return;
    case DType::bf16:
      for (std::size_t i = 0; i < n; ++i) {
        out[i] = bf16_to_f32(load_u16(src + 2 * i));
      }
      return;
    case DType::other:
      break;
  }
  throw InternalError("convert_to_f32 of an unsupported dtype");
}

void convert_from_f32(DType dtype, const float* in, std::size_t n, unsigned char* dst) {
  switch (dtype) {
    case DType::f32:
      std::memcpy(dst, in, n * sizeof(float));
      return;
    case DType::f16:
    case DType::bf16:
      for (std::size_t i = 0; i < n; ++i) {
        const std::uint16_t v = dtype == DType::f16 ? f32_to_f16(in[i]) : f32_to_bf16(in[i]);
        std::memcpy(dst + 2 * i, &v, sizeof(v));
      }
      return;
    case DType::other:
      break;
  }
  throw InternalError("convert_from_f32 to an unsupported dtype");
}

std::uint64_t SafetensorsTensor::elements() const {
  std::uint64_t n = 1;
  for (std::int64_t d : shape) {
    n *= static_cast<std::uint64_t>(d);
  }
  return n;
}

std::uint64_t parse_safetensors_header_length(std::string_view first_bytes, std::uint64_t file_size,
                                              const std::string& source) {
  if (file_size < 8 || first_bytes.size() < 8) {
    throw FormatError(fmt::format(
        "{}: truncated: the file is {} bytes, too short for the 8-byte safetensors header length",
        source, file_size));
  }
  std::uint64_t length = 0;
  std::memcpy(&length, first_bytes.data(), sizeof(length));
  if (length > kMaxSafetensorsHeaderBytes) {
    throw FormatError(
        fmt::format("{}: the header length is {} bytes, expected at most {} (not a safetensors "
                    "file, or a corrupt one)",
                    source, length, kMaxSafetensorsHeaderBytes));
  }
  if (length > file_size - 8) {
    throw FormatError(fmt::format(
        "{}: truncated: the header length is {} bytes, but only {} follow the 8-byte length",
        source, length, file_size - 8));
  }
  return length;
}

SafetensorsHeader parse_safetensors_header(std::string_view header_json, std::uint64_t file_size,
                                           const std::string& source) {
  if (file_size < 8 || header_json.size() > file_size - 8) {
    throw FormatError(fmt::format("{}: truncated: a header of {} bytes does not fit a file of {}",
                                  source, header_json.size(), file_size));
  }
  SafetensorsHeader header;
  header.data_offset = 8 + header_json.size();
  const std::uint64_t data_size = file_size - header.data_offset;

  json doc;
  try {
    doc = detail::parse_untrusted_json(header_json, source);
  } catch (const json::exception& e) {
    throw FormatError(fmt::format("{}: the header is not valid JSON: {}", source, e.what()));
  }
  if (!doc.is_object()) {
    throw FormatError(
        fmt::format("{}: the header is {}, expected a JSON object of tensors", source, shown(doc)));
  }
  for (const auto& [name, entry] : doc.items()) {
    if (name == "__metadata__") {
      // Free-form string pairs (the writer's framework, say); not needed.
      if (!entry.is_object()) {
        throw FormatError(
            fmt::format("{}: __metadata__ is {}, expected an object", source, shown(entry)));
      }
      continue;
    }
    header.tensors.push_back(parse_entry(name, entry, data_size, source));
  }

  // Two tensors sharing bytes would alias each other: a corrupt file.
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const SafetensorsTensor& a, const SafetensorsTensor& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  for (size_t i = 1; i < header.tensors.size(); ++i) {
    const SafetensorsTensor& a = header.tensors[i - 1];
    const SafetensorsTensor& b = header.tensors[i];
    if (b.begin < a.end) {
      throw FormatError(fmt::format("{}: tensors {} [{}, {}] and {} [{}, {}] overlap", source,
                                    a.name, a.begin, a.end, b.name, b.begin, b.end));
    }
  }
  return header;
}

SafetensorsHeader parse_safetensors(std::string_view file_bytes, const std::string& source) {
  const std::uint64_t length =
      parse_safetensors_header_length(file_bytes, file_bytes.size(), source);
  return parse_safetensors_header(file_bytes.substr(8, static_cast<std::size_t>(length)),
                                  file_bytes.size(), source);
}

MappedFile::MappedFile(const std::string& path) : path_(path) {
  // An owned descriptor, closed on every path out; the mapping outlives it.
  struct Fd {
    int fd;
    ~Fd() {
      if (fd >= 0) {
        ::close(fd);
      }
    }
  } file{::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK)};  // a FIFO must not block
  if (file.fd < 0) {
    throw FormatError(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  }
  struct stat info {};
  if (::fstat(file.fd, &info) != 0) {
    throw FormatError(fmt::format("{}: cannot stat: {}", path, std::strerror(errno)));
  }
  if (!S_ISREG(info.st_mode)) {
    throw FormatError(fmt::format("{}: not a regular file", path));
  }
  size_ = static_cast<std::uint64_t>(info.st_size);
  if (size_ == 0) {
    return;  // mmap refuses an empty length; an empty view is what the file holds
  }
  void* p = ::mmap(nullptr, static_cast<size_t>(size_), PROT_READ, MAP_PRIVATE, file.fd, 0);
  if (p == MAP_FAILED) {
    throw FormatError(
        fmt::format("{}: cannot map {} bytes: {}", path, size_, std::strerror(errno)));
  }
  data_ = p;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr && ::munmap(data_, static_cast<size_t>(size_)) != 0) {
    // A destructor cannot throw; the address range simply stays mapped.
    log::error("{}: munmap failed: {}", path_, std::strerror(errno));
  }
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

SafetensorsFile::SafetensorsFile(const std::string& path)
    : file_(path), header_(parse_safetensors(file_.bytes(), path)) {}

const SafetensorsTensor* SafetensorsFile::find(const std::string& name) const {
  for (const SafetensorsTensor& t : header_.tensors) {
    if (t.name == name) {
      return &t;
    }
  }
  return nullptr;
}

const unsigned char* SafetensorsFile::data(const SafetensorsTensor& tensor) const {
  // The header checked begin <= end <= the data section's size.
  return reinterpret_cast<const unsigned char*>(file_.bytes().data()) + header_.data_offset +
         tensor.begin;
}

void write_safetensors(const std::string& path, const std::vector<SafetensorsBlob>& tensors) {
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}};
  std::uint64_t offset = 0;
  for (const SafetensorsBlob& t : tensors) {
    std::uint64_t elements = 1;
    for (std::int64_t d : t.shape) {
      elements *= static_cast<std::uint64_t>(d);
    }
    if (t.dtype == DType::other || elements * dtype_bytes(t.dtype) != t.bytes.size()) {
      throw ConfigError(fmt::format("{}: tensor {} has {} bytes, its shape and dtype need {}", path,
                                    t.name, t.bytes.size(), elements * dtype_bytes(t.dtype)));
    }
    header[t.name] = {{"dtype", safetensors_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text = header.dump();
  text.resize((text.size() + 7) / 8 * 8, ' ');
  const std::uint64_t length = text.size();

  struct Closer {
    void operator()(std::FILE* f) const { std::fclose(f); }
  };
  std::unique_ptr<std::FILE, Closer> out(std::fopen(path.c_str(), "wb"));
  if (!out) {
    throw ConfigError(fmt::format("{}: cannot create: {}", path, std::strerror(errno)));
  }
  auto write = [&](const void* p, std::size_t n) {
    if (n > 0 && std::fwrite(p, 1, n, out.get()) != n) {
      throw ConfigError(fmt::format("{}: cannot write: {}", path, std::strerror(errno)));
    }
  };
  write(&length, sizeof(length));
  write(text.data(), text.size());
  for (const SafetensorsBlob& t : tensors) {
    write(t.bytes.data(), t.bytes.size());
  }
  if (std::fclose(out.release()) != 0) {
    throw ConfigError(fmt::format("{}: cannot write: {}", path, std::strerror(errno)));
  }
}

}  // namespace flashcomm
