"""End to end: durable workflows of an MCPApp app on the default platform (asyncio executor, process builder).

One platform and one deployment of tests/apps/workflows_app for the module (the app's venv, with the runtime
wheel, comes from the session's shared env cache). The executor-independent scenarios (the mcp SDK client through
the gateway, the real CLI, the REST routes, bad input, suspension) are those of workflows_scenarios.py, which
test_workflows_platform_temporal.py runs on Temporal; here also what only asyncio does: the runtime is handed the
platform, and a SIGKILLed app process is restarted by the supervisor and its run in flight reported as interrupted.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.conftest import ROOT, PlatformProcess, wait_for
from tests.e2e import workflows_scenarios as scenarios
from tests.e2e.workflows_scenarios import FINAL, api_ok, mcp, status, wait_status

pytestmark = [pytest.mark.e2e, pytest.mark.network]

APP = ROOT / "tests" / "apps" / "workflows_app"
NAME = "wfapp"


@pytest.fixture(scope="module")
def wf(tmp_path_factory, shared_envs):
    p = PlatformProcess(tmp_path_factory.mktemp("wfplatform"), shared_envs)
    p.start()
    try:
        p.app, p.executor = NAME, "asyncio"
        p.deployed = p.cli_json("deploy", "app", str(APP), "--name", NAME, timeout=900)
        yield p
    finally:
        p.stop()


def test_deploy_installs_the_runtime_and_hands_it_the_platform(wf):
    tools = set(wf.deployed["tools"])
    assert {"add", "whoami", "double", "workflows-list", "workflows-run", "workflows-get_status",
            "workflows-resume", "workflows-pause", "workflows-cancel", "workflows-runs-list", "workflows-batch",
            "workflows-Approve-run", "workflows-Slow-run"} <= tools, tools
    me = mcp(wf, "whoami")
    assert me["deployment"] == f"default.{NAME}" and me["executor"] == "asyncio" and me["has_control_token"]
    data_dir = wf.root / "data" / "deployments" / f"default.{NAME}" / "data"
    assert me["data_dir"] == str(data_dir)
    assert oct(data_dir.stat().st_mode & 0o777) == "0o700"
    # The platform built a wheel of itself into its wheelhouse, and the app's env installed it from there.
    wheels = list((wf.root / "data" / "wheelhouse").glob("*/mcp_agent_cloud-*.whl"))
    assert len(wheels) == 1
    build_log = (wf.root / "data" / "deployments" / f"default.{NAME}" / "v1" / "build.log").read_text()
    assert f"uses the MCPApp runtime: installing mcp-agent-cloud (runtime wheel {wheels[0].parent.name}" in build_log
    # The control token is in the instance's environment and the platform's memory only: no file of the
    # platform's data dir (registry, logs, events) holds it.
    environ = dict(kv.split("=", 1) for kv in
                   open(f"/proc/{me['pid']}/environ", "rb").read().decode().split("\0") if "=" in kv)
    token = environ["MCPAC_CONTROL_TOKEN"].encode()
    assert len(token) >= 32 and environ["MCPAC_EXECUTOR"] == "asyncio" and "MCPAC_SUSPENDED" not in environ
    assert json.loads(environ["MCPAC_EXECUTOR_CONFIG"]) is not None
    files = [f for f in (wf.root / "data").rglob("*") if f.is_file()]
    assert files and not [f for f in files if token in f.read_bytes()]
    assert mcp(wf, "add", {"a": 2, "b": 3}) == 5


def test_gateway_runs_human_in_the_loop_and_retries(wf):
    ids = scenarios.check_gateway_runs(wf)
    # The app process retries the step itself: the run's history has each failed attempt and the backoff before the
    # next one (0.2 s, then 0.4 s: exponential), and the attempts really were that far apart.
    history = mcp(wf, "workflows-get_status", {"run_id": ids["run_id"], "include_history": True})["history"]
    retries = [h for h in history if h["kind"] == "step_retry"]
    assert [(h["step"], h["attempt"], h["retry_in"]) for h in retries] == [
        ("main.flaky_charge", 1, 0.2), ("main.flaky_charge", 2, 0.4)], history
    assert "payment service unavailable (attempt 2)" in retries[1]["error"]
    step = next(h for h in history if h["kind"] == "step")
    assert step["attempt"] == 3
    assert retries[1]["ts"] - retries[0]["ts"] >= 0.2 and step["ts"] - retries[1]["ts"] >= 0.4


def test_gateway_bad_input_is_a_clear_tool_error(wf):
    scenarios.check_gateway_bad_input(wf)


def test_cli_drives_runs(wf):
    scenarios.check_cli(wf)


def test_rest_routes_and_org_isolation(wf):
    scenarios.check_rest(wf)


def test_suspend_refuses_new_runs_and_survives_a_restart(wf):
    scenarios.check_suspend(wf)


def test_killed_app_is_restarted_and_its_run_reported_interrupted(wf):
    before = api_ok(wf, "GET", f"/api/v1/deployments/{NAME}")["restarts"]
    run_id = mcp(wf, "workflows-run", {"workflow_name": "Slow",
                                       "run_parameters": {"ticks": 5000, "interval": 0.05}})["run_id"]
    assert run_id.startswith("run_") and len(run_id) == 36  # the asyncio executor's own run ids
    wait_for(lambda: status(wf, run_id)["state"].get("tick", 0) >= 2, what="Slow to tick")
    pid = mcp(wf, "whoami")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: api_ok(wf, "GET", f"/api/v1/deployments/{NAME}")["restarts"] > before
             and api_ok(wf, "GET", f"/api/v1/deployments/{NAME}")["status"] == "running",
             timeout=120, what="the supervisor to restart the app")
    assert mcp(wf, "whoami")["pid"] != pid
    run = status(wf, run_id)
    assert run["status"] == "interrupted" and run["running"] is False, run
    assert "not durable" in run["error"]
    # Through the REST routes and the CLI too (the platform's run index survived the restart of the app).
    assert api_ok(wf, "GET", f"/api/v1/runs/{run_id}")["status"] == "interrupted"
    r = wf.cli("workflows", "status", run_id)
    assert r.returncode == 1 and "interrupted" in r.stdout
    r = wf.cli("workflows", "resume", run_id, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["error"] == "conflict"
    # New runs work in the new process.
    started = mcp(wf, "double", {"n": 4})
    assert wait_status(wf, started["run_id"], FINAL)["result"] == 8
