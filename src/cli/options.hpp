// Options of `flashcomm run`, as parsed from the command line.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "flashcomm/layout.hpp"

namespace flashcomm::cli {

struct RunOptions {
  std::string model;
  std::string tokenizer;  // empty: none (then the prompts must be token ids)
  std::vector<std::string> prompts;  // one per request; none means BOS alone
  std::vector<std::string> prompt_tokens;  // one per request: ids "1,2,3", taken verbatim
  int steps = 256;
  ParallelConfig parallel;
  // "manual": the flags set the scheme; "auto": each prefill pass runs the
  // scheme the cost model predicts fastest on `hardware` for its length.
  std::string flashcomm = "manual";
  std::string hardware = "cpu-openmpi";  // auto's profile: a built-in name or a JSON file
  // auto: GiB per rank for FlashComm2's extra o_proj and down_proj weights; none: unlimited
  std::optional<double> memory_budget_gib;
  bool check = false;
  std::string json_path;
  std::string log_level;
};

// Process exit codes; the library throws, only the CLI maps to these.
enum ExitCode : int {
  kExitOk = 0,
  kExitRuntime = 1,  // a failure while running (a bug or a failed library call)
  kExitUsage = 2,  // bad flags or a configuration that cannot run
  kExitFormat = 3,  // a file that does not hold what it claims
  kExitComm = 4,  // a communication library failure
};

}  // namespace flashcomm::cli
