// Fuzz target: the text of a Hugging Face config.json, through
// parse_hf_config. Seeds: corpus/hf_config/ (the configs the writer gives
// stories260K as llama, and Qwen2/Qwen3-style models). A config that parses
// must describe a model that check_config accepts.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "flashcomm/hf.hpp"
#include "flashcomm/model.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using flashcomm::fuzz::check;
  using flashcomm::fuzz::error_of;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  flashcomm::HfConfig config;
  if (error_of([&] { config = flashcomm::parse_hf_config(text, "input"); }).empty()) {
    check(error_of([&] { flashcomm::check_config(config.model, "input"); }).empty(),
          "a parsed config is a valid model configuration");
  }
  return 0;
}
