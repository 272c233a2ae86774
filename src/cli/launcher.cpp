// Self-launch through mpiexec.
//
// Root-safe: as root, OpenMPI's mpiexec refuses to start without
// --allow-run-as-root, so it is passed then. --oversubscribe lets a layout
// use more ranks than the machine has cores (slowly, but correctly).
//
// mpiexec runs as a child, not in place of this process, so that the job's
// end can be told in flashcomm's words: a rank killed without a chance to
// speak (SIGKILL, the OOM killer) is named from mpiexec's report of it, read
// from the job's stderr on its way through. The signals that stop a job are
// passed on to mpiexec, which stops the ranks; mpiexec itself gets SIGTERM
// should this process die first, so no job outlives it.
#include "cli/launcher.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "flashcomm/error.hpp"

namespace flashcomm::cli {

namespace {

// Set in the ranks we start, so that they never start ranks themselves.
constexpr const char* kLaunchedVar = "FLASHCOMM_LAUNCHED";

// The signals passed on to mpiexec.
constexpr std::array<int, 3> kForwarded = {SIGINT, SIGTERM, SIGHUP};

// After passing on a signal, how long mpiexec may take to stop the ranks
// before it is killed (its ranks then end as they lose their launcher).
constexpr auto kStopGrace = std::chrono::seconds(10);

// Shared with the signal handler.
volatile sig_atomic_t g_child = 0;
volatile sig_atomic_t g_signal = 0;

void forward_signal(int sig) {
  g_signal = sig;
  const pid_t child = g_child;
  if (child > 0) {
    kill(child, sig);
  }
}

void write_all(int fd, const char* data, size_t size) {
  while (size > 0) {
    const ssize_t n = write(fd, data, size);
    if (n > 0) {
      data += n;
      size -= static_cast<size_t>(n);
    } else if (n < 0 && errno != EINTR) {
      return;
    }
  }
}

std::string signal_name(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  const char* text = strsignal(sig);
  return fmt::format("{} (SIG{}: {})", sig, abbrev != nullptr ? abbrev : "?",
                     text != nullptr ? text : "unknown");
}

// What the job's stderr said about how it ended.
class JobLog {
 public:
  void take(const char* data, size_t size) {
    pending_.append(data, size);
    size_t start = 0;
    for (size_t nl = pending_.find('\n'); nl != std::string::npos;
         nl = pending_.find('\n', start)) {
      scan(pending_.substr(start, nl - start));
      start = nl + 1;
    }
    pending_.erase(0, start);
    if (pending_.size() > std::size_t{64} * 1024) {
      pending_.clear();  // not a line anyone reads whole
    }
  }

  bool rank_reported = false;  // a rank printed its own "flashcomm: error..."
  int failed_rank = -1;  // the rank mpiexec saw die, if it said so
  int failed_signal = 0;  // the signal that killed it; 0: it exited early

 private:
  void scan(const std::string& line) {
    if (line.find("flashcomm: error") != std::string::npos) {
      rank_reported = true;
    }
    if (failed_rank >= 0 || (line.find("process rank") == std::string::npos &&
                             line.find("Process name") == std::string::npos)) {
      return;
    }
    // OpenMPI's reports: "mpiexec noticed that process rank 2 with PID 123 on
    // node x exited on signal 9 (Killed).", "mpiexec has exited due to process
    // rank 2 with PID 123 on" (a line break, then "node x exiting
    // improperly") and, for a rank that exited with a non-zero code,
    // "  Process name: [[4711,1],2]".
    static const std::regex died(
        R"(process rank (\d+) with PID \d+ on(?: node \S+ exited on signal (\d+))?)");
    static const std::regex exited(R"(Process name: \[\[\d+,\d+\],(\d+)\])");
    std::smatch m;
    if (std::regex_search(line, m, died)) {
      failed_rank = std::stoi(m[1].str());
      failed_signal = m[2].matched ? std::stoi(m[2].str()) : 0;
    } else if (std::regex_search(line, m, exited)) {
      failed_rank = std::stoi(m[1].str());
    }
  }

