"""Serve an app's MCP server object over Streamable HTTP.

    python launcher.py --entrypoint module:attr --host 127.0.0.1 --port 8000 [--path /mcp]

Runs inside the app's own virtualenv, with the app directory as the working directory. It must not import
mcp_agent_cloud (that venv does not have it): only the standard library and the MCP library the app installed.

Besides MCP server objects it serves two kinds of agent app:
- this project's own ``mcp_agent_cloud.MCPApp``, recognised by duck typing (the attribute
  ``__mcp_agent_cloud_app__ = True``) so that this file needs no import of mcp_agent_cloud; the object builds its own
  ASGI app (with a lifespan that sets up and closes its workflow executor);
- an app of the lastmile-ai mcp-agent framework (``mcp_agent.app.MCPApp``), served the way that framework serves
  its apps: ``async with app.run()`` (it reads ``mcp_agent.config.yaml`` from the working directory, which is the
  app directory), then ``mcp_agent.server.app_server.create_mcp_server_for_app(app)``, an mcp 1.x FastMCP.

Exit codes: 0 after SIGTERM/SIGINT, 1 when the entrypoint cannot be imported or an mcp-agent app fails to start,
2 for a bad entrypoint or an object of an unsupported type.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import os
import signal
import sys
import traceback
from contextlib import AsyncExitStack

# Connections still open after this long on SIGTERM are cancelled (an open SSE stream would otherwise block exit).
GRACEFUL_SECONDS = 3

SUPPORTED = (
    "mcp.server.mcpserver.MCPServer (mcp 2.x), mcp.server.lowlevel.Server (mcp 2.x), "
    "mcp.server.fastmcp.FastMCP (mcp 1.x), fastmcp.FastMCP, mcp_agent_cloud.MCPApp, "
    "mcp_agent.app.MCPApp (the mcp-agent framework), "
    "or a function or class that returns one of these when called with no arguments"
)


class LauncherError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def load(entrypoint: str) -> object:
    module_name, sep, attr = entrypoint.partition(":")
    if not sep or not module_name or not attr:
        raise LauncherError(f"invalid entrypoint {entrypoint!r}: expected module:attr, e.g. main:mcp", 2)
    try:
        obj: object = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - a broken app may raise anything at import
        raise LauncherError(
            f"cannot import module {module_name!r} from {os.getcwd()}:\n{traceback.format_exc()}", 1
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise LauncherError(f"entrypoint {entrypoint!r}: {module_name!r} has no attribute {attr!r}", 1) from exc
    return obj


def _cls(module: str, name: str) -> type | None:
    # Only look at libraries the app already imported: an object of their type implies they are loaded.
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


def _fastmcp1_app(server, host: str, port: int, path: str):
    # mcp 1.x's FastMCP reads these from its settings rather than taking arguments.
    server.settings.host = host
    server.settings.port = port
    server.settings.streamable_http_path = path
    return server.streamable_http_app()


async def make_app(obj: object, host: str, port: int, path: str, stack: AsyncExitStack):
    """The ASGI app serving ``obj`` at ``path``, or None when ``obj`` is of no supported type.

    What must stay open while the app serves (an mcp-agent app's run context) is entered on ``stack``.
    """
    # `is True`, not truthiness: an object whose __getattr__ answers every name (a proxy, a mock) is not our app.
    if getattr(obj, "__mcp_agent_cloud_app__", False) is True:
        return obj.streamable_http_app(streamable_http_path=path, host=host)
    for module, name in (("mcp.server.mcpserver", "MCPServer"), ("mcp.server.lowlevel.server", "Server")):
        cls = _cls(module, name)
        if cls is not None and isinstance(obj, cls) and hasattr(obj, "streamable_http_app"):
            return obj.streamable_http_app(streamable_http_path=path, host=host)
    cls = _cls("mcp_agent.app", "MCPApp")
    if cls is not None and isinstance(obj, cls):
        return await _mcp_agent_framework_app(obj, host, port, path, stack)
    cls = _cls("mcp.server.fastmcp", "FastMCP")
    if cls is not None and isinstance(obj, cls):
        return _fastmcp1_app(obj, host, port, path)
    cls = _cls("fastmcp", "FastMCP")
    if cls is not None and isinstance(obj, cls):
        return obj.http_app(path=path)
    return None


async def _mcp_agent_framework_app(app, host: str, port: int, path: str, stack: AsyncExitStack):
    """Serve a lastmile-ai mcp-agent app as the framework's own examples do.

    ``app.run()`` initializes the app (config, executor, logging) and cleans it up on exit; the server's own
    lifespan only initializes, leaving cleanup to its caller, so the run context is held for the whole serve.
    The framework reads every key of mcp_agent.config.yaml but ``deploy:`` (its settings allow extra keys).
    """
    from mcp_agent.server.app_server import create_mcp_server_for_app

    try:
        await stack.enter_async_context(app.run())
    except Exception as exc:  # noqa: BLE001 - the framework may raise anything while it sets up
        raise LauncherError(
            f"the mcp-agent app {getattr(app, 'name', '?')!r} failed to start (in MCPApp.run()): "
            f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            f"hint: check mcp_agent.config.yaml in {os.getcwd()} and that the app's requirements install what it "
            "configures (e.g. mcp-agent[temporal] for execution_engine: temporal)",
            1,
        ) from exc
    return _fastmcp1_app(create_mcp_server_for_app(app), host, port, path)


async def resolve(obj: object, entrypoint: str, host: str, port: int, path: str, stack: AsyncExitStack):
    app = await make_app(obj, host, port, path, stack)
    if app is None and callable(obj):
        made = obj()
        if inspect.isawaitable(made):
            made = await made
        app = await make_app(made, host, port, path, stack)
        if app is None:
            raise LauncherError(
                f"entrypoint {entrypoint!r} returned a {type(made).__module__}.{type(made).__qualname__}; "
                f"supported: {SUPPORTED}",
                2,
            )
    if app is None:
        raise LauncherError(
            f"entrypoint {entrypoint!r} is a {type(obj).__module__}.{type(obj).__qualname__}; supported: {SUPPORTED}",
            2,
        )
    return app


async def serve(entrypoint: str, host: str, port: int, path: str) -> None:
    # The stack closes after uvicorn's graceful shutdown, also when SIGTERM's SystemExit unwinds through it.
    async with AsyncExitStack() as stack:
        app = await resolve(load(entrypoint), entrypoint, host, port, path, stack)
        import uvicorn

        options = {"host": host, "port": port, "log_level": "info", "lifespan": "on"}
        if "timeout_graceful_shutdown" in inspect.signature(uvicorn.Config).parameters:
            options["timeout_graceful_shutdown"] = GRACEFUL_SECONDS
        print(f"launcher: serving {entrypoint} at http://{host}:{port}{path}", file=sys.stderr, flush=True)
        await uvicorn.Server(uvicorn.Config(app, **options)).serve()


def _exit_now(signum: int, frame: object) -> None:
    # uvicorn swaps in its own handler while serving and re-raises the signal after its graceful shutdown,
    # which lands here: so a stop request always ends in a clean exit 0.
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launcher.py", description="Serve an MCP server object over Streamable HTTP")
    parser.add_argument("--entrypoint", required=True, help="module:attr of the server object (or of a factory)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/mcp")
    args = parser.parse_args(argv)
    sys.path.insert(0, os.getcwd())
    signal.signal(signal.SIGTERM, _exit_now)
    signal.signal(signal.SIGINT, _exit_now)
    try:
        asyncio.run(serve(args.entrypoint, args.host, args.port, args.path))
    except LauncherError as exc:
        print(f"launcher: {exc}", file=sys.stderr, flush=True)
        return exc.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
