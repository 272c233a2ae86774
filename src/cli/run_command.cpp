// `flashcomm run`, in three stages on every rank:
//   1. prepare: read the model's header and the tokenizer, encode the prompts,
//      check the layout; all ranks agree on success before any computes, so a
//      bad configuration is reported once and every rank exits non-zero;
//   2. serve: each DP replica runs its prompts (prompt p goes to replica
//      p % dp_size) with greedy decoding;
//   3. report: the TP-rank-0 of each replica sends its results to world rank 0,
//      which prints them with its own collectives and writes the JSON report.
#include "cli/run_command.hpp"

#include <mpi.h>

#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <thread>
#include <tuple>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "cli/command.hpp"
#include "cli/fault.hpp"
#include "cli/launcher.hpp"
#include "cli/mpi_session.hpp"
#include "cli/prompts.hpp"
#include "cli/report.hpp"
#include "comm/mpi/mpi_check.hpp"
#include "flashcomm/checkpoint.hpp"
#include "flashcomm/context.hpp"
#include "flashcomm/cost_model.hpp"
#include "flashcomm/engine.hpp"
#include "flashcomm/error.hpp"
#include "flashcomm/kernels.hpp"
#include "flashcomm/log.hpp"
#include "flashcomm/model.hpp"
#include "flashcomm/tokenizer.hpp"
#include "flashcomm/wire.hpp"

