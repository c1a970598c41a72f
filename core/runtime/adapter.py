"""Serve a stdio MCP server over Streamable HTTP.

    python -m mcp_agent_cloud.runtime.adapter --port PORT [--host HOST] [--cwd DIR] [--path /mcp]
        [--session-mode isolated|shared] [--idle-timeout SECONDS] [--max-sessions N] -- CMD [ARGS...]

A message-level multiplexer between the SDK's Streamable HTTP *server* transport (one per HTTP session) and the
SDK's stdio *client* transport (one per child). Messages travel as ``SessionMessage`` objects; the adapter only
rewrites request ids, progress tokens and ``notifications/cancelled`` request ids, and picks the session (and the
HTTP stream) each child message goes to. One ``Router`` class does this for both session modes:

* ``isolated`` (default): one child per HTTP session, one router per child. The child starts when the session's
  ``initialize`` arrives, and that initialize is forwarded, so the child sees the client's real capabilities. The
  child is stopped and reaped when the session ends (DELETE, idle timeout, adapter shutdown). A child that exits
  fails the session's pending requests with a JSON-RPC error and ends the session (its id then answers 404, so the
  client re-initializes); other sessions and the adapter keep running.
* ``shared``: one child for every session, started and initialized at adapter start (declaring sampling,
  elicitation and roots, which the adapter routes to the clients that declared them). Each session's initialize is
  answered from the child's cached InitializeResult. Request ids and progress tokens are rewritten to unique
  child-side values; resources/subscribe is ref-counted per uri. If the child exits, pending requests fail and the
  adapter exits 1 (the platform's supervisor restarts it).

Which HTTP stream a child message goes to. Over stdio a message loses its relation to the request that caused it,
and the SDK server transport sends a message related to a request on that request's POST stream, an unrelated one
on the session's GET stream (and drops it, after storing it for replay, when no GET stream is open). So:

* responses go to the session that sent the request (by id);
* notifications/progress go to the request whose progressToken it carries;
* list_changed notifications go to every session, notifications/resources/updated to the sessions subscribed to
  the uri: on the GET stream when it is open, else on the session's most recent in-flight request;
* server-to-client requests (sampling, elicitation, roots, ping), notifications/message and other notifications go
  to the most recent in-flight request; with none in flight, to the GET stream of an isolated session. In shared
  mode they go nowhere while requests of several sessions are in flight: nothing says whose they are. Otherwise a server request is answered with a JSON-RPC error (ping: an empty result), a log
  message is written to stderr and other notifications are dropped (and said so on stderr);
* a server request whose method needs a capability the chosen client did not declare is answered with an error.

Other behaviour: unknown or ended session id -> 404; no session id on anything but initialize -> 400; an
MCP-Protocol-Version header the child era does not speak (e.g. the ``server/discover`` probe) -> 400 with a -32022
error listing the handshake versions, so SDK clients in ``mode="auto"`` fall back to initialize. Each session's
transport keeps a bounded in-memory event store, so Last-Event-ID resumption works. The child's stderr is the
adapter's stderr (the deployment log). On Linux each child gets PR_SET_PDEATHSIG, so a SIGKILLed adapter takes its
children along.

Exit codes: 0 after SIGTERM/SIGINT (children are stopped first), 1 when the stdio server cannot start, when the
shared child exits, or when the port is taken, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import anyio
import pydantic_core
import uvicorn
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.server.streamable_http import (
    GET_STREAM_KEY,
    LAST_EVENT_ID_HEADER,
    MCP_SESSION_ID_HEADER,
    EventCallback,
    EventId,
    EventMessage,
    EventStore,
    StreamableHTTPServerTransport,
    StreamId,
)
from mcp.server.transport_security import (
    DEFAULT_MAX_REQUEST_BODY_SIZE,
    RequestBodyLimitMiddleware,
    TransportSecurityMiddleware,
    TransportSecuritySettings,
)
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    ErrorData,
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
    RequestId,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from mcp_agent_cloud.runtime.jsonrpc_errors import session_not_found, unsupported_version

PREFIX = "mcp-agent-cloud adapter"
INIT_TIMEOUT = 60.0
GRACEFUL_SECONDS = 3.0
DEFAULT_IDLE_TIMEOUT = 1800.0
DEFAULT_MAX_SESSIONS = 1000
EVENTS_PER_SESSION = 512  # SSE events kept per session for Last-Event-ID replay
OUTBOX_SIZE = 1024  # child messages queued for one session before it counts as a stalled consumer
REQUEST_CANCELLED = -32800  # what the 2025 wire answers a cancelled request with (the POST stream must end)
LIST_CHANGED = frozenset({
    "notifications/tools/list_changed",
    "notifications/resources/list_changed",
    "notifications/prompts/list_changed",
})
# Server-to-client request -> the client capability it needs.
NEEDS_CAPABILITY = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}
ADAPTER_CAPABILITIES = {"sampling": {}, "elicitation": {"form": {}, "url": {}}, "roots": {"listChanged": True}}

# Runs between the SDK's spawn and the stdio server: PR_SET_PDEATHSIG survives exec, so the server is killed when
# the adapter dies, even by SIGKILL (SIGKILL: a server that traps SIGTERM must not outlive it either). Only the
# direct child: what it spawned is the process builder's to clean up. Python ignores SIGPIPE/SIGXFSZ; exec would
# pass that on.
_DEATHSIG_SHIM = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
for s in (signal.SIGPIPE, signal.SIGXFSZ):
    signal.signal(s, signal.SIG_DFL)
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    print(f"mcp-agent-cloud adapter: cannot start the stdio server {sys.argv[2]!r}: {exc}", file=sys.stderr)
    sys.exit(127)
"""


