#include "flashcomm/log.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdlib>

#include "flashcomm/error.hpp"

namespace flashcomm::log {

void init(int world_rank, const std::string& level) {
  std::string name = level;
  std::string source = "--log-level";
  if (name.empty()) {
    const char* env = std::getenv("FLASHCOMM_LOG_LEVEL");
    name = env != nullptr && *env != '\0' ? env : "warn";
    source = "FLASHCOMM_LOG_LEVEL";
  }
  const spdlog::level::level_enum parsed = spdlog::level::from_str(name);
  // from_str maps every unknown name to "off"; only the word itself means off.
  if (parsed == spdlog::level::off && name != "off") {
    throw ConfigError(
        fmt::format("{} '{}' is not one of trace, debug, info, warn, error, off", source, name));
  }
  // Logs go to stderr so that stdout carries only the generated text and tables.
  const std::string logger_name = fmt::format("rank{}", world_rank);
  spdlog::drop(logger_name);
  auto logger = spdlog::stderr_color_mt(logger_name);
  logger->set_pattern(fmt::format("[%H:%M:%S.%e] [rank {}] [%l] %v", world_rank));
  logger->set_level(parsed);
  spdlog::set_default_logger(logger);
}

}  // namespace flashcomm::log