namespace flashcomm::cli {

using nlohmann::json;

int exit_code_for(const std::exception& e) {
  if (dynamic_cast<const ConfigError*>(&e) != nullptr) {
    return kExitUsage;
  }
  if (dynamic_cast<const FormatError*>(&e) != nullptr) {
    return kExitFormat;
  }
  if (dynamic_cast<const CommError*>(&e) != nullptr) {
    return kExitComm;
  }
  return kExitRuntime;
}

namespace {

// Where FLASHCOMM_FAULT may strike in a run (see cli/fault.hpp).
const std::vector<std::string> kFaultPoints = {"prepare", "prefill", "decode"};

struct Prepared {
  ModelConfig config;
  std::unique_ptr<Tokenizer> tokenizer;  // null: none, the prompts are token ids
  std::vector<int> stop_tokens;  // generation ends before these: the tokenizer's, or none
  std::vector<Request> requests;
  int context = 0;  // KV cache capacity: the longest prompt + steps, within seq_len
  std::optional<AutoSpace> auto_space;  // --flashcomm auto: what the ranks hold and choose from
  HardwareProfile hardware;  // --flashcomm auto: the profile it predicts with
};

// --flashcomm auto: the held blocks (from the memory budget) and the
// choices the flags allow. The scheme flags themselves are the choice's.
AutoSpace auto_space_for(const RunOptions& opt, const ModelConfig& config) {
  const ParallelConfig& pc = opt.parallel;
  if (pc.flashcomm1 || pc.flashcomm2 != 0) {
    throw ConfigError(
        "--flashcomm auto chooses FlashComm1 and FlashComm2 per pass; leave out --flashcomm1 and "
        "--flashcomm2");
  }
  if (opt.memory_budget_gib &&
      !(std::isfinite(*opt.memory_budget_gib) && *opt.memory_budget_gib >= 0)) {
    throw ConfigError(fmt::format(
        "--memory-budget {} must be a finite number of GiB, 0 or more (omit it for no limit)",
        *opt.memory_budget_gib));
  }
  const double budget = opt.memory_budget_gib ? *opt.memory_budget_gib * (1 << 30)
                                              : std::numeric_limits<double>::infinity();
  // The engine holds float32 weights: o_proj's block first (the smallest K
  // that fits), then down_proj's block of --flashcomm2-mlp in what is left.
  const HeldBlocks held = held_blocks_for_budget(config, pc.tp_size, budget, 4, false);
  if (pc.flashcomm2_mlp > 0) {
    const double o_proj = extra_o_proj_bytes(config, pc.tp_size, held.o_proj_k, 4);
    const double down = extra_down_proj_bytes(config, pc.tp_size, pc.flashcomm2_mlp, 4);
    if (o_proj + down > budget) {
      throw ConfigError(fmt::format(
          "--flashcomm2-mlp {} holds {:.1f} MiB of extra down_proj weights per rank, over what "
          "--memory-budget {} GiB leaves after o_proj's {:.1f} MiB",
          pc.flashcomm2_mlp, down / (1 << 20), *opt.memory_budget_gib, o_proj / (1 << 20)));
    }
  }
  AutoSpace space;
  space.tp_size = pc.tp_size;
  space.dp_size = pc.dp_size;
  space.o_proj_k = held.o_proj_k;
  space.mlp_k = pc.flashcomm2_mlp;  // down_proj only when asked for, at that K_mlp
  space.allow_int8 = pc.comm_quant == CommQuant::int8;
  space.allow_bf16 = pc.comm_dtype == CommDtype::bf16;
  space.chunk_options = {1};
  if (pc.overlap_chunks > 1) {
    space.chunk_options.push_back(pc.overlap_chunks);
  }
  auto_candidates(space);  // validates
  return space;
}

// Fails now, not after the whole run, when the report cannot be written.
void check_json_path(const std::string& path) {
  if (path.empty()) {
    return;
  }
  const std::filesystem::path dir = std::filesystem::absolute(path).parent_path();
  if (!std::filesystem::is_directory(dir)) {
    throw ConfigError(
        fmt::format("--json {}: the directory {} does not exist", path, dir.string()));
  }
  if (std::filesystem::is_directory(path)) {
    throw ConfigError(fmt::format("--json {} is a directory, expected a file name", path));
  }
  if (access(dir.c_str(), W_OK) != 0) {
    throw ConfigError(fmt::format("--json {}: the directory {} is not writable: {}", path,
                                  dir.string(), std::strerror(errno)));
  }
}

// The KV cache is sized for this run, so a huge seq_len alone costs nothing;
// what is needed must still fit in the machine.
void check_kv_cache_fits(const ModelConfig& config, const ParallelConfig& parallel, int context) {
  const std::int64_t bytes = kv_cache_bytes(config, parallel.tp_size, context);
  const std::int64_t machine =
      static_cast<std::int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGE_SIZE);
  if (machine > 0 && bytes > machine) {
    throw ConfigError(fmt::format(
        "the KV cache of {} layers for a context of {} tokens needs {:.1f} GiB per rank, more "
        "than this machine's {:.1f} GiB",
        config.n_layers, context, static_cast<double>(bytes) / (1 << 30),
        static_cast<double>(machine) / (1 << 30)));
  }
}

// Everything that can be checked without computing: the same on every rank.
// world_size < 0: before the ranks exist (the launching process).
Prepared prepare(const RunOptions& opt, int world_size) {
  if (opt.steps < 0) {
    throw ConfigError(fmt::format("--steps {} must be 0 or more", opt.steps));
  }
  if (opt.model.empty()) {
    throw ConfigError("--model is empty, expected a file");
  }
  check_json_path(opt.json_path);
  Prepared p;
  p.config = read_checkpoint_config(opt.model);
  check_parallel_config(p.config, opt.parallel, world_size);
  if (opt.flashcomm == "auto") {
    p.auto_space = auto_space_for(opt, p.config);
    p.hardware = resolve_profile(opt.hardware);
    // The prediction is of this engine: float32 elements.
    p.hardware.activation_bytes = 4;
  }
  if (!opt.tokenizer.empty()) {
    p.tokenizer = load_tokenizer(opt.tokenizer, p.config.vocab_size);
    p.stop_tokens = p.tokenizer->stop_tokens();
  } else {
    log::info("no tokenizer: generation stops only after --steps or at the context end");
  }
  p.requests = make_requests(opt, p.config, p.tokenizer.get());
  for (const Request& r : p.requests) {
    const std::int64_t wanted = static_cast<std::int64_t>(r.prompt_tokens.size()) + opt.steps;
    p.context = static_cast<int>(
        std::max<std::int64_t>(p.context, std::min<std::int64_t>(wanted, p.config.seq_len)));
  }
  check_kv_cache_fits(p.config, opt.parallel, p.context);
  return p;
}

// What every rank must agree on: the options, the model's configuration and
// the encoded prompts.
std::uint64_t fingerprint(const RunOptions& opt, const Prepared& p) {
  const ModelConfig& c = p.config;
  const ParallelConfig& pc = opt.parallel;
  std::string text = fmt::format(
      "{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}", opt.steps, pc.dp_size, pc.tp_size,
      pc.flashcomm1, pc.flashcomm2, opt.check, opt.json_path, c.d_model, c.hidden_dim, c.n_layers,
      c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size, c.seq_len, c.shared_classifier, p.context);
  text += fmt::format("|mlp {} quant {} dtype {} chunks {}", pc.flashcomm2_mlp,
                      to_string(pc.comm_quant), to_string(pc.comm_dtype), pc.overlap_chunks);
  text += fmt::format("|{} {} {}", opt.flashcomm, opt.hardware, opt.memory_budget_gib.value_or(-1));
  for (const Request& r : p.requests) {
    text += fmt::format("|{}", fmt::join(r.prompt_tokens, ","));
  }
  // Ranks that stop at different tokens would run different collectives.
  text += fmt::format("|stop {}", fmt::join(p.stop_tokens, ","));
  text += fmt::format("|bias {} norm {}", c.qkv_bias, c.qk_norm);
  return std::hash<std::string>{}(text);
}

int allreduce_int(int value, MPI_Op op) {
  int result = value;
  FC_CHECK_MPI(MPI_Allreduce(&value, &result, 1, MPI_INT, op, MPI_COMM_WORLD));
  return result;
}

// Collective over the world: true when every rank that prepared (the others
// pass nullptr) holds the same fingerprint.
bool ranks_agree(const RunOptions& opt, const Prepared* prepared) {
  const std::uint64_t fp = prepared != nullptr ? fingerprint(opt, *prepared) : 0;
  unsigned long long lo = prepared != nullptr ? fp : ULLONG_MAX;
  unsigned long long hi = prepared != nullptr ? fp : 0;
  FC_CHECK_MPI(
      MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_UNSIGNED_LONG_LONG, MPI_MIN, MPI_COMM_WORLD));
  FC_CHECK_MPI(
      MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, MPI_COMM_WORLD));
  return lo == ULLONG_MAX || lo == hi;
}

