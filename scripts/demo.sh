#!/usr/bin/env bash
# The main job on the embedded defaults: start the platform, deploy examples/hello, call one of its tools.
# State goes to $MCP_AGENT_CLOUD_HOME (default: .demo/ here). Pass --keep to leave the platform running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MCP_AGENT_CLOUD_HOME=${MCP_AGENT_CLOUD_HOME:-$PWD/.demo}
mkdir -p "$MCP_AGENT_CLOUD_HOME"
A=.venv/bin/mcp-agent
$A serve > "$MCP_AGENT_CLOUD_HOME/platform.log" 2>&1 &
pid=$!
cleanup() { if [ "${1:-}" != keep ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -fsS http://127.0.0.1:8765/healthz >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$MCP_AGENT_CLOUD_HOME/platform.log"; exit 1; }
  sleep 0.2
done
$A deploy app examples/hello --name hello
$A list
$A call hello greet -a name=world
$A logs hello --tail 5
if [ "${1:-}" = "--keep" ]; then
  trap - EXIT
  echo "platform left running (pid $pid); stop it with: kill $pid"
fi
