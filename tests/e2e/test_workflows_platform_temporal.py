"""End to end with `executor: temporal`: the platform runs the embedded Temporal dev server (the supervisor), hands
the app its address and task queue, and installs temporalio next to the runtime wheel.

One platform and one deployment of tests/apps/workflows_app for the module. The executor-independent scenarios
(the mcp SDK client through the gateway, the real CLI, the REST routes, bad input, suspension) are those of
workflows_scenarios.py, which test_workflows_asyncio.py runs on asyncio. Here also what only Temporal does: a run
survives a SIGKILL of the app process (on asyncio it is reported interrupted), a paused run survives a restart of
the whole platform (graceful, and SIGKILL) and finishes when a human answers afterwards, and the app's schedule,
which lives on the Temporal server, goes with the deployment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests.conftest import BIN, ROOT, PlatformProcess, free_port, wait_for
from tests.e2e import workflows_scenarios as scenarios
from tests.e2e.workflows_scenarios import FINAL, api_ok, mcp, rest_run, status, wait_status

pytestmark = [pytest.mark.e2e, pytest.mark.network, pytest.mark.temporal]

APP = ROOT / "tests" / "apps" / "workflows_app"
NAME = "durable"


def _history(p: PlatformProcess, workflow_id: str, run_id: str) -> list[dict]:
    """A run's event history on the Temporal server, read with the `temporal` CLI."""
    out = subprocess.run([str(BIN / "temporal"), "workflow", "show", "--workflow-id", workflow_id, "--run-id", run_id,
                          "--address", p.temporal_host, "-o", "json"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out)["events"]


def _dev_server_pid(p: PlatformProcess) -> int:
    return json.loads((p.root / "data" / "temporal" / "dev.pid").read_text())["pid"]


def _kill_dev_server(p: PlatformProcess) -> None:
    """The embedded dev server runs in its own session and outlives a SIGKILLed platform (the next start adopts
    it): if a test leaves it so, end it here."""
    pid_file = p.root / "data" / "temporal" / "dev.pid"
    try:
        pid = json.loads(pid_file.read_text())["pid"]
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
    except (OSError, ValueError, KeyError):
        return
    if b"start-dev" in cmdline and str(p.root).encode() in cmdline:
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def tw(tmp_path_factory, shared_envs):
    host = f"127.0.0.1:{free_port()}"
    p = PlatformProcess(tmp_path_factory.mktemp("wftemporal"), shared_envs,
                        extra_config=f"executor: {{name: temporal, embedded: true, host: '{host}'}}\n")
    p.start(timeout=120)
    try:
        p.app, p.executor, p.temporal_host = NAME, "temporal", host
        p.deployed = p.cli_json("deploy", "app", str(APP), "--name", NAME, timeout=900)
        yield p
    finally:
        p.stop()
        _kill_dev_server(p)


def test_deploy_hands_the_app_the_temporal_server(tw):
    assert {"workflows-Approve-run", "workflows-pause", "workflows-resume", "workflows-cancel"} <= set(
        tw.deployed["tools"])
    me = mcp(tw, "whoami")
    assert me["deployment"] == f"default.{NAME}" and me["executor"] == "temporal"
    environ = dict(kv.split("=", 1) for kv in
                   open(f"/proc/{me['pid']}/environ", "rb").read().decode().split("\0") if "=" in kv)
    config = json.loads(environ["MCPAC_EXECUTOR_CONFIG"])
    assert config["host"] == tw.temporal_host and config["task_queue"] == f"mcpac.default.{NAME}", config
    build_log = (tw.root / "data" / "deployments" / f"default.{NAME}" / "v1" / "build.log").read_text()
    assert "temporalio" in build_log


def test_gateway_runs_human_in_the_loop_and_retries(tw):
    ids = scenarios.check_gateway_runs(tw)
    # The step is an activity and Temporal retries it: the run's event history on the server holds the step's retry
    # policy (0.2 s, backoff 2, 3 attempts), and the activity completed on its third attempt after the second
    # attempt's failure.
    events = _history(tw, ids["workflow_id"], ids["run_id"])
    scheduled = [e["activityTaskScheduledEventAttributes"] for e in events
                 if "activityTaskScheduledEventAttributes" in e]
    assert len(scheduled) == 1, scheduled  # one activity, retried by the server: no new scheduling per attempt
    retry = scheduled[0]["retryPolicy"]
    assert retry["maximumAttempts"] == 3 and float(retry["backoffCoefficient"]) == 2.0, retry
    assert retry["initialInterval"] in ("0.200s", "0.2s"), retry
    started = [e["activityTaskStartedEventAttributes"] for e in events if "activityTaskStartedEventAttributes" in e]
    assert len(started) == 1 and started[0]["attempt"] == 3, started
    assert "payment service unavailable (attempt 2)" in json.dumps(started[0]["lastFailure"])
    assert [e for e in events if "activityTaskCompletedEventAttributes" in e]


def test_gateway_bad_input_is_a_clear_tool_error(tw):
    scenarios.check_gateway_bad_input(tw)


def test_cli_drives_runs(tw):
    scenarios.check_cli(tw)


def test_rest_routes_and_org_isolation(tw):
    scenarios.check_rest(tw)


def test_suspend_refuses_new_runs_and_survives_a_restart(tw):
    scenarios.check_suspend(tw)


def test_run_survives_a_sigkill_of_the_app(tw):
    """SIGKILL the app mid-run: the supervisor restarts it, its worker picks the run up again, the result is right."""
    before = api_ok(tw, "GET", f"/api/v1/deployments/{NAME}")["restarts"]
    slow = tw.cli_json("workflows", "run", NAME, "Slow", "--param", "ticks=12", "--param", "interval=0.1")
    wait_for(lambda: rest_run(tw, slow["run_id"])["state"].get("tick", 0) >= 2, what="Slow to tick")
    pid = api_ok(tw, "GET", f"/api/v1/deployments/{NAME}")["stats"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: (d := api_ok(tw, "GET", f"/api/v1/deployments/{NAME}"))["restarts"] > before
             and d["status"] == "running", timeout=120, what="the supervisor to restart the app")
    assert mcp(tw, "whoami")["pid"] != pid
    finished = wait_for(lambda: (s := rest_run(tw, slow["run_id"]))["status"] in FINAL and s, timeout=120,
                        what="Slow to finish")
    assert finished["status"] == "completed" and finished["result"] == {"ticks": 12}, finished


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_paused_run_survives_a_platform_restart(tw, how):
    """Restart the whole platform (`mcp-agent serve`, its apps and its Temporal dev server) while a run waits for
    a human; afterwards the human answers, and the run finishes with the right result."""
    started = mcp(tw, "workflows-Approve-run", {"run_parameters": {"amount": 11, "reason": how}})
    run_id = started["run_id"]
    assert wait_status(tw, run_id, {"paused"})["waiting_for"] == "approve"
    # And a run held by workflows-pause mid-way: it stays held, where it was.
    slow = mcp(tw, "workflows-run", {"workflow_name": "Slow", "run_parameters": {"ticks": 8, "interval": 0.05}})
    wait_for(lambda: status(tw, slow["run_id"])["state"].get("tick", 0) >= 2, what="Slow to tick")
    mcp(tw, "workflows-pause", {"run_id": slow["run_id"]})
    tick = wait_status(tw, slow["run_id"], {"paused"})["state"]["tick"]
    old_app, old_server = mcp(tw, "whoami")["pid"], _dev_server_pid(tw)
    if how == "sigterm":
        tw.stop()  # graceful: the platform stops its apps and its dev server; the run is in the server's db file
        wait_for(lambda: not os.path.exists(f"/proc/{old_server}"), timeout=30, what="the dev server to stop")
    else:
        tw.kill()  # the apps die with it (PDEATHSIG); the dev server lives on, and the next start adopts it
        assert os.path.exists(f"/proc/{old_server}")
    wait_for(lambda: not os.path.exists(f"/proc/{old_app}"), timeout=30, what="the app to stop with the platform")
    tw.start(timeout=120)
    assert (_dev_server_pid(tw) == old_server) is (how == "sigkill")
    wait_for(lambda: tw.api("GET", f"/api/v1/deployments/{NAME}").json().get("status") == "running", timeout=120,
             what="the platform to bring the app back")
    # Still waiting for the human, through the restarted platform's REST routes and the gateway.
    again = wait_for(lambda: (r := tw.api("GET", f"/api/v1/runs/{run_id}")).status_code == 200
                     and r.json()["status"] == "paused" and r.json(), timeout=60, what="the run to be paused again")
    assert again["waiting_for"] == "approve" and again["params"] == {"amount": 11, "reason": how}
    assert mcp(tw, "whoami")["pid"] != old_app
    held = status(tw, slow["run_id"])
    assert held["status"] == "paused" and held["waiting_for"] == "resume" and held["state"]["tick"] <= tick + 1, held
    mcp(tw, "workflows-resume", {"run_id": slow["run_id"]})
    r = tw.cli("workflows", "resume", run_id, "--signal", "approve", "--payload", json.dumps({"by": how}),
               "--watch", "--json", timeout=180)
    done = json.loads(r.stdout)
    assert r.returncode == 0 and done["status"] == "completed", (r.stdout, r.stderr)
    assert done["result"] == {"amount": 11, "reason": how, "decision": {"by": how},
                              "receipt": "charged 11 after 3 attempts"}
    assert status(tw, run_id)["result"] == done["result"]
    finished = wait_status(tw, slow["run_id"], FINAL)
    assert finished["status"] == "completed" and finished["result"] == {"ticks": 8}, finished


def test_delete_removes_the_schedule_from_the_server(tw):
    """The app's Heartbeat schedule lives on the Temporal server; deleting the deployment removes it."""
    def schedules() -> list[str]:
        out = subprocess.run([str(BIN / "temporal"), "schedule", "list", "--address", tw.temporal_host, "-o", "json"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        rows = json.loads(out) if out.strip() else []
        return [r.get("scheduleId", "") for r in rows if NAME in r.get("scheduleId", "")]

    wait_for(schedules, what="the app's schedule on the Temporal server")
    tw.cli("delete", NAME, "--yes", check=True)
    wait_for(lambda: not schedules(), timeout=30, what="the schedule to be deleted with the deployment")
