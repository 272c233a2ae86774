// `flashcomm bench --testbed shaped` end to end (`ctest -L testbed`): a tiny
// shaped benchmark runs, is slower than the unshaped one, sent its bytes
// through the shaped loopback, and leaves no network namespace behind: after
// a run, a failed run, a refused option and a Ctrl-C. These tests need root
// (CI runs as root) and fail, never skip, without it.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "flashcomm/cost_model.hpp"
#include "test_support.hpp"

namespace flashcomm {
namespace {

using nlohmann::json;
using test::count;
using test::flashcomm;
using test::Outcome;
using test::quote;
using test::shell;

// A tiny benchmark: stories260K's shape with random weights, one layer, plain
// TP on two ranks; the predictions from a built-in profile, so nothing is
// calibrated.
std::string tiny_bench(const std::string& out, int tokens = 256) {
  return fmt::format(
      "bench --model stories260K --tp 2 --tokens {} --schemes tp --warmup 1 --repeats 5 "
      "--hardware h100-sxm --out {}",
      tokens, quote(out));
}

std::set<std::string> namespaces() {
  const Outcome o = shell("ip netns list", 30);
  EXPECT_EQ(o.exit_code, 0) << o.output;
  std::set<std::string> names;
  std::istringstream lines(o.output);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream words(line);
    std::string name;
    if (words >> name) {
      names.insert(name);
    }
  }
  return names;
}

// The namespace a run announced ("network namespace flashcomm-PID"), or "".
std::string announced_namespace(const std::string& output) {
  static const std::regex line(R"(network namespace (flashcomm-[0-9]+))");
  std::smatch m;
  return std::regex_search(output, m, line) ? m[1].str() : std::string();
}

void expect_namespace_gone(const std::string& output) {
  const std::string name = announced_namespace(output);
  ASSERT_FALSE(name.empty()) << "no namespace announced in:\n" << output;
  EXPECT_EQ(namespaces().count(name), 0U) << name << " was left behind";
}

json read_json(const std::string& path) {
  std::ifstream f(path);
  EXPECT_TRUE(f.good()) << path;
  return f.good() ? json::parse(f) : json();
}

double median_of_first_row(const std::string& dir) {
  const json doc = read_json(dir + "/bench.json");
  return doc["rows"].at(0)["per_layer"]["median_s"].get<double>();
}

TEST(TestbedCli, RunsAsRoot) {
  ASSERT_EQ(geteuid(), 0U) << "the testbed tests need root to create network namespaces; CI runs "
                              "them as root";
}

TEST(TestbedCli, ShapedIsSlowerThanUnshapedAndEverythingWentThroughTheShapedLoopback) {
  const test::TempDir dir("testbed-smoke");
  const Outcome plain = shell(flashcomm(tiny_bench(dir.file("plain"))), 120);
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  const std::set<std::string> before = namespaces();
  const Outcome shaped = shell(
      flashcomm(tiny_bench(dir.file("shaped")) + " --testbed shaped --link-rate 50mbit"), 120);
  ASSERT_EQ(shaped.exit_code, 0) << shaped.output;
  expect_namespace_gone(shaped.output);
  EXPECT_EQ(namespaces(), before);
  EXPECT_FALSE(std::filesystem::exists(dir.file("plain/testbed.json")));

  const double plain_s = median_of_first_row(dir.file("plain"));
  const double shaped_s = median_of_first_row(dir.file("shaped"));
  EXPECT_GT(shaped_s, plain_s) << "shaped " << shaped_s << " s, unshaped " << plain_s << " s";

  // The link can be no faster than its bucket: both ranks' bytes of a layer
  // pass 50 Mbit/s (half of it allowed for the bucket's burst).
  const json doc = read_json(dir.file("shaped/bench.json"));
  const json& row = doc["rows"].at(0);
  const auto bytes_per_rank = row["bytes_per_rank"].get<std::int64_t>();
  EXPECT_GT(shaped_s, 0.5 * static_cast<double>(2 * bytes_per_rank) / (50e6 / 8)) << row.dump();
  EXPECT_GT(row["predicted_s"].get<double>(), 0.0);
  ASSERT_TRUE(doc["testbed"].is_object()) << doc.dump();
  EXPECT_EQ(doc["testbed"]["rate_bps"].get<double>(), 50e6);
  EXPECT_EQ(doc["testbed"]["namespace"], announced_namespace(shaped.output));

  // Every byte of every run went through the shaped loopback (none through
  // shared memory): warm-up and repeats, two ranks, one layer.
  const json link = read_json(dir.file("shaped/testbed.json"));
  const std::int64_t payload = bytes_per_rank * 2 * (1 + 5);
  EXPECT_GE(link["link_stats"]["bytes"].get<std::int64_t>(), payload) << link.dump();
  EXPECT_EQ(link["link_stats"]["dropped"].get<std::int64_t>(), 0) << link.dump();
  EXPECT_EQ(link["tc_rate"], "50000000bit");
}

TEST(TestbedCli, CalibratesTheShapedLinkAndPredictsFromIt) {
  const test::TempDir dir("testbed-calibrated");
  const Outcome o = shell(
      flashcomm(fmt::format("bench --model stories260K --tp 2 --tokens 256 --schemes tp,fc1 "
                            "--warmup 1 --repeats 3 --testbed shaped --link-rate 200mbit --out {}",
                            quote(dir.path()))),
      180);
  ASSERT_EQ(o.exit_code, 0) << o.output;
  expect_namespace_gone(o.output);
  EXPECT_NE(o.output.find("calibrating the shaped link"), std::string::npos) << o.output;

  // Two ranks share 25 MB/s: each AllReduce rank gets about 12.5 MB/s.
  const HardwareProfile link = load_profile(dir.file("profile-tp2.json"));
  const double share = 200e6 / 8 / 2;
  ASSERT_EQ(link.collectives.count(CommOp::all_reduce), 1U);
  const CollectiveFit& fit = link.collectives.at(CommOp::all_reduce).at(0);
  EXPECT_EQ(fit.group_size, 2);
  EXPECT_GT(fit.bandwidth_Bps, 0.5 * share) << o.output;
  EXPECT_LT(fit.bandwidth_Bps, 1.5 * share) << o.output;

  const json doc = read_json(dir.file("bench.json"));
  ASSERT_EQ(doc["rows"].size(), 2U) << doc.dump();
  for (const json& r : doc["rows"]) {
    const double ratio = r["predicted_s"].get<double>() / r["per_layer"]["median_s"].get<double>();
    EXPECT_GT(ratio, 0.2) << r.dump();
    EXPECT_LT(ratio, 5.0) << r.dump();
  }
  EXPECT_FALSE(doc["testbed"]["link_fits"].empty()) << doc.dump();
  EXPECT_NE(o.output.find("of the link's share"), std::string::npos) << o.output;
}

TEST(TestbedCli, MatchProfilePrintsTheRateItChoseAndWhy) {
  const test::TempDir dir("testbed-match");
  const Outcome o = shell(
      flashcomm(tiny_bench(dir.path(), 16) + " --testbed shaped --match-profile h100-sxm"), 120);
  ASSERT_EQ(o.exit_code, 0) << o.output;
  expect_namespace_gone(o.output);
  EXPECT_EQ(count(o.output, "matching h100-sxm at TP 2:"), 1U) << o.output;
  EXPECT_NE(o.output.find("FLOPs per element sent"), std::string::npos) << o.output;
  const json link = read_json(dir.file("testbed.json"));
  const json& m = link["match"];
  ASSERT_TRUE(m.is_object()) << link.dump();
  EXPECT_EQ(m["profile"], "h100-sxm");
  const double per_rank = m["machine_gemm_flops"].get<double>() *
                          m["profile_link_Bps"].get<double>() /
                          m["profile_gemm_flops"].get<double>() * 4 / 2;
  EXPECT_NEAR(m["per_rank_Bps"].get<double>(), per_rank, per_rank * 1e-9);
  EXPECT_NEAR(link["rate_bps"].get<double>(), 2 * per_rank * 8, 500.0);
  EXPECT_NE(o.output.find("(tc rate " + link["tc_rate"].get<std::string>() + ")"),
            std::string::npos)
      << o.output;
}

TEST(TestbedCli, AFailedJobLeavesNoNamespace) {
  const test::TempDir dir("testbed-fail");
  // A rank throws once the job runs inside the namespace.
  const Outcome thrown =
      shell("env FLASHCOMM_FAULT=rank=1,at=bench,action=throw " +
                flashcomm(tiny_bench(dir.path()) + " --testbed shaped --link-rate 100mbit"),
            120);
  EXPECT_EQ(thrown.exit_code, 1) << thrown.output;
  EXPECT_EQ(count(thrown.output, "flashcomm: error on rank 1: fault injected"), 1U)
      << thrown.output;
  expect_namespace_gone(thrown.output);
  EXPECT_FALSE(std::filesystem::exists(dir.file("testbed.json")));

  // The launcher cannot start inside it.
  const Outcome no_launcher =
      shell("env FLASHCOMM_MPIEXEC=/no/such/mpiexec " +
                flashcomm(tiny_bench(dir.path()) + " --testbed shaped --link-rate 100mbit"),
            120);
  EXPECT_NE(no_launcher.exit_code, 0) << no_launcher.output;
  expect_namespace_gone(no_launcher.output);

  // A step of the shaping fails after the namespace exists: without netem
  // in the kernel, the delay cannot be added; with it, the run succeeds.
  const Outcome delayed = shell(flashcomm(tiny_bench(dir.path(), 16) +
                                          " --testbed shaped --link-rate 100mbit --link-delay 1ms"),
                                120);
  if (delayed.exit_code == 0) {
    EXPECT_DOUBLE_EQ(read_json(dir.file("testbed.json"))["delay_s"].get<double>(), 1e-3);
    expect_namespace_gone(delayed.output);
  } else {
    EXPECT_EQ(delayed.exit_code, 2) << delayed.output;
    EXPECT_EQ(count(delayed.output, "--link-delay needs the kernel's netem qdisc"), 1U)
        << delayed.output;
    // The failed step names the namespace it ran in.
    const std::regex created(R"(tc -n (flashcomm-[0-9]+) qdisc add dev lo parent)");
    std::smatch m;
    ASSERT_TRUE(std::regex_search(delayed.output, m, created)) << delayed.output;
    EXPECT_EQ(namespaces().count(m[1].str()), 0U) << m[1].str() << " was left behind";
  }
}

// A run killed with SIGKILL cannot tidy up; the next run removes what it
// left, and only that: never the namespace of a run still going.
TEST(TestbedCli, TheNextRunRemovesANamespaceAKilledRunLeft) {
  pid_t gone = fork();
  if (gone == 0) {
    _exit(0);
  }
  waitpid(gone, nullptr, 0);
  const std::string stale = fmt::format("flashcomm-{}", gone);
  const std::string live = fmt::format("flashcomm-{}", getpid());
  ASSERT_EQ(shell("ip netns add " + stale + " && ip netns add " + live, 30).exit_code, 0);
  const test::TempDir dir("testbed-stale");
  const Outcome o =
      shell(flashcomm(tiny_bench(dir.path(), 16) + " --testbed shaped --link-rate 100mbit"), 120);
  const std::set<std::string> after = namespaces();
  shell("ip netns delete " + live + "; ip netns delete " + stale + " 2>/dev/null", 30);
  EXPECT_EQ(o.exit_code, 0) << o.output;
  EXPECT_EQ(count(o.output, "removed the network namespace " + stale + " left by an earlier run"),
            1U)
      << o.output;
  EXPECT_EQ(after.count(stale), 0U);
  EXPECT_EQ(after.count(live), 1U) << "the namespace of a live process was removed";
}

TEST(TestbedCli, BadOptionsAreRefusedBeforeANamespaceExists) {
  struct Case {
    std::string flags;
    std::string message;
  };
  const Case cases[] = {
      {"--testbed fast", "--testbed fast is not one of none, shaped"},
      {"--testbed shaped", "--testbed shaped needs the link's rate: --link-rate RATE"},
      {"--testbed shaped --link-rate fast",
       "--link-rate 'fast' is not a link rate, expected a number and a unit of bits per second"},
      {"--testbed shaped --link-rate 0mbit", "--link-rate 0mbit is zero"},
      {"--testbed shaped --link-rate -5mbit", "--link-rate -5mbit is negative"},
      {"--testbed shaped --link-rate 10kbit", "--link-rate 10kbit is too slow"},
      {"--testbed shaped --link-rate 800mbit --link-delay soon",
       "--link-delay 'soon' is not a delay, expected a number and a unit (us, ms or s)"},
      {"--testbed shaped --link-rate 800mbit --link-delay -2ms", "--link-delay -2ms is negative"},
      {"--testbed shaped --match-profile no-such-gpu",
       "--match-profile: unknown hardware profile 'no-such-gpu'"},
      {"--testbed shaped --link-rate 1gbit --match-profile h100-sxm",
       "--link-rate 1gbit and --match-profile h100-sxm both choose the link's rate: give one"},
      {"--link-rate 1gbit",
       "--link-rate 1gbit shapes the testbed's link: it needs --testbed shaped"},
      {"--testbed shaped --link-rate 1gbit --tp 1", "--testbed shaped needs a --tp above 1"},
      {"--testbed shaped --match-profile h100-sxm --tp 2,4",
       "--match-profile h100-sxm matches the link to one TP size"},
  };
  const std::set<std::string> before = namespaces();
  const test::TempDir dir("testbed-bad");
  for (const Case& c : cases) {
    const Outcome o = shell(
        flashcomm(fmt::format("bench --model stories260K --out {} {}", quote(dir.path()), c.flags)),
        60);
    EXPECT_EQ(o.exit_code, 2) << c.flags << "\n" << o.output;
    EXPECT_EQ(count(o.output, c.message), 1U) << c.flags << "\n" << o.output;
    EXPECT_EQ(o.output.find("network namespace"), std::string::npos) << c.flags << "\n" << o.output;
  }
  EXPECT_EQ(namespaces(), before);

  // Under a user's own mpiexec the ranks are already started: refused.
  const Outcome own = shell(
      fmt::format("mpiexec --allow-run-as-root --oversubscribe -n 2 {}",
                  flashcomm(tiny_bench(dir.path()) + " --testbed shaped --link-rate 100mbit")),
      60);
  EXPECT_EQ(own.exit_code, 2) << own.output;
  EXPECT_NE(own.output.find("run flashcomm bench without mpiexec"), std::string::npos)
      << own.output;
}

TEST(TestbedCli, NeedsRootAndIproute2) {
  const test::TempDir dir("testbed-needs");
  std::filesystem::permissions(dir.path(), std::filesystem::perms::all);
  const std::string args = tiny_bench(dir.path()) + " --testbed shaped --link-rate 100mbit";
  const Outcome nobody =
      shell("setpriv --reuid=65534 --regid=65534 --clear-groups " + flashcomm(args), 60);
  EXPECT_EQ(nobody.exit_code, 2) << nobody.output;
  EXPECT_EQ(count(nobody.output, "--testbed shaped needs root: it creates a network namespace"), 1U)
      << nobody.output;

  const Outcome no_tools = shell("env PATH=/nonexistent " + flashcomm(args), 60);
  EXPECT_EQ(no_tools.exit_code, 2) << no_tools.output;
  EXPECT_EQ(count(no_tools.output,
                  "--testbed shaped needs the programs ip and tc (iproute2), but ip and tc are "
                  "not on PATH (/nonexistent); install iproute2"),
            1U)
      << no_tools.output;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// A run in the background, in a process group of its own as a shell with job
// control starts it; its output goes to a file.
class Job {
 public:
  Job(const std::string& command, std::string log_file) : log_file_(std::move(log_file)) {
    pid_ = fork();
    if (pid_ == 0) {
      setpgid(0, 0);
      std::signal(SIGINT, SIG_DFL);
      const std::string line = "exec " + command + " >" + quote(log_file_) + " 2>&1";
      execl("/bin/sh", "sh", "-c", line.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    setpgid(pid_, pid_);
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

// No process whose arguments hold `marker` (the run's --out) still runs.
void expect_no_process_left(const std::string& marker) {
  for (int i = 0; i < 50; ++i) {
    const Outcome ps = shell("ps -eo args=", 30);
    if (ps.output.find(marker) == std::string::npos) {
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ADD_FAILURE() << "processes of the job still running:\n" << shell("ps -eo pid,args=", 30).output;
}

// A slow shaped run, stopped by `sig` sent to `to_group` (Ctrl-C: the whole
// foreground group) or to the launching process alone (kill PID).
void expect_stopped_cleanly(int sig, bool to_group) {
  const test::TempDir dir("testbed-signal");
  Job job(flashcomm(fmt::format("bench --model stories260K --tp 2 --tokens 256 --schemes tp "
                                "--warmup 1 --repeats 1000 --hardware h100-sxm --out {} "
                                "--testbed shaped --link-rate 20mbit --log-level debug",
                                quote(dir.file("out")))),
          dir.file("log.txt"));
  // Rank 0's first line: the job runs inside the namespace.
  ASSERT_TRUE(job.wait_for_log("ranks on this machine with", 120)) << job.log();
  const std::string name = announced_namespace(job.log());
  ASSERT_FALSE(name.empty()) << job.log();
  EXPECT_EQ(namespaces().count(name), 1U) << "the namespace exists while the job runs";

  ASSERT_EQ(kill(to_group ? -job.pid() : job.pid(), sig), 0);
  const std::optional<int> status = job.wait(120);
  ASSERT_TRUE(status.has_value()) << "still running 120 s after the signal\n" << job.log();
  EXPECT_TRUE(WIFSIGNALED(*status) && WTERMSIG(*status) == sig) << "status " << *status << "\n"
                                                                << job.log();
  EXPECT_EQ(count(job.log(), fmt::format("flashcomm: stopped by signal {} (", sig)), 1U)
      << job.log();
  EXPECT_EQ(count(job.log(), "removed the network namespace " + name), 1U) << job.log();
  EXPECT_EQ(namespaces().count(name), 0U) << name << " was left behind\n" << job.log();
  expect_no_process_left(dir.file("out"));
}

TEST(TestbedCli, CtrlCRemovesTheNamespace) {
  expect_stopped_cleanly(SIGINT, true);
}

TEST(TestbedCli, TerminatingTheLauncherRemovesTheNamespace) {
  expect_stopped_cleanly(SIGTERM, false);
}

}  // namespace
}  // namespace flashcomm
