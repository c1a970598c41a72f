"""Built-in telemetry exporter ``console``: one readable line per event on stderr."""

from __future__ import annotations

import sys
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict

from mcp_agent_cloud.hookspecs import hookimpl
from mcp_agent_cloud.hookspecs.types import Event, TelemetryExporter, TelemetryExporterSpec


class ConsoleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stream: Literal["stderr", "stdout"] = "stderr"


class ConsoleExporter(TelemetryExporter):
    def export(self, event: Event) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(event.ts))
        where = ".".join(p for p in (event.org, event.deployment) if p) or "-"
        if event.version is not None:
            where += f"@v{event.version}"
        took = f" ({event.duration_ms:.0f} ms)" if event.duration_ms is not None else ""
        step = f" {event.step}" if event.step else ""
        line = f"{stamp} {event.type}{step} [{event.status}] {where} {event.message}{took}\n"
        stream = sys.stdout if self.config.stream == "stdout" else sys.stderr
        try:
            stream.write(line)
            stream.flush()
        except (OSError, ValueError):  # a closed terminal must not break the platform
            pass


@hookimpl
def mcp_agent_cloud_telemetry_exporters():
    yield TelemetryExporterSpec(name="console", backend=ConsoleExporter, config_model=ConsoleConfig,
                                description="readable event lines on stderr")
