"""Built-in table of known utility servers for ``mcp-agent deploy server NAME --type T``."""

from __future__ import annotations

from mcp_agent_cloud.hookspecs import hookimpl
from mcp_agent_cloud.hookspecs.types import ServerTypeSpec


@hookimpl
def mcp_agent_cloud_server_types():
    yield ServerTypeSpec(name="time", description="current time and time-zone conversion (PyPI mcp-server-time)",
                         command="mcp-server-time", pip=("mcp-server-time",))
    yield ServerTypeSpec(name="fetch", description="fetch a URL as markdown (PyPI mcp-server-fetch)",
                         command="mcp-server-fetch", pip=("mcp-server-fetch",))
    yield ServerTypeSpec(name="git", description="read and search a git repository (PyPI mcp-server-git)",
                         command="mcp-server-git", args=("--repository", "{dir}"), pip=("mcp-server-git",),
                         needs_dir=True)
    yield ServerTypeSpec(name="filesystem", description="files under one directory you give with --dir "
                         "(npm @modelcontextprotocol/server-filesystem)", command="npx",
                         args=("-y", "@modelcontextprotocol/server-filesystem", "{dir}"),
                         npm="@modelcontextprotocol/server-filesystem", needs_dir=True)
    yield ServerTypeSpec(name="everything", description="exercises every MCP feature "
                         "(npm @modelcontextprotocol/server-everything)", command="npx",
                         args=("-y", "@modelcontextprotocol/server-everything"),
                         npm="@modelcontextprotocol/server-everything")