// Serves this replica's requests; returns their results as JSON.
json serve(const RunOptions& opt, const Prepared& prep, Checkpoint& checkpoint,
           ParallelContext& ctx, Engine& engine, double& max_rel_err) {
  const RankPlace& place = ctx.place();
  json results = json::array();
  for (const Request& r : prep.requests) {
    if (r.index % opt.parallel.dp_size != place.dp_rank) {
      continue;
    }
    log::info("request {}: {} prompt tokens, up to {} new", r.index, r.prompt_tokens.size(),
              opt.steps);
    const Generation g = generate(engine, r.prompt_tokens, opt.steps, prep.stop_tokens,
                                  [](Pass pass, int step) { fault_point(to_string(pass), step); });
    // Without a tokenizer there is no text: null, the ids tell all.
    json result = {{"index", r.index},
                   {"dp_rank", place.dp_rank},
                   {"prompt", r.prompt ? json(*r.prompt) : json(nullptr)},
                   {"prompt_tokens", r.prompt_tokens},
                   {"generated_tokens", g.tokens},
                   {"text", prep.tokenizer ? json(decode_tokens(*prep.tokenizer,
                                                                r.prompt_tokens.back(), g.tokens))
                                           : json(nullptr)},
                   {"prefill_seconds", g.prefill_seconds},
                   {"decode_seconds", g.decode_seconds}};
    if (opt.check && place.tp_rank == 0) {
      // The unsharded pass needs every weight: only the ranks that check hold them.
      ReferenceModel reference(checkpoint.full_weights(), prep.context);
      const std::vector<float> expected = reference.last_logits(r.prompt_tokens);
      const double err = max_relative_error(g.prefill_logits, expected);
      result["check"] = {{"max_rel_err", err}};
      max_rel_err = std::max(max_rel_err, err);
    }
    results.push_back(std::move(result));
  }
  return results;
}

