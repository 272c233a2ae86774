// `flashcomm run`: load a model, serve the prompts, print text and collectives.
#pragma once

#include "cli/options.hpp"

namespace flashcomm::cli {

// Runs the command on this rank (launching the ranks first when started by
// hand); returns the process exit code.
int run_command(const RunOptions& options, int argc, char** argv);

// The exit code that stands for an exception of the library.
int exit_code_for(const std::exception& e);

}  // namespace flashcomm::cli
