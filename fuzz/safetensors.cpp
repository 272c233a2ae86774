// Fuzz target: a whole safetensors file (8-byte header length, JSON header,
// data), through parse_safetensors, the checks HfSource runs before it maps
// a tensor. Seeds: corpus/safetensors/. A header that parses must describe
// tensors that lie inside the input, with sizes that match their shapes.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "flashcomm/safetensors.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using flashcomm::fuzz::check;
  using flashcomm::fuzz::error_of;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  flashcomm::SafetensorsHeader header;
  if (error_of([&] { header = flashcomm::parse_safetensors(bytes, "input"); }).empty()) {
    for (const auto& t : header.tensors) {
      check(t.begin <= t.end, "a tensor's begin is not past its end");
      check(header.data_offset + t.end <= size, "every tensor lies inside the file");
      if (t.dtype != flashcomm::DType::other) {
        check(t.end - t.begin == t.elements() * flashcomm::dtype_bytes(t.dtype),
              "a tensor's bytes match its shape and dtype");
      }
    }
  }
  return 0;
}
