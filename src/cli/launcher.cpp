// Self-launch through mpiexec.
//
// Root-safe: as root, OpenMPI's mpiexec refuses to start without
// --allow-run-as-root, so it is passed then. --oversubscribe lets a layout
// use more ranks than the machine has cores (slowly, but correctly).
#include "cli/launcher.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "flashcomm/error.hpp"

namespace flashcomm::cli {

namespace {
// Set in the ranks we start, so that they never start ranks themselves.
constexpr const char* kLaunchedVar = "FLASHCOMM_LAUNCHED";
}  // namespace

bool under_mpi_launcher() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", kLaunchedVar}) {
    if (std::getenv(var) != nullptr) {
      return true;
    }
  }
  return false;
}

void relaunch_under_mpiexec(int argc, char** argv, int world_size) {
  const char* env_launcher = std::getenv("FLASHCOMM_MPIEXEC");
  if (env_launcher != nullptr && *env_launcher == '\0') {
    env_launcher = nullptr;  // set but empty: the default
  }
  const std::string launcher = env_launcher != nullptr ? env_launcher : "mpiexec";

  // The ranks run this very binary, wherever it was started from.
  std::string self = "/proc/self/exe";
  char buf[4096] = {};
  const ssize_t len = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (len > 0) {
    self.assign(buf, static_cast<size_t>(len));
  }

  std::vector<std::string> args = {launcher};
  if (geteuid() == 0) {
    args.emplace_back("--allow-run-as-root");
  }
  args.insert(args.end(),
              {"--oversubscribe", "--bind-to", "none", "-n", std::to_string(world_size), self});
  for (int i = 1; i < argc; ++i) {
    args.emplace_back(argv[i]);
  }
  std::vector<char*> c_args;
  for (std::string& a : args) {
    c_args.push_back(a.data());
  }
  c_args.push_back(nullptr);

  setenv(kLaunchedVar, "1", 1);
  execvp(launcher.c_str(), c_args.data());
  const std::string hint = env_launcher != nullptr
                               ? "check FLASHCOMM_MPIEXEC"
                               : "install OpenMPI (openmpi-bin) or set FLASHCOMM_MPIEXEC";
  throw ConfigError(
      fmt::format("cannot start {} for {} ranks: {}; {}, or start the ranks yourself "
                  "with mpiexec -n {}",
                  launcher, world_size, std::strerror(errno), hint, world_size));
}

}  // namespace flashcomm::cli
