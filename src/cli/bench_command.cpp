// `flashcomm bench`: the prefill benchmark. Runs every requested scheme, TP
// size and token count on a model (a checkpoint, or a preset with seeded
// random weights), prints measured beside predicted per-layer times, and
// writes CSV, JSON and a PNG plot (gnuplot).
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>

#include "cli/command.hpp"
#include "cli/fault.hpp"
#include "cli/launcher.hpp"
#include "cli/mpi_session.hpp"
#include "cli/options.hpp"
#include "cli/run_command.hpp"
#include "cli/testbed.hpp"
#include "flashcomm/bench.hpp"
#include "flashcomm/calibrate.hpp"
#include "flashcomm/checkpoint.hpp"
#include "flashcomm/error.hpp"
#include "flashcomm/log.hpp"
#include "flashcomm/presets.hpp"

namespace flashcomm::cli {

namespace {

using nlohmann::json;

struct BenchCommandOptions {
  std::string model;
  int layers = -1;  // unset: all of a checkpoint, 1 of a preset
  std::vector<int> tokens = {16, 64, 256};
  std::vector<int> tp = {2};
  std::vector<std::string> schemes;
  std::vector<std::string> variants;  // see BenchOptions::variants
  int overlap_chunks = 4;
  int warmup = 2;
  int repeats = 5;
  std::string hardware;  // empty: calibrate in this run
  std::string out = "bench-out";
  std::string log_level;
  TestbedOptions testbed;
};

// A preset or a shape: seeded random weights, no file.
bool is_preset(const std::string& name) {
  return named_model(name).has_value();
}

// Sorted, without repeats: a repeated value would be measured twice and
// compared with itself.
template <typename T>
void sort_unique(std::vector<T>& v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
}

std::string trimmed(const std::string& s) {
  const auto first = s.find_first_not_of(" \t");
  const auto last = s.find_last_not_of(" \t");
  return first == std::string::npos ? std::string() : s.substr(first, last - first + 1);
}

void check_options(BenchCommandOptions& o) {
  if (o.tokens.empty() || o.tp.empty()) {
    throw ConfigError("--tokens and --tp need at least one value each");
  }
  sort_unique(o.tokens);
  sort_unique(o.tp);
  for (std::string& s : o.schemes) {
    s = trimmed(s);
  }
  sort_unique(o.schemes);
  for (int n : o.tokens) {
    if (n < 1) {
      throw ConfigError(fmt::format("--tokens {} must be at least 1", n));
    }
  }
  for (int t : o.tp) {
    if (t < 1 || t > 64) {
      throw ConfigError(fmt::format("--tp {} must be between 1 and 64 on one machine", t));
    }
  }
  for (const std::string& s : o.schemes) {
    if (s != "tp" && s != "fc1" && s != "fc2" && s != "fc1+fc2") {
      throw ConfigError(fmt::format("--schemes {} is not one of tp, fc1, fc2, fc1+fc2", s));
    }
  }
  for (std::string& v : o.variants) {
    v = trimmed(v);
  }
  sort_unique(o.variants);
  for (const std::string& v : o.variants) {
    if (v != "int8" && v != "bf16" && v != "overlap" && v != "mlp") {
      throw ConfigError(fmt::format("--variants {} is not one of int8, bf16, overlap, mlp", v));
    }
  }
  if (o.overlap_chunks != BenchCommandOptions{}.overlap_chunks &&
      std::find(o.variants.begin(), o.variants.end(), "overlap") == o.variants.end()) {
    log::warn("--overlap-chunks sets the chunks of --variants overlap, which is not asked for");
  }
  if (o.overlap_chunks < 2 || o.overlap_chunks > 64) {
    throw ConfigError(
        fmt::format("--overlap-chunks {} must be between 2 and 64", o.overlap_chunks));
  }
  if (o.layers != -1 && o.layers < 1) {
    throw ConfigError(
        fmt::format("--layers {} must be at least 1 (omit it for the default)", o.layers));
  }
  if (o.warmup < 0 || o.warmup > 1000) {
    throw ConfigError(fmt::format("--warmup {} must be between 0 and 1000", o.warmup));
  }
  if (o.repeats < 1 || o.repeats > 1000) {
    throw ConfigError(fmt::format("--repeats {} must be between 1 and 1000", o.repeats));
  }
  if (o.out.empty()) {
    throw ConfigError("--out is empty, expected a directory");
  }
  std::error_code error;
  std::filesystem::create_directories(o.out, error);
  if (error || !std::filesystem::is_directory(o.out) || access(o.out.c_str(), W_OK) != 0) {
    throw ConfigError(fmt::format("--out {} is not a writable directory{}{}", o.out,
                                  error ? ": " : "", error ? error.message() : ""));
  }
}

// Bytes one rank holds for a layout: its shard of every layer (FlashComm2's
// wider o_proj block included) and its KV cache.
double rank_bytes(const ModelConfig& c, const ParallelConfig& pc) {
  const HeadShard h = head_shard(c, pc.tp_size, 0);
  const double d = c.d_model;
  const double q_local = static_cast<double>(h.n_q_heads) * c.head_dim;
  const double kv_local = static_cast<double>(h.n_kv_heads) * c.head_dim;
  const double wo_cols =
      pc.flashcomm2_on() ? static_cast<double>(c.q_dim()) / pc.otp_size() : q_local;
  const double hid = static_cast<double>(c.hidden_dim) / pc.tp_size;
  const double layer = (q_local + 2 * kv_local) * d + d * wo_cols + 3 * d * hid + 2 * d;
  const double kv_cache = 2.0 * c.seq_len * kv_local;
  return 4.0 * c.n_layers * (layer + kv_cache);
}

// The largest TP group's weights must fit the machine: refuse up front
// rather than be killed by the kernel halfway.
void check_memory(const BenchCommandOptions& o, const ModelConfig& c, bool from_file) {
  const double machine =
      static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
  const int ranks = o.tp.back();
  // A llama2.c checkpoint is read whole by every rank; an HF one is mapped,
  // each rank reading only its shard.
  const bool whole_file = from_file && checkpoint_format(o.model) == CheckpointFormat::llama2c;
  const double file_bytes =
      whole_file
          ? static_cast<double>(ranks) * static_cast<double>(std::filesystem::file_size(o.model))
          : 0.0;
  for (int tp : o.tp) {
    for (const ParallelConfig& pc : candidate_schemes(tp, 1)) {
      if (!o.schemes.empty() &&
          std::find(o.schemes.begin(), o.schemes.end(), scheme_family(pc)) == o.schemes.end()) {
        continue;
      }
      const double need = tp * rank_bytes(c, pc) + file_bytes;
      if (machine > 0 && need > 0.8 * machine) {
        throw ConfigError(fmt::format(
            "{} layer(s) of {} at --tp {} ({}) need about {:.1f} GiB, more than 80% of this "
            "machine's {:.1f} GiB; use fewer --layers or --tokens",
            c.n_layers, o.model, tp, scheme_name(pc), need / (1 << 30), machine / (1 << 30)));
      }
    }
  }
}

// The model's configuration with the layers the benchmark runs and a context
// just long enough for the largest token count.
ModelConfig bench_config(const BenchCommandOptions& o) {
  if (!is_preset(o.model) && !std::filesystem::exists(o.model)) {
    throw ConfigError(fmt::format(
        "--model {} is neither a preset ({}), a shape:... nor a checkpoint file or directory",
        o.model, fmt::join(preset_names(), ", ")));
  }
  ModelConfig c = is_preset(o.model) ? *named_model(o.model) : read_checkpoint_config(o.model);
  const int layers = o.layers > 0 ? o.layers : (is_preset(o.model) ? 1 : c.n_layers);
  if (layers > c.n_layers) {
    throw ConfigError(fmt::format("--layers {} exceeds the model's {} layers", layers, c.n_layers));
  }
  c.n_layers = layers;
  const int longest = *std::max_element(o.tokens.begin(), o.tokens.end());
  if (longest > c.seq_len) {
    throw ConfigError(
        fmt::format("--tokens {} exceeds the model's context (seq_len) {}", longest, c.seq_len));
  }
  c.seq_len = longest;
  int runnable = 0;
  for (int tp : o.tp) {
    ParallelConfig pc;
    pc.tp_size = tp;
    check_parallel_config(c, pc, -1);
    for (const ParallelConfig& s : candidate_schemes(tp, 1)) {
      runnable += o.schemes.empty() || std::find(o.schemes.begin(), o.schemes.end(),
                                                 scheme_family(s)) != o.schemes.end();
    }
  }
  if (runnable == 0) {
    throw ConfigError(fmt::format(
        "no scheme of --schemes {} runs at --tp {} (FlashComm1 and FlashComm2 need TP > 1)",
        fmt::join(o.schemes, ","), fmt::join(o.tp, ",")));
  }
  return c;
}

// A speed-up without its baseline in the run (0) is left empty, not zero.
std::string optional_number(double v) {
  return v > 0 ? fmt::format("{:.6g}", v) : std::string();
}
json optional_json(double v) {
  return v > 0 ? json(v) : json(nullptr);
}

std::string csv_header() {
  std::string h =
      "model,layers,tp,scheme,flashcomm1,flashcomm2,tokens,median_s,min_s,max_s,compute_s,comm_s,"
      "bytes_per_rank,speedup_vs_tp,speedup_vs_fc1,predicted_s,floor_s,variant,base_median_s,"
      "base_comm_s";
  for (int i = 0; i < kPhaseCount; ++i) {
    h += fmt::format(",{}_s", to_string(static_cast<Phase>(i)));
  }
  return h + "\n";
}

std::string csv_row(const std::string& model, const BenchRow& r) {
  std::string line = fmt::format(
      "{},{},{},\"{}\",{},{},{},{:.9g},{:.9g},{:.9g},{:.9g},{:.9g},{},{},{},{:.9g},{:.9g}", model,
      r.n_layers, r.parallel.tp_size, r.scheme, r.parallel.flashcomm1 ? 1 : 0,
      r.parallel.flashcomm2, r.n_tokens, r.median_s, r.min_s, r.max_s, r.compute_s, r.comm_s,
      r.bytes_per_rank, optional_number(r.speedup_vs_tp), optional_number(r.speedup_vs_fc1),
      r.predicted_s, r.floor_s);
  line += fmt::format(",{},{},{}", r.variant, optional_number(r.base_median_s),
                      optional_number(r.base_comm_s));
  for (double s : r.phases.seconds) {
    line += fmt::format(",{:.9g}", s);
  }
  return line + "\n";
}

json row_json(const BenchRow& r) {
  json phases = json::object();
  for (int i = 0; i < kPhaseCount; ++i) {
    if (r.phases.seconds[static_cast<size_t>(i)] > 0) {
      phases[to_string(static_cast<Phase>(i))] = r.phases.seconds[static_cast<size_t>(i)];
    }
  }
  return {{"tp", r.parallel.tp_size},
          {"scheme", r.scheme},
          {"flashcomm1", r.parallel.flashcomm1},
          {"flashcomm2", r.parallel.flashcomm2},
          {"tokens", r.n_tokens},
          {"layers", r.n_layers},
          {"per_layer", {{"median_s", r.median_s}, {"min_s", r.min_s}, {"max_s", r.max_s}}},
          {"compute_s", r.compute_s},
          {"comm_s", r.comm_s},
          {"phases_s", phases},
          {"bytes_per_rank", r.bytes_per_rank},
          {"speedup_vs_tp", optional_json(r.speedup_vs_tp)},
          {"speedup_vs_fc1", optional_json(r.speedup_vs_fc1)},
          {"predicted_s", r.predicted_s},
          {"predicted_comm_s", r.predicted_comm_s},
          {"floor_s", r.floor_s},
          {"variant", r.variant.empty() ? json(nullptr) : json(r.variant)},
          {"base_median_s", optional_json(r.base_median_s)},
          {"base_comm_s", optional_json(r.base_comm_s)},
          {"saved_vs_base_s",
           r.base_median_s > 0 ? json(r.base_median_s - r.median_s) : json(nullptr)}};
}

void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  f.close();
  if (f.fail()) {
    throw ConfigError(fmt::format("--out: cannot write {}", path.string()));
  }
}

// One line per (TP, scheme): per-layer median time against the token count.
void plot(const std::filesystem::path& dir, const std::string& model,
          const std::vector<BenchRow>& rows) {
  std::vector<std::pair<int, std::string>> lines;
  for (const BenchRow& r : rows) {
    const auto key = std::make_pair(r.parallel.tp_size, r.scheme);
    if (std::find(lines.begin(), lines.end(), key) == lines.end()) {
      lines.push_back(key);
    }
  }
  std::string data;
  for (const auto& [tp, scheme] : lines) {
    data += fmt::format("# TP {} {}\n", tp, scheme);
    for (const BenchRow& r : rows) {
      if (r.parallel.tp_size == tp && r.scheme == scheme) {
        data += fmt::format("{} {:.9g}\n", r.n_tokens, r.median_s * 1e3);
      }
    }
    data += "\n\n";
  }
  write_file(dir / "bench.dat", data);
  std::string script = fmt::format(
      "set terminal pngcairo size 1000,640 noenhanced\nset output '{}'\n"
      "set title 'flashcomm prefill, {} (median per layer)'\nset xlabel 'prompt tokens'\n"
      "set ylabel 'ms per layer'\nset logscale xy\nset key left top\nset grid\nplot ",
      (dir / "bench.png").string(), model);
  for (size_t i = 0; i < lines.size(); ++i) {
    script += fmt::format("{}'{}' index {} with linespoints title 'TP {} {}'", i == 0 ? "" : ", ",
                          (dir / "bench.dat").string(), i, lines[i].first, lines[i].second);
  }
  write_file(dir / "bench.gp", script + "\n");
  // gnuplot's own warnings (say, one token count: an empty x range) stay out
  // of the report; a failure is reported below.
  const std::string command =
      fmt::format("gnuplot '{}' >/dev/null 2>&1", (dir / "bench.gp").string());
  if (std::system(command.c_str()) != 0) {
    log::warn("gnuplot failed or is missing (apt-get install gnuplot-nox); the plot script is {}",
              (dir / "bench.gp").string());
  }
}

void report(const BenchCommandOptions& o, const std::map<int, HardwareProfile>& profiles,
            const std::vector<BenchRow>& rows, const json& testbed) {
  fmt::print("\n{:>3} {:<28} {:>6} {:>22} {:>9} {:>9} {:>12} {:>6} {:>6} {:>9} {:>7} {:>9} {:>6}\n",
             "tp", "scheme", "tokens", "ms/layer (min-max)", "compute", "comm", "bytes/rank",
             "vs TP", "vs FC1", "predicted", "error", "floor", "floor%");
  for (const BenchRow& r : rows) {
    fmt::print(
        "{:>3} {:<28} {:>6} {:>22} {:>9.3f} {:>9.3f} {:>12} {:>6} {:>6} "
        "{:>9.3f} {:>+6.0f}% {:>9.3f} {:>5.0f}%\n",
        r.parallel.tp_size, r.scheme, r.n_tokens,
        fmt::format("{:.3f} ({:.3f}-{:.3f})", r.median_s * 1e3, r.min_s * 1e3, r.max_s * 1e3),
        r.compute_s * 1e3, r.comm_s * 1e3, r.bytes_per_rank,
        r.speedup_vs_tp > 0 ? fmt::format("{:.2f}", r.speedup_vs_tp) : std::string("-"),
        r.speedup_vs_fc1 > 0 ? fmt::format("{:.2f}", r.speedup_vs_fc1) : std::string("-"),
        r.predicted_s * 1e3, (r.predicted_s / r.median_s - 1.0) * 100.0, r.floor_s * 1e3,
        r.floor_s / r.median_s * 100.0);
  }
  fmt::print(
      "\ntimes in ms per layer; predicted: the cost model; floor: FLOPs at the sgemm rate "
      "+ collective bytes at the fitted bandwidth\n");
  bool any_variant = false;
  for (const BenchRow& r : rows) {
    if (r.variant.empty() || r.base_median_s <= 0) {
      continue;
    }
    if (!any_variant) {
      fmt::print("\n{:>3} {:<40} {:>6} {:>9} {:>9} {:>9} {:>9} {:>12}\n", "tp", "variant", "tokens",
                 "base ms", "ms", "saved ms", "base comm", "comm (exp.)");
      any_variant = true;
    }
    fmt::print("{:>3} {:<40} {:>6} {:>9.3f} {:>9.3f} {:>+9.3f} {:>9.3f} {:>12.3f}\n",
               r.parallel.tp_size, r.scheme, r.n_tokens, r.base_median_s * 1e3, r.median_s * 1e3,
               (r.base_median_s - r.median_s) * 1e3, r.base_comm_s * 1e3, r.comm_s * 1e3);
  }
  if (any_variant) {
    fmt::print(
        "saved: the same scheme without the variant minus with it; comm: communication phases, "
        "under overlap the part left exposed\n");
  }
  json profile_list = json::array();
  for (const auto& [tp, p] : profiles) {
    fmt::print(
        "  TP {}: profile '{}', sgemm {:.1f} GFLOP/s, memcpy {:.1f} GB/s, exp {:.0f} M/s "
        "per rank\n",
        tp, p.name, p.gemm_flops / 1e9, p.memory_bandwidth_Bps / 1e9, p.exp_per_s / 1e6);
    profile_list.push_back({{"tp", tp},
                            {"name", p.name},
                            {"gemm_flops", p.gemm_flops},
                            {"memory_bandwidth_Bps", p.memory_bandwidth_Bps},
                            {"exp_per_s", p.exp_per_s}});
  }

  const std::filesystem::path dir(o.out);
  std::filesystem::create_directories(dir);
  std::string csv = csv_header();
  json list = json::array();
  for (const BenchRow& r : rows) {
    csv += csv_row(o.model, r);
    list.push_back(row_json(r));
  }
  write_file(dir / "bench.csv", csv);
  json doc = {{"model", o.model},
              {"profiles", profile_list},
              {"warmup", o.warmup},
              {"repeats", o.repeats},
              {"rows", list}};
  if (!testbed.is_null()) {
    // The shaped link beside the rows; when this run calibrated it, each TP
    // size's profile is saved for `flashcomm plan --hardware`.
    print_testbed(testbed);
    if (o.hardware.empty()) {
      for (const auto& [tp, p] : profiles) {
        save_profile(p, (dir / fmt::format("profile-tp{}.json", tp)).string());
      }
    }
    doc["testbed"] = testbed;
  }
  write_file(dir / "bench.json", doc.dump(2) + "\n");
  plot(dir, o.model, rows);
  fmt::print("wrote {0}/bench.csv, {0}/bench.json, {0}/bench.png (from bench.gp and bench.dat)\n",
             dir.string());
}

int bench_main(const BenchCommandOptions& raw, int argc, char** argv) {
  BenchCommandOptions o = raw;
  check_options(o);
  const ModelConfig config = bench_config(o);
  const TestbedPlan testbed = check_testbed_options(o.testbed, o.tp);
  check_memory(o, config, !is_preset(o.model));
  std::optional<HardwareProfile> given_profile;
  if (!o.hardware.empty()) {
    given_profile = resolve_profile(o.hardware);
  }
  const int ranks = o.tp.back();
  arm_fault_from_environment(ranks, {"bench"});
  if (!under_mpi_launcher() && testbed.shaped) {
    log::init(0, o.log_level);
    return run_in_testbed(testbed, ranks, o.out, argc, argv);
  }
  if (!under_mpi_launcher() && ranks > 1) {
    log::init(0, o.log_level);
    return relaunch_under_mpiexec(argc, argv, ranks);
  }
  json testbed_info = testbed_of_job(testbed);
  MpiSession mpi;
  const int rank = MpiSession::rank();
  log::init(rank, o.log_level);
  MpiSession::share_cores_among_local_ranks();
  if (MpiSession::size() < ranks) {
    if (rank == 0) {
      fmt::print(stderr, "flashcomm: error: the job has {} ranks but --tp {} needs {}\n",
                 MpiSession::size(), ranks, ranks);
    }
    return kExitUsage;
  }
  try {
    fault_point("bench");
    // Weights: a checkpoint's own (its first layers), or seeded random ones
    // whose shard each rank computes for itself.
    std::optional<Checkpoint> checkpoint;
    std::unique_ptr<WeightSource> source;
    if (is_preset(o.model)) {
      source = std::make_unique<RandomSource>(config, 1);
    } else {
      checkpoint.emplace(o.model);
      source = std::make_unique<ConfigViewSource>(checkpoint->source(), config);
    }

    HardwareProfile profile;
    std::map<int, HardwareProfile> link_profiles;  // the shaped link's, by TP size
    if (given_profile) {
      profile = *given_profile;
      // The prediction is of the run being measured: the engine's fp32
      // elements, whatever width the profile's own hardware would use.
      profile.activation_bytes = 4;
    } else if (testbed.shaped) {
      if (rank == 0) {
        fmt::print(stderr, "calibrating the shaped link (use --hardware FILE to skip)...\n");
      }
      link_profiles =
          calibrate_testbed_link(MPI_COMM_WORLD, o.tp, testbed_info.value("rate_bps", 0.0));
      profile = link_profiles.rbegin()->second;
    } else {
      if (rank == 0) {
        fmt::print(stderr, "calibrating this machine (use --hardware FILE to skip)...\n");
      }
      CalibrateOptions copt;
      copt.repeats = 5;
      copt.buffer_bytes = {4 << 10, 64 << 10, 1 << 20};
      for (int tp : o.tp) {
        if (tp > 1 && std::find(copt.group_sizes.begin(), copt.group_sizes.end(), tp) ==
                          copt.group_sizes.end()) {
          copt.group_sizes.push_back(tp);
        }
        for (int k = 2; k < tp; ++k) {
          if (tp % k == 0) {
            for (int g : {k, tp / k}) {
              if (std::find(copt.group_sizes.begin(), copt.group_sizes.end(), g) ==
                  copt.group_sizes.end()) {
                copt.group_sizes.push_back(g);
              }
            }
          }
        }
      }
      std::sort(copt.group_sizes.begin(), copt.group_sizes.end());
      profile = calibrate(MPI_COMM_WORLD, copt).profile;
    }

    BenchOptions bopt;
    bopt.token_counts = o.tokens;
    bopt.tp_sizes = o.tp;
    bopt.schemes = o.schemes;
    bopt.variants = o.variants;
    bopt.overlap_chunks = o.overlap_chunks;
    bopt.warmup = o.warmup;
    bopt.repeats = o.repeats;
    const auto progress = [](const BenchRow& r, int done, int total) {
      fmt::print(stderr, "[{}/{}] tp {} {} tokens {}: {:.3f} ms per layer\n", done, total,
                 r.parallel.tp_size, r.scheme, r.n_tokens, r.median_s * 1e3);
    };
    // A calibrated profile's compute rates depend on how many ranks share the
    // cores: re-measure them for each TP size, as that many ranks run.
    std::map<int, HardwareProfile> profiles;
    for (int tp : o.tp) {
      const HardwareProfile& base = link_profiles.count(tp) != 0 ? link_profiles.at(tp) : profile;
      profiles[tp] = o.hardware.empty() ? with_compute_rates_of(MPI_COMM_WORLD, base, tp) : base;
    }
    const auto profile_for = [&profiles](int tp) -> const HardwareProfile& {
      return profiles.at(tp);
    };
    const std::vector<BenchRow> rows =
        run_bench(MPI_COMM_WORLD, *source, bopt, profile_for, progress);
    if (rank == 0) {
      fmt::print("model {} ({} layer{}), {} rank{}, warm-up {}, repeats {}\n", o.model,
                 config.n_layers, config.n_layers == 1 ? "" : "s", MpiSession::size(),
                 MpiSession::size() == 1 ? "" : "s", o.warmup, o.repeats);
      if (!link_profiles.empty()) {
        testbed_info["link_fits"] = link_fits_json(profiles);
      }
      report(o, profiles, rows, testbed_info);
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "flashcomm: error on rank {}: {}\n", rank, e.what());
    MPI_Abort(MPI_COMM_WORLD, exit_code_for(e));
  }
  return kExitOk;
}

}  // namespace

