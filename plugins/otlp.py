"""Telemetry exporter ``otlp`` (extra ``otel``): spans, events (as log records) and the platform's metrics to any
OpenTelemetry backend over OTLP/HTTP or OTLP/gRPC.

The OpenTelemetry SDK does the protocol work: spans become SDK ``ReadableSpan`` objects fed to a
``BatchSpanProcessor``, events go through a ``LoggerProvider`` with a ``BatchLogRecordProcessor``, and metrics are
observable instruments read by a ``PeriodicExportingMetricReader``. The SDK is imported in ``setup`` only, so this
module imports (and ``mcp-agent plugins list`` shows it) without the extra.

Nothing here blocks the caller: ``export_span`` and ``export`` only enqueue. The SDK's batch processors drop
silently when full, so each queue is fronted by our own bounded count: what does not fit is refused and counted in
``mcp_agent_cloud_telemetry_dropped_total{exporter, signal}``, and so are batches the backend did not accept.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import ipaddress
import logging
import re
import threading
import time
import types
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mcp_agent_cloud.errors import MissingDependencyError
from mcp_agent_cloud.hookspecs import hookimpl
from mcp_agent_cloud.hookspecs.types import Event, SpanData, TelemetryExporter, TelemetryExporterSpec
from mcp_agent_cloud.telemetry import clean_attributes

log = logging.getLogger(__name__)

Signal = Literal["traces", "metrics", "logs"]
DROPPED = "mcp_agent_cloud_telemetry_dropped_total"
PLATFORM_SERVICE = "mcp-agent-cloud"
SCOPE = "mcp_agent_cloud"
# W3C ids: lowercase hex, not all zeros
_TRACE_ID = re.compile(r"^(?!0{32})[0-9a-f]{32}$")
_SPAN_ID = re.compile(r"^(?!0{16})[0-9a-f]{16}$")
# Values that are credentials whatever their key says: bearer tokens and the platform's own API tokens.
_SECRET_VALUE = re.compile(r"(?i)\bbearer\s+\S+|mcpac_[A-Za-z0-9_-]{8,}")
_RESOURCE_CACHE = 1024


class OtlpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    endpoint: str | None = Field(None, description="http: base URL (the /v1/traces, /v1/logs, /v1/metrics paths are "
                                 "added); grpc: host:port or a URL. Default: the local collector's port")
    protocol: Literal["http", "grpc"] = "http"
    # May hold API keys: kept out of repr and never logged.
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    insecure: bool | None = Field(None, description="grpc: plaintext instead of TLS (default: plaintext for http:// "
                                  "and for a loopback host:port, TLS otherwise)")
    timeout: float = Field(10.0, gt=0, le=300, description="seconds per export request, retries included")
    sample_ratio: float = Field(1.0, ge=0, le=1)
    signals: list[Signal] = Field(default_factory=lambda: ["traces", "metrics", "logs"])
    max_queue_size: int = Field(2048, ge=1, le=1_000_000)
    max_export_batch_size: int | None = Field(None, ge=1, description="default: min(512, max_queue_size)")
    schedule_delay_ms: float = Field(5000, gt=0, le=3_600_000)
    metrics_interval_seconds: float = Field(60.0, gt=0, le=86_400)
    resource_attributes: dict[str, str | bool | int | float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _batch_fits_queue(self) -> OtlpConfig:
        if self.max_export_batch_size is None:
            self.max_export_batch_size = min(512, self.max_queue_size)
        elif self.max_export_batch_size > self.max_queue_size:
            raise ValueError("max_export_batch_size must not exceed max_queue_size")
        return self

    def resolved_endpoint(self) -> str:
        if self.endpoint:
            return self.endpoint.rstrip("/") if self.protocol == "http" else self.endpoint
        return "http://127.0.0.1:4318" if self.protocol == "http" else "127.0.0.1:4317"

    def grpc_insecure(self) -> bool:
        if self.insecure is not None:
            return self.insecure
        endpoint = self.resolved_endpoint()
        parsed = urlparse(endpoint if "://" in endpoint else f"//{endpoint}")
        if parsed.scheme:
            return parsed.scheme == "http"
        host = parsed.hostname or ""
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


def _shown(endpoint: str) -> str:
    """The endpoint as logged: without user:password@ or a query (either may carry a key)."""
    parsed = urlparse(endpoint if "://" in endpoint else f"//{endpoint}")
    host = parsed.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parsed.port:
        netloc += f":{parsed.port}"
    return (f"{parsed.scheme}://" if parsed.scheme else "") + netloc + parsed.path


def _redact(value: Any) -> Any:
    return _SECRET_VALUE.sub("[redacted]", value) if isinstance(value, str) else value


def safe_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """Secret-looking keys dropped (as everywhere in the platform), credential-looking values redacted."""
    return {k: _redact(v) for k, v in clean_attributes(attributes).items()}


class _Gate:
    """Our own bound in front of an SDK batch queue: the SDK would drop its oldest item silently when full."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.pending = 0  # handed to the processor, not yet taken by its exporter
        self.abandoned = False  # a shutdown ran out of time: what was pending then is counted as dropped
        self._lock = threading.Lock()

    def admit(self) -> bool:
        with self._lock:
            if self.pending >= self.capacity:
                return False
            self.pending += 1
            return True

    def taken(self, n: int) -> int:
        """n items left the queue; returns how many of them were counted as dropped already (by abandon)."""
        with self._lock:
            if self.abandoned:
                return n
            self.pending = max(0, self.pending - n)
            return 0

    def abandon(self) -> int:
        """What is still pending, once: the shutdown gave up on it (its later failure must not count again)."""
        with self._lock:
            n, self.pending, self.abandoned = self.pending, 0, True
            return n


