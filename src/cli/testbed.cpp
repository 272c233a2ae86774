// The shaped testbed of `flashcomm bench`: options, the launching process's
// namespace and signals, and what the ranks measure of their link.
#include "cli/testbed.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "cli/launcher.hpp"
#include "flashcomm/calibrate.hpp"
#include "flashcomm/error.hpp"
#include "flashcomm/log.hpp"
#include "flashcomm/testbed.hpp"

namespace flashcomm::cli {

namespace {

using nlohmann::json;

// What the launching process tells the ranks (a JSON object).
constexpr const char* kTestbedVar = "FLASHCOMM_TESTBED";

// OpenMPI over TCP on the namespace's loopback and nothing else: the ob1
// point-to-point layer (not UCX or libfabric, which bring their own shared
// memory), only the tcp and self transports (no vader shared memory), and
// the launcher's own out-of-band traffic on the loopback too. The TCP
// transport's own progress thread: without it a rank's sockets are polled
// only every 10 ms or so while it waits (OpenMPI 4.1 polls its event loop
// that rarely), and a small collective takes 8-12 ms instead of 50 us.
const std::pair<const char*, const char*> kMpiOverLoopback[] = {
    {"pml", "ob1"},
    {"btl", "tcp,self"},
    {"btl_tcp_if_include", "lo"},
    {"oob_tcp_if_include", "lo"},
    {"btl_tcp_progress_thread", "1"},
};

std::vector<std::string> mpi_over_loopback_args() {
  std::vector<std::string> args;
  for (const auto& [name, value] : kMpiOverLoopback) {
    args.insert(args.end(), {"--mca", name, value});
  }
  return args;
}

// The signals a job is stopped by, as the launcher forwards them.
constexpr std::array<int, 3> kStopSignals = {SIGINT, SIGTERM, SIGHUP};

volatile sig_atomic_t g_stop_signal = 0;

void record_signal(int sig) {
  g_stop_signal = sig;
}

// While the namespace exists, a stop signal is recorded rather than obeyed,
// so that the namespace is removed first (signals this process was started
// ignoring stay ignored). The launcher forwards them while the job runs.
class StopSignals {
 public:
  StopSignals() {
    g_stop_signal = 0;
    for (size_t i = 0; i < kStopSignals.size(); ++i) {
      sigaction(kStopSignals[i], nullptr, &previous_[i]);
      if (previous_[i].sa_handler != SIG_IGN) {
        struct sigaction action {};
        action.sa_handler = record_signal;
        sigemptyset(&action.sa_mask);
        sigaction(kStopSignals[i], &action, nullptr);
      }
    }
  }
  ~StopSignals() { restore(); }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  int signal() const { return g_stop_signal; }
  void restore() {
    for (size_t i = 0; i < kStopSignals.size() && !restored_; ++i) {
      sigaction(kStopSignals[i], &previous_[i], nullptr);
    }
    restored_ = true;
  }

