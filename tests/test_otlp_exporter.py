"""The ``otlp`` telemetry exporter against real OTLP receivers: oteltap (in-process, OTLP/HTTP) and the rotel-agent
collector (OTLP/gRPC). No mocks: the exporter is built through the plugin manager from its entry point, the SDK
sends real requests, and the assertions are on what the receivers got."""

from __future__ import annotations

import asyncio
import http.server
import logging
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from otel_util import OtelTapReceiver, RotelCollector, parse_rotel_spans

from mcp_agent_cloud.errors import PluginError
from mcp_agent_cloud.hookspecs.types import Event, PluginContext, SpanData
from mcp_agent_cloud.manager import load_plugin_manager
from mcp_agent_cloud.telemetry import Metrics

pytestmark = pytest.mark.otel

DROPPED = "mcp_agent_cloud_telemetry_dropped_total"


def build(options: dict, tmp_path: Path, metrics: Metrics | None = None):
    pm = load_plugin_manager()
    spec = pm.get_telemetry_exporter("otlp")
    return pm.build(spec, options, PluginContext(data_dir=tmp_path, metrics=metrics))


def span(name: str, trace_id: str, parent: str | None = None, **kw) -> SpanData:
    now = time.time_ns()
    return SpanData(name=name, trace_id=trace_id, span_id=secrets.token_hex(8), parent_id=parent,
                    start_ns=kw.pop("start_ns", now - 5_000_000), end_ns=kw.pop("end_ns", now), **kw)


@pytest.fixture
def tap():
    with OtelTapReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def rotel(tmp_path_factory):
    with RotelCollector(tmp_path_factory.mktemp("rotel")) as collector:
        yield collector


# -- config ------------------------------------------------------------------------------------------------------


def test_defaults_and_validation(tmp_path):
    http = build({}, tmp_path).config
    assert (http.protocol, http.resolved_endpoint(), http.signals) == ("http", "http://127.0.0.1:4318",
                                                                        ["traces", "metrics", "logs"])
    assert (http.max_queue_size, http.max_export_batch_size) == (2048, 512)
    grpc = build({"protocol": "grpc"}, tmp_path).config
    assert (grpc.resolved_endpoint(), grpc.grpc_insecure()) == ("127.0.0.1:4317", True)
    assert build({"protocol": "grpc", "endpoint": "otlp.example.com:4317"}, tmp_path).config.grpc_insecure() is False
    assert build({"protocol": "grpc", "endpoint": "http://collector:4317"}, tmp_path).config.grpc_insecure() is True
    assert build({"max_queue_size": 10}, tmp_path).config.max_export_batch_size == 10
    for bad in ({"colour": "red"}, {"sample_ratio": 1.5}, {"signals": ["spans"]}, {"protocol": "udp"},
                {"max_queue_size": 10, "max_export_batch_size": 11}):
        with pytest.raises(PluginError):
            build(bad, tmp_path)


