"""The platform's side of workflows: it calls the ``workflows-*`` tools of the serving app instance.

Workflows run inside the app processes (the MCPApp runtime and its executor); the platform owns no run state. The
REST routes and the CLI reach runs through here: one MCP client session (the mcp SDK, straight to the instance's
internal URL, like the health check) per call. A tool error whose text is the JSON of an
:class:`~mcp_agent_cloud.errors.MCPAgentCloudError` (``{"error": CODE, "message", "hint"}``) is raised again as the
same error class, so a 404 in the app is a 404 of the API.

Apps built on the lastmile-ai mcp-agent framework serve tools of the same names with other shapes (its workflows-list
is an object keyed by workflow name, its workflows-runs-list a plain list without filters, its workflows-run a
required ``kwargs`` field, FastMCP 1.x's reading of ``**kwargs``); :func:`workflows_of`, :func:`runs_of` and
:func:`fit_arguments` turn them into the platform's shapes here, in one place, so the REST routes and the CLI work the
same for both kinds of app.

``run_id -> deployment`` is remembered in a small LRU filled by starts and listings; on a miss the caller's org's
running app deployments are asked (``workflows-get_status``) concurrently.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import OrderedDict
from typing import Any

from ..errors import ConflictError, ForbiddenError, MCPAgentCloudError, NotFoundError, ValidationFailed
from ..hookspecs.types import DeploymentRecord, Identity

log = logging.getLogger("mcp_agent_cloud.platform")

INDEX_SIZE = 10_000
CALL_TIMEOUT = 120.0
LOCATE_TIMEOUT = 15.0
ACTIONS = {"pause": "workflows-pause", "resume": "workflows-resume", "cancel": "workflows-cancel",
           "stop": "workflows-cancel"}
NO_WORKFLOWS_HINT = ("its app must serve the workflows tools: build it with `from mcp_agent_cloud import MCPApp` "
                     "(or lastmile-ai mcp-agent's MCPApp)")


def no_tool_hint(tool: str) -> str:
    """The hint of a missing workflows tool: pause and batch are ours only, so a framework app lacks just them."""
    if tool in ("workflows-pause", "workflows-batch"):
        return (f"apps built with lastmile-ai mcp-agent serve no {tool} (only apps built with `from mcp_agent_cloud "
                "import MCPApp` do); resume and cancel work on both")
    return NO_WORKFLOWS_HINT


def _error_classes() -> dict[str, type[MCPAgentCloudError]]:
    """Every error class by its ``code`` (subclasses registered later, like RateLimited, included)."""
    found: dict[str, type[MCPAgentCloudError]] = {}
    todo = [MCPAgentCloudError]
    while todo:
        cls = todo.pop()
        found.setdefault(getattr(cls, "code", "error"), cls)
        todo.extend(cls.__subclasses__())
    return found


def error_from_tool(text: str, *, deployment: str, tool: str) -> MCPAgentCloudError:
    """The platform error for a tool error result: the app's own error when its text is our error JSON."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str) and isinstance(body.get("message"), str):
        cls = _error_classes().get(body["error"], MCPAgentCloudError)
        try:
            exc = cls(body["message"], hint=body.get("hint"))
        except TypeError:  # an error class with a constructor of its own: keep the code and message
            exc = MCPAgentCloudError(body["message"], hint=body.get("hint"))
        if type(exc).code != body["error"]:
            exc.code = body["error"]
            # Codes without a class of their own: the app failed (502) or timed out (504), not the caller.
            exc.status = {"internal_error": 502, "timeout": 504}.get(body["error"], exc.status)
        return exc
    low = text.lower()
    if "unknown tool" in low or re.search(rf"\btool '?{re.escape(tool.lower())}'? not found", low):
        return NotFoundError(f"{deployment} has no tool {tool}", hint=no_tool_hint(tool))
    if "not found" in low:
        # A framework app's plain-text error for an unknown workflow or run ("Workflow 'X' not found."): a 404 too.
        return NotFoundError(f"{deployment}: {text.strip()[:2000]}",
                             hint="`mcp-agent workflows list` shows the workflows; `mcp-agent workflows runs` the runs")
    exc = MCPAgentCloudError(f"{deployment}: {tool} failed: {text.strip()[:2000]}",
                             hint=f"see the app's log: `mcp-agent logs {deployment.split('.', 1)[-1]}`")
    exc.status = 502  # the app failed, not the caller's request
    return exc


