"""The MCP gateway: Host/Origin checks, and the Streamable HTTP proxy at /servers/{name}/mcp with its own sessions.

Every client session gets an id minted here, mapped to the upstream instance's id and bound to the caller. The
proxy streams bytes both ways (SSE included) so every MCP feature passes through; it only looks at the request
body (size, JSON, ``initialize``) and, for a streamed POST answer, at event boundaries (to end it cleanly when the
request times out). bridge.py builds the legacy SSE transport and the REST surface on ``Gateway.target`` and the
session table.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
from mcp_types.version import KNOWN_PROTOCOL_VERSIONS
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..config import GatewayConfig, PlatformConfig
from ..errors import MCPAgentCloudError, NotFoundError
from ..hookspecs.types import Identity
from ..names import from_at_path
from ..telemetry import TRACEPARENT, parse_traceparent
from ..runtime.jsonrpc_errors import (
    HEADER_REJECTED,
    INVALID_REQUEST,
    LIMIT_EXCEEDED,
    PARSE_ERROR,
    REQUEST_TIMED_OUT,
    UPSTREAM_FAILED,
    cancelled_notification,
    error_object,
    session_not_found,
    unsupported_version,
)
from .upstream import Response as UpstreamResponse
from .upstream import UpstreamError, UpstreamPool
from .catalog import caller_id

log = logging.getLogger("mcp_agent_cloud.gateway")

# Headers that describe one hop, or carry the platform's own credentials: never forwarded either way.
HOP_HEADERS = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "host", "content-length", "authorization", "cookie", "origin"}
SESSION_HEADER = "mcp-session-id"
VERSION_HEADER = "mcp-protocol-version"
_SESSION = SESSION_HEADER.encode()  # the relay works on the ASGI scope's bytes headers
_HOP = {h.encode() for h in HOP_HEADERS}
_NOT_FORWARDED = _HOP | {_SESSION, b"accept-encoding"}
_NOT_RETURNED = _HOP | {_SESSION}

CORS_ALLOW_HEADERS = "Authorization, Content-Type, Accept, Mcp-Session-Id, MCP-Protocol-Version, Last-Event-ID"
CORS_EXPOSE_HEADERS = "Mcp-Session-Id, MCP-Protocol-Version, WWW-Authenticate"
CORS_ALLOW_METHODS = "GET, POST, DELETE, HEAD, OPTIONS"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
CANCEL_REASON = "gateway.request_timeout"


class LimitExceeded(MCPAgentCloudError):
    """A gateway limit was hit. ``limit`` is the config key under ``gateway.``."""

    status = 429
    code = "limit_exceeded"
    rpc_code = LIMIT_EXCEEDED

    def __init__(self, message: str, *, limit: str, value: int | float, hint: str | None = None) -> None:
        super().__init__(message, hint=hint or f"raise gateway.{limit} in the platform config if this is expected")
        self.limit = limit
        self.value = value

    @property
    def config_key(self) -> str:
        return f"gateway.{self.limit}"

    def to_dict(self) -> dict:
        return {**super().to_dict(), "limit": self.limit, "config_key": self.config_key, "value": self.value}


class MessageTooLarge(LimitExceeded):
    status = 413
    code = "too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"the message is larger than {limit} bytes, the most gateway.max_message_bytes allows",
                         limit="max_message_bytes", value=limit,
                         hint="send a smaller message, or raise gateway.max_message_bytes in the platform config")


class RequestTimedOut(LimitExceeded):
    status = 504
    code = "gateway_timeout"
    rpc_code = REQUEST_TIMED_OUT

    def __init__(self, key: str, timeout: float) -> None:
        super().__init__(f"{key} did not answer within {timeout:g}s, the most gateway.request_timeout allows",
                         limit="request_timeout", value=timeout,
                         hint="raise gateway.request_timeout in the platform config for slow tools")

    def error_object(self, id: Any) -> dict:
        return error_object(self.rpc_code, _rpc_message(self), id, self.to_dict())


def _rpc_message(exc: MCPAgentCloudError) -> str:
    return f"{exc.message}; {exc.hint}" if exc.hint else exc.message


def rpc_error(status: int, code: int, message: str, *, id: Any = None, data: dict | None = None,
              headers: dict | None = None) -> JSONResponse:
    """A JSON-RPC error object as an HTTP response (MCP clients read the body of non-2xx answers)."""
    return JSONResponse(error_object(code, message, id, data), status_code=status, headers=headers)


def platform_error(exc: MCPAgentCloudError, id: Any = None) -> JSONResponse:
    """A platform error on an MCP endpoint: a JSON-RPC error with the same HTTP status, whose ``data`` is the
    platform's {"error", "message", "hint"} (and, for limits, {"limit", "config_key", "value"})."""
    code = getattr(exc, "rpc_code", UPSTREAM_FAILED if exc.status >= 500 else INVALID_REQUEST)
    return rpc_error(exc.status, code, _rpc_message(exc), id=id, data=exc.to_dict())


