#!/usr/bin/env bash
# Installs the real agent CLIs that ship on PyPI — Claude Code (inside the `claude-agent-sdk`
# wheel) and Codex (`openai-codex-cli-bin`) — into one directory, and prints the environment
# that points cloud-agent at them:
#
#   eval "$(scripts/install-agents.sh)"        # sets CLOUD_AGENT_CLAUDE_BIN and CLOUD_AGENT_CODEX_BIN
#   scripts/install-agents.sh /opt/agents      # somewhere else (default: ~/.cache/cloud-agent/agents)
#
# An existing installation of the pinned versions is reused. Needs python3 with pip and PyPI.
set -euo pipefail

CLAUDE_SDK_VERSION="${CLAUDE_SDK_VERSION:-0.2.189}"   # bundles Claude Code 2.1.x
CODEX_VERSION="${CODEX_VERSION:-0.163.0}"
target="${1:-${CLOUD_AGENT_AGENTS_DIR:-$HOME/.cache/cloud-agent/agents}}"
stamp="$target/.installed-$CLAUDE_SDK_VERSION-$CODEX_VERSION"
claude="$target/claude_agent_sdk/_bundled/claude"
codex="$target/codex_cli_bin/bin/codex"

if [ ! -f "$stamp" ] || [ ! -x "$claude" ] || [ ! -x "$codex" ]; then
  mkdir -p "$target"
  echo "installing claude-agent-sdk $CLAUDE_SDK_VERSION and openai-codex-cli-bin $CODEX_VERSION into $target" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --upgrade --target "$target" \
    "claude-agent-sdk==$CLAUDE_SDK_VERSION" "openai-codex-cli-bin==$CODEX_VERSION" >&2
  touch "$stamp"
fi
"$claude" --version >&2
"$codex" --version >&2
echo "export CLOUD_AGENT_CLAUDE_BIN=$claude"
echo "export CLOUD_AGENT_CODEX_BIN=$codex"
