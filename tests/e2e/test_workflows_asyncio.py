"""End to end: durable workflows of an MCPApp app on the default platform (asyncio executor, process builder).

One platform and one deployment of tests/apps/workflows_app for the module (the app's venv, with the runtime
wheel, comes from the session's shared env cache). Runs are driven three ways: the mcp SDK client through the
gateway, the real CLI, and the REST routes; bad input must give clear errors; a SIGKILLed app process is
restarted by the supervisor and its run in flight is reported as interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import time

import anyio
import pytest

from tests.conftest import ROOT, PlatformProcess, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.network]

APP = ROOT / "tests" / "apps" / "workflows_app"
NAME = "wfapp"
FINAL = {"completed", "error", "cancelled", "interrupted"}


@pytest.fixture(scope="module")
def wf(tmp_path_factory, shared_envs):
    p = PlatformProcess(tmp_path_factory.mktemp("wfplatform"), shared_envs)
    p.start()
    try:
        p.deployed = p.cli_json("deploy", "app", str(APP), "--name", NAME, timeout=900)
        yield p
    finally:
        p.stop()


# -- helpers ------------------------------------------------------------------------------------------------------


async def _call(url: str, token: str, tool: str, arguments: dict):
    from mcp_agent_cloud.client import mcp_client

    async with mcp_client(url, token, read_timeout=60.0) as client:
        return await client.call_tool(tool, arguments)


def mcp(p, tool: str, arguments: dict | None = None, *, error: bool = False):
    """Call a tool through the gateway with the mcp SDK client; the parsed JSON value (or the error body)."""
    result = anyio.run(_call, p.deployed["endpoint"], p.token, tool, arguments or {})
    text = "".join(getattr(c, "text", "") for c in result.content)
    assert result.is_error is error, (tool, arguments, text)
    if error:
        return json.loads(text)
    if isinstance(result.structured_content, dict) and set(result.structured_content) != {"result"}:
        return result.structured_content
    return json.loads(text)


def status(p, run_id: str) -> dict:
    return mcp(p, "workflows-get_status", {"run_id": run_id})


def wait_status(p, run_id: str, want: set[str], timeout: float = 60) -> dict:
    return wait_for(lambda: (s := status(p, run_id))["status"] in want and s, timeout=timeout,
                    what=f"{run_id} to be {'/'.join(sorted(want))}")


def api_ok(p, method: str, path: str, **kw) -> dict:
    r = p.api(method, path, **kw)
    assert r.status_code == 200, (method, path, r.status_code, r.text)
    return r.json()


# -- tests --------------------------------------------------------------------------------------------------------


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


def test_gateway_human_in_the_loop_and_retries(wf):
    listed = mcp(wf, "workflows-list")["workflows"]
    approve = next(w for w in listed if w["name"] == "Approve")
    assert set(approve["input_schema"]["properties"]) == {"amount", "reason"}
    assert approve["input_schema"].get("required") == ["amount"]
    assert next(w for w in listed if w["name"] == "Heartbeat")["schedules"]

    ids = mcp(wf, "workflows-Approve-run", {"run_parameters": {"amount": 5, "reason": "gateway"}})
    assert ids["run_id"].startswith("run_") and ids["execution_id"] == ids["run_id"]
    run_id = ids["run_id"]
    paused = wait_status(wf, run_id, {"paused"})
    assert paused["waiting_for"] == "approve" and paused["state"] == {"stage": "waiting for approval"}
    assert paused["params"] == {"amount": 5, "reason": "gateway"}

    mcp(wf, "workflows-resume", {"run_id": run_id, "signal_name": "approve", "payload": {"ok": True, "by": "mcp"}})
    done = wait_status(wf, run_id, FINAL)
    assert done["status"] == "completed", done
    # The step failed twice and the retry policy carried it through on the third attempt.
    assert done["result"] == {"amount": 5, "reason": "gateway", "decision": {"ok": True, "by": "mcp"},
                              "receipt": "charged 5 after 3 attempts"}

    # pause holds a run at its next pause point; resume lifts it; cancel ends it.
    slow = mcp(wf, "workflows-run", {"workflow_name": "Slow", "run_parameters": {"ticks": 2000, "interval": 0.05}})
    wait_for(lambda: status(wf, slow["run_id"])["state"].get("tick", 0) >= 2, what="Slow to tick")
    mcp(wf, "workflows-pause", {"run_id": slow["run_id"]})
    held = wait_status(wf, slow["run_id"], {"paused"})
    assert held["waiting_for"] == "resume"
    tick = held["state"]["tick"]
    time.sleep(1.0)
    assert status(wf, slow["run_id"])["state"]["tick"] <= tick + 1  # at most the tick that was under way
    mcp(wf, "workflows-resume", {"run_id": slow["run_id"]})
    wait_for(lambda: status(wf, slow["run_id"])["state"]["tick"] > tick + 2, what="Slow to tick again")
    assert mcp(wf, "workflows-cancel", {"run_id": slow["run_id"]})["run_id"] == slow["run_id"]
    assert wait_status(wf, slow["run_id"], FINAL)["status"] == "cancelled"

    # An async tool starts a run of its function and returns the ids.
    started = mcp(wf, "double", {"n": 21})
    assert wait_status(wf, started["run_id"], FINAL)["result"] == 42


def test_gateway_bad_input_is_a_clear_tool_error(wf):
    unknown = mcp(wf, "workflows-run", {"workflow_name": "Nope", "run_parameters": {}}, error=True)
    assert unknown["error"] == "not_found" and "Nope" in unknown["message"] and "Approve" in unknown["message"]
    invalid = mcp(wf, "workflows-run", {"workflow_name": "Approve", "run_parameters": {"amount": "lots"}},
                  error=True)
    assert invalid["error"] == "invalid_request" and "amount" in invalid["message"], invalid
    missing = mcp(wf, "workflows-get_status", {"run_id": "run_" + "0" * 32}, error=True)
    assert missing["error"] == "not_found"


def test_cli_drives_runs(wf):
    listed = wf.cli_json("workflows", "list", NAME)
    assert {"Approve", "Slow", "Heartbeat", "double"} <= {w["name"] for w in listed["workflows"]}
    human = wf.cli("workflows", "list", NAME, check=True).stdout
    assert "Approve" in human and "amount" in human and "reason?" in human

    started = wf.cli_json("workflows", "run", NAME, "Approve", "--param", "amount=7", "--param", "reason=cli")
    run_id = started["run_id"]
    wait_for(lambda: wf.cli_json("workflows", "status", run_id)["status"] == "paused", what="paused")
    shown = wf.cli_json("workflows", "status", run_id)
    assert shown["waiting_for"] == "approve" and shown["deployment"] == NAME
    paused = wf.cli_json("workflows", "runs", NAME, "--status", "paused")["runs"]
    assert run_id in [r["run_id"] for r in paused]
    table = wf.cli("workflows", "runs", NAME, "--status", "paused", check=True).stdout
    assert run_id in table and "waiting for approve" in table
    # Without a deployment: every serving app of the org.
    assert run_id in [r["run_id"] for r in wf.cli_json("workflows", "runs")["runs"]]

    done = wf.cli_json("workflows", "resume", run_id, "--signal", "approve", "--payload", '{"by": "cli"}',
                       "--watch")
    assert done["status"] == "completed" and done["result"]["decision"] == {"by": "cli"}
    text = wf.cli("workflows", "status", run_id, "--history", check=True).stdout
    assert "completed" in text and "charged 7 after 3 attempts" in text

    # Errors: exit 1 with the platform's message and a hint.
    r = wf.cli("workflows", "run", NAME, "Nope")
    assert r.returncode == 1 and "unknown workflow 'Nope'" in r.stderr and "hint" in r.stderr
    r = wf.cli("workflows", "run", NAME, "Approve", "--param", "amount=lots")
    assert r.returncode == 1 and "amount" in r.stderr, r.stderr
    r = wf.cli("workflows", "resume", run_id, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["error"] == "conflict", r.stdout
    r = wf.cli("workflows", "cancel", "run_" + "f" * 32)
    assert r.returncode == 1 and "no run run_fff" in r.stderr, r.stderr

    # pause, resume and cancel a ticking run.
    slow = wf.cli_json("workflows", "run", NAME, "Slow", "--param", "ticks=2000", "--param", "interval=0.05")["run_id"]
    wait_for(lambda: wf.cli_json("workflows", "status", slow)["state"].get("tick", 0) >= 1, what="Slow to tick")
    assert "pause: " + slow in wf.cli("workflows", "pause", slow, check=True).stdout
    wait_for(lambda: wf.cli_json("workflows", "status", slow)["waiting_for"] == "resume", what="paused")
    assert wf.cli_json("workflows", "resume", slow)["run_id"] == slow
    wait_for(lambda: wf.cli_json("workflows", "status", slow)["status"] == "running", what="running again")
    assert wf.cli_json("workflows", "cancel", slow)["status"] == "cancelled"

    # batch: start two runs from a file of parameters, then cancel both by id.
    params = wf.root / "batch.json"
    params.write_text(json.dumps([{"ticks": 1000}, {"ticks": 1000}]))
    started = wf.cli_json("workflows", "batch", NAME, "run", "--workflow", "Slow", "--params-file", str(params))
    ids = [row["run_id"] for row in started["results"] if row["ok"]]
    assert len(ids) == 2
    cancelled = wf.cli("workflows", "batch", NAME, "cancel", "--run-id", ids[0], "--run-id", ids[1], check=True)
    assert ids[0] in cancelled.stdout and ids[1] in cancelled.stdout
    assert {wf.cli_json("workflows", "status", i)["status"] for i in ids} <= {"cancelled"}

    # --watch follows a run to its end, printing each change.
    watched = wf.cli("workflows", "run", NAME, "Slow", "--param", "ticks=3", "--param", "interval=0.2", "--watch",
                     check=True).stdout
    assert "running" in watched and "completed" in watched


def test_rest_routes_and_org_isolation(wf):
    flows = api_ok(wf, "GET", f"/api/v1/workflows/{NAME}")["workflows"]
    assert "Slow" in [w["name"] for w in flows]
    started = api_ok(wf, "POST", f"/api/v1/workflows/{NAME}/Slow/run",
                     json={"params": {"ticks": 2000, "interval": 0.05}, "workflow_id": "slow-rest"})
    run_id = started["run_id"]
    assert started["workflow_id"] == "slow-rest"
    wait_for(lambda: api_ok(wf, "GET", f"/api/v1/runs/{run_id}")["state"].get("tick", 0) >= 1, what="ticks")
    api_ok(wf, "POST", f"/api/v1/workflows/{NAME}/Slow/pause", json={"run_id": run_id})
    wait_for(lambda: api_ok(wf, "GET", f"/api/v1/runs/{run_id}")["status"] == "paused", what="paused")
    listed = api_ok(wf, "GET", "/api/v1/runs", params={"deployment": NAME, "status": "paused"})["runs"]
    assert [r["run_id"] for r in listed if r["name"] == "Slow"] == [run_id]
    assert listed[0]["waiting_for"] == "resume"
    api_ok(wf, "POST", f"/api/v1/runs/{run_id}/resume", json={})
    wait_for(lambda: api_ok(wf, "GET", f"/api/v1/runs/{run_id}")["status"] == "running", what="running again")
    # By workflow id: the latest run of it.
    api_ok(wf, "POST", f"/api/v1/workflows/{NAME}/Slow/stop", json={"workflow_id": "slow-rest"})
    wait_for(lambda: api_ok(wf, "GET", f"/api/v1/runs/{run_id}")["status"] == "cancelled", what="cancelled")
    history = api_ok(wf, "GET", f"/api/v1/runs/{run_id}", params={"history": "1"})["history"]
    assert history and all("ts" in h and "kind" in h for h in history)

    # Errors: the app's error class comes back as the HTTP status.
    r = wf.api("POST", f"/api/v1/workflows/{NAME}/Nope/run", json={"params": {}})
    assert r.status_code == 404 and "Nope" in r.json()["message"]
    r = wf.api("POST", f"/api/v1/workflows/{NAME}/Approve/run", json={"params": {"amount": [1]}})
    assert r.status_code == 400 and "amount" in r.json()["message"]
    r = wf.api("POST", f"/api/v1/workflows/{NAME}/Approve/run", json={"parameters": {}})
    assert r.status_code == 400 and "parameters" in r.json()["message"]
    r = wf.api("POST", f"/api/v1/runs/{run_id}/resume", json={})
    assert r.status_code == 409 and r.json()["error"] == "conflict"
    r = wf.api("POST", f"/api/v1/runs/run_{'a' * 32}/cancel", json={})
    assert r.status_code == 404 and "hint" in r.json()
    r = wf.api("GET", f"/api/v1/runs/{run_id}", token=None)
    assert r.status_code == 401

    # Batch: two runs at once, then cancel both.
    batch = api_ok(wf, "POST", f"/api/v1/workflows/{NAME}/batch",
                   json={"action": "run", "workflow_name": "Slow", "runs": [{"ticks": 1000}, {"ticks": 1000}]})
    ids = [row["run_id"] for row in batch["results"]]
    assert len(ids) == 2 and all(row["ok"] for row in batch["results"])
    cancelled = api_ok(wf, "POST", f"/api/v1/workflows/{NAME}/batch", json={"action": "cancel", "run_ids": ids})
    assert all(row["ok"] for row in cancelled["results"])

    # The routes are in the OpenAPI document, as authenticated operations.
    doc = api_ok(wf, "GET", "/api/v1/openapi.json")
    for path, method in (("/api/v1/workflows/{deployment}/{workflow}/run", "post"), ("/api/v1/runs", "get"),
                         ("/api/v1/runs/{run_id}/resume", "post"), ("/api/v1/agents/{deployment}/pause", "post"),
                         ("/api/v1/workflows/{deployment}/batch", "post")):
        assert doc["paths"][path][method]["security"] == [{"bearer": []}], path
    assert "WorkflowRunBody" in doc["components"]["schemas"]

    # Another org sees none of it.
    other = wf.cli_json("admin", "token", "--org", "other", "--role", "developer")["token"]
    assert wf.api("GET", f"/api/v1/runs/{run_id}", token=other).status_code == 404
    assert wf.api("POST", f"/api/v1/runs/{run_id}/cancel", token=other, json={}).status_code == 404
    assert wf.api("GET", f"/api/v1/workflows/default.{NAME}", token=other).status_code == 403
    assert wf.api("GET", "/api/v1/runs", token=other).json()["runs"] == []
    viewer = wf.cli_json("admin", "token", "--org", "default", "--role", "viewer")["token"]
    assert wf.api("GET", f"/api/v1/runs/{run_id}", token=viewer).status_code == 200
    assert wf.api("POST", f"/api/v1/workflows/{NAME}/Slow/run", token=viewer, json={}).status_code == 403

    # The scheduled workflow fires on the platform without anyone starting it.
    beats = wait_for(lambda: [r for r in api_ok(wf, "GET", "/api/v1/runs",
                                                 params={"deployment": NAME, "workflow": "Heartbeat"})["runs"]
                              if r["status"] == "completed"], what="a scheduled run", timeout=30)
    assert beats[0]["result"] == {"note": "scheduled"}


def test_suspend_refuses_new_runs_and_survives_a_restart(wf):
    suspended = api_ok(wf, "POST", f"/api/v1/agents/{NAME}/pause")
    assert suspended["suspended"] is True and isinstance(suspended["active_runs"], int)
    r = wf.api("POST", f"/api/v1/workflows/{NAME}/Slow/run", json={"params": {"ticks": 1}})
    assert r.status_code == 409 and "suspended" in r.json()["message"], r.text
    assert wf.api("POST", f"/api/v1/workflows/{NAME}/Slow/run", json={}).json()["hint"]
    assert "suspended:" in wf.cli("status", NAME, check=True).stdout
    # A restart of the instance keeps the suspension (the platform passes it in the environment).
    wf.cli("stop", NAME, check=True)
    r = wf.api("GET", f"/api/v1/workflows/{NAME}")
    assert r.status_code == 409 and "not running" in r.json()["message"] and "mcp-agent start" in r.json()["hint"]
    api_ok(wf, "POST", f"/api/v1/agents/{NAME}/run")
    assert wf.api("POST", f"/api/v1/workflows/{NAME}/Slow/run", json={}).status_code == 409
    out = wf.cli_json("workflows", "unsuspend", NAME)
    assert out["suspended"] is False
    assert api_ok(wf, "POST", f"/api/v1/workflows/{NAME}/Slow/run", json={"params": {"ticks": 1}})["run_id"]


def test_killed_app_is_restarted_and_its_run_reported_interrupted(wf):
    before = api_ok(wf, "GET", f"/api/v1/deployments/{NAME}")["restarts"]
    run_id = mcp(wf, "workflows-run", {"workflow_name": "Slow",
                                       "run_parameters": {"ticks": 5000, "interval": 0.05}})["run_id"]
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