def session_not_found_response(session_id: str) -> JSONResponse:
    return JSONResponse(session_not_found(
        "it is unknown, expired, ended, belongs to another caller, or its server was restarted; start a new "
        "session with initialize", data={"session_id": session_id[:64]}), status_code=404)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with MessageTooLarge past ``limit`` bytes (by Content-Length, or while read)."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise MessageTooLarge(limit)
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > limit:
            raise MessageTooLarge(limit)
    return bytes(chunks)


# ---------------------------------------------------------------------------------------------------------------
# Host and Origin (DNS-rebinding protection) and CORS
# ---------------------------------------------------------------------------------------------------------------


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _is_local_bind(host: str) -> bool:
    """Listening on loopback or on every interface: the loopback names reach this server too."""
    if host in ("", "0.0.0.0", "::", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_DEFAULT_PORTS = {"http": 80, "https": 443}


def allowed_hosts(config: PlatformConfig) -> set[str]:
    """Host header values this platform answers to by default, plus ``gateway.allowed_hosts`` (patterns kept)."""
    port = config.port
    hosts = set() if config.host in ("", "0.0.0.0", "::") else {f"{_bracket(config.host.lower())}:{port}"}
    if _is_local_bind(config.host):
        hosts |= {f"{name}:{port}" for name in LOOPBACK_NAMES}
    if config.public_url:
        parts = urlsplit(config.public_url)
        if parts.hostname:
            name = _bracket(parts.hostname.lower())
            default = _DEFAULT_PORTS.get(parts.scheme.lower())
            explicit = parts.port
            if explicit is None or explicit == default:
                hosts.add(name)  # clients leave the default port out of Host
                if default:
                    hosts.add(f"{name}:{default}")
            else:
                hosts.add(f"{name}:{explicit}")
    hosts |= set(config.gateway.allowed_hosts)
    return hosts


def allowed_origins(config: PlatformConfig) -> set[str]:
    """Origins allowed by default: the platform's own (public_url, or the listen address and its loopback names).
    Other ports on the same machine are other origins and are refused unless configured."""
    origins = set()
    base = urlsplit(config.base_url)
    if base.hostname:
        scheme = base.scheme.lower()
        name = _bracket(base.hostname.lower())
        port = base.port or _DEFAULT_PORTS.get(scheme)
        origins.add(f"{scheme}://{name}:{port}" if port else f"{scheme}://{name}")
        if port and port == _DEFAULT_PORTS.get(scheme):
            origins.add(f"{scheme}://{name}")  # browsers leave the default port out of Origin
    if _is_local_bind(config.host):
        origins |= {f"http://{name}:{config.port}" for name in LOOPBACK_NAMES}
    origins |= set(config.gateway.allowed_origins)
    return origins


def _matches(value: str, allowed: set[str]) -> bool:
    """Exact match, ``*``, or a ``base:*`` pattern for any port (the SDK's transport_security syntax)."""
    value = value.lower()
    if value in allowed or "*" in allowed:
        return True
    return any(a.endswith(":*") and value.startswith(a[:-1]) and value[len(a) - 1:].isdigit() for a in allowed)


def host_allowed(host: str | None, allowed: set[str]) -> bool:
    return bool(host) and _matches(host, allowed)


def origin_allowed(origin: str | None, allowed: set[str]) -> bool:
    """No Origin header: not a browser (or a same-origin GET), nothing to protect against."""
    return origin is None or _matches(origin.rstrip("/"), allowed)


class TransportGuard:
    """ASGI middleware in front of auth: refuses requests whose Host or Origin is not this platform's (421/403),
    answers CORS preflights for allowed origins, and adds CORS headers to their responses."""

    # Probes come from load balancers and orchestrators that address the platform by IP; it returns no data.
    EXEMPT = ("/healthz",)

    def __init__(self, app, config: PlatformConfig) -> None:
        self.app = app
        self.hosts = allowed_hosts(config)
        self.origins = allowed_origins(config)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if (rewritten := from_at_path(scope["path"])) is not None:
            # @{org}/{name}: the same deployment as {org}.{name}. The address the client used is kept for the
            # 401's challenge, whose metadata must name the URL the client knows.
            scope.setdefault("state", {})["address"] = scope["path"]
            scope = {**scope, "path": rewritten, "raw_path": rewritten.encode()}
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        host = headers.get("host")
        if path not in self.EXEMPT and not host_allowed(host, self.hosts):
            return await self._reject(
                scope, receive, send, 421, "Host", host, "gateway.allowed_hosts",
                f"the Host header {host!r} is not a name of this platform (DNS-rebinding protection)",
                "if clients reach the platform under this name, set public_url to the URL they use, or add the "
                "name to gateway.allowed_hosts in the platform config")
        origin = headers.get("origin")
        if not origin_allowed(origin, self.origins):
            return await self._reject(
                scope, receive, send, 403, "Origin", origin, "gateway.allowed_origins",
                f"requests from the web origin {origin!r} are not allowed",
                "if web pages of this origin may call the platform, add it to gateway.allowed_origins in the "
                "platform config")
        if origin is None:
            return await self.app(scope, receive, send)
        cors = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin"),
                (b"access-control-expose-headers", CORS_EXPOSE_HEADERS.encode())]
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            preflight = Response(status_code=204, headers={
                "Access-Control-Allow-Methods": CORS_ALLOW_METHODS, "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
                "Access-Control-Max-Age": "600"})
            preflight.raw_headers.extend(cors)
            return await preflight(scope, receive, send)

        async def send_with_cors(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *cors]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _reject(self, scope, receive, send, status: int, header: str, value: str | None, key: str,
                      message: str, hint: str) -> None:
        data = {"header": header, "value": value, "config_key": key}
        if scope["path"].rstrip("/").endswith("/mcp"):
            response = rpc_error(status, HEADER_REJECTED, f"{message}; {hint}", data=data)
        else:
            code = "invalid_host" if header == "Host" else "invalid_origin"
            response = JSONResponse({"error": code, "message": message, "hint": hint, **data}, status_code=status)
        log.warning("refused a request to %s: %s %r (set %s to allow it)", scope["path"], header, value, key)
        await response(scope, receive, send)


