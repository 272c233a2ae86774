// How a subcommand plugs into the flashcomm command line: it adds its options
// to the app and hands back what runs it once the line is parsed.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace flashcomm::cli {

struct Command {
  CLI::App* app = nullptr;  // the subcommand, to ask whether it was chosen
  std::function<int()> run;  // runs it; returns the process exit code
};

// CLI11 reads "010" as octal and "0x10" as hex; counts on our command line
// are decimal. Use as ->transform(decimal_integer()) on integer options.
CLI::Validator decimal_integer();

// argc/argv are the process's own, for commands that relaunch themselves.
Command add_run_command(CLI::App& app, int argc, char** argv);
Command add_calibrate_command(CLI::App& app, int argc, char** argv);
Command add_bench_command(CLI::App& app, int argc, char** argv);
Command add_convert_command(CLI::App& app);

}  // namespace flashcomm::cli
