"""A test app for deployment secrets. Its tools say whether a secret holds an expected value, by SHA-256, and never
return a value: the tests look for the values everywhere else and must find them nowhere.

At start it exits when any secret begins with ``break-me``: a rotation to such a value must fail its health check.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import yaml
from mcp.server.mcpserver import MCPServer

SECRETS_FILE = os.environ.get("MCP_AGENT_SECRETS_FILE")


def _file_values() -> dict:
    if not SECRETS_FILE:
        return {}
    return yaml.safe_load(Path(SECRETS_FILE).read_text()) or {}


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], node


_values = [v for k, v in os.environ.items() if k.isupper()] + [str(v) for _, v in _leaves(_file_values())]
if any(v.startswith("break-me") for v in _values):
    print("refusing to start: a credential was rejected", file=sys.stderr)
    sys.exit(3)

mcp = MCPServer("secrets", instructions="Checks secrets by hash; never returns one.")


def _verdict(value: str | None, sha256: str) -> str:
    if value is None:
        return "unset"
    return "match" if hashlib.sha256(value.encode()).hexdigest() == sha256 else "mismatch"


@mcp.tool()
def check(name: str, sha256: str) -> str:
    """Whether environment variable NAME hashes to SHA256: match, mismatch or unset."""
    return _verdict(os.environ.get(name), sha256)


@mcp.tool()
def check_file(path: str, sha256: str) -> str:
    """Whether the value at dotted PATH in the secrets file hashes to SHA256: match, mismatch or unset.

    The file is read now from MCP_AGENT_SECRETS_FILE and, when there is one (apps, not stdio servers), through
    the mcp_agent.secrets.yaml link in the working directory, which the mcp-agent framework reads: both agree."""
    if not SECRETS_FILE:
        return "no file"
    data = _file_values()
    link = Path("mcp_agent.secrets.yaml")
    if link.exists() and yaml.safe_load(link.read_text()) != data:
        return "link differs"
    node = data
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return _verdict(node if isinstance(node, str) else None, sha256)


if __name__ == "__main__":  # as a stdio server (`deploy server --command python --arg main.py`)
    mcp.run()
