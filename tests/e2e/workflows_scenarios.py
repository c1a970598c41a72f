"""The executor-independent workflow scenarios of the e2e tests, run on asyncio (test_workflows_asyncio.py) and on
Temporal (test_workflows_platform_temporal.py) against a platform with tests/apps/workflows_app deployed.

Each ``check_*`` function drives the deployment ``p.app`` of the PlatformProcess ``p`` (``p.deployed``: the deploy
result) one way: the mcp SDK client through the gateway, the real CLI, or the REST routes. Together they cover run,
status, pause, resume with a payload, cancel and the results, the step that fails twice and is retried, the async
tool, the schedule, batch by filter, the rate limit, bad input, org isolation, the suspension of the app instance
and the CLI's --watch. Nothing here depends on the executor: both must behave the same to the user.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time

import anyio

from tests.conftest import CLI, wait_for

FINAL = {"completed", "error", "cancelled", "interrupted"}


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


def rest_run(p, run_id: str) -> dict:
    return api_ok(p, "GET", f"/api/v1/runs/{run_id}")


def cli_watching(p, *args: str):
    """Start `mcp-agent ARGS` (a --watch command) in the background; returns the process and a function that waits
    for its next stdout line (None at its end)."""
    proc = subprocess.Popen([CLI, *args], env=p.env, cwd=p.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()

    def next_line(timeout: float = 60) -> str | None:
        try:
            return lines.get(timeout=timeout)
        except queue.Empty:
            proc.kill()
            raise AssertionError(f"mcp-agent {' '.join(args)} printed nothing for {timeout} s") from None

    return proc, next_line


def interrupt(proc: subprocess.Popen) -> int:
    """Ctrl-C a --watch command that refreshes until interrupted; its exit code."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()


def unknown_run_id(p) -> str:
    """A run id of the executor's own form that names no run (asyncio: run_<hex>; Temporal: a UUID)."""
    return "run_" + "f" * 32 if p.executor == "asyncio" else "ffffffff-ffff-4fff-bfff-ffffffffffff"


# -- scenarios ----------------------------------------------------------------------------------------------------


