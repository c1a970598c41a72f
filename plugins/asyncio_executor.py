"""Built-in executor ``asyncio``: each workflow run is an asyncio task inside the app's own process.

Runs, their history and pending signals are kept in SQLite (``DATA/runs.sqlite3`` of the app, WAL mode), so status,
results and listings survive a restart. The runs themselves do not: asyncio is not durable. A run in flight when
the app process stops (a crash, a redeploy, a stop) is reported as ``interrupted`` and never resumed; use the
``temporal`` executor when runs must survive that.

Signals reach only the run they name (each run has its own mailbox). ``pause`` holds a run at its next pause point
(any await on its RunContext) until a ``resume`` signal. Steps retry with backoff per their RetryPolicy.
``max_concurrent_runs`` bounds the runs in flight; the others wait in a queue ordered by priority, then age.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import inspect
import json
import logging
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mcp_agent_cloud.errors import ConflictError, NotFoundError, PluginError, ValidationFailed
from mcp_agent_cloud.hookspecs import hookimpl
from mcp_agent_cloud.hookspecs.types import (
    FINAL_STATUSES,
    Executor,
    ExecutorSpec,
    ExecutorSupervisor,
    RunContext,
    RunPage,
    RunRecord,
    Schedule,
    StepDef,
    WorkflowDef,
)
from mcp_agent_cloud.telemetry import Span, Tracer, use_parent
from mcp_agent_cloud.workflows.base import (
    RUN_SPAN,
    STEP_SPAN,
    end_run_span,
    execute,
    lookup,
    run_attributes,
    step_retry,
    to_json,
    validate_params,
)

log = logging.getLogger(__name__)

INTERRUPTED_ERROR = ("interrupted: the app process stopped while the run was in flight; asyncio runs are not durable "
                     "(use executor: temporal)")
DB_NAME = "runs.sqlite3"
SWEEP_SECONDS = 10.0  # how often runs of a dead sibling process (same data dir) are marked interrupted

# Executors alive in this process, by owner token: a run whose owner is listed here is not orphaned even though
# its pid is ours (tests, or an app that builds a second executor on the same data dir).
_LIVE_OWNERS: set[str] = set()


class AsyncioExecutorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_concurrent_runs: int | None = Field(
        None, ge=1, description="runs in flight at once (started, not finished; a paused run counts); the others "
        "queue by priority. null: no limit")
    max_finished_runs: int = Field(1000, ge=0, description="finished runs kept in the run store; the oldest go first")
    cancel_timeout: float = Field(5.0, gt=0, description="how long cancel() and shutdown wait for a run to stop")


class AsyncioSupervisor(ExecutorSupervisor):
    """Platform half: nothing to run; each app instance gets the config through MCPAC_EXECUTOR_CONFIG."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL UNIQUE,
    workflow_id TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT '{}',
    result TEXT,
    error TEXT,
    params TEXT NOT NULL DEFAULT '{}',
    waiting_for TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_workflow_id ON runs (workflow_id, seq);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, seq);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS history_by_run ON history (run_id, id);
