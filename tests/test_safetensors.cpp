// Tests of the safetensors layer: float16/bfloat16 conversions against
// independent references, header validation (every check with a file that
// breaks it), the mapped reader and the writer.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "flashcomm/error.hpp"
#include "flashcomm/safetensors.hpp"
#include "test_support.hpp"

namespace flashcomm {
namespace {

std::uint32_t bits(float f) {
  return std::bit_cast<std::uint32_t>(f);
}

// --- conversions -----------------------------------------------------------

// binary16's value from its definition, in double.
double f16_value(std::uint16_t h) {
  const int sign = (h >> 15) != 0 ? -1 : 1;
  const int exponent = (h >> 10) & 0x1F;
  const int mantissa = h & 0x3FF;
  if (exponent == 0) {
    return sign * std::ldexp(mantissa, -24);
  }
  if (exponent == 31) {
    return mantissa == 0 ? sign * std::numeric_limits<double>::infinity()
                         : std::numeric_limits<double>::quiet_NaN();
  }
  return sign * std::ldexp(1024 + mantissa, exponent - 25);
}

TEST(Conversions, EveryF16ValueWidensExactly) {
  for (std::uint32_t h = 0; h <= 0xFFFF; ++h) {
    const auto h16 = static_cast<std::uint16_t>(h);
    const float got = f16_to_f32(h16);
    const double want = f16_value(h16);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << std::hex << h;
      EXPECT_EQ(std::signbit(got), (h & 0x8000U) != 0) << std::hex << h;
    } else {
      EXPECT_EQ(static_cast<double>(got), want) << std::hex << h;
      EXPECT_EQ(std::signbit(got), (h & 0x8000U) != 0) << std::hex << h;
    }
#ifdef __FLT16_MANT_DIG__  // GCC has _Float16 here; clang 14 (the sanitizer build) does not
    // The compiler's own half type agrees bit for bit (NaN payloads included).
    _Float16 native;
    std::memcpy(&native, &h16, sizeof(native));
    EXPECT_EQ(bits(got), bits(static_cast<float>(native))) << std::hex << h;
#endif
  }
}

TEST(Conversions, F32ToF16RoundsToNearestEven) {
  // Every binary16 value comes back; the midpoint between two neighbours goes
  // to the even one, a hair either side to the nearer one.
  for (std::uint32_t h = 0; h < 0x7C00; ++h) {
    const auto h16 = static_cast<std::uint16_t>(h);
    const float f = f16_to_f32(h16);
    ASSERT_EQ(f32_to_f16(f), h16) << std::hex << h;
    ASSERT_EQ(f32_to_f16(-f), h16 | 0x8000U) << std::hex << h;
    if (h + 1 < 0x7C00) {
      const double mid = (f16_value(h16) + f16_value(static_cast<std::uint16_t>(h + 1))) / 2;
      const auto mid_f = static_cast<float>(mid);  // exact: binary16 midpoints fit float32
      ASSERT_EQ(static_cast<double>(mid_f), mid);
      const std::uint16_t even = (h % 2 == 0) ? h16 : static_cast<std::uint16_t>(h + 1);
      EXPECT_EQ(f32_to_f16(mid_f), even) << std::hex << h;
      EXPECT_EQ(f32_to_f16(std::nextafter(mid_f, 0.0F)), h16) << std::hex << h;
      EXPECT_EQ(f32_to_f16(std::nextafter(mid_f, 1e9F)), h + 1) << std::hex << h;
    }
  }
  EXPECT_EQ(f32_to_f16(65504.0F), 0x7BFF);
  EXPECT_EQ(f32_to_f16(std::nextafter(65520.0F, 0.0F)), 0x7BFF);
  EXPECT_EQ(f32_to_f16(65520.0F), 0x7C00) << "the tie above the largest half rounds to infinity";
  EXPECT_EQ(f32_to_f16(1e30F), 0x7C00);
  EXPECT_EQ(f32_to_f16(-std::numeric_limits<float>::infinity()), 0xFC00);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0F, -25)), 0) << "half the smallest subnormal: ties to 0";
  EXPECT_EQ(f32_to_f16(std::nextafter(std::ldexp(1.0F, -25), 1.0F)), 1);
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::denorm_min()), 0);
  EXPECT_EQ(f32_to_f16(-0.0F), 0x8000);
  const std::uint16_t nan = f32_to_f16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7C00, 0x7C00);
  EXPECT_NE(nan & 0x3FF, 0) << "NaN must not become infinity";
  // A signalling NaN whose payload lies in the low bits stays a NaN.
  EXPECT_NE(f32_to_f16(std::bit_cast<float>(0x7F800001U)) & 0x3FF, 0);
}

