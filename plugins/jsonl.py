"""Built-in telemetry exporter ``jsonl``: every event as one JSON line in ``DATA/events.jsonl``."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from mcp_agent_cloud.hookspecs import hookimpl
from mcp_agent_cloud.hookspecs.types import Event, TelemetryExporter, TelemetryExporterSpec


class JsonlConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path | None = None
    max_bytes: int = 50 * 1024 * 1024  # rotate to .1 past this, so the file never grows without bound


class JsonlExporter(TelemetryExporter):
    def __init__(self, config, ctx) -> None:
        super().__init__(config, ctx)
        self.path = Path(config.path) if config.path else ctx.data_dir / "events.jsonl"
        self._fh = None

    async def setup(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._fh = os.fdopen(fd, "a", encoding="utf-8", buffering=1)

    def export(self, event: Event) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        self._fh.write(event.model_dump_json() + "\n")
        if self._fh.tell() > self.config.max_bytes:
            self._fh.close()
            os.replace(self.path, self.path.with_suffix(self.path.suffix + ".1"))
            self._open()

    async def aclose(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


@hookimpl
def mcp_agent_cloud_telemetry_exporters():
    yield TelemetryExporterSpec(name="jsonl", backend=JsonlExporter, config_model=JsonlConfig,
                                description="events as JSON lines in DATA/events.jsonl")
