"""Spans made inside an MCPApp: the app served by uvicorn, called with the real mcp SDK client carrying a
``traceparent`` (as the gateway sends it), and its spans fetched from the control route the platform polls.

Proves: each tool call is a ``tools/call NAME`` server span, child of the caller's span; a run it starts is a
``workflow.run NAME`` span (``run.id``, ``workflow.id``) child of that, with a ``workflow.step NAME`` span per step
attempt under it, on the asyncio executor and (marker ``temporal``) on Temporal, where the step spans are made in
the worker and the run span when the worker ends the run; a run resumed from another trace keeps its steps in its
own; the route hands each span over once, needs the control token, and counts what it dropped; without
``MCPAC_TRACING`` no spans are made."""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections import deque
from typing import Any

import httpx
import pytest

from mcp_agent_cloud import MCPApp, RetryPolicy, Workflow
from mcp_agent_cloud.hookspecs.types import PluginContext
from mcp_agent_cloud.workflows.app import CONTROL_PATH
from tests.contracts import async_test
from tests.test_workflows_sdk import serve

TOKEN = "control-token-for-tracing-tests"


@pytest.fixture(autouse=True)
def app_env(monkeypatch):
    for var in ("MCPAC_EXECUTOR", "MCPAC_EXECUTOR_CONFIG", "MCPAC_DEPLOYMENT", "MCPAC_APP_DATA_DIR",
                "MCPAC_SUSPENDED", "MCPAC_TRACING"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MCPAC_CONTROL_TOKEN", TOKEN)
    return monkeypatch


def make_app(tmp_path, **kwargs: Any) -> MCPApp:
    app = MCPApp(name="traced", data_dir=tmp_path / "data", **kwargs)
    tries: dict[str, int] = {}

    @app.step(name="charge", retry=RetryPolicy(max_attempts=2, initial_interval=0.01))
    async def charge(key: str, amount: int) -> str:
        tries[key] = tries.get(key, 0) + 1
        if tries[key] == 1:
            raise ConnectionError("busy")  # the first attempt of each run fails: two step spans
        return f"charged {amount}"

    @app.tool
    def add(a: int, b: int) -> int:
        return a + b

    @app.workflow
    class Pay(Workflow):
        async def run(self, amount: int) -> str:
            return await self.step(charge, self.run_id, amount)

    @app.workflow
    class Approve(Workflow):
        async def run(self, amount: int) -> dict:
            decision = await self.wait_for_signal("approve", timeout=60)
            return {"decision": decision, "receipt": await self.step(charge, self.run_id, amount)}

    return app


def traceparent() -> tuple[str, str, str]:
    """A caller's (the gateway's) span: (header, trace id, span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


class Caller:
    """The mcp SDK client over Streamable HTTP with the headers the gateway would send."""

    def __init__(self, base: str) -> None:
        self.base = base

    async def call(self, tool: str, args: dict | None = None, *, header: str | None = None) -> tuple[bool, Any]:
        import httpx2
        from mcp.client import Client
        from mcp.client.streamable_http import streamable_http_client

        headers = {"traceparent": header} if header else {}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            async with Client(streamable_http_client(f"{self.base}/mcp", http_client=http)) as client:
                result = await client.call_tool(tool, args or {})
        return bool(result.is_error), json.loads("".join(getattr(c, "text", "") for c in result.content))

    async def ok(self, tool: str, args: dict | None = None, **kw) -> Any:
        is_error, body = await self.call(tool, args, **kw)
        assert not is_error, body
        return body

    async def until_done(self, run_id: str, timeout: float = 30) -> dict:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            status = await self.ok("workflows-get_status", {"run_id": run_id})
            if not status["running"]:
                return status
            assert asyncio.get_running_loop().time() < deadline, status
            await asyncio.sleep(0.05)

    async def until_waiting(self, run_id: str, timeout: float = 30) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while (await self.ok("workflows-get_status", {"run_id": run_id}))["waiting_for"] != "approve":
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)

    async def spans(self, token: str | None = TOKEN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(timeout=10) as http:
            return await http.get(self.base + CONTROL_PATH + "/spans", headers=headers)

    async def collect(self, into: list[dict]) -> list[dict]:
        resp = await self.spans()
        assert resp.status_code == 200, resp.text
        body = resp.json()
        into += body["spans"]
        return body["spans"]


def one(spans: list[dict], name: str, **attrs: Any) -> dict:
    found = [s for s in spans if s["name"] == name and all(s["attributes"].get(k) == v for k, v in attrs.items())]
    assert len(found) == 1, (name, attrs, [(s["name"], s["attributes"]) for s in spans])
    return found[0]


def check_run_trace(spans: list[dict], trace_id: str, caller_span: str, workflow: str, run: dict,
                    tool: str | None = None) -> dict:
    """The chain caller -> tools/call -> workflow.run -> workflow.step (two attempts); returns the run span."""
    tool = tool or f"workflows-{workflow}-run"
    call = one(spans, f"tools/call {tool}", **{"run.id": run["run_id"]})
    assert (call["trace_id"], call["parent_id"], call["kind"]) == (trace_id, caller_span, "server"), call
    assert call["attributes"]["gen_ai.tool.name"] == tool and call["attributes"]["mcp.method.name"] == "tools/call"
    wf = one(spans, f"workflow.run {workflow}", **{"run.id": run["run_id"]})
    assert (wf["trace_id"], wf["parent_id"], wf["status"]) == (trace_id, call["span_id"], "ok"), wf
    assert wf["attributes"]["workflow.id"] == run["workflow_id"] and wf["attributes"]["run.status"] == "completed"
    steps = sorted((s for s in spans if s["name"] == "workflow.step charge"
                    and s["attributes"]["run.id"] == run["run_id"]), key=lambda s: s["attributes"]["step.attempt"])
    assert [(s["attributes"]["step.attempt"], s["status"]) for s in steps] == [(1, "error"), (2, "ok")], steps
    assert "ConnectionError: busy" in steps[0]["status_message"]
    for step in steps:
        assert (step["trace_id"], step["parent_id"]) == (trace_id, wf["span_id"]), step
        assert wf["start_ns"] <= step["start_ns"] <= step["end_ns"] <= wf["end_ns"]
    return wf


@async_test
async def test_tool_calls_and_runs_join_the_callers_trace(tmp_path, app_env) -> None:
    app_env.setenv("MCPAC_TRACING", "1")
    app = make_app(tmp_path)
    async with serve(app) as base:
        caller, seen = Caller(base), []
        header, trace_id, gateway_span = traceparent()

        assert await caller.ok("add", {"a": 2, "b": 3}, header=header) == 5
        run = await caller.ok("workflows-Pay-run", {"run_parameters": {"amount": 7}}, header=header)
        assert (await caller.until_done(run["run_id"]))["result"] == "charged 7"
        await caller.collect(seen)

        add = one(seen, "tools/call add")
        assert (add["trace_id"], add["parent_id"], add["kind"], add["status"]) == (
            trace_id, gateway_span, "server", "ok")
        assert add["attributes"]["gen_ai.tool.name"] == "add" and add["attributes"]["mcp.method.name"] == "tools/call"
        check_run_trace(seen, trace_id, gateway_span, "Pay", run)

        # Handed over once: the next fetch has none of them (nothing ran since).
        assert (await caller.spans()).json() == {"spans": [], "dropped": 0}

        # A call without a traceparent starts a trace of its own; a failing tool's span is an error.
        is_error, body = await caller.call("workflows-run", {"workflow_name": "Nope"})
        assert is_error and body["error"] == "not_found"
        (failed,) = await caller.collect(seen)
        assert (failed["name"], failed["status"]) == ("tools/call workflows-run", "error")
        # No parent of ours (with the OpenTelemetry SDK in this test process, the SDK client's own span may be
        # its parent through `_meta`: the runtime's bridge leaves the SDK's spans out).
        assert failed["parent_id"] not in {s["span_id"] for s in seen}
        assert failed["attributes"]["error.type"] == "not_found" and failed["trace_id"] != trace_id

        # Only the platform's token opens the route.
        assert (await caller.spans(token="wrong")).status_code == 401
        assert (await caller.spans(token=None)).status_code == 401


@async_test
async def test_a_resumed_run_keeps_its_steps_in_its_own_trace(tmp_path, app_env) -> None:
    app_env.setenv("MCPAC_TRACING", "1")
    async with serve(make_app(tmp_path)) as base:
        caller, seen = Caller(base), []
        start, trace_a, span_a = traceparent()
        resume, trace_b, span_b = traceparent()
        run = await caller.ok("workflows-Approve-run", {"run_parameters": {"amount": 3}}, header=start)
        await caller.until_waiting(run["run_id"])
        await caller.ok("workflows-resume", {"run_id": run["run_id"], "signal_name": "approve", "payload": "yes"},
                        header=resume)
        assert (await caller.until_done(run["run_id"]))["result"] == {"decision": "yes", "receipt": "charged 3"}
        await caller.collect(seen)
        check_run_trace(seen, trace_a, span_a, "Approve", run)
        # The resume is a call of the second trace, named after the run so `traces?run=` finds it too.
        call = one(seen, "tools/call workflows-resume")
        assert (call["trace_id"], call["parent_id"], call["attributes"]["run.id"]) == (trace_b, span_b, run["run_id"])


@async_test
async def test_without_tracing_no_spans_are_made(tmp_path, app_env) -> None:
    app = make_app(tmp_path)
    async with serve(app) as base:
        caller = Caller(base)
        header, _, _ = traceparent()
        assert await caller.ok("add", {"a": 1, "b": 1}, header=header) == 2
        run = await caller.ok("workflows-Pay-run", {"run_parameters": {"amount": 1}}, header=header)
        assert (await caller.until_done(run["run_id"]))["status"] == "completed"
        resp = await caller.spans()
        assert (resp.status_code, resp.json()) == (200, {"spans": [], "dropped": 0})
        assert not app.tracer.enabled and app.tracer.start("x") is None


@async_test
async def test_outside_the_platform_there_is_no_spans_route(tmp_path, app_env) -> None:
    app_env.delenv("MCPAC_CONTROL_TOKEN")
    app_env.setenv("MCPAC_TRACING", "1")
    async with serve(make_app(tmp_path)) as base:
        assert (await Caller(base).spans(token=None)).status_code == 404


@async_test
async def test_a_full_buffer_drops_the_oldest_and_counts_them(tmp_path, app_env) -> None:
    app_env.setenv("MCPAC_TRACING", "1")
    app = make_app(tmp_path)
    async with serve(app) as base:
        app._spans = deque(maxlen=2)
        caller = Caller(base)
        for n in range(4):
            assert await caller.ok("add", {"a": n, "b": 0}) == n
        body = (await caller.spans()).json()
        assert len(body["spans"]) == 2 and body["dropped"] == 2
        assert (await caller.spans()).json()["dropped"] == 0  # counted once


# -- Temporal: the steps run in the worker, the run ends there ------------------------------------------------


@pytest.mark.temporal
@async_test
async def test_temporal_worker_spans_join_the_trace(temporal_server, tmp_path, app_env) -> None:
    from mcp_agent_cloud.plugins.temporal_executor import TemporalConfig, TemporalExecutor

    app_env.setenv("MCPAC_TRACING", "1")
    cfg = TemporalConfig(host=temporal_server.address, task_queue=f"test.{uuid.uuid4().hex}", query_timeout=3,
                         heartbeat_timeout=5, shutdown_timeout=1)
    executor = TemporalExecutor(cfg, PluginContext(data_dir=tmp_path))
    executor.spec_name = "temporal"
    app = make_app(tmp_path, executor=executor)
    async with serve(app) as base:
        caller, seen = Caller(base), []
        header, trace_id, gateway_span = traceparent()
        run = await caller.ok("workflows-Pay-run", {"run_parameters": {"amount": 9}}, header=header)
        assert (await caller.until_done(run["run_id"]))["result"] == "charged 9"
        await caller.collect(seen)
        wf = check_run_trace(seen, trace_id, gateway_span, "Pay", run)
        assert wf["attributes"]["workflow.name"] == "Pay"

        # Paused for a human, resumed from another trace: the step after the resume is still in the run's trace
        # (the run span's ids are in the run's memo, which every worker of it reads).
        start, trace_a, span_a = traceparent()
        resume, trace_b, _ = traceparent()
        run = await caller.ok("workflows-Approve-run", {"run_parameters": {"amount": 4}}, header=start)
        await caller.until_waiting(run["run_id"])
        await caller.ok("workflows-resume", {"run_id": run["run_id"], "signal_name": "approve", "payload": "ok"},
                        header=resume)
        assert (await caller.until_done(run["run_id"]))["result"] == {"decision": "ok", "receipt": "charged 4"}
        await caller.collect(seen)
        check_run_trace(seen, trace_a, span_a, "Approve", run)
        assert one(seen, "tools/call workflows-resume", **{"run.id": run["run_id"]})["trace_id"] == trace_b

        # Started from code with no span around it: the root of a trace of its own, steps under it.
        record = await app.executor.start_run("Pay", {"amount": 1})
        # Started without our memo, as a Temporal Schedule starts one: the worker derives the ids from the run id.
        handle = await app.executor.client.start_workflow("Pay", {"amount": 2}, id=f"Pay-{uuid.uuid4().hex}",
                                                          task_queue=app.executor.task_queue)
        for run_id in (record.run_id, handle.result_run_id):
            assert (await app.executor.wait(run_id, timeout=30)).status == "completed"
        await caller.collect(seen)
        for run_id in (record.run_id, handle.result_run_id):
            root = one(seen, "workflow.run Pay", **{"run.id": run_id})
            assert root["parent_id"] is None and root["status"] == "ok"
            steps = [s for s in seen if s["name"] == "workflow.step charge" and s["attributes"]["run.id"] == run_id]
            assert len(steps) == 2 and {(s["trace_id"], s["parent_id"]) for s in steps} == {
                (root["trace_id"], root["span_id"])}, steps
