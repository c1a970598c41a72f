"""An MCPApp whose tool makes spans of its own with the OpenTelemetry API (tests/e2e/test_tracing.py)."""

from __future__ import annotations

from opentelemetry import trace

from mcp_agent_cloud import MCPApp

app = MCPApp(name="otel-app", description="a tool traced with the OpenTelemetry API")
tracer = trace.get_tracer("otel_app")


@app.tool
def weigh(items: int) -> int:
    with tracer.start_as_current_span("weigh.load") as span:
        span.set_attribute("items", items)
        with tracer.start_as_current_span("weigh.sum"):
            return items * 3
