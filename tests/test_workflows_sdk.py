"""MCPApp end to end: the app's ASGI app served by uvicorn on a free port, driven with the real mcp 2.x SDK client.

Covers the workflow tools (mcp-agent names and shapes), input schemas derived from run() signatures, JSON tool
errors naming the bad field, human-in-the-loop signals, pause/cancel, rate limits, batch, the control route
(suspend), the executor built from the MCPAC_* environment, and a restart that reports an in-flight run as
interrupted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from mcp_agent_cloud import MCPApp, RetryPolicy, Schedule, Workflow, current_run
from mcp_agent_cloud.client import mcp_client
from mcp_agent_cloud.errors import UnknownBackendError
from mcp_agent_cloud.plugins.asyncio_executor import INTERRUPTED_ERROR, AsyncioExecutor, AsyncioExecutorConfig
from mcp_agent_cloud.hookspecs.types import PluginContext
from mcp_agent_cloud.runtime.ports import free_port, wait_port
from tests.contracts import async_test

TOKEN = "control-token-for-tests"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("MCPAC_EXECUTOR", "MCPAC_EXECUTOR_CONFIG", "MCPAC_DEPLOYMENT", "MCPAC_APP_DATA_DIR",
                "MCPAC_CONTROL_TOKEN", "MCPAC_SUSPENDED"):
        monkeypatch.delenv(var, raising=False)


def make_app(data_dir: Path, **kwargs: Any) -> MCPApp:
    app = MCPApp(name="demo", description="a demo app", data_dir=data_dir, **kwargs)
    attempts = {"n": 0}

    @app.step(retry=RetryPolicy(max_attempts=3, initial_interval=0.01))
    async def charge(amount: int) -> str:
        attempts["n"] += 1
        if attempts["n"] < 3:
            raise ConnectionError("payment service busy")
        return f"receipt-{amount}"

    @app.workflow
    class Approve(Workflow):
        """Waits for a human's approval, then charges."""

        async def run(self, amount: int, reason: str = "") -> dict:
            self.update_state(stage="waiting", amount=amount)
            decision = await self.wait_for_signal("approve", timeout=60)
            self.update_state(stage="charging")
            receipt = await self.step(charge, amount)
            return {"decision": decision, "receipt": receipt, "reason": reason}

    @app.workflow(name="limited", rate_limit="2/minute", priority=3)
    class Limited(Workflow):
        async def run(self) -> str:
            return "done"

    @app.workflow(schedules=[Schedule(every=3600, params={"n": 1})])
    class Hourly(Workflow):
        async def run(self, n: int) -> int:
            return n

    @app.tool
    def add(a: int, b: int) -> int:
        return a + b

    @app.async_tool(description="Doubles n in the background.")
    async def long_job(n: int, label: str = "x") -> dict:
        run = current_run()
        run.update_state(label=label)
        await run.sleep(0.01)
        return {"double": n * 2, "run_id": run.run_id}

    return app


