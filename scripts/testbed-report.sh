#!/usr/bin/env bash
# The testbed report: every scheme's per-layer prefill measured on a
# scale-model cluster (flashcomm bench --testbed shaped), with the link
# matched in turn to each hardware profile, beside the cost model's
# prediction for the same shaped link. Needs root (network namespaces).
#
#   scripts/testbed-report.sh [OUT_DIR]      (default: docs/testbed)
#
# writes OUT_DIR/testbed.csv, testbed.json, testbed.png (from testbed.gp and
# testbed.dat) and testbed.md (the table the README shows); each run's
# own bench output stays in WORK_DIR (default: BUILD_DIR/testbed-runs).
# Settings, from the environment:
#   RUNS      the runs, each PROFILE:TP: the link matched to that hardware
#             profile at that TP size (default: h100-sxm:4 l40-pcie:4 h100-sxm:8
#             h100-sxm:2 l40-pcie:2)
#   MODEL     a preset, one layer of it (default: llama-3-8b)
#   TOKENS    prompt token counts (default: 16,64,128)
#   SCHEMES   scheme families, as bench --schemes takes them
#   WARMUP, REPEATS   per row (default: 1, 3)
#   REPORT_ONLY=1     remake the report from the runs already in WORK_DIR
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
flashcomm="$build/flashcomm"
out="${1:-$root/docs/testbed}"
work="${WORK_DIR:-$build/testbed-runs}"

# The scheme families measured; a family the benchmark gains is one more
# word here (the report reads every row's scheme from the benchmark itself).
SCHEMES="${SCHEMES:-tp,fc1,fc2,fc1+fc2}"
RUNS="${RUNS:-h100-sxm:4 l40-pcie:4 h100-sxm:8 h100-sxm:2 l40-pcie:2}"
MODEL="${MODEL:-llama-3-8b}"
TOKENS="${TOKENS:-16,64,128}"
WARMUP="${WARMUP:-1}"
REPEATS="${REPEATS:-3}"

for tool in jq gnuplot; do
  command -v "$tool" >/dev/null || { echo "testbed-report: $tool is missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
done
[ -x "$flashcomm" ] || { echo "testbed-report: $flashcomm is not built (scripts/build.sh flashcomm)" >&2; exit 1; }
mkdir -p "$out" "$work"

# 1. One shaped benchmark per run.
runs=()
start=$SECONDS
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
for spec in $RUNS; do
  profile="${spec%%:*}"
  tp="${spec##*:}"
  if [ -z "$profile" ] || [ "$profile" = "$spec" ] || ! [[ "$tp" =~ ^[0-9]+$ ]]; then
    echo "testbed-report: RUNS entry '$spec' is not PROFILE:TP (e.g. h100-sxm:4)" >&2
    exit 2
  fi
  run="$work/$profile-tp$tp"
  runs+=("$run")
  if [ "${REPORT_ONLY:-0}" = 1 ]; then
    continue
  fi
  rm -rf "$run"
  echo "testbed-report: $MODEL, 1 layer, TP $tp, link matched to $profile" >&2
  "$flashcomm" bench --model "$MODEL" --layers 1 --tp "$tp" --tokens "$TOKENS" \
    --schemes "$SCHEMES" --warmup "$WARMUP" --repeats "$REPEATS" \
    --testbed shaped --match-profile "$profile" --out "$run" | tee "$run.log"
done
elapsed=$((SECONDS - start))

# 2. The machine, for the record (remaking the report: as the runs found it).
if [ "${REPORT_ONLY:-0}" = 1 ] && [ -f "$out/testbed.json" ]; then
  machine=$(jq .machine "$out/testbed.json")
  elapsed=$(jq .seconds "$out/testbed.json")
else
  machine=$(jq -n \
    --arg cpu "$(lscpu | sed -n 's/^Model name: *//p' | head -1)" \
    --arg cores "$(nproc)" \
    --arg memory "$(awk '/^MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)" \
    --arg kernel "$(uname -r)" \
    --arg mpi "$(mpiexec --version 2>&1 | head -1)" \
    --arg date "$(date -u +%Y-%m-%dT%H:%MZ)" \
    --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" --arg load_before "$load_before" \
    '{cpu: $cpu, cores: ($cores | tonumber), memory_gib: ($memory | tonumber), kernel: $kernel,
      mpi: $mpi, date: $date,
        load_average_before: $load_before, load_average_after: $load}')
fi

# 3. One JSON, one CSV: a row per measurement, its prediction and the error.
jq -n --argjson machine "$machine" --argjson seconds "$elapsed" \
  --arg model "$MODEL" --arg schemes "$SCHEMES" \
  --argjson warmup "$WARMUP" --argjson repeats "$REPEATS" '
  {machine: $machine, model: $model, layers: 1, schemes: $schemes, warmup: $warmup,
   repeats: $repeats, seconds: $seconds, runs: [inputs]}' \
  < <(for run in "${runs[@]}"; do
        jq -s '.[0] as $b | .[1] as $t |
          {profile: ($t.match.profile), tp: $b.rows[0].tp, testbed: $t,
           link_fits: $b.testbed.link_fits, compute: $b.profiles,
           rows: [$b.rows[] | {scheme, tokens, bytes_per_rank,
                  measured_s: .per_layer.median_s, min_s: .per_layer.min_s,
                  max_s: .per_layer.max_s, predicted_s, compute_s, comm_s, predicted_comm_s,
                  error: (.predicted_s / .per_layer.median_s - 1),
                  comm_error: (.predicted_comm_s / .comm_s - 1), speedup_vs_tp}]}' \
          "$run/bench.json" "$run/testbed.json"
      done) > "$out/testbed.json"

