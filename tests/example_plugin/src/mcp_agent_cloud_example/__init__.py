"""Example mcp-agent-cloud plugin: the ``recorder`` telemetry exporter and the ``example-hello`` command.

The platform imports this module at startup (entry point ``example`` in pyproject.toml) and calls the functions
marked with ``@hookimpl``. Keep the module cheap to import: it is loaded by every ``mcp-agent`` invocation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mcp_agent_cloud.hookspecs import hookimpl
from mcp_agent_cloud.hookspecs.types import TelemetryExporterSpec

from .recorder import RecorderConfig, RecorderExporter

__version__ = "0.1.0"


@hookimpl
def mcp_agent_cloud_telemetry_exporters() -> Iterator[TelemetryExporterSpec]:
    # Selected in the platform config with `telemetry: [{name: recorder, path: events.jsonl}]`.
    yield TelemetryExporterSpec(
        name="recorder",
        backend=RecorderExporter,
        config_model=RecorderConfig,
        description="appends every platform event as one JSON line to a file",
    )


@hookimpl
def mcp_agent_cloud_cli_commands(cli: Any) -> None:
    import click  # imported here: only needed when the CLI is being built

    @cli.command("example-hello")
    def example_hello() -> None:
        """Say hello (proves the example plugin is installed)."""
        click.echo("hello from the example plugin")
