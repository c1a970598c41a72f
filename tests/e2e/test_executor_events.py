"""The executor supervisor's startup events reach the telemetry exporters: the platform puts its exporters in place
before it starts the supervisor (core/platform/service.py, Platform.start). Checked with the real temporal supervisor
and its embedded dev server, through the jsonl exporter's file (the test platform's config selects `jsonl`)."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.conftest import PlatformProcess, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.temporal]


def events(p: PlatformProcess) -> list[dict]:
    path = p.root / "data" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def test_the_supervisors_startup_events_are_exported(tmp_path, shared_envs):
    host = f"127.0.0.1:{free_port()}"
    p = PlatformProcess(tmp_path, shared_envs, extra_config=f"executor: {{name: temporal, embedded: true, "
                                                            f"host: '{host}'}}\n")
    pid_file = p.root / "data" / "temporal" / "dev.pid"
    dev_pid = None
    try:
        p.start(timeout=120)
        types = [e["type"] for e in events(p)]
        assert "executor.temporal.started" in types, types
        assert types.index("executor.temporal.started") < types.index("platform.started"), types
        dev_pid = json.loads(pid_file.read_text())["pid"]

        # A crashed platform leaves the dev server running; the next start takes it over and says so.
        p.kill()
        p.start(timeout=120)
        after = events(p)[len(types):]
        adopted = [e for e in after if e["type"] == "executor.temporal.adopted"]
        assert len(adopted) == 1 and f"pid {dev_pid}" in adopted[0]["message"], after
        assert "executor.temporal.started" not in [e["type"] for e in after], after
    finally:
        p.stop()
        # stop() ends an adopted dev server too; if a failure left it running, end it (it is ours: our db file).
        try:
            left = dev_pid or json.loads(pid_file.read_text())["pid"]
            cmdline = open(f"/proc/{left}/cmdline", "rb").read()
        except (OSError, ValueError, KeyError):
            cmdline = b""
        if b"start-dev" in cmdline and str(p.root).encode() in cmdline:
            os.kill(left, signal.SIGKILL)
