"""Durable workflows as MCP tools: the app API (``MCPApp``, ``Workflow``, ``current_run``).

``MCPApp`` loads the mcp SDK's server, so it is imported on first use; the rest is light and executor-independent
(executors import :mod:`mcp_agent_cloud.workflows.base`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..hookspecs.types import RetryPolicy, RunContext, Schedule, StepDef, WorkflowDef
from .base import Workflow, current_run, execute

if TYPE_CHECKING:
    from .app import MCPApp

__all__ = ["MCPApp", "Workflow", "RunContext", "RetryPolicy", "Schedule", "StepDef", "WorkflowDef", "current_run",
           "execute"]


def __getattr__(name: str) -> Any:
    if name == "MCPApp":
        from .app import MCPApp

        return MCPApp
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
