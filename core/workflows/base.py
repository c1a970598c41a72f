"""The executor-independent half of workflows: the :class:`Workflow` base class, ``current_run()``, the input
model derived from ``run()``, and how any executor runs a :class:`WorkflowDef` (:func:`execute`).

Executors (asyncio, temporal) import this module; it imports neither the mcp SDK nor an executor, so it is
cheap and safe to use inside a Temporal workflow sandbox.
"""

from __future__ import annotations

import contextvars
import dataclasses
import inspect
import json
import math
import re
import time
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from ..errors import MCPAgentCloudError, NotFoundError, RateLimited, ValidationFailed
from ..hookspecs.types import RetryPolicy, RunContext, RunRecord, Schedule, StepDef, WorkflowDef
from ..telemetry import Span

__all__ = [
    "Workflow", "current_run", "execute", "input_model_for", "workflow_def", "function_workflow_def", "step_def",
    "step_of", "step_retry", "validate_params", "status_dict", "error_payload", "parse_rate_limit", "RateLimiter",
    "NO_RETRY", "RUN_SPAN", "STEP_SPAN", "run_attributes", "end_run_span",
]

_current: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar("mcp_agent_cloud_current_run",
                                                                            default=None)

# A step without ``retry=`` runs once: retrying a side effect must be the author's explicit choice. Every executor
# uses step_retry() so asyncio and temporal agree (Temporal's own default would retry forever).
NO_RETRY = RetryPolicy(max_attempts=1)

STEP_ATTR = "__mcpac_step__"


def current_run() -> RunContext:
    """The :class:`RunContext` of the workflow run this code executes in (for ``@app.async_tool`` functions and
    helpers they call). Raises :class:`RuntimeError` outside a run."""
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("current_run() called outside a workflow run: it works only in code a workflow's run() "
                           "or an @app.async_tool function calls")
    return ctx


class Workflow:
    """Base class of ``@app.workflow`` classes. Override ``async def run(self, ...)``; its parameters (with type
    annotations) become the input schema of the workflow's tools.

    The executor makes one instance per run (``cls()``, no arguments) and binds :attr:`context` before ``run``.
    """

    context: RunContext

    async def run(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - always overridden
        raise NotImplementedError(f"{type(self).__name__} must define `async def run(self, ...)`")

    @property
    def run_id(self) -> str:
        return self.context.run_id

    @property
    def workflow_id(self) -> str:
        return self.context.workflow_id

    def update_state(self, **values: Any) -> None:
        """Publish progress: merged into the run's ``state`` (shown by ``workflows-get_status``). JSON values."""
        self.context.update_state(**values)

    async def wait_for_signal(self, name: str, timeout: float | None = None) -> Any:
        """Wait for signal ``name`` (e.g. a human's approval sent with ``workflows-resume``) and return its
        payload. The run shows ``paused`` with ``waiting_for=name`` meanwhile."""
        return await self.context.wait_for_signal(name, timeout)

    async def step(self, fn: Callable[..., Any] | StepDef, *args: Any, **kwargs: Any) -> Any:
        """Run a side-effecting step (an ``@app.step`` function, or any function: then once, without retries)."""
        return await self.context.run_step(step_of(fn), args, kwargs)

    async def sleep(self, seconds: float) -> None:
        await self.context.sleep(seconds)


async def execute(defn: WorkflowDef, ctx: RunContext, params: Mapping[str, Any]) -> Any:
    """Run one workflow run: what every executor calls inside its task (asyncio) or workflow (temporal).

    Re-validates ``params`` (stored as JSON) through the input model so ``run()`` gets typed values, makes the
    instance, binds ``ctx`` and sets ``current_run()`` for the duration."""
    kwargs = _typed_kwargs(defn, params)
    instance = defn.cls()
    instance.context = ctx
    token = _current.set(ctx)
    try:
        return await instance.run(**kwargs)
    finally:
        _current.reset(token)


def _typed_kwargs(defn: WorkflowDef, params: Mapping[str, Any]) -> dict[str, Any]:
    if defn.input_model is None:
        return dict(params)
    model = _validate(defn, params)
    kwargs = {name: getattr(model, name) for name in type(model).model_fields}
    kwargs.update(model.model_extra or {})  # run(**kwargs) takes extra keys
    return kwargs


# -- input models ----------------------------------------------------------------------------------------------

def input_model_for(fn: Callable[..., Any], name: str, *, skip_first: bool = False) -> type[BaseModel]:
    """A pydantic model of ``fn``'s parameters (``run(self, ...)`` with ``skip_first``): annotation (``Any`` when
    missing) and default of each. ``**kwargs`` lets unknown keys through; otherwise they are an error."""
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # an annotation that does not resolve: fall back to the raw (string) annotations
        hints = {}
    params = list(sig.parameters.values())
    if skip_first and params:
        params = params[1:]
    fields: dict[str, Any] = {}
    extra = "forbid"
    for p in params:
        if p.kind is p.VAR_KEYWORD:
            extra = "allow"
            continue
        if p.kind is p.VAR_POSITIONAL:
            continue
        if p.kind is p.POSITIONAL_ONLY:
            raise TypeError(f"workflow {name!r}: parameter {p.name!r} is positional-only; run parameters are passed "
                            "by name, so drop the '/' from the signature")
        if p.name.startswith("_"):
            raise TypeError(f"workflow {name!r}: parameter {p.name!r} starts with '_', which pydantic cannot use "
                            "as a field name; rename it")
        annotation = hints.get(p.name, Any if p.annotation is p.empty else p.annotation)
        fields[p.name] = (annotation, ... if p.default is p.empty else p.default)
    model_name = re.sub(r"\W", "_", name) + "RunParameters"
    return create_model(model_name, __config__=ConfigDict(extra=extra), **fields)


def _validate(defn: WorkflowDef, params: Mapping[str, Any] | None) -> BaseModel:
    assert defn.input_model is not None
    if params is not None and not isinstance(params, Mapping):
        raise ValidationFailed(f"invalid run_parameters for {defn.name}: expected an object of named parameters, "
                               f"got {type(params).__name__}", hint=_schema_hint(defn))
    try:
        return defn.input_model.model_validate(dict(params or {}))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
                             for err in exc.errors())
        raise ValidationFailed(f"invalid run_parameters for {defn.name}: {problems}", hint=_schema_hint(defn)) \
            from None


