"""core/platform/workflows.py's normalizers: our runtime's and the lastmile-ai mcp-agent framework's shapes of the
workflows-* tools give the same platform shapes. tests/e2e/test_mcp_agent_framework.py checks them on a deployed
framework app; these pin the rules, including that our own shapes pass through unchanged."""

from __future__ import annotations

import pytest

from mcp_agent_cloud.errors import NotFoundError, ValidationFailed
from mcp_agent_cloud.platform.workflows import error_from_tool, fit_arguments, runs_of, workflows_of

SCHEMA = {"type": "object", "properties": {"request": {"type": "string"}}, "required": ["request"]}


def test_workflows_of_both_shapes():
    ours = {"workflows": [{"name": "A", "input_schema": SCHEMA, "run_tool": "workflows-A-run"}]}
    assert workflows_of(ours) == ours["workflows"]
    framework = {"Approval": {"name": "Approval", "description": "d", "capabilities": ["run"],
                              "tool_endpoints": ["workflows-Approval-run"], "run_parameters": SCHEMA},
                 "Other": {"description": "no name field", "run_parameters": {"type": "object"}}}
    got = {w["name"]: w for w in workflows_of(framework)}
    assert set(got) == {"Approval", "Other"}
    assert got["Approval"]["input_schema"] == SCHEMA and got["Approval"]["run_parameters"] == SCHEMA
    assert got["Approval"]["run_tool"] == "workflows-Approval-run" and got["Approval"]["description"] == "d"
    assert got["Other"]["input_schema"] == {"type": "object"}
    assert workflows_of({}) == [] and workflows_of(None) == [] and workflows_of("text") == []


def test_runs_of_both_shapes_with_filters():
    runs = [{"run_id": "1", "name": "A", "status": "running"}, {"run_id": "2", "name": "B", "status": "completed"}]
    assert runs_of({"runs": runs, "next_page_token": "t"}) == (runs, "t")  # ours (and the framework on temporal)
    assert runs_of(runs) == (runs, None)  # the framework on asyncio: a plain list
    assert runs_of(runs, status="completed")[0] == [runs[1]]
    assert runs_of(runs, workflow="A")[0] == [runs[0]]
    assert runs_of(runs, status="completed", workflow="A")[0] == []
    assert runs_of(None) == ([], None) and runs_of({"runs": None}) == ([], None)


def test_fit_arguments_to_the_tools_schema():
    ours = {"type": "object", "properties": {k: {} for k in ("workflow_name", "run_parameters", "workflow_id",
                                                             "priority")}, "required": ["workflow_name"]}
    args = {"workflow_name": "A", "run_parameters": {}, "workflow_id": None, "priority": 2}
    assert fit_arguments(ours, args, deployment="o.d", tool="workflows-run") == {
        "workflow_name": "A", "run_parameters": {}, "priority": 2}
    # The framework's workflows-run under FastMCP 1.x: **kwargs became a required `kwargs` field.
    framework = {"type": "object", "properties": {"workflow_name": {}, "run_parameters": {}, "kwargs": {}},
                 "required": ["workflow_name", "kwargs"]}
    assert fit_arguments(framework, {"workflow_name": "A", "run_parameters": {"x": 1}, "workflow_id": None},
                         deployment="o.d", tool="workflows-run") == {
        "workflow_name": "A", "run_parameters": {"x": 1}, "kwargs": {}}
    with pytest.raises(ValidationFailed, match="takes no priority, workflow_id"):
        fit_arguments(framework, {"workflow_name": "A", "workflow_id": "w", "priority": 1}, deployment="o.d",
                      tool="workflows-run")
    assert fit_arguments({"type": "object"}, {"a": 1, "b": None}, deployment="o.d", tool="t") == {"a": 1}


def test_a_framework_not_found_error_is_a_404_about_the_workflow():
    exc = error_from_tool("Error executing tool workflows-run: Workflow 'Nope' not found.", deployment="o.d",
                          tool="workflows-run")
    assert type(exc) is NotFoundError and "Nope" in exc.message and "has no tool" not in exc.message
    exc = error_from_tool("Unknown tool: workflows-pause", deployment="o.d", tool="workflows-pause")
    assert type(exc) is NotFoundError and "has no tool workflows-pause" in exc.message