def say(message: str) -> None:
    print(f"{PREFIX}: {message}", file=sys.stderr, flush=True)


class _DropParseNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # the reader logs a traceback per bad line; we say it once
        return not record.getMessage().startswith("Failed to parse JSONRPC message")


def _error(request_id: RequestId | None, code: int, message: str, data: Any = None) -> JSONRPCError:
    error = ErrorData(code=code, message=message) if data is None else ErrorData(code=code, message=message, data=data)
    return JSONRPCError(jsonrpc="2.0", id=request_id, error=error)


def _result(request_id: RequestId, result: dict[str, Any]) -> JSONRPCResponse:
    return JSONRPCResponse(jsonrpc="2.0", id=request_id, result=result)


def _request(request_id: RequestId, method: str, params: dict[str, Any] | None) -> JSONRPCRequest:
    if params is None:
        return JSONRPCRequest(jsonrpc="2.0", id=request_id, method=method)
    return JSONRPCRequest(jsonrpc="2.0", id=request_id, method=method, params=params)


def _notification(method: str, params: dict[str, Any] | None) -> JSONRPCNotification:
    if params is None:
        return JSONRPCNotification(jsonrpc="2.0", method=method)
    return JSONRPCNotification(jsonrpc="2.0", method=method, params=params)


def _with_id(message: JSONRPCResponse | JSONRPCError, request_id: RequestId) -> JSONRPCResponse | JSONRPCError:
    if isinstance(message, JSONRPCResponse):
        return _result(request_id, message.result)
    return JSONRPCError(jsonrpc="2.0", id=request_id, error=message.error)


def _http_error(status: int, code: int, message: str, data: Any = None, headers: dict | None = None) -> Response:
    body = _error(None, code, message, data).model_dump_json(by_alias=True, exclude_unset=True)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _our_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mcp-agent-cloud")
    except PackageNotFoundError:
        return "0"


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


# -- resumability --------------------------------------------------------------------------------------------------


class MemoryEventStore(EventStore):
    """The last ``limit`` SSE events of one session, for Last-Event-ID replay."""

    def __init__(self, limit: int = EVENTS_PER_SESSION) -> None:
        self.limit = limit
        self._events: OrderedDict[EventId, tuple[StreamId, JSONRPCMessage | None]] = OrderedDict()
        self._next = 0

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        self._next += 1
        event_id = str(self._next)
        self._events[event_id] = (stream_id, message)
        while len(self._events) > self.limit:
            self._events.popitem(last=False)
        return event_id

    def stream_of(self, event_id: EventId) -> StreamId | None:
        event = self._events.get(event_id)
        return event[0] if event else None

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        stream_id = self.stream_of(last_event_id)
        if stream_id is None:
            return None  # unknown or evicted: nothing to resume
        after = False
        for event_id, (stream, message) in list(self._events.items()):
            if after and stream == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
            after = after or event_id == last_event_id
        return stream_id


# -- the stdio side ------------------------------------------------------------------------------------------------


def _process_of(context: Any) -> Any:
    """The child process inside an entered ``stdio_client`` context. The SDK keeps it to itself; its pid and exit
    code make the error messages and the reaping checks concrete, so read it from the generator's frame (None if
    the SDK ever renames it)."""
    frame = getattr(getattr(context, "gen", None), "ag_frame", None)
    return frame.f_locals.get("process") if frame is not None else None


