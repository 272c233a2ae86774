// The namespace of a shaped run: created, shaped and removed through iproute2's
// own programs (ip, tc), each started by fork/exec with its arguments as a
// vector (no shell, so nothing in a value can become a command) and its exit
// code checked.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "flashcomm/error.hpp"
#include "flashcomm/log.hpp"
#include "flashcomm/testbed.hpp"

namespace flashcomm::testbed {

namespace {

// The queue in front of the bucket, in bytes. TCP's small-queue limit keeps
// each socket's share of it to a few MiB, so this is never reached, and a
// dropped packet (a retransmission after at least 200 ms) never distorts a
// timing; stats() reports drops should any happen.
constexpr std::int64_t kQueueLimitBytes = std::int64_t{256} << 20;
// netem's queue, in packets.
constexpr int kDelayQueuePackets = 100000;

struct ToolRun {
  int exit_code = 0;
  std::string output;  // stdout and stderr together
};

std::string joined(const std::vector<std::string>& argv) {
  std::string s;
  for (const std::string& a : argv) {
    s += (s.empty() ? "" : " ") + a;
  }
  return s;
}

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) {
    s.pop_back();
  }
  return s;
}

// Runs argv[0] (an absolute path) with argv; returns its exit code (128 + S
// when killed by signal S) and what it printed.
ToolRun run_tool(const std::vector<std::string>& argv) {
  std::vector<char*> c_args;
  std::vector<std::string> storage = argv;
  for (std::string& a : storage) {
    c_args.push_back(a.data());
  }
  c_args.push_back(nullptr);
  std::array<int, 2> out{};
  if (pipe2(out.data(), O_CLOEXEC) != 0) {
    throw InternalError(
        fmt::format("cannot create a pipe for {}: {}", argv[0], std::strerror(errno)));
  }
  const pid_t child = fork();
  if (child < 0) {
    const int err = errno;
    close(out[0]);
    close(out[1]);
    throw InternalError(fmt::format("cannot fork to run {}: {}", argv[0], std::strerror(err)));
  }
  if (child == 0) {
    // A process group of its own: a terminal's Ctrl-C reaches flashcomm,
    // which then tidies up, and never kills a step halfway.
    setpgid(0, 0);
    dup2(out[1], STDOUT_FILENO);
    dup2(out[1], STDERR_FILENO);
    execv(c_args[0], c_args.data());
    const char* msg = "exec failed\n";
    (void)!write(STDERR_FILENO, msg, std::strlen(msg));
    _exit(127);
  }
  close(out[1]);
  ToolRun run;
  std::array<char, 4096> buf{};
  for (;;) {
    const ssize_t n = read(out[0], buf.data(), buf.size());
    if (n > 0) {
      run.output.append(buf.data(), static_cast<size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      break;
    }
  }
  close(out[0]);
  int status = 0;
  while (waitpid(child, &status, 0) < 0) {
    if (errno != EINTR) {
      throw InternalError(fmt::format("waitpid on {}: {}", argv[0], std::strerror(errno)));
    }
  }
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  run.output = trimmed(run.output);
  return run;
}

// Runs a step of the setup; ConfigError naming it and quoting the tool.
void run_step(const std::vector<std::string>& argv, const std::string& what,
              const std::string& hint = "") {
  const ToolRun r = run_tool(argv);
  if (r.exit_code != 0) {
    throw ConfigError(fmt::format("--testbed shaped: cannot {}: `{}` exited with code {}: {}{}",
                                  what, joined(argv), r.exit_code,
                                  r.output.empty() ? "(no message)" : r.output, hint));
  }
}

std::string find_on_path(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path != nullptr ? path : "");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    if (dir.empty()) {
      continue;
    }
    std::string candidate = dir;
    candidate += "/";
    candidate += program;
    struct stat st {};
    if (stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return {};
}

}  // namespace

Tools find_tools() {
  Tools t{find_on_path("ip"), find_on_path("tc")};
  std::vector<std::string> missing;
  if (t.ip.empty()) {
    missing.emplace_back("ip");
  }
  if (t.tc.empty()) {
    missing.emplace_back("tc");
  }
  if (!missing.empty()) {
    const char* path = std::getenv("PATH");
    throw ConfigError(fmt::format(
        "--testbed shaped needs the programs ip and tc (iproute2), but {} not on PATH ({}); "
        "install iproute2 (apt-get install iproute2, as scripts/install-deps.sh does) or add "
        "/usr/sbin to PATH",
        missing.size() == 1 ? missing[0] + " is" : "ip and tc are",
        path != nullptr ? path : "unset"));
  }
  return t;
}

void require_root() {
  if (geteuid() != 0) {
    throw ConfigError(fmt::format(
        "--testbed shaped needs root: it creates a network namespace (ip netns add) and shapes "
        "its loopback (tc), but this process runs as uid {}; run it as root (e.g. with sudo)",
        geteuid()));
  }
}

std::string namespace_name(int pid) {
  return fmt::format("flashcomm-{}", pid);
}