jq -r '
  ["profile", "link_mbit_s", "tp", "scheme", "tokens", "measured_ms", "min_ms", "max_ms",
   "predicted_ms", "error_pct", "compute_ms", "comm_ms", "predicted_comm_ms", "comm_error_pct",
   "bytes_per_rank", "speedup_vs_tp"],
  (.runs[] | . as $r | .rows[] |
   [$r.profile, ($r.testbed.rate_bps / 1e6), $r.tp, .scheme, .tokens, (.measured_s * 1e3),
    (.min_s * 1e3), (.max_s * 1e3), (.predicted_s * 1e3), (.error * 100), (.compute_s * 1e3),
    (.comm_s * 1e3), (.predicted_comm_s * 1e3), (.comm_error * 100), .bytes_per_rank,
    .speedup_vs_tp]) | @csv' \
  "$out/testbed.json" > "$out/testbed.csv"

# 4. The table the README shows.
{
  jq -r '"Measured on \(.machine.cpu) (\(.machine.cores) cores, \(.machine.memory_gib) GiB), Linux " +
         "\(.machine.kernel), \(.machine.mpi), \(.machine.date); load average (1, 5, 15 min) " +
         "\(.machine.load_average_before) before the runs, \(.machine.load_average_after) after; " +
         "\(.model), 1 layer, warm-up \(.warmup), \(.repeats) repeats (median, min-max), " +
         "\(.seconds) s for every run."' "$out/testbed.json"
  echo
  jq -r '.runs[] | "- \(.profile), TP \(.tp): link \(.testbed.rate_bps / 1e6 | . * 10 | round / 10) Mbit/s " +
         "for all ranks (\(.testbed.match.per_rank_Bps / 1e6 | . * 100 | round / 100) MB/s per rank), from this " +
         "machine'"'"'s \(.testbed.match.machine_gemm_flops / 1e9 | . * 10 | round / 10) GFLOP/s per rank; measured " +
         "AllReduce bus bandwidth \([.link_fits[] | select(.op == "all_reduce" and .group_size == .tp)][0].bandwidth_Bps / 1e6 | . * 100 | round / 100) MB/s per rank"' \
    "$out/testbed.json"
  echo
  echo "| link | tokens | scheme | ms/layer (min-max) | predicted | error | comm ms | predicted | error | vs plain TP |"
  echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"
  jq -r 'def pct: . * 100 | round | if . > 0 then "+\(.)%" else "\(.)%" end;
    .runs[] | . as $r | .rows | sort_by(.tokens) | .[] |
    "| \($r.profile) TP \($r.tp) | \(.tokens) | \(.scheme) | " +
    "\(.measured_s * 1e3 | round) (\(.min_s * 1e3 | round)-\(.max_s * 1e3 | round)) | " +
    "\(.predicted_s * 1e3 | round) | \(.error | pct) | " +
    "\(.comm_s * 1e3 | round) | \(.predicted_comm_s * 1e3 | round) | \(.comm_error | pct) | " +
    "\(.speedup_vs_tp * 100 | round / 100)x |"' "$out/testbed.json"
} > "$out/testbed.md"

# 5. The plot: a row per run, a colour per scheme; the whole layer on the
#    left, its communication on the right; measured solid, predicted dashed.
#    Its data is testbed.dat, one block per run, part and scheme.
panels=$(jq '.runs | length' "$out/testbed.json")
rm -f "$out"/testbed-*.dat
: > "$out/testbed.dat"
block=0
{
  echo "set terminal pngcairo size 1200,$((440 * panels)) noenhanced"
  echo "set output 'testbed.png'"
  echo "set multiplot layout $panels,2"
  echo "set logscale xy; set grid; set key left top font ',9'; set xlabel 'prompt tokens'"
  jq -r '[.runs[].rows[].tokens] | "set xrange [\(min * 0.8):\(max * 1.25)]"' "$out/testbed.json"
  for ((i = 0; i < panels; i++)); do
    for part in layer comm; do
      if [ "$part" = layer ]; then
        echo "set ylabel 'ms per layer'"
        jq -r --argjson i "$i" '.runs[$i] | "set title \"\(.profile)-matched link, TP \(.tp): \(.testbed.rate_bps / 1e6 | round) Mbit/s (dashed: predicted)\""' "$out/testbed.json"
        columns='"\(.tokens) \(.measured_s * 1e3) \(.predicted_s * 1e3)"'
      else
        echo "set ylabel 'communication ms per layer'"
        jq -r --argjson i "$i" '.runs[$i] | "set title \"\(.profile)-matched link, TP \(.tp): communication\""' "$out/testbed.json"
        columns='"\(.tokens) \(.comm_s * 1e3) \(.predicted_comm_s * 1e3)"'
      fi
      plot="plot "
      n=0
      while IFS= read -r scheme; do
        {
          echo "# $part, run $i, $scheme: tokens, measured ms, predicted ms"
          jq -r --argjson i "$i" --arg s "$scheme" \
            ".runs[\$i].rows[] | select(.scheme == \$s) | $columns" "$out/testbed.json"
          printf '\n\n'
        } >> "$out/testbed.dat"
        plot+="'testbed.dat' index $block using 1:2 with linespoints lw 2 lc $((n + 1)) title '$scheme', "
        plot+="'testbed.dat' index $block using 1:3 with lines dt 2 lw 2 lc $((n + 1)) notitle, "
        n=$((n + 1))
        block=$((block + 1))
      done < <(jq -r --argjson i "$i" '[.runs[$i].rows[].scheme] | unique[]' "$out/testbed.json")
      echo "${plot%, }"
    done
  done
  echo "unset multiplot"
} > "$out/testbed.gp"
(cd "$out" && gnuplot testbed.gp)
echo "testbed-report: wrote $out/testbed.csv, testbed.json, testbed.md, testbed.png ($elapsed s of runs)" >&2