CREATE TABLE IF NOT EXISTS signals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    payload TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS signals_by_run ON signals (run_id, id);
"""

_COLUMNS = "run_id, workflow_id, name, status, state, result, error, params, waiting_for, priority, created_at, " \
           "updated_at"
_ACTIVE = ("running", "paused")


class _Store:
    """The SQLite run store. Used from the event loop thread only; every write commits at once (autocommit)."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)

    def close(self) -> None:
        self.db.close()

    def insert(self, rec: RunRecord, owner: str) -> None:
        self.db.execute(
            "INSERT INTO runs (run_id, workflow_id, name, status, state, result, error, params, waiting_for, "
            "priority, owner, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (rec.run_id, rec.workflow_id, rec.name, rec.status, json.dumps(rec.state), json.dumps(rec.result),
             rec.error, json.dumps(rec.params), rec.waiting_for, rec.priority, owner, rec.created_at,
             rec.updated_at))

    def save(self, rec: RunRecord) -> None:
        self.db.execute(
            "UPDATE runs SET status=?, state=?, result=?, error=?, waiting_for=?, updated_at=? WHERE run_id=?",
            (rec.status, json.dumps(rec.state), json.dumps(rec.result), rec.error, rec.waiting_for, rec.updated_at,
             rec.run_id))

    def event(self, run_id: str, kind: str, **data: Any) -> None:
        self.db.execute("INSERT INTO history (run_id, ts, kind, data) VALUES (?,?,?,?)",
                        (run_id, time.time(), kind, json.dumps(data)))

    def state_event(self, run_id: str, values: dict[str, Any]) -> None:
        """Record a state update; consecutive updates merge into one event, so a run that reports progress in a
        loop does not grow its history without bound."""
        last = self.db.execute("SELECT id, kind, data FROM history WHERE run_id=? ORDER BY id DESC LIMIT 1",
                               (run_id,)).fetchone()
        if last is not None and last[1] == "state":
            merged = {**json.loads(last[2]).get("values", {}), **values}
            self.db.execute("UPDATE history SET ts=?, data=? WHERE id=?",
                            (time.time(), json.dumps({"values": merged}), last[0]))
        else:
            self.event(run_id, "state", values=values)

    @staticmethod
    def _record(row: tuple) -> RunRecord:
        (run_id, workflow_id, name, status, state, result, error, params, waiting_for, priority, created_at,
         updated_at) = row
        return RunRecord(run_id=run_id, workflow_id=workflow_id, name=name, status=status, state=json.loads(state),
                         result=json.loads(result) if result is not None else None, error=error,
                         params=json.loads(params), waiting_for=waiting_for, priority=priority,
                         created_at=created_at, updated_at=updated_at)

    def get(self, run_id: str) -> RunRecord | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return self._record(row) if row else None

    def owner(self, run_id: str) -> str | None:
        row = self.db.execute("SELECT owner FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return row[0] if row else None

    def latest_of(self, workflow_id: str) -> str | None:
        row = self.db.execute("SELECT run_id FROM runs WHERE workflow_id=? ORDER BY seq DESC LIMIT 1",
                              (workflow_id,)).fetchone()
        return row[0] if row else None

    def history(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT ts, kind, data FROM history WHERE run_id=? ORDER BY id", (run_id,))
        return [{"ts": ts, "kind": kind, **json.loads(data)} for ts, kind, data in rows]

    def page(self, *, status: str | None, workflow: str | None, limit: int, after: int | None
             ) -> tuple[list[RunRecord], int | None]:
        where, args = [], []
        if status is not None:
            where.append("status=?")
            args.append(status)
        if workflow is not None:
            where.append("name=?")
            args.append(workflow)
        if after is not None:
            where.append("seq<?")
            args.append(after)
        sql = f"SELECT seq, {_COLUMNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self.db.execute(sql + " ORDER BY seq DESC LIMIT ?", (*args, limit + 1)).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return [self._record(r[1:]) for r in rows], (rows[-1][0] if more and rows else None)

    def active_runs(self) -> list[tuple[str, str]]:
        return self.db.execute(
            f"SELECT run_id, owner FROM runs WHERE status IN ({','.join('?' * len(_ACTIVE))})", _ACTIVE).fetchall()

    def interrupt(self, run_ids: list[str]) -> None:
        now = time.time()
        for run_id in run_ids:
            cur = self.db.execute(
                "UPDATE runs SET status='interrupted', error=?, waiting_for=NULL, updated_at=? "
                f"WHERE run_id=? AND status IN ({','.join('?' * len(_ACTIVE))})",
                (INTERRUPTED_ERROR, now, run_id, *_ACTIVE))
            if cur.rowcount:
                self.event(run_id, "status", status="interrupted")

    def add_signal(self, run_id: str, name: str, payload: Any) -> int:
        cur = self.db.execute("INSERT INTO signals (run_id, name, payload, created_at) VALUES (?,?,?,?)",
                              (run_id, name, json.dumps(payload), time.time()))
        return int(cur.lastrowid)

    def drop_signal(self, signal_id: int) -> None:
        self.db.execute("DELETE FROM signals WHERE id=?", (signal_id,))

    def drop_signals(self, run_id: str) -> None:
        self.db.execute("DELETE FROM signals WHERE run_id=?", (run_id,))

    def prune(self, keep: int) -> None:
        final = tuple(FINAL_STATUSES)
        marks = ",".join("?" * len(final))
        old = [r[0] for r in self.db.execute(
            f"SELECT run_id FROM runs WHERE status IN ({marks}) ORDER BY seq DESC LIMIT -1 OFFSET ?", (*final, keep))]
        for run_id in old:
            for table in ("runs", "history", "signals"):
                self.db.execute(f"DELETE FROM {table} WHERE run_id=?", (run_id,))


class _Run:
    """A run this process owns: its task, mailbox and pause state. The record is written through to the store."""

    def __init__(self, record: RunRecord, defn: WorkflowDef) -> None:
        self.record = record
        self.defn = defn
        self.task: asyncio.Task[Any] | None = None
        self.mailbox: dict[str, asyncio.Queue[tuple[int, Any]]] = {}
        self.waiting: list[str] = []  # signal names the run awaits right now (a run may wait on several at once)
        self.pause_requested = False
        self.held = False  # inside a pause point, waiting for resume
        self.resumed = asyncio.Event()
        self.queued = False
        self.has_slot = False
        self.slot: asyncio.Future[None] | None = None
        self.span: Span | None = None  # workflow.run, from start_run to _finish

    def queue(self, name: str) -> asyncio.Queue[tuple[int, Any]]:
        return self.mailbox.setdefault(name, asyncio.Queue())


class AsyncioRunContext(RunContext):
    """The RunContext of an asyncio run; every await here is a pause point."""

    def __init__(self, executor: AsyncioExecutor, run: _Run) -> None:
        self._ex = executor
        self._run = run
        self.run_id = run.record.run_id
        self.workflow_id = run.record.workflow_id

    async def _pause_point(self) -> None:
        run = self._run
        if not run.pause_requested:
            return
        run.held = True
        self._ex._refresh(run)
        try:
            await run.resumed.wait()
        finally:
            run.held = False
            self._ex._refresh(run)

    async def wait_for_signal(self, name: str, timeout: float | None = None) -> Any:
        await self._pause_point()
        run = self._run
        run.waiting.append(name)
        self._ex._store.event(self.run_id, "waiting", signal=name)
        self._ex._refresh(run)
        try:
            signal_id, payload = await asyncio.wait_for(run.queue(name).get(), timeout)
        except TimeoutError:  # the same message as the temporal executor's
            raise TimeoutError(f"no signal {name!r} within {timeout} s") from None
        finally:
            run.waiting.remove(name)
            self._ex._refresh(run)
        self._ex._store.drop_signal(signal_id)
        await self._pause_point()
        return payload

    def update_state(self, **values: Any) -> None:
        values = to_json(values)
        rec = self._run.record
        rec.state.update(values)
        rec.updated_at = time.time()
        self._ex._store.save(rec)
        self._ex._store.state_event(self.run_id, values)

    async def run_step(self, step: StepDef, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        await self._pause_point()
        policy = step_retry(step)
        attempt = 1
        tracer = self._ex.tracer
        while True:
            try:
                with tracer.span(f"{STEP_SPAN} {step.name}", attributes={
                        "step.name": step.name, "step.attempt": attempt, "run.id": self.run_id,
                        "workflow.id": self.workflow_id}):
                    result = await self._attempt(step, args, kwargs)
            except Exception as exc:
                names = {cls.__name__ for cls in type(exc).__mro__}
                error = f"{type(exc).__name__}: {exc}"
                if attempt >= policy.max_attempts or names.intersection(policy.non_retryable):
                    self._ex._store.event(self.run_id, "step_failed", step=step.name, attempt=attempt, error=error)
                    raise
                delay = policy.delay(attempt)
                self._ex._store.event(self.run_id, "step_retry", step=step.name, attempt=attempt, error=error,
                                      retry_in=delay)
                log.info("run %s: step %s attempt %d failed (%s); retrying in %.3gs", self.run_id, step.name,
                         attempt, error, delay)
                await asyncio.sleep(delay)
                attempt += 1
                continue
            self._ex._store.event(self.run_id, "step", step=step.name, attempt=attempt)
            break
        await self._pause_point()
        return result

    async def _attempt(self, step: StepDef, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        if inspect.iscoroutinefunction(step.fn):
            call = step.fn(*args, **kwargs)
        else:
            # a plain function may block (HTTP, files): a worker thread keeps the app's loop serving meanwhile
            call = asyncio.to_thread(step.fn, *args, **kwargs)
        try:
            result = await asyncio.wait_for(call, step.timeout)
        except TimeoutError:
            raise TimeoutError(f"step {step.name} timed out after {step.timeout} s") from None
        if inspect.isawaitable(result):
            result = await asyncio.wait_for(result, step.timeout)
        return result

    async def sleep(self, seconds: float) -> None:
        await self._pause_point()
        await asyncio.sleep(seconds)
        await self._pause_point()


class AsyncioExecutor(Executor):
    tracer = Tracer()  # the MCPApp hands over its own; this one makes no spans

    def __init__(self, config: AsyncioExecutorConfig, ctx) -> None:
        super().__init__(config, ctx)
        self._runs: dict[str, _Run] = {}  # runs this process owns and that have not finished
        self._store: _Store | None = None  # type: ignore[assignment]
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._active = 0
        self._waiting: list[tuple[int, int, str]] = []  # heap of (-priority, order, run_id) for a free slot
        self._order = 0
        self._background: list[asyncio.Task[Any]] = []
        self._closing = False
        self.suspended = False

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def setup(self) -> None:
        if getattr(self, "binding", None) is None:
            raise PluginError("the asyncio executor runs inside an app: call bind(AppBinding(...)) before setup()",
                              hint="apps get it from MCPApp; the platform side of this executor is AsyncioSupervisor")
        data_dir = Path(self.binding.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        schedules = self._check_schedules()
        self._store = _Store(data_dir / DB_NAME)
        _LIVE_OWNERS.add(self._owner)
        interrupted = self._sweep()
        if interrupted:
            log.warning("%d run(s) were in flight when the app last stopped; they are marked interrupted: %s",
                        len(interrupted), ", ".join(interrupted))
        loop = asyncio.get_running_loop()
        self._background.append(loop.create_task(self._sweep_loop(), name="asyncio-executor-sweep"))
        for defn, schedule, sid in schedules:
            self._background.append(loop.create_task(self._schedule_loop(defn, schedule, sid), name=f"schedule {sid}"))

    async def aclose(self) -> None:
        self._closing = True
        for task in self._background:
            task.cancel()
        tasks = [r.task for r in self._runs.values() if r.task is not None and not r.task.done()]
        for task in tasks:
            task.cancel()
        if tasks or self._background:
            await asyncio.wait([*tasks, *self._background], timeout=self.config.cancel_timeout)
        self._background.clear()
        if self._store is not None:
            self._store.interrupt(list(self._runs))  # any run that ignored cancellation
            self._store.close()
            self._store = None
        _LIVE_OWNERS.discard(self._owner)

    async def set_suspended(self, suspended: bool) -> None:
        """While suspended, schedules start no runs (the MCPApp refuses starts from tools itself)."""
        self.suspended = suspended

    def _sweep(self) -> list[str]:
        """Mark interrupted the active runs whose owning process is gone."""
        orphans = [run_id for run_id, owner in self._store.active_runs() if not _owner_alive(owner)]
        self._store.interrupt(orphans)
        return orphans

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                self._sweep()
            except sqlite3.Error as exc:  # a busy database is retried at the next sweep
                log.warning("asyncio executor: sweeping interrupted runs failed: %s", exc)

    # -- runs ------------------------------------------------------------------------------------------------

    def _db(self) -> _Store:
        if self._store is None:
            raise PluginError("the asyncio executor is not set up (or already closed)",
                              hint="the MCPApp runtime calls setup() when the app starts")
        return self._store

    async def start_run(self, workflow: str, params: Mapping[str, Any], *, workflow_id: str | None = None,
                        priority: int | None = None, started_by: str | None = None) -> RunRecord:
        store = self._db()
        if self._closing:
            raise ConflictError("the app is shutting down: it starts no new runs")
        defn = lookup(self.binding.workflows, workflow)
        params = validate_params(defn, params)
        record = RunRecord(run_id=f"run_{uuid.uuid4().hex}", workflow_id=workflow_id or f"{defn.name}-{uuid.uuid4().hex}",
                           name=defn.name, params=params, priority=defn.priority if priority is None else priority)
        run = _Run(record, defn)
        # A child of the current span (the tool call that starts the run); a scheduled run starts a trace.
        run.span = self.tracer.start(f"{RUN_SPAN} {defn.name}", attributes={
            **run_attributes(defn.name, record.run_id, record.workflow_id), "run.started_by": started_by or "api"})
        limit = self.config.max_concurrent_runs
        if limit is None or (self._active < limit and not self._waiting):
            run.has_slot = True
            self._active += 1
        else:
            run.queued = True
            run.slot = asyncio.get_running_loop().create_future()
            self._order += 1
            heapq.heappush(self._waiting, (-record.priority, self._order, record.run_id))
            record.waiting_for = "queue"
        store.insert(record, self._owner)
        store.event(record.run_id, "started", by=started_by or "api", priority=record.priority,
                    queued=run.queued)
        self._runs[record.run_id] = run
        run.task = asyncio.get_running_loop().create_task(self._drive(run), name=record.run_id)
        run.task.add_done_callback(lambda _task: self._task_done(run))
        return record.model_copy(deep=True)

    def _task_done(self, run: _Run) -> None:
        # A task cancelled before its first step never enters _drive, so nothing recorded the end: do it here.
        if run.record.status not in FINAL_STATUSES:
            if self._closing:
                self._finish(run, "interrupted", error=INTERRUPTED_ERROR)
            else:
                self._finish(run, "cancelled")
            self._release(run)

    async def _drive(self, run: _Run) -> None:
        rec = run.record
        ctx = AsyncioRunContext(self, run)
        try:
            if run.queued:
                await run.slot
            await ctx._pause_point()  # paused before it started
            with use_parent(run.span):  # steps (and whatever the run traces) are its children
                result = await execute(run.defn, ctx, rec.params)
        except asyncio.CancelledError:
            if self._closing:
                self._finish(run, "interrupted", error=INTERRUPTED_ERROR)
            else:
                self._finish(run, "cancelled")
            raise
        except Exception as exc:  # the run failed, not the executor: record it and carry on
            log.warning("run %s (%s) failed: %s: %s", rec.run_id, rec.name, type(exc).__name__, exc)
            self._finish(run, "error", error=f"{type(exc).__name__}: {exc}")
        else:
            try:
                value = to_json(result)
            except Exception as exc:  # noqa: BLE001 - a result that will not serialise is the run's error
                self._finish(run, "error", error=f"the result is not JSON-serialisable: {type(exc).__name__}: {exc}")
            else:
                self._finish(run, "completed", result=value)
        finally:
            self._release(run)

    def _finish(self, run: _Run, status: str, *, result: Any = None, error: str | None = None) -> None:
        rec = run.record
        rec.status = status
        rec.result = result
        rec.error = error
        rec.waiting_for = None
        rec.updated_at = time.time()
        self._runs.pop(rec.run_id, None)
        span, run.span = run.span, None
        end_run_span(span, status, error)
        store = self._store
        if store is None:
            return
        store.save(rec)
        store.event(rec.run_id, "status", status=status, **({"error": error} if error else {}))
        store.drop_signals(rec.run_id)
        store.prune(self.config.max_finished_runs)

    def _release(self, run: _Run) -> None:
        if run.queued:  # cancelled while queued: its heap entry is skipped when popped
            run.queued = False
        if not run.has_slot:
            return
        run.has_slot = False
        self._active -= 1
        while self._waiting:
            _, _, run_id = heapq.heappop(self._waiting)
            nxt = self._runs.get(run_id)
            if nxt is None or not nxt.queued:
                continue
            nxt.queued = False
            nxt.has_slot = True
            self._active += 1
            if nxt.slot is not None and not nxt.slot.done():
                nxt.slot.set_result(None)
            self._refresh(nxt)
            break

    def _refresh(self, run: _Run) -> None:
        """Derive status and waiting_for from the run's live state; write them through when they change."""
        rec = run.record
        if rec.status in FINAL_STATUSES:
            return
        if run.pause_requested and (run.held or not run.waiting):
            status, waiting_for = "paused", "resume"
        elif run.waiting:
            status, waiting_for = "paused", run.waiting[-1]
        elif run.queued:
            status, waiting_for = "running", "queue"
        else:
            status, waiting_for = "running", None
        if (status, waiting_for) == (rec.status, rec.waiting_for):
            return
        changed = status != rec.status
        rec.status, rec.waiting_for = status, waiting_for
        rec.updated_at = time.time()
        if self._store is not None:
            self._store.save(rec)
            if changed:
                self._store.event(rec.run_id, "status", status=status, waiting_for=waiting_for)

    def _live(self, run_id: str, action: str) -> _Run:
        """The run, if this process owns it and it has not finished; clear errors otherwise."""
        run = self._runs.get(run_id)
        if run is not None:
            return run
        record = self._db().get(run_id)
        if record is None:
            raise _not_found(run_id)
        if record.status in FINAL_STATUSES:
            raise ConflictError(f"run {run_id} is {record.status}: it cannot {action} any more",
                                hint="start a new run with workflows-run")
        raise ConflictError(f"run {run_id} belongs to another process of this app (owner {self._db().owner(run_id)})",
                            hint="asyncio runs live in the process that started them; it gets the request once "
                                 "traffic reaches it, or the run is marked interrupted when that process is gone")

    async def status(self, run_id: str | None = None, *, workflow_id: str | None = None,
                     history: bool = False) -> RunRecord:
        store = self._db()
        if run_id is None:
            if workflow_id is None:
                raise ValidationFailed("give run_id or workflow_id")
            run_id = store.latest_of(workflow_id)
            if run_id is None:
                raise NotFoundError(f"no run with workflow_id {workflow_id!r}",
                                    hint="workflows-runs-list lists the runs this app keeps")
        record = store.get(run_id)
        if record is None:
            raise _not_found(run_id)
        if history:
            record.history = store.history(run_id)
        return record

    async def signal(self, run_id: str, name: str, payload: Any = None) -> RunRecord:
        run = self._live(run_id, "take signals")
        store = self._db()
        payload = to_json(payload)
        store.event(run_id, "signal", name=name)
        if name == "resume" and run.pause_requested:
            run.pause_requested = False
            run.resumed.set()
            self._refresh(run)
        else:
            run.queue(name).put_nowait((store.add_signal(run_id, name, payload), payload))
        for _ in range(10):  # let the run take it, so the status returned reflects the signal
            await asyncio.sleep(0)
            if run.record.status in FINAL_STATUSES or (name not in run.waiting and not run.held):
                break
        return await self.status(run_id)

    async def pause(self, run_id: str) -> RunRecord:
        run = self._live(run_id, "be paused")
        if not run.pause_requested:
            run.pause_requested = True
            run.resumed.clear()
            self._db().event(run_id, "pause_requested")
            self._refresh(run)
        return await self.status(run_id)

    async def cancel(self, run_id: str) -> RunRecord:
        run = self._live(run_id, "be cancelled")
        self._db().event(run_id, "cancel_requested")
        if run.task is not None and not run.task.done():
            run.task.cancel()
            await asyncio.wait({run.task}, timeout=self.config.cancel_timeout)
        return await self.status(run_id)

    async def list_runs(self, *, status: str | None = None, workflow: str | None = None, limit: int = 100,
                        page_token: str | None = None) -> RunPage:
        after = None
        if page_token:
            try:
                after = int(page_token)
            except ValueError:
                raise ValidationFailed(f"invalid page token {page_token!r}",
                                       hint="pass the next_page_token of the previous page unchanged") from None
        runs, last = self._db().page(status=status, workflow=workflow, limit=max(0, limit), after=after)
        return RunPage(runs=runs, next_page_token=str(last) if last is not None else None)

    async def wait(self, run_id: str, timeout: float | None = None) -> RunRecord:
        run = self._runs.get(run_id)
        if run is not None and run.task is not None:
            done, _ = await asyncio.wait({run.task}, timeout=timeout)
            if not done:
                raise TimeoutError(f"run {run_id} still running after {timeout} s")
            return await self.status(run_id)
        return await super().wait(run_id, timeout)

    # -- schedules -------------------------------------------------------------------------------------------

    def _check_schedules(self) -> list[tuple[WorkflowDef, Schedule, str]]:
        out = []
        for defn in self.binding.workflows.values():
            for index, schedule in enumerate(defn.schedules):
                sid = schedule.id or f"{defn.name}-{index}"
                if (schedule.cron is None) == (schedule.every is None):
                    raise ValidationFailed(f"schedule {sid} of workflow {defn.name}: give exactly one of cron and "
                                           "every", hint="e.g. Schedule(cron='*/5 * * * *') or Schedule(every=60)")
                if schedule.cron is not None:
                    _cron(schedule.cron, time.time(), sid)
                try:
                    validate_params(defn, schedule.params)
                except ValidationFailed as exc:
                    raise ValidationFailed(f"schedule {sid}: {exc.message}", hint=exc.hint) from None
                out.append((defn, schedule, sid))
        return out

    async def _schedule_loop(self, defn: WorkflowDef, schedule: Schedule, sid: str) -> None:
        start = time.time()
        fires = 0
        cron = _cron(schedule.cron, start, sid) if schedule.cron else None
        while True:
            fires += 1
            due = cron.get_next(float) if cron is not None else start + fires * schedule.every
            await asyncio.sleep(max(0.0, due - time.time()))
            if self.suspended:
                log.info("schedule %s: the deployment is suspended; no run started", sid)
                continue
            try:
                await self.start_run(defn.name, schedule.params, workflow_id=f"{sid}-{int(due * 1000)}",
                                     started_by=f"schedule {sid}")
            except Exception as exc:  # noqa: BLE001 - one failed start must not end the schedule
                log.warning("schedule %s: starting %s failed: %s", sid, defn.name, exc)


def _cron(expr: str, start: float, sid: str):
    from croniter import croniter

    fields = expr.split()
    try:
        return croniter(expr, datetime.fromtimestamp(start, timezone.utc), second_at_beginning=len(fields) == 6)
    except Exception as exc:  # croniter raises several error types for a bad expression
        raise ValidationFailed(f"schedule {sid}: invalid cron expression {expr!r}: {exc}",
                               hint="5 fields (minute hour day month weekday), or 6 with seconds first") from None


def _owner_alive(owner: str) -> bool:
    if owner in _LIVE_OWNERS:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another host (or container) wrote it; a fresh start there is the only one that can tell
    pid = int(pid_text)
    if pid == os.getpid():
        return False  # our pid, but not a live executor of ours: a previous one in this process that is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _not_found(run_id: str) -> NotFoundError:
    return NotFoundError(f"run {run_id!r} not found",
                         hint="workflows-runs-list lists the runs this app keeps (the oldest finished ones are pruned)")


@hookimpl
def mcp_agent_cloud_executors():
    yield ExecutorSpec(name="asyncio", backend=AsyncioExecutor, supervisor=AsyncioSupervisor,
                       config_model=AsyncioExecutorConfig,
                       description="asyncio tasks in the app process, runs kept in SQLite (not durable: runs in "
                                   "flight when the app stops are reported interrupted)")
