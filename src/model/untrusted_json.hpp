// JSON read from files (config.json, safetensors headers, shard indexes),
// parsed with a nesting limit. nlohmann's parser copes with any depth, but
// dumping a value (for a message) and destroying one recurse, so a few
// hundred kilobytes of brackets would overflow the stack; no real file nests
// more than a few levels.
#pragma once

#include <fmt/format.h>

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "flashcomm/error.hpp"

namespace flashcomm::detail {

inline constexpr int kMaxJsonDepth = 64;

// Throws nlohmann's parse_error for malformed text (callers add the file's
// name) and FormatError naming `source` for text nested too deep.
inline nlohmann::json parse_untrusted_json(std::string_view text, const std::string& source) {
  return nlohmann::json::parse(
      text.begin(), text.end(),
      [&source](int depth, nlohmann::json::parse_event_t /*event*/, nlohmann::json& /*value*/) {
        if (depth > kMaxJsonDepth) {
          throw FormatError(
              fmt::format("{}: the JSON nests deeper than {} levels", source, kMaxJsonDepth));
        }
        return true;
      });
}

}  // namespace flashcomm::detail