# ---------------------------------------------------------------------------------------------------------------
# Targets and sessions
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The instance serving a deployment right now. ``instance_id`` changes on every restart and redeploy."""

    key: str  # "org.name"
    org: str
    name: str
    url: str  # the instance's Streamable HTTP URL
    instance_id: str
    version: int | None = None


@dataclass(eq=False)
class Session:
    id: str
    kind: str  # "http" (proxied here), "sse" or "rest" (bridged by bridge.py)
    key: str
    url: str
    instance_id: str
    owner: tuple[str, str, str, str]  # owner_key()
    token_key: str
    close: Callable[[], Awaitable[None]] | None = None
    upstream_id: str | None = None
    protocol_version: str | None = None
    pending: bool = False  # reserved for an initialize that has not been answered yet
    busy: int = 0  # requests and streams in flight: a session with an open stream is not idle
    last_used: float = field(default_factory=time.monotonic)


def owner_key(identity: Identity) -> tuple[str, str, str, str]:
    """Who owns a session: the same caller (auth provider, org, subject) with the same token, when it has one."""
    return identity.provider, identity.org, identity.subject, identity.token_id or ""


def _token_key(identity: Identity) -> str:
    return f"token:{identity.token_id}" if identity.token_id else f"subject:{identity.org}/{identity.subject}"


class Gateway:
    """Routes MCP traffic to the instance serving each deployment and keeps the table of client sessions."""

    def __init__(self, platform, config: GatewayConfig, http: httpx2.AsyncClient) -> None:
        self.platform = platform
        self._config = config
        self.http = http  # the SDK's client (httpx2), shared with the bridge: control requests and SDK sessions
        # The byte relay has a client of its own (upstream.py): httpx2's models and its pure-Python HTTP parsing
        # were most of the gateway's CPU per call, and the relay needs neither. No read timeout (GET streams are
        # long-lived; a POST's answer is bounded by gateway.request_timeout) and no cap on connections.
        self.relay_pool = UpstreamPool()
        self.sessions: dict[str, Session] = {}
        # key -> (instance object, its id). Holding the object means a new Instance is never mistaken for it.
        self._instances: dict[str, tuple[Any, str]] = {}
        self._reaper: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        if platform is None:  # a bare gateway (unit tests of the bridge): no metrics to feed
            return
        platform.gateway = self
        platform.metrics.gauge("mcp_agent_cloud_active_sessions", "client sessions open on the gateway",
                               ("org", "deployment"), self.session_counts)

    def session_counts(self) -> dict[tuple[str, str], float]:
        counts: dict[tuple[str, str], float] = {}
        for session in list(self.sessions.values()):
            if not session.pending:
                key = tuple(session.key.split(".", 1))
                counts[key] = counts.get(key, 0) + 1
        return counts

    @property
    def config(self) -> GatewayConfig:
        return self._config

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap_loop())

    async def aclose(self) -> None:
        """Platform stop: end every session (upstream DELETEs and bridge callbacks), briefly."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(BaseException):
                await self._reaper
        sessions = list(self.sessions.values())
        self.sessions.clear()
        if sessions:
            with anyio.move_on_after(5):
                await asyncio.gather(*(self._end(s, "platform stopping") for s in sessions), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await self.relay_pool.aclose()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- targets ---------------------------------------------------------------------------------------------

    def _instance_id(self, key: str, instance: Any) -> str:
        known = self._instances.get(key)
        if known is None or known[0] is not instance:
            known = (instance, secrets.token_hex(8))
            self._instances[key] = known
        return known[1]

    def current_instance_id(self, key: str) -> str | None:
        active = self.platform.active.get(key)
        return None if active is None else self._instance_id(key, active.instance)

    async def target(self, request: Request) -> Target:
        """The caller's deployment named in the path. 403 another org's, 404 unknown, 503 not serving."""
        identity: Identity = request.state.identity
        org, short = self.platform.qualify(identity, request.path_params["name"])
        key = f"{org}.{short}"
        active = self.platform.active.get(key)
        if active is None:
            record = await self.platform.registry.get_deployment(org, short)
            if record is None:
                raise NotFoundError(f"no deployment {org}.{short}", hint="see `mcp-agent list`")
            raise NotServing(f"{org}.{short} is {record.status}, not serving",
                             hint=f"`mcp-agent start {short}` or `mcp-agent logs {short}`")
        return Target(key=key, org=org, name=short, url=active.instance.url,
                      instance_id=self._instance_id(key, active.instance), version=active.version)

    # -- sessions --------------------------------------------------------------------------------------------

    def open_session(self, target: Target, identity: Identity, kind: str,
                     close: Callable[[], Awaitable[None]] | None = None) -> str:
        """Register a client session on ``target`` for ``identity``; returns its id. Raises LimitExceeded (429)
        when the deployment or the token has as many open sessions as the config allows. ``close`` is awaited
        when the gateway ends the session itself (idle, instance replaced, platform stop), not on close_session."""
        return self._register(target, identity, kind, close).id

    def _register(self, target: Target, identity: Identity, kind: str,
                  close: Callable[[], Awaitable[None]] | None = None, *, pending: bool = False) -> Session:
        cfg = self._config
        token_key = _token_key(identity)
        per_deployment = sum(1 for s in self.sessions.values() if s.key == target.key)
        if per_deployment >= cfg.max_sessions_per_deployment:
            raise LimitExceeded(f"{target.key} has {per_deployment} open sessions, the most "
                                f"gateway.max_sessions_per_deployment allows",
                                limit="max_sessions_per_deployment", value=cfg.max_sessions_per_deployment,
                                hint="end unused sessions (DELETE), wait for idle ones to expire, or raise "
                                     "gateway.max_sessions_per_deployment in the platform config")
        per_token = sum(1 for s in self.sessions.values() if s.token_key == token_key)
        if per_token >= cfg.max_sessions_per_token:
            raise LimitExceeded(f"this token has {per_token} open sessions, the most gateway.max_sessions_per_token "
                                f"allows", limit="max_sessions_per_token", value=cfg.max_sessions_per_token,
                                hint="end unused sessions (DELETE), wait for idle ones to expire, or raise "
                                     "gateway.max_sessions_per_token in the platform config")
        session = Session(id=secrets.token_urlsafe(24), kind=kind, key=target.key, url=target.url,
                          instance_id=target.instance_id, owner=owner_key(identity), token_key=token_key, close=close,
                          pending=pending)
        self.sessions[session.id] = session
        return session

    def touch(self, session_id: str) -> None:
        session = self.sessions.get(session_id)
        if session is not None:
            session.last_used = time.monotonic()

    @contextlib.contextmanager
    def in_use(self, session_id: str):
        """The session is busy meanwhile: the reaper does not end it, however long the work takes."""
        session = self.sessions.get(session_id)
        self._acquire(session)
        try:
            yield
        finally:
            self._release(session, None)

    def _acquire(self, session: Session | None) -> None:
        if session is not None:
            session.busy += 1
            session.last_used = time.monotonic()

    async def close_session(self, session_id: str) -> None:
        """The owner ends a session: forget it; an HTTP session is also DELETEd upstream. ``close`` is not called
        (the caller is the one closing)."""
        session = self.sessions.pop(session_id, None)
        if session is not None and session.kind == "http":
            await self._delete_upstream(session)

    def lookup(self, session_id: str, target: Target, identity: Identity) -> Session | None:
        """The session for this caller on this instance, or None (unknown, expired, foreign, instance replaced)."""
        session = self.sessions.get(session_id)
        if session is None or session.pending or session.owner != owner_key(identity) or session.key != target.key:
            return None
        if session.instance_id != target.instance_id:
            self._drop(session, "its instance was replaced")
            return None
        if session.busy == 0 and time.monotonic() - session.last_used > self._config.session_idle_timeout:
            self._drop(session, "idle")
            return None
        return session

    def _drop(self, session: Session, reason: str) -> None:
        if self.sessions.pop(session.id, None) is not None:
            self._spawn(self._end(session, reason))

    async def _end(self, session: Session, reason: str) -> None:
        """The gateway ends a session on its own: tell the upstream (if it still runs) or the bridge."""
        log.info("ending %s session on %s: %s", session.kind, session.key, reason)
        try:
            if session.close is not None:
                await session.close()
            elif session.kind == "http" and self.current_instance_id(session.key) == session.instance_id:
                await self._delete_upstream(session)
        except Exception as exc:  # a failing close must not stop the reaper
            log.warning("ending a session on %s failed: %r", session.key, exc)

    async def _delete_upstream(self, session: Session) -> None:
        if not session.upstream_id:
            return
        headers = {SESSION_HEADER: session.upstream_id}
        if session.protocol_version:
            headers[VERSION_HEADER] = session.protocol_version
        with contextlib.suppress(httpx2.HTTPError), anyio.move_on_after(5):
            resp = await self.http.delete(session.url, headers=headers)
            await resp.aclose()

    async def _reap_loop(self) -> None:
        interval = max(0.2, min(self._config.session_idle_timeout / 4, 30.0))
        while True:
            await asyncio.sleep(interval)
            try:
                self.reap()
            except Exception:  # keep reaping whatever happened
                log.exception("the session reaper failed")

    def reap(self) -> None:
        """End idle sessions and sessions whose instance is gone or was replaced."""
        now = time.monotonic()
        for session in list(self.sessions.values()):
            current = self.current_instance_id(session.key)
            if current != session.instance_id:
                self._drop(session, "its instance was replaced or stopped")
            elif session.busy == 0 and now - session.last_used > self._config.session_idle_timeout:
                self._drop(session, f"idle for more than {self._config.session_idle_timeout:g}s")
        for key in list(self._instances):
            if key not in self.platform.active:
                del self._instances[key]

    # -- the Streamable HTTP proxy ---------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        methods = ["GET", "POST", "DELETE"]
        endpoint = _Endpoint(self)
        return [Route("/servers/{name}/mcp", endpoint, methods=methods),
                Route("/servers/{name}/mcp/", endpoint, methods=methods)]

    async def handle(self, request: Request) -> Response:
        """MCP Streamable HTTP endpoint of a deployment (POST messages, GET stream, DELETE session)."""
        try:
            target = await self.target(request)
        except MCPAgentCloudError as exc:
            return platform_error(exc)
        identity: Identity = request.state.identity
        version = request.headers.get(VERSION_HEADER)
        if version is not None and version not in KNOWN_PROTOCOL_VERSIONS:
            return JSONResponse(unsupported_version(version, KNOWN_PROTOCOL_VERSIONS, "known versions: "
                                                    f"{', '.join(KNOWN_PROTOCOL_VERSIONS)}"), status_code=400)
        client_sid = request.headers.get(SESSION_HEADER)
        session = None
        if client_sid is not None:
            session = self.lookup(client_sid, target, identity)
            if session is None:
                return session_not_found_response(client_sid)
            # Busy before the first await (reading the body): the reaper must not end it under this request.
            self._acquire(session)
            if version:
                session.protocol_version = version
        reserved = None
        relayed = False
        call = None
        try:
            body = b""
            ids: list[Any] = []
            initialize = None
            if request.method == "POST":
                parsed = await self._read_message(request)
                if isinstance(parsed, Response):
                    return parsed
                body, messages = parsed
                requests = [m for m in messages if "method" in m and "id" in m]
                ids = [m["id"] for m in requests]
                if requests:
                    call = self.call(target, requests, request.headers.get(TRACEPARENT),
                                     session.id if session else None, identity)
                if session is None and len(messages) == 1 and messages[0].get("method") == "initialize":
                    initialize = messages[0]
            if initialize is not None:
                try:
                    reserved = self._register(target, identity, "http", pending=True)
                except LimitExceeded as exc:
                    if call is not None:
                        call.finish(len(ids), "limit_exceeded")
                    return platform_error(exc, initialize.get("id"))
            response = await self._forward(request, target, identity, session, reserved, body, ids, call)
            relayed = isinstance(response, _Relay)  # it releases the session when the stream ends
            return response
        finally:
            if not relayed:
                self._release(session, reserved)
                if call is not None:
                    call.finish(0)  # no-op when an error path finished it already

    def call(self, target: Target, requests: list[dict], traceparent: str | None = None,
             session_id: str | None = None, caller: Identity | None = None) -> _Call | None:
        """Start counting, timing and tracing JSON-RPC requests to ``target`` (every transport: this proxy, the
        bridge's SSE and REST); the caller finishes it once the answer is out."""
        if self.platform is None:
            return None
        return _Call(self.platform, target, requests, traceparent, session_id, caller_id(caller))

    def _release(self, session: Session | None, reserved: Session | None) -> None:
        if session is not None:
            session.busy -= 1
            session.last_used = time.monotonic()
        if reserved is not None and reserved.pending:
            self.sessions.pop(reserved.id, None)

    async def _read_message(self, request: Request) -> tuple[bytes, list[dict]] | Response:
        """The POST body, at most gateway.max_message_bytes, parsed as one JSON-RPC message or a batch."""
        try:
            body = await read_body(request, self._config.max_message_bytes)
        except MessageTooLarge as exc:
            return platform_error(exc)
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return rpc_error(400, PARSE_ERROR, f"Parse error: the body is not valid JSON ({exc})")
        messages = data if isinstance(data, list) else [data]
        if not messages or not all(_is_jsonrpc(m) for m in messages):
            return rpc_error(400, INVALID_REQUEST, "Invalid Request: the body must be a JSON-RPC 2.0 message "
                             "(an object with \"jsonrpc\": \"2.0\" and a method, or a result or error) or a "
                             "non-empty array of them")
        return body, messages

    def cancel_upstream(self, session: Session | None, ids: list[Any]) -> None:
        """Tell the upstream that requests of ``session`` were given up on (gateway.request_timeout), so it stops
        working on them. (A request without a session has nothing to name it by; its connection is closed.)"""
        if session is not None and session.upstream_id and ids:
            self._spawn(self._post_cancelled(session, ids))

    async def _post_cancelled(self, session: Session, ids: list[Any]) -> None:
        headers = {SESSION_HEADER: session.upstream_id or "", "accept": "application/json, text/event-stream"}
        if session.protocol_version:
            headers[VERSION_HEADER] = session.protocol_version
        for request_id in ids:
            with contextlib.suppress(httpx2.HTTPError), anyio.move_on_after(5):
                resp = await self.http.post(session.url, json=cancelled_notification(request_id, CANCEL_REASON),
                                            headers=headers)
                await resp.aclose()

    def _upstream_headers(self, request: Request, session: Session | None,
                          call: _Call | None = None) -> list[tuple[bytes, bytes]]:
        # ASGI header names are lower case already; Host and Content-Length are the relay pool's to add.
        headers = [(k, v) for k, v in request.scope["headers"] if k not in _NOT_FORWARDED]
        if call is not None and call.span is not None:
            # The app's spans become children of the gateway's span (W3C trace context).
            headers = [(k, v) for k, v in headers if k != _TRACEPARENT]
            headers.append((_TRACEPARENT, call.span.traceparent().encode()))
        if session is not None and session.upstream_id:
            headers.append((_SESSION, session.upstream_id.encode()))
        # Uncompressed, so the relay can see SSE event boundaries and pass the bytes on unchanged.
        headers.append((b"accept-encoding", b"identity"))
        return headers

    async def _forward(self, request: Request, target: Target, identity: Identity, session: Session | None,
                       reserved: Session | None, body: bytes, ids: list[Any], call: _Call | None = None) -> Response:
        headers = self._upstream_headers(request, session, call)
        timeout = self._config.request_timeout
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):  # the relay client is plain asyncio
                resp = await self.relay_pool.request(request.method.encode(), target.url, headers,
                                                     body if request.method == "POST" else b"",
                                                     request.scope.get("query_string", b""))
        except TimeoutError:
            self.cancel_upstream(session, ids)
            timed_out = RequestTimedOut(target.key, timeout)
            if call is not None:
                call.finish(len(ids), "timeout")
            return _batch_response(timed_out.status, [timed_out.error_object(i) for i in ids or [None]])
        except UpstreamError as exc:
            if call is not None:
                call.finish(len(ids), "upstream_failed")
            error = f"{target.key} did not answer ({type(exc).__name__}: {exc}); {_look_at(target)}"
            return _batch_response(502, [error_object(UPSTREAM_FAILED, error, i, {"deployment": target.key})
                                         for i in ids or [None]])

        upstream_sid = content_type = None
        for k, v in resp.headers:
            if k == _SESSION:
                upstream_sid = v.decode("latin-1")
            elif k == b"content-type":
                content_type = v
        if session is not None:
            if resp.status == 404:
                # The upstream forgot the session (it expired or restarted there): so do we.
                await resp.aclose()
                self.sessions.pop(session.id, None)
                if call is not None:
                    call.finish(len(ids), "session_not_found")
                return session_not_found_response(session.id)
            if request.method == "DELETE" and resp.status < 300:
                self.sessions.pop(session.id, None)
            sid = session.id
        elif upstream_sid and resp.status < 400:
            if reserved is not None:
                reserved.upstream_id, reserved.pending, reserved.last_used = upstream_sid, False, time.monotonic()
                sid = reserved.id
            else:  # a server that opens sessions on a request other than initialize
                try:
                    opened = self._register(target, identity, "http")
                except LimitExceeded as exc:
                    await resp.aclose()
                    orphan = Session(id="", kind="http", key=target.key, url=target.url,
                                     instance_id=target.instance_id, owner=owner_key(identity), token_key="",
                                     upstream_id=upstream_sid)
                    self._spawn(self._delete_upstream(orphan))
                    if call is not None:
                        call.finish(len(ids), "limit_exceeded")
                    return platform_error(exc, ids[0] if len(ids) == 1 else None)
                opened.upstream_id = upstream_sid
                sid = opened.id
        else:
            sid = None

        headers = [(k, v) for k, v in resp.headers if k not in _NOT_RETURNED]
        if sid is not None and (upstream_sid or session is not None):
            headers.append((_SESSION, sid.encode()))
        streamed = (content_type or b"").lower().startswith(b"text/event-stream")
        deadline = started + timeout if request.method == "POST" and streamed and ids else None
        return _Relay(self, target, resp, headers, session, reserved, deadline, ids, call,
                      json_answer=call is not None and not streamed)


