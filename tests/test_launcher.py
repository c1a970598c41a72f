"""The app launcher, run as the builder runs it: a separate Python process serving an app directory."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client

from mcp_agent_cloud.runtime import launcher
from mcp_agent_cloud.runtime.ports import free_port, wait_port

LAUNCHER = Path(launcher.__file__)

APP = textwrap.dedent(
    """
    from mcp.server.mcpserver import MCPServer

    mcp = MCPServer("hello")

    @mcp.tool()
    def greet(name: str) -> str:
        return f"hello {name}"

    def factory():
        return mcp

    async def async_factory():
        return mcp

    def wrong_factory():
        return "not a server"

    number = 42


    # Served by duck typing, as mcp_agent_cloud.MCPApp is: the launcher must not import mcp_agent_cloud.
    class DuckApp:
        __mcp_agent_cloud_app__ = True

        def streamable_http_app(self, *, streamable_http_path, host):
            server = MCPServer("duck")

            @server.tool()
            def where() -> str:
                return f"{host} {streamable_http_path}"

            return server.streamable_http_app(streamable_http_path=streamable_http_path, host=host)


    duck = DuckApp()


    # A proxy-like object: every attribute exists (and is truthy), so it looks like any type but is none.
    class AnswersEverything:
        def __getattr__(self, name):
            return lambda *args, **kwargs: "not an app"


    proxy = AnswersEverything()
    """
)

# An app of this very package, served through the launcher with no platform around it.
WORKFLOW_APP = textwrap.dedent(
    """
    from mcp_agent_cloud import MCPApp, Workflow

    app = MCPApp(name="launched", data_dir=".mcpac-data")

    @app.tool
    def add(a: int, b: int) -> int:
        return a + b

    @app.workflow
    class Echo(Workflow):
        async def run(self, text: str) -> str:
            return await self.wait_for_signal("go", timeout=60) + text
    """
)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "main.py").write_text(APP)
    (tmp_path / "broken.py").write_text("import does_not_exist_mcpac_xyz\n")
    (tmp_path / "workflows.py").write_text(WORKFLOW_APP)
    return tmp_path


def run_launcher(app_dir: Path, entrypoint: str, port: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(LAUNCHER), "--entrypoint", entrypoint, "--port", str(port), *extra],
        cwd=app_dir, stdout=subprocess.DEVNULL, stderr=open(app_dir / "stderr.log", "wb"),
    )


def finished(app_dir: Path, entrypoint: str) -> tuple[int, str]:
    proc = run_launcher(app_dir, entrypoint, free_port())
    code = proc.wait(timeout=60)
    return code, (app_dir / "stderr.log").read_text()


def serving(app_dir: Path, entrypoint: str, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = run_launcher(app_dir, entrypoint, port, *extra)
    if not anyio.run(wait_port, "127.0.0.1", port, 30):
        proc.kill()
        pytest.fail("launcher did not listen:\n" + (app_dir / "stderr.log").read_text())
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> tuple[int, float]:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    return code, time.monotonic() - started


async def greet(url: str, **client_options) -> str:
    async with Client(url, **client_options) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        assert names == ["greet"]
        result = await client.call_tool("greet", {"name": "ada"})
        return result.content[0].text


@pytest.mark.parametrize(("entrypoint", "path"), [("main:mcp", "/mcp"), ("main:async_factory", "/custom")])
def test_serves_server_objects_and_factories(app_dir: Path, entrypoint: str, path: str) -> None:
    proc, base = serving(app_dir, entrypoint, "--path", path)
    try:
        assert anyio.run(greet, base + path) == "hello ada"
    finally:
        code, _ = stop(proc)
    assert code == 0


def test_sigterm_exits_promptly_with_a_session_open(app_dir: Path) -> None:
    proc, base = serving(app_dir, "main:mcp")
    outcome: dict = {}

    async def main() -> None:
        # A legacy session keeps a standalone SSE stream open, which an unbounded graceful shutdown would wait on.
        async with Client(base + "/mcp", mode="legacy") as client:
            await client.list_tools()
            outcome["code"], outcome["seconds"] = await anyio.to_thread.run_sync(stop, proc)

    anyio.run(main)
    assert outcome["code"] == 0
    assert outcome["seconds"] < launcher.GRACEFUL_SECONDS + 5


def test_unsupported_object_exits_2(app_dir: Path) -> None:
    code, err = finished(app_dir, "main:number")
    assert code == 2
    assert "builtins.int" in err and "MCPServer" in err and "FastMCP" in err
    assert "mcp_agent_cloud.MCPApp" in err and "mcp_agent.app.MCPApp" in err


def test_duck_typed_app_object_builds_its_own_asgi_app(app_dir: Path) -> None:
    proc, base = serving(app_dir, "main:duck", "--path", "/agent")

    async def main() -> str:
        async with Client(base + "/agent") as client:
            return (await client.call_tool("where", {})).content[0].text

    try:
        # The object got the launcher's path and host, and what it returned is what the launcher served.
        assert anyio.run(main) == "127.0.0.1 /agent"
    finally:
        code, _ = stop(proc)
    assert code == 0


def test_object_answering_every_attribute_is_not_taken_for_an_app(app_dir: Path) -> None:
    # Its __mcp_agent_cloud_app__ is a truthy lambda, not True: the launcher must not call its streamable_http_app.
    code, err = finished(app_dir, "main:proxy")
    assert code == 2
    assert "main.AnswersEverything" in err and "supported:" in err


def test_serves_an_mcp_agent_cloud_app_with_its_workflow_tools(app_dir: Path) -> None:
    proc, base = serving(app_dir, "workflows:app")

    async def main() -> tuple[list[str], str, dict]:
        async with Client(base + "/mcp") as client:
            names = [t.name for t in (await client.list_tools()).tools]
            added = (await client.call_tool("add", {"a": 2, "b": 3})).content[0].text
            started = (await client.call_tool("workflows-Echo-run",
                                              {"run_parameters": {"text": "!"}})).structured_content
            await client.call_tool("workflows-resume", {"run_id": started["run_id"], "signal_name": "go",
                                                        "payload": "done"})
            for _ in range(100):
                status = (await client.call_tool("workflows-get_status",
                                                 {"run_id": started["run_id"]})).structured_content
                if status["status"] == "completed":
                    break
                await anyio.sleep(0.05)
            return names, added, status

    try:
        names, added, status = anyio.run(main)
    finally:
        code, _ = stop(proc)
    assert {"add", "workflows-list", "workflows-Echo-run", "workflows-resume"} <= set(names)
    assert added == "5"
    assert status["status"] == "completed" and status["result"] == "done!", status
    # The app's lifespan set up its executor (the run store lives in its data dir) and closed it on SIGTERM.
    assert (app_dir / ".mcpac-data").is_dir()
    assert code == 0


def test_factory_returning_unsupported_object_exits_2(app_dir: Path) -> None:
    code, err = finished(app_dir, "main:wrong_factory")
    assert code == 2
    assert "returned a builtins.str" in err


def test_malformed_entrypoint_exits_2(app_dir: Path) -> None:
    code, err = finished(app_dir, "main")
    assert code == 2
    assert "module:attr" in err


def test_import_error_exits_1_with_traceback(app_dir: Path) -> None:
    code, err = finished(app_dir, "broken:mcp")
    assert code == 1
    assert "Traceback" in err and "does_not_exist_mcpac_xyz" in err
    assert str(app_dir) in err


def test_missing_attribute_exits_1(app_dir: Path) -> None:
    code, err = finished(app_dir, "main:nope")
    assert code == 1
    assert "has no attribute 'nope'" in err


def test_launcher_imports_nothing_from_the_platform() -> None:
    # It runs inside app virtualenvs, which do not have mcp_agent_cloud installed.
    tree = ast.parse(LAUNCHER.read_text())
    modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    modules += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert modules and not [m for m in modules if m.startswith("mcp_agent_cloud")]
    assert os.path.basename(LAUNCHER) == "launcher.py"
