"""A small workflows app for the tracing e2e test: a tool that starts a run whose step is traced."""

from __future__ import annotations

from mcp_agent_cloud import MCPApp, Workflow

app = MCPApp(name="tracing-app", description="traced workflow runs")


@app.step
async def charge(amount: int) -> str:
    return f"charged {amount}"


@app.workflow(description="Charges through one step")
class Pay(Workflow):
    async def run(self, amount: int) -> dict:
        self.update_state(stage="charging")
        return {"receipt": await self.step(charge, amount)}


@app.tool
def add(a: int, b: int) -> int:
    return a + b
