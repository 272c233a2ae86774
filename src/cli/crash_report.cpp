#include "cli/crash_report.hpp"

#include <mpi.h>

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

namespace flashcomm::cli {

namespace {

struct FatalSignal {
  int number;
  const char* name;
};

constexpr std::array<FatalSignal, 5> kFatalSignals = {{
    {SIGSEGV, "SIGSEGV (invalid memory access)"},
    {SIGBUS, "SIGBUS (bus error)"},
    {SIGFPE, "SIGFPE (arithmetic error)"},
    {SIGILL, "SIGILL (illegal instruction)"},
    {SIGABRT, "SIGABRT (abort)"},
}};

// Everything the handler touches is prepared beforehand: a handler may only
// make async-signal-safe calls (write, sigaction, raise), never format.
struct Line {
  std::array<char, 160> text{};
  size_t size = 0;
};
std::array<Line, kFatalSignals.size()> g_lines;
std::array<struct sigaction, kFatalSignals.size()> g_previous{};

// A stack overflow leaves no stack to run the handler on.
std::array<char, std::size_t{64} * 1024> g_alt_stack{};

void write_all(const char* text, size_t size) {
  while (size > 0) {
    const ssize_t n = write(STDERR_FILENO, text, size);
    if (n > 0) {
      text += n;
      size -= static_cast<size_t>(n);
    } else if (n < 0 && errno != EINTR) {
      return;
    }
  }
}

void on_fatal_signal(int sig, siginfo_t* info, void* /*context*/) {
  const int saved_errno = errno;
  for (size_t i = 0; i < kFatalSignals.size(); ++i) {
    if (kFatalSignals[i].number != sig) {
      continue;
    }
    write_all(g_lines[i].text.data(), g_lines[i].size);
    // Hand the signal on: a fault raised by an instruction recurs when the
    // handler returns and the instruction runs again; one sent by a process
    // (kill, raise, abort) is sent again, to be delivered once this returns.
    sigaction(sig, &g_previous[i], nullptr);
    if (info == nullptr || info->si_code <= 0) {
      raise(sig);
    }
  }
  errno = saved_errno;
}

int g_rank = -1;

// exit() from inside the job: the other ranks would wait for this one.
void on_exit_before_finalize(int status, void* /*unused*/) {
  int finalized = 1;
  MPI_Finalized(&finalized);
  if (finalized == 0) {
    std::fprintf(stderr, "flashcomm: error on rank %d: exit(%d) before the job ended, pid %d\n",
                 g_rank, status, static_cast<int>(getpid()));
    std::fflush(stderr);
  }
}

}  // namespace

void install_crash_report(int world_rank) {
  g_rank = world_rank;
  on_exit(on_exit_before_finalize, nullptr);

  stack_t alt{};
  alt.ss_sp = g_alt_stack.data();
  alt.ss_size = g_alt_stack.size();
  sigaltstack(&alt, nullptr);
  for (size_t i = 0; i < kFatalSignals.size(); ++i) {
    Line& line = g_lines[i];
    const auto end = fmt::format_to_n(line.text.data(), line.text.size(),
                                      "flashcomm: error on rank {}: fatal signal {}, pid {}\n",
                                      world_rank, kFatalSignals[i].name, getpid());
    line.size = std::min(end.size, line.text.size());
    struct sigaction action {};
    action.sa_sigaction = on_fatal_signal;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    sigaction(kFatalSignals[i].number, &action, &g_previous[i]);
  }
}

}  // namespace flashcomm::cli
