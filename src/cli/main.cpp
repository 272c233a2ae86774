// The flashcomm command line. Exit codes: 0 success, 1 runtime failure,
// 2 bad flags or configuration, 3 bad file, 4 communication failure.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <vector>

#include "cli/command.hpp"
#include "cli/options.hpp"
#include "cli/plan_command.hpp"
#include "cli/run_command.hpp"

namespace {

// Flags are parsed before MPI starts; when the ranks were started by
// mpiexec, only the first one prints a parse error (every rank still exits
// with its code), so the message appears once.
bool first_rank_or_alone() {
  for (const char* var : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"}) {
    if (const char* value = std::getenv(var); value != nullptr) {
      return std::atoi(value) == 0;
    }
  }
  return true;
}

int flashcomm_main(int argc, char** argv) {
  CLI::App app{"flashcomm: communication-efficient tensor-parallel LLM inference"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "flashcomm 0.1.0");
  const std::vector<flashcomm::cli::Command> commands = {
      flashcomm::cli::add_run_command(app, argc, argv),
      flashcomm::cli::add_calibrate_command(app, argc, argv),
      flashcomm::cli::add_bench_command(app, argc, argv),
      flashcomm::cli::add_plan_command(app),
      flashcomm::cli::add_convert_command(app),
  };

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::ostringstream out;
    std::ostringstream err;
    const int code = app.exit(e, out, err);
    if (first_rank_or_alone()) {
      std::fputs(out.str().c_str(), stdout);
      std::fputs(err.str().c_str(), stderr);
    }
    return code == 0 ? 0 : flashcomm::cli::kExitUsage;
  }
  for (const flashcomm::cli::Command& command : commands) {
    if (command.app->parsed()) {
      return command.run();
    }
  }
  return flashcomm::cli::kExitUsage;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return flashcomm_main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "flashcomm: error: %s\n", e.what());
    return flashcomm::cli::exit_code_for(e);
  } catch (...) {
    std::fprintf(stderr, "flashcomm: error: unknown exception\n");
    return flashcomm::cli::kExitRuntime;
  }
}
