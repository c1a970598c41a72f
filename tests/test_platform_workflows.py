"""Platform-side pieces of workflows that need no running platform: runtime detection, the env key of the runtime
requirements, and turning an app's tool error back into the platform's error class."""

from __future__ import annotations

import json

from mcp_agent_cloud.errors import ConflictError, NotFoundError, RateLimited, ValidationFailed
from mcp_agent_cloud.platform.service import uses_runtime
from mcp_agent_cloud.platform.workflows import error_from_tool
from mcp_agent_cloud.plugins.process import runtime_env_key


def test_uses_runtime_by_import_or_requirement(tmp_path):
    app = tmp_path / "app"
    (app / "pkg").mkdir(parents=True)
    (app / "main.py").write_text("from mcp.server.mcpserver import MCPServer\nmcp = MCPServer('x')\n")
    assert not uses_runtime(app, ["mcp>=2.3"])
    assert uses_runtime(app, ["mcp-agent-cloud[temporal]>=0.1"])
    assert uses_runtime(app, ["MCP_Agent.Cloud"])  # names are normalised as pip does
    (app / "pkg" / "flows.py").write_text("import os\n    from mcp_agent_cloud.workflows import current_run\n")
    assert uses_runtime(app, [])
    (app / "pkg" / "flows.py").write_text("import mcp_agent_cloudish\n# from mcp_agent_cloud import MCPApp\n")
    assert not uses_runtime(app, [])
    # A vendored venv inside the app does not count.
    (app / ".venv" / "lib").mkdir(parents=True)
    (app / ".venv" / "lib" / "x.py").write_text("import mcp_agent_cloud\n")
    assert not uses_runtime(app, [])


def test_runtime_env_key_counts_the_wheel_by_content(tmp_path):
    a, b = tmp_path / "a" / "w.whl", tmp_path / "b" / "w.whl"
    for path in (a, b):
        path.parent.mkdir()
        path.write_bytes(b"same wheel")
    extra = ["temporalio==1.35.0"]
    key_a = runtime_env_key("k", [f"mcp-agent-cloud @ {a.as_uri()}", *extra])
    assert key_a == runtime_env_key("k", [f"mcp-agent-cloud @ {b.as_uri()}", *extra])  # another data dir: shared
    assert key_a != runtime_env_key("other-app-key", [f"mcp-agent-cloud @ {a.as_uri()}", *extra])
    assert key_a != runtime_env_key("k", [f"mcp-agent-cloud @ {a.as_uri()}"])
    b.write_bytes(b"new runtime code")
    assert key_a != runtime_env_key("k", [f"mcp-agent-cloud @ {b.as_uri()}", *extra])


def test_tool_errors_come_back_as_the_same_error_class():
    def mapped(body, tool="workflows-run"):
        return error_from_tool(json.dumps(body) if isinstance(body, dict) else body, deployment="default.app",
                               tool=tool)

    exc = mapped({"error": "not_found", "message": "unknown workflow 'Nope'", "hint": "see workflows-list"})
    assert type(exc) is NotFoundError and exc.status == 404 and exc.hint == "see workflows-list"
    exc = mapped({"error": "invalid_request", "message": "invalid run_parameters for A: amount: not an int"})
    assert type(exc) is ValidationFailed and exc.status == 400 and "amount" in exc.message
    assert type(mapped({"error": "conflict", "message": "run is completed"})) is ConflictError
    exc = mapped({"error": "rate_limited", "message": "retry in 3 s"})
    assert type(exc) is RateLimited and exc.status == 429
    exc = mapped({"error": "internal_error", "message": "ZeroDivisionError: x"})
    assert exc.status == 502 and exc.to_dict()["error"] == "internal_error"
    assert mapped({"error": "timeout", "message": "slow"}).status == 504
    # Not our JSON: an app without the workflows tools, or any other failure.
    exc = mapped("Unknown tool: workflows-run")
    assert type(exc) is NotFoundError and "workflows-run" in exc.message and "MCPApp" in exc.hint
    exc = mapped("boom")
    assert exc.status == 502 and "boom" in exc.message and "mcp-agent logs app" in exc.hint
