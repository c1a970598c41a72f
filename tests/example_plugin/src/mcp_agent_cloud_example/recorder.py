"""The ``recorder`` telemetry exporter: one JSON object per line, one line per event (and per span, if asked)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from mcp_agent_cloud.hookspecs.types import Event, SpanData, TelemetryExporter


class RecorderConfig(BaseModel):
    """Options of ``{name: recorder, ...}`` in the platform config."""

    # Forbid unknown keys so a typo in the YAML is reported instead of silently ignored.
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="file to append events to; relative paths are under the platform's data_dir")
    spans_path: str | None = Field(None, description="file to append finished spans to (default: spans are not "
                                   "recorded)")


class RecorderExporter(TelemetryExporter):
    def __init__(self, config: RecorderConfig, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(config, ctx)
        self.path = self._under_data_dir(config.path, ctx)
        self.spans_path = self._under_data_dir(config.spans_path, ctx) if config.spans_path else None

    @staticmethod
    def _under_data_dir(value: str, ctx) -> Path:  # type: ignore[no-untyped-def]
        path = Path(value).expanduser()
        return path if path.is_absolute() else Path(ctx.data_dir) / path

    async def setup(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def export(self, event: Event) -> None:
        # One short append per event keeps the template simple and every line complete even if the platform
        # is killed; an exporter that talks to the network should buffer here and flush in aclose().
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(event.model_dump_json() + "\n")

    def export_span(self, span: SpanData) -> None:
        # Overriding export_span is what makes the platform send spans here. Spans come often (one per MCP
        # request): a real exporter buffers them and sends batches from a thread or task.
        if self.spans_path is not None:
            with self.spans_path.open("a", encoding="utf-8") as fh:
                fh.write(span.model_dump_json() + "\n")
