"""The raw-temporalio baseline's worker for benchmarks/workflows.py: the same two trivial workflows as
benchmarks/apps/workflows_bench, written directly against temporalio, unsandboxed like the platform's executor.

    python worker.py ADDRESS TASK_QUEUE      (prints "ready" once polling; stops on SIGTERM)
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from temporalio import workflow
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker


@workflow.defn(name="Noop", sandboxed=False)
class Noop:
    @workflow.run
    async def run(self) -> dict:
        return {"t": time.time()}


@workflow.defn(name="Gate", sandboxed=False)
class Gate:
    def __init__(self) -> None:
        self.released = False

    @workflow.signal(name="go")
    def go(self, payload: dict | None = None) -> None:
        self.released = True

    @workflow.run
    async def run(self) -> dict:
        await workflow.wait_condition(lambda: self.released, timeout=600)
        return {"t": time.time()}


async def main(address: str, task_queue: str) -> None:
    client = await Client.connect(address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    worker = Worker(client, task_queue=task_queue, workflows=[Noop, Gate], workflow_runner=UnsandboxedWorkflowRunner())
    async with worker:
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