def _schema_hint(defn: WorkflowDef) -> str:
    return f"see the input schema of tool workflows-{defn.name}-run (workflows-list shows it)"


def validate_params(defn: WorkflowDef, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate run parameters; return them as JSON-ready values (what executors store and pass around).
    Raises :class:`ValidationFailed` naming each bad field."""
    if defn.input_model is None:
        return dict(params or {})
    return _validate(defn, params).model_dump(mode="json")


# -- definitions -----------------------------------------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _check_name(name: str) -> None:
    # the name becomes part of a tool name (workflows-<Name>-run) and of URLs of the platform API
    if not _NAME.match(name or ""):
        raise ValueError(f"invalid workflow name {name!r}: use letters, digits, '_', '-' or '.'")


def _check_async(fn: Callable[..., Any], what: str) -> None:
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"{what} must be an `async def` function: a workflow runs on the event loop, and blocking "
                        "work belongs in a step (`await self.step(fn, ...)`; sync steps run in a thread)")


def workflow_def(cls: type, *, name: str | None = None, description: str | None = None,
                 schedules: list[Schedule] | None = None, priority: int = 0,
                 rate_limit: str | None = None) -> WorkflowDef:
    """The :class:`WorkflowDef` of a :class:`Workflow` subclass (what ``@app.workflow`` registers)."""
    if not (isinstance(cls, type) and issubclass(cls, Workflow)):
        raise TypeError(f"@app.workflow expects a subclass of mcp_agent_cloud.Workflow, got {cls!r}")
    if cls.run is Workflow.run:
        raise TypeError(f"workflow class {cls.__name__} must define `async def run(self, ...)`")
    wf_name = name or cls.__name__
    _check_name(wf_name)
    _check_async(cls.run, f"{cls.__name__}.run")
    if rate_limit is not None:
        parse_rate_limit(rate_limit)
    return WorkflowDef(name=wf_name, cls=cls, description=description or inspect.getdoc(cls) or "",
                       input_model=input_model_for(cls.run, wf_name, skip_first=True),
                       schedules=list(schedules or []), priority=priority, rate_limit=rate_limit)


def function_workflow_def(fn: Callable[..., Any], *, name: str | None = None, description: str | None = None,
                          schedules: list[Schedule] | None = None, priority: int = 0,
                          rate_limit: str | None = None) -> WorkflowDef:
    """A workflow whose run is ``fn(**params)`` (what ``@app.async_tool`` registers); ``fn`` reaches its run
    through :func:`current_run`."""
    wf_name = name or fn.__name__
    _check_name(wf_name)
    _check_async(fn, f"@app.async_tool function {fn.__name__}")

    async def run(self: Workflow, **params: Any) -> Any:
        return await fn(**params)

    cls = type(f"{re.sub(r'[^0-9A-Za-z_]', '_', wf_name)}Workflow", (Workflow,),
               {"run": run, "__module__": fn.__module__, "__doc__": fn.__doc__, "__mcpac_function__": fn})
    if rate_limit is not None:
        parse_rate_limit(rate_limit)
    return WorkflowDef(name=wf_name, cls=cls, description=description or inspect.getdoc(fn) or "",
                       input_model=input_model_for(fn, wf_name), schedules=list(schedules or []),
                       priority=priority, rate_limit=rate_limit)


def step_def(fn: Callable[..., Any], *, name: str | None = None, retry: RetryPolicy | None = None,
             timeout: float | None = None) -> StepDef:
    return StepDef(name=name or _qualified(fn), fn=fn, retry=retry, timeout=timeout)


def step_of(fn: Callable[..., Any] | StepDef) -> StepDef:
    """The :class:`StepDef` of an ``@app.step`` function (or a StepDef); a plain function becomes a one-shot step
    named ``module.qualname``."""
    if isinstance(fn, StepDef):
        return fn
    found = getattr(fn, STEP_ATTR, None)
    if isinstance(found, StepDef):
        return found
    if not callable(fn):
        raise TypeError(f"step expects a function or an @app.step function, got {fn!r}")
    return step_def(fn)


def step_retry(step: StepDef) -> RetryPolicy:
    return step.retry or NO_RETRY


def _qualified(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', getattr(fn, '__name__', repr(fn)))}"


# -- results and errors ----------------------------------------------------------------------------------------

def status_dict(record: RunRecord, *, history: bool = False) -> dict[str, Any]:
    """The shape of ``workflows-get_status`` (mcp-agent's keys, plus ours)."""
    out = {"id": record.run_id, "workflow_id": record.workflow_id, "run_id": record.run_id, "name": record.name,
           "status": record.status, "running": record.running, "state": record.state, "result": record.result,
           "error": record.error, "waiting_for": record.waiting_for, "params": record.params,
           "priority": record.priority, "created_at": record.created_at, "updated_at": record.updated_at}
    if history:
        out["history"] = record.history
    return out


def error_payload(exc: BaseException) -> dict[str, Any]:
    """The JSON body of a workflow tool error: ``{"error": CODE, "message": ..., "hint"?: ...}``."""
    if isinstance(exc, MCPAgentCloudError):
        return exc.to_dict()
    if isinstance(exc, TimeoutError):
        return {"error": "timeout", "message": str(exc) or "timed out"}
    return {"error": "internal_error", "message": f"{type(exc).__name__}: {exc}",
            "hint": "see the app's logs (`mcp-agent logs NAME`)"}


def to_json(value: Any) -> Any:
    """``value`` as JSON-ready data (pydantic models, dataclasses, sets...); what run results and state become."""
    from pydantic_core import to_jsonable_python

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(to_jsonable_python(value, fallback=str)))


# -- tracing ---------------------------------------------------------------------------------------------------

# Span names both executors use: "workflow.run NAME" covers a run from its start to its end, "workflow.step NAME"
# one attempt of a step. Attribute run.id is what `GET .../traces?run=RUN_ID` looks for.
RUN_SPAN = "workflow.run"
STEP_SPAN = "workflow.step"


def run_attributes(workflow: str, run_id: str, workflow_id: str) -> dict[str, Any]:
    return {"workflow.name": workflow, "run.id": run_id, "workflow.id": workflow_id}


def end_run_span(span: Span | None, status: str, error: str | None = None, end_ns: int | None = None) -> None:
    """End a run's span with the run's final status; only a failed or interrupted run is an error."""
    if span is None:
        return
    span.set("run.status", status)
    if status in ("error", "interrupted"):
        span.fail(error or status)
    span.end(end_ns)


# -- rate limits -----------------------------------------------------------------------------------------------

_PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour)s?\s*$")


