#!/usr/bin/env bash
# Regenerates BENCHMARKS.md: builds the release products, runs every benchmark of
# cloud-agent-bench once (each measures its raw baseline in the same run), and writes the
# figures with the machine, the date and how to re-run. The "Notes" section of an existing
# BENCHMARKS.md (everything after the line `<!-- notes -->`) is kept. Then the same benchmarks
# on PostgreSQL (`--postgres`: each starts a throwaway cluster of its own and stops it), and the
# figures of several nodes on one PostgreSQL database (`cluster`).
#
#   scripts/benchmarks.sh            # the full configuration of issue 5
#   scripts/benchmarks.sh --quick    # the small CI configuration
#
# Environment: BENCH_SCRATCH_PATH (default .build) is SwiftPM's --scratch-path;
# BENCH_ONLY="stream idle" runs only those benchmarks on SQLite (BENCH_ONLY="" none);
# BENCH_POSTGRES_ONLY="scale cluster" only those on PostgreSQL (BENCH_POSTGRES_ONLY="" none);
# BENCH_DATABASE_URL=postgres://… uses that server instead of throwaway clusters (the user needs
# CREATEDB: each measurement creates a database of its own and drops it).
set -euo pipefail
cd "$(dirname "$0")/.."

mode="full"
args=()
if [ "${1:-}" = "--quick" ]; then mode="quick"; args+=(--quick); fi
scratch="${BENCH_SCRATCH_PATH:-.build}"
benchmarks=(${BENCH_ONLY-heartbeats stream idle scale coldstart})
postgres_benchmarks=(${BENCH_POSTGRES_ONLY-heartbeats stream idle scale cluster})
if [ -n "${BENCH_DATABASE_URL:-}" ]; then postgres=(--database-url "$BENCH_DATABASE_URL"); else postgres=(--postgres); fi

echo "building release products (scratch path $scratch)…" >&2
for product in cloud-agent cloud-agent-runtime cloud-agent-bench; do
  swift build -c release --scratch-path "$scratch" --product "$product" >&2
done
bin="$scratch/release"

results="$(mktemp -d)"
trap 'rm -rf "$results"' EXIT
failed=()
timings=()
files=()
# run NAME FILE ARGS…: one benchmark, its figures into FILE.
run() {
  local name="$1" file="$2"
  shift 2
  echo "== $name ($mode)" >&2
  local start=$(date +%s)
  if "$bin/cloud-agent-bench" "$@" "${args[@]}" --json > "$file"; then
    timings+=("$name $(( $(date +%s) - start )) s")
  else
    failed+=("$name")
    timings+=("$name FAILED after $(( $(date +%s) - start )) s")
  fi
  files+=("$file")
  cat "$file" >&2
}
for benchmark in "${benchmarks[@]}"; do run "$benchmark" "$results/$benchmark.jsonl" "$benchmark"; done
for benchmark in "${postgres_benchmarks[@]}"; do
  run "$benchmark (PostgreSQL)" "$results/$benchmark.postgres.jsonl" "$benchmark" "${postgres[@]}"
done
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
  if [ ${#failed[@]} -gt 0 ]; then echo; echo "**Failed to run:** $(printf '%s, ' "${failed[@]}" | sed 's/, $//')."; fi
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
  echo "- On PostgreSQL (figures named \`….postgres\`, \`--postgres\`): the same benchmarks, each on a throwaway"
  echo "  PostgreSQL cluster the bench starts itself (initdb in a temp dir, loopback, \`synchronous_commit=off\` as"
  echo "  SQLite runs with \`synchronous=NORMAL\`), a fresh database per measurement, opened as \`serve\` opens it"
  echo "  (\`StoreFactory\`). Baselines are raw PostgreSQL: heartbeats against postgres-nio batched UPDATEs (one"
  echo "  transaction per batch, one connection), stream against the echo server INSERTing each frame before echoing"
  echo "  it. \`scale\` on PostgreSQL writes its dormant sessions by COPY straight into the store's tables."
  echo "- \`cluster\` (PostgreSQL only): two nodes on one database. Stream: two nodes in the bench's process (opened"
  echo "  by \`StoreFactory.withNode\` as \`serve\` opens them), simulated runtimes connected to node A, subscribers on"
  echo "  node B (events cross by the database's change notices), against the same run on one node. Failover: two"
  echo "  \`cloud-agent serve\` processes, real runtimes hosted by node A, node A killed with SIGKILL: until every runtime"
  echo "  said hello to node B, and the lag of the idle stops (by node B) whose deadlines fall just after the kill."
  echo
  echo "## Re-running"
  echo
  echo '```sh'
  echo "scripts/benchmarks.sh            # full configuration, rewrites BENCHMARKS.md"
  echo "scripts/benchmarks.sh --quick    # small configuration"
  echo "for p in cloud-agent cloud-agent-runtime cloud-agent-bench; do swift build -c release --product \$p; done"
  echo ".build/release/cloud-agent-bench heartbeats [--quick] [--json]   # one benchmark; --help lists its options"
  echo ".build/release/cloud-agent-bench scale --postgres [--quick]       # on a throwaway PostgreSQL cluster"
  echo ".build/release/cloud-agent-bench scale --database-url postgres://user:pass@host/db   # on a server of yours (CREATEDB)"
  echo '```'
  echo
  echo "<!-- notes -->"
  if [ -n "$notes" ]; then echo "$notes"; fi
} > BENCHMARKS.md
echo "wrote BENCHMARKS.md" >&2
if [ ${#failed[@]} -gt 0 ]; then exit 1; fi