def check_gateway_runs(p) -> dict:
    """workflows-list's schemas; a run waiting for a human, resumed with a payload, through a step retried twice;
    pause, resume and cancel of a ticking run; an async tool; all through the gateway with the mcp SDK client.
    Returns the ids of the human-in-the-loop run (its step's retries are the executor's: the caller looks)."""
    listed = mcp(p, "workflows-list")["workflows"]
    approve = next(w for w in listed if w["name"] == "Approve")
    assert set(approve["input_schema"]["properties"]) == {"amount", "reason"}
    assert approve["input_schema"].get("required") == ["amount"]
    assert approve["run_tool"] == "workflows-Approve-run"
    assert next(w for w in listed if w["name"] == "Heartbeat")["schedules"]

    ids = mcp(p, "workflows-Approve-run", {"run_parameters": {"amount": 5, "reason": "gateway"}})
    assert ids["execution_id"] == ids["run_id"] and ids["workflow_id"].startswith("Approve-")
    run_id = ids["run_id"]
    paused = wait_status(p, run_id, {"paused"})
    assert paused["waiting_for"] == "approve" and paused["state"] == {"stage": "waiting for approval"}
    assert paused["params"] == {"amount": 5, "reason": "gateway"} and paused["running"] is True
    assert paused["id"] == run_id and paused["workflow_id"] == ids["workflow_id"] and paused["name"] == "Approve"
    # By workflow id too.
    assert mcp(p, "workflows-get_status", {"workflow_id": ids["workflow_id"]})["run_id"] == run_id
    # The paused run is listed with what it waits for.
    page = mcp(p, "workflows-runs-list", {"status": "paused"})["runs"]
    assert [r["waiting_for"] for r in page if r["run_id"] == run_id] == ["approve"]

    mcp(p, "workflows-resume", {"run_id": run_id, "signal_name": "approve", "payload": {"ok": True, "by": "mcp"}})
    done = wait_status(p, run_id, FINAL, timeout=90)
    assert done["status"] == "completed" and done["running"] is False and done["error"] is None, done
    # The step failed twice and the retry policy carried it through on the third attempt.
    assert done["result"] == {"amount": 5, "reason": "gateway", "decision": {"ok": True, "by": "mcp"},
                              "receipt": "charged 5 after 3 attempts"}
    assert done["state"] == {"stage": "done"}

    # pause holds a run at its next pause point; resume lifts it; cancel ends it.
    slow = mcp(p, "workflows-run", {"workflow_name": "Slow", "run_parameters": {"ticks": 2000, "interval": 0.05}})
    wait_for(lambda: status(p, slow["run_id"])["state"].get("tick", 0) >= 2, what="Slow to tick")
    mcp(p, "workflows-pause", {"run_id": slow["run_id"]})
    held = wait_status(p, slow["run_id"], {"paused"})
    assert held["waiting_for"] == "resume"
    tick = held["state"]["tick"]
    time.sleep(1.0)
    assert status(p, slow["run_id"])["state"]["tick"] <= tick + 1  # at most the tick that was under way
    mcp(p, "workflows-resume", {"run_id": slow["run_id"]})
    wait_for(lambda: status(p, slow["run_id"])["state"]["tick"] > tick + 2, what="Slow to tick again")
    cancelled = mcp(p, "workflows-cancel", {"run_id": slow["run_id"]})
    assert cancelled["run_id"] == slow["run_id"]
    final = wait_status(p, slow["run_id"], FINAL)
    assert final["status"] == "cancelled" and final["running"] is False and final["result"] is None, final

    # An async tool starts a run of its function and returns the ids.
    started = mcp(p, "double", {"n": 21})
    assert wait_status(p, started["run_id"], FINAL)["result"] == 42

    # workflows-runs-list pages with next_page_token: every run once (the schedule adds runs meanwhile).
    assert len(mcp(p, "workflows-runs-list", {"limit": 1})["runs"]) == 1
    seen: list[str] = []
    token = None
    for _ in range(100):
        page = mcp(p, "workflows-runs-list", {"page_size": 2, **({"next_page_token": token} if token else {})})
        assert 0 < len(page["runs"]) <= 2 or not page["next_page_token"], page
        seen += [r["run_id"] for r in page["runs"]]
        if not (token := page["next_page_token"]):
            break
    assert len(seen) == len(set(seen)), seen
    assert {run_id, slow["run_id"], started["run_id"]} <= set(seen)
    assert mcp(p, "workflows-runs-list", {"workflow_name": "Slow"})["runs"][0]["run_id"] == slow["run_id"]
    return ids


def check_gateway_bad_input(p) -> None:
    """An unknown workflow, invalid parameters (the error names the field), an unknown run, and resume, pause or
    cancel of a finished run: each a tool error with our error JSON."""
    unknown = mcp(p, "workflows-run", {"workflow_name": "Nope", "run_parameters": {}}, error=True)
    assert unknown["error"] == "not_found" and "Nope" in unknown["message"] and "Approve" in unknown["message"]
    invalid = mcp(p, "workflows-run", {"workflow_name": "Approve", "run_parameters": {"amount": "lots"}},
                  error=True)
    assert invalid["error"] == "invalid_request" and "amount" in invalid["message"], invalid
    missing = mcp(p, "workflows-get_status", {"run_id": unknown_run_id(p)}, error=True)
    assert missing["error"] == "not_found"
    assert mcp(p, "workflows-cancel", {"run_id": unknown_run_id(p)}, error=True)["error"] == "not_found"
    finished = mcp(p, "double", {"n": 1})["run_id"]
    assert wait_status(p, finished, FINAL)["status"] == "completed"
    for tool in ("workflows-resume", "workflows-pause", "workflows-cancel"):
        body = mcp(p, tool, {"run_id": finished}, error=True)
        assert body["error"] == "conflict" and "completed" in body["message"], (tool, body)


