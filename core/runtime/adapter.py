"""Serve a stdio MCP server over Streamable HTTP.

    python -m mcp_agent_cloud.runtime.adapter --host 127.0.0.1 --port 8000 [--cwd DIR] -- CMD ARGS...

Starts ``CMD ARGS`` once as an MCP stdio server (through the SDK's stdio client) and serves a low-level MCP
server at ``http://HOST:PORT/mcp`` whose handlers forward to it. Every HTTP session shares that one child. Only the
capabilities the child advertised are advertised. The child's stderr goes to the adapter's stderr.

Exit codes: 0 after SIGTERM/SIGINT (the child is stopped first), 1 when the child exits or cannot start, 2 for bad
arguments.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import anyio
import uvicorn
from mcp import types
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.session import ServerSession
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

PREFIX = "mcp-agent-cloud adapter"
INIT_TIMEOUT = 60.0
GRACEFUL_SECONDS = 3
MAX_SESSIONS = 1000  # remembered HTTP sessions that child notifications are relayed to
RESERVED_META = "io.modelcontextprotocol/"
PROGRESS_KEYS = ("progress_token", "progressToken")  # validated params hold the python name, raw dicts the wire name


# Server handler keyword -> the request the child gets and the result it answers with.
FORWARDED: dict[str, tuple[type, Any]] = {
    "on_ping": (types.PingRequest, types.EmptyResult),
    "on_list_tools": (types.ListToolsRequest, types.ListToolsResult),
    "on_call_tool": (types.CallToolRequest, types.CallToolResult),
    "on_list_resources": (types.ListResourcesRequest, types.ListResourcesResult),
    "on_list_resource_templates": (types.ListResourceTemplatesRequest, types.ListResourceTemplatesResult),
    "on_read_resource": (types.ReadResourceRequest, types.ReadResourceResult),
    "on_list_prompts": (types.ListPromptsRequest, types.ListPromptsResult),
    "on_get_prompt": (types.GetPromptRequest, types.GetPromptResult),
    "on_completion": (types.CompleteRequest, types.CompleteResult),
}
# Child capability -> the handlers served only when the child advertised it.
BY_CAPABILITY = {
    "tools": ("on_list_tools", "on_call_tool"),
    "resources": ("on_list_resources", "on_list_resource_templates", "on_read_resource"),
    "prompts": ("on_list_prompts", "on_get_prompt"),
    "completions": ("on_completion",),
}


def say(message: str) -> None:
    print(f"{PREFIX}: {message}", file=sys.stderr, flush=True)


def _clean(params: Any) -> Any:
    """Params to send to the child: drop the caller's progress token (the child session sets its own) and the
    2026 envelope keys, which belong to the HTTP connection, not to the child's."""
    if params is None or not params.meta:
        return params
    meta = {k: v for k, v in params.meta.items() if k not in PROGRESS_KEYS and not k.startswith(RESERVED_META)}
    return params.model_copy(update={"meta": meta or None})


