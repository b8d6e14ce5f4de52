#!/usr/bin/env bash
# API fuzzing: schemathesis (PyPI) against the OpenAPI document served by a real
# `cloud-agent serve` (temporary data directory, port 0, generated token), bounded in examples
# and time. Checks: not_a_server_error, status_code_conformance, response_schema_conformance;
# then that the server is still up (/healthz). Exit 0 only when every check passed.
#
#   scripts/fuzz-api.sh                      # defaults below
#   FUZZ_MAX_EXAMPLES=50 FUZZ_MAX_TIME=300 FUZZ_SEED=1234 scripts/fuzz-api.sh
#
# Settings (environment):
#   CLOUD_AGENT_BIN      the cloud-agent executable   (default: .build/debug/cloud-agent)
#   FUZZ_VENV            where schemathesis is installed (default: .build/fuzz-venv; CI can cache it)
#   FUZZ_MAX_EXAMPLES    test cases per operation and phase (default 20)
#   FUZZ_MAX_TIME        time budget of the schemathesis run, seconds (default 75)
#   FUZZ_SEED            hypothesis seed (default: random, printed)
#   FUZZ_PHASES          schemathesis phases (default examples,coverage,fuzzing,stateful)
#   FUZZ_REPORT_DIR      where schemathesis's output, its JUnit report and the server's logs are
#                        kept (default: .build/fuzz-report)
#   FUZZ_NO_NETNS=1      do not isolate the run in a private network namespace
#
# Safety: the server runs setup commands, clones repos and POSTs callbacks that the fuzzer
# invents. So (1) when `unshare -n` works (root on Linux), the server and schemathesis run in a
# network namespace of their own that has only loopback; and (2) a hook rewrites every generated
# repo URL host and callback URL to 127.0.0.1 port 9, makes setup commands shell comments of the
# same length, and turns the scripted agent's `run` lines into `say` lines. Validation still sees
# the fuzzed shapes; nothing leaves the machine and nothing the fuzzer writes is executed.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SCHEMATHESIS_VERSION="${SCHEMATHESIS_VERSION:-4.32.5}"
VENV="${FUZZ_VENV:-$ROOT/.build/fuzz-venv}"
BIN="${CLOUD_AGENT_BIN:-$ROOT/.build/debug/cloud-agent}"
MAX_EXAMPLES="${FUZZ_MAX_EXAMPLES:-20}"
MAX_TIME="${FUZZ_MAX_TIME:-75}"
SEED="${FUZZ_SEED:-$(( (RANDOM << 15) | RANDOM ))}"
PHASES="${FUZZ_PHASES:-examples,coverage,fuzzing,stateful}"

log() { printf 'fuzz-api: %s\n' "$*" >&2; }

install_schemathesis() {
  if [ -x "$VENV/bin/schemathesis" ] && "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "version $SCHEMATHESIS_VERSION"; then
    return
  fi
  command -v python3 >/dev/null || { log "python3 is required"; exit 2; }
  log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
}

# ---- phase 1 (outside any namespace): install, then re-run ourselves isolated ----
if [ "${1:-}" != "--inside" ]; then
  export FUZZ_SEED="$SEED"
  install_schemathesis
  [ -x "$BIN" ] || { log "no executable at $BIN (swift build first, or set CLOUD_AGENT_BIN)"; exit 2; }
  if [ "${FUZZ_NO_NETNS:-0}" != "1" ] && command -v unshare >/dev/null && command -v ip >/dev/null \
     && unshare -n sh -c 'ip link set lo up' 2>/dev/null; then
    log "isolating the run in a private network namespace (loopback only)"
    exec unshare -n bash "$0" --inside netns
  fi
  log "no private network namespace; relying on the rewriting hook alone"
  exec bash "$0" --inside plain
fi

# ---- phase 2: server + schemathesis ----
[ "${2:-}" = "netns" ] && ip link set lo up

