"""``MCPApp``: an MCP server whose workflows are tools, run by the executor the platform selected.

The app runs this code inside its own process (the platform installs this package into the app's venv). The
launcher serves it by duck typing (``__mcp_agent_cloud_app__``) through :meth:`MCPApp.streamable_http_app`, whose
ASGI lifespan builds the in-app executor from ``MCPAC_EXECUTOR``/``MCPAC_EXECUTOR_CONFIG`` (default ``asyncio``),
binds it to the app's workflows and steps, sets it up, and closes it at shutdown. ``python main.py`` calls
:meth:`MCPApp.run` for local development.

Tool names and result shapes follow lastmile-ai mcp-agent (``workflows-list``, ``workflows-<Name>-run``,
``workflows-get_status``, ``workflows-resume``, ...). A failing workflow tool returns an MCP tool error whose text
is JSON ``{"error": CODE, "message": ..., "hint": ...}`` (see :func:`~mcp_agent_cloud.workflows.base.error_payload`).
"""

import contextlib
import hmac
import importlib.util
import inspect
import json
import logging
import os
import warnings
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.tools import Tool
from mcp.types import CallToolResult, TextContent
from pydantic.json_schema import PydanticJsonSchemaWarning
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import ConfigError, ConflictError, MCPAgentCloudError, PluginError, ValidationFailed
from ..hookspecs.types import (
    AppBinding,
    Executor,
    PluginContext,
    RetryPolicy,
    RunRecord,
    RunStatus,
    Schedule,
    SpanData,
    StepDef,
    WorkflowDef,
)
from ..telemetry import TRACEPARENT, Span, Tracer, current_span, parse_traceparent
from .base import (
    STEP_ATTR,
    RateLimiter,
    error_payload,
    function_workflow_def,
    lookup,
    status_dict,
    step_def,
    validate_params,
    workflow_def,
)

log = logging.getLogger(__name__)

CONTROL_PATH = "/_mcpac/control"
DEFAULT_DATA_DIR = ".mcpac-data"
ENV_EXECUTOR = "MCPAC_EXECUTOR"
ENV_EXECUTOR_CONFIG = "MCPAC_EXECUTOR_CONFIG"
ENV_DEPLOYMENT = "MCPAC_DEPLOYMENT"
ENV_DATA_DIR = "MCPAC_APP_DATA_DIR"
ENV_CONTROL_TOKEN = "MCPAC_CONTROL_TOKEN"
ENV_SUSPENDED = "MCPAC_SUSPENDED"
ENV_TRACING = "MCPAC_TRACING"
SPAN_BUFFER = 10_000  # finished spans kept for the platform to fetch; beyond that the oldest go (and are counted)
BATCH_MAX = 1000  # runs one batch call may touch


def _ok(value: Any) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=json.dumps(value))], structured_content=value)


def error_result(exc: BaseException) -> CallToolResult:
    """A failed workflow tool call: an MCP tool error whose text is the JSON error payload."""
    return CallToolResult(content=[TextContent(type="text", text=json.dumps(error_payload(exc)))], is_error=True)