// Gathers the JSON text of every rank at world rank 0 (empty elsewhere).
std::vector<json> gather_json(const json& mine, bool send) {
  const std::string text =
      send ? mine.dump(-1, ' ', false, json::error_handler_t::replace) : std::string();
  const int len = static_cast<int>(text.size());
  const int rank = MpiSession::rank();
  const int size = MpiSession::size();
  std::vector<int> lens(static_cast<size_t>(size));
  FC_CHECK_MPI(MPI_Gather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, 0, MPI_COMM_WORLD));
  std::vector<int> offsets(static_cast<size_t>(size), 0);
  int total = 0;
  for (int r = 0; r < size; ++r) {
    offsets[static_cast<size_t>(r)] = total;
    total += lens[static_cast<size_t>(r)];
  }
  std::string all(static_cast<size_t>(rank == 0 ? total : 0), '\0');
  FC_CHECK_MPI(MPI_Gatherv(text.data(), len, MPI_CHAR, all.data(), lens.data(), offsets.data(),
                           MPI_CHAR, 0, MPI_COMM_WORLD));
  std::vector<json> out;
  if (rank == 0) {
    for (int r = 0; r < size; ++r) {
      if (lens[static_cast<size_t>(r)] > 0) {
        out.push_back(json::parse(all.substr(static_cast<size_t>(offsets[static_cast<size_t>(r)]),
                                             static_cast<size_t>(lens[static_cast<size_t>(r)]))));
      }
    }
  }
  return out;
}