WORK="$(cd "$(mktemp -d "${TMPDIR:-/tmp}/cloud-agent-fuzz.XXXXXX")" && pwd -P)"
REPORT_DIR="${FUZZ_REPORT_DIR:-$ROOT/.build/fuzz-report}"
mkdir -p "$REPORT_DIR"
DATA="$WORK/data"
SERVER_PID=""

# Every process whose working directory is inside our data directory (runtimes, agents,
# setup commands) is ours: runtimes are detached from serve by design, so kill them by that.
kill_leftovers() {
  local p cwd
  for p in /proc/[0-9]*; do
    cwd="$(readlink "$p/cwd" 2>/dev/null || true)"
    case "$cwd" in "$WORK"*) kill -9 "${p#/proc/}" 2>/dev/null || true ;; esac
  done
}

cleanup() {
  local status=$?
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    # Delete every session (stops its runtime), then stop the server.
    if [ -n "${BASE:-}" ] && [ -n "${TOKEN:-}" ]; then
      local ids
      ids="$(curl -s --max-time 5 -H "Authorization: Bearer $TOKEN" "$BASE/v1/sessions?limit=200" \
        | grep -o '"sessionId":"agent_[0-9a-f-]*"' | cut -d'"' -f4 | sort -u || true)"
      for id in $ids; do curl -s --max-time 10 -o /dev/null -X DELETE -H "Authorization: Bearer $TOKEN" "$BASE/v1/sessions/$id" || true; done
    fi
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
  fi
  kill_leftovers
  cp "$WORK"/serve.* "$REPORT_DIR"/ 2>/dev/null || true
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT INT TERM

"$BIN" serve --host 127.0.0.1 --port 0 --data-dir "$DATA" --sandbox none --log-level warning \
  --idle-timeout 1s --max-runtimes 4 --heartbeat-interval 500ms --stale-threshold 5s --pending-timeout 10s \
  --stop-grace 1s --callback-attempts 1 --callback-retry-base 250ms --orphan-limit 30s \
  >"$WORK/serve.out" 2>"$WORK/serve.err" </dev/null &
SERVER_PID=$!

# The banner: "cloud-agent listening on http://127.0.0.1:PORT" and "API token for user local (…): TOKEN".
PORT=""; TOKEN=""
for _ in $(seq 1 600); do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then log "serve exited early:"; cat "$WORK/serve.err" >&2; exit 1; fi
  PORT="$(sed -n 's|^cloud-agent listening on http://127\.0\.0\.1:\([0-9][0-9]*\).*|\1|p' "$WORK/serve.out" | head -n1)"
  TOKEN="$(sed -n 's|^API token for user local.*: \(.*\)$|\1|p' "$WORK/serve.out" | head -n1 | tr -d '[:space:]')"
  [ -n "$PORT" ] && [ -n "$TOKEN" ] && break
  sleep 0.1
done
[ -n "$PORT" ] && [ -n "$TOKEN" ] || { log "no banner within 60 s"; cat "$WORK/serve.out" "$WORK/serve.err" >&2; exit 1; }
BASE="http://127.0.0.1:$PORT"
log "server $BASE (pid $SERVER_PID), seed $SEED, max examples $MAX_EXAMPLES, max time ${MAX_TIME}s, phases $PHASES"

# The hook: keeps what the server does with fuzzed input on this machine and inert.
mkdir -p "$WORK/hooks"
cat >"$WORK/hooks/cloud_agent_fuzz_hooks.py" <<'PY'
import re

import schemathesis

LOOPBACK = "127.0.0.1:9"  # the discard port: nothing listens, a connection is refused at once
SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/]*)(.*)$", re.S)
SCP = re.compile(r"^([^/:]+):(.*)$", re.S)
RUN_LINE = re.compile(r"(?m)^(\s*)run\b")


def _local_url(url):
    if not isinstance(url, str):
        return url
    match = SCHEME.match(url)
    if match:
        scheme, _, rest = match.groups()
        return url if scheme.lower() == "file" else f"{scheme}://{LOOPBACK}{rest}"
    match = SCP.match(url)
    if match:  # git would ssh to HOST for HOST:path
        return f"127.0.0.1:{match.group(2)}"
    return url