class Child:
    """One stdio server, run through the SDK's stdio client."""

    def __init__(self, params: StdioServerParameters, label: str) -> None:
        self.params = params
        self.label = label
        self.pid: int | None = None
        self.code: int | None = None
        self.exited = anyio.Event()
        self.stopping = False
        self._write: Any = None
        self._scope = anyio.CancelScope()

    async def run(self, on_message: Any, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Start the child (an OSError before ``started`` means it could not be spawned) and hand every message it
        writes to ``on_message`` until its stdout ends or ``stop()`` is called."""
        process = None
        try:
            with self._scope:
                context = stdio_client(self.params, errlog=sys.stderr)
                async with context as (read, write):
                    process = _process_of(context)
                    self.pid = getattr(process, "pid", None)
                    self._write = write
                    task_status.started()
                    async for item in read:
                        if isinstance(item, Exception):
                            say(f"{self.label} wrote a line to stdout that is not JSON-RPC; ignored it: "
                                f"{_first_line(item)}")
                            continue
                        await on_message(item.message)
        finally:
            self._write = None
            self.code = getattr(process, "returncode", None)
            if self.pid is not None:
                # The SDK kills the process group only when the server outlives its stdin; this also takes what
                # an exited server left behind (its group is its own: the SDK starts it in a new session).
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
            self.exited.set()

    def stop(self) -> None:
        self.stopping = True
        self._scope.cancel()

    async def send(self, message: JSONRPCMessage) -> bool:
        write = self._write
        if write is None:
            return False
        try:
            await write.send(SessionMessage(message))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False
        return True


def _first_line(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        with contextlib.suppress(Exception):
            return repr(str(errors()[0].get("input", ""))[:200])
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


# -- sessions and the router ---------------------------------------------------------------------------------------


@dataclass
class Pending:
    """A request the child is answering: a client's (session set) or the adapter's own (waiter set)."""

    session: Session | None
    client_id: RequestId | None = None
    progress: Any = None  # the client's progress token, if it sent one
    subscribe: str | None = None  # resources/subscribe uri: counted once the child accepts
    waiter: anyio.Event | None = None
    answer: JSONRPCResponse | JSONRPCError | None = None


@dataclass
class ServerRequest:
    """A request from the child to a client, under the id the client sees."""

    session: Session
    child_id: RequestId
    related: RequestId | None


class Session:
    """One HTTP session: its SDK transport, its queue of messages to send, and what it has in flight."""

    def __init__(self, session_id: str, idle_timeout: float, security: TransportSecuritySettings | None) -> None:
        self.id = session_id
        self.short = session_id[:8]
        self.store = MemoryEventStore()
        self.transport = StreamableHTTPServerTransport(
            session_id, event_store=self.store, security_settings=security, idle_timeout=idle_timeout)
        self.router: Router | None = None
        self.capabilities: dict[str, Any] = {}
        self.requests: dict[RequestId, int] = {}  # client request id -> child request id, oldest first
        self.get_streams = 0
        self.posts = 0
        self.ending = False
        self.scope = anyio.CancelScope()
        self._outbox, self._outbox_reader = anyio.create_memory_object_stream[SessionMessage](OUTBOX_SIZE)

    def deliver(self, message: JSONRPCMessage, related: RequestId | None = None) -> None:
        """Queue a message for the client. Never blocks: a shared child must not wait for one slow client."""
        metadata = ServerMessageMetadata(related_request_id=related) if related is not None else None
        try:
            self._outbox.send_nowait(SessionMessage(message, metadata=metadata))
        except anyio.WouldBlock:
            say(f"session {self.short}: the client reads too slowly ({OUTBOX_SIZE} messages queued); ending it")
            self.end()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    async def pump(self, write: Any) -> None:
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            async with self._outbox_reader:
                async for message in self._outbox_reader:
                    await write.send(message)

    def latest_request(self) -> RequestId | None:
        return next(reversed(self.requests), None)

    def end(self) -> None:
        self.ending = True
        self.scope.cancel()

    async def drain(self, seconds: float = GRACEFUL_SECONDS) -> None:
        """Give the POSTs being answered a moment to send what was queued for them."""
        with anyio.move_on_after(seconds):
            while self.posts or self._outbox.statistics().current_buffer_used:
                await anyio.sleep(0.02)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> int | None:
        """Let the SDK transport answer one HTTP request; returns the status it answered with."""
        status: int | None = None

        async def watch(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        request = Request(scope)
        method = request.method
        last_event_id = request.headers.get(LAST_EVENT_ID_HEADER)
        standalone = method == "GET" and (not last_event_id or self.store.stream_of(last_event_id) == GET_STREAM_KEY)
        if standalone:
            self.get_streams += 1
        elif method == "POST":
            self.posts += 1
        try:
            await self.transport.handle_request(scope, receive, watch)
        finally:
            if standalone:
                self.get_streams -= 1
            elif method == "POST":
                self.posts -= 1
        if self.transport.is_terminated and not self.ending:  # DELETE
            self.end()
        return status


class ChildGone(Exception):
    pass


class Router:
    """Multiplexes HTTP sessions onto one child: rewrites ids and progress tokens and routes child messages.

    Isolated mode uses one router per child with one session; shared mode one router with every session.
    ``shared`` only changes the handshake: a shared router answers initialize from the child's cached result and
    swallows notifications/initialized, an isolated one forwards them."""

    def __init__(self, child: Child, *, shared: bool) -> None:
        self.child = child
        self.shared = shared
        self.sessions: dict[str, Session] = {}
        self.pending: dict[int, Pending] = {}  # child request id -> pending, oldest first
        self.server_requests: dict[int, ServerRequest] = {}  # client-side id -> child request
        self.subscribers: dict[str, set[str]] = {}  # uri -> session ids
        self.elicitations: dict[str, Session] = {}  # url-mode elicitationId -> session
        self.init_result: dict[str, Any] | None = None
        self.gone: str | None = None  # why the child is no longer there
        self._next_id = 0

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _post(self, message: JSONRPCMessage) -> None:
        """Send to the child without waiting in the child's own reader (its stdin may be full while it waits for
        us to read its stdout)."""
        if self._tg is not None:
            self._tg.start_soon(self.child.send, message)

    _tg: Any = None

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the child until it exits or is stopped."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            await tg.start(self.child.run, self.from_child)
            task_status.started()
            await self.child.exited.wait()
            tg.cancel_scope.cancel()

    # -- sessions ------------------------------------------------------------------------------------------------

    def attach(self, session: Session) -> None:
        session.router = self
        self.sessions[session.id] = session

    def detach(self, session: Session) -> None:
        """Forget a session that ended: cancel what it still waits for at the child, answer what the child still
        waits for from it, and drop its subscriptions."""
        self.sessions.pop(session.id, None)
        for child_id in session.requests.values():
            if self.pending.pop(child_id, None) is not None:
                self._post(_notification("notifications/cancelled",
                                         {"requestId": child_id, "reason": "the client session ended"}))
        session.requests.clear()
        for client_side, request in list(self.server_requests.items()):
            if request.session is session:
                del self.server_requests[client_side]
                self._post(_error(request.child_id, INTERNAL_ERROR, "the client session ended before answering"))
        for uri, subscribers in list(self.subscribers.items()):
            if session.id in subscribers:
                subscribers.discard(session.id)
                if not subscribers:
                    del self.subscribers[uri]
                    child_id = self._new_id()
                    self.pending[child_id] = Pending(None)  # nobody waits for the answer
                    self._post(_request(child_id, "resources/unsubscribe", {"uri": uri}))
        for key, owner in list(self.elicitations.items()):
            if owner is session:
                del self.elicitations[key]

    async def child_gone(self) -> None:
        """The child exited: fail every request it was answering."""
        self.gone = f"the stdio server {_exit_text(self.child.code)}"
        hint = "the platform restarts it" if self.shared else "start a new session"
        for pending in self.pending.values():
            if pending.session is not None:
                pending.session.deliver(_error(pending.client_id, INTERNAL_ERROR, f"{self.gone}; {hint}"))
            elif pending.waiter is not None:
                pending.answer = _error(None, INTERNAL_ERROR, self.gone)
                pending.waiter.set()
        self.pending.clear()
        for session in self.sessions.values():
            session.requests.clear()
        self.server_requests.clear()

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """The adapter's own request to the child (shared mode's initialize)."""
        child_id = self._new_id()
        pending = self.pending[child_id] = Pending(None, waiter=anyio.Event())
        if not await self.child.send(_request(child_id, method, params)):
            raise ChildGone(self.gone or "the stdio server is not running")
        assert pending.waiter is not None
        await pending.waiter.wait()
        if isinstance(pending.answer, JSONRPCError):
            raise ChildGone(pending.answer.error.message)
        assert pending.answer is not None
        return pending.answer.result

    async def initialize(self) -> dict[str, Any]:
        self.init_result = await self.request("initialize", {
            "protocolVersion": LATEST_HANDSHAKE_VERSION,
            "capabilities": ADAPTER_CAPABILITIES,
            "clientInfo": {"name": "mcp-agent-cloud-adapter", "version": _our_version()},
        })
        await self.child.send(_notification("notifications/initialized", None))
        return self.init_result

    # -- client -> child -----------------------------------------------------------------------------------------

    async def from_client(self, session: Session, message: JSONRPCMessage) -> None:
        if isinstance(message, JSONRPCRequest):
            await self._client_request(session, message)
        elif isinstance(message, JSONRPCNotification):
            await self._client_notification(session, message)
        else:  # a client's answer to a server-to-client request
            request = self.server_requests.get(message.id) if isinstance(message.id, int) else None
            if request is None or request.session is not session:
                return
            del self.server_requests[message.id]
            await self.child.send(_with_id(message, request.child_id))

    async def _client_request(self, session: Session, message: JSONRPCRequest) -> None:
        params = dict(message.params) if message.params is not None else None
        method = message.method
        if self.gone is not None:
            session.deliver(_error(message.id, INTERNAL_ERROR, f"{self.gone}; start a new session"))
            return
        if method == "initialize":
            session.capabilities = dict((params or {}).get("capabilities") or {})
            if self.shared and self.init_result is not None:
                session.deliver(_result(message.id, self._initialize_result(params or {})))
                return
        subscribe = None
        if method in ("resources/subscribe", "resources/unsubscribe") and params and "uri" in params:
            uri = str(params["uri"])
            subscribers = self.subscribers.get(uri)
            if method == "resources/subscribe":
                if subscribers:  # the child already sends this uri's updates
                    subscribers.add(session.id)
                    session.deliver(_result(message.id, {}))
                    return
                subscribe = uri
            elif subscribers is not None:
                subscribers.discard(session.id)
                if subscribers:  # others still want it
                    session.deliver(_result(message.id, {}))
                    return
                del self.subscribers[uri]
        child_id = self._new_id()
        pending = Pending(session, message.id, subscribe=subscribe)
        meta = params.get("_meta") if params else None
        if isinstance(meta, dict) and meta.get("progressToken") is not None:
            pending.progress = meta["progressToken"]
            params = {**params, "_meta": {**meta, "progressToken": child_id}}  # type: ignore[dict-item]
        self.pending[child_id] = pending
        session.requests[message.id] = child_id
        if not await self.child.send(_request(child_id, method, params)):
            self.pending.pop(child_id, None)
            session.requests.pop(message.id, None)
            session.deliver(_error(message.id, INTERNAL_ERROR, f"{self.gone or 'the stdio server is not running'}"))

    def _initialize_result(self, params: dict[str, Any]) -> dict[str, Any]:
        assert self.init_result is not None
        result = dict(self.init_result)
        ours, theirs = str(result.get("protocolVersion", "")), str(params.get("protocolVersion", ""))
        if theirs in HANDSHAKE_PROTOCOL_VERSIONS and theirs < ours:
            result["protocolVersion"] = theirs  # an older client: the shapes it knows are a subset
        return result

    async def _client_notification(self, session: Session, message: JSONRPCNotification) -> None:
        params = dict(message.params) if message.params is not None else None
        if message.method == "notifications/initialized" and self.shared:
            return  # the adapter did the child's handshake once
        if message.method == "notifications/cancelled":
            client_id = (params or {}).get("requestId")
            child_id = session.requests.pop(client_id, None)
            if child_id is None or self.pending.pop(child_id, None) is None:
                return
            # The SDK child stays silent about a cancelled request, but its POST stream ends only with an answer.
            session.deliver(_error(client_id, REQUEST_CANCELLED, "Request cancelled"))
            params = {**(params or {}), "requestId": child_id}
        if self.gone is None:
            await self.child.send(_notification(message.method, params))

    # -- child -> clients ----------------------------------------------------------------------------------------

    async def from_child(self, message: JSONRPCMessage) -> None:
        if isinstance(message, JSONRPCResponse | JSONRPCError):
            self._child_answer(message)
        elif isinstance(message, JSONRPCRequest):
            self._child_request(message)
        else:
            self._child_notification(message)

    def _child_answer(self, message: JSONRPCResponse | JSONRPCError) -> None:
        if message.id is None:
            say(f"the stdio server reported an error: {message.error.message}")  # type: ignore[union-attr]
            return
        pending = self.pending.pop(message.id, None) if isinstance(message.id, int) else None
        if pending is None:
            return  # cancelled, or its session ended
        if pending.session is None:
            if pending.waiter is not None:
                pending.answer = message
                pending.waiter.set()
            return
        session = pending.session
        session.requests.pop(pending.client_id, None)
        if pending.subscribe is not None and isinstance(message, JSONRPCResponse):
            self.subscribers.setdefault(pending.subscribe, set()).add(session.id)
        session.deliver(_with_id(message, pending.client_id))

    def _in_flight(self) -> tuple[Session, RequestId | None] | None:
        """Where a message with no known relation goes: the most recent request in flight, else the GET stream of
        an isolated session. None when requests of several sessions are in flight: guessing would hand one client
        another's log lines or sampling prompts."""
        owners = {id(p.session) for p in self.pending.values() if p.session is not None}
        if len(owners) > 1:
            return None
        for pending in reversed(self.pending.values()):
            if pending.session is not None:
                return pending.session, pending.client_id
        if not self.shared:
            for session in self.sessions.values():
                if session.get_streams:
                    return session, None
        return None

    def _child_request(self, message: JSONRPCRequest) -> None:
        target = self._in_flight()
        if target is None:
            if message.method == "ping":
                self._post(_result(message.id, {}))  # the adapter is the peer that is there
            else:
                self._post(_error(message.id, INTERNAL_ERROR,
                                  f"no client can answer {message.method} now: none, or several sessions of a shared "
                                  "server, have a request in flight (deploy with --session-mode isolated)"))
            return
        session, related = target
        capability = NEEDS_CAPABILITY.get(message.method)
        params = message.params or {}
        if capability is not None and capability not in session.capabilities:
            self._post(_error(message.id, METHOD_NOT_FOUND,
                              f"the client did not declare the {capability} capability, so it cannot answer "
                              f"{message.method}"))
            return
        if message.method == "elicitation/create" and params.get("mode") == "url":
            if "url" not in (session.capabilities.get("elicitation") or {}):
                self._post(_error(message.id, METHOD_NOT_FOUND, "the client does not support url elicitation"))
                return
            if params.get("elicitationId") is not None:
                self.elicitations[str(params["elicitationId"])] = session
        client_side = self._new_id()
        self.server_requests[client_side] = ServerRequest(session, message.id, related)
        session.deliver(_request(client_side, message.method, message.params), related)

    def _unsolicited(self, session: Session, message: JSONRPCNotification) -> None:
        """A notification a session should see whatever it is doing: the GET stream if open, else its latest
        request's stream (the SDK transport would drop it with no GET stream)."""
        session.deliver(message, None if session.get_streams else session.latest_request())

    def _child_notification(self, message: JSONRPCNotification) -> None:
        method, params = message.method, dict(message.params or {})
        if method == "notifications/progress":
            token = params.get("progressToken")
            pending = self.pending.get(token) if isinstance(token, int) else None
            if pending is not None and pending.session is not None and pending.progress is not None:
                params["progressToken"] = pending.progress
                pending.session.deliver(_notification(method, params), pending.client_id)
            return
        if method in LIST_CHANGED:
            for session in list(self.sessions.values()):
                self._unsolicited(session, message)
            return
        if method == "notifications/resources/updated":
            for session_id in list(self.subscribers.get(str(params.get("uri")), ())):
                if (session := self.sessions.get(session_id)) is not None:
                    self._unsolicited(session, message)
            return
        if method == "notifications/cancelled":  # the child gave up on one of its requests to a client
            for client_side, request in list(self.server_requests.items()):
                if request.child_id == params.get("requestId"):
                    del self.server_requests[client_side]
                    params["requestId"] = client_side
                    request.session.deliver(_notification(method, params), request.related)
            return
        if method == "notifications/elicitation/complete":
            session = self.elicitations.pop(str(params.get("elicitationId")), None)
            if session is not None and session.id in self.sessions:
                self._unsolicited(session, message)
            return
        target = self._in_flight()
        if target is not None:
            target[0].deliver(message, target[1])
        elif method == "notifications/message":
            say(f"log from the stdio server ({params.get('level')}): {params.get('data')}")
        else:
            say(f"dropped {method} from the stdio server: no client session to relate it to")


