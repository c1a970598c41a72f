"""Metrics and the platform's spans, through a real platform and a real app, called with the real mcp SDK client.

After N tool calls of which K fail, /metrics shows N and K exactly; another org sees none of it; the
deploy's trace holds every pipeline step (the CLI's too) under one root; each call through the gateway is a span;
no secret value shows up in spans, metrics or events.
"""

from __future__ import annotations

import re

import anyio
import httpx
import pytest

from mcp_agent_cloud.client import mcp_client
from mcp_agent_cloud.testing import free_port, wait_for
from tests.conftest import ROOT, PlatformProcess

pytestmark = [pytest.mark.e2e, pytest.mark.network]

FEATURES_APP = ROOT / "tests" / "apps" / "features"
SECRET = "s3cret-value-that-must-not-leak-1f2e"
OK_CALLS, FAILED_CALLS = 7, 3


def series(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in Prometheus text, matched on the given labels (any order)."""
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1)))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(m.group(2))
    return None


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, shared_envs):
    metrics_port = free_port()
    platform = PlatformProcess(tmp_path_factory.mktemp("metrics"), shared_envs,
                               extra_config=f"metrics: {{listen: 127.0.0.1:{metrics_port}}}\n")
    platform.start()
    try:
        result = platform.cli_json("deploy", "app", str(FEATURES_APP), "--name", "features",
                                   "--env", f"FEATURES_API_KEY={SECRET}")
        assert result["status"] == "running", result

        async def calls() -> None:
            async with mcp_client(result["endpoint"], platform.token, read_timeout=60.0) as client:
                for i in range(OK_CALLS):
                    answer = await client.call_tool("add", {"a": i, "b": 1})
                    assert not answer.is_error, answer
                for _ in range(FAILED_CALLS):  # arguments that fail validation: a tool result with isError
                    answer = await client.call_tool("add", {"a": "not a number", "b": 1})
                    assert answer.is_error, answer

        anyio.run(calls)
        yield platform, metrics_port
    finally:
        platform.stop()


def test_metrics_count_calls_and_errors_exactly(deployed):
    platform, _ = deployed
    response = platform.api("GET", "/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    labels = {"org": "default", "deployment": "features", "method": "tools/call"}
    assert series(text, "mcp_agent_cloud_requests_total", **labels) == OK_CALLS + FAILED_CALLS
    assert series(text, "mcp_agent_cloud_request_errors_total", **labels) == FAILED_CALLS
    assert series(text, "mcp_agent_cloud_request_duration_seconds_count", **labels) == OK_CALLS + FAILED_CALLS
    assert series(text, "mcp_agent_cloud_request_duration_seconds_bucket", **labels, le="+Inf") == \
        OK_CALLS + FAILED_CALLS
    assert series(text, "mcp_agent_cloud_deployment_up", org="default", deployment="features") == 1
    assert series(text, "mcp_agent_cloud_app_memory_bytes", org="default", deployment="features") > 1_000_000
    assert series(text, "mcp_agent_cloud_deploys_total", org="default", result="ok") == 1
    # The caller owns the default org: platform-wide series too.
    assert re.search(r"^process_resident_memory_bytes \d+", text, re.M)


def test_status_shows_health(deployed):
    platform, _ = deployed
    status = platform.cli_json("status", "features")
    health = status["health"]
    assert health["tool_calls"] == OK_CALLS + FAILED_CALLS
    assert health["tool_call_errors"] == FAILED_CALLS
    assert health["p50_ms"] is not None and health["p50_ms"] > 0
    assert health["memory_bytes"] > 1_000_000
    text = platform.cli("status", "features", check=True).stdout
    assert "error rate" in text and "p95" in text, text


def test_metrics_are_tenant_scoped_and_need_a_token(deployed):
    platform, metrics_port = deployed
    assert platform.api("GET", "/metrics", token=None).status_code == 401
    other = platform.cli_json("admin", "token", "--org", "acme", "--role", "owner")["token"]
    text = platform.api("GET", "/metrics", token=other).text
    assert 'org="default"' not in text
    # Platform-wide series are for the default org's owners only.
    assert not re.search(r"^process_resident_memory_bytes ", text, re.M)
    # The separate listener serves everything, without a token.
    scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    assert series(scraped, "mcp_agent_cloud_requests_total", org="default", deployment="features",
                  method="tools/call") == OK_CALLS + FAILED_CALLS


def _traces(platform, **params) -> list[list[dict]]:
    response = platform.api("GET", "/api/v1/deployments/features/traces", params=params)
    assert response.status_code == 200, response.text
    return response.json()["traces"]


def test_deploy_trace_holds_every_step_under_one_root(deployed):
    platform, _ = deployed
    deploys = [t for t in _traces(platform, limit=200) if any(s["name"] == "deploy" for s in t)]
    assert len(deploys) == 1, [[s["name"] for s in t] for t in deploys]
    spans = deploys[0]
    root = next(s for s in spans if s["name"] == "deploy")
    assert root["parent_id"] is None and root["status"] == "ok"
    steps = {s["name"]: s for s in spans if s["parent_id"] == root["span_id"]}
    for step in ("validate", "package", "upload", "unpack", "build", "start", "health_check", "route"):
        assert f"deploy.{step}" in steps, sorted(steps)
        assert steps[f"deploy.{step}"]["trace_id"] == root["trace_id"]
        assert root["start_ns"] <= steps[f"deploy.{step}"]["start_ns"] <= steps[f"deploy.{step}"]["end_ns"]
    assert steps["deploy.validate"]["attributes"]["side"] == "cli"
    assert steps["deploy.package"]["end_ns"] <= steps["deploy.build"]["start_ns"]


def test_each_gateway_call_is_a_span(deployed):
    platform, _ = deployed
    calls = [s for t in _traces(platform, limit=200) for s in t if s["name"] == "tools/call add"]
    assert len(calls) == OK_CALLS + FAILED_CALLS
    assert sum(s["status"] == "error" for s in calls) == FAILED_CALLS
    one = calls[0]
    assert one["kind"] == "server" and one["service"] == "mcp-agent-cloud"
    assert one["attributes"]["gen_ai.tool.name"] == "add"
    assert one["attributes"]["deployment"] == "default.features"
    # Another org cannot read them.
    other = platform.cli_json("admin", "token", "--org", "acme2", "--role", "owner")["token"]
    assert platform.api("GET", "/api/v1/deployments/default.features/traces", token=other).status_code in (403, 404)


def test_a_client_traceparent_is_the_parent_of_the_gateway_span(deployed):
    platform, _ = deployed
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"

    async def call() -> None:
        headers = {"traceparent": f"00-{trace_id}-{parent}-01"}
        async with mcp_client(platform.url + "/servers/features/mcp", platform.token, headers=headers) as client:
            await client.call_tool("add", {"a": 1, "b": 2})

    anyio.run(call)
    spans = wait_for(lambda: _traces(platform, trace=trace_id), timeout=10, what="the client's trace")[0]
    call_span = next(s for s in spans if s["name"] == "tools/call add")
    assert call_span["parent_id"] == parent


def test_no_secret_in_spans_metrics_or_events(deployed):
    platform, _ = deployed
    blobs = [str(_traces(platform, limit=200)), platform.api("GET", "/metrics").text,
             (platform.root / "data" / "events.jsonl").read_text()]
    for blob in blobs:
        assert SECRET not in blob
    assert platform.api("GET", "/metrics").status_code == 200


def test_traces_command_prints_span_trees(deployed):
    platform, _ = deployed
    text = platform.cli("traces", "features", "--limit", "200", check=True).stdout
    lines = text.splitlines()
    root = next(i for i, line in enumerate(lines) if line.strip().startswith("✓ deploy "))
    # Steps are indented under the deploy, in start order: the CLI's first.
    steps = [line.split()[1] for line in lines[root + 1:root + 9]]
    assert steps[:3] == ["deploy.validate", "deploy.package", "deploy.upload"], lines[root:root + 9]
    assert all(line.startswith("    ") for line in lines[root + 1:root + 9])
    assert "✗ tools/call add" in text and "gen_ai.tool.name=add" in text
    missing = platform.cli("traces", "features", "--run", "no-such-run")
    assert missing.returncode != 0 and "no traces for run no-such-run" in missing.stderr


def test_rest_and_sse_calls_are_counted_too(deployed):
    platform, _ = deployed
    labels = {"org": "default", "deployment": "features", "method": "tools/call"}

    def counts() -> tuple[float, float]:
        text = platform.api("GET", "/metrics").text
        return (series(text, "mcp_agent_cloud_requests_total", **labels),
                series(text, "mcp_agent_cloud_request_errors_total", **labels))

    before = counts()
    ok = platform.api("POST", "/servers/features/call_tool", json={"name": "add", "arguments": {"a": 1, "b": 2}})
    assert ok.status_code == 200, ok.text
    bad = platform.api("POST", "/servers/features/call_tool", json={"name": "add", "arguments": {"a": "x"}})
    assert bad.status_code == 200 and bad.json().get("isError") is True, bad.text

    async def over_sse() -> None:
        from mcp.client import Client
        from mcp.client.sse import sse_client

        headers = {"Authorization": f"Bearer {platform.token}"}
        async with Client(sse_client(platform.url + "/servers/features/sse", headers=headers)) as client:
            assert not (await client.call_tool("add", {"a": 2, "b": 2})).is_error

    anyio.run(over_sse)
    after = wait_for(lambda: (c := counts())[0] == before[0] + 3 and c, timeout=10, what="3 more calls counted")
    assert after == (before[0] + 3, before[1] + 1)