class MCPApp:
    """An MCP app with durable workflows. See docs/workflows.md.

    ``data_dir`` (default ``./.mcpac-data``; on the platform always ``MCPAC_APP_DATA_DIR``) holds the run store of
    executors that keep one. ``executor`` injects an :class:`Executor` instance instead of building one from the
    environment (tests); it is still bound, set up and closed by the app.
    """

    __mcp_agent_cloud_app__ = True

    def __init__(self, name: str = "mcp-app", description: str = "", *, instructions: str | None = None,
                 data_dir: str | Path | None = None, executor: Executor | None = None) -> None:
        self.name = name
        self.description = description
        self.instructions = instructions
        self.workflows: dict[str, WorkflowDef] = {}
        self.steps: dict[str, StepDef] = {}
        self.executor: Executor | None = None
        self.suspended = False
        self.deployment = name
        self._tools: list[tuple[Callable[..., Any], str | None, str | None]] = []
        self._async_tools: dict[str, str | None] = {}  # workflow name -> tool description
        self._data_dir = data_dir
        self._injected = executor
        self._limiters: dict[str, RateLimiter] = {}
        self._control_token: str | None = None
        self.tracer = Tracer()  # makes no spans until _open sees MCPAC_TRACING=1
        self._spans: deque[SpanData] = deque(maxlen=SPAN_BUFFER)
        self._spans_dropped = 0

    # -- decorators ------------------------------------------------------------------------------------------

    def tool(self, fn: Callable[..., Any] | None = None, *, name: str | None = None,
             description: str | None = None) -> Any:
        """A plain MCP tool: ``@app.tool`` or ``@app.tool(name=..., description=...)``."""
        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            self._claim_tool(name or f.__name__)
            self._tools.append((f, name, description))
            return f
        return register(fn) if fn is not None else register

    def step(self, fn: Callable[..., Any] | None = None, *, name: str | None = None, retry: RetryPolicy | None = None,
             timeout: float | None = None) -> Any:
        """A side-effecting step, called from a workflow with ``await self.step(fn, ...)``; retried per ``retry``
        (default: one attempt), ``timeout`` seconds per attempt. The function stays callable as before."""
        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            sd = step_def(f, name=name, retry=retry, timeout=timeout)
            if sd.name in self.steps:
                raise ValueError(f"step {sd.name!r} is registered twice; give one of them another name=")
            self.steps[sd.name] = sd
            setattr(f, STEP_ATTR, sd)
            return f
        return register(fn) if fn is not None else register

    def workflow(self, cls: type | None = None, *, name: str | None = None, description: str | None = None,
                 schedules: list[Schedule] | None = None, priority: int = 0, rate_limit: str | None = None) -> Any:
        """Register a :class:`~mcp_agent_cloud.Workflow` subclass; it becomes tool ``workflows-<Name>-run``."""
        def register(c: type) -> type:
            self._add_workflow(workflow_def(c, name=name, description=description, schedules=schedules,
                                            priority=priority, rate_limit=rate_limit))
            return c
        return register(cls) if cls is not None else register

    def async_tool(self, fn: Callable[..., Any] | None = None, *, name: str | None = None,
                   description: str | None = None, schedules: list[Schedule] | None = None, priority: int = 0,
                   rate_limit: str | None = None) -> Any:
        """An ``async def`` function that runs as a workflow: tool ``NAME(params...)`` starts a run and returns
        its ids at once (the function reaches its run through ``current_run()``)."""
        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            defn = function_workflow_def(f, name=name, description=description, schedules=schedules,
                                         priority=priority, rate_limit=rate_limit)
            self._claim_tool(defn.name)
            self._add_workflow(defn)
            self._async_tools[defn.name] = description
            return f
        return register(fn) if fn is not None else register

    def _add_workflow(self, defn: WorkflowDef) -> None:
        if defn.name in self.workflows:
            raise ValueError(f"workflow {defn.name!r} is registered twice; give one of them another name=")
        self.workflows[defn.name] = defn
        if defn.rate_limit:
            self._limiters[defn.name] = RateLimiter(defn.rate_limit)

    def _claim_tool(self, tool_name: str) -> None:
        taken = {n or f.__name__ for f, n, _ in self._tools} | set(self._async_tools)
        if tool_name in taken or tool_name.startswith("workflows-"):
            raise ValueError(f"tool name {tool_name!r} is taken (names starting with 'workflows-' are reserved)")

    # -- operations (what the tools call; usable from code too) ----------------------------------------------

    def _ready(self) -> Executor:
        if self.executor is None:
            raise PluginError(f"the workflow executor of app {self.name!r} is not running",
                              hint="serve the app (app.run(), or the platform's launcher): its ASGI lifespan starts "
                                   "the executor")
        return self.executor

    async def start(self, workflow: str, params: Mapping[str, Any] | None = None, *, workflow_id: str | None = None,
                    priority: int | None = None) -> RunRecord:
        """Start a run: validated params, suspension and rate limit checked. Raises the errors the tools report."""
        executor = self._ready()
        defn = lookup(self.workflows, workflow)
        if self.suspended:
            short = self.deployment.split(".", 1)[-1]
            raise ConflictError(f"deployment {self.deployment} is suspended: it accepts no new runs",
                                hint=f"lift it with `mcp-agent workflows unsuspend {short}` "
                                     f"(POST /api/v1/agents/{short}/resume)")
        valid = validate_params(defn, params)
        limiter = self._limiters.get(defn.name)
        if limiter is not None:
            limiter.take(defn.name)
        record = await executor.start_run(defn.name, valid, workflow_id=workflow_id, priority=priority)
        _tag_run(record.run_id)
        return record

    async def _run_id(self, run_id: str | None, workflow_id: str | None) -> str:
        if run_id:
            return run_id
        if workflow_id:
            return (await self._ready().status(workflow_id=workflow_id)).run_id
        raise ValidationFailed("give run_id or workflow_id", hint="workflows-runs-list shows the runs and their ids")

    async def set_suspended(self, suspended: bool) -> None:
        self.suspended = suspended
        hook = getattr(self.executor, "set_suspended", None)
        if hook is not None:  # optional: an executor with schedules stops starting runs while suspended
            await hook(suspended)

    async def active_runs(self) -> int:
        executor = self._ready()
        count = 0
        for status in ("running", "paused"):
            token = None
            while True:
                page = await executor.list_runs(status=status, limit=1000, page_token=token)
                count += len(page.runs)
                token = page.next_page_token
                if not token:
                    break
        return count

    # -- tools -----------------------------------------------------------------------------------------------

    def _tool_objects(self) -> list[Tool]:
        tools = [Tool.from_function(f, name=n, description=d) for f, n, d in self._tools]
        for fn, tool_name, description in self._workflow_tools():
            tools.append(Tool.from_function(fn, name=tool_name, description=description))
        for defn in self.workflows.values():
            tools.append(self._run_tool(defn))
            if defn.name in self._async_tools:
                tools.append(self._async_tool(defn))
        return tools

    def _run_tool(self, defn: WorkflowDef) -> Tool:
        model = defn.input_model
        required = model is not None and any(f.is_required() for f in model.model_fields.values())

        # Two functions, one tool: the published input schema comes from a signature annotated with the model
        # derived from run() (so clients see every run parameter), while the call takes a plain dict and validates
        # it itself, so a bad parameter is reported as our JSON error naming the field.
        async def schema_fn(run_parameters):  # pragma: no cover - never called, only inspected
            raise NotImplementedError

        async def call(run_parameters: dict[str, Any] | None = None) -> CallToolResult:
            try:
                record = await self.start(defn.name, run_parameters)
            except Exception as exc:
                return self._failed(exc, f"workflows-{defn.name}-run")
            return _ok(_ids(record))

        schema_fn.__annotations__ = {"run_parameters": model or dict[str, Any]}
        if not required:
            schema_fn.__defaults__ = (None,)
            schema_fn.__annotations__["run_parameters"] = (model or dict[str, Any]) | None
        name = f"workflows-{defn.name}-run"
        description = (f"Start a run of workflow {defn.name}. {defn.description}".strip() +
                       "\nReturns workflow_id and run_id at once; follow the run with workflows-get_status, "
                       "send it signals with workflows-resume.")
        schema = Tool.from_function(schema_fn, name=name).parameters
        return Tool.from_function(call, name=name, description=description).model_copy(update={"parameters": schema})

    def _async_tool(self, defn: WorkflowDef) -> Tool:
        fn = defn.cls.__mcpac_function__

        async def call(**params: Any) -> CallToolResult:
            try:
                given = {k: v for k, v in params.items() if v is not _MISSING}
                record = await self.start(defn.name, given)
            except Exception as exc:
                return self._failed(exc, defn.name)
            return _ok(_ids(record))

        # As for workflows-<Name>-run: the schema is fn's signature, the call takes anything (every parameter
        # Any, absent ones marked _MISSING) and validates it through the workflow's input model, so bad input
        # is our JSON error naming the field.
        sig = inspect.signature(fn)
        call.__name__ = fn.__name__
        call.__signature__ = sig.replace(
            parameters=[p.replace(annotation=Any, default=_MISSING) for p in sig.parameters.values()
                        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)],
            return_annotation=CallToolResult)
        description = self._async_tools.get(defn.name) or (
            f"{defn.description}\nRuns as workflow {defn.name}: returns workflow_id and run_id at once; the result "
            "comes from workflows-get_status.").strip()
        schema = Tool.from_function(_with_globals(_schema_only(fn), fn), name=defn.name).parameters
        with warnings.catch_warnings():  # the _MISSING defaults have no JSON form; that schema is replaced anyway
            warnings.simplefilter("ignore", PydanticJsonSchemaWarning)
            tool = Tool.from_function(call, name=defn.name, description=description)
        return tool.model_copy(update={"parameters": schema})

    def _failed(self, exc: BaseException, tool: str) -> CallToolResult:
        if not isinstance(exc, MCPAgentCloudError):
            log.exception("tool %s failed", tool)
        return error_result(exc)

    def _workflow_tools(self) -> list[tuple[Callable[..., Awaitable[CallToolResult]], str, str]]:
        app = self

        def tool(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[CallToolResult]]:
            async def wrapper(*args: Any, **kwargs: Any) -> CallToolResult:
                try:
                    return _ok(await fn(*args, **kwargs))
                except Exception as exc:
                    return app._failed(exc, fn.__name__)
            wrapper.__signature__ = inspect.signature(fn).replace(return_annotation=CallToolResult)
            wrapper.__name__ = fn.__name__
            return wrapper

        async def workflows_list() -> dict[str, Any]:
            return {"workflows": [{
                "name": d.name, "description": d.description, "run_tool": f"workflows-{d.name}-run",
                "tool": d.name if d.name in self._async_tools else None,
                "input_schema": d.input_model.model_json_schema() if d.input_model else {"type": "object"},
                "schedules": [s.model_dump(exclude_none=True) for s in d.schedules],
                "priority": d.priority, "rate_limit": d.rate_limit,
            } for d in self.workflows.values()]}

        async def workflows_runs_list(limit: int = 100, page_size: int | None = None,
                                      next_page_token: str | None = None, status: RunStatus | None = None,
                                      workflow_name: str | None = None) -> dict[str, Any]:
            page = await self._ready().list_runs(status=status, workflow=workflow_name, limit=page_size or limit,
                                                 page_token=next_page_token)
            return {"runs": [status_dict(r) for r in page.runs], "next_page_token": page.next_page_token}

        async def workflows_run(workflow_name: str, run_parameters: dict[str, Any] | None = None,
                                workflow_id: str | None = None, priority: int | None = None) -> dict[str, Any]:
            return _ids(await self.start(workflow_name, run_parameters, workflow_id=workflow_id, priority=priority))

        async def workflows_get_status(run_id: str | None = None, workflow_id: str | None = None,
                                       include_history: bool = False) -> dict[str, Any]:
            if not run_id and not workflow_id:
                raise ValidationFailed("give run_id or workflow_id")
            record = await self._ready().status(run_id or None, workflow_id=workflow_id, history=include_history)
            return status_dict(record, history=include_history)

        async def workflows_resume(run_id: str | None = None, workflow_id: str | None = None,
                                   signal_name: str = "resume", payload: Any = None) -> dict[str, Any]:
            rid = _tag_run(await self._run_id(run_id, workflow_id))
            return status_dict(await self._ready().signal(rid, signal_name or "resume", payload))

        async def workflows_pause(run_id: str | None = None, workflow_id: str | None = None) -> dict[str, Any]:
            return status_dict(await self._ready().pause(_tag_run(await self._run_id(run_id, workflow_id))))

        async def workflows_cancel(run_id: str | None = None, workflow_id: str | None = None) -> dict[str, Any]:
            return status_dict(await self._ready().cancel(_tag_run(await self._run_id(run_id, workflow_id))))

        async def workflows_batch(action: Literal["run", "cancel", "pause", "resume"],
                                  workflow_name: str | None = None, status: RunStatus | None = None,
                                  run_ids: list[str] | None = None, runs: list[dict[str, Any]] | None = None,
                                  signal_name: str = "resume", payload: Any = None) -> dict[str, Any]:
            return {"results": await self._batch(action, workflow_name, status, run_ids, runs, signal_name, payload)}

        return [
            (tool(workflows_list), "workflows-list",
             "List the workflows of this app with their input schemas, schedules, priority and rate limit."),
            (tool(workflows_runs_list), "workflows-runs-list",
             "List runs, newest first; filter by status (running, paused, completed, error, cancelled, "
             "interrupted) and workflow_name; page with next_page_token."),
            (tool(workflows_run), "workflows-run",
             "Start a run of workflow_name with run_parameters; returns workflow_id, run_id and execution_id."),
            (tool(workflows_get_status), "workflows-get_status",
             "Status of a run (by run_id, or the latest run of workflow_id): status, state, result, error, "
             "waiting_for (the signal a paused run waits for); include_history adds its events."),
            (tool(workflows_resume), "workflows-resume",
             "Send a signal to a run: signal_name (default 'resume', which also lifts a pause) with an optional "
             "payload, e.g. a human's decision. Returns the run's status."),
            (tool(workflows_pause), "workflows-pause",
             "Pause a run: it holds at its next pause point until workflows-resume."),
            (tool(workflows_cancel), "workflows-cancel", "Cancel a run."),
            (tool(workflows_batch), "workflows-batch",
             "One action on many runs: run (workflow_name + runs: a list of run_parameters), or cancel, pause, "
             "resume (run_ids, or every active run matching workflow_name and status)."),
        ]

    async def _batch(self, action: str, workflow_name: str | None, status: str | None, run_ids: list[str] | None,
                     runs: list[dict[str, Any]] | None, signal_name: str, payload: Any) -> list[dict[str, Any]]:
        executor = self._ready()
        results: list[dict[str, Any]] = []
        if action == "run":
            if not workflow_name or runs is None:
                raise ValidationFailed("batch run needs workflow_name and runs (a list of run_parameters objects)")
            if len(runs) > BATCH_MAX:
                raise ValidationFailed(f"batch run takes at most {BATCH_MAX} runs")
            for index, params in enumerate(runs):
                try:
                    record = await self.start(workflow_name, params)
                except Exception as exc:
                    results.append({"index": index, "run_id": None, "ok": False, "error": error_payload(exc)})
                else:
                    results.append({"index": index, "ok": True, **_ids(record)})
            return results
        if run_ids is None:
            if not workflow_name and not status:
                raise ValidationFailed(f"batch {action} needs run_ids, or workflow_name and/or status to select runs")
            run_ids = []
            for st in [status] if status else ["running", "paused"]:
                token = None
                while len(run_ids) < BATCH_MAX:
                    page = await executor.list_runs(status=st, workflow=workflow_name, limit=200, page_token=token)
                    run_ids += [r.run_id for r in page.runs]
                    token = page.next_page_token
                    if not token:
                        break
        for rid in run_ids[:BATCH_MAX]:
            try:
                if action == "cancel":
                    record = await executor.cancel(rid)
                elif action == "pause":
                    record = await executor.pause(rid)
                elif action == "resume":
                    record = await executor.signal(rid, signal_name or "resume", payload)
                else:
                    raise ValidationFailed(f"unknown batch action {action!r}: use run, cancel, pause or resume")
            except Exception as exc:
                results.append({"run_id": rid, "ok": False, "error": error_payload(exc)})
            else:
                results.append({"run_id": rid, "ok": True, "status": record.status})
        return results

    # -- serving ---------------------------------------------------------------------------------------------

    def build_server(self) -> MCPServer:
        """A fresh mcp SDK ``MCPServer`` with this app's tools and the control route."""
        server = MCPServer(self.name, description=self.description or None, instructions=self.instructions,
                           tools=self._tool_objects(), middleware=[self._trace_tool_call])
        server.custom_route(CONTROL_PATH, methods=["GET", "POST"], include_in_schema=False)(self._control)
        server.custom_route(CONTROL_PATH + "/spans", methods=["GET"], include_in_schema=False)(self._control_spans)
        return server

    async def _trace_tool_call(self, ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        """mcp SDK middleware: a ``tools/call NAME`` server span around each tool call, the child of the caller's
        ``traceparent``. It runs in the handler's task, so the span is current in the tool (and in the runs the
        tool starts, which copy the context)."""
        tracer = self.tracer
        if ctx.method != "tools/call" or not tracer.enabled:
            return await call_next(ctx)
        name = ctx.params.get("name") if isinstance(ctx.params, Mapping) else None
        name = name if isinstance(name, str) else None
        attributes = {"mcp.method.name": ctx.method, "gen_ai.tool.name": name,
                      "jsonrpc.request.id": None if ctx.request_id is None else str(ctx.request_id)}
        with tracer.span(f"tools/call {name}" if name else "tools/call", kind="server",
                         parent=_incoming_parent(ctx), attributes=attributes) as span:
            result = await call_next(ctx)
            if span is not None and _is_tool_error(result):
                span.set("error.type", _error_code(result))
                span.fail("tool error")
            return result

    def _keep_span(self, span: SpanData) -> None:
        if len(self._spans) == self._spans.maxlen:  # nobody fetched them for a while: the oldest go
            self._spans_dropped += 1
        self._spans.append(span)

    def streamable_http_app(self, streamable_http_path: str = "/mcp", host: str = "127.0.0.1") -> Any:
        """The ASGI app serving the tools at ``streamable_http_path``; its lifespan runs the executor."""
        app = self.build_server().streamable_http_app(streamable_http_path=streamable_http_path, host=host)
        inner = app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(asgi_app: Any):
            await self._open()
            try:
                async with inner(asgi_app) as state:
                    yield state
            finally:
                await self._close()

        app.router.lifespan_context = lifespan
        return app

    def run(self, host: str | None = None, port: int | None = None, path: str = "/mcp",
            log_level: str = "info") -> None:
        """Serve the app for local development (``python main.py``): ``HOST``/``PORT`` env or 127.0.0.1:8000."""
        import uvicorn

        host = host or os.environ.get("HOST", "127.0.0.1")
        port = port or int(os.environ.get("PORT", "8000"))
        print(f"{self.name}: serving MCP at http://{host}:{port}{path}", flush=True)
        uvicorn.run(self.streamable_http_app(streamable_http_path=path, host=host), host=host, port=port,
                    log_level=log_level, lifespan="on")

    def _data_path(self) -> Path:
        env = os.environ.get(ENV_DATA_DIR)
        # the platform's directory wins: it is the one that survives versions and restarts
        return Path(env or self._data_dir or DEFAULT_DATA_DIR).resolve()

    def _build_executor(self, data_dir: Path) -> Executor:
        from ..manager import load_plugin_manager

        name = os.environ.get(ENV_EXECUTOR) or "asyncio"
        raw = os.environ.get(ENV_EXECUTOR_CONFIG) or "{}"
        try:
            options = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{ENV_EXECUTOR_CONFIG} is not valid JSON: {exc}",
                              hint="the platform sets it from the executor's config; check `executor:` there") \
                from None
        if not isinstance(options, dict):
            raise ConfigError(f"{ENV_EXECUTOR_CONFIG} must be a JSON object, got {type(options).__name__}")
        pm = load_plugin_manager()
        spec = pm.get_executor(name)
        return pm.build(spec, options, PluginContext(data_dir=data_dir))

    async def _open(self) -> None:
        data_dir = self._data_path()
        self.deployment = os.environ.get(ENV_DEPLOYMENT) or self.name
        self._control_token = os.environ.get(ENV_CONTROL_TOKEN) or None
        self.tracer = Tracer(self._keep_span, service=self.deployment) if os.environ.get(ENV_TRACING) == "1" \
            else Tracer()
        if self.tracer.enabled and importlib.util.find_spec("opentelemetry") is not None:
            from .otel_bridge import install

            install(self._keep_span, self.deployment)  # the app's own OpenTelemetry spans join its traces
        executor = self._injected or self._build_executor(data_dir)
        executor.tracer = self.tracer  # type: ignore[attr-defined] - executors make the run and step spans
        executor.bind(AppBinding(app_name=self.name, deployment=self.deployment, data_dir=data_dir,
                                 workflows=self.workflows, steps=self.steps))
        try:
            await executor.setup()
        except BaseException:
            with contextlib.suppress(Exception):  # release what a half-done setup opened; its error is the news
                await executor.aclose()
            raise
        self.executor = executor
        await self.set_suspended(os.environ.get(ENV_SUSPENDED) == "1")
        log.info("app %s: executor %s ready (%d workflows, data in %s)", self.name,
                 executor.spec_name or type(executor).__name__, len(self.workflows), data_dir)

    async def _close(self) -> None:
        executor, self.executor = self.executor, None
        if executor is not None:
            await executor.aclose()

    def _refused(self, request: Request) -> JSONResponse | None:
        token = self._control_token
        if not token:  # outside the platform there is no control route at all
            return JSONResponse({"error": "not_found", "message": "not found"}, status_code=404)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            return JSONResponse({"error": "unauthorized", "message": "a valid control token is required"},
                                status_code=401)
        return None

    async def _control_spans(self, request: Request) -> JSONResponse:
        """The spans finished since the last call, each handed over once (the platform passes them on)."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        spans, buffer = [], self._spans
        while buffer:  # popleft, not list()+clear(): a span may end in another thread meanwhile
            spans.append(buffer.popleft().model_dump(mode="json"))
        dropped, self._spans_dropped = self._spans_dropped, 0
        return JSONResponse({"spans": spans, "dropped": dropped})

    async def _control(self, request: Request) -> JSONResponse:
        refused = self._refused(request)
        if refused is not None:
            return refused
        if request.method == "POST":
            try:
                body = json.loads(await request.body() or b"{}")
            except json.JSONDecodeError:
                body = None
            if not isinstance(body, dict) or not isinstance(body.get("suspended"), bool):
                return JSONResponse({"error": "invalid_request",
                                     "message": 'the body must be JSON {"suspended": true|false}'}, status_code=400)
            await self.set_suspended(body["suspended"])
        try:
            active = await self.active_runs()
        except MCPAgentCloudError as exc:
            return JSONResponse(exc.to_dict(), status_code=exc.status)
        return JSONResponse({"suspended": self.suspended, "active_runs": active})


def _incoming_parent(ctx: Any) -> Any:
    """The caller's trace context: the HTTP ``traceparent`` header (the gateway sets it), else ``_meta``'s."""
    headers = getattr(ctx.request, "headers", None)
    value = headers.get(TRACEPARENT) if headers is not None else None
    if not value and isinstance(ctx.meta, Mapping):
        value = ctx.meta.get(TRACEPARENT)
    return parse_traceparent(value) if isinstance(value, str) else None


def _is_tool_error(result: Any) -> bool:
    if isinstance(result, CallToolResult):
        return bool(result.is_error)
    return isinstance(result, dict) and result.get("isError") is True


def _error_code(result: Any) -> str:
    """The code of our JSON tool error (``not_found``, ``rate_limited``...), else ``tool_error``."""
    content = result.content if isinstance(result, CallToolResult) else result.get("content") or []
    for item in content:
        text = getattr(item, "text", None) if not isinstance(item, dict) else item.get("text")
        try:
            code = json.loads(text or "").get("error")
        except (ValueError, AttributeError):
            continue
        if isinstance(code, str):
            return code
    return "tool_error"


def _tag_run(run_id: str) -> str:
    """Name the run on the current tool call's span, so ``traces?run=RUN_ID`` finds that call's trace too."""
    span = current_span()
    if isinstance(span, Span) and span.kind == "server" and "run.id" not in span.attributes:
        span.set("run.id", run_id)
    return run_id


def _ids(record: RunRecord) -> dict[str, Any]:
    return {"workflow_id": record.workflow_id, "run_id": record.run_id, "execution_id": record.run_id}


_MISSING: Any = type("_Missing", (), {"__repr__": lambda self: "<missing>"})()


def _schema_only(fn: Callable[..., Any]) -> Callable[..., Any]:
    async def schema_fn(*args: Any, **kwargs: Any) -> CallToolResult:  # pragma: no cover - only inspected
        raise NotImplementedError
    schema_fn.__name__ = fn.__name__
    schema_fn.__signature__ = inspect.signature(fn)
    return schema_fn


def _with_globals(call: Callable[..., Any], fn: Callable[..., Any]) -> Callable[..., Any]:
    """``call`` carries ``fn``'s annotations, which may be strings (``from __future__ import annotations``) naming
    types of fn's module: resolve them there, so the SDK can evaluate the signature."""
    import typing

    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # unresolvable: leave them as written; the SDK reports it
        return call
    sig = inspect.signature(fn)
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()]
    call.__signature__ = sig.replace(parameters=params, return_annotation=CallToolResult)
    call.__annotations__ = {**{k: v for k, v in hints.items() if k != "return"}, "return": CallToolResult}
    return call
