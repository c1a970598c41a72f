"""The platform's Starlette app: management API under /api/v1, the MCP gateway under /servers, auth in front."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from pydantic import BaseModel, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, Router

from .. import __version__
from ..errors import ForbiddenError, MCPAgentCloudError, ValidationFailed
from ..hookspecs.types import AuditRecord, DeploymentRecord, EventRecord, Identity, Manifest, TokenRecord, VersionRecord
from . import bridge as _bridge
from .audit import AuditMiddleware, ScopeGuard
from .bridge import Bridge
from .cluster import forwarded
from .gateway import Gateway, TransportGuard
from ..telemetry import TRACEPARENT, parse_traceparent, use_parent
from ..applog import parse_since
from ..names import named_in_request
from .catalog import PublishBody, UnpublishBody, auth_of
from .service import DeployRequest, Platform
from .workflows import Workflows

log = logging.getLogger("mcp_agent_cloud.platform")

PUBLIC_PATHS = ("/healthz", "/api/v1/openapi.json", "/api/v1/auth/providers", "/console", "/catalog")
# How a caller gets a token (introspect checks its own); the console signs its users in with its own cookies.
PUBLIC_PREFIXES = ("/auth/", "/oauth/", "/.well-known/", "/console/")


def error_response(exc: MCPAgentCloudError) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="mcp-agent-cloud"'} if exc.status == 401 else None
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)


class AuthMiddleware:
    """Every route but the public ones needs an identity from one of the configured auth providers."""

    def __init__(self, app, platform: Platform) -> None:
        self.app = app
        self.platform = platform

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return await self.app(scope, receive, send)
        request = Request(scope, receive)
        identity = await self.platform.authenticate(request)
        if path.startswith("/servers/"):  # a deployment's own auth: none, or only one provider's users
            try:
                identity = await self.platform.caller_for(path, identity, "authorization" in request.headers)
            except ForbiddenError as exc:
                from .gateway import platform_error

                return await platform_error(exc)(scope, receive, send)
        if identity is None:
            error = "invalid_token" if "authorization" in request.headers else ""
            response = JSONResponse(
                {"error": "unauthorized", "message": "a valid bearer token is required",
                 "hint": "log in with `mcp-agent deploy auth login`, or send Authorization: Bearer TOKEN"},
                status_code=401, headers={"WWW-Authenticate": self.platform.challenge(
                    scope.get("state", {}).get("address", path), error)})
            return await response(scope, receive, send)
        scope.setdefault("state", {})["identity"] = identity
        return await self.app(scope, receive, send)


_RUN_PATH = re.compile(r"^/api/v1/runs/[^/]+(?:/[a-z]+)?$")
MAX_RUN_BODY = 1 << 20
_UNROUTED_TAILS = ("events",)  # read from the shared registry: any node answers


def _claims(method: str, path: str, tail: str) -> bool:
    """Requests that start the deployment: the node that takes them must own it, so they claim its lease
    (atomically: of two nodes racing for a new name, one wins and the other forwards to it)."""
    return method == "POST" and (tail in ("versions", "start", "rollback") or
                                 (path.startswith("/api/v1/agents/") and tail == "run"))


class NodeRouter:
    """Forward a request about a deployment another live node runs to that node (after auth: a caller without a
    valid token never reaches another node). The owner authenticates it again, and answers it as if asked."""

    def __init__(self, app, platform: Platform) -> None:
        self.app = app
        self.platform = platform

    async def __call__(self, scope, receive, send) -> None:
        cluster = self.platform.cluster
        if scope["type"] != "http" or cluster is None or forwarded(scope):
            return await self.app(scope, receive, send)
        path = scope["path"]
        # About one deployment: to the node that runs it (cluster.py).
        name, tail = named_in_request(path, scope.get("query_string", b"")) or (None, None)
        identity = scope.get("state", {}).get("identity")
        if identity is not None and _RUN_PATH.match(path):
            return await self._find_run(scope, receive, send)
        if not name or identity is None or tail in _UNROUTED_TAILS:
            return await self.app(scope, receive, send)
        try:
            org, short = self.platform.qualify(identity, name)
        except MCPAgentCloudError:
            return await self.app(scope, receive, send)  # the handler answers the error
        key = f"{org}.{short}"
        if _claims(scope["method"], path, tail):
            owner = cluster.owner_of(await cluster.claim(key))
        else:
            owner = await cluster.owner(key)
        if owner is None:
            return await self.app(scope, receive, send)
        return await cluster.forward(owner, scope, receive, send)

    async def _find_run(self, scope, receive, send) -> None:
        """A run named by its id alone says nothing of its deployment: this node looks in the deployments it runs,
        and when none has it, each other live node is asked in turn (once: they do not ask further)."""
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_RUN_BODY:
                return await JSONResponse({"error": "too_large", "message": "a run request body is at most 1 MiB"},
                                          status_code=413)(scope, receive, send)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        answer: list[dict] = []

        async def capture(message) -> None:
            answer.append(message)

        await self.app(scope, replay, capture)
        if answer and answer[0].get("status") == 404:
            for node in await self.platform.cluster.live_nodes():
                try:
                    resp = await self.platform.cluster.send_to(node, scope, body)
                except httpx2.HTTPError as exc:
                    log.warning("asking node %s for a run failed: %s", node.node_id, exc)
                    continue
                if resp.status_code == 404:
                    await resp.aclose()
                    continue
                return await self.platform.cluster.relay(resp, send)
        for message in answer:
            await send(message)


def identity_of(request: Request) -> Identity:
    return request.state.identity


class KeyCreate(BaseModel):
    model_config = {"extra": "forbid"}
    name: str = Field("", max_length=100, description="a label, shown by `keys list`")
    role: str | None = Field(None, description="owner, developer or viewer; at most the caller's (default: the "
                             "caller's)")
    scopes: list[str] = Field(default_factory=list, description="api, mcp, deployment:NAME; none: all the role "
                              "allows")
    expires_in: float = Field(90 * 86400, ge=60, le=366 * 86400, description="lifetime in seconds (at most a year)")


class KeyInfo(BaseModel):
    id: str
    name: str
    subject: str
    roles: list[str]
    scopes: list[str]
    created_at: float
    expires_at: float | None
    status: str = Field(description="active, expired or revoked")


class KeyCreated(KeyInfo):
    key: str = Field(description="the key itself, shown only here")


class KeyList(BaseModel):
    keys: list[KeyInfo]


class AuditList(BaseModel):
    records: list[AuditRecord]


def key_view(record: TokenRecord) -> dict:
    status = "revoked" if record.revoked else (
        "expired" if record.expires_at is not None and record.expires_at < time.time() else "active")
    return KeyInfo(**record.model_dump(include=set(KeyInfo.model_fields) - {"status"}),
                   status=status).model_dump()


def log_time_to_epoch(stamp: str) -> float:
    import datetime

    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class DeploymentList(BaseModel):
    deployments: list[DeploymentRecord]


class VersionList(BaseModel):
    versions: list[VersionRecord]


class EventList(BaseModel):
    events: list[EventRecord]


class SecretValue(BaseModel):
    value: str


class SecretRow(BaseModel):
    key: str
    version: int
    updated_at: float
    handle: str = Field(description="secret://ORG/DEPLOYMENT/KEY")
    kind: str | None = Field(None, description="developer or user, when the deployment declares the key")


class SecretList(BaseModel):
    secrets: list[SecretRow]
    missing: list[str] = Field(description="keys the deployment declares that have no value")


class SecretSet(BaseModel):
    key: str
    version: int
    handle: str
    restarted: bool = Field(description="the serving deployment declares the key and was switched onto it")


class SecretRead(BaseModel):
    key: str
    version: int
    value: str


class Uploaded(BaseModel):
    sha256: str
    manifest: Manifest


class WorkflowRunBody(BaseModel):
    model_config = {"extra": "forbid"}
    params: dict[str, Any] = Field(default_factory=dict, description="the workflow's run parameters")
    workflow_id: str | None = Field(None, description="default: {workflow}-{uuid hex}")
    priority: int | None = Field(None, description="higher runs first when runs queue")


class RunActionBody(BaseModel):
    model_config = {"extra": "forbid"}
    run_id: str | None = None
    workflow_id: str | None = Field(None, description="instead of run_id: the latest run of this workflow id")
    signal: str | None = Field(None, description="resume only: the signal to send (default resume)")
    payload: Any = Field(None, description="resume only: the signal's payload (any JSON)")


class RunSignalBody(BaseModel):
    model_config = {"extra": "forbid"}
    signal: str | None = Field(None, description="resume only: the signal to send (default resume)")
    payload: Any = Field(None, description="resume only: the signal's payload (any JSON)")


class BatchBody(BaseModel):
    model_config = {"extra": "forbid"}
    action: str = Field(description="run, cancel, pause or resume")
    workflow_name: str | None = Field(None, description="run: the workflow; else: only runs of this workflow")
    status: str | None = Field(None, description="cancel/pause/resume: every run with this status")
    run_ids: list[str] | None = None
    runs: list[dict[str, Any]] | None = Field(None, description="run: the run parameters of each run to start")
    signal_name: str | None = None
    payload: Any = None


class RunStatusModel(BaseModel):
    id: str
    workflow_id: str
    run_id: str
    name: str
    status: str = Field(description="running, paused, completed, error, cancelled or interrupted")
    running: bool
    state: dict[str, Any] = Field(default_factory=dict)
    result: Any = None
    error: str | None = None
    waiting_for: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    created_at: float | None = None
    updated_at: float | None = None
    deployment: str | None = None


class RunList(BaseModel):
    runs: list[RunStatusModel]
    next_page_token: str | None = None


class AgentState(BaseModel):
    name: str
    org: str
    suspended: bool
    active_runs: int | None = None
    status: str


async def json_body(request: Request, model: type[BaseModel], example: str) -> Any:
    """The request body validated by ``model``; an empty body is ``{}``."""
    raw = await request.body()
    try:
        data = json.loads(raw) if raw.strip() else {}
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(f"invalid body: {safe_errors(exc)}", hint=f"send {example}") from None
    except ValueError:
        raise ValidationFailed("the body must be JSON", hint=f"send {example}") from None


@dataclass(frozen=True)
class Endpoint:
    """One API route: the Starlette route and its OpenAPI entry come from here, so they cannot drift apart."""

    method: str
    path: str
    handler: Callable
    summary: str
    request: type[BaseModel] | None = None
    response: type[BaseModel] | str | None = None
    public: bool = False
    stream: str | None = None  # media type of a streamed response


def build_app(platform: Platform) -> Starlette:
    # The mcp SDK's client (httpx2) for the bridge's upstream sessions and the gateway's control requests (the
    # gateway's byte relay has a pool of its own). No read timeout and no cap on connections: GET streams are
    # long-lived and hold one each; request timeouts are applied per request.
    http = httpx2.AsyncClient(timeout=httpx2.Timeout(connect=5.0, read=None, write=60.0, pool=10.0),
                              limits=httpx2.Limits(max_connections=None, max_keepalive_connections=100))

    async def healthz(request: Request) -> Response:
        if not platform.started:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ok", "version": __version__})

    async def metrics(request: Request) -> Response:
        identity = identity_of(request)
        operator = identity.can("admin") and identity.org == platform.config.default_org

        def keep(names: tuple[str, ...], values: tuple[str, ...]) -> bool:
            # A tenant sees its own org's series; platform-wide series are for the operators.
            if "org" in names:
                return values[names.index("org")] == identity.org
            return operator

        await platform.sample_usage()
        return Response(platform.metrics.render(keep), media_type=PROMETHEUS_TEXT)

    async def traces(request: Request) -> Response:
        rec = await platform.find(identity_of(request), request.path_params["name"])
        await platform.collect_app_spans(f"{rec.org}.{rec.name}")  # what the app finished just now, too
        found = platform.span_store.traces(
            rec.org, rec.name, trace_id=request.query_params.get("trace") or None,
            run_id=request.query_params.get("run") or None, limit=min(int_param(request, "limit", 20), 200))
        return JSONResponse({"tracing": platform.tracer.enabled,
                             "traces": [[s.model_dump(mode="json") | {"duration_ms": s.duration_ms} for s in spans]
                                        for spans in found]})

    async def create_key(request: Request) -> Response:
        body = await json_body(request, KeyCreate, '{"name": "ci", "role": "developer", "scopes": ["mcp"], '
                                '"expires_in": 2592000}')
        token, record = await platform.create_key(identity_of(request), name=body.name, role=body.role,
                                                  scopes=body.scopes, expires_in=body.expires_in)
        return JSONResponse({"key": token, **key_view(record)}, status_code=201)

    async def list_keys(request: Request) -> Response:
        return JSONResponse({"keys": [key_view(r) for r in await platform.list_keys(identity_of(request))]})

    async def revoke_key(request: Request) -> Response:
        return JSONResponse(key_view(await platform.revoke_key(identity_of(request), request.path_params["key_id"])))

    async def audit_log(request: Request) -> Response:
        identity = identity_of(request)
        if not identity.can("admin"):
            raise ForbiddenError("the audit log is for owners of the org", hint="ask an owner of the org")
        q = request.query_params
        since = since_param(request)
        before = int_param(request, "before", 0) or None
        rows = await platform.registry.list_audit(
            org=identity.org, before_id=before, limit=min(int_param(request, "limit", 100), 1000),
            actor=q.get("actor") or None, action=q.get("action") or None, since=since)
        return JSONResponse({"records": [r.model_dump(mode="json") for r in rows]})

    async def whoami(request: Request) -> Response:
        return JSONResponse(identity_of(request).model_dump())

    async def plugins(request: Request) -> Response:
        return JSONResponse({"plugins": platform.pm.describe(), "warnings": platform.pm.warnings})

    async def auth_providers(request: Request) -> Response:
        return JSONResponse({"providers": [{"name": p.spec_name, **p.metadata()} for p in platform.auth_providers]})

    async def server_types(request: Request) -> Response:
        return JSONResponse({"server_types": [
            {"name": r.spec.name, "description": r.spec.description, "command": r.spec.command,
             "args": list(r.spec.args), "pip": list(r.spec.pip), "npm": r.spec.npm, "needs_dir": r.spec.needs_dir,
             "plugin": r.plugin.name} for r in platform.pm.specs("server_type")]})

    async def package_exists(request: Request) -> Response:
        found = await platform.has_package(identity_of(request).org, request.path_params["sha256"])
        return Response(status_code=200 if found else 404)

    async def upload_package(request: Request) -> Response:
        identity = identity_of(request)
        if not identity.can("write"):
            raise ForbiddenError("your role may not upload packages",
                                 hint="ask an owner of the org for the developer role")
        sha = request.headers.get("x-package-sha256", "")
        length = request.headers.get("content-length")
        manifest = await platform.store_package(
            identity.org, request.stream(), sha256=sha.lower(), fmt=request.headers.get("x-package-format"),
            length=int(length) if length and length.isdigit() else None)
        return JSONResponse({"sha256": sha.lower(), "manifest": manifest.model_dump(mode="json")}, status_code=201)

    async def list_deployments(request: Request) -> Response:
        identity = identity_of(request)
        rows = []
        for rec in await platform.registry.list_deployments(identity.org):
            row = rec.model_dump(mode="json")
            row["endpoint"] = platform.endpoint(rec)
            row["auth"] = auth_of(rec)
            rows.append(row)
        return JSONResponse({"deployments": rows})

    async def get_deployment(request: Request) -> Response:
        identity = identity_of(request)
        rec = await platform.find(identity, request.path_params["name"])
        return JSONResponse(await platform.status(rec, identity))

    async def delete_deployment(request: Request) -> Response:
        force = request.query_params.get("force") in ("1", "true", "yes")
        left = await platform.delete_deployment(identity_of(request), request.path_params["name"], force=force)
        return JSONResponse({"deleted": request.path_params["name"], "dependents": left})

    async def publish(request: Request) -> Response:
        body = await json_body(request, PublishBody, '{"description": "what it does", "icon": "https://..."}')
        return JSONResponse(await platform.catalog.publish(identity_of(request), request.path_params["name"], body))

    async def unpublish(request: Request) -> Response:
        body = await json_body(request, UnpublishBody, '{"force": false}')
        return JSONResponse(await platform.catalog.unpublish(identity_of(request), request.path_params["name"],
                                                             force=body.force))

    async def catalog(request: Request) -> Response:
        identity_of(request)  # any org's user; the catalog is the platform's, not an org's
        q = request.query_params
        kind = q.get("kind") or None
        if kind not in (None, "app", "stdio", "remote"):
            raise ValidationFailed(f"kind must be app, stdio or remote, not {kind!r}")
        entries = await platform.catalog.search(q.get("q", ""), kind, min(int_param(request, "limit", 100), 500))
        return JSONResponse({"entries": entries})

    async def catalog_entry(request: Request) -> Response:
        identity_of(request)
        return JSONResponse(await platform.catalog.get(request.path_params["address"], since_param(request)))

    async def create_version(request: Request) -> Response:
        identity = identity_of(request)
        try:
            body = await request.json()
            req = DeployRequest.model_validate(body)
        except ValidationError as exc:
            raise ValidationFailed(f"invalid deploy request: {safe_errors(exc)}") from None
        except ValueError as exc:
            raise ValidationFailed(f"invalid deploy request: {exc}") from None
        name = request.path_params["name"]
        # Fail with a proper status before the response starts streaming.
        checked = await platform.check_deploy(identity, name, req)
        queue: asyncio.Queue = asyncio.Queue()

        async def run() -> None:
            try:
                result = await platform.deploy(identity, name, req, queue.put, checked=checked)
                await queue.put({"type": "result", **result})
            except MCPAgentCloudError as exc:
                await queue.put({"type": "error", **exc.to_dict(), "log_tail": getattr(exc, "log_tail", "")})
            except Exception as exc:
                log.exception("deploy of %s failed", name)
                await queue.put({"type": "error", "error": "internal", "message": f"{type(exc).__name__}: {exc}"})
            finally:
                await queue.put(None)

        # The deploy runs on its own task: a client that disconnects does not abort it half-way. The task copies
        # the context, so the deploy's span joins the caller's trace.
        with use_parent(parse_traceparent(request.headers.get(TRACEPARENT))):
            platform._spawn(run())

        async def stream():
            while (item := await queue.get()) is not None:
                yield json.dumps(item) + "\n"

        return StreamingResponse(stream(), media_type="application/x-ndjson")

    async def list_versions(request: Request) -> Response:
        rec = await platform.find(identity_of(request), request.path_params["name"])
        versions = await platform.registry.list_versions(rec.id)
        return JSONResponse({"versions": [v.model_dump(mode="json", exclude={"manifest"}) for v in versions]})

    async def stop(request: Request) -> Response:
        rec = await platform.stop_deployment(identity_of(request), request.path_params["name"])
        return JSONResponse(await platform.status(rec))

    async def start(request: Request) -> Response:
        rec = await platform.start_deployment(identity_of(request), request.path_params["name"])
        return JSONResponse(await platform.status(rec))

    async def rollback(request: Request) -> Response:
        body = {}
        if await request.body():
            try:
                body = await request.json()
            except ValueError:
                raise ValidationFailed("the body must be JSON, e.g. {\"to\": 2}") from None
        to = body.get("to") if isinstance(body, dict) else None
        if to is not None and (isinstance(to, bool) or not isinstance(to, int) or to < 1):
            raise ValidationFailed("'to' must be a version number (1, 2, ...)")
        return JSONResponse(await platform.rollback(identity_of(request), request.path_params["name"], to))

    async def events(request: Request) -> Response:
        rec = await platform.find(identity_of(request), request.path_params["name"])
        after = int_param(request, "after", 0)
        if request.query_params.get("follow") in ("1", "true", "yes"):
            async def follow():
                # The registry's watch: LISTEN/NOTIFY on postgres, so events recorded by any node arrive here.
                async for event in platform.registry.watch(org=rec.org, after_id=after):
                    if event.deployment_id == rec.id:
                        yield event.model_dump_json() + "\n"
            return StreamingResponse(follow(), media_type="application/x-ndjson")
        limit = min(int_param(request, "limit", 100), 1000)
        rows = await platform.registry.list_events(org=rec.org, deployment_id=rec.id, after_id=after, limit=limit)
        return JSONResponse({"events": [e.model_dump(mode="json") for e in rows]})

    async def logs(request: Request) -> Response:
        rec = await platform.find(identity_of(request), request.path_params["name"])
        active = platform.active.get(f"{rec.org}.{rec.name}")
        version = int_param(request, "version", 0) or (active.version if active else None) or rec.current_version
        if not version:
            versions = await platform.registry.list_versions(rec.id)
            version = versions[-1].version if versions else 1
        path = platform.app_log(rec.org, rec.name, version)
        q = request.query_params
        since = since_param(request, epoch=False)
        grep = None
        if q.get("grep"):
            try:
                grep = re.compile(q["grep"])
            except re.error as exc:
                raise ValidationFailed(f"query parameter 'grep' is not a valid regular expression: {exc}",
                                       hint="grep takes a Python regular expression, e.g. 'error|warn' or "
                                            "'(?i)timeout'; put \\ before a character meant literally") from None
        fmt = q.get("format") or "text"
        if fmt not in ("text", "ndjson"):
            raise ValidationFailed(f"query parameter 'format' must be text or ndjson, not {fmt!r}")
        # With since and no tail: every line since then.
        tail = int_param(request, "tail", 100) if q.get("tail") or since is None else None
        follow = q.get("follow") in ("1", "true", "yes")
        stamps = q.get("timestamps") in ("1", "true", "yes")
        return StreamingResponse(_log_stream(path, tail=tail, since=since, grep=grep, ndjson=fmt == "ndjson",
                                             timestamps=stamps, follow=follow),
                                 media_type="application/x-ndjson" if fmt == "ndjson" else "text/plain; charset=utf-8")

    async def export_k8s(request: Request) -> Response:
        q = request.query_params
        return JSONResponse(await platform.export_k8s(
            identity_of(request), request.path_params["name"], namespace=q.get("namespace") or "default",
            image=q.get("image") or None, version=int_param(request, "version", 0) or None))

    async def list_secrets(request: Request) -> Response:
        return JSONResponse(await platform.list_secrets(identity_of(request), request.path_params["name"]))

    async def set_secret(request: Request) -> Response:
        try:
            body = SecretValue.model_validate(await request.json())
        except ValidationError as exc:
            raise ValidationFailed(f"invalid body: {safe_errors(exc)}", hint='send {"value": "..."}') from None
        except ValueError:
            raise ValidationFailed("the body must be JSON", hint='send {"value": "..."}') from None
        return JSONResponse(await platform.set_secret(identity_of(request), request.path_params["name"],
                                                      request.path_params["key"], body.value))

    async def get_secret(request: Request) -> Response:
        version = int_param(request, "version", 0) or None
        return JSONResponse(await platform.get_secret(identity_of(request), request.path_params["name"],
                                                      request.path_params["key"], version),
                            headers={"Cache-Control": "no-store"})

    async def delete_secret(request: Request) -> Response:
        destroy = request.query_params.get("destroy") in ("1", "true", "yes")
        return JSONResponse(await platform.delete_secret(identity_of(request), request.path_params["name"],
                                                         request.path_params["key"], destroy=destroy))

    # -- workflows: calls into the serving app's workflows-* tools (see workflows.py) ------------------------------
    flows = Workflows(platform)

    async def list_workflows(request: Request) -> Response:
        return JSONResponse(await flows.list_workflows(identity_of(request), request.path_params["deployment"]))

    async def run_workflow(request: Request) -> Response:
        body = await json_body(request, WorkflowRunBody, '{"params": {...}, "workflow_id": "optional"}')
        return JSONResponse(await flows.run(identity_of(request), request.path_params["deployment"],
                                            request.path_params["workflow"], body.params,
                                            workflow_id=body.workflow_id, priority=body.priority))

    def workflow_action(action: str):
        async def handler(request: Request) -> Response:
            body = await json_body(request, RunActionBody, '{"run_id": "run_..."} or {"workflow_id": "..."}')
            return JSONResponse(await flows.act(identity_of(request), request.path_params["deployment"], action,
                                                run_id=body.run_id, workflow_id=body.workflow_id,
                                                signal=body.signal, payload=body.payload))
        handler.__name__ = f"workflow_{action}"
        return handler

    async def workflow_batch(request: Request) -> Response:
        body = await json_body(request, BatchBody, '{"action": "cancel", "status": "paused"}')
        return JSONResponse(await flows.batch(identity_of(request), request.path_params["deployment"],
                                              body.model_dump(exclude_none=True)))

    async def list_runs(request: Request) -> Response:
        identity = identity_of(request)
        q = request.query_params
        limit = min(int_param(request, "limit", 100) or 100, 1000)
        if q.get("deployment"):
            out = await flows.list_runs(identity, q["deployment"], status=q.get("status") or None,
                                        workflow=q.get("workflow") or None, limit=limit,
                                        page_token=q.get("page_token") or None)
        else:
            out = await flows.all_runs(identity, status=q.get("status") or None, workflow=q.get("workflow") or None,
                                       limit=limit)
        return JSONResponse(out)

    async def get_run(request: Request) -> Response:
        history = request.query_params.get("history") in ("1", "true", "yes")
        return JSONResponse(await flows.run_status(identity_of(request), request.path_params["run_id"],
                                                   history=history))

    def run_action(action: str):
        async def handler(request: Request) -> Response:
            body = await json_body(request, RunSignalBody, '{"signal": "approve", "payload": {...}}')
            return JSONResponse(await flows.run_action(identity_of(request), request.path_params["run_id"], action,
                                                       signal=body.signal, payload=body.payload))
        handler.__name__ = f"run_{action}"
        return handler

    def agent_action(action: str):
        async def handler(request: Request) -> Response:
            identity, name = identity_of(request), request.path_params["deployment"]
            if action in ("pause", "resume"):
                return JSONResponse(await platform.set_suspended(identity, name, action == "pause"))
            rec = await (platform.start_deployment(identity, name) if action == "run"
                         else platform.stop_deployment(identity, name))
            return JSONResponse(await platform.status(rec))
        handler.__name__ = f"agent_{action}"
        return handler

    workflow_endpoints = [
        Endpoint("GET", "/api/v1/workflows/{deployment}", list_workflows,
                 "The workflows an app serves (its workflows-list tool)"),
        Endpoint("POST", "/api/v1/workflows/{deployment}/batch", workflow_batch,
                 "Start, cancel, pause or resume many runs at once", request=BatchBody),
        Endpoint("POST", "/api/v1/workflows/{deployment}/{workflow}/run", run_workflow,
                 "Start a run of a workflow; returns workflow_id, run_id and execution_id", request=WorkflowRunBody),
        *[Endpoint("POST", f"/api/v1/workflows/{{deployment}}/{{workflow}}/{action}", workflow_action(action),
                   summary, request=RunActionBody, response=RunStatusModel)
          for action, summary in (("pause", "Pause a run at its next pause point"),
                                  ("resume", "Send a run a signal (resume by default, lifting a pause) with an "
                                             "optional payload"),
                                  ("stop", "Cancel a run"))],
        Endpoint("GET", "/api/v1/runs", list_runs,
                 "Workflow runs, newest first (?deployment=&status=&workflow=&limit=); without deployment, the "
                 "runs of every serving app of the org", response=RunList),
        Endpoint("GET", "/api/v1/runs/{run_id}", get_run, "Status of one run (?history=1 adds its history)",
                 response=RunStatusModel),
        *[Endpoint("POST", f"/api/v1/runs/{{run_id}}/{action}", run_action(action), summary,
                   request=RunSignalBody, response=RunStatusModel)
          for action, summary in (("pause", "Pause a run"), ("resume", "Resume a run or send it a signal"),
                                  ("cancel", "Cancel a run"))],
        *[Endpoint("POST", f"/api/v1/agents/{{deployment}}/{action}", agent_action(action), summary,
                   response=AgentState if action in ("pause", "resume") else None)
          for action, summary in (("run", "Start the app's instance"),
                                  ("pause", "Suspend the app: it starts no new runs; runs in flight go on"),
                                  ("resume", "Lift a suspension"), ("stop", "Stop the app's instance"))],
    ]

    endpoints = [
        Endpoint("GET", "/healthz", healthz, "Readiness: 200 once the platform is serving", public=True),
        Endpoint("GET", "/api/v1/whoami", whoami, "The caller's identity", response=Identity),
        Endpoint("GET", "/api/v1/plugins", plugins, "Installed plugins and the backends they provide"),
        Endpoint("POST", "/api/v1/keys", create_key,
                 "Create an API key for the caller's org, acting as the caller (at most the caller's role and "
                 "scopes; it expires); the key is in the answer once", request=KeyCreate, response=KeyCreated),
        Endpoint("GET", "/api/v1/keys", list_keys, "API keys: the org's for owners, one's own otherwise (never the "
                 "key itself)", response=KeyList),
        Endpoint("DELETE", "/api/v1/keys/{key_id}", revoke_key, "Revoke an API key", response=KeyInfo),
        Endpoint("GET", "/api/v1/audit", audit_log,
                 "The org's audit log, newest first (owners; ?actor=&action=&since=10m&limit=&before=ID)",
                 response=AuditList),
        Endpoint("GET", "/api/v1/auth/providers", auth_providers, "Configured auth providers, in the order tried",
                 public=True),
        Endpoint("GET", "/api/v1/server-types", server_types, "Known utility servers for `deploy server --type`"),
        Endpoint("HEAD", "/api/v1/packages/{sha256}", package_exists, "Whether a package was uploaded already"),
        Endpoint("POST", "/api/v1/packages", upload_package,
                 "Upload a package (raw body; headers X-Package-Sha256, X-Package-Format)", response=Uploaded),
        Endpoint("GET", "/api/v1/deployments", list_deployments, "The org's deployments", response=DeploymentList),
        Endpoint("GET", "/api/v1/deployments/{name}", get_deployment, "Status of one deployment"),
        Endpoint("DELETE", "/api/v1/deployments/{name}", delete_deployment,
                 "Stop and delete a deployment (?force=1: a public one that others use; owners)"),
        Endpoint("POST", "/api/v1/deployments/{name}/publish", publish,
                 "Make it public as @org/name, or update its listing", request=PublishBody),
        Endpoint("POST", "/api/v1/deployments/{name}/unpublish", unpublish,
                 "Make it private (refused while other orgs use it, unless an owner forces it)",
                 request=UnpublishBody),
        Endpoint("GET", "/api/v1/catalog", catalog,
                 "Public deployments of every org (?q=WORDS&kind=app|stdio|remote&limit=N)"),
        Endpoint("GET", "/api/v1/catalog/{address:path}", catalog_entry,
                 "One public deployment (@org/name or org.name): versions, usage per hour (?since=7d), example"),
        Endpoint("POST", "/api/v1/deployments/{name}/versions", create_version,
                 "Deploy a new version; streams progress as NDJSON", request=DeployRequest,
                 stream="application/x-ndjson"),
        Endpoint("GET", "/api/v1/deployments/{name}/versions", list_versions, "Versions", response=VersionList),
        Endpoint("GET", "/api/v1/deployments/{name}/export/k8s", export_k8s,
                 "Kubernetes manifests of a version (?namespace=, ?image=, ?version=); secrets by reference only"),
        Endpoint("POST", "/api/v1/deployments/{name}/stop", stop, "Stop serving"),
        Endpoint("POST", "/api/v1/deployments/{name}/start", start, "Start the current version again"),
        Endpoint("POST", "/api/v1/deployments/{name}/rollback", rollback,
                 "Move traffic back to an earlier version (body: {\"to\": N})"),
        Endpoint("GET", "/api/v1/deployments/{name}/events", events,
                 "Lifecycle and pipeline events (?after=ID&limit=N); ?follow=1 streams them as NDJSON as any node "
                 "records them", response=EventList),
        Endpoint("GET", "/api/v1/deployments/{name}/traces", traces,
                 "Recent traces of a deployment, newest first (?run=RUN_ID, ?trace=TRACE_ID, ?limit=N)"),
        Endpoint("GET", "/metrics", metrics, "Metrics in the Prometheus text format (the caller's org; platform-wide "
                 "series for owners of the default org)", stream="text/plain"),
        Endpoint("GET", "/api/v1/deployments/{name}/logs", logs,
                 "App log of the serving version, or ?version=N (?tail=N&follow=1&since=10m&grep=REGEX; "
                 "?format=ndjson: {ts, stream, line} a line; ?timestamps=1)", stream="text/plain"),
        Endpoint("GET", "/api/v1/deployments/{name}/secrets", list_secrets,
                 "The deployment's secrets: keys, versions and handles, never values", response=SecretList),
        Endpoint("PUT", "/api/v1/deployments/{name}/secrets/{key}", set_secret,
                 "Store a new version of a secret; a serving deployment that declares it switches onto it",
                 request=SecretValue, response=SecretSet),
        Endpoint("GET", "/api/v1/deployments/{name}/secrets/{key}", get_secret,
                 "A secret's value (owner role; ?version=N); audited as a secret.read event", response=SecretRead),
        Endpoint("DELETE", "/api/v1/deployments/{name}/secrets/{key}", delete_secret,
                 "Delete a secret (?destroy=1 also destroys its stored versions)"),
        *workflow_endpoints,
    ]

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document(endpoints, served))

    endpoints.append(Endpoint("GET", "/api/v1/openapi.json", openapi, "This document", public=True))
    routes = [Route(e.path, _wrap(e.handler), methods=[e.method]) for e in endpoints]
    gateway = Gateway(platform, platform.config.gateway, http)
    bridge = Bridge(gateway)  # the legacy SSE transport and the REST surface, on the gateway's sessions
    served = gateway.routes() + bridge.routes
    # First: the router tries routes in turn, and MCP calls are the hot path (the API's paths never start so).
    routes = served + routes
    if platform.config.oauth.enabled:  # the console signs in through the platform's own OAuth server
        from .console import Console

        routes += Console(platform, flows).routes()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            await platform.start()
        except MCPAgentCloudError as exc:  # a backend that cannot start (say, the registry): `serve` reports it
            app.state.startup_error = exc
            raise
        await gateway.start()
        metrics_server = await _serve_metrics(platform) if platform.config.metrics.listen else None
        try:
            yield
        finally:
            if metrics_server is not None:
                await metrics_server.stop()
            await gateway.aclose()  # before the instances stop: sessions are ended upstream
            await bridge.aclose()
            await platform.stop()
            await http.aclose()

    # Providers' login routes are built lazily: the providers exist only once the platform has started.
    routes.append(Mount("/auth", app=_ProviderRoutes(platform)))
    if platform.oauth is not None:
        routes += platform.oauth.routes()
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(NodeRouter, platform=platform)
    app.add_middleware(ScopeGuard, platform=platform)  # after the audit: refusals are recorded too
    app.add_middleware(AuditMiddleware, platform=platform, templates=[e.path for e in endpoints])
    app.add_middleware(AuthMiddleware, platform=platform)
    app.add_middleware(TransportGuard, config=platform.config)  # added last: runs first, before auth
    app.state.platform = platform
    app.state.startup_error = None
    app.state.gateway = gateway
    app.state.endpoints = endpoints
    app.state.workflows = flows
    return app


PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class _MetricsServer:
    def __init__(self, server, task: asyncio.Task) -> None:
        self.server, self.task = server, task

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self.task, 5)


async def _serve_metrics(platform: Platform) -> _MetricsServer:
    """``metrics.listen``: every series at /metrics, unauthenticated, for a scraper on a private interface."""
    import uvicorn

    async def all_metrics(request: Request) -> Response:
        await platform.sample_usage()
        return Response(platform.metrics.render(), media_type=PROMETHEUS_TEXT)

    host, _, port = platform.config.metrics.listen.rpartition(":")
    app = Starlette(routes=[Route("/metrics", all_metrics, methods=["GET"])])
    server = uvicorn.Server(uvicorn.Config(app, host=host.strip("[]"), port=int(port), log_level="warning",
                                           lifespan="off"))
    server.capture_signals = contextlib.nullcontext  # signals are the platform's own server's to handle
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    if task.done():
        raise MCPAgentCloudError(f"cannot serve metrics on {platform.config.metrics.listen}",
                                 hint="pick a free host:port for `metrics.listen`")
    return _MetricsServer(server, task)


def safe_errors(exc: ValidationError) -> str:
    """Pydantic's messages without the input values (a request body may hold secrets)."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())


