#!/usr/bin/env bash
# CI proof that the benchmarks work (issue 5): runs every cloud-agent-bench subcommand once with
# `--quick --json` against the debug build. Not a timed test: the figures are printed, never
# compared with the goals (CI machines are noisy). Fails when a subcommand fails, times out, or
# prints no figure line (one JSON object with the issue's fields per figure). Then the PostgreSQL
# variants (`--postgres`: each starts a throwaway cluster of its own; about a minute and a half
# more on 2 cores), and `cluster` (two nodes on one database).
#
#   scripts/ci-bench.sh                 # every subcommand
#   BENCH_ONLY="idle stream" scripts/ci-bench.sh
#   BENCH_POSTGRES_ONLY="" scripts/ci-bench.sh    # no PostgreSQL variant
#
# Environment: CI_BENCH_TIMEOUT (seconds per subcommand, default 240).
set -euo pipefail
cd "$(dirname "$0")/.."

benchmarks=(${BENCH_ONLY-heartbeats stream idle scale coldstart})
postgres_benchmarks=(${BENCH_POSTGRES_ONLY-heartbeats stream idle scale cluster})
limit="${CI_BENCH_TIMEOUT:-240}"

# The debug products (already built by `swift test`; this is a no-op then).
for product in cloud-agent cloud-agent-runtime cloud-agent-bench; do
  swift build --product "$product" >/dev/null
done
bin="$(swift build --show-bin-path)"

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
failed=()
total_start=$(date +%s)
# NAME, then the subcommand and its options.
runs=()
for benchmark in "${benchmarks[@]}"; do runs+=("$benchmark|$benchmark"); done
for benchmark in "${postgres_benchmarks[@]}"; do runs+=("$benchmark.postgres|$benchmark --postgres"); done
for run in "${runs[@]}"; do
  benchmark="${run%%|*}"
  read -r -a command <<<"${run#*|}"
  start=$(date +%s)
  status=0
  timeout --kill-after=10 "$limit" "$bin/cloud-agent-bench" "${command[@]}" --quick --json \
    >"$logs/$benchmark.out" 2>"$logs/$benchmark.err" || status=$?
  elapsed=$(( $(date +%s) - start ))
  # A figure line: one JSON object naming the figure, a numeric value, the issue's other fields.
  pattern='^\{"name":"[a-z_]+(\.[a-z0-9_]+)+","value":-?[0-9][0-9.eE+-]*,"unit":"[^"]*","baseline":[^,]+,"ratio":[^,]+,"params":\{.*\}\}$'
  figures=$(grep -cE "$pattern" "$logs/$benchmark.out" || true)
  nonnumeric=$(( $(grep -c '^{' "$logs/$benchmark.out" || true) - figures ))
  if [ "$status" -ne 0 ] || [ "$figures" -eq 0 ] || [ "$nonnumeric" -ne 0 ]; then
    why="exit status $status"
    [ "$status" -eq 124 ] && why="timed out after ${limit} s"
    [ "$status" -eq 0 ] && why="$figures figure lines, $nonnumeric malformed"
    echo "ci-bench: $benchmark FAILED ($why, ${elapsed} s)"
    echo "--- stdout"; cat "$logs/$benchmark.out"
    echo "--- stderr (last 40 lines)"; tail -n 40 "$logs/$benchmark.err"
    failed+=("$benchmark")
  else
    echo "ci-bench: $benchmark ok ($figures figures, ${elapsed} s)"
    cat "$logs/$benchmark.out"
  fi
done
echo "ci-bench: ${#runs[@]} subcommands in $(( $(date +%s) - total_start )) s; failed: ${failed[*]:-none}"
[ ${#failed[@]} -eq 0 ]
