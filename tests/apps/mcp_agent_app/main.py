"""An app built with the lastmile-ai mcp-agent framework itself (PyPI mcp-agent), not with mcp_agent_cloud.

tests/e2e/test_mcp_agent_framework.py deploys it on the process builder. The framework serves its workflows as MCP
tools (workflows-list, workflows-Approval-run, workflows-get_status, workflows-resume, ...); the platform's launcher
serves it with the framework's own create_mcp_server_for_app. The workflow calls no LLM, so it needs no API key:
it waits for a human decision (a `resume` signal with a payload) and returns it.
"""

from mcp_agent.app import MCPApp
from mcp_agent.executor.workflow import Workflow, WorkflowResult

app = MCPApp(name="approvals", description="Approvals that wait for a human decision")


@app.workflow
class Approval(Workflow[dict]):
    """Ask a human to approve a request; finishes with their decision."""

    @app.workflow_run
    async def run(self, request: str, amount: int = 0) -> WorkflowResult[dict]:
        # Parks the run until workflows-resume sends the `resume` signal; its payload is the human's answer.
        decision = await app.context.executor.wait_for_signal(
            signal_name="resume",
            workflow_id=self.id,
            run_id=self.run_id,
            signal_description=f"approve {request!r} for {amount}",
            timeout_seconds=600,
            signal_type=dict,
        )
        return WorkflowResult(value={"request": request, "amount": amount, "decision": decision})


@app.workflow
class ScopedApproval(Workflow[dict]):
    """Like Approval, but waits on a signal named after its own run: resume it with signal_name=approve-<run_id>."""

    @app.workflow_run
    async def run(self, request: str) -> WorkflowResult[dict]:
        # The framework's asyncio executor wakes every run waiting on a signal name, whatever run_id the resume
        # names; a name of this run's own keeps the decision to this run.
        decision = await app.context.executor.wait_for_signal(
            signal_name=f"approve-{self.run_id}",
            workflow_id=self.id,
            run_id=self.run_id,
            timeout_seconds=600,
            signal_type=dict,
        )
        return WorkflowResult(value={"request": request, "decision": decision})