 private:
  std::array<struct sigaction, kStopSignals.size()> previous_{};
  bool restored_ = false;
};

std::string signal_text(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  const char* text = strsignal(sig);
  return fmt::format("{} (SIG{}: {})", sig, abbrev != nullptr ? abbrev : "?",
                     text != nullptr ? text : "unknown");
}

// Ends this process by `sig`, as a shell expects of a stopped command.
[[noreturn]] void end_by(int sig, StopSignals& signals) {
  std::fflush(nullptr);
  signals.restore();
  std::signal(sig, SIG_DFL);
  raise(sig);
  _exit(128 + sig);
}

// Group sizes a TP size's schemes use: TP itself, and K and TP / K of every
// FlashComm2 K.
std::vector<int> group_sizes_of(int tp) {
  std::vector<int> sizes = {tp};
  for (int k = 2; k < tp; ++k) {
    if (tp % k == 0) {
      sizes.push_back(k);
      sizes.push_back(tp / k);
    }
  }
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  return sizes;
}

// Buffers of the size of a layer's collectives, far beyond the bucket's
// depth, so that the fit is the bucket's rate rather than the burst's; but
// none whose AllReduce over `tp` ranks takes the link more than a quarter
// of a second, and at least the two smallest.
std::vector<std::int64_t> calibration_buffers(int tp, double rate_bps) {
  const std::int64_t candidates[] = {64 << 10, 256 << 10, 1 << 20, 4 << 20};
  std::vector<std::int64_t> sizes;
  for (std::int64_t s : candidates) {
    const double seconds =
        static_cast<double>(bytes_sent(CommOp::all_reduce, tp, s)) * tp / (rate_bps / 8.0);
    if (sizes.size() < 2 || seconds <= 0.25) {
      sizes.push_back(s);
    }
  }
  return sizes;
}

json match_json(const testbed::RateMatch& m) {
  return {{"profile", m.profile},
          {"tp", m.tp_size},
          {"profile_gemm_flops", m.profile_gemm_flops},
          {"profile_link_Bps", m.profile_link_Bps},
          {"profile_latency_s", m.profile_latency_s},
          {"profile_element_bytes", m.profile_element_bytes},
          {"machine_gemm_flops", m.machine_gemm_flops},
          {"machine_element_bytes", m.machine_element_bytes},
          {"per_rank_Bps", m.per_rank_Bps},
          {"rate_Bps", m.rate_Bps}};
}

void write_json(const std::filesystem::path& path, const json& doc) {
  std::ofstream f(path);
  f << doc.dump(2) << "\n";
  f.close();
  if (f.fail()) {
    throw ConfigError(fmt::format("--out: cannot write {}", path.string()));
  }
}

}  // namespace

void add_testbed_options(CLI::App& cmd, TestbedOptions& o) {
  cmd.add_option("--testbed", o.mode,
                 "none: the ranks talk as MPI chooses (shared memory); shaped: inside a network "
                 "namespace of this run whose loopback is shaped (tc), over TCP (needs root)")
      ->capture_default_str();
  cmd.add_option("--link-rate", o.link_rate,
                 "with --testbed shaped: the loopback's rate, all ranks together, e.g. 800mbit, "
                 "1gbit");
  cmd.add_option("--link-delay", o.link_delay,
                 "with --testbed shaped: delay every packet (netem), e.g. 2ms");
  cmd.add_option("--match-profile", o.match_profile,
                 "with --testbed shaped: choose the rate so that this machine's GEMM rate over the "
                 "link's keeps a hardware profile's FLOPs per byte (a built-in name or JSON file)");
}

TestbedPlan check_testbed_options(const TestbedOptions& o, const std::vector<int>& tp_sizes) {
  TestbedPlan plan;
  if (o.mode != "none" && o.mode != "shaped") {
    throw ConfigError(fmt::format("--testbed {} is not one of none, shaped", o.mode));
  }
  plan.shaped = o.mode == "shaped";
  if (!plan.shaped) {
    for (const auto& [flag, value] :
         {std::pair<const char*, const std::string&>{"--link-rate", o.link_rate},
          {"--link-delay", o.link_delay},
          {"--match-profile", o.match_profile}}) {
      if (!value.empty()) {
        throw ConfigError(
            fmt::format("{} {} shapes the testbed's link: it needs --testbed shaped", flag, value));
      }
    }
    return plan;
  }
  if (o.link_rate.empty() == o.match_profile.empty()) {
    throw ConfigError(
        o.link_rate.empty()
            ? std::string("--testbed shaped needs the link's rate: --link-rate RATE (e.g. "
                          "800mbit) or --match-profile NAME")
            : fmt::format("--link-rate {} and --match-profile {} both choose the link's rate: "
                          "give one",
                          o.link_rate, o.match_profile));
  }
  const int largest = *std::max_element(tp_sizes.begin(), tp_sizes.end());
  if (largest < 2) {
    throw ConfigError(
        fmt::format("--testbed shaped needs a --tp above 1: one rank sends nothing over the link, "
                    "got --tp {}",
                    largest));
  }
  if (!o.link_rate.empty()) {
    plan.rate_bps = testbed::parse_link_rate(o.link_rate);
  }
  if (!o.link_delay.empty()) {
    plan.delay_s = testbed::parse_link_delay(o.link_delay);
  }
  if (!o.match_profile.empty()) {
    try {
      plan.match = resolve_profile(o.match_profile);
    } catch (const ConfigError& e) {
      throw ConfigError(fmt::format("--match-profile: {}", e.what()));
    }
    if (tp_sizes.size() != 1) {
      throw ConfigError(fmt::format(
          "--match-profile {} matches the link to one TP size (its ranks share the link), but "
          "--tp has {}; run each TP size on its own",
          o.match_profile, tp_sizes.size()));
    }
  }
  return plan;
}

int run_in_testbed(const TestbedPlan& plan, int world_size, const std::string& out, int argc,
                   char** argv) {
  testbed::require_root();
  const testbed::Tools tools = testbed::find_tools();
  StopSignals signals;
  for (const std::string& stale : testbed::remove_stale_namespaces(tools)) {
    fmt::print(stderr, "testbed: removed the network namespace {} left by an earlier run\n", stale);
  }

  // 1. The rate: given, or matched to a profile from this machine's GEMM
  //    rate with the job's ranks running at once.
  json doc = {{"namespace", nullptr}, {"ranks", world_size}, {"match", nullptr}};
  testbed::LinkShape shape{plan.rate_bps, plan.delay_s};
  if (plan.match) {
    fmt::print(stderr, "testbed: measuring this machine's GEMM rate with {} processes at once...\n",
               world_size);
    const double machine = testbed::measure_concurrent_gemm_flops(world_size);
    const testbed::RateMatch m = testbed::match_link_rate(*plan.match, world_size, machine);
    fmt::print("{}\n", m.explain());
    shape.rate_bps = m.rate_bps;
    doc["match"] = match_json(m);
  }
  if (signals.signal() != 0) {
    fmt::print(stderr, "flashcomm: stopped by signal {} before the job started\n",
               signal_text(signals.signal()));
    end_by(signals.signal(), signals);
  }

  // 2. The namespace, removed by `ns` on every way out of here.
  testbed::ShapedNamespace ns(testbed::namespace_name(getpid()), shape, tools);
  const std::int64_t burst = testbed::tbf_burst_bytes(shape.rate_bps);
  doc["namespace"] = ns.name();
  doc["rate_bps"] = shape.rate_bps;
  doc["tc_rate"] = testbed::tc_rate(shape.rate_bps);
  doc["burst_bytes"] = burst;
  doc["mtu_bytes"] = testbed::kLinkMtuBytes;
  doc["delay_s"] = shape.delay_s;
  doc["transport"] =
      "OpenMPI ob1 over TCP (btl tcp,self, with its progress thread) on the namespace's loopback "
      "only";
  fmt::print(
      "testbed: network namespace {}, its loopback (MTU {}) shaped to {} for all ranks together "
      "(tc "
      "tbf, burst {} bytes){}; OpenMPI over TCP on that loopback only\n",
      ns.name(), testbed::kLinkMtuBytes, testbed::human_rate(shape.rate_bps), burst,
      shape.delay_s > 0 ? fmt::format(", {} ms delay per packet (netem)", shape.delay_s * 1e3)
                        : std::string());
  std::fflush(stdout);
  if (signals.signal() != 0) {
    ns.remove();
    fmt::print(stderr,
               "flashcomm: stopped by signal {} before the job started; removed the network "
               "namespace {}\n",
               signal_text(signals.signal()), ns.name());
    end_by(signals.signal(), signals);
  }

  // 3. The job, inside it.
  setenv(kTestbedVar, doc.dump().c_str(), 1);
  const LaunchResult result =
      launch_job(argc, argv, world_size, {ns.exec_prefix(), mpi_over_loopback_args()});
  unsetenv(kTestbedVar);

  // 4. What the link carried, then the namespace goes.
  const testbed::LinkStats stats = ns.stats();
  if (stats.dropped > 0) {
    fmt::print(stderr,
               "flashcomm: warning: the shaped loopback dropped {} packets; TCP's retransmissions "
               "make the timings slower than the link\n",
               stats.dropped);
  }
  const bool removed = ns.remove();
  doc["link_stats"] = {{"bytes", stats.bytes},
                       {"packets", stats.packets},
                       {"dropped", stats.dropped},
                       {"overlimits", stats.overlimits}};
  fmt::print(stderr,
             "testbed: the shaped loopback carried {:.1f} MB in {} packets ({} waited for tokens, "
             "{} dropped); {} the network namespace {}\n",
             static_cast<double>(stats.bytes) / 1e6, stats.packets, stats.overlimits, stats.dropped,
             removed ? "removed" : "could not remove", ns.name());

  const int sig = result.stop_signal != 0 ? result.stop_signal : signals.signal();
  if (sig != 0) {
    end_by(sig, signals);
  }
  if (result.exit_code == 0) {
    write_json(std::filesystem::path(out) / "testbed.json", doc);
  }
  return result.exit_code;
}

json testbed_of_job(const TestbedPlan& plan) {
  if (!plan.shaped) {
    return nullptr;
  }
  const char* value = std::getenv(kTestbedVar);
  json doc = value != nullptr ? json::parse(value, nullptr, false) : json();
  const auto rate = doc.is_object() ? doc.find("rate_bps") : doc.end();
  if (!doc.is_object() || !doc.contains("namespace") || rate == doc.end() || !rate->is_number() ||
      !(rate->get<double>() >= testbed::kMinRateBps &&
        rate->get<double>() <= testbed::kMaxRateBps)) {
    throw ConfigError(
        "--testbed shaped starts its own ranks inside a network namespace: run flashcomm bench "
        "without mpiexec");
  }
  return doc;
}

std::map<int, HardwareProfile> calibrate_testbed_link(MPI_Comm world,
                                                      const std::vector<int>& tp_sizes,
                                                      double rate_bps) {
  std::map<int, HardwareProfile> profiles;
  for (int tp : tp_sizes) {
    if (tp < 2) {
      continue;
    }
    CalibrateOptions options;
    options.repeats = 3;
    options.buffer_bytes = calibration_buffers(tp, rate_bps);
    options.group_sizes = group_sizes_of(tp);
    profiles[tp] = testbed::calibrate_busy_link(world, tp, options);
  }
  if (!profiles.empty() && tp_sizes.front() == 1) {
    profiles[1] = profiles.rbegin()->second;  // no collective at TP 1
  }
  return profiles;
}

json link_fits_json(const std::map<int, HardwareProfile>& profiles) {
  json list = json::array();
  for (const auto& [tp, p] : profiles) {
    if (tp < 2) {
      continue;
    }
    for (const auto& [op, fits] : p.collectives) {
      for (const CollectiveFit& f : fits) {
        list.push_back({{"tp", tp},
                        {"op", to_string(op)},
                        {"group_size", f.group_size},
                        {"latency_s", f.latency_s},
                        {"bandwidth_Bps", f.bandwidth_Bps}});
      }
    }
  }
  return list;
}

void print_testbed(const json& t) {
  const double rate = t.value("rate_bps", 0.0);
  const int ranks = t.value("ranks", 1);
  fmt::print(
      "\ntestbed: {} ranks in network namespace {}, loopback shaped to {} for all ranks "
      "together{}",
      ranks, t.value("namespace", std::string("?")), testbed::human_rate(rate),
      t.value("delay_s", 0.0) > 0
          ? fmt::format(", {} ms per packet delay", t.value("delay_s", 0.0) * 1e3)
          : std::string());
  if (t.contains("match") && t["match"].is_object()) {
    fmt::print(", matched to {} at TP {}", t["match"].value("profile", std::string("?")),
               t["match"].value("tp", 0));
  }
  fmt::print("\n");
  if (!t.contains("link_fits")) {
    return;
  }
  for (const json& f : t["link_fits"]) {
    if (f.value("op", std::string()) != "all_reduce") {
      continue;
    }
    const int tp = f.value("tp", 0);
    const double share = rate / 8.0 / std::max(tp, 1);
    fmt::print(
        "  TP {}: all_reduce on {} ranks (all {} sending): bus bandwidth {:.4g} MB/s per rank, "
        "{:.0f}% of the link's share (rate / {} = {:.4g} MB/s), latency {:.0f} us\n",
        tp, f.value("group_size", 0), tp, f.value("bandwidth_Bps", 0.0) / 1e6,
        f.value("bandwidth_Bps", 0.0) / share * 100.0, tp, share / 1e6,
        f.value("latency_s", 0.0) * 1e6);
  }
}

}  // namespace flashcomm::cli
