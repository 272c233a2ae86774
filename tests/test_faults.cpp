// A rank that dies or fails mid-run ends the whole job: non-zero, within
// 30 seconds, with a line naming the rank, and no process of the job left
// behind. Faults come from FLASHCOMM_FAULT (src/cli/fault.hpp), from a
// SIGKILL sent to a rank from outside, and from signals sent to the launcher.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "test_support.hpp"

namespace flashcomm {
namespace {

using test::count;
using test::flashcomm;
using test::Outcome;
using test::quote;
using test::shell;

// How long a failed job may take to end, from the fault to the exit.
constexpr double kEndWithin = 30.0;

std::string stories_args() {
  return fmt::format("run --model {} --tokenizer {}", quote(test::stories_checkpoint()),
                     quote(test::stories_tokenizer()));
}

std::string mpiexec_prefix(int n) {
  return fmt::format("mpiexec {}--oversubscribe --bind-to none -n {} ",
                     geteuid() == 0 ? "--allow-run-as-root " : "", n);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Every process of a job carries a unique marker among its arguments (a
// --json or --out path in a fresh temporary directory), so that these tests
// find their own processes among whatever else the machine runs.
std::vector<std::string> processes_with(const std::string& marker) {
  const Outcome ps = shell("ps -eo pid=,stat=,args=", 30);
  std::vector<std::string> found;
  std::istringstream lines(ps.output);
  for (std::string line; std::getline(lines, line);) {
    if (line.find(marker) != std::string::npos) {
      found.push_back(line);
    }
  }
  return found;
}

// The job has ended: no rank (nor mpiexec) still runs, spinning or waiting.
void expect_no_process_left(const std::string& marker) {
  std::vector<std::string> left = processes_with(marker);
  for (int i = 0; i < 50 && !left.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // being reaped
    left = processes_with(marker);
  }
  std::string listing;
  for (const std::string& p : left) {
    listing += p + "\n";
  }
  EXPECT_TRUE(left.empty()) << "processes of the job still running:\n" << listing;
}

struct Ended {
  Outcome outcome;
  double seconds = 0.0;
};

// Runs flashcomm with `args` under FLASHCOMM_FAULT=`fault`, through `prefix`
// (empty: the self-launch); bounded, so that a hang fails as exit code 124.
Ended run_with_fault(const std::string& fault, const std::string& args,
                     const std::string& prefix = "") {
  const auto start = std::chrono::steady_clock::now();
  Ended e;
  e.outcome = shell("env FLASHCOMM_FAULT=" + quote(fault) + " " + prefix + flashcomm(args), 120);
  e.seconds = seconds_since(start);
  return e;
}

// A failed job: the exit code, the line naming the failed rank exactly once,
// the time, and nothing left running.
void expect_failed(const Ended& e, int exit_code, const std::string& line,
                   const std::string& marker) {
  EXPECT_EQ(e.outcome.exit_code, exit_code) << e.outcome.output;
  EXPECT_EQ(count(e.outcome.output, line), 1U) << "expected once: " << line << "\n"
                                               << e.outcome.output;
  EXPECT_LT(e.seconds, kEndWithin) << e.outcome.output;
  expect_no_process_left(marker);
}

// A long run (many requests) whose ranks log each request, for faults sent
// from outside while it generates.
std::string long_run_args(const test::TempDir& dir) {
  std::string args = stories_args() + " --tp 4 --steps 500 --log-level info --json " +
                     quote(dir.file("report.json"));
  for (int i = 0; i < 60; ++i) {
    args += " --prompt Lily";
  }
  return args;
}

TEST(Faults, RankKilledMidDecodeIsNamedAndEndsTheJob) {
  const test::TempDir dir("faults-kill");
  const Ended e =
      run_with_fault("rank=2,at=decode:5,action=kill",
                     stories_args() + " --tp 4 --steps 400 --json " + quote(dir.file("r.json")));
  expect_failed(e, 128 + SIGKILL, "flashcomm: error on rank 2: killed by signal 9 (SIGKILL",
                dir.path());
  EXPECT_FALSE(std::filesystem::exists(dir.file("r.json")));
}

TEST(Faults, RankKilledAtEachPointOfARun) {
  for (const char* at : {"prepare", "prefill", "decode:1"}) {
    SCOPED_TRACE(at);
    const test::TempDir dir("faults-points");
    const Ended e = run_with_fault(fmt::format("rank=3,at={},action=kill", at),
                                   stories_args() +
                                       " --dp 2 --tp 2 --prompt Lily --prompt Tom "
                                       "--steps 100 --json " +
                                       quote(dir.file("r.json")));
    expect_failed(e, 128 + SIGKILL, "flashcomm: error on rank 3: killed by signal 9", dir.path());
  }
}

TEST(Faults, RankThrowingMidDecodeAbortsTheJob) {
  const test::TempDir dir("faults-throw");
  const Ended e = run_with_fault(
      "rank=3,at=decode:5,action=throw",
      stories_args() + " --dp 2 --tp 2 --prompt Lily --prompt Tom --steps 400 --json " +
          quote(dir.file("r.json")));
  expect_failed(e, 1, "flashcomm: error on rank 3: fault injected by FLASHCOMM_FAULT", dir.path());
}

TEST(Faults, FatalSignalsAndExitNameTheRank) {
  struct Case {
    const char* action;
    int exit_code;
    const char* line;
  };
  for (const Case& c : {Case{"segv", 128 + SIGSEGV, "error on rank 1: fatal signal SIGSEGV"},
                        Case{"abort", 128 + SIGABRT, "error on rank 1: fatal signal SIGABRT"},
                        Case{"exit", 1, "error on rank 1: exit(1) before the job ended"}}) {
    SCOPED_TRACE(c.action);
    const test::TempDir dir("faults-signal");
    const Ended e =
        run_with_fault(fmt::format("rank=1,at=decode:3,action={}", c.action),
                       stories_args() + " --tp 4 --steps 400 --json " + quote(dir.file("r.json")));
    expect_failed(e, c.exit_code, c.line, dir.path());
  }
}

TEST(Faults, UnderYourOwnMpiexec) {
  const test::TempDir dir("faults-mpiexec");
  const std::string args =
      stories_args() + " --tp 4 --steps 400 --json " + quote(dir.file("r.json"));
  // A killed rank cannot speak: mpiexec's own report names it.
  const Ended killed = run_with_fault("rank=2,at=decode:5,action=kill", args, mpiexec_prefix(4));
  expect_failed(killed, 128 + SIGKILL, "process rank 2 with PID", dir.path());
  EXPECT_NE(killed.outcome.output.find("exited on signal 9"), std::string::npos)
      << killed.outcome.output;

  const Ended thrown = run_with_fault("rank=2,at=decode:5,action=throw", args, mpiexec_prefix(4));
  expect_failed(thrown, 1, "flashcomm: error on rank 2: fault injected", dir.path());
  const Ended segv = run_with_fault("rank=0,at=prefill,action=segv", args, mpiexec_prefix(4));
  expect_failed(segv, 128 + SIGSEGV, "flashcomm: error on rank 0: fatal signal SIGSEGV",
                dir.path());
}

TEST(Faults, BenchAndCalibrateEndWhenARankFails) {
  const test::TempDir dir("faults-bench");
  const Ended bench = run_with_fault(
      "rank=1,at=bench,action=throw",
      "bench --model stories260K --tokens 16 --tp 4 --warmup 0 --repeats 1 --hardware h100-sxm "
      "--out " +
          quote(dir.file("out")));
  expect_failed(bench, 1, "flashcomm: error on rank 1: fault injected", dir.path());

  const Ended calibrate = run_with_fault(
      "rank=3,at=calibrate,action=kill",
      "calibrate --ranks 4 --repeats 1 --sizes 4096,8192 --out " + quote(dir.file("p.json")));
  expect_failed(calibrate, 128 + SIGKILL, "flashcomm: error on rank 3: killed by signal 9",
                dir.path());
  EXPECT_FALSE(std::filesystem::exists(dir.file("p.json")));
}

// A job started in the background, in a process group of its own as a shell
// with job control would start it (so SIGINT keeps its default action).
class Job {
 public:
  Job(const std::string& command, const std::string& log_file) : log_file_(log_file) {
    pid_ = fork();
    if (pid_ == 0) {
      setpgid(0, 0);
      std::signal(SIGINT, SIG_DFL);
      std::signal(SIGQUIT, SIG_DFL);
      const std::string line = "exec " + command + " >" + quote(log_file) + " 2>&1";
      execl("/bin/sh", "sh", "-c", line.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    setpgid(pid_, pid_);  // also here, so that it holds before either runs on
  }
  ~Job() {
    if (!status_) {
      kill(-pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;

  pid_t pid() const { return pid_; }
  std::string log() const {
    std::ifstream f(log_file_);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
  }

  // True once `text` is in the log, false if it is not within timeout_s.
  bool wait_for_log(const std::string& text, double timeout_s) const {
    const auto start = std::chrono::steady_clock::now();
    while (seconds_since(start) < timeout_s) {
      if (log().find(text) != std::string::npos) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  // The wait status once the job ends; nullopt if it still runs after timeout_s.
  std::optional<int> wait(double timeout_s) {
    const auto start = std::chrono::steady_clock::now();
    while (!status_ && seconds_since(start) < timeout_s) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        status_ = status;
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
    return status_;
  }

 private:
  std::string log_file_;
  pid_t pid_ = -1;
  std::optional<int> status_;
};

// The pid of the process whose arguments hold `marker` and whose environment
// says it is MPI rank `rank`; -1 if there is none.
pid_t rank_pid(const std::string& marker, int rank) {
  const std::string wanted = fmt::format("OMPI_COMM_WORLD_RANK={}", rank);
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) {
      continue;
    }
    std::ifstream cmdline(entry.path() / "cmdline");
    const std::string args{std::istreambuf_iterator<char>(cmdline),
                           std::istreambuf_iterator<char>()};
    if (args.find(marker) == std::string::npos) {
      continue;
    }
    std::ifstream environ(entry.path() / "environ");
    for (std::string var; std::getline(environ, var, '\0');) {
      if (var == wanted) {
        return std::stoi(name);
      }
    }
  }
  return -1;
}

TEST(Faults, RankKilledFromOutsideMidGeneration) {
  const test::TempDir dir("faults-outside");
  Job job(flashcomm(long_run_args(dir)), dir.file("log.txt"));
  ASSERT_TRUE(job.wait_for_log("[rank 2] [info] request 1:", 120)) << job.log();
  const pid_t victim = rank_pid(dir.path(), 2);
  ASSERT_GT(victim, 0) << "rank 2 not found";

  const auto start = std::chrono::steady_clock::now();
  ASSERT_EQ(kill(victim, SIGKILL), 0) << std::strerror(errno);
  const std::optional<int> status = job.wait(120);
  ASSERT_TRUE(status.has_value()) << "still running 120 s after rank 2 was killed\n" << job.log();
  EXPECT_LT(seconds_since(start), kEndWithin);
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 128 + SIGKILL)
      << "status " << *status << "\n"
      << job.log();
  EXPECT_EQ(count(job.log(), "flashcomm: error on rank 2: killed by signal 9 (SIGKILL"), 1U)
      << job.log();
  expect_no_process_left(dir.path());
}

// Ctrl-C: the terminal sends SIGINT to the whole foreground process group.
TEST(Faults, InterruptStopsEveryRank) {
  const test::TempDir dir("faults-interrupt");
  Job job(flashcomm(long_run_args(dir)), dir.file("log.txt"));
  ASSERT_TRUE(job.wait_for_log("[rank 0] [info] request 1:", 120)) << job.log();

  const auto start = std::chrono::steady_clock::now();
  ASSERT_EQ(kill(-job.pid(), SIGINT), 0) << std::strerror(errno);
  const std::optional<int> status = job.wait(120);
  ASSERT_TRUE(status.has_value()) << "still running 120 s after SIGINT\n" << job.log();
  EXPECT_LT(seconds_since(start), kEndWithin);
  EXPECT_TRUE(WIFSIGNALED(*status) && WTERMSIG(*status) == SIGINT) << "status " << *status << "\n"
                                                                   << job.log();
  EXPECT_EQ(count(job.log(), "flashcomm: stopped by signal 2 (SIGINT"), 1U) << job.log();
  expect_no_process_left(dir.path());
}

// kill PID: SIGTERM to the launcher alone, which passes it on.
TEST(Faults, TerminatingTheLauncherStopsEveryRank) {
  const test::TempDir dir("faults-terminate");
  Job job(flashcomm(long_run_args(dir)), dir.file("log.txt"));
  ASSERT_TRUE(job.wait_for_log("[rank 3] [info] request 1:", 120)) << job.log();

  const auto start = std::chrono::steady_clock::now();
  ASSERT_EQ(kill(job.pid(), SIGTERM), 0) << std::strerror(errno);
  const std::optional<int> status = job.wait(120);
  ASSERT_TRUE(status.has_value()) << "still running 120 s after SIGTERM\n" << job.log();
  EXPECT_LT(seconds_since(start), kEndWithin);
  EXPECT_TRUE(WIFSIGNALED(*status) && WTERMSIG(*status) == SIGTERM) << "status " << *status << "\n"
                                                                    << job.log();
  EXPECT_EQ(count(job.log(), "flashcomm: stopped by signal 15 (SIGTERM"), 1U) << job.log();
  expect_no_process_left(dir.path());
}

// SIGKILL to the launcher: mpiexec gets SIGTERM (its parent-death signal)
// and stops the ranks.
TEST(Faults, KillingTheLauncherTakesTheJobWithIt) {
  const test::TempDir dir("faults-launcher");
  Job job(flashcomm(long_run_args(dir)), dir.file("log.txt"));
  ASSERT_TRUE(job.wait_for_log("[rank 1] [info] request 1:", 120)) << job.log();
  ASSERT_EQ(kill(job.pid(), SIGKILL), 0) << std::strerror(errno);
  const std::optional<int> status = job.wait(30);
  ASSERT_TRUE(status.has_value());
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::string> left = processes_with(dir.path());
  while (!left.empty() && seconds_since(start) < kEndWithin) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    left = processes_with(dir.path());
  }
  expect_no_process_left(dir.path());
}

// How the launcher tells a job's end from mpiexec's report and exit code,
// with stand-in launchers (FLASHCOMM_MPIEXEC) that print what OpenMPI prints.
TEST(Faults, LauncherReadsMpiexecsReport) {
  const test::TempDir dir("faults-report");
  struct Case {
    const char* stderr_text;
    int exit_code;
    const char* line;  // expected once; empty: no line of flashcomm's own
  };
  for (const Case& c : {
           Case{"mpiexec noticed that process rank 3 with PID 0 on node vm exited on signal 9 "
                "(Killed).",
                137, "flashcomm: error on rank 3: killed by signal 9 (SIGKILL: Killed); "},
           Case{"mpiexec has exited due to process rank 1 with PID 0 on\nnode vm exiting "
                "improperly. There are three reasons this could occur:",
                1, "flashcomm: error on rank 1: it exited before the job ended; "},
           Case{"The first process to do so was:\n\n  Process name: [[4711,1],2]\n  Exit "
                "code:    5",
                5, "flashcomm: error on rank 2: it exited before the job ended; "},
           Case{"something else went wrong", 3,
                "ended with exit code 3 and no rank said why; see its messages above"},
           Case{"flashcomm: error on rank 0: the rank's own words", 4, ""},
           Case{"", 0, ""},
       }) {
    SCOPED_TRACE(c.stderr_text);
    const std::string fake = dir.file("fake-mpiexec");
    {
      std::ofstream f(fake);
      f << "#!/bin/sh\nprintf '%b\\n' " << quote(c.stderr_text) << " >&2\necho on-stdout\nexit "
        << c.exit_code << "\n";
    }
    std::filesystem::permissions(fake, std::filesystem::perms::owner_all);
    const Outcome o = shell("env FLASHCOMM_MPIEXEC=" + quote(fake) + " " +
                            flashcomm(stories_args() + " --tp 2 --steps 5"));
    EXPECT_EQ(o.exit_code, c.exit_code) << o.output;
    EXPECT_EQ(count(o.output, "on-stdout"), 1U) << o.output;
    if (*c.stderr_text != '\0') {
      EXPECT_EQ(count(o.output, std::string(c.stderr_text).substr(0, 20)), 1U)
          << "the job's stderr passes through\n"
          << o.output;
    }
    if (*c.line != '\0') {
      EXPECT_EQ(count(o.output, c.line), 1U) << o.output;
    }
    // One error line at most: the rank's own, or else the launcher's.
    EXPECT_EQ(count(o.output, "flashcomm: error"), c.exit_code != 0 ? 1U : 0U) << o.output;
  }
  const Outcome missing =
      shell("env FLASHCOMM_MPIEXEC=/no/such/mpiexec " + flashcomm(stories_args() + " --tp 2"));
  EXPECT_EQ(missing.exit_code, 2) << missing.output;
  EXPECT_EQ(count(missing.output,
                  "cannot start /no/such/mpiexec for 2 ranks: No such file or directory; check "
                  "FLASHCOMM_MPIEXEC"),
            1U)
      << missing.output;
}

TEST(Faults, FaultVariableIsCheckedAndHarmlessWhenEmpty) {
  struct Case {
    const char* fault;
    const char* command;
    const char* message;
  };
  const std::string run = stories_args() + " --tp 2 --steps 5";
  const test::TempDir dir("faults-checked");
  const std::string bench =
      "bench --model stories260K --tokens 16 --tp 2 --hardware h100-sxm --out " +
      quote(dir.file("out"));
  for (const Case& c : {
           Case{"rank=2,at=prefill,action=kill", run.c_str(),
                "rank 2 is not a rank of this 2-rank job"},
           Case{"rank=1,at=decode:0,action=kill", run.c_str(),
                "at 'decode:0': the decode step must be a decimal number from 1"},
           Case{"rank=1,at=decode,action=kill", run.c_str(),
                "at 'decode' is not a fault point of this command"},
           Case{"rank=1,at=bench,action=kill", run.c_str(),
                "at 'bench' is not a fault point of this command"},
           Case{"rank=1,at=prefill,action=explode", run.c_str(), "action 'explode' is unknown"},
           Case{"rank=1,at=prefill", run.c_str(), "action is missing"},
           Case{"rank=1,rank=0,at=prefill,action=kill", run.c_str(), "rank is given twice"},
           Case{"rank=x,at=prefill,action=kill", run.c_str(), "rank 'x' is not a decimal number"},
           Case{"rank=1,at=prefill,action=kill,when=now", run.c_str(), "unknown key 'when'"},
           Case{"kill", run.c_str(), "'kill' is not key=value"},
           Case{"rank=1,at=decode:2,action=kill", bench.c_str(),
                "at 'decode:2' is not a fault point of this command"},
       }) {
    SCOPED_TRACE(c.fault);
    const Outcome o = shell("env FLASHCOMM_FAULT=" + quote(c.fault) + " " + flashcomm(c.command));
    EXPECT_EQ(o.exit_code, 2) << o.output;
    EXPECT_EQ(count(o.output, fmt::format("FLASHCOMM_FAULT '{}': {}", c.fault, c.message)), 1U)
        << o.output;
    EXPECT_NE(o.output.find("expected rank=R,at=POINT,action=ACTION"), std::string::npos)
        << o.output;
  }
  // Under mpiexec every rank checks it; the message still appears once.
  const Outcome ranks = shell("env FLASHCOMM_FAULT=rank=9,at=prefill,action=kill " +
                              mpiexec_prefix(2) + flashcomm(run));
  EXPECT_EQ(ranks.exit_code, 2) << ranks.output;
  EXPECT_EQ(count(ranks.output, "rank 9 is not a rank of this 2-rank job"), 1U) << ranks.output;

  const Outcome empty = shell("env FLASHCOMM_FAULT= " + flashcomm(run));
  EXPECT_EQ(empty.exit_code, 0) << empty.output;
}

}  // namespace
}  // namespace flashcomm