# -- the HTTP side -------------------------------------------------------------------------------------------------


def _security(host: str) -> TransportSecuritySettings | None:
    """Host/Origin checks against DNS rebinding. The platform reaches the adapter over loopback with the instance
    URL's host (127.0.0.1:PORT); a wildcard listen address leaves no name to check against."""
    loopback = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
    if host in ("0.0.0.0", "::", ""):
        return None
    named = f"[{host}]:*" if ":" in host else f"{host}:*"
    hosts = loopback if named in loopback else [*loopback, named]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=[f"http://{h}" for h in hosts],
    )


class Front:
    """The ASGI app: one SDK transport per HTTP session, each wired to a router (its own child or the shared one)."""

    def __init__(self, run: _Run, router: Router | None) -> None:
        self.run = run
        self.router = router  # the shared router; None in isolated mode
        self.sessions: dict[str, Session] = {}
        self.tg: Any = None
        self.security = _security(run.host)
        self._checks = TransportSecurityMiddleware(self.security)
        self.app = RequestBodyLimitMiddleware(self._app, DEFAULT_MAX_REQUEST_BODY_SIZE)

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = self.run.path.rstrip("/") or "/"
        if (scope["path"].rstrip("/") or "/") != path:
            await Response("Not Found", status_code=404)(scope, receive, send)
            return
        request = Request(scope, receive)
        if (refusal := await self._checks.validate_request(request, is_post=request.method == "POST")) is not None:
            await refusal(scope, receive, send)
            return
        version = request.headers.get(MCP_PROTOCOL_VERSION_HEADER)
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            # e.g. the SDK's server/discover probe: -32022 naming the handshake versions makes it fall back.
            body = unsupported_version(version, HANDSHAKE_PROTOCOL_VERSIONS,
                                       "this stdio server is served with the initialize handshake")
            await JSONResponse(body, status_code=400)(scope, receive, send)
            return
        session_id = request.headers.get(MCP_SESSION_ID_HEADER)
        if session_id is not None:
            session = self.sessions.get(session_id)
            if session is None or session.ending:
                body = session_not_found("it ended or never existed; send initialize to start a new one")
                await JSONResponse(body, status_code=404)(scope, receive, send)
                return
            await session.handle(scope, receive, send)
            return
        if request.method != "POST":
            await _http_error(400, INVALID_REQUEST, "Bad Request: missing Mcp-Session-Id header; send initialize "
                              "to start a session")(scope, receive, send)
            return
        body = await request.body()
        try:
            message = pydantic_core.from_json(body)
        except ValueError as exc:
            await _http_error(400, PARSE_ERROR, f"Parse error: {exc}")(scope, receive, send)
            return
        if not (isinstance(message, dict) and message.get("method") == "initialize"):
            await _http_error(400, INVALID_REQUEST, "Bad Request: missing Mcp-Session-Id header; only initialize "
                              "may come without one")(scope, receive, send)
            return
        await self._open(scope, _replay(body, receive), send)

    async def _open(self, scope: Scope, receive: Receive, send: Send) -> None:
        if len(self.sessions) >= self.run.max_sessions:
            say(f"refused a new session: {len(self.sessions)} are open (--max-sessions {self.run.max_sessions})")
            await _http_error(503, INTERNAL_ERROR, f"too many sessions: this server allows {self.run.max_sessions} "
                              "at once (adapter --max-sessions); end unused sessions or retry later",
                              headers={"Retry-After": "5"})(scope, receive, send)
            return
        session = Session(uuid4().hex, self.run.idle_timeout, self.security)
        self.sessions[session.id] = session
        try:
            await self.tg.start(self._serve_session, session)
        except OSError as exc:
            self.sessions.pop(session.id, None)
            say(f"cannot start the stdio server {self.run.command[0]!r}: {exc}")
            await _http_error(500, INTERNAL_ERROR, f"cannot start the stdio server: {exc}")(scope, receive, send)
            return
        status = await session.handle(scope, receive, send)
        if status is None or status >= 400:
            session.end()  # nothing was established

    async def _serve_session(self, session: Session, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with session.transport.connect() as (read, write), anyio.create_task_group() as tg:
                tg.start_soon(session.pump, write)
                router = self.router
                if router is None:
                    router = Router(Child(self.run.params(), f"the stdio server of session {session.short}"),
                                    shared=False)
                    await tg.start(router.run)
                    tg.start_soon(self._watch_child, router, session)
                router.attach(session)
                task_status.started()
                idle = session.transport.idle_scope or anyio.CancelScope()
                try:
                    with idle, session.scope, contextlib.suppress(anyio.ClosedResourceError):
                        # DELETE closes the transport's streams under this loop.
                        async for item in read:
                            if isinstance(item, Exception):
                                continue  # the transport already answered that POST with an error
                            await router.from_client(session, item.message)
                    if idle.cancelled_caught:
                        say(f"session {session.short} was idle for {self.run.idle_timeout:g}s; ended it")
                except Exception as exc:  # noqa: BLE001 - a bug in one session must not take the others down
                    say(f"session {session.short} failed: {type(exc).__name__}: {exc}; ended it")
                finally:
                    with anyio.CancelScope(shield=True):
                        session.ending = True
                        self.sessions.pop(session.id, None)  # its id answers 404 from now on
                        router.detach(session)
                        if router is not self.router:
                            router.child.stop()
                            await router.child.exited.wait()
                        await session.transport.terminate()
                    tg.cancel_scope.cancel()
        finally:
            self.sessions.pop(session.id, None)

    async def _watch_child(self, router: Router, session: Session) -> None:
        await router.child.exited.wait()
        if router.child.stopping:
            return
        say(f"{router.child.label} {_exit_text(router.child.code)}; ending the session")
        await router.child_gone()
        await session.drain()
        session.end()

    async def shutdown(self, grace: float = GRACEFUL_SECONDS) -> None:
        """Let in-flight requests finish (bounded), then end every session."""
        with anyio.move_on_after(grace):
            while any(s.requests or s.posts for s in self.sessions.values()):
                await anyio.sleep(0.05)
        for session in list(self.sessions.values()):
            session.end()


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands out the already-read body first (the transport reads it again)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# -- the process ---------------------------------------------------------------------------------------------------


class _Uvicorn(uvicorn.Server):
    def capture_signals(self):  # the run owns SIGTERM/SIGINT: children must be stopped before we exit
        return contextlib.nullcontext()


def _find_command(command: str, cwd: str | None) -> str | None:
    """Why ``command`` cannot be started, or None. Checked once up front: an isolated adapter starts children only
    when sessions begin, and a deployment with a typo should fail at deploy time."""
    if os.sep in command:
        path = command if os.path.isabs(command) else os.path.join(cwd or os.getcwd(), command)
        return None if os.access(path, os.X_OK) and os.path.isfile(path) else f"{path} is not an executable file"
    if shutil.which(command, path=os.environ.get("PATH")) is None:
        return "not found on PATH"
    return None


class _Run:
    """One adapter run: the HTTP server, the children and the reasons to stop them."""

    def __init__(self, command: list[str], *, host: str, port: int, path: str, cwd: str | None, session_mode: str,
                 idle_timeout: float, max_sessions: int) -> None:
        self.command, self.host, self.port, self.path, self.cwd = command, host, port, path, cwd
        self.session_mode, self.idle_timeout, self.max_sessions = session_mode, idle_timeout, max_sessions
        self.code: int | None = None
        self.http: _Uvicorn | None = None
        self.front: Front | None = None
        self.scope = anyio.CancelScope()
        self._tg: Any = None

    def params(self) -> StdioServerParameters:
        # The platform already filtered the environment; the SDK's default would drop most of it.
        command = self.command
        if sys.platform.startswith("linux"):
            command = [sys.executable, "-I", "-S", "-c", _DEATHSIG_SHIM, str(os.getpid()), *command]
        return StdioServerParameters(command=command[0], args=command[1:], env=dict(os.environ), cwd=self.cwd)

    def stop(self, code: int) -> None:
        first = self.code is None
        if first:
            self.code = code
        if self.http is not None:
            self.http.should_exit = True  # stop accepting; in-flight requests get a moment
            if first and self.front is not None and self._tg is not None:
                self._tg.start_soon(self.front.shutdown)
        else:
            self.scope.cancel()

    async def on_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                say(f"received {signal.Signals(signum).name}; stopping the stdio server(s)")
                self.stop(0)

    async def watch_shared(self, router: Router) -> None:
        await router.child.exited.wait()
        if router.child.stopping:
            return
        say(f"the stdio server {self.command} {_exit_text(router.child.code)}; stopping the adapter (exit 1)")
        await router.child_gone()
        if self.front is not None:
            for session in list(self.front.sessions.values()):
                await session.drain()
        self.stop(1)

    async def start_shared(self, tg: Any) -> Router | None:
        router = Router(Child(self.params(), "the stdio server"), shared=True)
        try:
            await tg.start(router.run)
        except OSError as exc:
            say(f"cannot start the stdio server {self.command[0]!r}: {exc}")
            return None
        tg.start_soon(self.watch_shared, router)
        try:
            with anyio.fail_after(INIT_TIMEOUT):
                init = await router.initialize()
        except (ChildGone, TimeoutError) as exc:
            say(f"the stdio server {self.command} did not initialize: {exc or 'no answer in time'}")
            return None
        info = init.get("serverInfo") or {}
        name = " ".join(filter(None, (info.get("name"), info.get("version"))))
        say(f"{name} initialized (shared session mode); serving it at http://{self.host}:{self.port}{self.path}")
        return router

    async def serve(self) -> None:
        router = None
        if self.session_mode == "shared":
            router = await self.start_shared(self._tg)
            if router is None:
                self.code = 1 if self.code is None else self.code
                return
        else:
            say(f"serving {self.command} at http://{self.host}:{self.port}{self.path} (isolated session mode: "
                "one stdio server per session)")
        self.front = front = Front(self, router)
        config = uvicorn.Config(front.app, host=self.host, port=self.port, log_level="warning", lifespan="off",
                                timeout_graceful_shutdown=GRACEFUL_SECONDS)
        async with anyio.create_task_group() as sessions:
            front.tg = sessions
            self.http = _Uvicorn(config)
            if self.code is not None:
                self.http.should_exit = True
            try:
                await self.http.serve()
            except SystemExit:  # uvicorn's answer to a port it cannot bind; it logged why
                say(f"cannot listen on {self.host}:{self.port}")
                self.code = 1 if self.code is None else self.code
            await front.shutdown(grace=0)  # uvicorn waited for requests already; end what is left
        if router is not None:
            router.child.stop()
            await router.child.exited.wait()

    async def main(self) -> int:
        if (problem := _find_command(self.command[0], self.cwd)) is not None:
            say(f"cannot start the stdio server {self.command[0]!r}: {problem}")
            return 1
        with self.scope:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                if threading.current_thread() is threading.main_thread():
                    tg.start_soon(self.on_signals)
                try:
                    await self.serve()
                finally:
                    tg.cancel_scope.cancel()
        return self.code or 0


async def serve(
    command: str,
    args: Sequence[str] = (),
    *,
    host: str = "127.0.0.1",
    port: int,
    cwd: str | None = None,
    path: str = "/mcp",
    session_mode: str = "isolated",
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    max_sessions: int = DEFAULT_MAX_SESSIONS,
) -> int:
    """Run the adapter until SIGTERM/SIGINT (returns 0), or until the stdio server cannot start, the shared child
    exits or the port is taken (returns 1)."""
    if session_mode not in ("isolated", "shared"):
        raise ValueError(f"session_mode must be 'isolated' or 'shared', not {session_mode!r}")
    run = _Run([command, *args], host=host, port=port, path=path, cwd=cwd, session_mode=session_mode,
               idle_timeout=idle_timeout, max_sessions=max_sessions)
    return await run.main()


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, not {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    else:
        command = []
    parser = argparse.ArgumentParser(
        prog="python -m mcp_agent_cloud.runtime.adapter",
        description="Serve a stdio MCP server over Streamable HTTP",
        usage="%(prog)s --port PORT [--host HOST] [--cwd DIR] [--path /mcp] [--session-mode isolated|shared] "
              "[--idle-timeout SECONDS] [--max-sessions N] -- CMD [ARGS...]",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cwd", default=None, help="working directory of the stdio server")
    parser.add_argument("--path", default="/mcp")
    parser.add_argument("--session-mode", choices=("isolated", "shared"), default="isolated",
                        help="isolated: one stdio server per client session (default); shared: one for all")
    parser.add_argument("--idle-timeout", type=_positive(float), default=DEFAULT_IDLE_TIMEOUT, metavar="SECONDS",
                        help="end sessions with no HTTP activity for this long (default %(default)g)")
    parser.add_argument("--max-sessions", type=_positive(int), default=DEFAULT_MAX_SESSIONS, metavar="N",
                        help="refuse initialize beyond this many open sessions (default %(default)d)")
    opts = parser.parse_args(argv)
    if not command:
        parser.error("the stdio server command is missing: put it after --")
    logging.basicConfig(level=logging.WARNING, format=f"{PREFIX}: %(name)s: %(message)s")
    logging.getLogger("mcp.client.stdio").addFilter(_DropParseNoise())
    return anyio.run(lambda: serve(command[0], command[1:], host=opts.host, port=opts.port, cwd=opts.cwd,
                                   path=opts.path, session_mode=opts.session_mode, idle_timeout=opts.idle_timeout,
                                   max_sessions=opts.max_sessions))


if __name__ == "__main__":
    sys.exit(main())