class Bridge:
    """Forwards MCP requests from the HTTP sessions to the child session, and child notifications back."""

    def __init__(self, child: ClientSession, init: types.InitializeResult) -> None:
        self.child = child
        self.init = init
        # session id -> latest ServerSession: its standalone channel outlives the request that brought it.
        self._sessions: OrderedDict[str, ServerSession] = OrderedDict()
        self._subscribers: dict[str, set[str]] = {}

    # -- requests ------------------------------------------------------------------------------------------------

    async def _forward(self, ctx: Any, request: type, result: Any, params: Any) -> Any:
        self._remember(ctx)
        progress = None
        if params is not None and params.meta and any(params.meta.get(k) is not None for k in PROGRESS_KEYS):

            async def progress(done: float, total: float | None, message: str | None) -> None:
                await ctx.session.report_progress(done, total, message)

        return await self.child.send_request(request(params=_clean(params)), result, progress_callback=progress)

    def forwarder(self, request: type, result: Any) -> Any:
        async def handler(ctx: Any, params: Any) -> Any:
            return await self._forward(ctx, request, result, params)

        return handler

    async def subscribe(self, ctx: Any, params: Any) -> types.EmptyResult:
        key = self._remember(ctx)
        subscribers = self._subscribers.setdefault(params.uri, set())
        if not subscribers:  # the shared child needs one subscription per uri
            await self.child.send_request(types.SubscribeRequest(params=_clean(params)), types.EmptyResult)
        if key is not None:
            subscribers.add(key)
        return types.EmptyResult()

    async def unsubscribe(self, ctx: Any, params: Any) -> types.EmptyResult:
        key = self._remember(ctx)
        subscribers = self._subscribers.get(params.uri, set())
        subscribers.discard(key)
        if not subscribers:
            self._subscribers.pop(params.uri, None)
            await self.child.send_request(types.UnsubscribeRequest(params=_clean(params)), types.EmptyResult)
        return types.EmptyResult()

    # -- notifications from the child ----------------------------------------------------------------------------

    def _remember(self, ctx: Any) -> str | None:
        """Record the caller's session so child notifications can reach it. Only handshake-era sessions: on the
        2026 wire change notifications travel on subscriptions/listen streams, which this adapter does not serve."""
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return None
        headers = getattr(ctx.request, "headers", None)
        key = headers.get("mcp-session-id") if headers is not None else None
        if key is None:
            return None
        self._sessions[key] = ctx.session
        self._sessions.move_to_end(key)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return key

    async def _send(self, key: str, notification: Any) -> None:
        session = self._sessions.get(key)
        if session is None:
            return
        try:
            with anyio.fail_after(5):
                await session.send_notification(notification)
        except Exception:  # noqa: BLE001 - a gone client must not disturb the others
            self._sessions.pop(key, None)

    async def on_child_message(self, message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            subscribers = self._subscribers.get(message.params.uri, set())
            subscribers.intersection_update(self._sessions)  # forget sessions that are gone
            keys = list(subscribers)
        elif isinstance(
            message,
            types.ToolListChangedNotification
            | types.ResourceListChangedNotification
            | types.PromptListChangedNotification,
        ):
            keys = list(self._sessions)
        else:
            return
        for key in keys:
            await self._send(key, message)

    # -- the HTTP-facing server ----------------------------------------------------------------------------------

    def server(self) -> Server:
        caps = self.init.capabilities
        # Ping is forwarded too: it then answers only while the child does, so a health check sees a wedged child.
        served = [cap for cap in BY_CAPABILITY if getattr(caps, cap) is not None]
        names = ["on_ping", *(name for cap in served for name in BY_CAPABILITY[cap])]
        handlers: dict[str, Any] = {name: self.forwarder(*FORWARDED[name]) for name in names}
        if caps.resources is not None and caps.resources.subscribe:
            handlers.update(on_subscribe_resource=self.subscribe, on_unsubscribe_resource=self.unsubscribe)
        info = self.init.server_info
        return _ProxyServer(
            info.name,
            version=info.version,
            title=info.title,
            description=info.description,
            instructions=self.init.instructions,
            notifications=NotificationOptions(
                prompts_changed=bool(caps.prompts and caps.prompts.list_changed),
                resources_changed=bool(caps.resources and caps.resources.list_changed),
                tools_changed=bool(caps.tools and caps.tools.list_changed),
            ),
            **handlers,
        )


class _ProxyServer(Server):
    """A low-level server whose initialize result carries the child's listChanged flags."""

    def __init__(self, name: str, *, notifications: NotificationOptions, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self._notifications = notifications

    def create_initialization_options(self, notification_options=None, experimental_capabilities=None, extensions=None):
        return super().create_initialization_options(
            notification_options or self._notifications, experimental_capabilities, extensions
        )


class _Uvicorn(uvicorn.Server):
    def capture_signals(self):  # serve() owns SIGTERM/SIGINT: the child must be stopped before we exit
        return nullcontext()


async def _pump(source: Any, sink: Any, gone: anyio.Event) -> None:
    """Copy the child's messages to the session, and note when the child's stdout ends (it exited)."""
    async with sink:
        async for item in source:
            await sink.send(item)
    gone.set()


class _Run:
    """One adapter run: the child, the HTTP server and the reasons to stop them."""

    def __init__(self, command: list[str], host: str, port: int, path: str) -> None:
        self.command, self.host, self.port, self.path = command, host, port, path
        self.code: int | None = None
        self.http: _Uvicorn | None = None
        self.scope = anyio.CancelScope()

    def stop(self, code: int) -> None:
        if self.code is None:
            self.code = code
        if self.http is not None:
            self.http.should_exit = True  # graceful: in-flight requests finish
        else:
            self.scope.cancel()

    async def on_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                say(f"received {signal.Signals(signum).name}; stopping the stdio server")
                self.stop(0)

    async def serve_child(self, receive: Any, write: Any, gone: anyio.Event) -> None:
        bridge: Bridge | None = None

        async def relay(message: Any) -> None:
            if bridge is not None:
                await bridge.on_child_message(message)

        async with ClientSession(receive, write, message_handler=relay) as child:
            try:
                with anyio.fail_after(INIT_TIMEOUT):
                    init = await child.initialize()
            except (MCPError, TimeoutError) as exc:
                say(f"the stdio server {self.command} did not initialize: {exc or type(exc).__name__}")
                self.stop(1)
                return
            bridge = Bridge(child, init)
            name = " ".join(filter(None, (init.server_info.name, init.server_info.version)))
            say(f"{name} initialized; serving it at http://{self.host}:{self.port}{self.path}")
            with warnings.catch_warnings():
                # Forwarding the deprecated resources/subscribe for 2025-era children is the point.
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                app = bridge.server().streamable_http_app(streamable_http_path=self.path, host=self.host)
            config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning", lifespan="on",
                                    timeout_graceful_shutdown=GRACEFUL_SECONDS)
            self.http = _Uvicorn(config)
            if self.code is not None:
                self.http.should_exit = True
            try:
                await self.http.serve()
            except SystemExit:  # uvicorn's answer to a port it cannot bind; it logged why
                say(f"cannot listen on {self.host}:{self.port}")
                self.code = 1 if self.code is None else self.code

    async def watch_child(self, gone: anyio.Event) -> None:
        await gone.wait()
        say(f"the stdio server {self.command} exited; stopping the adapter (exit 1)")
        self.stop(1)

    async def run(self, cwd: str | None) -> int:
        # The platform already filtered the environment; the SDK's default would drop most of it.
        params = StdioServerParameters(command=self.command[0], args=self.command[1:], env=dict(os.environ), cwd=cwd)
        with self.scope:
            async with anyio.create_task_group() as tg:
                if threading.current_thread() is threading.main_thread():
                    tg.start_soon(self.on_signals)
                try:
                    async with stdio_client(params, errlog=sys.stderr) as (read, write):
                        send, receive = anyio.create_memory_object_stream[Any](0)
                        gone = anyio.Event()
                        async with anyio.create_task_group() as inner:
                            inner.start_soon(_pump, read, send, gone)
                            inner.start_soon(self.watch_child, gone)
                            await self.serve_child(receive, write, gone)
                            inner.cancel_scope.cancel()
                except OSError as exc:
                    say(f"cannot start the stdio server {self.command[0]!r}: {exc}")
                    self.code = 1
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
) -> int:
    """Run the adapter until SIGTERM/SIGINT (returns 0) or until the child exits or fails to start (returns 1)."""
    return await _Run([command, *args], host, port, path).run(cwd)


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
        usage="%(prog)s --port PORT [--host HOST] [--cwd DIR] [--path /mcp] -- CMD [ARGS...]",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cwd", default=None, help="working directory of the stdio server")
    parser.add_argument("--path", default="/mcp")
    opts = parser.parse_args(argv)
    if not command:
        parser.error("the stdio server command is missing: put it after --")
    return anyio.run(
        lambda: serve(command[0], command[1:], host=opts.host, port=opts.port, cwd=opts.cwd, path=opts.path)
    )


if __name__ == "__main__":
    sys.exit(main())
