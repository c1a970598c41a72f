"""Spans and metrics, shared by the platform and the MCPApp runtime inside apps.

No OpenTelemetry here: it is an extra, and the app runtime must work without it. Spans follow W3C trace context
(``traceparent``), so they join traces that started in a client, and the ``otlp`` exporter hands them to the
OpenTelemetry SDK. Metrics are kept in-process and rendered in the Prometheus text format (``GET /metrics``);
the ``otlp`` exporter reads the same numbers.
"""

from __future__ import annotations

import bisect
import contextlib
import contextvars
import dataclasses
import math
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from mcp_agent_cloud.hookspecs.types import AttributeValue, SpanData, SpanKind

TRACEPARENT = "traceparent"
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?$")
# Attribute names that could carry a credential are never recorded, whatever a caller passes.
_SECRET_KEYS = re.compile(r"(?i)(authorization|token|secret|password|passwd|api[_-]?key|cookie|credential)")


@dataclasses.dataclass(frozen=True, slots=True)
class SpanContext:
    trace_id: str
    span_id: str
    sampled: bool = True

    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


def parse_traceparent(value: str | bytes | None) -> SpanContext | None:
    """A W3C ``traceparent`` header, or ``None`` when absent or malformed (then a new trace starts)."""
    if not value:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    m = _TRACEPARENT.match(value.strip().lower())
    if m is None or m.group(1) == "ff" or set(m.group(2)) == {"0"} or set(m.group(3)) == {"0"}:
        return None
    if m.group(1) == "00" and len(value.strip()) != 55:
        return None
    return SpanContext(m.group(2), m.group(3), bool(int(m.group(4), 16) & 1))


_secret_key_seen: dict[str, bool] = {}


def _is_secret_key(key: str) -> bool:
    known = _secret_key_seen.get(key)
    if known is None:
        known = bool(_SECRET_KEYS.search(key))
        if len(_secret_key_seen) < 10_000:  # attribute names are few; a flood of new ones is not cached
            _secret_key_seen[key] = known
    return known


def clean_attributes(attributes: dict[str, Any]) -> dict[str, AttributeValue]:
    out: dict[str, AttributeValue] = {}
    for key, value in attributes.items():
        if value is None or _is_secret_key(key):
            continue
        out[key] = value if isinstance(value, (str, bool, int, float)) else str(value)
    return out


_current: contextvars.ContextVar[Span | SpanContext | None] = contextvars.ContextVar("mcpac_span", default=None)
# Entered whenever a span becomes current (set by the app runtime when the app has OpenTelemetry: its spans then
# get ours as their parent).
_context_hook: Callable[[Span], contextlib.AbstractContextManager] | None = None


def set_context_hook(hook: Callable[[Span], contextlib.AbstractContextManager] | None) -> None:
    global _context_hook
    _context_hook = hook


def _as_current(span: Span | SpanContext | None) -> contextlib.AbstractContextManager:
    hook = _context_hook
    return hook(span) if hook is not None and isinstance(span, Span) else contextlib.nullcontext()


