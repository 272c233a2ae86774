// What rank 0 prints and writes: the collectives table and the JSON report.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "flashcomm/comm.hpp"

namespace flashcomm::cli {

// Plain-text table: op, group, calls, bytes sent per rank, seconds.
std::string comm_table(const std::vector<CommRecord>& records);

// [{"op","group","calls","bytes_sent","seconds"}, ...]
nlohmann::json comm_json(const std::vector<CommRecord>& records);

// Writes `report` to `path`; throws ConfigError naming the path on failure.
void write_json(const std::string& path, const nlohmann::json& report);

}  // namespace flashcomm::cli
