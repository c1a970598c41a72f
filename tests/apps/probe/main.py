"""Probes what an app can do from inside its instance: the container builder tests deploy it."""

import os
import socket

from mcp.server.mcpserver import MCPServer

mcp = MCPServer("probe")


@mcp.tool()
def whoami() -> str:
    """uid:gid of the app's process."""
    return f"{os.getuid()}:{os.getgid()}"


@mcp.tool()
def write(path: str) -> str:
    """Write a file; 'ok' or the error."""
    try:
        with open(path, "w") as f:
            f.write("x")
        return "ok"
    except OSError as exc:
        return f"error: {exc.strerror}"


@mcp.tool()
def read(path: str) -> str:
    """A file's text, or the error."""
    try:
        with open(path) as f:
            return f.read()
    except OSError as exc:
        return f"error: {exc.strerror}"


@mcp.tool()
def connect(host: str, port: int) -> str:
    """Open a TCP connection: 'connected' or the error's name."""
    try:
        socket.create_connection((host, port), timeout=5).close()
        return "connected"
    except OSError as exc:
        return f"error: {type(exc).__name__}"


@mcp.tool()
def allocate(megabytes: int) -> str:
    """Hold that much memory (touching every page)."""
    block = bytearray(megabytes * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return f"allocated {len(block) // (1024 * 1024)} MB"


@mcp.tool()
def env(name: str) -> str:
    """An environment variable's value, or '-'."""
    return os.environ.get(name, "-")


@mcp.tool()
def crash(code: int = 3) -> str:
    """Exit the whole process at once with ``code``."""
    os._exit(code)
