"""End to end with `executor: temporal`: the platform runs the embedded Temporal dev server (the supervisor), hands
the app its address and task queue, installs temporalio next to the runtime wheel, and a run survives a SIGKILL
of the app process (unlike asyncio, where it is reported interrupted)."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests.conftest import BIN, ROOT, PlatformProcess, free_port, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.network, pytest.mark.temporal]

APP = ROOT / "tests" / "apps" / "workflows_app"


def test_temporal_runs_are_durable_across_an_app_crash(tmp_path, shared_envs):
    port = free_port()
    p = PlatformProcess(tmp_path, shared_envs,
                        extra_config=f"executor: {{name: temporal, embedded: true, host: '127.0.0.1:{port}'}}\n")
    p.start(timeout=120)
    try:
        deployed = p.cli_json("deploy", "app", str(APP), "--name", "durable", timeout=900)
        assert "workflows-Approve-run" in deployed["tools"]
        me = p.cli_json("call", "durable", "whoami")
        assert '"executor": "temporal"' in me["content"][0]["text"]

        def run(name: str) -> dict:
            r = p.api("GET", f"/api/v1/runs/{name}")
            assert r.status_code == 200, r.text
            return r.json()

        # Human in the loop and the flaky step's retries, on Temporal (steps are activities).
        started = p.cli_json("workflows", "run", "durable", "Approve", "--param", "amount=9")
        wait_for(lambda: run(started["run_id"])["waiting_for"] == "approve", what="the run to wait for approve")
        r = p.api("POST", f"/api/v1/runs/{started['run_id']}/resume",
                  json={"signal": "approve", "payload": {"by": "rest"}})
        assert r.status_code == 200, r.text
        done = wait_for(lambda: (s := run(started["run_id"]))["status"] == "completed" and s, timeout=90,
                        what="Approve to complete")
        assert done["result"]["decision"] == {"by": "rest"}
        assert done["result"]["receipt"] == "charged 9 after 3 attempts"

        # SIGKILL the app mid-run: the supervisor restarts it, its worker picks the run up again.
        slow = p.cli_json("workflows", "run", "durable", "Slow", "--param", "ticks=12", "--param", "interval=0.1")
        wait_for(lambda: run(slow["run_id"])["state"].get("tick", 0) >= 2, what="Slow to tick")
        pid = p.api("GET", "/api/v1/deployments/durable").json()["stats"]["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: (d := p.api("GET", "/api/v1/deployments/durable").json())["restarts"] >= 1
                 and d["status"] == "running", timeout=120, what="the supervisor to restart the app")
        finished = wait_for(lambda: (s := run(slow["run_id"]))["status"] in ("completed", "error", "interrupted")
                            and s, timeout=120, what="Slow to finish")
        assert finished["status"] == "completed" and finished["result"] == {"ticks": 12}, finished

        # The app's Heartbeat schedule lives on the Temporal server; deleting the deployment removes it.
        def schedules() -> list[str]:
            out = subprocess.run([str(BIN / "temporal"), "schedule", "list", "--address", f"127.0.0.1:{port}",
                                  "-o", "json"], capture_output=True, text=True, timeout=60, check=True).stdout
            rows = json.loads(out) if out.strip() else []
            return [r.get("scheduleId", "") for r in rows if "durable" in r.get("scheduleId", "")]

        wait_for(schedules, what="the app's schedule on the Temporal server")
        p.cli("delete", "durable", "--yes", check=True)
        wait_for(lambda: not schedules(), timeout=30, what="the schedule to be deleted with the deployment")
    finally:
        p.stop()