TEST(Conversions, F32ToF16AgreesWithTheCompilerOnASweep) {
#ifndef __FLT16_MANT_DIG__
  GTEST_SKIP() << "this compiler has no _Float16 (the GCC build runs this test)";
#else
  // Every 251st float32 bit pattern, both signs, NaNs aside.
  for (std::uint64_t x = 0; x <= 0xFFFFFFFFULL; x += 251) {
    const float f = std::bit_cast<float>(static_cast<std::uint32_t>(x));
    if (std::isnan(f)) {
      continue;
    }
    const auto native = static_cast<_Float16>(f);
    std::uint16_t want = 0;
    std::memcpy(&want, &native, sizeof(want));
    ASSERT_EQ(f32_to_f16(f), want) << std::hex << x;
  }
#endif
}

TEST(Conversions, BF16IsTheTopHalfRoundedToNearestEven) {
  for (std::uint64_t x = 0; x <= 0xFFFFFFFFULL; x += 97) {
    const auto u = static_cast<std::uint32_t>(x);
    const float f = std::bit_cast<float>(u);
    const std::uint16_t got = f32_to_bf16(f);
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(bf16_to_f32(got))) << std::hex << x;
      ASSERT_EQ(got >> 15, u >> 31) << std::hex << x;
      continue;
    }
    // The nearer of the two bfloat16 values around f; the even one on a tie.
    const auto down = static_cast<std::uint16_t>(u >> 16);
    const auto up = static_cast<std::uint16_t>(down + 1);
    const double d_down = std::fabs(static_cast<double>(bf16_to_f32(down)) - f);
    // Rounding past the largest finite value gives infinity, which stands for
    // 2^128 in the comparison.
    const double up_value = (up & 0x7FFFU) == 0x7F80U ? std::copysign(std::ldexp(1.0, 128), f)
                                                      : static_cast<double>(bf16_to_f32(up));
    const double d_up = std::fabs(up_value - f);
    const std::uint16_t want =
        (u & 0xFFFFU) == 0
            ? down
            : (d_down < d_up ? down : (d_up < d_down ? up : (down % 2 == 0 ? down : up)));
    ASSERT_EQ(got, want) << std::hex << x;
  }
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3F808000U)), 0x3F80) << "tie to even (down)";
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3F818000U)), 0x3F82) << "tie to even (up)";
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7F80) << "overflow: infinity";
  EXPECT_EQ(bits(bf16_to_f32(0x3F80)), bits(1.0F));
  // A NaN whose payload is only in the low 16 bits must not become infinity.
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::bit_cast<float>(0x7F800001U)))));
}

TEST(Conversions, BlocksOfEachDTypeAtAnyAlignment) {
  const std::vector<float> values = {1.0F, -2.5F, 0.333F, 1e-3F, 65504.0F, -0.0F};
  for (DType d : {DType::f32, DType::f16, DType::bf16}) {
    std::vector<unsigned char> buffer(values.size() * dtype_bytes(d) + 1);
    convert_from_f32(d, values.data(), values.size(), buffer.data() + 1);  // unaligned
    std::vector<float> back(values.size());
    convert_to_f32(d, buffer.data() + 1, values.size(), back.data());
    for (size_t i = 0; i < values.size(); ++i) {
      const float want = d == DType::f32   ? values[i]
                         : d == DType::f16 ? f16_to_f32(f32_to_f16(values[i]))
                                           : bf16_to_f32(f32_to_bf16(values[i]));
      EXPECT_EQ(bits(back[i]), bits(want)) << safetensors_name(d) << " " << i;
    }
  }
}

// --- header validation -----------------------------------------------------

std::string file_of(const std::string& header, size_t data_bytes) {
  std::string file(8, '\0');
  const std::uint64_t length = header.size();
  std::memcpy(file.data(), &length, sizeof(length));
  return file + header + std::string(data_bytes, '\x01');
}

// The message of the FormatError that parsing `file` throws.
std::string error_of(const std::string& file) {
  try {
    parse_safetensors(file, "t.safetensors");
  } catch (const FormatError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected FormatError, got: " << e.what();
    return {};
  }
  ADD_FAILURE() << "expected FormatError, nothing was thrown";
  return {};
}

// Parsing `file` throws a FormatError whose message holds every one of `parts`.
void expect_refused(const std::string& file, std::initializer_list<const char*> parts) {
  const std::string message = error_of(file);
  for (const char* part : parts) {
    EXPECT_NE(message.find(part), std::string::npos) << part << " not in: " << message;
  }
}

