"""Rendering shared by all commands: --json, errors with hints, tables, and deploy progress."""

from __future__ import annotations

import functools
import json
import sys
import time
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
        # Client-side steps (validate, package, upload) with their wall-clock times: sent with the deploy, so the
        # platform's trace of it covers them too.
        self.timings: list[dict] = []
        self._started: dict[str, int] = {}

    def __enter__(self) -> DeployProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop_status()

    def _stop_status(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None

    def record(self, name: str, status: str, duration_ms: float | None = None) -> None:
        """Note a step's time without printing it."""
        now = time.time_ns()
        if status == "started":
            self._started[name] = now
        else:
            self.timings.append({"step": name, "status": status, "end_ns": now,
                                 "start_ns": self._started.pop(name, now - int((duration_ms or 0) * 1e6))})

    def step(self, name: str, status: str, duration_ms: float | None = None) -> None:
        self.record(name, status, duration_ms)
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


def span_tree(spans: list[dict]) -> list[str]:
    """A trace as indented lines: name, duration, status, and a few attributes, children under their parent
    by start time. Spans whose parent is not in the list (it was sampled out, or lives elsewhere) are roots."""
    ids = {s["span_id"] for s in spans}
    children: dict[str | None, list[dict]] = {}
    for span in spans:
        parent = span.get("parent_id") if span.get("parent_id") in ids else None
        children.setdefault(parent, []).append(span)
    start = min((s["start_ns"] for s in spans), default=0)
    lines = [f"trace {spans[0]['trace_id']}" if spans else "trace (empty)"]
    shown = ("gen_ai.tool.name", "run.id", "workflow.id", "version", "http.response.status_code", "error.type")

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s["start_ns"]):
            took = (span["end_ns"] - span["start_ns"]) / 1e6
            offset = (span["start_ns"] - start) / 1e6
            mark = "✗" if span.get("status") == "error" else "✓"
            attrs = " ".join(f"{k}={span['attributes'][k]}" for k in shown if k in span.get("attributes", {}))
            where = "" if span.get("service") == "mcp-agent-cloud" else f" [{span.get('service')}]"
            error = f" ({span['status_message']})" if span.get("status") == "error" and span.get("status_message") \
                else ""
            lines.append(f"{'  ' * depth}{mark} {span['name']}{where} {took:.1f} ms @+{offset:.1f} ms"
                         f"{' ' + attrs if attrs else ''}{error}")
            walk(span["span_id"], depth + 1)

    walk(None, 1)
    return lines