def tool_value(result: Any) -> Any:
    """A tool result's value: its structured content, else its text parsed as JSON, else the text."""
    structured = getattr(result, "structured_content", None)
    texts = "".join(getattr(c, "text", "") or "" for c in result.content)
    if isinstance(structured, dict):
        # Tools returning a non-object value get it wrapped as {"result": value} by the SDK.
        if set(structured) == {"result"} and texts:
            try:
                return json.loads(texts)
            except ValueError:
                return structured["result"]
        return structured
    if structured is not None:
        return structured
    try:
        return json.loads(texts)
    except ValueError:
        return texts


def workflows_of(out: Any) -> list[dict]:
    """The workflows of a workflows-list value, as a list of dicts that each have ``input_schema``.

    Ours is ``{"workflows": [...]}``; the lastmile-ai mcp-agent framework's is ``{name: {name, description,
    capabilities, tool_endpoints, run_parameters}}``, whose ``run_parameters`` is the input schema (kept as well).
    """
    if isinstance(out, dict) and isinstance(out.get("workflows"), list):
        return [w for w in out["workflows"] if isinstance(w, dict)]
    if isinstance(out, list):
        return [w for w in out if isinstance(w, dict)]
    if not isinstance(out, dict):
        return []
    found = []
    for key, value in out.items():
        if not isinstance(value, dict):
            continue
        entry = {"name": key, **value}
        if isinstance(value.get("run_parameters"), dict):
            entry.setdefault("input_schema", value["run_parameters"])
        endpoints = value.get("tool_endpoints")
        if isinstance(endpoints, list) and endpoints:
            entry.setdefault("run_tool", endpoints[0])
        found.append(entry)
    return found


def runs_of(out: Any, *, status: str | None = None, workflow: str | None = None) -> tuple[list[dict], str | None]:
    """The runs and next page token of a workflows-runs-list value, filtered by ``status`` and ``workflow``.

    Ours is ``{"runs": [...], "next_page_token"}`` and already filtered; the framework's is a plain list (asyncio) or
    ``{"runs", "next_page_token"}`` (temporal), and takes no filters (FastMCP drops arguments a tool does not
    declare), so the filters are applied here too; on our pages they change nothing.
    """
    if isinstance(out, dict):
        runs, token = out.get("runs") or [], out.get("next_page_token")
    elif isinstance(out, list):
        runs, token = out, None
    else:
        return [], None
    runs = [r for r in runs if isinstance(r, dict)
            and (status is None or r.get("status") == status)
            and (workflow is None or r.get("name") == workflow)]
    return runs, token if isinstance(token, str) else None


def fit_arguments(schema: dict[str, Any] | None, arguments: dict[str, Any], *, deployment: str,
                  tool: str) -> dict[str, Any]:
    """``arguments`` (``None`` values dropped) fitted to the input schema the app lists for ``tool``.

    An argument the tool does not declare is refused rather than silently dropped by the app's FastMCP (a
    ``workflow_id`` that would not be used, say); the framework's workflows-run declares its ``**kwargs`` as a required
    ``kwargs`` field (FastMCP 1.x), which gets an empty object.
    """
    given = {k: v for k, v in arguments.items() if v is not None}
    props = (schema or {}).get("properties")
    if not isinstance(props, dict):
        return given
    extra = sorted(k for k in given if k not in props)
    if extra and (schema or {}).get("additionalProperties") is not True:
        raise ValidationFailed(f"{deployment}'s {tool} takes no {', '.join(extra)}",
                               hint="leave it out: the app's framework (lastmile-ai mcp-agent?) does not support it")
    if "kwargs" in ((schema or {}).get("required") or []) and "kwargs" not in given:
        given["kwargs"] = {}
    return given


