#!/usr/bin/env bash
# Installs the real agent CLIs that ship on PyPI — Claude Code (inside the `claude-agent-sdk`
# wheel), Codex (`openai-codex-cli-bin`), and the ACP agent `claude-code-acp` (a Python Agent
# Client Protocol agent that drives that Claude Code; in a venv of its own, with
# `agent-client-protocol` pinned at 0.7.1, as newer releases break its imports) — into one
# directory, and prints the environment that points cloud-agent (and its tests) at them:
#
#   eval "$(scripts/install-agents.sh)"        # sets CLOUD_AGENT_CLAUDE_BIN, …_CODEX_BIN, …_CLAUDE_ACP_BIN, …_KIMI_ACP_BIN, …_MCP_PYTHON
#   scripts/install-agents.sh /opt/agents      # somewhere else (default: ~/.cache/cloud-agent/agents)
#
# With Python 3.12 or later it also installs Kimi Code CLI (`kimi acp`), a second ACP agent.
# CLOUD_AGENT_CLAUDE_ACP_BIN and CLOUD_AGENT_KIMI_ACP_BIN are not server settings: an ACP agent is declared in the agents
# file (`{"name": "claude-acp", "command": ["<that path>"], "protocol": "acp"}`, docs/acp.md).
# An existing installation of the pinned versions is reused. Needs python3 with pip and venv, and PyPI.
set -euo pipefail

CLAUDE_SDK_VERSION="${CLAUDE_SDK_VERSION:-0.2.189}"   # bundles Claude Code 2.1.x
CODEX_VERSION="${CODEX_VERSION:-0.163.0}"
CLAUDE_ACP_VERSION="${CLAUDE_ACP_VERSION:-0.5.1}"
ACP_SDK_VERSION="0.7.1"
target="${1:-${CLOUD_AGENT_AGENTS_DIR:-$HOME/.cache/cloud-agent/agents}}"
stamp="$target/.installed-$CLAUDE_SDK_VERSION-$CODEX_VERSION"
claude="$target/claude_agent_sdk/_bundled/claude"
codex="$target/codex_cli_bin/bin/codex"
acp_venv="$target/claude-code-acp"
acp_stamp="$acp_venv/.installed-$CLAUDE_ACP_VERSION-$ACP_SDK_VERSION-$CLAUDE_SDK_VERSION"
claude_acp="$acp_venv/bin/claude-code-acp"

if [ ! -f "$stamp" ] || [ ! -x "$claude" ] || [ ! -x "$codex" ]; then
  mkdir -p "$target"
  echo "installing claude-agent-sdk $CLAUDE_SDK_VERSION and openai-codex-cli-bin $CODEX_VERSION into $target" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --upgrade --target "$target" \
    "claude-agent-sdk==$CLAUDE_SDK_VERSION" "openai-codex-cli-bin==$CODEX_VERSION" >&2
  touch "$stamp"
fi
if [ ! -f "$acp_stamp" ] || [ ! -x "$claude_acp" ]; then
  echo "installing claude-code-acp $CLAUDE_ACP_VERSION (agent-client-protocol $ACP_SDK_VERSION) into $acp_venv" >&2
  rm -rf "$acp_venv"
  python3 -m venv "$acp_venv"
  "$acp_venv/bin/pip" install --quiet --disable-pip-version-check \
    "claude-code-acp==$CLAUDE_ACP_VERSION" "agent-client-protocol==$ACP_SDK_VERSION" "claude-agent-sdk==$CLAUDE_SDK_VERSION" >&2
  touch "$acp_stamp"
fi
# Kimi Code CLI (`kimi acp`), a second real ACP agent, which keeps its sessions on disk (so a cold
# start resumes them with session/load). It needs Python 3.12 or later: where there is none, it
# is left out and its tests are skipped. anthropic is pinned: 2.x breaks its Anthropic provider.
KIMI_VERSION="${KIMI_VERSION:-1.50.0}"
kimi_venv="$target/kimi-cli"
kimi_stamp="$kimi_venv/.installed-$KIMI_VERSION"
kimi="$kimi_venv/bin/kimi"
if [ ! -f "$kimi_stamp" ] || [ ! -x "$kimi" ]; then
  python312=""
  # The newest first: kimi-cli 1.50.0 fails to import on Python 3.12.1.
  pyenvs="${PYENV_ROOT:-$HOME/.pyenv}/versions"
  for candidate in "$pyenvs"/3.1[3-9]*/bin/python3 python3.14 python3.13 "$pyenvs"/3.12*/bin/python3 python3.12; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      python312="$(command -v "$candidate")"
      break
    fi
  done
  if [ -n "$python312" ]; then
    echo "installing kimi-cli $KIMI_VERSION into $kimi_venv (with $python312)" >&2
    rm -rf "$kimi_venv"
    "$python312" -m venv "$kimi_venv"
    "$kimi_venv/bin/pip" install --quiet --disable-pip-version-check "kimi-cli==$KIMI_VERSION" "anthropic==1.17.0" >&2
    if "$kimi_venv/bin/python" -c "import kimi_cli.acp.server" >/dev/null 2>&1; then
      touch "$kimi_stamp"
    else
      echo "kimi-cli left out: it does not import with $python312" >&2
      rm -rf "$kimi_venv"
    fi
  else
    echo "kimi-cli left out: it needs Python 3.12 or later, and none was found" >&2
  fi
fi
# The MCP Python SDK, in a venv of its own, for the tests' MCP server (Tests/Fixtures/mcp).
MCP_VERSION="${MCP_VERSION:-2.3.0}"
mcp_venv="$target/mcp-fixture"
mcp_stamp="$mcp_venv/.installed-$MCP_VERSION"
if [ ! -f "$mcp_stamp" ] || [ ! -x "$mcp_venv/bin/python" ]; then
  echo "installing mcp $MCP_VERSION into $mcp_venv" >&2
  rm -rf "$mcp_venv"
  python3 -m venv "$mcp_venv"
  "$mcp_venv/bin/pip" install --quiet --disable-pip-version-check "mcp==$MCP_VERSION" >&2
  touch "$mcp_stamp"
fi
"$claude" --version >&2
"$codex" --version >&2
"$acp_venv/bin/python" -c "import claude_code_acp, acp; print('claude-code-acp', claude_code_acp.__version__)" >&2
echo "export CLOUD_AGENT_CLAUDE_BIN=$claude"
echo "export CLOUD_AGENT_CODEX_BIN=$codex"
echo "export CLOUD_AGENT_CLAUDE_ACP_BIN=$claude_acp"
echo "export CLOUD_AGENT_MCP_PYTHON=$mcp_venv/bin/python"
if [ -x "$kimi" ]; then
  "$kimi" --version >&2 || true
  echo "export CLOUD_AGENT_KIMI_ACP_BIN=$kimi"
fi
