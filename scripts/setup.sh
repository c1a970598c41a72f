#!/usr/bin/env bash
# Creates .venv and installs mcp-agent-cloud (editable) with its test dependencies, plus the pinned npm tools the
# e2e tests run (in .tools/node). Idempotent: stamps make a rerun take well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "mcp-agent-cloud needs Python 3.11 or newer")'
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.mcpac-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> installing mcp-agent-cloud[dev] into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -U pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
  touch "$stamp"
fi

# Debian's Chromium for the console's browser tests (tests/e2e/test_console.py): Playwright drives this system
# executable; `playwright install` is never run (it downloads a browser). MCPAC_SKIP_BROWSER=1 skips it.
if [ -z "${MCPAC_SKIP_BROWSER:-}" ] && ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> chromium not found: installing Debian's chromium package with apt-get"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
      echo "warning: apt-get could not install chromium; the console's browser tests will fail" >&2
    fi
  else
    echo "warning: chromium is not installed (apt-get install chromium); the console's browser tests will fail" >&2
  fi
fi

# npm tools the gateway e2e tests run for real (the "everything" reference server, the MCP Inspector CLI, an OIDC issuer), pinned so
# a new release cannot change what the tests see. Installed into .tools/node (gitignored); tests/conftest.py finds
# them there. MCPAC_SKIP_NODE_TOOLS=1 skips this; the tests that need them then fail and point back here.
EVERYTHING_VERSION=2026.8.31
INSPECTOR_VERSION=2.12.0
OIDC_PROVIDER_VERSION=9.13.3  # a real OIDC issuer for the okta provider's tests (tests/oidc_issuer.mjs)
tools=.tools/node
want="@modelcontextprotocol/server-everything@$EVERYTHING_VERSION @modelcontextprotocol/inspector@$INSPECTOR_VERSION oidc-provider@$OIDC_PROVIDER_VERSION"
if [ -n "${MCPAC_SKIP_NODE_TOOLS:-}" ]; then
  echo "==> MCPAC_SKIP_NODE_TOOLS set: not installing $want (the gateway e2e tests will fail without them)"
  exit 0
fi
if [ -f "$tools/.mcpac-installed" ] && [ "$(cat "$tools/.mcpac-installed")" = "$want" ] \
   && [ -f "$tools/node_modules/@modelcontextprotocol/server-everything/dist/index.js" ]; then
  exit 0
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> node/npm not found: installing them with apt-get"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }; then
      echo "error: apt-get could not install nodejs and npm." >&2
      echo "hint: install Node.js 20 or newer with npm yourself, then run scripts/setup.sh again" >&2
      echo "      (or set MCPAC_SKIP_NODE_TOOLS=1 to skip; the gateway e2e tests then fail)." >&2
      exit 1
    fi
  else
    echo "error: node and npm are needed for the gateway e2e tests and were not found." >&2
    echo "hint: install Node.js 20 or newer with npm (as root this script uses apt-get), then run scripts/setup.sh" >&2
    echo "      again (or set MCPAC_SKIP_NODE_TOOLS=1 to skip; the gateway e2e tests then fail)." >&2
    exit 1
  fi
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
  # The inspector declares node >= 22.19; the tests use its CLI, which we run on node 20.
  echo "warning: node $(node --version) is older than 20; the MCP Inspector CLI may not run on it" >&2
fi
echo "==> installing $want into $tools"
mkdir -p "$tools"
# --prefix with its own package.json: the pins are recorded there and nothing leaks into a global prefix.
[ -f "$tools/package.json" ] || echo '{"private": true}' > "$tools/package.json"
npm install --prefix "$tools" --no-audit --no-fund --save-exact --loglevel=error $want
echo "$want" > "$tools/.mcpac-installed"