TEST(SafetensorsHeader, AValidHeaderIsReadInOffsetOrder) {
  const std::string header = R"({"__metadata__":{"format":"pt"},)"
                             R"("b":{"dtype":"BF16","shape":[2,3],"data_offsets":[16,28]},)"
                             R"("a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                             R"("s":{"dtype":"F16","shape":[],"data_offsets":[28,30]},)"
                             R"("e":{"dtype":"I64","shape":[0,5],"data_offsets":[30,30]}})";
  const SafetensorsHeader h = parse_safetensors(file_of(header, 30), "t");
  ASSERT_EQ(h.tensors.size(), 4U);
  EXPECT_EQ(h.data_offset, 8 + header.size());
  EXPECT_EQ(h.tensors[0].name, "a");
  EXPECT_EQ(h.tensors[0].dtype, DType::f32);
  EXPECT_EQ(h.tensors[1].name, "b");
  EXPECT_EQ(h.tensors[1].dtype, DType::bf16);
  EXPECT_EQ(h.tensors[1].shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(h.tensors[1].elements(), 6U);
  EXPECT_EQ(h.tensors[2].elements(), 1U) << "a scalar";
  EXPECT_EQ(h.tensors[3].dtype, DType::other);
  EXPECT_EQ(h.tensors[3].dtype_name, "I64");
  // Trailing spaces pad a header; extra bytes after the data are tolerated.
  EXPECT_EQ(parse_safetensors(file_of(header + "    ", 40), "t").tensors.size(), 4U);
}

TEST(SafetensorsHeader, TheLengthMustFitTheFile) {
  expect_refused(std::string("\x02\0\0", 3), {"t.safetensors", "truncated", "3 bytes"});
  expect_refused(file_of("{}", 0).substr(0, 9), {"header length is 2 bytes", "only 1 follow"});
  std::string huge = file_of("{}", 0);
  const std::uint64_t length = (std::uint64_t{100} << 20) + 1;
  std::memcpy(huge.data(), &length, sizeof(length));
  expect_refused(huge, {"header length is 104857601 bytes", "at most 104857600"});
  std::string absurd = file_of("{}", 0);
  const std::uint64_t max = UINT64_MAX;
  std::memcpy(absurd.data(), &max, sizeof(max));
  expect_refused(absurd, {"header length is 18446744073709551615"});
  // The header function checks the length against the file on its own too.
  EXPECT_THROW(parse_safetensors_header("{}", 9, "t"), FormatError);
}

TEST(SafetensorsHeader, BadJsonAndBadStructure) {
  expect_refused(file_of("{\"a\":", 0), {"not valid JSON"});
  expect_refused(file_of("\xff\xfe", 0), {"not valid JSON"});
  expect_refused(file_of("[1,2]", 0), {"expected a JSON object of tensors"});
  expect_refused(file_of(R"({"__metadata__":3})", 0), {"__metadata__ is 3", "expected an object"});
  expect_refused(file_of(R"({"w":5})", 0), {"tensor w is 5", "expected an object"});
  expect_refused(file_of(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", 4),
                 {"tensor w", "no \"dtype\""});
  expect_refused(file_of(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", 4), {"no \"shape\""});
  expect_refused(file_of(R"({"w":{"dtype":"F32","shape":[1]}})", 4), {"no \"data_offsets\""});
}

TEST(SafetensorsHeader, DTypesAndShapes) {
  auto one = [](const std::string& dtype, const std::string& shape, const std::string& offsets) {
    return file_of(R"({"w":{"dtype":)" + dtype + R"(,"shape":)" + shape + R"(,"data_offsets":)" +
                       offsets + "}}",
                   64);
  };
  expect_refused(one("7", "[1]", "[0,4]"), {"tensor w: dtype is 7", "expected a string"});
  expect_refused(one("\"F31\"", "[1]", "[0,4]"), {"dtype \"F31\" is not one of", "BF16"});
  expect_refused(one("\"F32\"", "{}", "[0,4]"), {"shape is {}", "array of integers"});
  expect_refused(one("\"F32\"", "[-1]", "[0,4]"), {"shape[0] is -1", "non-negative integer"});
  expect_refused(one("\"F32\"", "[1.5]", "[0,4]"), {"shape[0] is 1.5"});
  expect_refused(one("\"F32\"", "[\"2\"]", "[0,4]"), {"shape[0] is \"2\""});
  expect_refused(one("\"F32\"", "[4294967296,4294967296]", "[0,4]"), {"too many elements"});
  expect_refused(one("\"F32\"", "[18446744073709551615]", "[0,4]"), {"too many elements"});
  expect_refused(one("\"F32\"", "[1152921504606846976]", "[0,4]"), {"too many elements"});
}

TEST(SafetensorsHeader, OffsetsMustLieInTheDataAndMatchTheShape) {
  auto one = [](const std::string& offsets, size_t data) {
    return file_of(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":)" + offsets + "}}", data);
  };
  expect_refused(one("[0]", 8), {"data_offsets is [0]", "expected [begin, end]"});
  expect_refused(one("7", 8), {"data_offsets is 7"});
  expect_refused(one("[-8,0]", 8), {"data_offsets[0] is -8"});
  expect_refused(one("[0,\"8\"]", 8), {"data_offsets[1] is \"8\""});
  expect_refused(one("[8,0]", 8), {"[8, 0] end before they begin"});
  expect_refused(one("[0,8]", 7), {"past the data section of 7 bytes", "truncated"});
  expect_refused(one("[0,18446744073709551615]", 8), {"past the data section"});
  expect_refused(one("[0,12]", 12), {"hold 12 bytes", "needs 8"});
  const std::string overlap = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                              R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  expect_refused(file_of(overlap, 12), {"tensors a [0, 8] and b [4, 12] overlap"});
}

// --- files -----------------------------------------------------------------

TEST(SafetensorsFile, WrittenTensorsReadBackFromTheMapping) {
  const test::TempDir dir("st");
  SafetensorsBlob a{"alpha", DType::f32, {2, 2}, {}};
  const std::vector<float> av = {1.0F, 2.0F, 3.0F, 4.0F};
  a.bytes.resize(16);
  convert_from_f32(DType::f32, av.data(), 4, a.bytes.data());
  SafetensorsBlob b{"beta", DType::bf16, {3}, {}};
  const std::vector<float> bv = {0.5F, -1.0F, 3.0F};
  b.bytes.resize(6);
  convert_from_f32(DType::bf16, bv.data(), 3, b.bytes.data());
  write_safetensors(dir.file("m.safetensors"), {a, b});

  const SafetensorsFile f(dir.file("m.safetensors"));
  ASSERT_EQ(f.tensors().size(), 2U);
  const SafetensorsTensor* beta = f.find("beta");
  ASSERT_NE(beta, nullptr);
  EXPECT_EQ(f.find("gamma"), nullptr);
  std::vector<float> got(3);
  convert_to_f32(beta->dtype, f.data(*beta), 3, got.data());
  EXPECT_EQ(got, bv);
  // The header is padded to a multiple of 8 bytes, so the data is aligned.
  EXPECT_EQ(parse_safetensors(MappedFile(dir.file("m.safetensors")).bytes(), "m").data_offset % 8,
            0U);

  SafetensorsBlob wrong{"w", DType::f32, {3}, std::vector<unsigned char>(8)};
  EXPECT_THROW(write_safetensors(dir.file("bad.safetensors"), {wrong}), ConfigError);
}

TEST(SafetensorsFile, MissingEmptyAndTruncatedFiles) {
  const test::TempDir dir("st_bad");
  EXPECT_THROW(SafetensorsFile(dir.file("none.safetensors")), FormatError);
  EXPECT_THROW(SafetensorsFile(dir.path()), FormatError) << "a directory is not a file";
  { std::ofstream(dir.file("empty.safetensors")); }
  try {
    SafetensorsFile f(dir.file("empty.safetensors"));
    ADD_FAILURE() << "an empty file was accepted";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
  }
  // A real file cut short: the header claims data the file no longer has.
  SafetensorsBlob a{"alpha", DType::f32, {16}, std::vector<unsigned char>(64)};
  write_safetensors(dir.file("cut.safetensors"), {a});
  std::ifstream in(dir.file("cut.safetensors"), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::ofstream(dir.file("cut.safetensors"), std::ios::binary | std::ios::trunc)
      << bytes.substr(0, bytes.size() - 1);
  try {
    SafetensorsFile f(dir.file("cut.safetensors"));
    ADD_FAILURE() << "a truncated file was accepted";
  } catch (const FormatError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("cut.safetensors"), std::string::npos) << m;
    EXPECT_NE(m.find("tensor alpha"), std::string::npos) << m;
    EXPECT_NE(m.find("past the data section of 63 bytes"), std::string::npos) << m;
  }
}

}  // namespace
}  // namespace flashcomm