  std::string pending_;
};

// Copies the job's stderr to ours until mpiexec ends; returns its wait status.
int wait_passing_stderr(pid_t child, int err_fd, JobLog& log) {
  std::array<char, 4096> buf{};
  bool open = true;
  std::optional<std::chrono::steady_clock::time_point> stop_since;
  bool killed = false;
  for (;;) {
    if (g_signal != 0 && !stop_since) {
      stop_since = std::chrono::steady_clock::now();
    }
    if (stop_since && !killed && std::chrono::steady_clock::now() - *stop_since > kStopGrace) {
      kill(child, SIGKILL);
      killed = true;
    }
    pollfd p{err_fd, POLLIN, 0};
    if (poll(&p, open ? 1 : 0, 200) > 0) {
      const ssize_t n = read(err_fd, buf.data(), buf.size());
      if (n > 0) {
        write_all(STDERR_FILENO, buf.data(), static_cast<size_t>(n));
        log.take(buf.data(), static_cast<size_t>(n));
        continue;
      }
      if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        open = false;
      }
    }
    int status = 0;
    const pid_t done = waitpid(child, &status, WNOHANG);
    if (done == child) {
      // What it wrote just before it ended; nothing waits for more.
      fcntl(err_fd, F_SETFL, O_NONBLOCK);
      for (ssize_t n = 0; open && (n = read(err_fd, buf.data(), buf.size())) > 0;) {
        write_all(STDERR_FILENO, buf.data(), static_cast<size_t>(n));
        log.take(buf.data(), static_cast<size_t>(n));
      }
      return status;
    }
    if (done < 0 && errno != EINTR) {
      throw InternalError(
          fmt::format("waitpid on mpiexec (pid {}): {}", child, std::strerror(errno)));
    }
  }
}

// The exit code of the job, with a line of our own where the ranks said
// nothing of why it failed.
int job_exit_code(int status, const JobLog& log, const std::string& launcher) {
  if (WIFSIGNALED(status)) {
    fmt::print(stderr, "flashcomm: error: {} was killed by signal {}\n", launcher,
               signal_name(WTERMSIG(status)));
    return 128 + WTERMSIG(status);
  }
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
  if (code != 0 && !log.rank_reported) {
    if (log.failed_rank >= 0 && log.failed_signal > 0) {
      fmt::print(stderr,
                 "flashcomm: error on rank {}: killed by signal {}; {} stopped the other ranks\n",
                 log.failed_rank, signal_name(log.failed_signal), launcher);
    } else if (log.failed_rank >= 0) {
      fmt::print(stderr,
                 "flashcomm: error on rank {}: it exited before the job ended; {} stopped the "
                 "other ranks\n",
                 log.failed_rank, launcher);
    } else {
      fmt::print(stderr,
                 "flashcomm: error: {} ended with exit code {} and no rank said why; see its "
                 "messages above\n",
                 launcher, code);
    }
  }
  return code;
}

}  // namespace

bool under_mpi_launcher() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", kLaunchedVar}) {
    if (std::getenv(var) != nullptr) {
      return true;
    }
  }
  return false;
}

int relaunch_under_mpiexec(int argc, char** argv, int world_size) {
  const LaunchResult result = launch_job(argc, argv, world_size, {});
  if (result.stop_signal != 0) {
    // End by the same signal, so that a shell sees how this process ended.
    std::signal(result.stop_signal, SIG_DFL);
    raise(result.stop_signal);
  }
  return result.exit_code;
}

