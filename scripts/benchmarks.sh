#!/usr/bin/env bash
# Regenerates BENCHMARKS.md: builds the release products, runs every benchmark of
# cloud-agent-bench once (each measures its raw baseline in the same run), and writes the
# figures with the machine, the date and how to re-run. The "Notes" section of an existing
# BENCHMARKS.md (everything after the line `<!-- notes -->`) is kept.
#
#   scripts/benchmarks.sh            # the full configuration of issue 5
#   scripts/benchmarks.sh --quick    # the small CI configuration
#
# Environment: BENCH_SCRATCH_PATH (default .build) is SwiftPM's --scratch-path;
# BENCH_ONLY="stream idle" runs only those benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="full"
args=()
if [ "${1:-}" = "--quick" ]; then mode="quick"; args+=(--quick); fi
scratch="${BENCH_SCRATCH_PATH:-.build}"
benchmarks=(${BENCH_ONLY:-heartbeats stream idle scale coldstart})

echo "building release products (scratch path $scratch)…" >&2
for product in cloud-agent cloud-agent-runtime cloud-agent-bench; do
  swift build -c release --scratch-path "$scratch" --product "$product" >&2
done
bin="$scratch/release"

results="$(mktemp -d)"
trap 'rm -rf "$results"' EXIT
failed=()
timings=()
for benchmark in "${benchmarks[@]}"; do
  echo "== $benchmark ($mode)" >&2
  start=$(date +%s)
  if "$bin/cloud-agent-bench" "$benchmark" "${args[@]}" --json > "$results/$benchmark.jsonl"; then
    timings+=("$benchmark $(( $(date +%s) - start )) s")
  else
    failed+=("$benchmark")
    timings+=("$benchmark FAILED after $(( $(date +%s) - start )) s")
  fi
  cat "$results/$benchmark.jsonl" >&2
done

files=()
for benchmark in "${benchmarks[@]}"; do files+=("$results/$benchmark.jsonl"); done
table="$("$bin/cloud-agent-bench" report "${files[@]}")"

notes=""
if [ -f BENCHMARKS.md ] && grep -q '^<!-- notes -->$' BENCHMARKS.md; then
  notes="$(sed -n '/^<!-- notes -->$/,$p' BENCHMARKS.md | tail -n +2)"
fi

cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)"
memory="$(free -h | awk '/^Mem:/ {print $2}')"
{
  echo "# Benchmarks"
  echo
  echo "Measured by \`scripts/benchmarks.sh${args[*]:+ ${args[*]}}\` on $(date -u '+%Y-%m-%d %H:%M UTC') —"
  echo "configuration: **$mode**$([ "$mode" = quick ] && echo " (the small CI configuration, not the issue's full one)")."
  echo "Each figure with a baseline measured both in the same run on the same machine; the ratio is value ÷ baseline."
  echo "These machines are shared and noisy: compare ratios, and absolute figures only run to run on one machine."
  echo
  echo "Machine: $(nproc) CPUs ($cpu), $memory memory, $(uname -sr), $(swift --version 2>/dev/null | head -1)."
  echo "Run times: $(printf '%s; ' "${timings[@]}" | sed 's/; $//')."
  if [ ${#failed[@]} -gt 0 ]; then echo; echo "**Failed to run:** ${failed[*]}."; fi
  echo
  echo "$table"
  echo
  echo "## What each benchmark does"
  echo
  echo "- \`heartbeats\`: simulated runtimes (a child process of the bench, so that the server's CPU time is its own)"
  echo "  speak the runtime protocol over real WebSockets on loopback to a real control plane (\`ControlPlane.open\` +"
  echo "  \`buildApplication\`) on SQLite in a temp dir; after the handshake each heartbeats its running execution as fast"
  echo "  as its socket takes frames. Figures: heartbeats the server accepted per second (\`HeartbeatBatcher.acceptedCount\`)"
  echo "  and the server process's CPU time (getrusage) per accepted heartbeat. Baseline: raw GRDB, one transaction per"
  echo "  batch of single-column \`UPDATE executions SET last_heartbeat\`, back to back, on the same schema."
  echo "- \`stream\`: simulated runtimes emit agent events at a set total rate while several stream subscribers per"
  echo "  session read \`/v1/sessions/{id}/stream\`; latency (HdrHistogram) runs from the moment each event was due to be"
  echo "  sent to its arrival at a subscriber (a runtime keeps at most 1,000 events unacknowledged, as an outbox would)."
  echo "  Then each runtime sends as fast as a window of 64 unacknowledged events allows"
  echo "  (peak = acknowledged events/s, every event durable and fanned out). Baseline: a raw hummingbird-websocket echo"
  echo "  server driven identically (latency = round trip, peak = echoes/s)."
  echo "- \`idle\`: (a) an in-process simulated runtime fleet (\`InProcessSimulatedRuntimeFleet\`: runtimes recorded"
  echo "  \`running\` through the store, no process) connects at a steady pace; the real WakeUpScheduler stops each at its"
  echo "  idle deadline; lag = \`runtime.stoppedAt\` − (last activity + idle timeout), from the stored stop reasons."
  echo "  (b) real \`cloud-agent-runtime\` processes run executions that stay silent (scripted \`sleep\`) for twice the"
  echo "  idle timeout; a false kill is a \`runtime.stopped\` before the execution's end."
  echo "  (c) the same precision while another session cold-starts slowly: a real session whose restore runs a long"
  echo "  setup command is messaged just before the simulated runtimes' deadlines come due (issue 11: no lock across slow"
  echo "  work); baseline: (a)'s maximum lag in the same run."
  echo "- \`scale\`: dormant sessions (stopped, one completed execution, six events and a wake-up each) are written"
  echo "  through the store, then \`cloud-agent serve\` runs as a child process: spawn → first 200 from \`/readyz\`; VmRSS"
  echo "  once the wake-ups are re-armed; GET \`/v1/sessions/{id}\` of random sessions; RSS growth per active session"
  echo "  (simulated runtimes connected, each with a running execution)."
  echo "- \`coldstart\`: a real control plane launching real runtimes (sandbox \`auto\`): \`POST /v1/sessions\` with a local"
  echo "  git repository until the runtime is connected; then, once the runtime was stopped by the idle rule, \`POST"
  echo "  …/messages\` until \`execution.running\` (the agent process started)."
  echo
  echo "## Re-running"
  echo
  echo '```sh'
  echo "scripts/benchmarks.sh            # full configuration, rewrites BENCHMARKS.md"
  echo "scripts/benchmarks.sh --quick    # small configuration"
  echo "for p in cloud-agent cloud-agent-runtime cloud-agent-bench; do swift build -c release --product \$p; done"
  echo ".build/release/cloud-agent-bench heartbeats [--quick] [--json]   # one benchmark; --help lists its options"
  echo '```'
  echo
  echo "<!-- notes -->"
  if [ -n "$notes" ]; then echo "$notes"; fi
} > BENCHMARKS.md
echo "wrote BENCHMARKS.md" >&2
if [ ${#failed[@]} -gt 0 ]; then exit 1; fi