def _comment(command):
    # A shell comment of the same length (limits still apply); idempotent, since a case may be
    # sent more than once.
    if not isinstance(command, str) or not command.strip():
        return command
    return "#" + command[1:].replace("\n", " ")


def _defuse(body):
    if not isinstance(body, dict):
        return
    repo = body.get("repo")
    if isinstance(repo, dict) and "url" in repo:
        repo["url"] = _local_url(repo["url"])
    callback = body.get("callback")
    if isinstance(callback, dict) and isinstance(callback.get("url"), str):
        match = SCHEME.match(callback["url"])
        callback["url"] = f"{match.group(1)}://{LOOPBACK}{match.group(3)}" if match else callback["url"]
    commands = body.get("setupCommands")
    if isinstance(commands, list):
        body["setupCommands"] = [_comment(c) for c in commands]
    if isinstance(body.get("prompt"), str):
        body["prompt"] = RUN_LINE.sub(r"\1say", body["prompt"])


@schemathesis.hook
def before_call(context, case, kwargs):
    _defuse(case.body)


@schemathesis.check
def unavailable_is_retryable(ctx, response, case):
    """The one 5xx the API answers on purpose: 503 RUNTIME_UNAVAILABLE, retryable."""
    if response.status_code != 503:
        return None
    try:
        error = response.json().get("error", {})
    except Exception:
        error = {}
    if error.get("code") != "RUNTIME_UNAVAILABLE" or error.get("retryable") is not True:
        raise AssertionError(f"503 without RUNTIME_UNAVAILABLE/retryable: {response.text[:300]}")
    return None
PY

# 503 RUNTIME_UNAVAILABLE (every runtime slot busy, retryable) is a documented answer, not a
# crash: not_a_server_error lets it through and unavailable_is_retryable checks its body.
cat >"$WORK/schemathesis.toml" <<'TOML'
[checks.not_a_server_error]
expected-statuses = ["1XX", "2XX", "3XX", "4XX", "503"]
TOML

set +e
# From $WORK: schemathesis keeps its example database in ./.schemathesis.
(cd "$WORK" && PYTHONPATH="$WORK/hooks" SCHEMATHESIS_HOOKS=cloud_agent_fuzz_hooks \
  "$VENV/bin/schemathesis" --config-file "$WORK/schemathesis.toml" run "$BASE/openapi.yaml" \
  --url "$BASE" \
  --header "Authorization: Bearer $TOKEN" \
  --checks not_a_server_error,status_code_conformance,response_schema_conformance,unavailable_is_retryable \
  --phases "$PHASES" \
  --max-examples "$MAX_EXAMPLES" \
  --max-time "$MAX_TIME" \
  --seed "$SEED" \
  --workers 1 \
  --request-timeout 30 \
  --suppress-health-check all \
  --report junit --report-junit-path "$REPORT_DIR/schemathesis-junit.xml" \
  --no-color) 2>&1 | tee "$REPORT_DIR/schemathesis.out"
FUZZ_STATUS=${PIPESTATUS[0]}
set -e

# Still up, and still answering the API?
HEALTH="$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' "$BASE/healthz" || true)"
LIST="$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$BASE/v1/sessions" || true)"
if ! kill -0 "$SERVER_PID" 2>/dev/null || [ "$HEALTH" != "200" ] || [ "$LIST" != "200" ]; then
  log "FAIL: the server is not healthy after fuzzing (healthz $HEALTH, sessions $LIST)"
  tail -n 50 "$WORK/serve.err" >&2 || true
  exit 1
fi
INTERNAL="$(grep -c 'request failed' "$WORK/serve.err" || true)"
log "server still up after fuzzing: healthz $HEALTH, GET /v1/sessions $LIST; 'request failed' log lines: $INTERNAL"
log "seed $SEED; schemathesis exit status $FUZZ_STATUS; report in $REPORT_DIR"
exit "$FUZZ_STATUS"
