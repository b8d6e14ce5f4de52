#!/usr/bin/env bash
# End-to-end tests of the web console (Tests/console/test_console.py) in Debian's headless
# `chromium`, driven by Playwright for Python. Playwright's own browser download is never used.
#
#   CONSOLE_URL=http://127.0.0.1:8787 CONSOLE_TOKEN=… CONSOLE_OTHER_TOKEN=… scripts/console-e2e.sh
#
# Settings (environment):
#   CONSOLE_URL, CONSOLE_TOKEN, CONSOLE_OTHER_TOKEN   the server, a token, another user's token
#   CONSOLE_SCREENSHOTS   where the screenshots go (default: .build/console-screenshots;
#                         CONSOLE_SCREENSHOTS=docs refreshes the screenshots in docs/)
#   CONSOLE_FILTER        run only the tests whose name contains this
#   CONSOLE_VENV          where Playwright is installed (default: .build/console-venv)
#   CHROMIUM              the browser (default: /usr/bin/chromium)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PLAYWRIGHT_VERSION="1.65.2"
VENV="${CONSOLE_VENV:-$ROOT/.build/console-venv}"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
export CONSOLE_SCREENSHOTS="${CONSOLE_SCREENSHOTS:-$ROOT/.build/console-screenshots}"
[ "$CONSOLE_SCREENSHOTS" = docs ] && CONSOLE_SCREENSHOTS="$ROOT/docs"
mkdir -p "$CONSOLE_SCREENSHOTS"

log() { printf 'console-e2e: %s\n' "$*" >&2; }

: "${CONSOLE_URL:?set CONSOLE_URL}" "${CONSOLE_TOKEN:?set CONSOLE_TOKEN}" "${CONSOLE_OTHER_TOKEN:?set CONSOLE_OTHER_TOKEN}"
[ -x "$CHROMIUM" ] || { log "no browser at $CHROMIUM (apt-get install -y chromium)"; exit 2; }
command -v python3 >/dev/null || { log "python3 is required"; exit 2; }

if ! "$VENV/bin/python" -c "import playwright, importlib.metadata as m; assert m.version('playwright') == '$PLAYWRIGHT_VERSION'" 2>/dev/null; then
  log "installing playwright $PLAYWRIGHT_VERSION into $VENV"
  python3 -m venv "$VENV"
  # Only the Python package: its driver comes with it; the browser is the system's.
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$VENV/bin/pip" install --quiet --disable-pip-version-check "playwright==$PLAYWRIGHT_VERSION"
fi
mkdir -p "$CONSOLE_SCREENSHOTS"
exec "$VENV/bin/python" "$ROOT/Tests/console/test_console.py"
