"""End to end: one trace from the MCP client through the gateway into the app and its workflow run.

A real platform (process builder, asyncio executor, tracing on by default) with tests/apps/tracing_app deployed.
The test calls the app's run tool through the authenticated gateway with the mcp SDK client, sending a
``traceparent`` of its own, and reads ``GET /api/v1/deployments/NAME/traces?run=RUN_ID``: one trace holds the
client's span -> the gateway's span (service mcp-agent-cloud) -> the app's ``tools/call`` span -> the
``workflow.run`` span (run.id) -> its ``workflow.step`` span; the platform fetched the app's spans from its control
route and filed them under the deployment.
"""

from __future__ import annotations

import json
import secrets

import anyio
import pytest

from tests.conftest import ROOT, PlatformProcess, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.network]

APP = ROOT / "tests" / "apps" / "tracing_app"
NAME = "traced"


@pytest.fixture(scope="module")
def platform_with_app(tmp_path_factory, shared_envs):
    p = PlatformProcess(tmp_path_factory.mktemp("tracing"), shared_envs)
    p.start()
    try:
        p.deployed = p.cli_json("deploy", "app", str(APP), "--name", NAME, timeout=900)
        yield p
    finally:
        p.stop()


async def _call(url: str, token: str, tool: str, arguments: dict, traceparent: str | None) -> dict:
    import httpx2
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"}
    if traceparent:
        headers["traceparent"] = traceparent
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            result = await client.call_tool(tool, arguments)
    text = "".join(getattr(c, "text", "") for c in result.content)
    assert not result.is_error, text
    return json.loads(text)


def call(p, tool: str, arguments: dict, traceparent: str | None = None) -> dict:
    return anyio.run(_call, p.deployed["endpoint"], p.token, tool, arguments, traceparent)


def test_a_run_started_through_the_gateway_is_one_trace(platform_with_app):
    p = platform_with_app
    assert p.deployed["endpoint"].endswith(f"/servers/{NAME}/mcp")
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    run = call(p, "workflows-Pay-run", {"run_parameters": {"amount": 12}}, f"00-{trace_id}-{client_span}-01")
    run_id = run["run_id"]
    done = wait_for(lambda: (s := call(p, "workflows-get_status", {"run_id": run_id}))["status"] == "completed"
                    and s, timeout=60, what="the run to complete")
    assert done["result"] == {"receipt": "charged 12"}

    def the_trace():
        r = p.api("GET", f"/api/v1/deployments/{NAME}/traces", params={"run": run_id})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["tracing"] is True
        for spans in body["traces"]:
            names = {s["name"] for s in spans}
            if {"workflow.run Pay", "workflow.step main.charge"} <= names and \
                    sum(s["name"] == "tools/call workflows-Pay-run" for s in spans) == 2:
                return spans
        return None

    spans = wait_for(the_trace, timeout=30, what="the run's trace with the gateway's and the app's spans")
    assert {s["trace_id"] for s in spans} == {trace_id}  # the client's trace, end to end
    calls = [s for s in spans if s["name"] == "tools/call workflows-Pay-run"]
    (gateway,) = [s for s in calls if s["service"] == "mcp-agent-cloud"]
    (in_app,) = [s for s in calls if s is not gateway]
    assert (gateway["parent_id"], gateway["kind"], gateway["org"], gateway["deployment"]) == (
        client_span, "server", "default", NAME), gateway
    assert gateway["attributes"]["gen_ai.tool.name"] == "workflows-Pay-run"
    # The app's spans came through its control route: filed under this deployment, service org.name.
    assert (in_app["parent_id"], in_app["kind"], in_app["service"], in_app["org"], in_app["deployment"]) == (
        gateway["span_id"], "server", f"default.{NAME}", "default", NAME), in_app
    assert in_app["attributes"]["mcp.method.name"] == "tools/call" and in_app["attributes"]["run.id"] == run_id
    (wf,) = [s for s in spans if s["name"] == "workflow.run Pay"]
    assert (wf["parent_id"], wf["status"], wf["attributes"]["run.id"], wf["attributes"]["workflow.id"]) == (
        in_app["span_id"], "ok", run_id, run["workflow_id"]), wf
    (step,) = [s for s in spans if s["name"] == "workflow.step main.charge"]
    assert (step["parent_id"], step["status"], step["attributes"]["run.id"]) == (wf["span_id"], "ok", run_id)
    assert gateway["start_ns"] <= in_app["start_ns"] <= in_app["end_ns"] <= gateway["end_ns"]
    assert wf["start_ns"] <= step["start_ns"] <= step["end_ns"] <= wf["end_ns"]


def test_an_apps_own_opentelemetry_spans_join_the_trace(platform_with_app):
    """An app that has the OpenTelemetry SDK (tests/apps/otel_app requires it) and makes spans with its API:
    the runtime installs a provider that hands them over with its own, under the current tool call."""
    p = platform_with_app
    deployed = p.cli_json("deploy", "app", str(ROOT / "tests" / "apps" / "otel_app"), "--name", "otel",
                          timeout=900)
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    answer = anyio.run(_call, deployed["endpoint"], p.token, "weigh", {"items": 4}, f"00-{trace_id}-{client_span}-01")
    assert answer == 12

    def the_trace():
        r = p.api("GET", "/api/v1/deployments/otel/traces", params={"trace": trace_id})
        assert r.status_code == 200, r.text
        spans = (r.json()["traces"] or [[]])[0]
        return spans if {"weigh.load", "weigh.sum"} <= {s["name"] for s in spans} else None

    spans = wait_for(the_trace, timeout=30, what="the tool's own OpenTelemetry spans in the trace")
    by_name = {s["name"]: s for s in spans if s["service"] != "mcp-agent-cloud"}
    tool = by_name["tools/call weigh"]
    assert by_name["weigh.load"]["parent_id"] == tool["span_id"]
    assert by_name["weigh.sum"]["parent_id"] == by_name["weigh.load"]["span_id"]
    assert by_name["weigh.load"]["attributes"]["items"] == 4
    assert by_name["weigh.load"]["service"] == "default.otel" and by_name["weigh.load"]["deployment"] == "otel"
