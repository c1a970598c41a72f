"""An app built with the real lastmile-ai mcp-agent framework (PyPI mcp-agent 0.2.6, on mcp 1.x), deployed on the
process builder through the real platform, driven through the gateway with our mcp 2.x SDK client.

The framework serves its own workflow tools (workflows-list, workflows-<Name>-run, workflows-get_status,
workflows-resume, workflows-cancel, ...); the launcher serves the app with the framework's create_mcp_server_for_app
inside ``async with app.run()``. The gateway passes the tool calls through unchanged, so what these tests see is the
framework's behaviour, including the limitation of its asyncio executor that docs/workflows.md describes: a resume or
cancel reaches every run waiting on that signal, not only the run named.

The app's venv (mcp-agent and ~100 dependencies, about 40 s of pip) is built once per machine: the platform of this
module keeps its envs in a cache outside the test's tmp dir (see ``envs_cache``), keyed by requirements like any
process-builder env, so later runs (and CI on the same machine) reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import anyio
import pytest

from tests.conftest import ROOT, PlatformProcess

# A fresh env is ~100 packages from PyPI; its build counts against the first test's timeout.
pytestmark = [pytest.mark.e2e, pytest.mark.network, pytest.mark.timeout(900)]

APP = ROOT / "tests" / "apps" / "mcp_agent_app"
NAME = "approvals"


def envs_cache() -> Path:
    """A per-machine cache of process-builder envs: MCPAC_TEST_ENVS_CACHE, else ~/.cache/mcp-agent-cloud/test-envs.

    A venv is tied to the interpreter that made it, which the env key (requirements only) does not cover: the
    directory is per interpreter. The builder's file lock and completion marker make sharing it between concurrent
    test runs safe, and a half-built env is rebuilt.
    """
    base = Path(os.environ.get("MCPAC_TEST_ENVS_CACHE") or Path.home() / ".cache" / "mcp-agent-cloud" / "test-envs")
    interpreter = hashlib.sha256(f"{sys.base_prefix}|{sys.version}".encode()).hexdigest()[:12]
    path = base.expanduser() / f"py{sys.version_info.major}{sys.version_info.minor}-{interpreter}"
    path.mkdir(parents=True, exist_ok=True)
    return path


class Deployed:
    def __init__(self, platform: PlatformProcess, endpoint: str, deploy_seconds: float) -> None:
        self.platform = platform
        self.endpoint = endpoint
        self.deploy_seconds = deploy_seconds

    async def call(self, tool: str, arguments: dict) -> object:
        """One tool call through the gateway; returns the JSON the framework's tool answered."""
        from mcp_agent_cloud.client import mcp_client

        async with mcp_client(self.endpoint, self.platform.token, read_timeout=60.0) as client:
            result = await client.call_tool(tool, arguments)
        text = "".join(getattr(c, "text", "") for c in result.content)
        assert not result.is_error, f"{tool} {arguments} failed: {text}"
        # The framework's FastMCP (mcp 1.x) sends a returned list as one text block per item; its structured
        # content holds the whole value, wrapped as {"result": ...} for lists, bools and dict annotations.
        data = result.structured_content
        assert data is not None, f"{tool} returned no structured content through the gateway: {result}"
        return data["result"] if list(data) == ["result"] else data

    async def wait_status(self, run_id: str, status: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        last: dict = {}
        while time.monotonic() < deadline:
            last = await self.call("workflows-get_status", {"run_id": run_id})
            if last["status"] == status:
                return last
            await anyio.sleep(0.2)
        raise AssertionError(f"run {run_id} not {status} after {timeout}s: {last}")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Deployed:
    platform = PlatformProcess(tmp_path_factory.mktemp("mcpagentfw"), envs_cache())
    platform.start()
    try:
        started = time.monotonic()
        result = platform.cli_json("deploy", "app", str(APP), "--name", NAME, timeout=900)
        seconds = time.monotonic() - started
        assert result["status"] == "running", result
        # Shown with -s or -rA: how long the deploy took (a fresh env is ~40 s of pip; a cached one, seconds).
        print(f"\nmcp-agent app deployed in {seconds:.1f}s", file=sys.stderr)
        yield Deployed(platform, result["endpoint"], seconds)
    finally:
        platform.stop()


def test_workflow_waits_for_human_input_and_finishes_with_it(deployed: Deployed) -> None:
    async def main() -> None:
        from mcp_agent_cloud.client import mcp_client

        async with mcp_client(deployed.endpoint, deployed.platform.token) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
        for name in ("workflows-list", "workflows-runs-list", "workflows-run", "workflows-get_status",
                     "workflows-resume", "workflows-cancel", "workflows-Approval-run", "workflows-ScopedApproval-run"):
            assert name in tools, sorted(tools)
        # The framework's run tool takes the run() arguments in one `run_parameters` object.
        assert "run_parameters" in tools["workflows-Approval-run"].input_schema["properties"]

        listed = await deployed.call("workflows-list", {})
        approval = listed["Approval"]
        assert approval["tool_endpoints"] == ["workflows-Approval-run"]
        assert approval["description"].startswith("Ask a human to approve a request")
        schema = approval["run_parameters"]
        assert schema["required"] == ["request"]
        assert schema["properties"]["amount"]["type"] == "integer"

        started = await deployed.call("workflows-Approval-run",
                                      {"run_parameters": {"request": "laptop", "amount": 1200}})
        run_id = started["run_id"]
        assert started["execution_id"] == run_id and started["workflow_id"] == "Approval"

        waiting = await deployed.call("workflows-get_status", {"run_id": run_id})
        assert waiting["status"] == "running" and waiting["name"] == "Approval", waiting
        await anyio.sleep(0.5)  # still waiting: nothing but the resume below ends it
        assert (await deployed.call("workflows-get_status", {"run_id": run_id}))["status"] == "running"

        decision = {"approved": True, "by": "ada", "note": "within budget"}
        resumed = await deployed.call("workflows-resume", {"run_id": run_id, "payload": decision})
        assert resumed is True

        done = await deployed.wait_status(run_id, "completed")
        assert done["running"] is False and done["error"] is None, done
        assert done["result"]["value"] == {"request": "laptop", "amount": 1200, "decision": decision}

        runs = await deployed.call("workflows-runs-list", {})
        assert run_id in [r["run_id"] for r in runs], runs

    anyio.run(main)


def test_resume_reaches_every_run_waiting_on_the_signal(deployed: Deployed) -> None:
    """The framework's asyncio executor (AsyncioSignalHandler.signal) wakes every waiting run on a signal name; the
    run_id the resume names only picks the run it reports on. This pins that behaviour of mcp-agent 0.2.6, which
    docs/workflows.md documents: if a new pin fixes it, this test fails and the docs need updating."""

    async def main() -> None:
        first = await deployed.call("workflows-Approval-run", {"run_parameters": {"request": "first"}})
        second = await deployed.call("workflows-Approval-run", {"run_parameters": {"request": "second"}})
        await deployed.wait_status(second["run_id"], "running")
        await anyio.sleep(0.3)  # both are parked in wait_for_signal
        assert await deployed.call("workflows-resume", {"run_id": first["run_id"], "payload": {"ok": 1}}) is True
        one = await deployed.wait_status(first["run_id"], "completed")
        other = await deployed.wait_status(second["run_id"], "completed")
        assert one["result"]["value"]["decision"] == {"ok": 1}
        assert other["result"]["value"] == {"request": "second", "amount": 0, "decision": {"ok": 1}}

    anyio.run(main)


def test_a_signal_named_after_the_run_reaches_that_run_only(deployed: Deployed) -> None:
    """The workaround docs/workflows.md gives for the limitation above, through the gateway."""

    async def main() -> None:
        first = await deployed.call("workflows-ScopedApproval-run", {"run_parameters": {"request": "a"}})
        second = await deployed.call("workflows-ScopedApproval-run", {"run_parameters": {"request": "b"}})
        await deployed.wait_status(second["run_id"], "running")
        await anyio.sleep(0.3)
        resumed = await deployed.call("workflows-resume", {"run_id": first["run_id"], "payload": {"ok": True},
                                                           "signal_name": f"approve-{first['run_id']}"})
        assert resumed is True
        done = await deployed.wait_status(first["run_id"], "completed")
        assert done["result"]["value"] == {"request": "a", "decision": {"ok": True}}
        await anyio.sleep(0.5)
        assert (await deployed.call("workflows-get_status", {"run_id": second["run_id"]}))["status"] == "running"
        await deployed.call("workflows-resume", {"run_id": second["run_id"], "payload": {"ok": False},
                                                 "signal_name": f"approve-{second['run_id']}"})
        done = await deployed.wait_status(second["run_id"], "completed")
        assert done["result"]["value"] == {"request": "b", "decision": {"ok": False}}

    anyio.run(main)


def test_missing_run_parameter_fails_the_run(deployed: Deployed) -> None:
    """The framework does not validate run_parameters against the schema it lists: the run starts, then fails."""

    async def main() -> None:
        started = await deployed.call("workflows-Approval-run", {"run_parameters": {"amount": 3}})
        failed = await deployed.wait_status(started["run_id"], "error")
        assert "request" in json.dumps(failed), failed

    anyio.run(main)


def test_platform_run_routes_reach_a_framework_run(deployed: Deployed) -> None:
    """The platform's per-run REST routes and CLI find a framework app's run by its id and pass the resume on."""
    platform = deployed.platform
    started = anyio.run(deployed.call, "workflows-Approval-run", {"run_parameters": {"request": "via rest"}})
    run_id = started["run_id"]

    status = platform.api("GET", f"/api/v1/runs/{run_id}")
    assert status.status_code == 200, status.text
    assert status.json()["status"] == "running" and status.json()["deployment"] == NAME

    resumed = platform.api("POST", f"/api/v1/runs/{run_id}/resume", json={"payload": {"approved": "rest"}})
    assert resumed.status_code == 200, resumed.text

    done = anyio.run(deployed.wait_status, run_id, "completed")
    assert done["result"]["value"]["decision"] == {"approved": "rest"}
    shown = platform.cli("workflows", "status", run_id, check=True)
    assert "completed" in shown.stdout and "rest" in shown.stdout

    missing = platform.api("GET", "/api/v1/runs/no-such-run")
    assert missing.status_code == 404, missing.text


def test_platform_workflow_routes_and_cli_speak_the_framework_shapes(deployed: Deployed) -> None:
    """The platform's REST routes and `mcp-agent workflows list/run/runs` on a framework app: its workflows-list is
    an object keyed by workflow name, its workflows-runs-list a plain list (filters are not its arguments) and its
    workflows-run takes a required `kwargs` field (FastMCP 1.x's reading of `**kwargs`). core/platform/workflows.py
    turns these into the platform's shapes."""
    platform = deployed.platform

    listed = platform.api("GET", f"/api/v1/workflows/{NAME}")
    assert listed.status_code == 200, listed.text
    workflows = {w["name"]: w for w in listed.json()["workflows"]}
    assert set(workflows) == {"Approval", "ScopedApproval"}, listed.json()
    approval = workflows["Approval"]
    # The framework's run_parameters schema, under the platform's name for it as well.
    assert approval["input_schema"]["required"] == ["request"] and approval["input_schema"] == approval[
        "run_parameters"]
    assert approval["description"].startswith("Ask a human to approve a request")
    shown = platform.cli("workflows", "list", NAME, check=True).stdout
    assert "ScopedApproval" in shown and "request, amount?" in shown, shown

    started = platform.api("POST", f"/api/v1/workflows/{NAME}/Approval/run",
                           json={"params": {"request": "rest run", "amount": 7}})
    assert started.status_code == 200, started.text
    rest_run = started.json()["run_id"]
    assert started.json()["deployment"] == NAME
    cli_run = platform.cli_json("workflows", "run", NAME, "ScopedApproval", "--param", "request=cli run")["run_id"]

    # Arguments the framework's workflows-run does not take are refused, not dropped.
    own_id = platform.api("POST", f"/api/v1/workflows/{NAME}/Approval/run",
                          json={"params": {"request": "x"}, "workflow_id": "mine"})
    assert own_id.status_code == 400 and "workflow_id" in own_id.json()["message"], own_id.text
    unknown = platform.api("POST", f"/api/v1/workflows/{NAME}/NoSuch/run", json={"params": {}})
    assert unknown.status_code >= 400 and "NoSuch" in unknown.text, unknown.text

    def run_ids(**query) -> list[str]:
        got = platform.api("GET", "/api/v1/runs", params=query)
        assert got.status_code == 200, got.text
        return [r["run_id"] for r in got.json()["runs"]]

    deadline = time.monotonic() + 30
    while not {rest_run, cli_run} <= set(run_ids(deployment=NAME, status="running")):
        assert time.monotonic() < deadline, run_ids(deployment=NAME)
        time.sleep(0.2)
    runs = platform.api("GET", "/api/v1/runs", params={"deployment": NAME}).json()["runs"]
    mine = next(r for r in runs if r["run_id"] == rest_run)
    assert mine["name"] == "Approval" and mine["deployment"] == NAME, mine
    # The framework's tool takes no filters: the platform applies them.
    assert rest_run not in run_ids(deployment=NAME, workflow="ScopedApproval")
    assert cli_run in run_ids(deployment=NAME, workflow="ScopedApproval")
    assert rest_run not in run_ids(deployment=NAME, status="completed")
    assert {rest_run, cli_run} <= set(run_ids())  # every serving app of the org
    table = platform.cli("workflows", "runs", NAME, check=True).stdout
    assert rest_run in table and cli_run in table, table

    # The framework has no workflows-pause: a 404 that says so.
    paused = platform.api("POST", f"/api/v1/runs/{rest_run}/pause")
    assert paused.status_code == 404 and "lastmile-ai mcp-agent" in paused.json()["hint"], paused.text

    # The framework's resume answers a bare `true`; the platform answers the run's status, as for its own apps.
    resumed = platform.api("POST", f"/api/v1/runs/{rest_run}/resume", json={"payload": {"ok": "rest"}})
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["run_id"] == rest_run and resumed.json()["deployment"] == NAME, resumed.json()
    said = platform.cli("workflows", "resume", cli_run, "--signal", f"approve-{cli_run}", "--payload",
                        '{"ok": "cli"}', check=True).stdout
    assert f"resume: {cli_run} -> " in said, said
    assert anyio.run(deployed.wait_status, rest_run, "completed")["result"]["value"]["decision"] == {"ok": "rest"}
    assert anyio.run(deployed.wait_status, cli_run, "completed")["result"]["value"] == {
        "request": "cli run", "decision": {"ok": "cli"}}
    assert rest_run in run_ids(deployment=NAME, status="completed")


def test_cancel_reaches_every_waiting_run(deployed: Deployed) -> None:
    """Cancelling one run cancels every run of the app in flight, of any workflow: each run of the framework's
    asyncio executor watches for the one `cancel` signal name. Pinned like the resume test above; it runs last in
    this module because it ends the runs the others might leave."""

    async def main() -> None:
        named = await deployed.call("workflows-Approval-run", {"run_parameters": {"request": "cancel me"}})
        bystander = await deployed.call("workflows-ScopedApproval-run", {"run_parameters": {"request": "keep me"}})
        await deployed.wait_status(bystander["run_id"], "running")
        await anyio.sleep(0.3)
        assert await deployed.call("workflows-cancel", {"run_id": named["run_id"]}) is True
        await deployed.wait_status(named["run_id"], "cancelled")
        await deployed.wait_status(bystander["run_id"], "cancelled")

    anyio.run(main)


def test_an_app_that_fails_to_start_says_why(deployed: Deployed, tmp_path: Path) -> None:
    """execution_engine: temporal without the framework's temporal extra fails in app.run(): the deploy fails and the
    reason reaches the user. Same requirements as the app above, so the cached env is reused."""
    broken = tmp_path / "broken"
    shutil.copytree(APP, broken)
    config = broken / "mcp_agent.config.yaml"
    temporal = "execution_engine: temporal\ntemporal: {host: '127.0.0.1:1', task_queue: q}"
    config.write_text(config.read_text().replace("execution_engine: asyncio", temporal))
    result = deployed.platform.cli("deploy", "app", str(broken), "--name", "broken-approvals", "--json")
    assert result.returncode != 0, result.stdout
    logs = deployed.platform.cli("logs", "broken-approvals").stdout
    said = result.stdout + result.stderr + logs
    assert "failed to start (in MCPApp.run())" in said and "temporalio" in said, said