@contextlib.asynccontextmanager
async def serve(app: MCPApp):
    """The app's ASGI app under a real uvicorn on a free port; yields the base URL. Shutdown runs the lifespan's
    exit (the executor's aclose), as a stop of the app process would."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app.streamable_http_app(), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                raise RuntimeError(f"uvicorn did not start: {task.exception()!r}")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


@contextlib.asynccontextmanager
async def client_for(app: MCPApp):
    async with serve(app) as base, mcp_client(f"{base}/mcp") as client:
        yield Tools(client)


class Tools:
    def __init__(self, client) -> None:
        self.client = client

    async def raw(self, tool: str, args: dict[str, Any] | None = None) -> tuple[bool, Any]:
        result = await self.client.call_tool(tool, args or {})
        text = "".join(getattr(c, "text", "") for c in result.content)
        return bool(result.is_error), json.loads(text)

    async def ok(self, tool: str, args: dict[str, Any] | None = None) -> Any:
        is_error, body = await self.raw(tool, args)
        assert not is_error, body
        return body

    async def error(self, tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        is_error, body = await self.raw(tool, args)
        assert is_error, body
        assert set(body) <= {"error", "message", "hint"} and body["message"], body
        return body

    async def until(self, run_id: str, *statuses: str, timeout: float = 10) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            status = await self.ok("workflows-get_status", {"run_id": run_id})
            if status["status"] in statuses:
                return status
            assert asyncio.get_running_loop().time() < deadline, status
            await asyncio.sleep(0.02)


@async_test
async def test_tools_and_schemas_derived_from_run(tmp_path) -> None:
    async with client_for(make_app(tmp_path / "data")) as tools:
        listed = {t.name: t for t in (await tools.client.list_tools()).tools}
        assert {"workflows-list", "workflows-runs-list", "workflows-run", "workflows-get_status", "workflows-resume",
                "workflows-pause", "workflows-cancel", "workflows-batch", "workflows-Approve-run",
                "workflows-limited-run", "workflows-Hourly-run", "workflows-long_job-run", "long_job",
                "add"} <= set(listed)

        schema = listed["workflows-Approve-run"].input_schema
        assert schema["required"] == ["run_parameters"]
        ref = schema["properties"]["run_parameters"]["$ref"].rsplit("/", 1)[-1]
        params = schema["$defs"][ref]
        assert params["properties"]["amount"]["type"] == "integer"
        assert params["properties"]["reason"] == {"default": "", "title": "Reason", "type": "string"}
        assert params["required"] == ["amount"]
        assert "Waits for a human's approval" in listed["workflows-Approve-run"].description
        # a workflow whose run() takes nothing needs no run_parameters
        assert "run_parameters" not in listed["workflows-limited-run"].input_schema.get("required", [])
        job = listed["long_job"].input_schema
        assert job["properties"]["n"]["type"] == "integer" and job["required"] == ["n"]
        assert listed["long_job"].description == "Doubles n in the background."

        assert (await tools.client.call_tool("add", {"a": 2, "b": 3})).structured_content == {"result": 5}

        workflows = {w["name"]: w for w in (await tools.ok("workflows-list"))["workflows"]}
        assert set(workflows) == {"Approve", "limited", "Hourly", "long_job"}
        assert workflows["Approve"]["run_tool"] == "workflows-Approve-run"
        assert workflows["Approve"]["input_schema"]["required"] == ["amount"]
        assert (workflows["limited"]["rate_limit"], workflows["limited"]["priority"]) == ("2/minute", 3)
        assert workflows["Hourly"]["schedules"] == [{"every": 3600.0, "params": {"n": 1}}]
        assert workflows["long_job"]["tool"] == "long_job"


@async_test
async def test_human_in_the_loop_run(tmp_path) -> None:
    async with client_for(make_app(tmp_path / "data")) as tools:
        ids = await tools.ok("workflows-Approve-run", {"run_parameters": {"amount": 5, "reason": "books"}})
        assert set(ids) == {"workflow_id", "run_id", "execution_id"} and ids["execution_id"] == ids["run_id"]
        status = await tools.until(ids["run_id"], "paused")
        assert (status["waiting_for"], status["state"], status["running"]) == (
            "approve", {"stage": "waiting", "amount": 5}, True)
        assert (status["id"], status["name"], status["params"]) == (ids["run_id"], "Approve",
                                                                   {"amount": 5, "reason": "books"})

        await tools.ok("workflows-resume", {"run_id": ids["run_id"], "signal_name": "approve",
                                            "payload": {"approved": True, "by": "ana"}})
        done = await tools.until(ids["run_id"], "completed", "error")
        assert done["result"] == {"decision": {"approved": True, "by": "ana"}, "receipt": "receipt-5",
                                  "reason": "books"}, done
        by_workflow = await tools.ok("workflows-get_status", {"workflow_id": ids["workflow_id"],
                                                               "include_history": True})
        assert by_workflow["run_id"] == ids["run_id"]
        kinds = [h["kind"] for h in by_workflow["history"]]
        assert kinds.count("step_retry") == 2 and "signal" in kinds  # the step failed twice, then succeeded

        # the generic run tool, with our own workflow_id
        mine = await tools.ok("workflows-run", {"workflow_name": "Approve", "run_parameters": {"amount": 1},
                                                "workflow_id": "order-17"})
        assert mine["workflow_id"] == "order-17"
        paused = await tools.ok("workflows-pause", {"workflow_id": "order-17"})
        assert paused["run_id"] == mine["run_id"] and paused["status"] == "paused"
        cancelled = await tools.ok("workflows-cancel", {"run_id": mine["run_id"]})
        assert (cancelled["status"], cancelled["running"]) == ("cancelled", False)


@async_test
async def test_errors_are_json_and_name_the_problem(tmp_path) -> None:
    async with client_for(make_app(tmp_path / "data")) as tools:
        bad = await tools.error("workflows-Approve-run", {"run_parameters": {"amount": "lots"}})
        assert bad["error"] == "invalid_request"
        assert bad["message"].startswith("invalid run_parameters for Approve: amount: Input should be a valid integer")
        assert "workflows-Approve-run" in bad["hint"]
        missing = await tools.error("workflows-run", {"workflow_name": "Approve", "run_parameters": {}})
        assert "amount: Field required" in missing["message"]
        extra = await tools.error("workflows-Approve-run", {"run_parameters": {"amount": 1, "amuont": 2}})
        assert "amuont: Extra inputs are not permitted" in extra["message"]
        job = await tools.error("long_job", {"n": "two"})
        assert job["error"] == "invalid_request" and "n: Input should be a valid integer" in job["message"]

        unknown = await tools.error("workflows-run", {"workflow_name": "Nope"})
        assert unknown["error"] == "not_found" and "unknown workflow 'Nope'" in unknown["message"]
        assert "Approve" in unknown["message"]

        assert (await tools.error("workflows-cancel", {"run_id": "run_missing"}))["error"] == "not_found"
        assert (await tools.error("workflows-get_status", {"run_id": "run_missing"}))["error"] == "not_found"
        assert (await tools.error("workflows-get_status", {}))["error"] == "invalid_request"
        assert (await tools.error("workflows-resume", {"workflow_id": "no-such-id"}))["error"] == "not_found"

        ids = await tools.ok("workflows-limited-run")
        await tools.until(ids["run_id"], "completed")
        finished = await tools.error("workflows-resume", {"run_id": ids["run_id"]})
        assert finished["error"] == "conflict" and "completed" in finished["message"]
        assert (await tools.error("workflows-pause", {"run_id": ids["run_id"]}))["error"] == "conflict"
        assert (await tools.error("workflows-cancel", {"run_id": ids["run_id"]}))["error"] == "conflict"


@async_test
async def test_rate_limit(tmp_path) -> None:
    async with client_for(make_app(tmp_path / "data")) as tools:
        first = await tools.ok("workflows-limited-run")
        await tools.ok("workflows-run", {"workflow_name": "limited"})
        limited = await tools.error("workflows-limited-run")
        assert limited["error"] == "rate_limited"
        wait = re.search(r"rate limited to 2/minute: retry in (\d+) s", limited["message"])
        assert wait and 25 <= int(wait.group(1)) <= 30, limited  # one start per 30 s comes back
        assert (await tools.ok("workflows-get_status", {"run_id": first["run_id"]}))["priority"] == 3
        # other workflows are not affected
        await tools.ok("long_job", {"n": 1})


@async_test
async def test_async_tool_runs_as_a_workflow(tmp_path) -> None:
    async with client_for(make_app(tmp_path / "data")) as tools:
        ids = await tools.ok("long_job", {"n": 21, "label": "answer"})
        done = await tools.until(ids["run_id"], "completed", "error")
        assert done["result"] == {"double": 42, "run_id": ids["run_id"]}
        assert (done["name"], done["state"], done["params"]) == ("long_job", {"label": "answer"},
                                                                  {"n": 21, "label": "answer"})


@async_test
async def test_runs_list_and_batch(tmp_path) -> None:
    async with client_for(make_app(tmp_path / "data")) as tools:
        batch = await tools.ok("workflows-batch", {"action": "run", "workflow_name": "Approve",
                                                   "runs": [{"amount": 1}, {"amount": "x"}, {"amount": 3}]})
        results = batch["results"]
        assert [r["ok"] for r in results] == [True, False, True]
        assert results[1]["error"]["error"] == "invalid_request" and "amount" in results[1]["error"]["message"]
        started = [r["run_id"] for r in results if r["ok"]]
        for rid in started:
            await tools.until(rid, "paused")

        paused = await tools.ok("workflows-runs-list", {"status": "paused", "workflow_name": "Approve"})
        assert [r["run_id"] for r in paused["runs"]] == started[::-1]  # newest first
        assert all(r["waiting_for"] == "approve" for r in paused["runs"])
        page = await tools.ok("workflows-runs-list", {"page_size": 1})
        assert len(page["runs"]) == 1 and page["next_page_token"]
        rest = await tools.ok("workflows-runs-list", {"page_size": 10, "next_page_token": page["next_page_token"]})
        assert page["runs"][0]["run_id"] not in {r["run_id"] for r in rest["runs"]}

        resumed = await tools.ok("workflows-batch", {"action": "resume", "workflow_name": "Approve",
                                                     "signal_name": "approve", "payload": "yes"})
        assert sorted(r["run_id"] for r in resumed["results"]) == sorted(started)
        for rid in started:
            assert (await tools.until(rid, "completed", "error"))["result"]["decision"] == "yes"

        cancel = await tools.ok("workflows-batch", {"action": "cancel", "run_ids": [started[0], "run_missing"]})
        assert [(r["ok"], r["error"]["error"]) for r in cancel["results"]] == [(False, "conflict"),
                                                                               (False, "not_found")]
        assert (await tools.error("workflows-batch", {"action": "cancel"}))["error"] == "invalid_request"


@async_test
async def test_control_route_suspends_new_runs(tmp_path, monkeypatch) -> None:
    # outside the platform there is no token, and no control route
    async with serve(make_app(tmp_path / "a")) as base, httpx.AsyncClient() as http:
        assert (await http.get(f"{base}/_mcpac/control")).status_code == 404

    monkeypatch.setenv("MCPAC_CONTROL_TOKEN", TOKEN)
    monkeypatch.setenv("MCPAC_DEPLOYMENT", "acme.demo")
    app = make_app(tmp_path / "b")
    async with serve(app) as base, mcp_client(f"{base}/mcp") as client:
        tools = Tools(client)
        url = f"{base}/_mcpac/control"
        async with httpx.AsyncClient() as http:
            assert (await http.get(url)).status_code == 401
            assert (await http.get(url, headers={"Authorization": "Bearer wrong"})).status_code == 401
            auth = {"Authorization": f"Bearer {TOKEN}"}
            assert (await http.get(url, headers=auth)).json() == {"suspended": False, "active_runs": 0}

            ids = await tools.ok("workflows-Approve-run", {"run_parameters": {"amount": 2}})
            await tools.until(ids["run_id"], "paused")
            reply = await http.post(url, headers=auth, json={"suspended": True})
            assert reply.json() == {"suspended": True, "active_runs": 1}
            refused = await tools.error("workflows-run", {"workflow_name": "limited"})
            assert refused["error"] == "conflict"
            assert refused["message"] == "deployment acme.demo is suspended: it accepts no new runs"
            assert "resume" in refused["hint"]
            # runs already in flight still take signals
            await tools.ok("workflows-resume", {"run_id": ids["run_id"], "signal_name": "approve", "payload": 1})
            await tools.until(ids["run_id"], "completed")

            assert (await http.post(url, headers=auth, json={"suspended": "yes"})).status_code == 400
            assert (await http.post(url, headers=auth, json={"suspended": False})).json() == {
                "suspended": False, "active_runs": 0}
            await tools.ok("workflows-run", {"workflow_name": "limited"})


@async_test
async def test_starts_suspended_from_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MCPAC_SUSPENDED", "1")
    async with client_for(make_app(tmp_path / "data")) as tools:
        assert "suspended" in (await tools.error("long_job", {"n": 1}))["message"]


@async_test
async def test_restart_reports_the_in_flight_run_as_interrupted(tmp_path) -> None:
    data = tmp_path / "data"
    async with client_for(make_app(data)) as tools:
        done = await tools.ok("workflows-limited-run")
        await tools.until(done["run_id"], "completed")
        flying = await tools.ok("workflows-Approve-run", {"run_parameters": {"amount": 9}})
        await tools.until(flying["run_id"], "paused")
    # the app process stops and a new one starts on the same data dir
    async with client_for(make_app(data)) as tools:
        lost = await tools.ok("workflows-get_status", {"run_id": flying["run_id"]})
        assert (lost["status"], lost["error"], lost["running"]) == ("interrupted", INTERRUPTED_ERROR, False)
        assert lost["state"] == {"stage": "waiting", "amount": 9}
        assert (await tools.ok("workflows-get_status", {"run_id": done["run_id"]}))["result"] == "done"
        listed = await tools.ok("workflows-runs-list", {"status": "interrupted"})
        assert [r["run_id"] for r in listed["runs"]] == [flying["run_id"]]
        resume = await tools.error("workflows-resume", {"run_id": flying["run_id"], "signal_name": "approve"})
        assert resume["error"] == "conflict" and "interrupted" in resume["message"]


@async_test
async def test_executor_from_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MCPAC_EXECUTOR", "asyncio")
    monkeypatch.setenv("MCPAC_EXECUTOR_CONFIG", json.dumps({"max_concurrent_runs": 1}))
    monkeypatch.setenv("MCPAC_APP_DATA_DIR", str(tmp_path / "platform-data"))
    app = make_app(tmp_path / "ignored")
    async with client_for(app) as tools:
        assert isinstance(app.executor, AsyncioExecutor) and app.executor.config.max_concurrent_runs == 1
        first = await tools.ok("workflows-Approve-run", {"run_parameters": {"amount": 1}})
        await tools.until(first["run_id"], "paused")
        second = await tools.ok("workflows-limited-run")
        queued = await tools.ok("workflows-get_status", {"run_id": second["run_id"]})
        assert (queued["status"], queued["waiting_for"]) == ("running", "queue")
        await tools.ok("workflows-cancel", {"run_id": first["run_id"]})
        await tools.until(second["run_id"], "completed")
    assert (tmp_path / "platform-data" / "runs.sqlite3").is_file() and not (tmp_path / "ignored").exists()
    assert app.executor is None  # closed with the app


@async_test
async def test_bad_executor_settings_fail_the_start(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MCPAC_EXECUTOR", "no-such-executor")
    with pytest.raises(UnknownBackendError, match="no-such-executor"):
        await make_app(tmp_path)._open()
    monkeypatch.setenv("MCPAC_EXECUTOR", "asyncio")
    monkeypatch.setenv("MCPAC_EXECUTOR_CONFIG", "{not json")
    with pytest.raises(Exception, match="MCPAC_EXECUTOR_CONFIG is not valid JSON"):
        await make_app(tmp_path)._open()


@async_test
async def test_injected_executor_is_bound_and_closed(tmp_path) -> None:
    executor = AsyncioExecutor(AsyncioExecutorConfig(), PluginContext(data_dir=tmp_path))
    app = make_app(tmp_path / "data", executor=executor)
    async with client_for(app) as tools:
        assert app.executor is executor and executor.binding.deployment == "demo"
        assert set(executor.binding.workflows) == {"Approve", "limited", "Hourly", "long_job"}
        await tools.ok("workflows-limited-run")
    assert executor._store is None  # aclose ran


def test_registration_errors(tmp_path) -> None:
    app = MCPApp(name="x", data_dir=tmp_path)

    class NotAWorkflow:
        async def run(self) -> None: ...

    with pytest.raises(TypeError, match="subclass of mcp_agent_cloud.Workflow"):
        app.workflow(NotAWorkflow)

    class Sync(Workflow):
        def run(self) -> None: ...

    with pytest.raises(TypeError, match="must be an `async def`"):
        app.workflow(Sync)

    class Twice(Workflow):
        async def run(self) -> None: ...

    app.workflow(Twice)
    with pytest.raises(ValueError, match="registered twice"):
        app.workflow(Twice)
    with pytest.raises(ValueError, match="invalid rate_limit '5 per minute'"):
        app.workflow(name="other", rate_limit="5 per minute")(Twice)
    with pytest.raises(ValueError, match="invalid workflow name 'two words'"):
        app.workflow(name="two words")(Twice)
    with pytest.raises(ValueError, match="tool name 'add' is taken"):
        app.tool(name="add")(lambda: 1)
        app.async_tool(name="add")(Twice.run)


def test_import_stays_light_and_exports_load_lazily() -> None:
    code = ("import sys, mcp_agent_cloud\n"
            "heavy = [m for m in ('pydantic', 'mcp', 'starlette') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "from mcp_agent_cloud import MCPApp, Workflow, RetryPolicy, Schedule, current_run\n"
            "from mcp_agent_cloud.workflows import MCPApp as same\n"
            "assert MCPApp is same and MCPApp.__mcp_agent_cloud_app__ is True\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


MAIN_PY = '''
from mcp_agent_cloud import MCPApp, Workflow

app = MCPApp(name="local")


@app.workflow
class Echo(Workflow):
    async def run(self, text: str) -> str:
        return text.upper()


if __name__ == "__main__":
    app.run()
'''


@async_test
async def test_python_main_py_serves_the_app(tmp_path) -> None:
    (tmp_path / "main.py").write_text(MAIN_PY)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPAC_")} | {"PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "main.py"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert await wait_port("127.0.0.1", port, 30), proc.stdout.read() if proc.poll() is not None else "no port"
        async with mcp_client(f"http://127.0.0.1:{port}/mcp") as client:
            tools = Tools(client)
            ids = await tools.ok("workflows-Echo-run", {"run_parameters": {"text": "hi"}})
            assert (await tools.until(ids["run_id"], "completed"))["result"] == "HI"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0
    assert (tmp_path / ".mcpac-data" / "runs.sqlite3").is_file()  # the default data dir, next to the app
