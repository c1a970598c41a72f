"""End to end through real OTLP receivers: a tool call through the gateway is one trace holding the gateway's span
and the app's span under it, over OTLP/HTTP (PyPI oteltap) and over OTLP/gRPC (the rotel-agent collector); a
blocked collector does not slow or fail tool calls, the drop counter rises instead; no secret reaches a receiver.
"""

from __future__ import annotations

import socket
import threading

import anyio
import pytest

from mcp_agent_cloud.client import mcp_client
from tests.conftest import ROOT, PlatformProcess, wait_for
from tests.e2e.test_metrics_traces import series
from tests.otel_util import OtelTapReceiver, RotelCollector

pytestmark = [pytest.mark.e2e, pytest.mark.network, pytest.mark.otel]

APP = ROOT / "tests" / "apps" / "tracing_app"
SECRET = "otlp-e2e-secret-value-9c1d7"


async def _calls(endpoint: str, token: str, n: int) -> None:
    async with mcp_client(endpoint, token, read_timeout=60.0) as client:
        for i in range(n):
            result = await client.call_tool("add", {"a": i, "b": 1})
            assert not result.is_error, result


@pytest.fixture(scope="module")
def receivers(tmp_path_factory):
    with OtelTapReceiver() as tap, RotelCollector(tmp_path_factory.mktemp("rotel")) as rotel:
        yield tap, rotel


@pytest.fixture(scope="module")
def exported(tmp_path_factory, shared_envs, receivers):
    tap, rotel = receivers
    config = ("telemetry:\n  - jsonl\n"
              f"  - {{name: otlp, protocol: http, endpoint: '{tap.endpoint}', schedule_delay_ms: 200,"
              " metrics_interval_seconds: 1}\n"
              f"  - {{name: otlp, protocol: grpc, endpoint: '{rotel.grpc_endpoint}', schedule_delay_ms: 200,"
              " signals: [traces, logs]}\n")
    p = PlatformProcess(tmp_path_factory.mktemp("otlp"), shared_envs, extra_config=config)
    p.start()
    try:
        deployed = p.cli_json("deploy", "app", str(APP), "--name", "traced", "--env", f"PAY_API_KEY={SECRET}",
                              timeout=900)
        assert deployed["status"] == "running", deployed
        anyio.run(_calls, deployed["endpoint"], p.token, 3)
        yield p
    finally:
        p.stop()


def _gateway_and_app(spans, service_of):
    """Pairs (gateway span, app span) of `tools/call add` where the app's span is the child of the gateway's."""
    gateway = {s.span_id: s for s in spans if s.name == "tools/call add" and service_of(s) == "mcp-agent-cloud"}
    return [(gateway[s.parent_id], s) for s in spans
            if s.name == "tools/call add" and service_of(s) == "default.traced" and s.parent_id in gateway]


def test_one_trace_over_otlp_http(exported, receivers):
    tap, _ = receivers

    def joined():
        pairs = _gateway_and_app(tap.spans(), lambda s: s.service)
        return pairs if len(pairs) >= 3 else None

    pairs = wait_for(joined, timeout=30, what="3 gateway spans with the app's span under each, at oteltap")
    for gw, app in pairs:
        assert gw.trace_id == app.trace_id
        assert gw.kind.lower().endswith("server") and app.kind.lower().endswith("server")
        assert gw.attributes["gen_ai.tool.name"] == "add" and app.attributes["gen_ai.tool.name"] == "add"
        assert gw.attributes["deployment"] == "default.traced"
        assert gw.start_ns <= app.start_ns <= app.end_ns <= gw.end_ns
    # The deploy's trace went out too, every step under its root.
    deploy = wait_for(lambda: [s for s in tap.spans() if s.name == "deploy"], timeout=30, what="the deploy span")[0]
    steps = {s.name for s in tap.spans() if s.parent_id == deploy.span_id}
    assert {"deploy.package", "deploy.build", "deploy.start", "deploy.health_check"} <= steps


def test_one_trace_over_otlp_grpc(exported, receivers):
    _, rotel = receivers

    def joined():
        pairs = _gateway_and_app(rotel.spans(), lambda s: s.service)
        return pairs if len(pairs) >= 3 else None

    pairs = wait_for(joined, timeout=30, what="3 gateway spans with the app's span under each, at rotel (gRPC)")
    assert all(gw.trace_id == app.trace_id for gw, app in pairs)


def test_events_and_metrics_reach_the_receiver(exported, receivers):
    tap, _ = receivers
    wait_for(lambda: [r for r in tap.logs() if "deployment" in str(r)], timeout=30, what="event log records")
    counted = wait_for(lambda: [m for m in tap.metrics() if m.name == "mcp_agent_cloud_requests_total"],
                       timeout=30, what="the request counter over OTLP")
    assert counted


def test_no_secret_reaches_a_receiver(exported, receivers):
    tap, rotel = receivers
    wait_for(lambda: tap.payloads(), timeout=30, what="any payload")
    assert all(SECRET.encode() not in body for _, body in tap.payloads())
    assert SECRET not in rotel.log_text()
    assert exported.token not in rotel.log_text()
    assert all(exported.token.encode() not in body for _, body in tap.payloads())


class Blackhole:
    """A port that accepts connections and never answers: a collector that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_a_blocked_collector_drops_instead_of_slowing_calls(tmp_path, shared_envs):
    hole = Blackhole()
    config = ("telemetry:\n  - jsonl\n"
              f"  - {{name: otlp, protocol: http, endpoint: 'http://127.0.0.1:{hole.port}', max_queue_size: 4,"
              " schedule_delay_ms: 100, timeout: 30, signals: [traces]}\n")
    p = PlatformProcess(tmp_path, shared_envs, extra_config=config)
    p.start()
    try:
        deployed = p.cli_json("deploy", "app", str(APP), "--name", "traced", timeout=900)
        anyio.run(_calls, deployed["endpoint"], p.token, 40)  # every call answers, with the collector hung

        def dropped():
            return series(p.api("GET", "/metrics").text, "mcp_agent_cloud_telemetry_dropped_total",
                          exporter="otlp", signal="traces") or 0

        assert wait_for(lambda: dropped() > 0, timeout=30, what="dropped spans counted")
        health = p.cli_json("status", "traced")["health"]
        assert health["tool_calls"] == 40 and health["tool_call_errors"] == 0
    finally:
        p.stop()
        hole.close()