def _look_at(target: Target) -> str:
    return f"check `mcp-agent status {target.name}` and `mcp-agent logs {target.name}`"


class _Endpoint:
    """``Gateway.handle`` as a raw ASGI app: Starlette wraps a request handler in a layer that every ``send`` of a
    relayed stream goes through. ``handle`` answers its errors itself; anything unexpected still gets the 500."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope, receive, send) -> None:
        response = await self.gateway.handle(Request(scope, receive, send))
        await response(scope, receive, send)


class NotServing(MCPAgentCloudError):
    status = 503
    code = "unavailable"


def _is_jsonrpc(message: Any) -> bool:
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return False
    if "method" in message:
        return isinstance(message["method"], str)
    return "id" in message and ("result" in message or "error" in message)


def _batch_response(status: int, errors: list[dict]) -> Response:
    """One error per request id: an array for a batch, else the one object (id null when there was no request)."""
    return JSONResponse(errors if len(errors) > 1 else errors[0], status_code=status)


_EOL = re.compile(rb"\r\n|\r|\n")


class _SSESplitter:
    """Cuts an SSE byte stream at event boundaries, so a stream can be ended between events, and notes the ids
    of the JSON-RPC responses it carried."""

    def __init__(self) -> None:
        self.buf = b""
        self.answered: set[Any] = set()
        self.errors = 0

    def feed(self, data: bytes) -> bytes:
        buf = self.buf + data
        end = len(buf) - 1 if buf.endswith(b"\r") else len(buf)  # "\r" may be the first half of "\r\n"
        start = line_start = 0
        for m in _EOL.finditer(buf, 0, end):
            if m.start() == line_start:  # a blank line ends an event
                self._note(buf[start:m.start()])
                start = m.end()
            line_start = m.end()
        self.buf = buf[start:]
        return buf[:start]

    def _note(self, event: bytes) -> None:
        data = b"\n".join(line[5:].removeprefix(b" ") for line in _EOL.split(event) if line.startswith(b"data:"))
        if not data:
            return
        try:
            payload = json.loads(data)
        except ValueError:
            return
        for message in payload if isinstance(payload, list) else [payload]:
            if isinstance(message, dict) and "id" in message and ("result" in message or "error" in message):
                self.answered.add(json.dumps(message["id"]))
                self.errors += _is_error(message)


class _Relay:
    """Streams the upstream response to the client. Ends the upstream response when the client goes away (no
    leaked connections). A POST's SSE stream is cut at event boundaries, so it can end cleanly with an error event
    for each request still unanswered: when it outlives gateway.request_timeout (the requests are then cancelled
    upstream), or when the upstream connection breaks (an instance that crashed)."""

    def __init__(self, gateway: Gateway, target: Target, resp: UpstreamResponse, headers: list[tuple[bytes, bytes]],
                 session: Session | None, reserved: Session | None, deadline: float | None, ids: list[Any],
                 call: _Call | None = None, json_answer: bool = False) -> None:
        self.call = call
        # A JSON answer (not SSE) is kept, up to gateway.max_message_bytes, to count its errors at the end.
        self.answer: list[bytes] | None = [] if json_answer else None
        self.gateway = gateway
        self.target = target
        self.resp = resp
        self.headers = headers
        self.session = session
        self.reserved = reserved
        self.deadline = deadline
        self.ids = ids

    async def __call__(self, scope, receive, send) -> None:
        # The client going away ends the relay, and with it the upstream response. Plain asyncio (the relay's own
        # code has no anyio scopes): an anyio task group per response was a tenth of the gateway's CPU per call.
        relay = asyncio.current_task()
        streaming = True
        gone = False

        async def watch_disconnect() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            if streaming:
                gone = True
                relay.cancel()

        watcher = asyncio.get_running_loop().create_task(watch_disconnect())
        try:
            await self._stream(send)
        except asyncio.CancelledError:
            if not gone:
                raise
            relay.uncancel()
        except OSError:
            pass  # the client went away while we were sending
        finally:
            streaming = False  # before any await: the watcher must not cancel the task once the relay is done
            watcher.cancel()
            if self.call is not None:
                self.call.finish(0, "client_gone")  # a no-op when _stream finished it
            await self.resp.aclose()
            self.gateway._release(self.session, self.reserved)

    async def _stream(self, send) -> None:
        await send({"type": "http.response.start", "status": self.resp.status, "headers": self.headers})
        # Only a POST's SSE answer has a deadline, and only it is cut at event boundaries.
        splitter = _SSESplitter() if self.deadline is not None else None
        broken: Exception | None = None
        deadline = asyncio.timeout(None if self.deadline is None else max(0.0, self.deadline - time.monotonic()))
        try:
            async with deadline:
                try:
                    answer = self.answer
                    async for chunk in self.resp.aiter_stream():
                        if answer is not None:
                            answer.append(chunk)
                        whole = splitter.feed(chunk) if splitter is not None else chunk
                        if whole:
                            await send({"type": "http.response.body", "body": whole, "more_body": True})
                except UpstreamError as exc:
                    broken = exc
                    log.info("the upstream stream of %s broke: %s: %s", self.target.key, type(exc).__name__, exc)
        except TimeoutError:
            if not deadline.expired():
                raise
        tail = b""
        if splitter is not None:
            unanswered = [i for i in self.ids if json.dumps(i) not in splitter.answered]
            if deadline.expired():
                self.gateway.cancel_upstream(self.session, unanswered)
                timed_out = RequestTimedOut(self.target.key, self.gateway.config.request_timeout)
                tail = _events(timed_out.error_object(i) for i in unanswered)
            elif broken is not None:
                message = (f"the connection to {self.target.key} broke before it answered "
                           f"({type(broken).__name__}: {broken}); {_look_at(self.target)}")
                tail = _events(error_object(UPSTREAM_FAILED, message, i, {"deployment": self.target.key})
                               for i in unanswered)
            else:
                tail = splitter.buf  # the upstream ended mid-event: pass on what it sent
        await send({"type": "http.response.body", "body": tail, "more_body": False})
        if self.call is not None:
            if splitter is not None:
                unanswered = len(self.ids) - len([i for i in self.ids if json.dumps(i) in splitter.answered])
                failure = "timeout" if deadline.expired() else ("upstream_failed" if broken else None)
                self.call.finish(splitter.errors + unanswered, failure, self.resp.status)
            else:
                errors = _count_errors(b"".join(self.answer or ()), len(self.ids)) if self.answer is not None else 0
                self.call.finish(errors, None, self.resp.status)


_TRACEPARENT = TRACEPARENT.encode()


def _is_error(message: dict) -> bool:
    """A JSON-RPC error, or a tool result that reports a failure (``isError``)."""
    if "error" in message:
        return True
    result = message.get("result")
    return isinstance(result, dict) and result.get("isError") is True


def _count_errors(body: bytes, requests: int) -> int:
    if b'"error"' not in body and b'"isError"' not in body:  # the common answer is not parsed at all
        return 0
    try:
        payload = json.loads(body)
    except ValueError:
        return requests
    messages = payload if isinstance(payload, list) else [payload]
    return sum(1 for m in messages if isinstance(m, dict) and _is_error(m))


class _Call:
    """One POST's JSON-RPC requests: counted, timed and traced, and finished once when the answer has gone."""

    __slots__ = ("platform", "labels", "methods", "t0", "span", "done", "caller")

    def __init__(self, platform, target: Target, requests: list[dict], traceparent: str | None,
                 session_id: str | None, caller: str | None = None) -> None:
        self.platform = platform
        self.done = False
        self.caller = caller
        self.methods = [str(m["method"]) for m in requests]
        self.labels = (target.org, target.name)
        self.t0 = time.perf_counter()
        counter = platform.m_requests
        for method in self.methods:
            counter.inc((*self.labels, method))
        first = requests[0]
        tool = None
        if first["method"] in ("tools/call", "prompts/get") and isinstance(first.get("params"), dict):
            tool = first["params"].get("name")
        name = first["method"] if len(requests) == 1 else f"batch ({len(requests)})"
        self.span = platform.tracer.start(
            f"{name} {tool}" if tool else name, kind="server",
            parent=parse_traceparent(traceparent), org=target.org, deployment=target.name,
            attributes={"mcp.method.name": first["method"], "gen_ai.tool.name": tool, "org": target.org,
                        "deployment": target.key, "mcp.session.id": session_id,
                        "deployment.version": target.version, "jsonrpc.request.id": str(first.get("id"))})

    def finish(self, errors: int, failure: str | None = None, status: int | None = None) -> None:
        if self.done:
            return
        self.done = True
        took = time.perf_counter() - self.t0
        platform = self.platform
        for method in self.methods:
            platform.m_latency.observe((*self.labels, method), took)
        if errors:
            # Which requests of a batch failed is not tracked: the first ``errors`` methods carry them.
            for method in self.methods[:errors]:
                platform.m_errors.inc((*self.labels, method))
        if calls := self.methods.count("tools/call"):
            platform.count_calls(*self.labels, self.caller, calls, min(errors, calls), took * 1000 * calls)
        span = self.span
        if span is not None:
            if status is not None:
                span.set("http.response.status_code", status)
            if errors or failure:
                span.fail(failure or f"{errors} of {len(self.methods)} requests failed")
                span.set("error.type", failure or "tool_error")
            span.end()


def _events(messages) -> bytes:
    return b"".join(b"event: message\ndata: " + json.dumps(m).encode() + b"\n\n" for m in messages)
