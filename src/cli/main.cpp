// The flashcomm command line. Exit codes: 0 success, 1 runtime failure,
// 2 bad flags or configuration, 3 bad file, 4 communication failure.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "cli/options.hpp"
#include "cli/run_command.hpp"

namespace {

void add_run_options(CLI::App& run, flashcomm::cli::RunOptions& o) {
  // A repeated option takes its last value, so wrappers can append overrides.
  run.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  run.add_option("--model", o.model, "llama2.c checkpoint (legacy or version-1 layout)")
      ->required();
  run.add_option("--tokenizer", o.tokenizer, "llama2.c tokenizer file")->required();
  // One value per --prompt, so a stray word is an error, not a second request.
  run.add_option("--prompt", o.prompts,
                 "prompt text; repeat for several requests (spread over DP replicas); "
                 "empty or absent: start from BOS alone")
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  run.add_option("--steps", o.steps, "new tokens to generate (stops at BOS or the context end)")
      ->capture_default_str();
  run.add_option("--tp", o.parallel.tp_size, "tensor-parallel size")->capture_default_str();
  run.add_option("--dp", o.parallel.dp_size, "data-parallel size (replicas)")
      ->capture_default_str();
  run.add_flag("--flashcomm1", o.parallel.flashcomm1,
               "sequence parallelism in prefill: ReduceScatter/AllGather around sharded norms");
  run.add_option("--flashcomm2", o.parallel.flashcomm2,
                 "FlashComm2 o_proj in prefill with o_proj TP size K (0 = off; K < TP, K | TP)")
      ->capture_default_str();
  run.add_flag("--check", o.check,
               "compare the last position's logits with an unsharded forward pass");
  run.add_option("--json", o.json_path, "write a JSON report to this file");
  run.add_option("--log-level", o.log_level,
                 "trace, debug, info, warn, error or off (default: $FLASHCOMM_LOG_LEVEL or warn)");
}

int flashcomm_main(int argc, char** argv) {
  CLI::App app{"flashcomm: communication-efficient tensor-parallel LLM inference"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "flashcomm 0.1.0");
  flashcomm::cli::RunOptions run_options;
  CLI::App* run = app.add_subcommand("run", "generate text with a model over DP x TP ranks");
  add_run_options(*run, run_options);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : flashcomm::cli::kExitUsage;
  }
  return flashcomm::cli::run_command(run_options, argc, argv);
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