std::vector<std::string> list_namespaces(const Tools& tools) {
  const ToolRun r = run_tool({tools.ip, "netns", "list"});
  if (r.exit_code != 0) {
    throw ConfigError(fmt::format("--testbed shaped: `{} netns list` exited with code {}: {}",
                                  tools.ip, r.exit_code, r.output));
  }
  // Lines read "NAME" or "NAME (id: N)".
  std::vector<std::string> names;
  std::istringstream lines(r.output);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream words(line);
    std::string name;
    if (words >> name) {
      names.push_back(name);
    }
  }
  return names;
}

std::vector<std::string> remove_stale_namespaces(const Tools& tools) {
  static const std::regex ours(R"(flashcomm-([0-9]{1,9}))");
  std::vector<std::string> removed;
  for (const std::string& name : list_namespaces(tools)) {
    std::smatch m;
    if (!std::regex_match(name, m, ours)) {
      continue;
    }
    const int pid = std::stoi(m[1].str());
    if (pid == getpid() || kill(pid, 0) == 0 || errno != ESRCH) {
      continue;  // its run may still be going
    }
    const ToolRun pids = run_tool({tools.ip, "netns", "pids", name});
    if (pids.exit_code != 0 || !pids.output.empty()) {
      continue;  // something still runs inside
    }
    if (run_tool({tools.ip, "netns", "delete", name}).exit_code == 0) {
      removed.push_back(name);
    }
  }
  return removed;
}

ShapedNamespace::ShapedNamespace(std::string name, const LinkShape& shape, Tools tools)
    : name_(std::move(name)), tools_(std::move(tools)) {
  FC_ASSERT(shape.rate_bps >= kMinRateBps && shape.rate_bps <= kMaxRateBps, "rate {}",
            shape.rate_bps);
  FC_ASSERT(shape.delay_s >= 0.0 && shape.delay_s <= kMaxDelayS, "delay {}", shape.delay_s);

  // 1. The namespace: a fresh network stack whose only interface is its own
  //    loopback, down until brought up.
  run_step({tools_.ip, "netns", "add", name_}, "create the network namespace " + name_);
  exists_ = true;
  try {
    run_step(
        {tools_.ip, "-n", name_, "link", "set", "lo", "mtu", std::to_string(kLinkMtuBytes), "up"},
        "bring up the loopback of " + name_);

    // 2. The token bucket on the loopback: every packet between two ranks
    //    leaves through it once.
    run_step(
        {tools_.tc, "-n", name_, "qdisc", "add", "dev", "lo", "root", "handle", "1:", "tbf", "rate",
         tc_rate(shape.rate_bps), "burst", fmt::format("{}b", tbf_burst_bytes(shape.rate_bps)),
         "limit", fmt::format("{}b", kQueueLimitBytes)},
        "shape the loopback of " + name_ + " with a token bucket (tbf)",
        "; the kernel needs the tbf qdisc (CONFIG_NET_SCH_TBF)");

    // 3. The delay, behind the bucket.
    if (shape.delay_s > 0.0) {
      run_step({tools_.tc, "-n", name_, "qdisc", "add", "dev", "lo", "parent", "1:1", "handle",
                "10:", "netem", "delay", tc_time(shape.delay_s), "limit",
                std::to_string(kDelayQueuePackets)},
               "delay the loopback of " + name_ + " (netem)",
               "; --link-delay needs the kernel's netem qdisc (CONFIG_NET_SCH_NETEM), which this "
               "kernel does not seem to have: run without --link-delay");
    }
  } catch (...) {
    remove();
    throw;
  }
}

ShapedNamespace::~ShapedNamespace() {
  remove();
}

std::vector<std::string> ShapedNamespace::exec_prefix() const {
  return {tools_.ip, "netns", "exec", name_};
}

LinkStats ShapedNamespace::stats() const {
  LinkStats s;
  if (!exists_) {
    return s;
  }
  const ToolRun r = run_tool({tools_.tc, "-s", "-j", "-n", name_, "qdisc", "show", "dev", "lo"});
  if (r.exit_code != 0) {
    return s;
  }
  // tc's JSON: an array of qdiscs, each with its counters.
  const nlohmann::json doc = nlohmann::json::parse(r.output, nullptr, false);
  if (!doc.is_array()) {
    return s;
  }
  const auto number = [](const nlohmann::json& q, const char* key) -> std::int64_t {
    const auto it = q.find(key);
    return it != q.end() && it->is_number_integer() ? it->get<std::int64_t>() : 0;
  };
  for (const nlohmann::json& q : doc) {
    if (q.is_object() && q.value("kind", "") == "tbf") {
      s.bytes = number(q, "bytes");
      s.packets = number(q, "packets");
      s.dropped = number(q, "drops");
      s.overlimits = number(q, "overlimits");
    }
  }
  return s;
}

bool ShapedNamespace::remove() {
  if (!exists_) {
    return true;
  }
  exists_ = false;
  ToolRun r;
  try {
    r = run_tool({tools_.ip, "netns", "delete", name_});
  } catch (const std::exception& e) {
    r = {1, e.what()};
  }
  if (r.exit_code != 0) {
    fmt::print(stderr,
               "flashcomm: warning: could not remove the network namespace {} ({}); remove it "
               "with: ip netns delete {}\n",
               name_, r.output, name_);
    return false;
  }
  log::debug("ip netns delete {}: done", name_);
  return true;
}

}  // namespace flashcomm::testbed
