"""Legacy HTTP+SSE transport and the REST convenience surface of the gateway.

Both end at the gateway and talk to the instance over Streamable HTTP with the mcp SDK's client transport:

- SSE: ``GET /servers/{name}/sse`` + ``POST /servers/{name}/messages/?session_id=...``. The SDK's
  SseServerTransport terminates the client side; each SSE connection gets its own upstream session and
  SessionMessages are pumped both ways unchanged (requests, responses, notifications, server-to-client requests).
- REST: ``GET tools``, ``POST call_tool``, ``POST read_resource``, ``GET prompts``, served through one pooled upstream
  session per serving instance and caller (token): an isolated stdio server's per-client state stays per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.sse import SseServerTransport
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp.shared.message import ClientMessageMetadata, SessionMessage
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..errors import MCPAgentCloudError, NotFoundError, ValidationFailed
from ..hookspecs.types import Identity
from ..runtime.jsonrpc_errors import cancelled_notification
from .gateway import CANCEL_REASON, MessageTooLarge, RequestTimedOut, owner_key, platform_error, read_body

log = logging.getLogger("mcp_agent_cloud.platform.bridge")

EXPIRED_CAP = 256  # ids of timed-out requests remembered per SSE session, to drop their late answers
PAGE_CAP = 1000  # list pages followed per REST listing: a server whose cursor never ends cannot hang a call
# The result as the server sent it: no unset defaults (such as 2026-only fields on an older session), no nulls.
WIRE: dict[str, Any] = {"by_alias": True, "exclude_none": True, "exclude_unset": True, "mode": "json"}
CLIENT_INFO = types.Implementation(name="mcp-agent-cloud-gateway", version=__version__)


class UpstreamError(MCPAgentCloudError):
    status = 502
    code = "bad_gateway"


def _error_response(exc: MCPAgentCloudError) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.status)


def _as_user(identity: Identity) -> AuthenticatedUser:
    # The SDK's SSE transport binds each session to scope["user"] and answers 404 to any other principal.
    provider, org, subject, token_id = owner_key(identity)
    return AuthenticatedUser(AccessToken(token="", client_id=f"{org}/{token_id}", scopes=[], subject=subject,
                                         claims={"iss": provider}))


class Bridge:
    """The SSE and REST routes of the gateway. ``routes`` go into the app; ``aclose()`` runs at shutdown."""

    def __init__(self, gateway) -> None:
        self.gateway = gateway
        # The gateway's httpx2 client (the app closes it); request timeouts are per request (SSE: by the client;
        # REST: gateway.request_timeout).
        self.http = gateway.http
        self._transports: dict[str, SseServerTransport] = {}
        self.pool = RestPool(self.http, gateway)
        self.routes = [
            Route("/servers/{name}/sse", _SseEndpoint(self), methods=["GET"]),
            Route("/servers/{name}/messages/", _MessageEndpoint(self), methods=["POST"]),
            Route("/servers/{name}/messages", _MessageEndpoint(self), methods=["POST"]),
            Route("/servers/{name}/tools", self._rest(self.list_tools), methods=["GET"]),
            Route("/servers/{name}/call_tool", self._rest(self.call_tool), methods=["POST"]),
            Route("/servers/{name}/read_resource", self._rest(self.read_resource), methods=["POST"]),
            Route("/servers/{name}/prompts", self._rest(self.list_prompts), methods=["GET"]),
        ]

    @property
    def max_message_bytes(self) -> int:
        return int(self.gateway.config.max_message_bytes)

    async def aclose(self) -> None:
        await self.pool.aclose()

    def stream_transport(self, name: str) -> SseServerTransport:
        """The SDK transport for an SSE stream the gateway just accepted: one per spelling of the deployment name
        (short or qualified), so the endpoint it announces is ``/servers/{name}/messages/?session_id=...`` under the
        name the client used. Only opened streams create one: names of deployments that do not exist never do."""
        transport = self._transports.get(name)
        if transport is None:
            # Host/Origin are validated by the platform for every route already.
            transport = SseServerTransport(
                f"/servers/{name}/messages/",
                security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
                max_request_body_size=self.max_message_bytes)
            self._transports[name] = transport
        return transport

    # ---- REST ----

    def _rest(self, handler: Callable[[Request, Any], Awaitable[dict]]):
        async def endpoint(request: Request) -> Response:
            try:
                target = await self.gateway.target(request)
                return JSONResponse(await handler(request, target))
            except MCPAgentCloudError as exc:
                return _error_response(exc)
        endpoint.__name__ = handler.__name__
        endpoint.__doc__ = handler.__doc__  # the OpenAPI summary
        return endpoint

    async def list_tools(self, request: Request, target) -> dict:
        """REST: the deployment's tools, all pages ({"tools": [...]})"""
        tools = await self.pool.list_all(target, request.state.identity, "tools")
        return {"tools": [t.model_dump(**WIRE) for t in tools]}

    async def list_prompts(self, request: Request, target) -> dict:
        """REST: the deployment's prompts, all pages ({"prompts": [...]})"""
        prompts = await self.pool.list_all(target, request.state.identity, "prompts")
        return {"prompts": [p.model_dump(**WIRE) for p in prompts]}

    async def call_tool(self, request: Request, target) -> dict:
        """REST: call a tool (body {"name", "arguments"}); answers the MCP CallToolResult"""
        body = await self._body(request, CallToolBody, '{"name": "greet", "arguments": {"name": "world"}}')
        call = self.gateway.call(target, [{"method": "tools/call", "id": "rest", "params": {"name": body.name}}],
                                 request.headers.get("traceparent"), caller=request.state.identity)
        try:
            result = await self.pool.request(target, request.state.identity, types.CallToolRequest(
                params=types.CallToolRequestParams(name=body.name, arguments=body.arguments)), types.CallToolResult,
                hint=f"list its tools and their input schemas: GET /servers/{target.name}/tools")
        except BaseException as exc:
            if call is not None:
                call.finish(1, type(exc).__name__)
            raise
        if call is not None:
            call.finish(1 if result.is_error else 0)
        return result.model_dump(**WIRE)

    async def read_resource(self, request: Request, target) -> dict:
        """REST: read a resource (body {"uri"}); answers the MCP ReadResourceResult"""
        body = await self._body(request, ReadResourceBody, '{"uri": "file:///notes.txt"}')
        result = await self.pool.request(target, request.state.identity, types.ReadResourceRequest(
            params=types.ReadResourceRequestParams(uri=body.uri)), types.ReadResourceResult,
            hint="check the uri against the resources the server lists (an MCP client's resources/list)")
        return result.model_dump(**WIRE)

    async def _body(self, request: Request, model: type[BaseModel], example: str):
        raw = await read_body(request, self.max_message_bytes)
        try:
            data = json.loads(raw)
        except ValueError:
            raise ValidationFailed("the body must be a JSON object", hint=f"for example: {example}") from None
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
            raise ValidationFailed(f"invalid body: {problems}", hint=f"for example: {example}") from None


class CallToolBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)


class ReadResourceBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    uri: str = Field(min_length=1)


# ---- the pooled upstream session of the REST surface ----


def _session_gone(exc: MCPError) -> bool:
    # An upstream 404 for our session id: its JSON-RPC body ("Session not found" from SDK servers), or the SDK
    # transport's stand-in ("Session terminated"). The server refused before dispatch, so the request never ran.
    return exc.code == types.INVALID_REQUEST and "session" in exc.message.lower()


class _Pooled:
    """One upstream session, owned by its own task: the SDK's task groups must be entered and left by the same
    task, and REST requests come and go on many. ``session_id`` is its entry in the gateway's session table."""

    def __init__(self, target, http: httpx2.AsyncClient, timeout: float) -> None:
        self.key = target.key
        self.instance_id = target.instance_id
        self.url = target.url
        self.http = http
        self.timeout = timeout
        self.session: ClientSession | None = None
        self.session_id = ""
        self.dead = False
        self._stop = asyncio.Event()
        self._ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task | None = None

    async def start(self) -> ClientSession:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"rest-session {self.key}")
        # Shielded: a REST caller that goes away must not cancel the session others are about to share.
        return await asyncio.shield(self._ready)

    async def _run(self) -> None:
        try:
            async with streamable_http_client(self.url, http_client=self.http) as (read, write):
                async with ClientSession(read, write, read_timeout_seconds=self.timeout,
                                         client_info=CLIENT_INFO) as session:
                    await session.initialize()
                    self.session = session
                    self._ready.set_result(session)
                    await self._stop.wait()
        except Exception as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            else:
                log.info("REST upstream session of %s ended: %r", self.key, exc)
        finally:
            self.dead = True
            if not self._ready.done():
                self._ready.set_exception(RuntimeError("the upstream session closed"))

    async def aclose(self) -> None:
        self.dead = True
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 10)
            except (asyncio.TimeoutError, Exception):
                self._task.cancel()
        if self._ready.done() and not self._ready.cancelled():
            self._ready.exception()  # mark retrieved