Command add_bench_command(CLI::App& app, int argc, char** argv) {
  auto o = std::make_shared<BenchCommandOptions>();
  CLI::App* cmd = app.add_subcommand("bench", "measure prefill per layer for each scheme");
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("--model", o->model,
                  "a preset name, a llama2.c checkpoint or an HF checkpoint directory")
      ->required();
  cmd->add_option("--layers", o->layers, "layers to run (default: 1 of a preset, all of a file)")
      ->transform(decimal_integer());
  cmd->add_option("--tokens", o->tokens, "prompt token counts, e.g. 16,64,256")
      ->delimiter(',')
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->capture_default_str();
  cmd->add_option("--tp", o->tp, "tensor-parallel sizes, e.g. 2,4")
      ->delimiter(',')
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->capture_default_str();
  cmd->add_option("--schemes", o->schemes, "tp, fc1, fc2, fc1+fc2 (default: all; fc2 = every K)")
      ->delimiter(',')
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--variants", o->variants,
                  "also measure each scheme with: int8 (--comm-quant int8), bf16 (--comm-dtype "
                  "bf16), overlap (--overlap-chunks), mlp (down_proj FlashComm2)")
      ->delimiter(',')
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--overlap-chunks", o->overlap_chunks, "chunks of the overlap variant")
      ->capture_default_str()
      ->transform(decimal_integer());
  cmd->add_option("--warmup", o->warmup, "untimed runs first")
      ->capture_default_str()
      ->transform(decimal_integer());
  cmd->add_option("--repeats", o->repeats, "timed runs; median, min and max are reported")
      ->capture_default_str()
      ->transform(decimal_integer());
  cmd->add_option("--hardware", o->hardware,
                  "profile for the predictions: a built-in name or a JSON file from calibrate "
                  "(default: calibrate in this run)");
  cmd->add_option("--out", o->out, "directory for bench.csv, bench.json, bench.png")
      ->capture_default_str();
  cmd->add_option("--log-level", o->log_level, "trace, debug, info, warn, error or off");
  add_testbed_options(*cmd, o->testbed);
  return {cmd, [o, argc, argv] { return bench_main(*o, argc, argv); }};
}

}  // namespace flashcomm::cli
