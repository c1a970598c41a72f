"""Real OTLP receivers for tests: PyPI ``oteltap`` (in-process, OTLP/HTTP) and the ``rotel-agent`` collector
(PyPI ``rotel``; OTLP/gRPC and OTLP/HTTP, received spans printed to its log).

``OtelTapReceiver`` runs oteltap on its own event-loop thread, so plain (sync) tests and async tests can both use
it: give an exporter ``receiver.endpoint`` (protocol http), then ``receiver.wait_for_spans(predicate)``. oteltap
hands over spans without their resource, so it also re-emits every request to a small sink here, which is where
``ReceivedSpan.service`` and ``.resource`` come from (and ``payloads()``: every raw request body it got).

``RotelCollector`` runs the real collector binary with the blackhole exporter and its debug log on; give an
exporter ``collector.grpc_endpoint`` (protocol grpc) or ``collector.http_endpoint`` (protocol http), then
``collector.wait_for_trace(trace_id, names=...)`` or ``collector.wait_for_spans(predicate)``.

Both are context managers, and both raise :class:`ComponentMissing` when their package is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import re
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mcp_agent_cloud.testing import ComponentMissing, die_with_parent, free_port, stop_process

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def _any_value(value) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, which)


def _attrs(kvs) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in kvs}


@dataclasses.dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    kind: str
    status: str  # unset | ok | error
    status_message: str
    attributes: dict[str, Any]
    start_ns: int
    end_ns: int
    resource: dict[str, Any] | None  # None until the re-emitted request with this span's resource came in
    raw: Any = dataclasses.field(repr=False, default=None)  # the protobuf Span

    @property
    def service(self) -> str | None:
        return None if self.resource is None else self.resource.get("service.name")


@dataclasses.dataclass
class ReceivedLog:
    body: Any
    attributes: dict[str, Any]
    severity: str
    event_name: str
    trace_id: str
    raw: Any = dataclasses.field(repr=False, default=None)


@dataclasses.dataclass
class ReceivedMetric:
    name: str
    kind: str  # sum | gauge | histogram | ...
    points: list[tuple[dict[str, Any], float]]  # (attributes, value) per data point
    raw: Any = dataclasses.field(repr=False, default=None)


def _span(pb, resource: dict | None) -> ReceivedSpan:
    code = {0: "unset", 1: "ok", 2: "error"}.get(pb.status.code, str(pb.status.code))
    return ReceivedSpan(name=pb.name, trace_id=pb.trace_id.hex(), span_id=pb.span_id.hex(),
                        parent_id=pb.parent_span_id.hex() or None, kind=_KINDS.get(pb.kind, str(pb.kind)),
                        status=code, status_message=pb.status.message, attributes=_attrs(pb.attributes),
                        start_ns=pb.start_time_unix_nano, end_ns=pb.end_time_unix_nano, resource=resource, raw=pb)


def _log(pb) -> ReceivedLog:
    return ReceivedLog(body=_any_value(pb.body) if pb.HasField("body") else None, attributes=_attrs(pb.attributes),
                       severity=pb.severity_text, event_name=pb.event_name, trace_id=pb.trace_id.hex(), raw=pb)


def _metric(pb) -> ReceivedMetric:
    kind = pb.WhichOneof("data") or ""
    points = []
    if kind in ("sum", "gauge"):
        for p in getattr(pb, kind).data_points:
            value = p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
            points.append((_attrs(p.attributes), value))
    elif kind == "histogram":
        points = [(_attrs(p.attributes), p.count) for p in pb.histogram.data_points]
    return ReceivedMetric(name=pb.name, kind=kind, points=points, raw=pb)


class _Sink(BaseHTTPRequestHandler):
    """Where oteltap re-emits each request it received, resources included."""

    receiver: OtelTapReceiver

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.receiver._reemitted(self.path, body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


class OtelTapReceiver:
    """oteltap's OTLP/HTTP receiver on a free loopback port. ``endpoint`` is the base URL for an exporter."""

    def __init__(self, port: int | None = None) -> None:
        if importlib.util.find_spec("oteltap") is None:
            raise ComponentMissing("PyPI oteltap is not installed: run scripts/setup.sh (the dev extra installs it)")
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._cond = threading.Condition()
        self._spans: list[Any] = []
        self._logs: list[Any] = []
        self._metrics: list[Any] = []
        self._payloads: list[tuple[str, bytes]] = []
        self._resources: dict[bytes, dict[str, Any]] = {}  # span id -> its resource attributes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tap = None
        self._sink: ThreadingHTTPServer | None = None
        self._error: BaseException | None = None

    # -- life cycle ------------------------------------------------------------------------------------------

    def start(self, timeout: float = 30) -> OtelTapReceiver:
        handler = type("Sink", (_Sink,), {"receiver": self})
        self._sink = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self._sink.serve_forever, name="oteltap-sink", daemon=True).start()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="oteltap", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError(f"oteltap did not start in {timeout}s")
        if self._error is not None:
            self.stop()
            raise RuntimeError(f"oteltap did not start: {self._error}")
        return self

    def _run(self, ready: threading.Event) -> None:
        from oteltap import OtelTapHttpProtobufReceiver, OtelTapHttpProtobufReceiverSettings

        loop = self._loop = asyncio.new_event_loop()
        sink = f"http://127.0.0.1:{self._sink.server_port}"
        settings = OtelTapHttpProtobufReceiverSettings(
            http_port=self.port, reemit_traces_to_url=f"{sink}/v1/traces", reemit_logs_to_url=f"{sink}/v1/logs",
            reemit_metrics_to_url=f"{sink}/v1/metrics")

        async def main() -> None:
            try:
                self._tap = await OtelTapHttpProtobufReceiver(settings).start()
                for stream, into in ((self._tap.stream_traces, self._spans), (self._tap.stream_logs, self._logs),
                                     (self._tap.stream_metrics, self._metrics)):
                    loop.create_task(self._consume(stream(), into))
                await asyncio.sleep(0)  # let the consumers subscribe before anything can arrive
            except BaseException as exc:  # noqa: BLE001 - reported by start()
                self._error = exc
            finally:
                ready.set()

        loop.run_until_complete(main())
        if self._error is None:
            loop.run_forever()
        loop.close()

    async def _consume(self, stream, into: list) -> None:
        async for message in stream:
            with self._cond:
                into.append(message)
                self._cond.notify_all()

    def stop(self) -> None:
        loop, tap = self._loop, self._tap
        if loop is not None and loop.is_running():
            if tap is not None:
                with contextlib.suppress(Exception):  # stopping: a failed stop still ends the loop
                    asyncio.run_coroutine_threadsafe(tap.stop(), loop).result(15)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(15)
        if self._sink is not None:
            self._sink.shutdown()
            self._sink.server_close()
        self._loop = self._tap = self._thread = self._sink = None

    def __enter__(self) -> OtelTapReceiver:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what came in ----------------------------------------------------------------------------------------

    def _reemitted(self, path: str, body: bytes) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        resources = {}
        if path.endswith("/v1/traces"):
            request = ExportTraceServiceRequest.FromString(body)
            for rs in request.resource_spans:
                attrs = _attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        resources[span.span_id] = attrs
        with self._cond:
            self._payloads.append((path, body))
            self._resources.update(resources)
            self._cond.notify_all()

    def spans(self) -> list[ReceivedSpan]:
        with self._cond:
            return [_span(pb, self._resources.get(pb.span_id)) for pb in self._spans]

    def logs(self) -> list[ReceivedLog]:
        with self._cond:
            return [_log(pb) for pb in self._logs]

    def metrics(self) -> list[ReceivedMetric]:
        with self._cond:
            return [_metric(pb) for pb in self._metrics]

    def payloads(self) -> list[tuple[str, bytes]]:
        """Every request body received, as (path, protobuf bytes): for asserting what was never sent."""
        with self._cond:
            return list(self._payloads)

    def _wait(self, read: Callable[[], list], predicate, count: int, timeout: float, what: str) -> list:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [item for item in read() if predicate(item)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    got = read()
                    raise AssertionError(f"oteltap: timed out after {timeout}s waiting for {count} {what}; got "
                                         f"{len(found)} matching of {len(got)}, the last: {got[-10:]!r}")
                self._cond.wait(min(left, 0.5))

    def wait_for_spans(self, predicate: Callable[[ReceivedSpan], bool] = lambda s: True, count: int = 1,
                       timeout: float = 30) -> list[ReceivedSpan]:
        """The matching spans once at least ``count`` have come in (a predicate on ``.service`` also waits for
        the span's resource)."""
        return self._wait(self.spans, predicate, count, timeout, "spans")

    def wait_for_trace(self, trace_id: str, count: int = 1, timeout: float = 30) -> list[ReceivedSpan]:
        return self.wait_for_spans(lambda s: s.trace_id == trace_id and s.resource is not None, count, timeout)

    def wait_for_logs(self, predicate: Callable[[ReceivedLog], bool] = lambda r: True, count: int = 1,
                      timeout: float = 30) -> list[ReceivedLog]:
        return self._wait(self.logs, predicate, count, timeout, "log records")

    def wait_for_metrics(self, predicate: Callable[[ReceivedMetric], bool] = lambda m: True, count: int = 1,
                         timeout: float = 30) -> list[ReceivedMetric]:
        return self._wait(self.metrics, predicate, count, timeout, "metrics")

    async def await_spans(self, *args, **kwargs) -> list[ReceivedSpan]:
        """``wait_for_spans`` for async tests (waits on a thread, so the test's own loop keeps running)."""
        return await asyncio.to_thread(self.wait_for_spans, *args, **kwargs)


def rotel_binary() -> Path:
    spec = importlib.util.find_spec("rotel")
    if spec is None or not spec.submodule_search_locations:
        raise ComponentMissing("PyPI rotel is not installed: run scripts/setup.sh (the dev extra installs it)")
    binary = Path(next(iter(spec.submodule_search_locations))) / "rotel-agent"
    if not binary.is_file():
        raise ComponentMissing(f"the rotel package has no collector binary at {binary}")
    return binary


@dataclasses.dataclass
class CollectorSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    kind: str
    status: str
    attributes: dict[str, str]  # as the collector prints them: `Str(x)` -> "x", `Int(3)` -> "3"
    resource: dict[str, str]

    @property
    def service(self) -> str | None:
        return self.resource.get("service.name")


_FIELD = re.compile(r"^\s*(Trace ID|Parent ID|ID|Name|Kind|Status code)\s*:\s*(.*?)\s*$")
_ATTR = re.compile(r"^\s*-> ([^:]+): \w+\((.*)\)\s*$")


def parse_rotel_spans(text: str) -> list[CollectorSpan]:
    """The spans in rotel's detailed trace debug log (``--debug-log traces --debug-log-verbosity detailed``)."""
    spans: list[CollectorSpan] = []
    resource: dict[str, str] = {}
    where = None  # "resource" | "span": whose attribute lines come next
    current: dict | None = None

    def close() -> None:
        if current is not None and current.get("ID"):
            spans.append(CollectorSpan(
                name=current.get("Name", ""), trace_id=current.get("Trace ID", ""), span_id=current["ID"],
                parent_id=current.get("Parent ID") or None, kind=current.get("Kind", ""),
                status=current.get("Status code", ""), attributes=current["attributes"], resource=dict(resource)))

    for line in _ANSI.sub("", text).splitlines():
        if line.startswith(("ResourceSpans #", "ResourceLog", "ResourceMetric")):
            close()
            current, resource, where = None, {}, None
        elif line.startswith("Resource attributes:"):
            where = "resource"
        elif line.startswith("Span #"):
            close()
            current, where = {"attributes": {}}, None
        elif line.startswith("Attributes:") and current is not None:
            where = "span"
        elif (m := _ATTR.match(line)) and where is not None:
            (resource if where == "resource" else current["attributes"])[m.group(1).strip()] = m.group(2)
        elif current is not None and (m := _FIELD.match(line)):
            current[m.group(1)] = m.group(2)
            where = None if where == "span" else where
        elif line.startswith(("Scope", "InstrumentationScope", "LogRecord #", "Metric #")):
            where = None
    close()
    return spans


class RotelCollector:
    """The real ``rotel-agent`` collector on two free loopback ports, exporting to a blackhole and printing what
    it receives to its log (``log_path``)."""

    def __init__(self, workdir: Path, debug: tuple[str, ...] = ("traces", "logs")) -> None:
        self.binary = rotel_binary()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.grpc_port, self.http_port = free_port(), free_port()
        while self.http_port == self.grpc_port:
            self.http_port = free_port()
        self.grpc_endpoint = f"127.0.0.1:{self.grpc_port}"
        self.http_endpoint = f"http://127.0.0.1:{self.http_port}"
        self.log_path = self.workdir / f"rotel-{self.grpc_port}.log"
        self.debug = debug
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> RotelCollector:
        cmd = [str(self.binary), "start", "--otlp-grpc-endpoint", self.grpc_endpoint,
               "--otlp-http-endpoint", f"127.0.0.1:{self.http_port}", "--exporter", "blackhole",
               "--debug-log-verbosity", "detailed",
               # not /tmp/rotel-agent.*: several collectors may run at once
               "--pid-file", str(self.workdir / f"rotel-{self.grpc_port}.pid"),
               "--log-file", str(self.workdir / f"rotel-{self.grpc_port}.daemon.log")]
        for signal in self.debug:
            cmd += ["--debug-log", signal]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                         start_new_session=True, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rotel-agent exited with {self.proc.returncode}:\n{self.log_text()}")
            if all(_listening(port) for port in (self.grpc_port, self.http_port)):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"rotel-agent not listening in {timeout}s:\n{self.log_text()}")

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> RotelCollector:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_text(self) -> str:
        try:
            return _ANSI.sub("", self.log_path.read_text(errors="replace"))
        except FileNotFoundError:
            return ""

    def spans(self) -> list[CollectorSpan]:
        return parse_rotel_spans(self.log_text())

    def wait_for_spans(self, predicate: Callable[[CollectorSpan], bool] = lambda s: True, count: int = 1,
                       timeout: float = 30) -> list[CollectorSpan]:
        deadline = time.monotonic() + timeout
        while True:
            found = [s for s in self.spans() if predicate(s)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"rotel: timed out after {timeout}s waiting for {count} spans; got "
                                     f"{len(found)} matching; log:\n{self.log_text()[-4000:]}")
            time.sleep(0.2)

    def wait_for_trace(self, trace_id: str, names: tuple[str, ...] = (), timeout: float = 30) -> list[CollectorSpan]:
        """The spans of one trace once the collector has logged every name in ``names`` (at least one span)."""
        def complete(spans: list[CollectorSpan]) -> bool:
            return bool(spans) and set(names) <= {s.name for s in spans}

        deadline = time.monotonic() + timeout
        while True:
            spans = [s for s in self.spans() if s.trace_id == trace_id]
            if complete(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"rotel: timed out after {timeout}s waiting for trace {trace_id} with "
                                     f"{names}; log:\n{self.log_text()[-4000:]}")
            time.sleep(0.2)

    def wait_for_log(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            log = self.log_text()
            if text in log:
                return log
            if time.monotonic() > deadline:
                raise AssertionError(f"rotel: {text!r} not in its log after {timeout}s:\n{log[-4000:]}")
            time.sleep(0.2)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
