"""The stdio adapter, run as the builder runs it, in front of real stdio MCP servers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client, types

from mcp_agent_cloud.plugins.process import descendants, pid_alive, proc_cmdline
from mcp_agent_cloud.runtime.ports import free_port, wait_port

EVERYTHING = textwrap.dedent(
    """
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.types import Completion

    mcp = MCPServer("everything", instructions="try the tools")

    @mcp.tool()
    def add(a: int, b: int) -> int:
        return a + b

    @mcp.tool()
    def fail() -> str:
        raise ValueError("this tool always fails")

    @mcp.tool()
    async def slow(ctx: Context) -> str:
        for i in range(3):
            await ctx.report_progress(i + 1, 3, f"step {i + 1}")
        return "done"

    @mcp.resource("res://greeting")
    def greeting() -> str:
        return "hello from a resource"

    @mcp.resource("res://greet/{name}")
    def greet(name: str) -> str:
        return f"hello {name}"

    @mcp.prompt()
    def review(code: str) -> str:
        return f"please review {code}"

    @mcp.completion()
    async def complete(ref, argument, context):
        return Completion(values=[v for v in ("python", "pytest") if v.startswith(argument.value)])

    mcp.run()
    """
)

# A low-level server with tools and subscribable resources only: no prompts, no completions.
SUBSCRIBABLE = textwrap.dedent(
    """
    import anyio
    from mcp import types
    from mcp.server.lowlevel.server import Server
    from mcp.server.stdio import stdio_server

    async def list_tools(ctx, params):
        schema = {"type": "object", "properties": {"uri": {"type": "string"}}}
        return types.ListToolsResult(tools=[types.Tool(name="touch", input_schema=schema)])

    async def call_tool(ctx, params):
        await ctx.session.send_resource_updated(params.arguments["uri"])
        return types.CallToolResult(content=[types.TextContent(type="text", text="touched")])

    async def list_resources(ctx, params):
        return types.ListResourcesResult(resources=[types.Resource(uri="file:///a", name="a")])

    async def subscribe(ctx, params):
        print("child: subscribe", params.uri, file=__import__("sys").stderr, flush=True)
        return types.EmptyResult()

    async def unsubscribe(ctx, params):
        print("child: unsubscribe", params.uri, file=__import__("sys").stderr, flush=True)
        return types.EmptyResult()

    server = Server("subscribable", version="1.2.3", on_list_tools=list_tools, on_call_tool=call_tool,
                    on_list_resources=list_resources, on_subscribe_resource=subscribe,
                    on_unsubscribe_resource=unsubscribe)

    async def main():
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(main)
    """
)


class Adapter:
    def __init__(self, tmp_path: Path, *command: str, port: int | None = None, mode: str = "isolated",
                 flags: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.stderr = tmp_path / "adapter.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mcp_agent_cloud.runtime.adapter", "--port", str(self.port),
             "--cwd", str(tmp_path), "--session-mode", mode, *flags, "--", *command],
            stdout=subprocess.DEVNULL, stderr=open(self.stderr, "wb"),
        )

    def log(self) -> str:
        return self.stderr.read_text()

    def ready(self) -> Adapter:
        if not anyio.run(wait_port, "127.0.0.1", self.port, 60):
            self.proc.kill()
            pytest.fail("adapter did not listen:\n" + self.log())
        return self

    def children(self) -> list[int]:
        return descendants(self.proc.pid)

    def child(self) -> int:
        kids = self.children()
        assert len(kids) == 1, kids
        return kids[0]

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait()


@pytest.fixture
def script(tmp_path: Path):
    def write(source: str) -> str:
        path = tmp_path / "server.py"
        path.write_text(source)
        return str(path)

    return write


def leaf(exc: BaseException) -> BaseException:
    """The innermost error of the exception groups the SDK raises."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


MODES = pytest.mark.parametrize("mode", ["isolated", "shared"])


@MODES
@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
def test_forwards_tools_resources_prompts_and_completions(tmp_path: Path, script, mode: str) -> None:
    adapter = Adapter(tmp_path, sys.executable, script(EVERYTHING), mode=mode).ready()
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async def main() -> None:
        async with Client(adapter.url) as client:
            caps = client.server_capabilities
            assert caps.tools and caps.resources and caps.prompts and caps.completions
            assert client.instructions == "try the tools"
            assert {t.name for t in (await client.list_tools()).tools} == {"add", "fail", "slow"}
            result = await client.call_tool("add", {"a": 2, "b": 3})
            assert result.structured_content == {"result": 5} and not result.is_error
            failed = await client.call_tool("fail", {})
            assert failed.is_error and "fail" in failed.content[0].text
            assert (await client.call_tool("slow", {}, progress_callback=on_progress)).content[0].text == "done"

            resources = await client.list_resources()
            assert [str(r.uri) for r in resources.resources] == ["res://greeting"]
            templates = await client.list_resource_templates()
            assert [t.uri_template for t in templates.resource_templates] == ["res://greet/{name}"]
            read = await client.read_resource("res://greet/bob")
            assert read.contents[0].text == "hello bob"

            assert [p.name for p in (await client.list_prompts()).prompts] == ["review"]
            prompt = await client.get_prompt("review", {"code": "x = 1"})
            assert "please review x = 1" in prompt.messages[0].content.text
            done = await client.complete(types.PromptReference(type="ref/prompt", name="review"),
                                         {"name": "code", "value": "py"})
            assert done.completion.values == ["python", "pytest"]

        # A second, handshake-era client (its own child in isolated mode, the same one in shared mode).
        async with Client(adapter.url, mode="legacy") as client:
            assert client.server_info.name == "everything"
            assert (await client.call_tool("add", {"a": 1, "b": 1})).structured_content == {"result": 2}
            await client.send_ping()

    try:
        anyio.run(main)
    finally:
        assert adapter.terminate() == 0, adapter.log()
    assert [p[0] for p in progress] == [1, 2, 3]
    assert progress[-1][2] == "step 3"


