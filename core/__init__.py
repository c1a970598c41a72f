"""mcp-agent-cloud: an open, self-hostable MCP Agent Cloud.

The package is deliberately light at import time: the CLI, the platform and the plugins import what they need.
The app API (``from mcp_agent_cloud import MCPApp, Workflow, RetryPolicy, Schedule``) loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .hookspecs.types import RetryPolicy, Schedule
    from .workflows import MCPApp, Workflow, current_run

# name -> module that defines it; resolved by __getattr__ so `import mcp_agent_cloud` stays cheap
_LAZY = {
    "MCPApp": "mcp_agent_cloud.workflows",
    "Workflow": "mcp_agent_cloud.workflows",
    "current_run": "mcp_agent_cloud.workflows",
    "RetryPolicy": "mcp_agent_cloud.hookspecs.types",
    "Schedule": "mcp_agent_cloud.hookspecs.types",
}

__all__ = ["__version__", "MCPApp", "Workflow", "current_run", "RetryPolicy", "Schedule"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # next look-up skips __getattr__
    return value