class _CountingExporter:
    """Between an SDK batch processor and the SDK's OTLP exporter: tells the gate what left the queue and
    counts batches the backend did not take. Duck-typed: the processors only call these methods."""

    def __init__(self, inner: Any, gate: _Gate, on_failure: Callable[[int], None]) -> None:
        self.inner, self.gate, self.on_failure = inner, gate, on_failure

    def export(self, batch):
        uncounted = len(batch) - self.gate.taken(len(batch))
        try:
            result = self.inner.export(batch)
        except Exception:
            self.on_failure(uncounted)
            raise
        if getattr(result, "name", "") != "SUCCESS":
            self.on_failure(uncounted)
        return result

    def shutdown(self, *args, **kwargs):
        return self.inner.shutdown(*args, **kwargs)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class _CountingMetricExporter:
    """The same for metrics: the reader reads the exporter's preferred temporality and aggregation."""

    def __init__(self, inner: Any, on_failure: Callable[[int], None]) -> None:
        self.inner, self.on_failure = inner, on_failure
        self._preferred_temporality = inner._preferred_temporality
        self._preferred_aggregation = inner._preferred_aggregation

    def export(self, metrics_data, timeout_millis: float = 10_000, **kwargs):
        try:
            result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception:
            self.on_failure(_points(metrics_data))
            raise
        if getattr(result, "name", "") != "SUCCESS":
            self.on_failure(_points(metrics_data))
        return result

    def shutdown(self, *args, **kwargs):
        return self.inner.shutdown(*args, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis=timeout_millis)


def _points(metrics_data) -> int:
    return sum(len(m.data.data_points) for rm in metrics_data.resource_metrics for sm in rm.scope_metrics
               for m in sm.metrics)


def _metric_reader(exporter: Any, interval_ms: float, timeout_ms: float, before_collect: Callable[[], None]):
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    class _Reader(PeriodicExportingMetricReader):
        # Instruments for metrics defined after setup are added here: a callback may not add them (the SDK
        # holds its collection lock while it runs the callbacks).
        def collect(self, timeout_millis: float = 10_000) -> None:
            with contextlib.suppress(Exception):
                before_collect()
            super().collect(timeout_millis=timeout_millis)

    return _Reader(exporter, export_interval_millis=interval_ms, export_timeout_millis=timeout_ms)