def test_module_imports_without_the_sdk():
    # The entry point is loaded by every platform start: it must not pull in the SDK (an extra).
    code = ("import sys, mcp_agent_cloud.plugins.otlp as m; from mcp_agent_cloud.manager import load_plugin_manager;"
            "load_plugin_manager().get_telemetry_exporter('otlp');"
            "bad = [n for n in sys.modules if n.startswith(('opentelemetry.sdk', 'opentelemetry.exporter'))];"
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# -- 1: OTLP/HTTP into oteltap -----------------------------------------------------------------------------------


def test_http_spans_events_and_metrics_reach_oteltap(tap, tmp_path):
    metrics = Metrics()
    requests = metrics.counter("demo_requests_total", "requests", ("org", "deployment", "method"))
    requests.inc(("acme", "hello", "tools/call"), 7)
    latency = metrics.histogram("demo_latency_seconds", "latency", ("org", "deployment"))
    for value in (0.1, 0.2, 0.3):
        latency.observe(("acme", "hello"), value)
    metrics.gauge("demo_sessions", "sessions", ("org",), lambda: {("acme",): 2})
    exporter = build({"endpoint": tap.endpoint, "resource_attributes": {"deployment.environment": "test"}},
                     tmp_path, metrics)
    trace_id = secrets.token_hex(16)
    root = span("gateway tools/call", trace_id, kind="server", status="ok", org="acme", deployment="hello",
                attributes={"mcp.method.name": "tools/call", "gen_ai.tool.name": "greet", "http.status": 200})
    child = span("tool greet", trace_id, parent=root.span_id, service="acme.hello", status="error",
                 status_message="boom", attributes={"run.id": "r1"}, org="acme", deployment="hello")
    other = span("deploy", secrets.token_hex(16))  # another trace, same service: same resource

    async def run():
        await exporter.setup()
        for s in (root, child, other):
            exporter.export_span(s)
        exporter.export(Event(type="deployment.started", org="acme", deployment="hello", version=3, status="ok",
                              step="start", duration_ms=12.5, message="version 3 serving",
                              data={"builder": "process", "password": "hunter2"}))
        metrics.counter("demo_late_total", "defined after setup").inc((), 4)
        assert await exporter.flush()
        await exporter.aclose()

    asyncio.run(run())
    got = {s.name: s for s in tap.wait_for_trace(trace_id, count=2)}
    assert set(got) == {"gateway tools/call", "tool greet"}
    g, t = got["gateway tools/call"], got["tool greet"]
    assert (g.trace_id, g.span_id, g.parent_id, g.kind, g.status) == (trace_id, root.span_id, None, "server", "ok")
    assert (t.trace_id, t.span_id, t.parent_id) == (trace_id, child.span_id, root.span_id)
    assert (t.status, t.status_message) == ("error", "boom")
    assert (g.service, t.service) == ("mcp-agent-cloud", "acme.hello")
    assert g.resource["deployment.environment"] == "test"
    assert g.attributes == {"mcp.method.name": "tools/call", "gen_ai.tool.name": "greet", "http.status": 200,
                            "org": "acme", "deployment": "hello"}
    assert t.attributes["run.id"] == "r1"
    assert (g.start_ns, g.end_ns) == (root.start_ns, root.end_ns)

    # one Resource per service: the SDK groups spans under it, so no service appears twice in one request
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    tap.wait_for_spans(lambda s: s.name == "deploy" and s.resource is not None)
    for path, body in tap.payloads():
        if path.endswith("/v1/traces"):
            services = [next(kv.value.string_value for kv in rs.resource.attributes if kv.key == "service.name")
                        for rs in ExportTraceServiceRequest.FromString(body).resource_spans]
            assert len(services) == len(set(services)), services

    record = tap.wait_for_logs(lambda r: r.event_name == "deployment.started")[0]
    assert (record.body, record.severity) == ("version 3 serving", "INFO")
    assert record.attributes == {"type": "deployment.started", "status": "ok", "org": "acme", "deployment": "hello",
                                 "version": 3, "step": "start", "duration_ms": 12.5, "data.builder": "process"}

    by_name = {m.name: m for m in tap.wait_for_metrics(lambda m: m.name.startswith("demo_"), count=5)}
    assert by_name["demo_requests_total"].kind == "sum"
    assert by_name["demo_requests_total"].points == [({"org": "acme", "deployment": "hello",
                                                       "method": "tools/call"}, 7)]
    assert by_name["demo_latency_seconds_count"].points == [({"org": "acme", "deployment": "hello"}, 3)]
    assert by_name["demo_latency_seconds_sum"].points[0][1] == pytest.approx(0.6)
    assert (by_name["demo_sessions"].kind, by_name["demo_sessions"].points) == ("gauge", [({"org": "acme"}, 2)])
    assert by_name["demo_late_total"].points == [({}, 4)]


def test_sampling_keeps_or_drops_whole_traces_by_trace_id(tap, tmp_path):
    exporter = build({"endpoint": tap.endpoint, "sample_ratio": 0.5, "signals": ["traces"]}, tmp_path)
    traces = [secrets.token_hex(16) for _ in range(40)]
    # TraceIdRatioBased: sampled when the low 64 bits of the trace id are below ratio * 2**64
    kept = {t for t in traces if int(t[16:], 16) < 2**63}
    assert 0 < len(kept) < len(traces)  # 40 random ids: both outcomes are (all but) certain

    async def run():
        await exporter.setup()
        for t in traces:
            root = span("root", t)
            exporter.export_span(root)
            exporter.export_span(span("child", t, parent=root.span_id))
        assert await exporter.flush()
        # a marker trace that is sampled, sent last: once it is in, everything before it is too
        marker = next(t for t in iter(lambda: secrets.token_hex(16), None) if int(t[16:], 16) < 2**63)
        exporter.export_span(span("marker", marker))
        assert await exporter.flush()
        await exporter.aclose()
        return marker

    marker = asyncio.run(run())
    tap.wait_for_spans(lambda s: s.trace_id == marker)
    got = tap.spans()
    assert {s.trace_id for s in got if s.name != "marker"} == kept
    assert sorted(s.name for s in got if s.name != "marker") == ["child"] * len(kept) + ["root"] * len(kept)


# -- 2: OTLP/gRPC into the rotel collector -----------------------------------------------------------------------


def test_grpc_spans_and_events_reach_rotel(rotel, tmp_path):
    exporter = build({"protocol": "grpc", "endpoint": rotel.grpc_endpoint, "signals": ["traces", "logs"]}, tmp_path)
    trace_id = secrets.token_hex(16)
    root = span("gateway tools/call", trace_id, kind="server", attributes={"gen_ai.tool.name": "greet"})
    child = span("tool greet", trace_id, parent=root.span_id, service="acme.hello")
    marker = f"grpc-event-{secrets.token_hex(4)}"

    async def run():
        await exporter.setup()
        exporter.export_span(root)
        exporter.export_span(child)
        exporter.export(Event(type="deployment.started", message=marker, org="acme"))
        assert await exporter.flush()
        await exporter.aclose()

    asyncio.run(run())
    got = {s.name: s for s in rotel.wait_for_trace(trace_id, names=("gateway tools/call", "tool greet"))}
    assert got["gateway tools/call"].span_id == root.span_id
    assert got["tool greet"].parent_id == root.span_id
    assert (got["gateway tools/call"].service, got["tool greet"].service) == ("mcp-agent-cloud", "acme.hello")
    assert got["gateway tools/call"].kind == "SPAN_KIND_SERVER"
    assert got["gateway tools/call"].attributes["gen_ai.tool.name"] == "greet"
    log = rotel.wait_for_log(marker)
    assert trace_id in log and "tool greet" in log


def test_http_into_rotel_too(rotel, tmp_path):
    exporter = build({"endpoint": rotel.http_endpoint, "signals": ["traces"]}, tmp_path)
    trace_id = secrets.token_hex(16)

    async def run():
        await exporter.setup()
        exporter.export_span(span("over http", trace_id))
        assert await exporter.flush()
        await exporter.aclose()

    asyncio.run(run())
    assert [s.name for s in rotel.wait_for_trace(trace_id, names=("over http",))] == ["over http"]


def test_rotel_log_parser_reads_resource_and_attributes():
    text = ("ResourceSpans #0\nResource attributes:\n     -> service.name: Str(svc)\nScopeSpans #0\n"
            "InstrumentationScope x \nSpan #0\n    Trace ID       : " + "a" * 32 + "\n    Parent ID      : \n"
            "    ID             : " + "b" * 16 + "\n    Name           : n\n    Kind           : SPAN_KIND_SERVER\n"
            "    Status code    : STATUS_CODE_OK\nAttributes:\n     -> k: Int(3)\n"
            "ResourceLog #0\nResource attributes:\n     -> service.name: Str(svc)\nLogRecord #0\n"
            "Attributes:\n     -> type: Str(t)\n")
    [s] = parse_rotel_spans(text)
    assert (s.name, s.trace_id, s.parent_id, s.service, s.attributes) == ("n", "a" * 32, None, "svc", {"k": "3"})


# -- 3: a blocked endpoint never blocks the caller; the drop counter rises -----------------------------------------


@pytest.fixture
def blackhole_port():
    """A port that accepts connections (the kernel's backlog) and never answers a byte."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield s.getsockname()[1]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_blocked_endpoint_does_not_block_and_drops_are_counted(blackhole_port, tmp_path, protocol):
    metrics = Metrics()
    endpoint = f"http://127.0.0.1:{blackhole_port}" if protocol == "http" else f"127.0.0.1:{blackhole_port}"
    exporter = build({"endpoint": endpoint, "protocol": protocol, "timeout": 1, "max_queue_size": 10,
                      "max_export_batch_size": 5, "schedule_delay_ms": 50, "signals": ["traces", "logs"]},
                     tmp_path, metrics)

    async def run():
        await exporter.setup()
        for i in range(1000):
            exporter.export_span(span(f"s{i}", secrets.token_hex(16)))
            assert exporter._span_gate.pending <= 10  # never more queued than configured
        for i in range(100):
            exporter.export(Event(type="test.event", message=str(i)))
        counter = metrics.get(DROPPED)
        # the queue holds 10 and the one export thread is stuck: the rest is refused, and counted
        assert counter.get(("otlp", "traces")) > 0
        assert counter.get(("otlp", "logs")) > 0
        await exporter.aclose()  # returns: bounded, whatever the endpoint does
        return counter

    counter = asyncio.run(run())
    assert counter.labels == ("exporter", "signal")
    with exporter._drop_lock:
        assert 0 < counter.get(("otlp", "traces")) <= 1000
        assert exporter.dropped["traces"] == counter.get(("otlp", "traces"))


def test_export_after_close_is_ignored(tap, tmp_path):
    exporter = build({"endpoint": tap.endpoint}, tmp_path, Metrics())

    async def run():
        await exporter.setup()
        await exporter.aclose()
        exporter.export_span(span("late", secrets.token_hex(16)))
        exporter.export(Event(type="late"))

    asyncio.run(run())
    assert exporter.dropped == {"traces": 0, "logs": 0, "metrics": 0}


def test_malformed_span_ids_are_dropped_and_counted(tap, tmp_path):
    metrics = Metrics()
    exporter = build({"endpoint": tap.endpoint, "signals": ["traces"]}, tmp_path, metrics)

    async def run():
        await exporter.setup()
        exporter.export_span(SpanData(name="bad", trace_id="xyz", span_id="1" * 16, start_ns=1, end_ns=2))
        await exporter.aclose()

    asyncio.run(run())
    assert metrics.get(DROPPED).get(("otlp", "traces")) == 1


# -- 4: secrets never reach the receiver (except the configured headers) or our logs ------------------------------


class _HeaderSink(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, str]]

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.seen.append({k.lower(): v for k, v in self.headers.items()})
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_secrets_never_reach_the_receiver_or_the_logs(tap, tmp_path, caplog):
    secret = {name: f"{name}-{secrets.token_hex(8)}" for name in
              ("header", "attr", "bearer", "token", "event")}
    token = "mcpac_" + secrets.token_urlsafe(24)
    exporter = build({"endpoint": tap.endpoint, "headers": {"Authorization": f"Bearer {secret['header']}"}},
                     tmp_path, Metrics())
    trace_id = secrets.token_hex(16)
    caplog.set_level(logging.DEBUG)

    async def run():
        await exporter.setup()
        exporter.export_span(span("call", trace_id, attributes={
            "api_key": secret["attr"], "http.request.header.authorization": secret["bearer"],
            "note": f"used Bearer {secret['bearer']}", "user.token": secret["token"], "url": f"/x?t={token}",
            "ok": "visible"}))
        exporter.export(Event(type="secrets.set", message=f"rotated {token}",
                              data={"secret_value": secret["event"], "password": secret["event"]}))
        assert await exporter.flush()
        await exporter.aclose()

    asyncio.run(run())
    [got] = tap.wait_for_trace(trace_id)
    assert got.attributes["ok"] == "visible"
    assert got.attributes["url"] == "/x?t=[redacted]"
    assert tap.wait_for_logs(lambda r: r.event_name == "secrets.set")[0].body == "rotated [redacted]"
    received = b"".join(body for _, body in tap.payloads())
    assert received
    for value in (*secret.values(), token):
        assert value.encode() not in received, value
        assert value not in caplog.text, value
        assert value not in repr(exporter) + repr(exporter.config) + str(exporter.config)


def test_configured_headers_are_sent(tmp_path):
    seen: list[dict[str, str]] = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_HeaderSink,), {"seen": seen}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        exporter = build({"endpoint": f"http://127.0.0.1:{server.server_port}", "signals": ["traces"],
                          "headers": {"X-Api-Key": "k-123"}}, tmp_path)

        async def run():
            await exporter.setup()
            exporter.export_span(span("s", secrets.token_hex(16)))
            assert await exporter.flush()
            await exporter.aclose()

        asyncio.run(run())
    finally:
        server.shutdown()
        server.server_close()
    assert seen and seen[0]["x-api-key"] == "k-123"
    assert seen[0]["content-type"] == "application/x-protobuf"