class RestPool:
    """One upstream MCP session per serving instance and caller: keyed by deployment and owner_key (so what an
    isolated stdio server keeps per client is never shared between tokens), re-opened when instance_id changes or
    the session died. A caller's concurrent requests share it; the SDK correlates responses by request id.

    Each is a "rest" session in the gateway's table: it counts in the per-deployment and per-token limits, and the
    gateway ends it after gateway.session_idle_timeout unused, or when its instance is replaced.

    The handshake is the classic ``initialize`` (what ``mcp.client.Client(mode="legacy")`` does): it gives a real
    upstream session that native apps and the stdio adapter both keep, where an ``auto`` probe could settle on the
    stateless 2026 protocol and make every call a fresh exchange (a fresh child, for isolated stdio servers)."""

    def __init__(self, http: httpx2.AsyncClient, gateway) -> None:
        self.http = http
        self.gateway = gateway
        self._pooled: dict[tuple, _Pooled] = {}
        self._locks: dict[tuple, asyncio.Lock] = {}
        self._closing: set[asyncio.Task] = set()

    def _usable(self, pooled: _Pooled | None, target) -> bool:
        return (pooled is not None and not pooled.dead and pooled.instance_id == target.instance_id
                and pooled.session_id in self.gateway.sessions)

    def _forget(self, key: tuple, pooled: _Pooled) -> None:
        if self._pooled.get(key) is pooled:
            del self._pooled[key]
        lock = self._locks.get(key)
        if lock is not None and not lock.locked() and key not in self._pooled:
            del self._locks[key]

    def _retire(self, key: tuple, pooled: _Pooled) -> None:
        self._forget(key, pooled)
        task = asyncio.get_running_loop().create_task(self._close(pooled))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, pooled: _Pooled) -> None:
        await self.gateway.close_session(pooled.session_id)
        await pooled.aclose()

    async def _ended(self, key: tuple, pooled: _Pooled) -> None:
        """The gateway ended the session (idle, instance replaced, platform stop)."""
        self._forget(key, pooled)
        await pooled.aclose()

    async def session(self, target, identity: Identity) -> _Pooled:
        key = (target.key, owner_key(identity))
        pooled = self._pooled.get(key)
        if self._usable(pooled, target):
            return pooled
        async with self._locks.setdefault(key, asyncio.Lock()):
            pooled = self._pooled.get(key)
            if self._usable(pooled, target):
                return pooled
            if pooled is not None:
                self._retire(key, pooled)
            fresh = _Pooled(target, self.http, float(self.gateway.config.request_timeout))
            # Counted like any client session (429 past the limits); the gateway closes it when idle or replaced.
            fresh.session_id = self.gateway.open_session(target, identity, "rest",
                                                         lambda: self._ended(key, fresh))
            try:
                with self.gateway.in_use(fresh.session_id):
                    await fresh.start()
            except Exception as exc:
                self._retire(key, fresh)
                raise UpstreamError(f"{target.key} did not accept an MCP session: {_leaf(exc)}",
                                    hint=f"check that it is serving: `mcp-agent status {target.name}` "
                                         f"and `mcp-agent logs {target.name}`") from None
            self._pooled[key] = fresh
            return fresh

    async def request(self, target, identity: Identity, request, result_type, hint: str = ""):
        for attempt in (1, 2):
            pooled = await self.session(target, identity)
            try:
                with self.gateway.in_use(pooled.session_id):
                    return await pooled.session.send_request(request, result_type)
            except MCPError as exc:
                if _session_gone(exc) and attempt == 1:
                    # The instance dropped our session (its idle timeout, say); nothing ran, so open a new one.
                    pooled.dead = True
                    continue
                if exc.code == types.CONNECTION_CLOSED:
                    pooled.dead = True
                raise _mcp_error(target, exc, hint, pooled.timeout) from None
            except ValidationError as exc:
                raise UpstreamError(f"{target.key} answered with an invalid result: {exc.error_count()} problems",
                                    hint=f"check the server's logs: `mcp-agent logs {target.name}`") from None
        raise AssertionError("unreachable")

    async def list_all(self, target, identity: Identity, what: str) -> list:
        pooled = await self.session(target, identity)
        caps = pooled.session.server_capabilities
        if caps is not None and getattr(caps, what) is None:
            return []  # the server offers none: an empty list, not an error
        request_cls, result_cls = {"tools": (types.ListToolsRequest, types.ListToolsResult),
                                   "prompts": (types.ListPromptsRequest, types.ListPromptsResult)}[what]
        items: list = []
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(PAGE_CAP):
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await self.request(target, identity, request_cls(params=params), result_cls)
            items.extend(getattr(page, what))
            cursor = page.next_cursor
            if not cursor or cursor in seen:
                break
            seen.add(cursor)
        return items

    async def aclose(self) -> None:
        pooled, self._pooled = list(self._pooled.values()), {}
        await asyncio.gather(*(p.aclose() for p in pooled), *self._closing, return_exceptions=True)