def check_cli(p) -> None:
    """`mcp-agent workflows ...`: list, run, status, runs --status paused, resume with a payload, errors, pause,
    resume and cancel of a ticking run, batch, --watch."""
    name = p.app
    listed = p.cli_json("workflows", "list", name)
    assert {"Approve", "Slow", "Heartbeat", "double"} <= {w["name"] for w in listed["workflows"]}
    human = p.cli("workflows", "list", name, check=True).stdout
    assert "Approve" in human and "amount" in human and "reason?" in human

    started = p.cli_json("workflows", "run", name, "Approve", "--param", "amount=7", "--param", "reason=cli")
    run_id = started["run_id"]
    wait_for(lambda: p.cli_json("workflows", "status", run_id)["status"] == "paused", what="paused")
    shown = p.cli_json("workflows", "status", run_id)
    assert shown["waiting_for"] == "approve" and shown["deployment"] == name
    paused = p.cli_json("workflows", "runs", name, "--status", "paused")["runs"]
    assert run_id in [r["run_id"] for r in paused]
    table = p.cli("workflows", "runs", name, "--status", "paused", check=True).stdout
    assert run_id in table and "waiting for approve" in table
    # Without a deployment: every serving app of the org.
    assert run_id in [r["run_id"] for r in p.cli_json("workflows", "runs")["runs"]]

    done = p.cli_json("workflows", "resume", run_id, "--signal", "approve", "--payload", '{"by": "cli"}',
                      "--watch", timeout=180)
    assert done["status"] == "completed", done
    assert done["result"] == {"amount": 7, "reason": "cli", "decision": {"by": "cli"},
                              "receipt": "charged 7 after 3 attempts"}
    text = p.cli("workflows", "status", run_id, "--history", check=True).stdout
    assert "completed" in text and "charged 7 after 3 attempts" in text

    # Errors: exit 1 with the platform's message and a hint.
    r = p.cli("workflows", "run", name, "Nope")
    assert r.returncode == 1 and "unknown workflow 'Nope'" in r.stderr and "hint" in r.stderr
    r = p.cli("workflows", "run", name, "Approve", "--param", "amount=lots")
    assert r.returncode == 1 and "amount" in r.stderr, r.stderr
    r = p.cli("workflows", "resume", run_id, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["error"] == "conflict", r.stdout
    missing = unknown_run_id(p)
    r = p.cli("workflows", "cancel", missing)
    assert r.returncode == 1 and f"no run {missing}" in r.stderr, r.stderr

    # pause, resume and cancel a ticking run.
    slow = p.cli_json("workflows", "run", name, "Slow", "--param", "ticks=2000", "--param", "interval=0.05")["run_id"]
    wait_for(lambda: p.cli_json("workflows", "status", slow)["state"].get("tick", 0) >= 1, what="Slow to tick")
    assert "pause: " + slow in p.cli("workflows", "pause", slow, check=True).stdout
    wait_for(lambda: p.cli_json("workflows", "status", slow)["waiting_for"] == "resume", what="paused")
    assert p.cli_json("workflows", "resume", slow)["run_id"] == slow
    wait_for(lambda: p.cli_json("workflows", "status", slow)["status"] == "running", what="running again")
    assert p.cli_json("workflows", "cancel", slow)["status"] == "cancelled"

    # batch: start two runs from a file of parameters, then cancel both by id.
    params = p.root / f"batch-{p.executor}.json"
    params.write_text(json.dumps([{"ticks": 1000}, {"ticks": 1000}]))
    started = p.cli_json("workflows", "batch", name, "run", "--workflow", "Slow", "--params-file", str(params))
    ids = [row["run_id"] for row in started["results"] if row["ok"]]
    assert len(ids) == 2
    cancelled = p.cli("workflows", "batch", name, "cancel", "--run-id", ids[0], "--run-id", ids[1], check=True)
    assert ids[0] in cancelled.stdout and ids[1] in cancelled.stdout
    assert {p.cli_json("workflows", "status", i)["status"] for i in ids} == {"cancelled"}

    # --watch follows a run to its end, printing each change.
    watched = p.cli("workflows", "run", name, "Slow", "--param", "ticks=3", "--param", "interval=0.2", "--watch",
                    check=True).stdout
    assert "running" in watched and "completed" in watched
    check_cli_watch(p)


def check_cli_watch(p) -> None:
    """--watch of status, pause, cancel, runs and list: the run commands follow a run to its end; runs and list
    refresh until Ctrl-C (with --json: one JSON document per line, each time the data changes)."""
    name = p.app
    # status --watch prints each change until the run ends.
    short = p.cli_json("workflows", "run", name, "Slow", "--param", "ticks=4", "--param", "interval=0.3")["run_id"]
    watched = p.cli("workflows", "status", short, "--watch", check=True, timeout=120).stdout
    assert "state=" in watched and "completed" in watched, watched
    assert watched.count(short) >= 2, watched  # a line per change, then the final status

    # pause --watch holds the run and follows it; a resume from elsewhere lets it finish, and the command with it.
    slow = p.cli_json("workflows", "run", name, "Slow", "--param", "ticks=60", "--param", "interval=0.05")["run_id"]
    wait_for(lambda: p.cli_json("workflows", "status", slow)["state"].get("tick", 0) >= 1, what="Slow to tick")
    proc, next_line = cli_watching(p, "workflows", "pause", slow, "--watch", "--json")
    wait_for(lambda: p.cli_json("workflows", "status", slow)["status"] == "paused", what="paused")
    time.sleep(1)
    assert proc.poll() is None  # still following the paused run
    p.cli_json("workflows", "resume", slow)
    out = "".join(iter(lambda: next_line(120), None))
    assert proc.wait(30) == 0, proc.stderr.read()
    final = json.loads(out)
    assert final["status"] == "completed" and final["result"] == {"ticks": 60}, final

    # runs --watch --json: a line each time the list changes (here: the ticking run's state).
    ticking = p.cli_json("workflows", "run", name, "Slow", "--param", "ticks=2000", "--param",
                         "interval=0.05")["run_id"]
    wait_for(lambda: any(r["run_id"] == ticking and r["state"].get("tick", 0) >= 1
                         for r in p.cli_json("workflows", "runs", name, "--workflow", "Slow", "--status",
                                             "running")["runs"]), what="the ticking run to be listed")
    proc, next_line = cli_watching(p, "workflows", "runs", name, "--workflow", "Slow", "--status", "running",
                                   "--watch", "--json")
    pages = [json.loads(next_line()) for _ in range(2)]
    assert interrupt(proc) == 0
    ticks = [next(r for r in page["runs"] if r["run_id"] == ticking)["state"].get("tick", 0) for page in pages]
    assert ticks[1] > ticks[0], pages
    # cancel --watch: the run ends at once, so the command does too.
    assert p.cli_json("workflows", "cancel", ticking, "--watch")["status"] == "cancelled"

    # list --watch: the table again every 2 s until Ctrl-C; with --json only when it changes (it does not here).
    proc, next_line = cli_watching(p, "workflows", "list", name, "--watch")
    table: list[str] = []
    while sum("Approve" in line for line in table) < 2:
        line = next_line()
        assert line is not None, table
        table.append(line)
    assert interrupt(proc) == 0
    proc, next_line = cli_watching(p, "workflows", "list", name, "--watch", "--json")
    first = json.loads(next_line())
    assert "Approve" in [w["name"] for w in first["workflows"]]
    time.sleep(4.5)  # two more refreshes, no change
    assert interrupt(proc) == 0
    assert next_line(5) is None  # nothing more was printed


def check_rest(p) -> None:
    """The REST routes: run, status, pause, resume (with a payload), stop by workflow id, the run list filtered by
    status, history, errors as HTTP statuses, batch, the OpenAPI document, org isolation and the schedule."""
    name = p.app
    flows = api_ok(p, "GET", f"/api/v1/workflows/{name}")["workflows"]
    assert "Slow" in [w["name"] for w in flows]

    # Human in the loop: resume with a payload through the route of the workflow.
    approve = api_ok(p, "POST", f"/api/v1/workflows/{name}/Approve/run", json={"params": {"amount": 9}})
    wait_for(lambda: rest_run(p, approve["run_id"])["waiting_for"] == "approve", what="Approve to wait")
    api_ok(p, "POST", f"/api/v1/workflows/{name}/Approve/resume",
           json={"run_id": approve["run_id"], "signal": "approve", "payload": {"by": "rest"}})
    done = wait_for(lambda: (s := rest_run(p, approve["run_id"]))["status"] in FINAL and s, timeout=90,
                    what="Approve to finish")
    assert done["status"] == "completed", done
    assert done["result"] == {"amount": 9, "reason": "", "decision": {"by": "rest"},
                              "receipt": "charged 9 after 3 attempts"}

    workflow_id = f"slow-rest-{p.executor}"
    started = api_ok(p, "POST", f"/api/v1/workflows/{name}/Slow/run",
                     json={"params": {"ticks": 2000, "interval": 0.05}, "workflow_id": workflow_id})
    run_id = started["run_id"]
    assert started["workflow_id"] == workflow_id
    wait_for(lambda: rest_run(p, run_id)["state"].get("tick", 0) >= 1, what="ticks")
    api_ok(p, "POST", f"/api/v1/workflows/{name}/Slow/pause", json={"run_id": run_id})
    wait_for(lambda: rest_run(p, run_id)["status"] == "paused", what="paused")
    listed = api_ok(p, "GET", "/api/v1/runs", params={"deployment": name, "status": "paused"})["runs"]
    assert [r["run_id"] for r in listed if r["name"] == "Slow"] == [run_id]
    assert {r["status"] for r in listed} == {"paused"}
    assert next(r for r in listed if r["run_id"] == run_id)["waiting_for"] == "resume"
    api_ok(p, "POST", f"/api/v1/runs/{run_id}/resume", json={})
    wait_for(lambda: rest_run(p, run_id)["status"] == "running", what="running again")
    # By workflow id: the latest run of it.
    api_ok(p, "POST", f"/api/v1/workflows/{name}/Slow/stop", json={"workflow_id": workflow_id})
    wait_for(lambda: rest_run(p, run_id)["status"] == "cancelled", what="cancelled")
    history = api_ok(p, "GET", f"/api/v1/runs/{run_id}", params={"history": "1"})["history"]
    assert history and all("ts" in h and "kind" in h for h in history)
    assert run_id in [r["run_id"] for r in
                      api_ok(p, "GET", "/api/v1/runs", params={"deployment": name, "status": "cancelled"})["runs"]]

    # Errors: the app's error class comes back as the HTTP status.
    r = p.api("POST", f"/api/v1/workflows/{name}/Nope/run", json={"params": {}})
    assert r.status_code == 404 and "Nope" in r.json()["message"]
    r = p.api("POST", f"/api/v1/workflows/{name}/Approve/run", json={"params": {"amount": [1]}})
    assert r.status_code == 400 and "amount" in r.json()["message"]
    r = p.api("POST", f"/api/v1/workflows/{name}/Approve/run", json={"parameters": {}})
    assert r.status_code == 400 and "parameters" in r.json()["message"]
    r = p.api("POST", f"/api/v1/runs/{run_id}/resume", json={})
    assert r.status_code == 409 and r.json()["error"] == "conflict"
    r = p.api("POST", f"/api/v1/runs/{unknown_run_id(p)}/cancel", json={})
    assert r.status_code == 404 and "hint" in r.json()
    r = p.api("GET", f"/api/v1/runs/{run_id}", token=None)
    assert r.status_code == 401

    # Batch: two runs at once; then pause, resume and cancel them by a filter (workflow and status), not by id.
    batch = api_ok(p, "POST", f"/api/v1/workflows/{name}/batch",
                   json={"action": "run", "workflow_name": "Slow", "runs": [{"ticks": 1000}, {"ticks": 1000}]})
    ids = [row["run_id"] for row in batch["results"]]
    assert len(ids) == 2 and all(row["ok"] for row in batch["results"])

    def slow_runs(st: str) -> set[str]:
        return {r["run_id"] for r in api_ok(p, "GET", "/api/v1/runs",
                                            params={"deployment": name, "workflow": "Slow", "status": st})["runs"]}

    def by_filter(action: str, **selector) -> list[dict]:
        rows = api_ok(p, "POST", f"/api/v1/workflows/{name}/batch", json={"action": action, **selector})["results"]
        assert set(ids) <= {r["run_id"] for r in rows} and all(r["ok"] for r in rows), rows
        return rows

    wait_for(lambda: set(ids) <= slow_runs("running"), what="the batch's runs to be listed")
    by_filter("pause", workflow_name="Slow", status="running")
    wait_for(lambda: set(ids) <= slow_runs("paused"), what="the batch's runs to be paused")
    assert {rest_run(p, i)["waiting_for"] for i in ids} == {"resume"}
    by_filter("resume", workflow_name="Slow", status="paused")
    wait_for(lambda: set(ids) <= slow_runs("running"), what="the batch's runs to run again")
    by_filter("cancel", workflow_name="Slow")  # no status: every active run of the workflow
    assert {rest_run(p, i)["status"] for i in ids} == {"cancelled"}

    # The per-workflow rate limit (Limited: 2/minute): the third start within the minute is a 429 saying when to
    # retry; other workflows are not limited.
    for _ in range(2):
        api_ok(p, "POST", f"/api/v1/workflows/{name}/Limited/run", json={})
    r = p.api("POST", f"/api/v1/workflows/{name}/Limited/run", json={})
    assert r.status_code == 429 and r.json()["error"] == "rate_limited", r.text
    assert "rate limited to 2/minute: retry in" in r.json()["message"], r.text
    api_ok(p, "POST", f"/api/v1/workflows/{name}/Slow/run", json={"params": {"ticks": 1, "interval": 0.01}})

    # The routes are in the OpenAPI document, as authenticated operations.
    doc = api_ok(p, "GET", "/api/v1/openapi.json")
    for path, method in (("/api/v1/workflows/{deployment}/{workflow}/run", "post"), ("/api/v1/runs", "get"),
                         ("/api/v1/runs/{run_id}/resume", "post"), ("/api/v1/agents/{deployment}/pause", "post"),
                         ("/api/v1/workflows/{deployment}/batch", "post")):
        assert doc["paths"][path][method]["security"] == [{"bearer": []}], path
    assert "WorkflowRunBody" in doc["components"]["schemas"]

    # Another org sees none of it.
    other = p.cli_json("admin", "token", "--org", "other", "--role", "developer")["token"]
    assert p.api("GET", f"/api/v1/runs/{run_id}", token=other).status_code == 404
    assert p.api("POST", f"/api/v1/runs/{run_id}/cancel", token=other, json={}).status_code == 404
    assert p.api("GET", f"/api/v1/workflows/default.{name}", token=other).status_code == 403
    assert p.api("GET", "/api/v1/runs", token=other).json()["runs"] == []
    viewer = p.cli_json("admin", "token", "--org", "default", "--role", "viewer")["token"]
    assert p.api("GET", f"/api/v1/runs/{run_id}", token=viewer).status_code == 200
    assert p.api("POST", f"/api/v1/workflows/{name}/Slow/run", token=viewer, json={}).status_code == 403

    # The scheduled workflow fires on the platform without anyone starting it.
    beats = wait_for(lambda: [r for r in api_ok(p, "GET", "/api/v1/runs",
                                                params={"deployment": name, "workflow": "Heartbeat"})["runs"]
                              if r["status"] == "completed"], what="a scheduled run", timeout=30)
    assert beats[0]["result"] == {"note": "scheduled"}


def check_suspend(p) -> None:
    """The agents routes: pause (suspend: no new runs) survives a stop and start of the instance; resume lifts it."""
    name = p.app
    suspended = api_ok(p, "POST", f"/api/v1/agents/{name}/pause")
    assert suspended["suspended"] is True and isinstance(suspended["active_runs"], int)
    r = p.api("POST", f"/api/v1/workflows/{name}/Slow/run", json={"params": {"ticks": 1}})
    assert r.status_code == 409 and "suspended" in r.json()["message"], r.text
    assert p.api("POST", f"/api/v1/workflows/{name}/Slow/run", json={}).json()["hint"]
    assert "suspended:" in p.cli("status", name, check=True).stdout
    # A restart of the instance (the agents routes stop and run) keeps the suspension (the platform passes it in the
    # environment).
    assert api_ok(p, "POST", f"/api/v1/agents/{name}/stop")["status"] == "stopped"
    r = p.api("GET", f"/api/v1/workflows/{name}")
    assert r.status_code == 409 and "not running" in r.json()["message"] and "mcp-agent start" in r.json()["hint"]
    assert api_ok(p, "POST", f"/api/v1/agents/{name}/run")["status"] == "running"
    assert p.api("POST", f"/api/v1/workflows/{name}/Slow/run", json={}).status_code == 409
    lifted = api_ok(p, "POST", f"/api/v1/agents/{name}/resume")
    assert lifted["suspended"] is False
    assert api_ok(p, "POST", f"/api/v1/workflows/{name}/Slow/run", json={"params": {"ticks": 1}})["run_id"]
    # The same through the CLI.
    assert p.cli_json("workflows", "suspend", name)["suspended"] is True
    assert p.api("POST", f"/api/v1/workflows/{name}/Slow/run", json={}).status_code == 409
    out = p.cli_json("workflows", "unsuspend", name)
    assert out["suspended"] is False
    run_id = api_ok(p, "POST", f"/api/v1/workflows/{name}/Slow/run",
                    json={"params": {"ticks": 1, "interval": 0.01}})["run_id"]
    done = wait_for(lambda: (s := rest_run(p, run_id))["status"] in FINAL and s, what="Slow to finish")
    assert done["status"] == "completed" and done["result"] == {"ticks": 1}, done