async def _bounded(fn: Callable[[], Any], seconds: float) -> bool:
    """Run a blocking SDK call on a daemon thread and wait at most ``seconds`` (a stuck export must neither block
    the event loop nor keep the process from exiting)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def finish() -> None:
        if not done.done():
            done.set_result(None)

    def run() -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - shutting down: report, never raise
            log.debug("otlp exporter: %s failed: %s", getattr(fn, "__name__", fn), type(exc).__name__)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(finish)

    threading.Thread(target=run, name="otlp-exporter-flush", daemon=True).start()
    try:
        await asyncio.wait_for(done, max(seconds, 0.05))
        return True
    except asyncio.TimeoutError:
        return False


class OtlpExporter(TelemetryExporter):
    def __init__(self, config: OtlpConfig, ctx) -> None:
        super().__init__(config, ctx)
        self._span_processor = None
        self._span_gate: _Gate | None = None
        self._log_provider = None
        self._logger = None
        self._log_gate: _Gate | None = None
        self._meter_provider = None
        self._meter = None
        self._instrumented: set[str] = set()
        self._instr_lock = threading.Lock()
        self._inner: list[Any] = []
        self._resources: dict[str, Any] = {}
        self._sampler = None
        self._sdk: Any = None
        self._drop_lock = threading.Lock()
        self.dropped: dict[str, int] = {"traces": 0, "logs": 0, "metrics": 0}
        self._closed = False

    def __repr__(self) -> str:
        c = self.config
        endpoint = _shown(c.resolved_endpoint())
        return f"OtlpExporter(protocol={c.protocol!r}, endpoint={endpoint!r}, signals={c.signals!r})"

    # -- set-up --------------------------------------------------------------------------------------------------

    def _exporter_classes(self):
        try:
            if self.config.protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
                from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            else:
                from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise MissingDependencyError(
                f"telemetry 'otlp' over {self.config.protocol} needs the OpenTelemetry OTLP exporter ({exc.name})",
                hint="pip install 'mcp-agent-cloud[otel]'") from None
        return OTLPSpanExporter, OTLPLogExporter, OTLPMetricExporter

    def _make(self, cls, signal: str, **extra):
        c = self.config
        # Empty: None, so the SDK falls back to OTEL_EXPORTER_OTLP_[signal_]HEADERS (keys kept out of the config).
        headers = dict(c.headers) or None
        if c.protocol == "grpc":
            if headers:
                headers = {k.lower(): v for k, v in headers.items()}  # gRPC metadata keys are lowercase
            exporter = cls(endpoint=c.resolved_endpoint(), insecure=c.grpc_insecure(), headers=headers,
                           timeout=c.timeout, **extra)
        else:
            exporter = cls(endpoint=f"{c.resolved_endpoint()}/v1/{signal}", headers=headers, timeout=c.timeout,
                           **extra)
        self._inner.append(exporter)
        return exporter

    def _resource(self, service: str):
        resource = self._resources.get(service)
        if resource is None:
            from opentelemetry.sdk.resources import Resource

            if len(self._resources) >= _RESOURCE_CACHE:
                self._resources.clear()
            # service.name last: it names whose span it is, whatever resource_attributes say
            resource = self._resources[service] = Resource.create(
                {**self.config.resource_attributes, "service.name": service})
        return resource

    async def setup(self) -> None:
        if importlib.util.find_spec("opentelemetry.sdk") is None:
            raise MissingDependencyError("telemetry 'otlp' needs the OpenTelemetry SDK",
                                         hint="pip install 'mcp-agent-cloud[otel]'")
        from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

        c = self.config
        span_cls, log_cls, metric_cls = self._exporter_classes()
        if c.sample_ratio < 1:
            self._sampler = TraceIdRatioBased(c.sample_ratio)
        batch = {"max_queue_size": c.max_queue_size, "max_export_batch_size": c.max_export_batch_size,
                 "schedule_delay_millis": c.schedule_delay_ms, "export_timeout_millis": c.timeout * 1000}
        if "traces" in c.signals:
            from opentelemetry.sdk.trace import ReadableSpan
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.util.instrumentation import InstrumentationScope
            from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

            self._sdk = types.SimpleNamespace(
                ReadableSpan=ReadableSpan, SpanContext=SpanContext, Status=Status, StatusCode=StatusCode,
                sampled=TraceFlags(TraceFlags.SAMPLED), ok=Status(StatusCode.OK), unset=Status(StatusCode.UNSET),
                kinds={k: SpanKind[k.upper()] for k in ("internal", "server", "client", "producer", "consumer")},
                scope=InstrumentationScope(SCOPE))

            self._span_gate = _Gate(c.max_queue_size)
            inner = _CountingExporter(self._make(span_cls, "traces"), self._span_gate,
                                      lambda n: self._count_drop("traces", n))
            self._span_processor = BatchSpanProcessor(inner, **batch)
        if "logs" in c.signals:
            from opentelemetry._logs import SeverityNumber
            from opentelemetry.sdk._logs import LoggerProvider
            from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

            from mcp_agent_cloud import __version__

            self._log_gate = _Gate(c.max_queue_size)
            inner = _CountingExporter(self._make(log_cls, "logs"), self._log_gate,
                                      lambda n: self._count_drop("logs", n))
            self._log_provider = LoggerProvider(resource=self._resource(PLATFORM_SERVICE), shutdown_on_exit=False)
            self._log_provider.add_log_record_processor(BatchLogRecordProcessor(inner, **batch))
            self._logger = self._log_provider.get_logger(SCOPE, __version__)
            self._severity = {False: SeverityNumber.INFO, True: SeverityNumber.ERROR}
        if "metrics" in c.signals and self.ctx.metrics is not None:
            from opentelemetry.sdk.metrics import MeterProvider

            from mcp_agent_cloud import __version__

            exporter = _CountingMetricExporter(self._make(metric_cls, "metrics"),
                                               lambda n: self._count_drop("metrics", n))
            reader = _metric_reader(exporter, c.metrics_interval_seconds * 1000, c.timeout * 1000,
                                    self._sync_instruments)
            self._meter_provider = MeterProvider(metric_readers=[reader], resource=self._resource(PLATFORM_SERVICE),
                                                 shutdown_on_exit=False)
            self._meter = self._meter_provider.get_meter(SCOPE, __version__)
            self._sync_instruments()
        log.info("otlp exporter: %s to %s (%s)", ", ".join(c.signals), _shown(c.resolved_endpoint()), c.protocol)

    # -- drops ---------------------------------------------------------------------------------------------------

    def _count_drop(self, signal: str, n: int = 1) -> None:
        if n <= 0:
            return
        with self._drop_lock:  # from the event loop and from the SDK's export threads
            self.dropped[signal] += n
            metrics = self.ctx.metrics
            if metrics is not None:
                metrics.counter(DROPPED, "telemetry items an exporter dropped (its queue was full)",
                                ("exporter", "signal")).inc((self.spec_name or "otlp", signal), n)

    # -- spans ---------------------------------------------------------------------------------------------------

    def export_span(self, span: SpanData) -> None:
        processor = self._span_processor
        if processor is None or self._closed:
            return
        if not (_TRACE_ID.match(span.trace_id) and _SPAN_ID.match(span.span_id)
                and (span.parent_id is None or _SPAN_ID.match(span.parent_id))):
            self._count_drop("traces")  # a malformed span (say, from an app) cannot be exported
            return
        trace_id = int(span.trace_id, 16)
        sampler = self._sampler
        if sampler is not None and not sampler.should_sample(None, trace_id, span.name).decision.is_sampled():
            return
        if not self._span_gate.admit():
            self._count_drop("traces")
            return
        processor.on_end(self._readable(span, trace_id))

    def _readable(self, span: SpanData, trace_id: int):
        sdk = self._sdk  # resolved once in setup: this runs on the caller's thread for every span
        flags = sdk.sampled
        context = sdk.SpanContext(trace_id, int(span.span_id, 16), is_remote=False, trace_flags=flags)
        parent = (sdk.SpanContext(trace_id, int(span.parent_id, 16), is_remote=False, trace_flags=flags)
                  if span.parent_id else None)
        if span.status == "error":
            status = sdk.Status(sdk.StatusCode.ERROR, span.status_message or None)
        else:
            status = sdk.ok if span.status == "ok" else sdk.unset
        attributes = safe_attributes(span.attributes)
        if span.org:
            attributes.setdefault("org", span.org)
        if span.deployment:
            attributes.setdefault("deployment", span.deployment)
        return sdk.ReadableSpan(name=span.name, context=context, parent=parent, resource=self._resource(span.service),
                                attributes=attributes, kind=sdk.kinds[span.kind], status=status,
                                start_time=span.start_ns, end_time=span.end_ns, instrumentation_scope=sdk.scope)

    # -- events as log records -----------------------------------------------------------------------------------

    def export(self, event: Event) -> None:
        logger = self._logger
        if logger is None or self._closed:
            return
        if not self._log_gate.admit():
            self._count_drop("logs")
            return
        attributes: dict[str, Any] = {"type": event.type, "status": event.status}
        for key in ("org", "deployment", "version", "step", "duration_ms"):
            value = getattr(event, key)
            if value is not None:
                attributes[key] = value
        data = safe_attributes({k: v for k, v in event.data.items() if isinstance(k, str)})
        attributes.update({f"data.{k}": (v if len(str(v)) <= 1000 else str(v)[:1000]) for k, v in data.items()})
        failed = event.status == "failed"
        logger.emit(timestamp=int(event.ts * 1e9), observed_timestamp=time.time_ns(),
                    severity_number=self._severity[failed],
                    severity_text="ERROR" if failed else "INFO", body=_redact(event.message),
                    attributes=attributes, event_name=event.type)

    # -- metrics -------------------------------------------------------------------------------------------------

    def _sync_instruments(self) -> None:
        meter, metrics = self._meter, self.ctx.metrics
        if meter is None or metrics is None:
            return
        with self._instr_lock:
            for metric in metrics.all():
                if metric.name in self._instrumented:
                    continue
                self._instrumented.add(metric.name)
                if metric.kind == "counter":
                    meter.create_observable_counter(metric.name, [self._observer(metric)], description=metric.help)
                elif metric.kind == "gauge":
                    meter.create_observable_gauge(metric.name, [self._observer(metric)], description=metric.help)
                elif metric.kind == "histogram":
                    # The API has no asynchronous histogram: its count and sum go as two monotonic counters.
                    meter.create_observable_counter(f"{metric.name}_count", [self._observer(metric, 2)],
                                                    description=f"{metric.help} (count)")
                    meter.create_observable_counter(f"{metric.name}_sum", [self._observer(metric, 1)],
                                                    description=f"{metric.help} (sum)")

    @staticmethod
    def _observer(metric, index: int | None = None):
        def observe(_options):
            from opentelemetry.metrics import Observation

            try:
                values = dict(metric.read()) if metric.kind == "gauge" else dict(metric.values)
            except Exception:  # noqa: BLE001 - a gauge that cannot be read is left out, as in /metrics
                return []
            return [Observation(value if index is None else value[index], dict(zip(metric.labels, labels)))
                    for labels, value in values.items()]

        return observe

    # -- flush and close -----------------------------------------------------------------------------------------

    def _flush_all(self, timeout_ms: int) -> None:
        if self._span_processor is not None:
            self._span_processor.force_flush(timeout_ms)
        if self._log_provider is not None:
            self._log_provider.force_flush(timeout_ms)
        if self._meter_provider is not None:
            self._meter_provider.force_flush(timeout_ms)

    async def flush(self, timeout: float = 10.0) -> bool:
        """Export what is queued now (and a metrics reading); False when that took longer than ``timeout``."""
        return await _bounded(lambda: self._flush_all(int(timeout * 1000)), timeout)

    def _shutdown_all(self, timeout_ms: int, flushed: bool) -> None:
        if not flushed:
            # A stuck endpoint: stop the exporters' retries first, or each processor waits out its worker.
            for exporter in self._inner:
                with contextlib.suppress(Exception):
                    exporter.shutdown()
        if self._span_processor is not None:
            self._span_processor.shutdown()
        if self._log_provider is not None:
            self._log_provider.shutdown()
        if self._meter_provider is not None:
            self._meter_provider.shutdown(timeout_millis=timeout_ms)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        budget = min(self.config.timeout, 10.0) + 1.0
        deadline = time.monotonic() + budget
        flushed = await self.flush(budget / 2)
        left = max(deadline - time.monotonic(), 0.5)
        done = await _bounded(lambda: self._shutdown_all(int(left * 1000), flushed), left)
        if not done:
            # Still queued when time ran out: never sent, so dropped.
            for signal, gate in (("traces", self._span_gate), ("logs", self._log_gate)):
                if gate is not None:
                    self._count_drop(signal, gate.abandon())
            log.warning("otlp exporter: shutdown did not finish in %.0f s; telemetry still queued was dropped",
                        budget)


@hookimpl
def mcp_agent_cloud_telemetry_exporters():
    yield TelemetryExporterSpec(name="otlp", backend=OtlpExporter, config_model=OtlpConfig,
                                description="OpenTelemetry traces, metrics and logs over OTLP (HTTP or gRPC)",
                                requires=("opentelemetry.sdk",), extra="otel")