class Span:
    """A span being recorded. ``end`` hands it to the tracer's sink once."""

    __slots__ = ("tracer", "name", "context", "parent_id", "kind", "start_ns", "end_ns", "attributes", "status",
                 "status_message", "org", "deployment", "_ended")

    def __init__(self, tracer: Tracer, name: str, context: SpanContext, parent_id: str | None, kind: SpanKind,
                 attributes: dict[str, Any], org: str | None, deployment: str | None) -> None:
        self.tracer = tracer
        self.name = name
        self.context = context
        self.parent_id = parent_id
        self.kind = kind
        self.start_ns = time.time_ns()
        self.end_ns = 0
        self.attributes = attributes
        self.status = "unset"
        self.status_message = ""
        self.org = org
        self.deployment = deployment
        self._ended = False

    def set(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def fail(self, message: str) -> None:
        self.status, self.status_message = "error", message[:500]

    def traceparent(self) -> str:
        return self.context.traceparent()

    def end(self, end_ns: int | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        self.end_ns = end_ns or time.time_ns()
        if self.status == "unset":
            self.status = "ok"
        if self.context.sampled:
            self.tracer._finish(self)

    def data(self) -> SpanData:
        # Built from values made here, so validation is skipped (it was most of a span's cost on the call path).
        return SpanData.model_construct(name=self.name, trace_id=self.context.trace_id, span_id=self.context.span_id,
                        parent_id=self.parent_id, kind=self.kind, start_ns=self.start_ns, end_ns=self.end_ns,
                        status=self.status, status_message=self.status_message,
                        attributes=clean_attributes(self.attributes), service=self.tracer.service, org=self.org,
                        deployment=self.deployment)


class Tracer:
    """Makes spans and hands finished ones to ``sink``. With no sink, tracing is off and ``start`` returns
    ``None``: callers skip the work (the gateway's per-call cost matters)."""

    def __init__(self, sink: Callable[[SpanData], None] | None = None, *, service: str = "mcp-agent-cloud",
                 sample_ratio: float = 1.0) -> None:
        self.sink = sink
        self.service = service
        self.sample_ratio = sample_ratio

    @property
    def enabled(self) -> bool:
        return self.sink is not None

    def sampled(self, trace_id: str) -> bool:
        # By trace id, so every node and app decides the same for one trace.
        return self.sample_ratio >= 1 or int(trace_id[16:], 16) < self.sample_ratio * 2**64

    def start(self, name: str, *, kind: SpanKind = "internal", parent: SpanContext | Span | None | bool = True,
              attributes: dict[str, Any] | None = None, org: str | None = None,
              deployment: str | None = None, start_ns: int | None = None) -> Span | None:
        """``parent=True``: the current span (or context) if any; ``None``/``False``: a new trace.
        ``start_ns`` backdates it (a step timed elsewhere, say by the CLI)."""
        if self.sink is None:
            return None
        if parent is True:
            parent = _current.get()
        if isinstance(parent, Span):
            org = org or parent.org
            deployment = deployment or parent.deployment
            parent = parent.context
        if isinstance(parent, SpanContext):
            trace_id, parent_id, sampled = parent.trace_id, parent.span_id, parent.sampled
        else:
            trace_id, parent_id = secrets.token_hex(16), None
            sampled = self.sampled(trace_id)
        context = SpanContext(trace_id, secrets.token_hex(8), sampled)
        span = Span(self, name, context, parent_id, kind, dict(attributes or {}), org, deployment)
        if start_ns:
            span.start_ns = start_ns
        return span

    @contextlib.contextmanager
    def span(self, name: str, **kw: Any) -> Iterator[Span | None]:
        """A span around a block, current inside it; an exception marks it failed (and propagates)."""
        span = self.start(name, **kw)
        if span is None:
            yield None
            return
        token = _current.set(span)
        try:
            with _as_current(span):
                yield span
        except BaseException as exc:
            span.fail(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            _current.reset(token)
            span.end()

    def _finish(self, span: Span) -> None:
        sink = self.sink
        if sink is not None:
            sink(span.data())


def current_span() -> Span | SpanContext | None:
    return _current.get()


@contextlib.contextmanager
def use_parent(parent: SpanContext | Span | None) -> Iterator[None]:
    """Make ``parent`` (e.g. from an incoming ``traceparent``) the parent of spans started inside the block."""
    token = _current.set(parent)
    try:
        with _as_current(parent):
            yield
    finally:
        _current.reset(token)


class SpanStore:
    """The most recent finished spans of each deployment, in memory, for ``GET .../traces`` (bounded: the
    oldest go first). The platform's own deploy spans are kept under the deployment they belong to."""

    def __init__(self, per_deployment: int = 5000) -> None:
        self.per_deployment = per_deployment
        self._spans: dict[tuple[str, str], deque[SpanData]] = {}

    def add(self, span: SpanData) -> None:
        if span.org is None or span.deployment is None:
            return
        key = (span.org, span.deployment)
        spans = self._spans.get(key)
        if spans is None:
            spans = self._spans[key] = deque(maxlen=self.per_deployment)
        spans.append(span)

    def forget(self, org: str, deployment: str) -> None:
        self._spans.pop((org, deployment), None)

    def spans(self, org: str, deployment: str) -> list[SpanData]:
        return list(self._spans.get((org, deployment), ()))

    def traces(self, org: str, deployment: str, *, trace_id: str | None = None, run_id: str | None = None,
               limit: int = 20) -> list[list[SpanData]]:
        """Whole traces (each sorted by start), newest first. ``run_id`` picks the traces that hold a span with
        attribute ``run.id`` equal to it."""
        by_trace: dict[str, list[SpanData]] = {}
        for span in self._spans.get((org, deployment), ()):
            by_trace.setdefault(span.trace_id, []).append(span)
        picked = []
        for tid, spans in by_trace.items():
            if trace_id is not None and tid != trace_id:
                continue
            if run_id is not None and not any(s.attributes.get("run.id") == run_id for s in spans):
                continue
            picked.append(sorted(spans, key=lambda s: s.start_ns))
        picked.sort(key=lambda spans: spans[0].start_ns, reverse=True)
        return picked[:limit]


# -- metrics ---------------------------------------------------------------------------------------------------

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
Labels = tuple[str, ...]


class Counter:
    kind = "counter"

    def __init__(self, name: str, help: str, labels: Iterable[str]) -> None:
        self.name, self.help, self.labels = name, help, tuple(labels)
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels = (), amount: float = 1) -> None:
        self.values[labels] = self.values.get(labels, 0) + amount

    def get(self, labels: Labels = ()) -> float:
        return self.values.get(labels, 0)


class Histogram:
    kind = "histogram"

    def __init__(self, name: str, help: str, labels: Iterable[str], buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.labels, self.buckets = name, help, tuple(labels), buckets
        # labels -> [per-bucket counts (non-cumulative, last is +Inf), sum, count]
        self.values: dict[Labels, list] = {}

    def observe(self, labels: Labels, value: float) -> None:
        entry = self.values.get(labels)
        if entry is None:
            entry = self.values[labels] = [[0] * (len(self.buckets) + 1), 0.0, 0]
        entry[0][bisect.bisect_left(self.buckets, value)] += 1
        entry[1] += value
        entry[2] += 1

    def quantile(self, labels: Labels, q: float) -> float | None:
        """An estimate from the buckets (linear inside the bucket), as Prometheus' histogram_quantile does."""
        entry = self.values.get(labels)
        if not entry or not entry[2]:
            return None
        rank, seen, lower = q * entry[2], 0, 0.0
        for i, n in enumerate(entry[0]):
            upper = self.buckets[i] if i < len(self.buckets) else math.inf
            if seen + n >= rank and n:
                if upper == math.inf:
                    return lower
                return lower + (upper - lower) * (rank - seen) / n
            seen += n
            lower = upper
        return lower


class Gauge:
    """Read when rendered: ``read`` returns ``{labels: value}``."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labels: Iterable[str],
                 read: Callable[[], dict[Labels, float]]) -> None:
        self.name, self.help, self.labels, self.read = name, help, tuple(labels), read


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Labels, values: Labels, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return repr(int(value)) if float(value).is_integer() else repr(float(value))


class Metrics:
    """The process's metrics. Updates are plain dict arithmetic on the event loop (no lock needed there);
    rendering copies under a lock so exporter threads can read."""

    def __init__(self) -> None:
        self._metrics: dict[str, Counter | Histogram | Gauge] = {}
        self._lock = threading.Lock()

    def counter(self, name: str, help: str, labels: Iterable[str] = ()) -> Counter:
        return self._add(name, lambda: Counter(name, help, labels))

    def histogram(self, name: str, help: str, labels: Iterable[str] = (),
                  buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Histogram:
        return self._add(name, lambda: Histogram(name, help, labels, buckets))

    def gauge(self, name: str, help: str, labels: Iterable[str], read: Callable[[], dict[Labels, float]]) -> Gauge:
        return self._add(name, lambda: Gauge(name, help, labels, read))

    def _add(self, name: str, make):
        with self._lock:
            metric = self._metrics.get(name)
            if metric is None:
                metric = self._metrics[name] = make()
            return metric

    def get(self, name: str):
        return self._metrics.get(name)

    def all(self) -> list[Counter | Histogram | Gauge]:
        with self._lock:
            return list(self._metrics.values())

    def render(self, keep: Callable[[Labels, Labels], bool] | None = None) -> str:
        """Prometheus text format 0.0.4. ``keep(label_names, label_values)`` filters series (tenant scoping)."""
        lines: list[str] = []
        for metric in self.all():
            if isinstance(metric, Gauge):
                try:
                    values = dict(metric.read())
                except Exception:  # noqa: BLE001 - a gauge that cannot be read is left out, not fatal
                    continue
            else:
                values = dict(metric.values)
            series = [(lv, v) for lv, v in values.items() if keep is None or keep(metric.labels, lv)]
            if not series and keep is not None:
                continue  # a filtered view names only what it shows
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            for lv, value in sorted(series):
                if isinstance(metric, Histogram):
                    counts, total, count = value
                    running = 0
                    for bound, n in zip((*metric.buckets, math.inf), counts):
                        running += n
                        le = 'le="' + _num(bound) + '"'
                        lines.append(f"{metric.name}_bucket{_labels(metric.labels, lv, le)} {running}")
                    lines.append(f"{metric.name}_sum{_labels(metric.labels, lv)} {_num(total)}")
                    lines.append(f"{metric.name}_count{_labels(metric.labels, lv)} {count}")
                else:
                    lines.append(f"{metric.name}{_labels(metric.labels, lv)} {_num(value)}")
        return "\n".join(lines) + "\n"
