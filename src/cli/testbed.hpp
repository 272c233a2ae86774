// `flashcomm bench --testbed shaped`: the benchmark on a scale-model cluster
// (flashcomm/testbed.hpp). The process started by hand checks the options,
// chooses the link's rate, creates the shaped namespace, runs the job's
// mpiexec inside it over TCP on its loopback only, and removes it on every
// way out; the ranks learn of their testbed from FLASHCOMM_TESTBED.
#pragma once

#include <mpi.h>

#include <CLI/CLI.hpp>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "flashcomm/cost_model.hpp"

namespace flashcomm::cli {

// As typed.
struct TestbedOptions {
  std::string mode = "none";  // none, shaped
  std::string link_rate;
  std::string link_delay;
  std::string match_profile;
};

void add_testbed_options(CLI::App& cmd, TestbedOptions& options);

// As checked.
struct TestbedPlan {
  bool shaped = false;
  double rate_bps = 0.0;  // --link-rate; 0 when --match-profile chooses it
  double delay_s = 0.0;
  std::optional<HardwareProfile> match;  // --match-profile's target
};

// ConfigError naming the value and what was expected; called before anything
// is created, so a refused option leaves nothing behind.
TestbedPlan check_testbed_options(const TestbedOptions& options, const std::vector<int>& tp_sizes);

// In the process started by hand: runs this command line's job of
// `world_size` ranks inside a shaped namespace, writes `out`/testbed.json,
// and returns the job's exit code; a job stopped by SIGINT, SIGTERM or
// SIGHUP ends this process by that signal, after the namespace is removed.
int run_in_testbed(const TestbedPlan& plan, int world_size, const std::string& out, int argc,
                   char** argv);

// In the ranks: the testbed block of the report as the launching process
// described it; null without --testbed shaped. ConfigError when the job was
// not started by flashcomm inside a shaped namespace (a user's own mpiexec).
nlohmann::json testbed_of_job(const TestbedPlan& plan);

// The shaped link's collectives (of a link of `rate_bps`) for each TP size
// above 1 of `tp_sizes`, with every rank of that size sending
// (testbed::calibrate_busy_link); for TP 1, the largest size's. Collective
// over `world`.
std::map<int, HardwareProfile> calibrate_testbed_link(MPI_Comm world,
                                                      const std::vector<int>& tp_sizes,
                                                      double rate_bps);

// Every fit of the shaped link by TP size, for the report.
nlohmann::json link_fits_json(const std::map<int, HardwareProfile>& profiles);

// The testbed block of the report, for a person: the link, the match, and
// the AllReduce fits beside the rate each rank could get.
void print_testbed(const nlohmann::json& testbed);

}  // namespace flashcomm::cli