LaunchResult launch_job(int argc, char** argv, int world_size, const LaunchOptions& options) {
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

  std::vector<std::string> args = options.wrapper;
  args.push_back(launcher);
  if (geteuid() == 0) {
    args.emplace_back("--allow-run-as-root");
  }
  args.insert(args.end(), {"--oversubscribe", "--bind-to", "none"});
  args.insert(args.end(), options.launcher_args.begin(), options.launcher_args.end());
  args.insert(args.end(), {"-n", std::to_string(world_size), self});
  for (int i = 1; i < argc; ++i) {
    args.emplace_back(argv[i]);
  }
  std::vector<char*> c_args;
  for (std::string& a : args) {
    c_args.push_back(a.data());
  }
  c_args.push_back(nullptr);
  setenv(kLaunchedVar, "1", 1);

  // 1. Start mpiexec with its stderr on a pipe to us, and a second pipe that
  //    carries errno back should exec fail. The forwarded signals stay blocked
  //    until the child's pid is known to the handler.
  std::array<int, 2> err_pipe{};
  std::array<int, 2> exec_pipe{};
  if (pipe2(err_pipe.data(), O_CLOEXEC) != 0 || pipe2(exec_pipe.data(), O_CLOEXEC) != 0) {
    throw InternalError(
        fmt::format("cannot create a pipe for {}: {}", launcher, std::strerror(errno)));
  }
  sigset_t forwarded;
  sigset_t old_mask;
  sigemptyset(&forwarded);
  for (int sig : kForwarded) {
    sigaddset(&forwarded, sig);
  }
  sigprocmask(SIG_BLOCK, &forwarded, &old_mask);
  std::fflush(nullptr);
  const pid_t parent = getpid();
  const pid_t child = fork();
  if (child == 0) {
    dup2(err_pipe[1], STDERR_FILENO);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) {
      _exit(127);  // the launcher is already gone
    }
    sigprocmask(SIG_SETMASK, &old_mask, nullptr);
    execvp(args.front().c_str(), c_args.data());
    const int err = errno;
    (void)!write(exec_pipe[1], &err, sizeof(err));
    _exit(127);
  }
  const int fork_errno = errno;
  close(err_pipe[1]);
  close(exec_pipe[1]);

  // 2. Pass on the signals, except those this process was told to ignore
  //    (nohup), which mpiexec ignores as well.
  std::array<struct sigaction, kForwarded.size()> previous{};
  if (child > 0) {
    g_child = child;
    for (size_t i = 0; i < kForwarded.size(); ++i) {
      sigaction(kForwarded[i], nullptr, &previous[i]);
      if (previous[i].sa_handler != SIG_IGN) {
        struct sigaction action {};
        action.sa_handler = forward_signal;
        sigemptyset(&action.sa_mask);
        sigaction(kForwarded[i], &action, nullptr);
      }
    }
  }
  sigprocmask(SIG_SETMASK, &old_mask, nullptr);
  const auto restore_signals = [&] {
    g_child = 0;
    for (size_t i = 0; i < kForwarded.size() && child > 0; ++i) {
      sigaction(kForwarded[i], &previous[i], nullptr);
    }
  };

  int exec_errno = child < 0 ? fork_errno : 0;
  if (child > 0) {
    ssize_t n = 0;
    do {
      n = read(exec_pipe[0], &exec_errno, sizeof(exec_errno));
    } while (n < 0 && errno == EINTR);
    if (n != static_cast<ssize_t>(sizeof(exec_errno))) {
      exec_errno = 0;  // closed by a successful exec
    }
  }
  close(exec_pipe[0]);
  if (exec_errno != 0) {
    if (child > 0) {
      while (waitpid(child, nullptr, 0) < 0 && errno == EINTR) {
      }
    }
    close(err_pipe[0]);
    restore_signals();
    const std::string hint = env_launcher != nullptr
                                 ? "check FLASHCOMM_MPIEXEC"
                                 : "install OpenMPI (openmpi-bin) or set FLASHCOMM_MPIEXEC";
    throw ConfigError(
        fmt::format("cannot start {} for {} ranks: {}; {}, or start the ranks yourself "
                    "with mpiexec -n {}",
                    launcher, world_size, std::strerror(exec_errno), hint, world_size));
  }

  // 3. Wait for the job; tell how it ended.
  JobLog log;
  const int status = wait_passing_stderr(child, err_pipe[0], log);
  close(err_pipe[0]);
  restore_signals();
  const int sig = g_signal;
  if (sig != 0) {
    fmt::print(stderr, "flashcomm: stopped by signal {}; {} stopped the ranks\n", signal_name(sig),
               launcher);
    std::fflush(stderr);
    return {128 + sig, sig};
  }
  return {job_exit_code(status, log, launcher), 0};
}

}  // namespace flashcomm::cli
