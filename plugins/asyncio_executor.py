"""Built-in executor ``asyncio``: each run is an asyncio task in the platform's event loop.

Runs live in memory only: a platform restart forgets them (a durable executor such as Temporal keeps them). A run
that wants signals declares a parameter named ``run`` and receives a :class:`RunContext`, whose mailbox only
:meth:`AsyncioExecutor.signal` for that run id feeds.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mcp_agent_cloud.errors import ConflictError, NotFoundError, ValidationFailed
from mcp_agent_cloud.hookspecs import hookimpl
from mcp_agent_cloud.hookspecs.types import Executor, ExecutorSpec, RunRecord

log = logging.getLogger(__name__)

FINAL = frozenset({"completed", "error", "cancelled", "interrupted"})


class AsyncioExecutorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_finished_runs: int = Field(1000, ge=0, description="finished runs kept for status(); the oldest go first")
    cancel_timeout: float = Field(5.0, gt=0, description="how long cancel() waits for a run to stop")


class RunContext:
    """Handed to a run as ``run=``: its ids, a signal mailbox and a place to publish progress."""

    def __init__(self, executor: AsyncioExecutor, record: RunRecord) -> None:
        self._executor = executor
        self._record = record
        self._mailbox: dict[str, asyncio.Queue[Any]] = {}
        self._waiting = 0  # concurrent waits inside one run: paused until the last one returns

    @property
    def run_id(self) -> str:
        return self._record.run_id

    @property
    def workflow_id(self) -> str:
        return self._record.workflow_id

    @property
    def state(self) -> dict[str, Any]:
        return dict(self._record.state)

    def _queue(self, name: str) -> asyncio.Queue[Any]:
        return self._mailbox.setdefault(name, asyncio.Queue())

    async def wait_for_signal(self, name: str, timeout: float | None = None) -> Any:
        """Return the payload of the next signal ``name`` sent to this run (signals sent earlier are kept).

        The run shows as ``paused`` while it waits. Raises :class:`TimeoutError` after ``timeout`` seconds."""
        self._waiting += 1
        self._executor._set_status(self._record, "paused")
        try:
            return await asyncio.wait_for(self._queue(name).get(), timeout)
        finally:
            self._waiting -= 1
            if self._waiting == 0 and self._record.status == "paused":
                self._executor._set_status(self._record, "running")

    def update_state(self, **values: Any) -> None:
        """Merge ``values`` into the run's ``state`` (what ``status`` shows)."""
        self._record.state.update(values)
        self._record.updated_at = time.time()


class _Run:
    __slots__ = ("record", "context", "task")

    def __init__(self, record: RunRecord, context: RunContext) -> None:
        self.record = record
        self.context = context
        self.task: asyncio.Task[Any] | None = None


class AsyncioExecutor(Executor):
    def __init__(self, config: AsyncioExecutorConfig, ctx) -> None:
        super().__init__(config, ctx)
        self._runs: dict[str, _Run] = {}  # insertion order is start order

    async def start_run(
        self, name: str, fn: Callable[..., Awaitable[Any]], params: Mapping[str, Any], *, workflow_id: str | None = None
    ) -> RunRecord:
        kwargs = dict(params)
        wants_run = _accepts_run(fn)
        if wants_run and "run" in kwargs:
            raise ValidationFailed(f"workflow {name!r}: 'run' is reserved for the run context, pass it another name")
        record = RunRecord(run_id=f"run_{uuid.uuid4().hex}", workflow_id=workflow_id or f"{name}-{uuid.uuid4().hex}",
                           name=name)
        run = _Run(record, RunContext(self, record))
        if wants_run:
            kwargs["run"] = run.context
        self._runs[record.run_id] = run
        run.task = asyncio.get_running_loop().create_task(self._drive(run, fn, kwargs), name=record.run_id)
        self._prune()
        return _copy(record)

    async def _drive(self, run: _Run, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        record = run.record
        try:
            result = fn(**kwargs)
            if inspect.isawaitable(result):
                result = await result
        except asyncio.CancelledError:
            self._set_status(record, "cancelled")
            raise
        except Exception as exc:  # the run failed, not the executor: record it and carry on
            log.warning("run %s (%s) failed: %s: %s", record.run_id, record.name, type(exc).__name__, exc)
            record.error = f"{type(exc).__name__}: {exc}"
            self._set_status(record, "error")
        else:
            record.result = result
            self._set_status(record, "completed")

    def _set_status(self, record: RunRecord, status: str) -> None:
        record.status = status
        record.updated_at = time.time()

    def _get(self, run_id: str) -> _Run:
        run = self._runs.get(run_id)
        if run is None:
            raise NotFoundError(f"run {run_id!r} not found", hint="runs are kept in memory and lost on restart")
        return run

    def _prune(self) -> None:
        finished = [rid for rid, r in self._runs.items() if r.record.status in FINAL]
        for rid in finished[: max(0, len(finished) - self.config.max_finished_runs)]:
            del self._runs[rid]

    async def status(self, run_id: str) -> RunRecord:
        return _copy(self._get(run_id).record)

    async def wait(self, run_id: str, timeout: float | None = None) -> RunRecord:
        """Wait until the run has finished (any final status) and return its record."""
        run = self._get(run_id)
        await asyncio.wait({run.task}, timeout=timeout)
        return _copy(run.record)

    async def signal(self, run_id: str, name: str, payload: Any = None) -> None:
        run = self._get(run_id)
        if run.record.status in FINAL:
            raise ConflictError(f"run {run_id} is {run.record.status}; it takes no more signals")
        run.context._queue(name).put_nowait(payload)

    async def cancel(self, run_id: str) -> None:
        run = self._get(run_id)
        if run.task.done():
            return
        run.task.cancel()
        await asyncio.wait({run.task}, timeout=self.config.cancel_timeout)

    async def list_runs(self, *, status: str | None = None, limit: int = 100) -> list[RunRecord]:
        """Newest first."""
        runs = [r.record for r in reversed(self._runs.values()) if status is None or r.record.status == status]
        return [_copy(r) for r in runs[: max(0, limit)]]

    async def aclose(self) -> None:
        tasks = [r.task for r in self._runs.values() if r.task is not None and not r.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.config.cancel_timeout)


def _accepts_run(fn: Callable[..., Any]) -> bool:
    try:
        param = inspect.signature(fn).parameters.get("run")
    except (TypeError, ValueError):  # some builtins have no signature
        return False
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


def _copy(record: RunRecord) -> RunRecord:
    # callers get a snapshot; the live record keeps changing under the running task
    return record.model_copy(update={"state": dict(record.state)})


@hookimpl
def mcp_agent_cloud_executors():
    yield ExecutorSpec(name="asyncio", backend=AsyncioExecutor, config_model=AsyncioExecutorConfig,
                       description="in-process asyncio tasks (not durable)")
