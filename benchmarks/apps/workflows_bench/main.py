"""The app benchmarks/workflows.py deploys: a trivial workflow to start many of, one that waits for a human.

Each returns ``time.time()`` as its code runs, so the benchmark can time start -> running and resume -> running
on the host's one clock without polling. (Workflow code should not read clocks; on the unsandboxed Temporal
runner it may, and a run that finishes at once is never replayed.)
"""

import time

from mcp_agent_cloud import MCPApp, Workflow

app = MCPApp(name="workflows-bench", description="trivial workflows for benchmarks/workflows.py")


@app.tool
def add(a: int, b: int) -> int:
    """A plain tool: the MCP round trip without a run, for reference."""
    return a + b


@app.workflow(description="Returns at once the time its code started")
class Noop(Workflow):
    async def run(self) -> dict:
        return {"t": time.time()}


@app.workflow(description="Waits for the signal `go` (a human's answer), then returns the time it went on")
class Gate(Workflow):
    async def run(self) -> dict:
        await self.wait_for_signal("go", timeout=600)
        return {"t": time.time()}
