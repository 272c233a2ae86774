// Levelled logging with the rank in every line.
//
// The level is set once per process, from `--log-level` or, when that flag is
// absent, from the FLASHCOMM_LOG_LEVEL environment variable (trace, debug,
// info, warn, error, off; default warn). Summaries meant for a person are
// printed by rank 0 only, with fmt::print, not through the log.
#pragma once

#include <spdlog/spdlog.h>

#include <string>

namespace flashcomm::log {

// Installs the process-wide logger; lines read "[time] [rank R] [level] text".
// `level` empty means: take FLASHCOMM_LOG_LEVEL, else "warn".
// Throws ConfigError for a level name it does not know.
void init(int world_rank, const std::string& level);

template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
  spdlog::debug(f, std::forward<Args>(args)...);
}
template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
  spdlog::info(f, std::forward<Args>(args)...);
}
template <typename... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) {
  spdlog::warn(f, std::forward<Args>(args)...);
}
template <typename... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
  spdlog::error(f, std::forward<Args>(args)...);
}

}  // namespace flashcomm::log