def parse_rate_limit(spec: str) -> tuple[int, float]:
    """``"10/minute"`` -> ``(10, 60.0)``."""
    m = _RATE.match(spec or "")
    if not m or int(m.group(1)) < 1:
        raise ValueError(f"invalid rate_limit {spec!r}: expected 'N/second', 'N/minute' or 'N/hour' with N >= 1")
    return int(m.group(1)), _PERIODS[m.group(2)]


class RateLimiter:
    """A token bucket per workflow: ``N`` starts at once, refilled at ``N`` per period."""

    def __init__(self, spec: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self.capacity, self.period = parse_rate_limit(spec)
        self._clock = clock
        self._tokens = float(self.capacity)
        self._last = clock()

    def take(self, workflow: str) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.capacity / self.period)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return
        wait = math.ceil((1 - self._tokens) * self.period / self.capacity)
        raise RateLimited(f"workflow {workflow} is rate limited to {self.spec}: retry in {wait} s",
                          hint=f"wait {wait} s before starting another run", retry_after=wait)


def lookup(workflows: Mapping[str, WorkflowDef], name: str) -> WorkflowDef:
    defn = workflows.get(name)
    if defn is None:
        known = ", ".join(sorted(workflows)) or "(none)"
        raise NotFoundError(f"unknown workflow {name!r}; this app has: {known}",
                            hint="workflows-list shows the workflows and their input schemas")
    return defn