void print_and_write(const RunOptions& opt, const Tokenizer* tokenizer, std::vector<json> results,
                     ParallelContext& ctx, double max_rel_err) {
  std::sort(results.begin(), results.end(),
            [](const json& a, const json& b) { return a["index"] < b["index"]; });
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;
  int decoded = 0;
  for (const json& r : results) {
    if (r["dp_rank"] == 0) {
      prefill_seconds += r["prefill_seconds"].get<double>();
      decode_seconds += r["decode_seconds"].get<double>();
      decoded += static_cast<int>(r["generated_tokens"].size());
    }
  }

  for (const json& r : results) {
    if (results.size() > 1) {
      fmt::print("--- request {} (dp replica {}) ---\n", r["index"].get<int>(),
                 r["dp_rank"].get<int>());
    }
    if (r.contains("scheme")) {
      fmt::print(
          "prefill scheme (--flashcomm auto): {}, predicted {:.3f} ms vs plain TP {:.3f} ms\n",
          r["scheme"]["name"].get<std::string>(), r["scheme"]["predicted_s"].get<double>() * 1e3,
          r["scheme"]["plain_tp_predicted_s"].get<double>() * 1e3);
    }
    if (r["text"].is_null()) {
      fmt::print("prompt tokens: {}\ngenerated tokens: {}\n",
                 join_token_ids(r["prompt_tokens"].get<std::vector<int>>()),
                 join_token_ids(r["generated_tokens"].get<std::vector<int>>()));
    } else {
      fmt::print("{}{}\n", r["prompt"].get<std::string>(), r["text"].get<std::string>());
    }
  }
  const ParallelConfig& pc = ctx.config();
  if (opt.flashcomm == "auto") {
    fmt::print(
        "\nlayout: dp {} x tp {}, --flashcomm auto (a scheme per prefill pass, above), holding "
        "o_proj for K={} and down_proj for K={}\n",
        pc.dp_size, pc.tp_size, pc.flashcomm2, pc.flashcomm2_mlp);
  } else {
    fmt::print(
        "\nlayout: dp {} x tp {}, flashcomm1 {}, flashcomm2 {}, down_proj flashcomm2 {}, "
        "payloads {}/{}, overlap chunks {}\n",
        pc.dp_size, pc.tp_size, pc.flashcomm1 ? "on" : "off",
        pc.flashcomm2_on() ? fmt::format("K={}", pc.flashcomm2) : "off",
        pc.flashcomm2_mlp_on() ? fmt::format("K={}", pc.flashcomm2_mlp) : "off",
        to_string(move_wire(pc)), to_string(reduce_wire(pc)), pc.overlap_chunks);
  }
  fmt::print("prefill: {:.6f} s   decode: {} token{} in {:.6f} s (replica 0)\n", prefill_seconds,
             decoded, decoded == 1 ? "" : "s", decode_seconds);
  fmt::print("prefill collectives (rank 0):\n{}", comm_table(ctx.stats().records(Pass::prefill)));
  fmt::print("decode collectives (rank 0):\n{}", comm_table(ctx.stats().records(Pass::decode)));
  if (opt.check) {
    fmt::print(
        "check: largest relative error of the last position's logits against the "
        "unsharded pass: {:.3e}\n",
        max_rel_err);
  }
  std::fflush(stdout);

  if (!opt.json_path.empty()) {
    json report = {
        {"model", opt.model},
        {"tokenizer", tokenizer != nullptr ? json{{"file", opt.tokenizer},
                                                  {"format", tokenizer->format()},
                                                  {"vocab_size", tokenizer->vocab_size()}}
                                           : json(nullptr)},
        {"parallel",
         {{"dp", pc.dp_size},
          {"tp", pc.tp_size},
          {"flashcomm1", pc.flashcomm1},
          {"flashcomm2", pc.flashcomm2},
          {"flashcomm2_mlp", pc.flashcomm2_mlp},
          {"flashcomm", opt.flashcomm},
          {"comm_quant", to_string(pc.comm_quant)},
          {"comm_dtype", to_string(pc.comm_dtype)},
          {"overlap_chunks", pc.overlap_chunks}}},
        {"prompt_tokens", results.at(0)["prompt_tokens"]},
        {"generated_tokens", results.at(0)["generated_tokens"]},
        {"text", results.at(0)["text"]},
        {"requests", results},
        {"prefill",
         {{"seconds", prefill_seconds}, {"comm", comm_json(ctx.stats().records(Pass::prefill))}}},
        {"decode",
         {{"seconds", decode_seconds}, {"comm", comm_json(ctx.stats().records(Pass::decode))}}}};
    if (opt.check) {
      report["check"] = {{"max_rel_err", max_rel_err}};
    }
    write_json(opt.json_path, report);
  }
}

