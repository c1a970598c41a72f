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


# Call-all hooks. They get no options of their own, so this example takes its output file from the historic
# configure hook (the platform config's data_dir), which every plugin receives once, even when registered late.
_hook_log: list[Any] = []


@hookimpl
def mcp_agent_cloud_configure(config: Any) -> None:
    _hook_log[:] = [config.data_dir / "example-plugin-hooks.log"]


def _note(line: str) -> None:
    if _hook_log:
        with open(_hook_log[0], "a", encoding="utf-8") as f:
            f.write(line + "\n")


@hookimpl
def mcp_agent_cloud_lifecycle_event(event: Any) -> None:
    _note(f"lifecycle {event.type} {event.deployment}")


@hookimpl
def mcp_agent_cloud_pipeline_step(step: str, deployment: str, version: int) -> Any:
    import contextlib
    import time

    @contextlib.contextmanager
    def timed() -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
            _note(f"step {step} {deployment} v{version} ok {time.monotonic() - t0:.3f}s")
        except BaseException:
            _note(f"step {step} {deployment} v{version} failed")
            raise

    return timed()
