"""A workflows app for the e2e tests: a human-in-the-loop workflow, a step that fails twice before it succeeds,
a slow workflow to pause and to kill mid-run, a scheduled one, a rate-limited one and an async tool."""

from __future__ import annotations

import asyncio
import os

from mcp_agent_cloud import MCPApp, RetryPolicy, Schedule, Workflow

app = MCPApp(name="workflows-app", description="workflows for the e2e tests")

ATTEMPTS: dict[str, int] = {}  # per run: how often the flaky step ran in this process


@app.tool
def add(a: int, b: int) -> int:
    """A plain tool next to the workflow tools."""
    return a + b


@app.tool
def whoami() -> dict:
    """What the platform handed the runtime (never the control token itself)."""
    return {"deployment": os.environ.get("MCPAC_DEPLOYMENT"), "executor": os.environ.get("MCPAC_EXECUTOR"),
            "data_dir": os.environ.get("MCPAC_APP_DATA_DIR"), "pid": os.getpid(),
            "has_control_token": bool(os.environ.get("MCPAC_CONTROL_TOKEN"))}


@app.step(retry=RetryPolicy(max_attempts=3, initial_interval=0.2, backoff=2.0))
async def flaky_charge(key: str, amount: int) -> str:
    """Fails on its first two attempts, so only the retry policy (0.2 s, then 0.4 s) gets it through."""
    ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    if ATTEMPTS[key] < 3:
        raise RuntimeError(f"payment service unavailable (attempt {ATTEMPTS[key]})")
    return f"charged {amount} after {ATTEMPTS[key]} attempts"


@app.workflow(description="Waits for an approval signal, then charges through a flaky step")
class Approve(Workflow):
    async def run(self, amount: int, reason: str = "") -> dict:
        self.update_state(stage="waiting for approval")
        decision = await self.wait_for_signal("approve", timeout=600)
        self.update_state(stage="charging")
        receipt = await self.step(flaky_charge, self.run_id, amount)
        self.update_state(stage="done")
        return {"amount": amount, "reason": reason, "decision": decision, "receipt": receipt}


@app.workflow(description="Ticks for a while: something to pause, cancel or kill mid-run")
class Slow(Workflow):
    async def run(self, ticks: int = 600, interval: float = 0.1) -> dict:
        for i in range(ticks):
            self.update_state(tick=i)
            await self.sleep(interval)
        return {"ticks": ticks}


@app.workflow(description="Runs on a timer", schedules=[Schedule(every=3, params={"note": "scheduled"})])
class Heartbeat(Workflow):
    async def run(self, note: str = "") -> dict:
        return {"note": note}


@app.workflow(description="Starts at most twice a minute", rate_limit="2/minute")
class Limited(Workflow):
    async def run(self) -> str:
        return "done"


@app.async_tool
async def double(n: int) -> int:
    """An async tool: calling it starts a run and returns its ids."""
    await asyncio.sleep(0.1)
    return n * 2
