#include "cli/fault.hpp"

#include <mpi.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <optional>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "flashcomm/error.hpp"
#include "flashcomm/log.hpp"

namespace flashcomm::cli {

namespace {

constexpr const char* kVariable = "FLASHCOMM_FAULT";
constexpr const char* kActions = "kill, segv, abort, exit or throw";

std::optional<Fault>& armed() {
  static std::optional<Fault> fault;
  return fault;
}

// A decimal count without sign: "007" is 7; anything else is nullopt.
std::optional<int> decimal(std::string_view text) {
  if (text.empty() || text.size() > 9 ||
      text.find_first_not_of("0123456789") != std::string::npos) {
    return std::nullopt;
  }
  return std::stoi(std::string(text));
}

std::string point_list(const std::vector<std::string>& points) {
  std::vector<std::string> shown;
  for (const std::string& p : points) {
    shown.push_back(p == "decode" ? "decode:N" : p);
  }
  return fmt::format("{}", fmt::join(shown, ", "));
}

}  // namespace

Fault parse_fault(const std::string& text, int world_size, const std::vector<std::string>& points) {
  const auto fail = [&](const std::string& why) {
    return ConfigError(fmt::format(
        "{} '{}': {}; expected rank=R,at=POINT,action=ACTION with R below {}, POINT one of {} "
        "and ACTION one of {}",
        kVariable, text, why, world_size, point_list(points), kActions));
  };
  std::optional<int> rank;
  std::optional<std::string> at;
  std::optional<std::string> action;
  std::string_view rest = text;
  while (!rest.empty()) {
    const size_t comma = rest.find(',');
    const std::string_view item = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    const size_t eq = item.find('=');
    if (eq == std::string_view::npos) {
      throw fail(fmt::format("'{}' is not key=value", item));
    }
    const std::string key(item.substr(0, eq));
    const std::string value(item.substr(eq + 1));
    std::optional<std::string>* slot = key == "at" ? &at : key == "action" ? &action : nullptr;
    if (key == "rank") {
      if (rank) {
        throw fail("rank is given twice");
      }
      rank = decimal(value);
      if (!rank) {
        throw fail(fmt::format("rank '{}' is not a decimal number", value));
      }
    } else if (slot != nullptr) {
      if (*slot) {
        throw fail(fmt::format("{} is given twice", key));
      }
      *slot = value;
    } else {
      throw fail(fmt::format("unknown key '{}'", key));
    }
  }
  if (!rank || !at || !action) {
    throw fail(fmt::format("{} is missing", !rank ? "rank" : !at ? "at" : "action"));
  }

  Fault f;
  f.rank = *rank;
  if (f.rank >= world_size) {
    throw fail(fmt::format("rank {} is not a rank of this {}-rank job", f.rank, world_size));
  }
  const size_t colon = at->find(':');
  f.point = at->substr(0, colon);
  const bool known = std::find(points.begin(), points.end(), f.point) != points.end();
  if (!known || (f.point == "decode") != (colon != std::string::npos)) {
    throw fail(fmt::format("at '{}' is not a fault point of this command", *at));
  }
  if (f.point == "decode") {
    const std::optional<int> step = decimal(std::string_view(*at).substr(colon + 1));
    if (!step || *step < 1) {
      throw fail(fmt::format("at '{}': the decode step must be a decimal number from 1", *at));
    }
    f.step = *step;
  }
  if (*action == "kill") {
    f.action = FaultAction::kill;
  } else if (*action == "segv") {
    f.action = FaultAction::segv;
  } else if (*action == "abort") {
    f.action = FaultAction::abort;
  } else if (*action == "exit") {
    f.action = FaultAction::exit;
  } else if (*action == "throw") {
    f.action = FaultAction::throw_error;
  } else {
    throw fail(fmt::format("action '{}' is unknown", *action));
  }
  return f;
}

void arm_fault_from_environment(int world_size, const std::vector<std::string>& points) {
  const char* value = std::getenv(kVariable);
  if (value == nullptr || *value == '\0') {
    return;
  }
  armed() = parse_fault(value, world_size, points);
}

void fault_point(std::string_view point, int step) {
  std::optional<Fault>& fault = armed();
  if (!fault || fault->point != point || fault->step != step) {
    return;
  }
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != fault->rank) {
    return;
  }
  const FaultAction action = fault->action;
  const std::string where = step > 0 ? fmt::format("{}:{}", point, step) : std::string(point);
  fault.reset();  // once
  log::warn("{}: injecting a fault at {}", kVariable, where);
  switch (action) {
    case FaultAction::kill:
      std::raise(SIGKILL);
      break;
    case FaultAction::segv:
      std::raise(SIGSEGV);
      break;
    case FaultAction::abort:
      std::abort();
    case FaultAction::exit:
      std::exit(1);
    case FaultAction::throw_error:
      throw InternalError(
          fmt::format("fault injected by {} on rank {} at {}", kVariable, rank, where));
  }
}

}  // namespace flashcomm::cli
