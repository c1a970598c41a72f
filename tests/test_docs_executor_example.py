"""The executor of docs/plugins.md ("Writing an executor") is taken from the doc, registered as a third-party plugin
and run by a real MCPApp served over MCP: the documented interface is enough to write an executor plugin."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest

from mcp_agent_cloud import MCPApp, Workflow
from mcp_agent_cloud.hookspecs.types import Executor, ExecutorSupervisor, PluginContext
from mcp_agent_cloud.manager import DISABLE_AUTOLOAD_ENV, PluginManager

from tests.contracts import async_test
from tests.test_workflows_sdk import client_for

DOC = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"


def example_module() -> types.ModuleType:
    text = DOC.read_text()
    section = text[text.index("## Writing an executor"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1, "the section should hold one python block: the whole plugin module"
    module = types.ModuleType("mcp_agent_cloud_memory")
    exec(compile(blocks[0], f"{DOC}#writing-an-executor", "exec"), module.__dict__)
    return module


@pytest.fixture
def pm(monkeypatch):
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    manager = PluginManager()
    manager.register(example_module(), name="memory", distribution="mcp-agent-cloud-memory")
    yield manager
    manager.unregister("memory")


def test_registers_both_halves(pm, tmp_path):
    pm.check_pending()
    spec = pm.get_executor("memory")
    assert issubclass(spec.backend, Executor) and issubclass(spec.supervisor, ExecutorSupervisor)
    assert pm.warnings == []
    supervisor = pm.build(spec.__class__(name="memory", backend=spec.supervisor), {}, PluginContext(data_dir=tmp_path))
    assert supervisor.app_env(None)["MCPAC_EXECUTOR"] == "memory"
    assert supervisor.app_requirements() == ["mcp-agent-cloud-memory==0.1.0"]


@async_test
async def test_an_mcpapp_runs_on_the_documented_executor(pm, tmp_path) -> None:
    executor = pm.build(pm.get_executor("memory"), {}, PluginContext(data_dir=tmp_path))
    app = MCPApp(name="memo", data_dir=tmp_path / "data", executor=executor)

    @app.step
    def charge(amount: int) -> str:
        return f"receipt-{amount}"

    @app.workflow
    class Approve(Workflow):
        async def run(self, amount: int) -> dict:
            self.update_state(stage="waiting")
            decision = await self.wait_for_signal("approve", timeout=30)
            return {"decision": decision, "receipt": await self.step(charge, amount)}

    async with client_for(app) as tools:
        assert app.executor is executor
        run_id = (await tools.ok("workflows-Approve-run", {"run_parameters": {"amount": 5}}))["run_id"]
        waiting = await tools.until(run_id, "paused")
        assert (waiting["waiting_for"], waiting["state"]) == ("approve", {"stage": "waiting"}), waiting

        # Paused: the approval is kept, and the run goes on only when the pause is lifted.
        paused = await tools.ok("workflows-pause", {"run_id": run_id})
        assert (paused["status"], paused["waiting_for"]) == ("paused", "resume"), paused
        await tools.ok("workflows-resume", {"run_id": run_id, "signal_name": "approve", "payload": {"ok": True}})
        still = await tools.ok("workflows-get_status", {"run_id": run_id})
        assert (still["status"], still["waiting_for"]) == ("paused", "resume"), still
        await tools.ok("workflows-resume", {"run_id": run_id})
        done = await tools.until(run_id, "completed")
        assert done["result"] == {"decision": {"ok": True}, "receipt": "receipt-5"}, done

        other = (await tools.ok("workflows-run", {"workflow_name": "Approve", "run_parameters": {"amount": 1},
                                                  "workflow_id": "mine"}))["run_id"]
        await tools.until(other, "paused")
        assert (await tools.ok("workflows-get_status", {"workflow_id": "mine"}))["run_id"] == other
        assert (await tools.ok("workflows-cancel", {"run_id": other}))["status"] == "cancelled"
        listed = await tools.ok("workflows-runs-list", {"status": "completed"})
        assert [r["run_id"] for r in listed["runs"]] == [run_id]

        assert (await tools.error("workflows-resume", {"run_id": other}))["error"] == "conflict"
        assert (await tools.error("workflows-get_status", {"run_id": "run_nope"}))["error"] == "not_found"
        bad = await tools.error("workflows-Approve-run", {"run_parameters": {"amount": "lots"}})
        assert bad["error"] == "invalid_request" and "amount" in bad["message"]
