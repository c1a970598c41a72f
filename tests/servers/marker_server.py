"""A stdio MCP server for the gateway's concurrency and fault tests.

Every answer and notification carries the caller's marker, so a test can tell whose traffic it got.
Faults on demand: a tool that blocks until killed, one that exits mid-request, one that writes garbage to stdout.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPDeprecationWarning

# Logging is deprecated in the 2026 protocol but is what handshake-era clients get; keep the log free of the noise.
warnings.simplefilter("ignore", MCPDeprecationWarning)

mcp = MCPServer("marker")


def stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@mcp.tool()
async def echo(marker: str, ctx: Context) -> str:
    """Log and report progress carrying the marker, then return it with this process's pid."""
    await ctx.info(f"log:{marker}")
    await ctx.report_progress(1, 2, f"progress:{marker}")
    await anyio.sleep(0.05)  # let other sessions' traffic interleave with ours
    await ctx.report_progress(2, 2, f"progress:{marker}")
    return json.dumps({"marker": marker, "pid": os.getpid()})


@mcp.tool()
def pid() -> int:
    return os.getpid()


@mcp.tool()
async def block(label: str) -> str:
    """Never answers: for timeouts and for killing the child mid-request."""
    stderr(f"blocking:{label}:{os.getpid()}")
    await anyio.sleep_forever()
    return "unreachable"


@mcp.tool()
def die(code: int) -> str:
    """Exit the whole process in the middle of the request."""
    stderr(f"dying with {code}")
    os._exit(code)


@mcp.tool()
def garbage(text: str) -> str:
    """Write a line that is not JSON-RPC to stdout and TEXT to stderr, then answer normally."""
    os.write(1, b"this line is not json {{{\n")
    stderr(text)
    return f"after garbage:{text}"


if __name__ == "__main__":
    stderr(f"marker server starting pid={os.getpid()}")
    mcp.run()