def _leaf(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def _mcp_error(target, exc: MCPError, hint: str, timeout: float) -> MCPAgentCloudError:
    """A JSON-RPC error from upstream, as an HTTP error that says whose fault it was."""
    detail = f"{target.key} answered with JSON-RPC error {exc.code}: {exc.message}"
    if exc.code == types.REQUEST_TIMEOUT:
        return RequestTimedOut(target.key, timeout)
    if exc.code == types.CONNECTION_CLOSED:
        return UpstreamError(f"the connection to {target.key} closed: {exc.message}",
                             hint=f"check `mcp-agent status {target.name}` and `mcp-agent logs {target.name}`; "
                                  "the next request opens a new session")
    if exc.code in (types.INVALID_PARAMS, types.METHOD_NOT_FOUND):
        return ValidationFailed(detail, hint=hint or "check the request against what the server offers")
    if exc.code == -32002:  # resource not found
        return NotFoundError(detail, hint=hint or "check the uri against the server's resources")
    return UpstreamError(detail, hint=f"check the server's logs: `mcp-agent logs {target.name}`")


# ---- legacy HTTP+SSE ----


class _SseEndpoint:
    """Legacy HTTP+SSE transport: open the event stream; its first event names the message endpoint.

    An ASGI app rather than a request handler: the SDK transport needs the raw send channel for its stream."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    async def __call__(self, scope, receive, send) -> None:
        request = Request(scope, receive)
        gateway = self.bridge.gateway
        try:
            target = await gateway.target(request)
            if scope["method"] == "HEAD":  # Starlette adds HEAD to GET routes; it must not open a session
                return await Response(media_type="text/event-stream")(scope, receive, send)
            identity: Identity = request.state.identity
            conn = SseConnection(self.bridge, target, identity)
            conn.session_id = gateway.open_session(target, identity, "sse", conn.close)
        except MCPAgentCloudError as exc:
            return await _error_response(exc)(scope, receive, send)
        await conn.run(request.path_params["name"], scope, receive, send)


class SseConnection:
    """One legacy SSE client and its own upstream Streamable HTTP session."""

    def __init__(self, bridge: Bridge, target, identity: Identity) -> None:
        self.bridge = bridge
        self.gateway = bridge.gateway
        self.target = target
        self.identity = identity
        self.session_id: str | None = None
        self.protocol_version: str | None = None
        # client request id -> its gateway.request_timeout deadline, cancelled when the answer arrives
        self.pending: dict[Any, anyio.CancelScope] = {}
        # recent ids answered with a timeout error: a late upstream answer is dropped (bounded: the upstream was
        # told to cancel them, so most never answer)
        self.expired: OrderedDict[Any, None] = OrderedDict()
        self._calls: dict[Any, Any] = {}  # request id -> its metrics and span (Gateway.call)
        self.ended_by: str | None = None  # "client", "upstream" or "gateway"
        self._scope: anyio.CancelScope | None = None
        self._done = anyio.Event()

    async def close(self) -> None:
        """Called by the gateway to end the session (idle, instance replaced, platform stop)."""
        if self.ended_by is None:
            self.ended_by = "gateway"
        if self._scope is not None:
            self._scope.cancel()
        with anyio.move_on_after(10):
            await self._done.wait()

    async def run(self, name: str, scope, receive, send) -> None:
        scope = dict(scope)
        scope["user"] = _as_user(self.identity)
        transport = self.bridge.stream_transport(name)
        try:
            async with transport.connect_sse(scope, receive, send) as (client_read, client_write):
                async with client_write:
                    failure = await self._pump(client_read, client_write)
                    if self.ended_by != "client":
                        await self._fail_pending(client_write, failure)
                # Closing client_write ends the event stream, so connect_sse returns.
        except Exception:
            log.exception("SSE session %s on %s failed", self.session_id, self.target.key)
        finally:
            self._done.set()
            with anyio.CancelScope(shield=True):
                await self.gateway.close_session(self.session_id)

    async def _pump(self, client_read, client_write) -> str:
        init_ids: set[Any] = set()
        failure = ""
        try:
            async with streamable_http_client(self.target.url, http_client=self.bridge.http) as (up_read, up_write):
                async with anyio.create_task_group() as tg:
                    self._scope = tg.cancel_scope
                    if self.ended_by == "gateway":
                        tg.cancel_scope.cancel()

                    async def to_upstream() -> None:
                        async for item in client_read:
                            if isinstance(item, Exception):  # a POST the transport could not parse (it said 400)
                                log.info("SSE session %s: bad client message: %s", self.session_id, item)
                                continue
                            self.gateway.touch(self.session_id)
                            message = item.message
                            if isinstance(message, types.JSONRPCRequest):
                                self._answered(message.id)  # a reused id: the new request gets its own deadline
                                self._calls[message.id] = self.gateway.call(
                                    self.target, [{"method": message.method, "id": message.id,
                                                   "params": message.params}], None, self.session_id,
                                    self.identity)
                                deadline = self.pending[message.id] = anyio.CancelScope()
                                self.expired.pop(message.id, None)
                                tg.start_soon(self._expire, message.id, deadline, up_write, client_write)
                                if message.method == "initialize":
                                    init_ids.add(message.id)
                            # The client's MCP-Protocol-Version travels as per-message metadata for the transport.
                            meta = (ClientMessageMetadata(headers={MCP_PROTOCOL_VERSION_HEADER: self.protocol_version})
                                    if self.protocol_version else None)
                            await up_write.send(SessionMessage(message, metadata=meta))
                        self.ended_by = self.ended_by or "client"
                        tg.cancel_scope.cancel()

                    async def to_client() -> None:
                        async for item in up_read:
                            if isinstance(item, Exception):
                                log.info("SSE session %s: upstream stream error: %r", self.session_id, item)
                                continue
                            message = item.message
                            if isinstance(message, types.JSONRPCResponse | types.JSONRPCError):
                                if message.id in self.expired:
                                    del self.expired[message.id]
                                    continue
                                self._answered(message.id)
                                call = self._calls.pop(message.id, None)
                                if call is not None:
                                    failed = isinstance(message, types.JSONRPCError) or (
                                        isinstance(message.result, dict) and message.result.get("isError") is True)
                                    call.finish(1 if failed else 0)
                                if (isinstance(message, types.JSONRPCResponse) and message.id in init_ids
                                        and isinstance(message.result.get("protocolVersion"), str)):
                                    self.protocol_version = message.result["protocolVersion"]
                            self.gateway.touch(self.session_id)
                            try:
                                await client_write.send(SessionMessage(message))
                            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                                self.ended_by = self.ended_by or "client"
                                break
                        self.ended_by = self.ended_by or "upstream"
                        tg.cancel_scope.cancel()

                    tg.start_soon(to_upstream)
                    tg.start_soon(to_client)
                self._scope = None
                # Leaving streamable_http_client normally sends DELETE: the upstream session ends with this one.
        except Exception as exc:
            self.ended_by = self.ended_by or "upstream"
            failure = _leaf(exc)
            log.info("SSE session %s: upstream %s failed: %s", self.session_id, self.target.key, failure)
        return failure

    def _answered(self, request_id) -> None:
        deadline = self.pending.pop(request_id, None)
        if deadline is not None:
            deadline.cancel()  # its _expire task ends now, not after gateway.request_timeout

    async def _expire(self, request_id, deadline: anyio.CancelScope, up_write, client_write) -> None:
        """gateway.request_timeout for one request: answer it with an error and cancel it upstream."""
        timeout = self.gateway.config.request_timeout
        with deadline:
            await anyio.sleep(timeout)
        if deadline.cancel_called or self.pending.get(request_id) is not deadline:
            return  # answered, or the session is ending
        del self.pending[request_id]
        if (call := self._calls.pop(request_id, None)) is not None:
            call.finish(1, "timeout")
        self.expired[request_id] = None
        while len(self.expired) > EXPIRED_CAP:
            self.expired.popitem(last=False)
        error = types.JSONRPCError.model_validate(RequestTimedOut(self.target.key, timeout).error_object(request_id))
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await client_write.send(SessionMessage(error))
            await up_write.send(SessionMessage(types.JSONRPCNotification.model_validate(
                cancelled_notification(request_id, CANCEL_REASON))))

    async def _fail_pending(self, client_write, failure: str) -> None:
        if not self.pending:
            return
        if self.ended_by == "gateway":
            text = "the gateway closed this session (idle timeout, redeploy or shutdown); reconnect"
        else:
            text = f"the upstream server {self.target.key} went away" + (f" ({failure})" if failure else "")
        for request_id, deadline in list(self.pending.items()):
            deadline.cancel()
            if (call := self._calls.pop(request_id, None)) is not None:
                call.finish(1, "upstream_failed")
            error = types.JSONRPCError(jsonrpc="2.0", id=request_id,
                                       error=types.ErrorData(code=types.CONNECTION_CLOSED, message=text))
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await client_write.send(SessionMessage(error))
        self.pending.clear()


class _MessageEndpoint:
    """Legacy HTTP+SSE transport: post one JSON-RPC message to the stream named by ?session_id=

    The deployment is resolved first (404, 403, 503), then the message goes to the SDK transport of an open stream
    (size limit, ownership, parsing). Every refusal is a JSON-RPC error carrying the platform's error in ``data``."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    async def __call__(self, scope, receive, send) -> None:
        request = Request(scope, receive)
        name = request.path_params["name"]
        try:
            await self.bridge.gateway.target(request)
        except MCPAgentCloudError as exc:
            return await platform_error(exc)(scope, receive, send)
        # Looked up, never created: only an SSE stream the gateway accepted makes a transport.
        transport = self.bridge._transports.get(name)
        if transport is None:
            return await platform_error(self._error(404, "", name))(scope, receive, send)
        scope = dict(scope)
        scope["user"] = _as_user(request.state.identity)
        await transport.handle_post_message(scope, receive, self._json_errors(send, name))

    def _json_errors(self, send, name: str):
        held: dict = {}

        async def wrapped(message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held.update(message)
                return
            if held and message["type"] == "http.response.body":
                status = held["status"]
                text = message.get("body", b"").decode("utf-8", "replace")
                response = platform_error(self._error(status, text, name))
                await send({"type": "http.response.start", "status": status,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(response.body)).encode())]})
                await send({"type": "http.response.body", "body": response.body})
                held.clear()
                return
            await send(message)
        return wrapped

    def _error(self, status: int, text: str, name: str) -> MCPAgentCloudError:
        reconnect = f"open a new SSE stream with GET /servers/{name}/sse and post to the endpoint it announces"
        if status == 404:
            return NotFoundError(f"no SSE session with this session_id for your token on {name}", hint=reconnect)
        if status == 413:
            return MessageTooLarge(self.bridge.max_message_bytes)
        err = ValidationFailed(f"message refused: {text}", hint=reconnect if "session" in text.lower() else
                               "POST one JSON-RPC message with Content-Type: application/json")
        err.status = status
        return err