def since_param(request: Request, *, epoch: bool = True) -> Any:
    """``?since=``: a duration back from now (30s, 10m, 2h, 7d) or an ISO 8601 time; epoch seconds, or the log's
    own time form with ``epoch=False``. None when absent."""
    raw = request.query_params.get("since")
    if not raw:
        return None
    try:
        value = parse_since(raw)
    except ValueError:
        raise ValidationFailed(f"query parameter 'since' must be a duration (30s, 10m, 2h, 1d) or an ISO 8601 "
                               f"time, not {raw!r}", hint="e.g. ?since=1h or ?since=2026-12-07T09:00:00") from None
    return log_time_to_epoch(value) if epoch else value


def int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationFailed(f"query parameter {name!r} must be a whole number, not {raw!r}") from None
    if value < 0:
        raise ValidationFailed(f"query parameter {name!r} must not be negative")
    return value


def _wrap(handler):
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except MCPAgentCloudError as exc:
            return error_response(exc)
    endpoint.__name__ = handler.__name__
    return endpoint


class _ProviderRoutes:
    """``/auth/{provider}/...``: each configured auth provider's own routes (login pages, callbacks)."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.router: Router | None = None

    async def __call__(self, scope, receive, send) -> None:
        if self.router is None:
            self.router = Router([Mount(f"/{p.spec_name}", routes=p.routes())
                                  for p in self.platform.auth_providers if p.routes()])
        await self.router(scope, receive, send)


async def _log_stream(path: Path, *, tail: int | None, since: str | None, grep: re.Pattern | None, ndjson: bool,
                      timestamps: bool, follow: bool):
    """The matching lines of an app log, then (follow) each new one, across rotations."""
    import os

    from ..applog import LineSplitter, log_line_matches, parse_log_line, read_app_log, rotated_log

    def render(entries) -> str:
        if ndjson:
            return "".join(json.dumps(e.to_dict()) + "\n" for e in entries)
        return "".join((f"{e.ts} " if timestamps and e.ts else "") + e.line + "\n" for e in entries)

    f = None
    with contextlib.suppress(FileNotFoundError):
        f = open(path, "rb")
    try:
        # Up to the size seen now; a follow goes on from there, so no line is lost or shown twice.
        pos = os.fstat(f.fileno()).st_size if f is not None else 0
        entries = await asyncio.to_thread(read_app_log, path, tail=tail, since=since, grep=grep, current=f, end=pos)
        if entries:
            yield render(entries)
        if not follow:
            return
        splitter = LineSplitter()
        while True:
            chunk = b""
            if f is not None:
                f.seek(pos)
                chunk = f.read(1 << 20)
                pos += len(chunk)
            if chunk:
                lines = [parse_log_line(raw.decode("utf-8", "replace")) for raw in splitter.feed(chunk)]
                if text := render(e for e in lines if log_line_matches(e, since, grep)):
                    yield text
                continue
            try:
                st = os.stat(path)
            except FileNotFoundError:
                st = None
            if st is not None and (f is None or st.st_ino != os.fstat(f.fileno()).st_ino):
                # Rotated (or created): the rest of the old file, the rotated file if it is another one (two
                # rotations since the last look), then the new file from its start.
                if f is not None:
                    f.seek(pos)
                    raws = splitter.feed(f.read()) + splitter.flush()
                    with contextlib.suppress(FileNotFoundError), open(rotated_log(path), "rb") as middle:
                        if os.fstat(middle.fileno()).st_ino != os.fstat(f.fileno()).st_ino:
                            raws += middle.read().splitlines()
                    rest = [parse_log_line(raw.decode("utf-8", "replace")) for raw in raws]
                    if text := render(e for e in rest if log_line_matches(e, since, grep)):
                        yield text
                    f.close()
                f, pos, splitter = None, 0, LineSplitter()
                with contextlib.suppress(FileNotFoundError):
                    f = open(path, "rb")
                continue
            if st is not None and st.st_size < pos:  # truncated in place
                pos = 0
            await asyncio.sleep(0.25)
    finally:
        if f is not None:
            f.close()


# OpenAPI summaries (and request body models in bridge.py) of the gateway's routes.
GATEWAY_DOCS: dict[tuple[str, str], tuple[str, str | None]] = {
    ("GET", "/servers/{name}/mcp"): ("MCP Streamable HTTP: open the server-to-client SSE stream of a session", None),
    ("POST", "/servers/{name}/mcp"): ("MCP Streamable HTTP: send a JSON-RPC message or batch", None),
    ("DELETE", "/servers/{name}/mcp"): ("MCP Streamable HTTP: end a session", None),
    ("GET", "/servers/{name}/sse"): ("Legacy MCP HTTP+SSE transport: open a session's event stream", None),
    ("POST", "/servers/{name}/messages"): ("Legacy MCP HTTP+SSE transport: send a JSON-RPC message to a session",
                                           None),
    ("GET", "/servers/{name}/tools"): ("REST: the deployment's tools", None),
    ("POST", "/servers/{name}/call_tool"): ("REST: call a tool", "CallToolBody"),
    ("POST", "/servers/{name}/read_resource"): ("REST: read a resource", "ReadResourceBody"),
    ("GET", "/servers/{name}/prompts"): ("REST: the deployment's prompts", None),
}


def _operation_id(method: str, path: str) -> str:
    tail = path.removeprefix("/servers/{name}/").strip("/").replace("/", "_") or "root"
    return f"{tail}_{method.lower()}"


def openapi_document(endpoints: list[Endpoint], gateway_routes: list = ()) -> dict[str, Any]:
    components: dict[str, Any] = {}

    def ref(model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            components[name] = sub
        components[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    error = {"description": "Error", "content": {"application/json": {"schema": {
        "type": "object", "properties": {"error": {"type": "string"}, "message": {"type": "string"},
                                         "hint": {"type": "string"}}, "required": ["error", "message"]}}}}
    rpc = {"type": "object", "properties": {
        "jsonrpc": {"const": "2.0"}, "id": {}, "error": {"type": "object", "properties": {
            "code": {"type": "integer"}, "message": {"type": "string"}, "data": {"type": "object"}},
            "required": ["code", "message"]}}, "required": ["jsonrpc", "error"]}
    paths: dict[str, Any] = {}
    for e in endpoints:
        op: dict[str, Any] = {"summary": e.summary, "operationId": e.handler.__name__,
                              "responses": {"200": {"description": "OK"}, "4XX": error}}
        if not e.public:
            op["security"] = [{"bearer": []}]
        if "{" in e.path:
            op["parameters"] = [{"name": p.split("}")[0], "in": "path", "required": True,
                                 "schema": {"type": "string"}} for p in e.path.split("{")[1:]]
        if e.request is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(e.request)}}}
        if isinstance(e.response, type):
            op["responses"]["200"]["content"] = {"application/json": {"schema": ref(e.response)}}
        if e.stream:
            op["responses"]["200"]["content"] = {e.stream: {"schema": {"type": "string"}}}
        paths.setdefault(e.path, {})[e.method.lower()] = op
    for route in gateway_routes:
        path = getattr(route, "path", "")
        if not path.startswith("/servers/") or path.rstrip("/") in {p.rstrip("/") for p in paths}:
            continue  # trailing-slash aliases are listed once
        doc = (getattr(getattr(route, "endpoint", None), "__doc__", None) or "").strip().splitlines()
        for method in sorted((getattr(route, "methods", None) or set()) - {"HEAD"}):
            summary, body = GATEWAY_DOCS.get((method, path.rstrip("/")), (doc[0] if doc else path, None))
            op = {"summary": summary, "operationId": _operation_id(method, path), "security": [{"bearer": []}],
                  "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                                  "description": "deployment name, or org.name"}],
                  "responses": {"200": {"description": "OK"}, "4XX": error}}
            model = getattr(_bridge, body, None) if body else None
            if isinstance(model, type) and issubclass(model, BaseModel):
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(model)}}}
            if path.rstrip("/").endswith("/mcp"):
                op["parameters"] += [
                    {"name": "Mcp-Session-Id", "in": "header", "required": False, "schema": {"type": "string"},
                     "description": "session id the gateway returned on initialize"},
                    {"name": "MCP-Protocol-Version", "in": "header", "required": False,
                     "schema": {"type": "string"}}]
                op["responses"] = {
                    "200": {"description": "JSON-RPC response (application/json) or an SSE stream "
                                           "(text/event-stream)"},
                    "202": {"description": "accepted (notifications and responses)"},
                    "4XX": {"description": "JSON-RPC error: 400 malformed, 404 unknown session, 413 too large, "
                                           "429 session limit", "content": {"application/json": {"schema": rpc}}},
                    "5XX": {"description": "JSON-RPC error: 502 upstream failed, 504 timed out",
                            "content": {"application/json": {"schema": rpc}}}}
            elif path.rstrip("/").endswith("/sse"):
                op["responses"]["200"] = {"description": "SSE stream; its first event names the message endpoint",
                                          "content": {"text/event-stream": {"schema": {"type": "string"}}}}
            elif path.rstrip("/").endswith("/messages"):
                op["parameters"].append({"name": "session_id", "in": "query", "required": True,
                                         "schema": {"type": "string"}})
                op["responses"] = {"202": {"description": "accepted; the answer comes on the SSE stream"},
                                   "4XX": error}
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "mcp-agent-cloud platform API", "version": __version__},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
