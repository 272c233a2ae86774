// `flashcomm plan`: predict the prefill time of every scheme for a model on a
// described piece of hardware and recommend one. One process, no MPI.
#pragma once

#include <CLI/CLI.hpp>

#include "cli/command.hpp"

namespace flashcomm::cli {

Command add_plan_command(CLI::App& app);

}  // namespace flashcomm::cli