@MODES
@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
def test_advertises_only_what_the_child_does_and_relays_resource_updates(tmp_path: Path, script, mode: str) -> None:
    adapter = Adapter(tmp_path, sys.executable, script(SUBSCRIBABLE), mode=mode).ready()
    updates: list[str] = []

    async def main() -> None:
        arrived = anyio.Event()

        async def on_message(message) -> None:
            if isinstance(message, types.ResourceUpdatedNotification):
                updates.append(message.params.uri)
                arrived.set()

        async with Client(adapter.url, mode="legacy", message_handler=on_message) as client:
            caps = client.server_capabilities
            assert caps.prompts is None and caps.completions is None
            assert caps.tools is not None and caps.resources is not None and caps.resources.subscribe
            assert client.server_info.name == "subscribable" and client.server_info.version == "1.2.3"
            await client.subscribe_resource("file:///a")
            await client.call_tool("touch", {"uri": "file:///a"})
            with anyio.fail_after(10):
                await arrived.wait()
            await client.unsubscribe_resource("file:///a")
            await client.call_tool("touch", {"uri": "file:///a"})  # no longer subscribed: not relayed

    try:
        anyio.run(main)
    finally:
        assert adapter.terminate() == 0, adapter.log()
    assert updates == ["file:///a"]
    assert "child: subscribe file:///a" in adapter.log() and "child: unsubscribe file:///a" in adapter.log()


@MODES
def test_mcp_server_time_and_sigterm_takes_the_child_down(tmp_path: Path, mode: str) -> None:
    adapter = Adapter(tmp_path, str(Path(sys.executable).parent / "mcp-server-time"), mode=mode).ready()
    if mode == "shared":
        assert len(adapter.children()) == 1  # started with the adapter
    else:
        assert adapter.children() == []  # started by a session's initialize

    async def main() -> tuple[str, int]:
        async with Client(adapter.url) as client:
            result = await client.call_tool("get_current_time", {"timezone": "UTC"})
            assert not result.is_error
            child = adapter.child()
            adapter.proc.send_signal(signal.SIGTERM)  # with the session still open
            return result.structured_content["timezone"], child

    try:
        timezone, child = anyio.run(main)
        assert timezone == "UTC"
    finally:
        code = adapter.terminate()
    assert code == 0, adapter.log()
    assert gone_within(child, 5), f"stdio server {child} outlived the adapter"
    assert not pid_alive(child)


def test_shared_adapter_exits_nonzero_when_the_child_dies(tmp_path: Path, script) -> None:
    adapter = Adapter(tmp_path, sys.executable, script(EVERYTHING), mode="shared").ready()
    os.kill(adapter.child(), signal.SIGKILL)
    assert adapter.wait(timeout=30) == 1
    assert "was killed by SIGKILL; stopping the adapter (exit 1)" in adapter.log()


@MODES
def test_child_that_cannot_start(tmp_path: Path, mode: str) -> None:
    adapter = Adapter(tmp_path, "no-such-command-mcpac", mode=mode)
    assert adapter.wait(timeout=60) == 1
    assert "cannot start the stdio server 'no-such-command-mcpac': not found on PATH" in adapter.log()


def test_shared_child_that_exits_before_initializing(tmp_path: Path, script) -> None:
    adapter = Adapter(tmp_path, sys.executable, script("import sys; print('boom', file=sys.stderr); sys.exit(3)\n"),
                      mode="shared")
    assert adapter.wait(timeout=60) == 1
    log = adapter.log()
    assert "boom" in log  # the child's stderr reaches the adapter's
    assert "did not initialize" in log or "exited with code 3; stopping the adapter" in log


def test_isolated_child_that_exits_before_initializing(tmp_path: Path, script) -> None:
    adapter = Adapter(tmp_path, sys.executable, script("import sys; print('boom', file=sys.stderr); sys.exit(3)\n"))
    adapter.ready()

    async def main() -> str:
        with pytest.raises(Exception) as failed:
            async with Client(adapter.url, mode="legacy"):
                pass
        return str(leaf(failed.value))

    try:
        for _ in range(2):  # each session fails on its own; the adapter keeps serving
            assert "the stdio server exited with code 3" in anyio.run(main)
        assert adapter.proc.poll() is None
    finally:
        assert adapter.terminate() == 0, adapter.log()
    assert adapter.log().count("boom") == 2


@MODES
def test_port_in_use(tmp_path: Path, script, mode: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        adapter = Adapter(tmp_path, sys.executable, script(EVERYTHING), port=taken.getsockname()[1], mode=mode)
        assert adapter.wait(timeout=60) == 1
    log = adapter.log()
    assert "address already in use" in log and "cannot listen on" in log
    if mode == "shared":
        assert "initialized" in log  # the child ran...
    assert not [p for p in map(int, filter(str.isdigit, os.listdir("/proc")))
                if str(tmp_path / "server.py") in proc_cmdline(p)], "...and must not outlive the adapter"


@pytest.mark.parametrize("args, error", [
    (["--port", "1"], "put it after --"),
    (["--port", "1", "--session-mode", "pooled", "--", "x"], "invalid choice: 'pooled'"),
    (["--port", "1", "--idle-timeout", "0", "--", "x"], "must be greater than 0"),
    (["--port", "1", "--max-sessions", "-3", "--", "x"], "must be greater than 0"),
])
def test_usage_errors_exit_2(args: list[str], error: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "mcp_agent_cloud.runtime.adapter", *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert error in proc.stderr