void add_run_options(CLI::App& run, RunOptions& o) {
  // A repeated option takes its last value, so wrappers can append overrides.
  run.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  run.add_option("--model", o.model,
                 "llama2.c checkpoint file, or Hugging Face checkpoint directory (config.json + "
                 "safetensors)")
      ->required();
  run.add_option("--tokenizer", o.tokenizer,
                 "llama2.c tokenizer file or SentencePiece model (tokenizer.model), told apart by "
                 "content; optional with --prompt-tokens");
  // One value per --prompt, so a stray word is an error, not a second request.
  run.add_option("--prompt", o.prompts,
                 "prompt text; repeat for several requests (spread over DP replicas); "
                 "empty or absent: start from BOS alone")
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  run.add_option("--prompt-tokens", o.prompt_tokens,
                 "a prompt as token ids, e.g. 1,403,407, taken verbatim (no BOS added); repeat "
                 "for several requests; not with --prompt")
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  run.add_option("--steps", o.steps,
                 "new tokens to generate (stops earlier at the tokenizer's end tokens, llama2.c: "
                 "BOS, SentencePiece: EOS or BOS, none without a tokenizer; or when the context "
                 "is full)")
      ->capture_default_str()
      ->transform(decimal_integer());
  run.add_option("--tp", o.parallel.tp_size, "tensor-parallel size")
      ->capture_default_str()
      ->transform(decimal_integer());
  run.add_option("--dp", o.parallel.dp_size, "data-parallel size (replicas)")
      ->capture_default_str()
      ->transform(decimal_integer());
  run.add_flag("--flashcomm1", o.parallel.flashcomm1,
               "sequence parallelism in prefill: ReduceScatter/AllGather around sharded norms");
  run.add_option("--flashcomm2", o.parallel.flashcomm2,
                 "FlashComm2 o_proj in prefill with o_proj TP size K (0 = off; K < TP, K | TP)")
      ->capture_default_str()
      ->transform(decimal_integer());
  run.add_option("--flashcomm2-mlp", o.parallel.flashcomm2_mlp,
                 "FlashComm2 for down_proj in prefill with its TP size K_mlp (0 = off; K_mlp < "
                 "TP, K_mlp | TP): AlltoAll before the GEMM, each rank holds hidden_dim/K_mlp "
                 "columns")
      ->capture_default_str()
      ->transform(decimal_integer());
  run.add_option_function<std::string>(
         "--comm-quant",
         [&o](const std::string& v) {
           o.parallel.comm_quant = v == "int8" ? CommQuant::int8 : CommQuant::none;
         },
         "int8: AlltoAll and AllGather payloads as int8 with one float scale per token row; "
         "none: as --comm-dtype")
      ->check(CLI::IsMember({"none", "int8"}))
      ->default_str("none");
  run.add_option_function<std::string>(
         "--comm-dtype",
         [&o](const std::string& v) {
           o.parallel.comm_dtype = v == "bf16" ? CommDtype::bf16 : CommDtype::f32;
         },
         "payload type of every collective int8 does not cover: f32 or bf16 (bf16 reductions "
         "sum in bf16)")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->default_str("f32");
  run.add_option("--overlap-chunks", o.parallel.overlap_chunks,
                 "split FlashComm1's AllGathers and FlashComm2's AlltoAlls into C token chunks "
                 "(whole 64-row panels), each in flight while earlier chunks' GEMMs run (1 = no "
                 "overlap)")
      ->capture_default_str()
      ->transform(decimal_integer());
  run.add_option("--flashcomm", o.flashcomm,
                 "manual: the scheme of the flags above; auto: each prefill pass runs the scheme "
                 "the cost model predicts fastest for its length (plain TP, FlashComm1, "
                 "FlashComm2 at any K, down_proj FlashComm2 with --flashcomm2-mlp, int8/bf16 "
                 "only when --comm-quant/--comm-dtype allow them, overlap up to "
                 "--overlap-chunks); decode stays plain TP")
      ->check(CLI::IsMember({"manual", "auto"}))
      ->capture_default_str();
  run.add_option("--hardware", o.hardware,
                 "--flashcomm auto: the hardware profile it predicts with (a built-in name or a "
                 "calibrated JSON file)")
      ->capture_default_str();
  run.add_option("--memory-budget", o.memory_budget_gib,
                 "--flashcomm auto: GiB per rank for the extra o_proj and down_proj weights "
                 "FlashComm2 holds; the smallest o_proj K that fits is held, then "
                 "--flashcomm2-mlp's block must fit in the rest (default: unlimited, K=1)");
  run.add_flag("--check", o.check,
               "compare the last position's logits with an unsharded forward pass");
  run.add_option("--json", o.json_path, "write a JSON report to this file");
  run.add_option("--log-level", o.log_level,
                 "trace, debug, info, warn, error or off (default: $FLASHCOMM_LOG_LEVEL or warn)");
}

// A Hugging Face checkpoint directory usually holds its SentencePiece
// tokenizer; it is taken when --tokenizer is not given and no prompt is
// given as ids (as vLLM and llama.cpp take the checkpoint's own tokenizer).
RunOptions with_default_tokenizer(RunOptions opt) {
  const std::filesystem::path own = std::filesystem::path(opt.model) / "tokenizer.model";
  std::error_code error;
  if (opt.tokenizer.empty() && opt.prompt_tokens.empty() &&
      std::filesystem::is_directory(opt.model, error) &&
      std::filesystem::is_regular_file(own, error)) {
    opt.tokenizer = own.string();
  }
  return opt;
}

}  // namespace

