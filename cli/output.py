"""Rendering shared by all commands: --json, errors with hints, tables, and deploy progress."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import MCPAgentCloudError

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def json_option(fn: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")(fn)


def api_options(fn: Callable) -> Callable:
    fn = click.option("--api-url", envvar="MCP_AGENT_CLOUD_API_URL", help="Platform URL (default: from auth.json, "
                      "else http://127.0.0.1:8765).")(fn)
    return fn


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def handle_errors(fn: Callable) -> Callable:
    """Turn our errors into a message plus a hint (or a JSON error object with --json) and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MCPAgentCloudError as exc:
            data = getattr(exc, "data", None) or {}
            if kwargs.get("as_json"):
                payload = exc.to_dict()
                if data.get("log_tail"):
                    payload["log_tail"] = data["log_tail"]
                emit_json(payload)
            else:
                err.print(f"[bold red]Error:[/] {escape(exc.message)}", markup=True, highlight=False)
                if exc.hint:
                    err.print(f"  [yellow]hint:[/] {escape(exc.hint)}", markup=True, highlight=False)
                tail = data.get("log_tail") or getattr(exc, "log_tail", "")
                if tail:
                    err.print("  last lines of the log:", highlight=False)
                    for line in tail.splitlines():
                        err.print(f"    {line}", markup=False, highlight=False)
            sys.exit(1)

    return wrapper


def table(rows: list[dict], columns: list[tuple[str, str]]) -> None:
    if not rows:
        out.print("(none)")
        return
    t = Table(box=None, header_style="bold", pad_edge=False)
    for _, title in columns:
        t.add_column(title)
    for row in rows:
        t.add_row(*[str(row.get(key, "") if row.get(key) is not None else "-") for key, _ in columns])
    out.print(t)


class DeployProgress:
    """Shows each pipeline step as it happens, and the latest build line under a spinner."""

    def __init__(self, quiet: bool = False, verbose: bool = False) -> None:
        self.quiet = quiet
        self.verbose = verbose
        self.status = None

    def __enter__(self) -> DeployProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop_status()

    def _stop_status(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None

    def step(self, name: str, status: str, duration_ms: float | None = None) -> None:
        if self.quiet:
            return
        if status == "started":
            self._stop_status()
            self.status = err.status(f"{name} ...")
            self.status.start()
            return
        self._stop_status()
        took = f" [dim]({duration_ms / 1000:.1f}s)[/]" if duration_ms is not None else ""
        mark = "[green]✓[/]" if status == "ok" else "[red]✗[/]"
        err.print(f"{mark} {name}{took}", markup=True, highlight=False)

    def log(self, line: str) -> None:
        if self.quiet:
            return
        if self.verbose:
            err.print(f"  [dim]{escape(line)}[/]", markup=True, highlight=False)
        elif self.status is not None:
            self.status.update(f"build ... [dim]{escape(line[:100])}[/]")

    def on_event(self, event: dict) -> None:
        if event.get("type") == "step":
            self.step(event["step"], event["status"], event.get("duration_ms"))
        elif event.get("type") == "log":
            self.log(event.get("line", ""))
