// Formatting of the run's results.
#include "cli/report.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "flashcomm/error.hpp"

namespace flashcomm::cli {

std::string comm_table(const std::vector<CommRecord>& records) {
  std::string out = fmt::format("  {:<15} {:<6} {:>7} {:>14} {:>10}\n", "op", "group", "calls",
                                "bytes/rank", "seconds");
  for (const CommRecord& r : records) {
    out += fmt::format("  {:<15} {:<6} {:>7} {:>14} {:>10.6f}\n", to_string(r.op), r.group, r.calls,
                       r.bytes_sent, r.seconds);
  }
  if (records.empty()) {
    out += "  (no collectives)\n";
  }
  return out;
}

nlohmann::json comm_json(const std::vector<CommRecord>& records) {
  nlohmann::json list = nlohmann::json::array();
  for (const CommRecord& r : records) {
    list.push_back({{"op", to_string(r.op)},
                    {"group", r.group},
                    {"calls", r.calls},
                    {"bytes_sent", r.bytes_sent},
                    {"seconds", r.seconds}});
  }
  return list;
}

void write_json(const std::string& path, const nlohmann::json& report) {
  std::ofstream file(path);
  if (!file) {
    throw ConfigError(
        fmt::format("--json {}: cannot open for writing: {}", path, std::strerror(errno)));
  }
  // Generated text may end inside a multi-byte character: such bytes are
  // written as U+FFFD rather than failing the whole report.
  file << report.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  file.close();
  if (file.fail()) {
    throw ConfigError(fmt::format("--json {}: write failed", path));
  }
}

}  // namespace flashcomm::cli