class Workflows:
    """Workflow operations on behalf of an authenticated caller; every deployment is looked up in the caller's org."""

    def __init__(self, platform) -> None:
        self.platform = platform
        self._index: OrderedDict[str, tuple[str, str]] = OrderedDict()

    # -- plumbing -----------------------------------------------------------------------------------------------

    def remember(self, run_id: str | None, org: str, name: str) -> None:
        if not run_id:
            return
        self._index[run_id] = (org, name)
        self._index.move_to_end(run_id)
        while len(self._index) > INDEX_SIZE:
            self._index.popitem(last=False)

    def _url(self, record: DeploymentRecord) -> str:
        active = self.platform.active.get(f"{record.org}.{record.name}")
        if active is None or active.builder is None:
            raise ConflictError(f"{record.org}.{record.name} is not running: its workflows cannot be reached",
                                hint=f"start it with `mcp-agent start {record.name}`")
        return active.instance.url

    async def call(self, record: DeploymentRecord, tool: str, arguments: dict[str, Any],
                   timeout: float = CALL_TIMEOUT, *, fit: bool = False) -> Any:
        """Call ``tool`` on the deployment's serving instance; its value, or the mapped error.

        ``fit``: first read the tool's input schema (tools/list, same session) and fit the arguments to it
        (:func:`fit_arguments`), for tools whose arguments differ between our runtime and the framework.
        """
        from ..client import mcp_client

        dq = f"{record.org}.{record.name}"
        url = self._url(record)
        args = {k: v for k, v in arguments.items() if v is not None}
        refused: MCPAgentCloudError | None = None  # raised after the session closed, not wrapped by its task group
        try:
            async with asyncio.timeout(timeout):
                async with mcp_client(url, mode="legacy", read_timeout=timeout) as client:
                    if fit:
                        schema, cursor = None, None
                        while True:
                            page = await client.list_tools(cursor=cursor)
                            schema = next((t.input_schema for t in page.tools if t.name == tool), None)
                            cursor = page.next_cursor
                            if schema is not None or not cursor:
                                break
                        try:
                            if schema is None:
                                raise NotFoundError(f"{dq} has no tool {tool}", hint=no_tool_hint(tool))
                            args = fit_arguments(schema, args, deployment=dq, tool=tool)
                        except MCPAgentCloudError as exc:
                            refused = exc
                    result = None if refused else await client.call_tool(tool, args)
        except TimeoutError:
            raise MCPAgentCloudError(f"{dq}: {tool} did not answer within {timeout:.0f}s",
                                     hint=f"check `mcp-agent logs {record.name}`") from None
        except MCPAgentCloudError as exc:
            if "unknown tool" in exc.message.lower():
                raise NotFoundError(f"{dq} has no tool {tool}", hint=no_tool_hint(tool)) from None
            raise
        if refused is not None:
            raise refused
        if result.is_error:
            raise error_from_tool("".join(getattr(c, "text", "") or "" for c in result.content),
                                  deployment=dq, tool=tool)
        return tool_value(result)

    async def _record(self, identity: Identity, name: str, need: str = "read") -> DeploymentRecord:
        record = await self.platform.find(identity, name)
        if not identity.can(need):
            raise ForbiddenError("your role may not start or change workflow runs" if need == "write"
                                 else "your role may not see workflow runs",
                                 hint="ask an owner of the org for the developer role")
        return record

    def _tag(self, record: DeploymentRecord, status: Any) -> Any:
        """A status dict with the deployment named, and its run remembered."""
        if isinstance(status, dict):
            run_id = status.get("run_id") or status.get("id")
            self.remember(run_id, record.org, record.name)
            status.setdefault("deployment", self.platform.display_name(record.org, record.name))
        return status

    # -- per deployment -----------------------------------------------------------------------------------------

    async def list_workflows(self, identity: Identity, name: str) -> dict:
        record = await self._record(identity, name)
        out = await self.call(record, "workflows-list", {})
        return {"deployment": self.platform.display_name(record.org, record.name), "workflows": workflows_of(out)}

    async def run(self, identity: Identity, name: str, workflow: str, params: dict[str, Any] | None = None, *,
                  workflow_id: str | None = None, priority: int | None = None) -> dict:
        record = await self._record(identity, name, "write")
        if params is not None and not isinstance(params, dict):
            raise ValidationFailed("params must be a JSON object of run parameters", hint='e.g. {"amount": 5}')
        out = await self.call(record, "workflows-run", {"workflow_name": workflow, "run_parameters": params or {},
                                                        "workflow_id": workflow_id, "priority": priority},
                              fit=True)
        return self._tag(record, out)

    async def act(self, identity: Identity, name: str, action: str, *, run_id: str | None = None,
                  workflow_id: str | None = None, signal: str | None = None, payload: Any = None) -> dict:
        """pause, resume (a signal, ``resume`` by default, with an optional payload) or cancel (``stop``)."""
        if action not in ACTIONS:
            raise ValidationFailed(f"unknown action {action!r}", hint=f"use one of {', '.join(sorted(ACTIONS))}")
        record = await self._record(identity, name, "write")
        if not run_id and not workflow_id:
            raise ValidationFailed("name the run: give run_id or workflow_id")
        args: dict[str, Any] = {"run_id": run_id, "workflow_id": workflow_id}
        if action == "resume":
            args.update(signal_name=signal or "resume", payload=payload)
        out = await self.call(record, ACTIONS[action], args)
        if isinstance(out, bool):
            # The framework's resume and cancel answer a bare bool; the routes and the CLI answer the run's status.
            what = run_id or f"workflow id {workflow_id}"
            if not out:
                raise ConflictError(f"{record.org}.{record.name} did not {action} run {what}",
                                    hint="the run is unknown to the app, or already finished: see "
                                         f"`mcp-agent workflows status {run_id or 'RUN_ID'}`")
            try:
                out = await self.call(record, "workflows-get_status", {"run_id": run_id, "workflow_id": workflow_id},
                                      timeout=LOCATE_TIMEOUT)
            except MCPAgentCloudError as exc:
                log.info("%s.%s: status after %s of %s failed: %s", record.org, record.name, action, what, exc)
                out = {"run_id": run_id, "workflow_id": workflow_id, "status": "unknown"}
        return self._tag(record, out)

    async def batch(self, identity: Identity, name: str, body: dict[str, Any]) -> dict:
        record = await self._record(identity, name, "write")
        if body.get("action") not in ("run", "cancel", "pause", "resume"):
            raise ValidationFailed(f"unknown batch action {body.get('action')!r}",
                                   hint="use one of run, cancel, pause, resume")
        out = await self.call(record, "workflows-batch", body)
        for row in (out or {}).get("results", []) if isinstance(out, dict) else []:
            if isinstance(row, dict) and row.get("ok"):
                self.remember(row.get("run_id"), record.org, record.name)
        return out

    async def list_runs(self, identity: Identity, name: str, *, status: str | None = None,
                        workflow: str | None = None, limit: int = 100, page_token: str | None = None) -> dict:
        record = await self._record(identity, name)
        out = await self.call(record, "workflows-runs-list", {"limit": limit, "status": status,
                                                              "workflow_name": workflow,
                                                              "next_page_token": page_token})
        runs, token = runs_of(out, status=status, workflow=workflow)
        return {"runs": [self._tag(record, r) for r in runs[:limit]], "next_page_token": token}

    # -- across the org's deployments ---------------------------------------------------------------------------

    def _serving(self, identity: Identity) -> list[DeploymentRecord]:
        return [a.record for a in list(self.platform.active.values())
                if a.record.org == identity.org and a.builder is not None and a.record.kind == "app"]

    async def all_runs(self, identity: Identity, *, status: str | None = None, workflow: str | None = None,
                       limit: int = 100) -> dict:
        """Runs of every serving app of the caller's org that serves workflows, newest first."""
        if not identity.can("read"):
            raise ForbiddenError("your role may not see workflow runs")

        async def one(record: DeploymentRecord) -> list[dict]:
            try:
                out = await self.call(record, "workflows-runs-list",
                                      {"limit": limit, "status": status, "workflow_name": workflow},
                                      timeout=LOCATE_TIMEOUT)
            except MCPAgentCloudError:
                return []  # not a workflows app, or not answering: listed by deployment on its own
            return [self._tag(record, r) for r in runs_of(out, status=status, workflow=workflow)[0]]

        found = await asyncio.gather(*(one(r) for r in self._serving(identity)))
        runs = sorted((r for rows in found for r in rows), key=lambda r: r.get("created_at") or 0, reverse=True)
        return {"runs": runs[:limit], "next_page_token": None}

    async def locate(self, identity: Identity, run_id: str) -> DeploymentRecord:
        """The deployment that holds ``run_id``, in the caller's org."""
        hit = self._index.get(run_id)
        if hit is not None and hit[0] == identity.org:
            record = await self.platform.registry.get_deployment(*hit)
            if record is not None:
                return record
        serving = self._serving(identity)

        async def probe(record: DeploymentRecord) -> DeploymentRecord | None:
            try:
                await self.call(record, "workflows-get_status", {"run_id": run_id}, timeout=LOCATE_TIMEOUT)
            except MCPAgentCloudError:
                return None
            return record

        for record in await asyncio.gather(*(probe(r) for r in serving)):
            if record is not None:
                self.remember(run_id, record.org, record.name)
                return record
        raise NotFoundError(f"no run {run_id} in the running deployments of org {identity.org}",
                            hint="list runs with `mcp-agent workflows runs NAME`; runs of a stopped deployment are "
                                 "reachable again once it is started")

    async def run_status(self, identity: Identity, run_id: str, *, history: bool = False) -> dict:
        if not identity.can("read"):
            raise ForbiddenError("your role may not see workflow runs")
        record = await self.locate(identity, run_id)
        return self._tag(record, await self.call(record, "workflows-get_status",
                                                 {"run_id": run_id, "include_history": history or None}))

    async def run_action(self, identity: Identity, run_id: str, action: str, *, signal: str | None = None,
                         payload: Any = None) -> dict:
        if not identity.can("write"):
            raise ForbiddenError("your role may not change workflow runs",
                                 hint="ask an owner of the org for the developer role")
        record = await self.locate(identity, run_id)
        return await self.act(identity, f"{record.org}.{record.name}", action, run_id=run_id, signal=signal,
                              payload=payload)