int run_command(const RunOptions& options, int argc, char** argv) {
  const RunOptions opt = with_default_tokenizer(options);
  // Started by hand for several ranks: check once here, then become mpiexec.
  if (!under_mpi_launcher() && opt.parallel.world_size() > 1) {
    log::init(0, opt.log_level);
    arm_fault_from_environment(opt.parallel.world_size(), kFaultPoints);
    prepare(opt, -1);
    return relaunch_under_mpiexec(argc, argv, opt.parallel.world_size());
  }

  MpiSession mpi;
  const int rank = MpiSession::rank();

  // 1. prepare, and agree on it before anyone computes.
  Prepared prep;
  std::optional<Checkpoint> checkpoint;
  int code = kExitOk;
  std::string message;
  try {
    log::init(rank, opt.log_level);
    MpiSession::share_cores_among_local_ranks();
    arm_fault_from_environment(MpiSession::size(), kFaultPoints);
    fault_point("prepare");
    prep = prepare(opt, MpiSession::size());
    checkpoint.emplace(opt.model);
  } catch (const std::exception& e) {
    code = exit_code_for(e);
    message = e.what();
  }
  // Ranks started with different options (or files) would run different
  // collectives and wait on each other forever.
  if (!ranks_agree(opt, code == kExitOk ? &prep : nullptr) && code == kExitOk) {
    code = kExitUsage;
    message =
        "the ranks were started with different options, model or tokenizer files; start every "
        "rank with the same command line";
  }
  // The lowest failing rank speaks, so the message appears once, and every
  // rank exits with its code: key = rank * 8 + code, smallest wins.
  static_assert(kExitComm < 8);
  const int key = allreduce_int(code != kExitOk ? rank * 8 + code : INT_MAX, MPI_MIN);
  if (key != INT_MAX) {
    if (rank == key / 8) {
      fmt::print(stderr, "flashcomm: error: {}\n", message);
    }
    return key % 8;
  }

  if (rank == 0 && opt.flashcomm != "auto" &&
      (opt.memory_budget_gib || opt.hardware != RunOptions{}.hardware)) {
    log::warn("--hardware and --memory-budget apply to --flashcomm auto only; ignored");
  }
  if (rank == 0 && opt.parallel.flashcomm1 && opt.parallel.tp_size == 1) {
    log::warn("--flashcomm1 has no effect at --tp 1: one rank holds every token");
  }
  if (rank == 0 && static_cast<int>(prep.requests.size()) < opt.parallel.dp_size) {
    log::warn("{} prompt(s) for {} DP replicas: replicas {} and above stay idle",
              prep.requests.size(), opt.parallel.dp_size, prep.requests.size());
  }

  // 2. serve; 3. report. A failure now may leave peers inside a collective,
  // so it ends the whole job.
  try {
    // Under auto the ranks hold the blocks of the space and the groups of
    // every FlashComm2 size it allows.
    ParallelConfig held = opt.parallel;
    std::vector<int> ks;
    std::vector<AutoChoice> choices;
    if (prep.auto_space) {
      held.flashcomm2 = prep.auto_space->o_proj_k;
      held.flashcomm2_mlp = prep.auto_space->mlp_k;
      for (const ParallelConfig& c : auto_candidates(*prep.auto_space)) {
        ks.push_back(c.flashcomm2);
        ks.push_back(c.flashcomm2_mlp);
      }
      log::info("--flashcomm auto on profile {}: holding o_proj for K={} and down_proj for K={}",
                prep.hardware.name, held.flashcomm2, held.flashcomm2_mlp);
    }
    ParallelContext ctx(MPI_COMM_WORLD, held, ks);
    Engine engine(checkpoint->source(), ctx, true, prep.context);
    if (prep.auto_space) {
      engine.set_scheme_chooser([&](int n_tokens, Pass pass) {
        ParallelConfig plain;
        plain.tp_size = held.tp_size;
        plain.dp_size = held.dp_size;
        if (pass == Pass::decode) {
          return plain;
        }
        const AutoChoice c = choose_scheme(prep.config, prep.hardware, *prep.auto_space, n_tokens);
        log::info("prefill of {} tokens: {} (predicted {:.3f} ms, {:.2f}x plain TP's {:.3f} ms)",
                  n_tokens, c.name, c.predicted_s * 1e3, c.plain_tp_s / c.predicted_s,
                  c.plain_tp_s * 1e3);
        choices.push_back(c);
        return c.parallel;
      });
    }
    double max_rel_err = 0.0;
    json mine = serve(opt, prep, *checkpoint, ctx, engine, max_rel_err);
    // Each request's prefill is one pass: its choice goes with its result.
    if (prep.auto_space) {
      for (size_t i = 0; i < mine.size() && i < choices.size(); ++i) {
        const AutoChoice& c = choices[i];
        mine[i]["scheme"] = {{"name", c.name},
                             {"flashcomm1", c.parallel.flashcomm1},
                             {"flashcomm2", c.parallel.flashcomm2},
                             {"flashcomm2_mlp", c.parallel.flashcomm2_mlp},
                             {"comm_quant", to_string(c.parallel.comm_quant)},
                             {"comm_dtype", to_string(c.parallel.comm_dtype)},
                             {"overlap_chunks", c.parallel.overlap_chunks},
                             {"predicted_s", c.predicted_s},
                             {"plain_tp_predicted_s", c.plain_tp_s}};
      }
    }
    const double worst_err = [&] {
      double v = max_rel_err;
      FC_CHECK_MPI(MPI_Allreduce(&max_rel_err, &v, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
      return v;
    }();
    std::vector<json> gathered = gather_json(mine, ctx.place().tp_rank == 0);
    if (rank == 0) {
      std::vector<json> results;
      for (json& part : gathered) {
        for (json& r : part) {
          results.push_back(std::move(r));
        }
      }
      // The other ranks are done communicating: a failure here (say, the
      // report cannot be written) ends rank 0 alone, without an abort.
      try {
        print_and_write(opt, prep.tokenizer.get(), std::move(results), ctx, worst_err);
      } catch (const std::exception& e) {
        fmt::print(stderr, "flashcomm: error: {}\n", e.what());
        return exit_code_for(e);
      }
    }
  } catch (const std::exception& e) {
    const int failure = exit_code_for(e);
    fmt::print(stderr, "flashcomm: error on rank {}: {}\n", rank, e.what());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, failure);
    return failure;
  }
  return kExitOk;
}

CLI::Validator decimal_integer() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        const std::size_t digits = !text.empty() && (text[0] == '-' || text[0] == '+') ? 1 : 0;
        if (text.size() == digits ||
            text.find_first_not_of("0123456789", digits) != std::string::npos) {
          return fmt::format("expected a decimal integer, got '{}'", text);
        }
        while (text.size() > digits + 1 && text[digits] == '0') {
          text.erase(digits, 1);
        }
        // Every count is an int; CLI11 would only say it could not convert.
        errno = 0;
        const long long value = std::strtoll(text.c_str(), nullptr, 10);
        if (errno == ERANGE || value < INT_MIN || value > INT_MAX) {
          return fmt::format("{} is out of range, expected a decimal integer from {} to {}", text,
                             INT_MIN, INT_MAX);
        }
        return {};
      },
      "INT", "decimal");
}

Command add_run_command(CLI::App& app, int argc, char** argv) {
  auto options = std::make_shared<RunOptions>();
  CLI::App* run = app.add_subcommand("run", "generate text with a model over DP x TP ranks");
  add_run_options(*run, *options);
  return {run, [options, argc, argv] { return run_command(*options, argc, argv); }};
}

}  // namespace flashcomm::cli
