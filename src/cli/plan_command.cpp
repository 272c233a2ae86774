// `flashcomm plan`, in three steps:
//   1. resolve: the model (a preset name, or a llama2.c or HF checkpoint, of
//      which only the headers are read) and the hardware (a built-in profile or a JSON
//      file); check the layout as `flashcomm run` would;
//   2. plan: the cost model's prediction of every scheme at every token count
//      (src/planner/cost_model.cpp), with the variants the options ask for
//      (payload formats, overlap, FlashComm2 for down_proj) and the choice
//      `--flashcomm auto` would make;
//   3. print a table, or with --json the same numbers as JSON on stdout.
// Without the variant options the output is exactly what it was before them.
// Errors are thrown as the library's exceptions; main() prints them and maps
// them to exit codes (2 for a bad flag or layout, 3 for a bad file).
#include "cli/plan_command.hpp"

#include <algorithm>
#include <filesystem>
#include <memory>
#include <optional>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "cli/options.hpp"
#include "flashcomm/checkpoint.hpp"
#include "flashcomm/cost_model.hpp"
#include "flashcomm/error.hpp"
#include "flashcomm/presets.hpp"

namespace flashcomm::cli {

namespace {

using nlohmann::json;

struct PlanOptions {
  std::string model;
  std::string hardware;
  int tp_size = 1;
  int dp_size = 1;
  std::vector<int> tokens;
  double memory_budget_gib = 0.0;
  CLI::Option* memory_budget = nullptr;  // to tell "not given" from a value
  int weight_bytes = 2;
  bool json = false;
  // The variants, each off unless given; any of them (or --auto) adds the
  // automatic choice.
  std::string comm_quant;
  std::string comm_dtype;
  std::vector<int> overlap_chunks;
  bool flashcomm2_mlp = false;
  bool auto_choice = false;
  std::vector<CLI::Option*> variant_options;  // to tell "given" from the defaults
};

constexpr double kMiB = 1024.0 * 1024.0;

// A preset name first; anything else must be a checkpoint file.
ModelConfig resolve_model(const std::string& name_or_path) {
  if (const std::optional<ModelConfig> named = named_model(name_or_path)) {
    return *named;
  }
  const std::vector<std::string> names = preset_names();
  if (std::filesystem::is_regular_file(name_or_path) ||
      std::filesystem::is_directory(name_or_path)) {
    return read_checkpoint_config(name_or_path);
  }
  throw ConfigError(fmt::format(
      "--model {} is neither a preset ({}), a shape:... nor a checkpoint file or directory",
      name_or_path, fmt::join(names, ", ")));
}

// The variants and the automatic choice the options ask for. ConfigError
// naming a value that is none of the allowed ones.
void apply_variants(const PlanOptions& o, PlanRequest& r) {
  if (!o.comm_quant.empty() && o.comm_quant != "none" && o.comm_quant != "int8") {
    throw ConfigError(fmt::format(
        "--comm-quant {} is not a payload quantization: expected none or int8", o.comm_quant));
  }
  if (!o.comm_dtype.empty() && o.comm_dtype != "f32" && o.comm_dtype != "bf16") {
    throw ConfigError(fmt::format(
        "--comm-dtype {} is not a payload element type: expected f32 or bf16", o.comm_dtype));
  }
  r.variants.int8 = o.comm_quant == "int8";
  r.variants.bf16 = o.comm_dtype == "bf16";
  r.variants.overlap_chunks = o.overlap_chunks;
  r.variants.flashcomm2_mlp = o.flashcomm2_mlp;
  r.auto_choice = std::any_of(o.variant_options.begin(), o.variant_options.end(),
                              [](const CLI::Option* opt) { return opt->count() > 0; });
}

// "1.23x", or "-" when there is nothing to compare with.
std::string ratio(double reference_s, double scheme_s) {
  return scheme_s > 0.0 ? fmt::format("{:.2f}x", reference_s / scheme_s) : "-";
}

// The index of FlashComm1 among the schemes, or -1 at TP 1.
int flashcomm1_index(const TokenPlan& row) {
  for (size_t i = 0; i < row.schemes.size(); ++i) {
    const ParallelConfig& pc = row.schemes[i].parallel;
    if (pc.flashcomm1 && !pc.flashcomm2_on()) {
      return static_cast<int>(i);
    }
  }
  return -1;
}

std::string break_even_line(const Plan& plan, int tp_size) {
  if (tp_size == 1) {
    return "break-even: none (at --tp 1 only plain TP runs)";
  }
  if (plan.break_even) {
    return fmt::format(
        "break-even: the best FlashComm2 variant beats plain TP and FlashComm1 from {} tokens on "
        "(searched 1..{})",
        *plan.break_even, plan.break_even_searched_to);
  }
  return fmt::format(
      "break-even: none; FlashComm2 does not beat both plain TP and FlashComm1 at {} tokens",
      plan.break_even_searched_to);
}

// "f32" / "int8" / "bf16" / "int8 + bf16": the payloads auto may use.
std::string payloads_of(const AutoSpace& space) {
  std::string out = "f32";
  if (space.allow_int8) {
    out += ", int8";
  }
  if (space.allow_bf16) {
    out += ", bf16";
  }
  if (space.allow_int8 && space.allow_bf16) {
    out += ", int8 + bf16";
  }
  return out;
}

std::string held_line(const PlanRequest& r, const AutoSpace& space) {
  const double extra = extra_o_proj_bytes(r.model, r.tp_size, space.o_proj_k, r.weight_bytes) +
                       extra_down_proj_bytes(r.model, r.tp_size, space.mlp_k, r.weight_bytes);
  return fmt::format(
      "auto (as --flashcomm auto): holds o_proj K0={} and down_proj K_mlp0={} (0: none; {:.1f} "
      "MiB extra per rank), payloads {}, overlap chunks {}",
      space.o_proj_k, space.mlp_k, extra / kMiB, payloads_of(space),
      fmt::join(space.chunk_options, ","));
}

void print_table(const PlanOptions& o, const PlanRequest& r, const Plan& plan) {
  const ModelConfig& m = r.model;
  const bool extended = plan.auto_space.has_value();
  const bool down = r.variants.flashcomm2_mlp;
  fmt::print("model {} (d_model {}, q_dim {}, {} layers), hardware {}, dp {} x tp {}\n", o.model,
             m.d_model, m.q_dim(), m.n_layers, r.profile.name, r.dp_size, r.tp_size);
  fmt::print("hardware: {}\n", r.profile.description);
  const char* extra_of = down ? "o_proj and down_proj" : "o_proj";
  if (r.memory_budget_gib) {
    fmt::print("memory budget for the extra {}: {:.2f} GiB per rank ({}-byte weights)\n", extra_of,
               *r.memory_budget_gib, r.weight_bytes);
  } else {
    fmt::print("memory budget for the extra {}: unlimited ({}-byte weights)\n", extra_of,
               r.weight_bytes);
  }
  if (extended) {
    fmt::print("{}\n", held_line(r, *plan.auto_space));
  }

  // The scheme column fits the longest name (26 wide without variants).
  size_t width = 26;
  for (const TokenPlan& row : plan.rows) {
    for (const SchemeEstimate& e : row.schemes) {
      width = std::max(width, e.name.size());
    }
    if (row.auto_choice) {
      width = std::max(width, row.auto_choice->name.size() + 6);
    }
  }
  const std::string down_head = down ? fmt::format(" {:>15}", "extra down MiB") : "";
  fmt::print("\n{:>7}  {:<{}} {:>10} {:>11} {:>7} {:>7} {:>17}{}\n", "tokens", "scheme", width,
             "layer ms", "prefill ms", "vs TP", "vs FC1", "extra o_proj MiB", down_head);
  for (const TokenPlan& row : plan.rows) {
    const double tp_s = row.schemes.front().prefill_s;
    const int fc1 = flashcomm1_index(row);
    const auto vs_fc1 = [&](double s) {
      return fc1 < 0 ? std::string("-") : ratio(row.schemes[static_cast<size_t>(fc1)].prefill_s, s);
    };
    for (size_t i = 0; i < row.schemes.size(); ++i) {
      const SchemeEstimate& e = row.schemes[i];
      std::string note;
      if (static_cast<int>(i) == row.recommended) {
        note = "  <- recommended";
      } else if (!e.fits_budget) {
        note = "  over budget";
      }
      const std::string down_cell =
          down ? fmt::format(" {:>15.1f}", e.extra_down_proj_bytes / kMiB) : "";
      fmt::print("{:>7}  {:<{}} {:>10.3f} {:>11.3f} {:>7} {:>7} {:>17.1f}{}{}\n", row.n_tokens,
                 e.name, width, e.layer_s * 1e3, e.prefill_s * 1e3, ratio(tp_s, e.prefill_s),
                 vs_fc1(e.prefill_s), e.extra_o_proj_bytes / kMiB, down_cell, note);
    }
    if (row.auto_choice) {
      // The held blocks' memory is in the auto line above, not per row.
      const AutoChoice& a = *row.auto_choice;
      fmt::print("{:>7}  {:<{}} {:>10} {:>11.3f} {:>7} {:>7}\n", row.n_tokens, "auto: " + a.name,
                 width, "-", a.predicted_s * 1e3, ratio(a.plain_tp_s, a.predicted_s),
                 vs_fc1(a.predicted_s));
    }
  }
  fmt::print("\n{}\n", break_even_line(plan, r.tp_size));
}

// The parts of a layout the variants add, for the JSON.
void add_variant_fields(json& j, const ParallelConfig& pc) {
  j["flashcomm2_mlp"] = pc.flashcomm2_mlp;
  j["comm_quant"] = to_string(pc.comm_quant);
  j["comm_dtype"] = to_string(pc.comm_dtype);
  j["overlap_chunks"] = pc.overlap_chunks;
}

json plan_json(const PlanOptions& o, const PlanRequest& r, const Plan& plan) {
  const ModelConfig& m = r.model;
  json rows = json::array();
  for (const TokenPlan& row : plan.rows) {
    const double tp_s = row.schemes.front().prefill_s;
    const int fc1 = flashcomm1_index(row);
    json schemes = json::array();
    for (size_t i = 0; i < row.schemes.size(); ++i) {
      const SchemeEstimate& e = row.schemes[i];
      json entry = {{"scheme", e.name},
                    {"flashcomm1", e.parallel.flashcomm1},
                    {"flashcomm2", e.parallel.flashcomm2},
                    {"layer_seconds", e.layer_s},
                    {"prefill_seconds", e.prefill_s},
                    {"speedup_vs_tp", tp_s / e.prefill_s},
                    {"speedup_vs_flashcomm1",
                     fc1 < 0 ? json(nullptr)
                             : json(row.schemes[static_cast<size_t>(fc1)].prefill_s / e.prefill_s)},
                    {"extra_o_proj_bytes", e.extra_o_proj_bytes},
                    {"fits_budget", e.fits_budget},
                    {"recommended", static_cast<int>(i) == row.recommended}};
      if (plan.auto_space) {
        add_variant_fields(entry, e.parallel);
        entry["extra_down_proj_bytes"] = e.extra_down_proj_bytes;
      }
      schemes.push_back(std::move(entry));
    }
    json out = {{"n_tokens", row.n_tokens},
                {"recommended", row.schemes[static_cast<size_t>(row.recommended)].name},
                {"schemes", std::move(schemes)}};
    if (row.auto_choice) {
      const AutoChoice& a = *row.auto_choice;
      json choice = {{"scheme", a.name},
                     {"flashcomm1", a.parallel.flashcomm1},
                     {"flashcomm2", a.parallel.flashcomm2},
                     {"prefill_seconds", a.predicted_s},
                     {"plain_tp_seconds", a.plain_tp_s},
                     {"speedup_vs_tp", a.plain_tp_s / a.predicted_s}};
      add_variant_fields(choice, a.parallel);
      out["auto"] = std::move(choice);
    }
    rows.push_back(std::move(out));
  }
  json doc = {
      {"model",
       {{"name", o.model},
        {"d_model", m.d_model},
        {"q_dim", m.q_dim()},
        {"n_layers", m.n_layers},
        {"n_heads", m.n_heads},
        {"n_kv_heads", m.n_kv_heads},
        {"head_dim", m.head_dim},
        {"hidden_dim", m.hidden_dim},
        {"seq_len", m.seq_len}}},
      {"hardware",
       {{"name", r.profile.name},
        {"description", r.profile.description},
        {"source", r.profile.source}}},
      {"parallel", {{"dp", r.dp_size}, {"tp", r.tp_size}}},
      {"weight_bytes", r.weight_bytes},
      {"memory_budget_gib", r.memory_budget_gib ? json(*r.memory_budget_gib) : json(nullptr)},
      {"rows", std::move(rows)},
      {"break_even",
       {{"n_tokens", plan.break_even ? json(*plan.break_even) : json(nullptr)},
        {"searched_up_to", plan.break_even_searched_to}}}};
  if (plan.auto_space) {
    const AutoSpace& space = *plan.auto_space;
    doc["variants"] = {{"comm_quant_int8", r.variants.int8},
                       {"comm_dtype_bf16", r.variants.bf16},
                       {"overlap_chunks", r.variants.overlap_chunks},
                       {"flashcomm2_mlp", r.variants.flashcomm2_mlp}};
    doc["auto_space"] = {
        {"o_proj_k", space.o_proj_k},
        {"mlp_k", space.mlp_k},
        {"allow_int8", space.allow_int8},
        {"allow_bf16", space.allow_bf16},
        {"chunk_options", space.chunk_options},
        {"extra_bytes",
         extra_o_proj_bytes(r.model, r.tp_size, space.o_proj_k, r.weight_bytes) +
             extra_down_proj_bytes(r.model, r.tp_size, space.mlp_k, r.weight_bytes)}};
  }
  return doc;
}

int plan_command(const PlanOptions& o) {
  // 1. resolve and check
  PlanRequest r;
  r.model = resolve_model(o.model);
  r.profile = resolve_profile(o.hardware);
  r.tp_size = o.tp_size;
  r.dp_size = o.dp_size;
  r.token_counts = o.tokens;
  if (o.memory_budget->count() > 0) {
    r.memory_budget_gib = o.memory_budget_gib;
  }
  r.weight_bytes = o.weight_bytes;
  apply_variants(o, r);
  check_parallel_config(r.model, {r.dp_size, r.tp_size, false, 0}, -1);
  // A profile only knows the group sizes it was measured or derived for;
  // larger groups are predicted from its largest, which says nothing of a
  // bigger network.
  for (const auto& [op, fits] : r.profile.collectives) {
    const int largest = fits.empty() ? 0 : fits.back().group_size;
    if (r.tp_size > largest && r.profile.ranks_per_node == 0) {
      fmt::print(stderr,
                 "flashcomm: warning: profile '{}' has {} fits up to {} ranks; --tp {} is "
                 "extrapolated from them\n",
                 r.profile.name, to_string(op), largest, r.tp_size);
      break;
    }
  }

  // 2. plan (checks the token counts, budget and weight bytes)
  const Plan plan = plan_prefill(r);

  // 3. report
  if (o.json) {
    fmt::print("{}\n", plan_json(o, r, plan).dump(2));
  } else {
    print_table(o, r, plan);
  }
  return kExitOk;
}

}  // namespace

Command add_plan_command(CLI::App& app) {
  auto o = std::make_shared<PlanOptions>();
  CLI::App* plan = app.add_subcommand(
      "plan", "predict each scheme's prefill time on a hardware profile and recommend one");
  plan->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  plan->add_option("--model", o->model,
                   "model preset name, llama2.c checkpoint or HF checkpoint directory")
      ->required();
  plan->add_option("--hardware", o->hardware, "built-in hardware profile or a JSON profile file")
      ->required();
  plan->add_option("--tp", o->tp_size, "tensor-parallel size")
      ->required()
      ->transform(decimal_integer());
  plan->add_option("--dp", o->dp_size, "data-parallel size (replicas)")
      ->capture_default_str()
      ->transform(decimal_integer());
  plan->add_option("--tokens", o->tokens, "prompt lengths to plan for (one or more)")
      ->required()
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->delimiter(',')
      ->transform(decimal_integer());
  o->memory_budget =
      plan->add_option("--memory-budget", o->memory_budget_gib,
                       "GiB per rank allowed for FlashComm2's extra o_proj (and down_proj) "
                       "weights (default: unlimited)");
  plan->add_option("--weight-bytes", o->weight_bytes, "bytes per weight element (2 for bf16)")
      ->capture_default_str()
      ->transform(decimal_integer());
  plan->add_flag("--json", o->json, "print JSON to stdout instead of the table");
  o->variant_options = {
      plan->add_option("--comm-quant", o->comm_quant,
                       "none or int8: also list each scheme with int8 AllGather/AlltoAll payloads"),
      plan->add_option("--comm-dtype", o->comm_dtype,
                       "f32 or bf16: also list each scheme with bf16 payloads"),
      plan->add_option("--overlap-chunks", o->overlap_chunks,
                       "chunk counts C (1-64, one or more): also list each scheme whose gathers or "
                       "AlltoAlls overlap their GEMMs in C chunks")
          ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
          ->delimiter(',')
          ->transform(decimal_integer()),
      plan->add_flag("--flashcomm2-mlp", o->flashcomm2_mlp,
                     "also list FlashComm2 for down_proj at every valid K_mlp"),
      plan->add_flag("--auto", o->auto_choice,
                     "add the choice of --flashcomm auto per token count (implied by the "
                     "options above)")};
  return {plan, [o] { return plan_command(*o); }};
}

}  // namespace flashcomm::cli
