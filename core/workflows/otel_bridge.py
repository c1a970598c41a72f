"""OpenTelemetry inside an MCPApp app: spans the app's own code makes with the OpenTelemetry API join the trace.

Used only when the app's environment has the OpenTelemetry SDK (the app installed it; the runtime does not need
it) and the platform turned tracing on. The runtime then installs a ``TracerProvider`` whose processor hands each
finished span to the same buffer as the runtime's own spans, and makes the runtime's current span (a tool call, a
workflow run, a step) the OpenTelemetry parent, so ``tracer.start_as_current_span(...)`` in a tool lands under the
tool call. An app that set up its own provider keeps it: the runtime only adds its processor to it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from ..hookspecs.types import SpanData
from ..telemetry import Span, clean_attributes, set_context_hook

log = logging.getLogger("mcp_agent_cloud.app")

_KINDS = {0: "internal", 1: "server", 2: "client", 3: "producer", 4: "consumer"}
# The mcp SDK traces its own requests with the OpenTelemetry API: the runtime's spans cover those already.
SKIPPED_SCOPES = frozenset({"mcp-python-sdk"})
# Where spans go: the latest app opened in this process (one, outside tests). The processor is added once.
_target: dict[str, Any] = {}


def install(keep: Callable[[SpanData], None], service: str) -> bool:
    """Bridge the OpenTelemetry API of this process to ``keep``. False when the SDK is not installed."""
    try:
        from opentelemetry import context as otel_context
        from opentelemetry import trace
        from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
        from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
    except ImportError:
        return False

    first = not _target
    _target.update(keep=keep, service=service)
    if not first:
        return True

    class _ToRuntime(SpanProcessor):
        def on_end(self, span: Any) -> None:
            ctx = span.context
            scope = getattr(span, "instrumentation_scope", None)
            if ctx is None or not ctx.trace_flags.sampled or getattr(scope, "name", None) in SKIPPED_SCOPES:
                return
            status = {0: "unset", 1: "ok", 2: "error"}.get(int(span.status.status_code.value), "unset")
            _target["keep"](SpanData.model_construct(
                name=span.name, trace_id=f"{ctx.trace_id:032x}", span_id=f"{ctx.span_id:016x}",
                parent_id=f"{span.parent.span_id:016x}" if span.parent is not None else None,
                kind=_KINDS.get(int(span.kind.value), "internal"), start_ns=span.start_time or 0,
                end_ns=span.end_time or 0, status=status, status_message=span.status.description or "",
                attributes=clean_attributes(dict(span.attributes or {})), service=_target["service"], org=None,
                deployment=None))

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # nobody set one (the API's proxy): this app gets ours
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(_ToRuntime())

    @contextlib.contextmanager
    def as_parent(span: Span) -> Iterator[None]:
        parent = NonRecordingSpan(SpanContext(int(span.context.trace_id, 16), int(span.context.span_id, 16),
                                              is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED)))
        token = otel_context.attach(trace.set_span_in_context(parent))
        try:
            yield
        finally:
            otel_context.detach(token)

    set_context_hook(as_parent)
    log.info("OpenTelemetry spans of this app join the platform's traces")
    return True
