"""The stdio adapter's session modes, run as the builder runs it: a real adapter process, real stdio children (a
Python server of ours and the npm server-everything) and the real SDK client."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client, types
from mcp.shared.exceptions import MCPError

from mcp_agent_cloud.client import mcp_client
from mcp_agent_cloud.plugins.process import pid_alive, proc_cmdline, proc_stat

from test_adapter import Adapter

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
MODES = pytest.mark.parametrize("mode", ["isolated", "shared"])
ROOT = Path(__file__).resolve().parent.parent

# A low-level server with one tool per feature the adapter routes. Stderr lines are what the tests read back.
FEATURES = textwrap.dedent(
    """
    import os, sys
    import anyio
    from mcp import types
    from mcp.server.lowlevel.server import Server
    from mcp.server.stdio import stdio_server

    count = 0
    PIPE = os.dup(1)  # the SDK points fd 1 at stderr while serving, to keep stray prints off the protocol stream

    def text(value):
        return types.CallToolResult(content=[types.TextContent(type="text", text=str(value))])

    async def list_tools(ctx, params):
        names = ["bump", "pid", "echo", "slow", "ask", "log", "touch", "block", "garbage"]
        schema = {"type": "object"}
        return types.ListToolsResult(tools=[types.Tool(name=n, input_schema=schema) for n in names])

    async def call_tool(ctx, params):
        global count
        args, name = params.arguments or {}, params.name
        if name == "bump":
            count += 1
            return text(count)
        if name == "pid":
            return text(os.getpid())
        if name == "echo":
            await anyio.sleep(args.get("pause", 0))
            return text(args["value"])
        if name == "slow":
            for i in range(3):
                await ctx.session.report_progress(i + 1, 3, f"{args['label']} {i + 1}")
                await anyio.sleep(0.05)
            return text(args["label"])
        if name == "ask":
            sampled = await ctx.session.create_message(
                [types.SamplingMessage(role="user", content=types.TextContent(type="text", text=args["prompt"]))],
                max_tokens=10)
            elicited = await ctx.session.elicit_form(
                "your name?", {"type": "object", "properties": {"name": {"type": "string"}}})
            return text(f"{sampled.content.text} / {elicited.action} {elicited.content}")
        if name == "log":
            await ctx.session.send_log_message(level="info", data=args["value"], logger="features")
            return text("logged")
        if name == "touch":
            await ctx.session.send_resource_updated(args["uri"])
            return text("touched")
        if name == "block":
            open(args["marker"], "w").close()
            await anyio.sleep_forever()
        if name == "garbage":
            os.write(PIPE, b"this line is not json-rpc\\n")
            return text("still here")
        raise ValueError(name)

    async def list_resources(ctx, params):
        return types.ListResourcesResult(resources=[types.Resource(uri="file:///a", name="a")])

    async def subscribe(ctx, params):
        print("child: subscribe", params.uri, file=sys.stderr, flush=True)
        return types.EmptyResult()

    async def unsubscribe(ctx, params):
        print("child: unsubscribe", params.uri, file=sys.stderr, flush=True)
        return types.EmptyResult()

    server = Server("features", version="1.0", on_list_tools=list_tools, on_call_tool=call_tool,
                    on_list_resources=list_resources, on_subscribe_resource=subscribe,
                    on_unsubscribe_resource=unsubscribe)

    async def main():
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(main)
    """
)


@pytest.fixture
def features(tmp_path: Path) -> list[str]:
    path = tmp_path / "features.py"
    path.write_text(FEATURES)
    return [sys.executable, str(path)]


@pytest.fixture
def everything(everything_cmd) -> list[str]:
    """The npm server-everything over stdio (conftest fails, never skips, when scripts/setup.sh did not install it)."""
    return list(everything_cmd)


def start(tmp_path: Path, command: list[str], mode: str = "isolated", *flags: str) -> Adapter:
    return Adapter(tmp_path, *command, mode=mode, flags=flags).ready()


def text(result: types.CallToolResult) -> str:
    assert not result.is_error, result
    return result.content[0].text


def wait_for(check, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def reaped(pid: int) -> bool:
    """Gone and waited for: a zombie still has its /proc entry."""
    return not Path(f"/proc/{pid}").exists()


def zombies_of(pid: int) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()
            and (stat := proc_stat(int(p))) is not None and stat["ppid"] == pid and stat["state"] == "Z"]


def running(script: str) -> list[int]:
    """Processes running ``script`` (the adapter only names it after its ``--``)."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and script in proc_cmdline(int(p))[:3]]


def run(adapter: Adapter, main) -> None:
    try:
        anyio.run(main)
    finally:
        code = adapter.terminate()
    assert code == 0, adapter.log()


# -- handshake, discovery and session ids --------------------------------------------------------------------------


@MODES
def test_auto_and_legacy_clients(tmp_path: Path, features: list[str], mode: str) -> None:
    adapter = start(tmp_path, features, mode)

    async def main() -> None:
        for client_mode in ("auto", "legacy"):  # auto probes server/discover first and must fall back
            async with mcp_client(adapter.url, mode=client_mode) as client:
                assert client.server_info.name == "features"
                assert text(await client.call_tool("echo", {"value": client_mode})) == client_mode

    run(adapter, main)


def test_session_ids_and_protocol_versions(tmp_path: Path, features: list[str]) -> None:
    adapter = start(tmp_path, features)
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    try:
        with httpx.Client(headers=headers, timeout=30) as http:
            unknown = http.post(adapter.url, json=listing, headers={"mcp-session-id": "no-such-session"})
            assert unknown.status_code == 404
            # As the SDK's own servers and the gateway answer it: -32600 "Session not found".
            assert unknown.json()["error"]["code"] == types.INVALID_REQUEST
            assert unknown.json()["error"]["message"].startswith("Session not found")
            missing = http.post(adapter.url, json=listing)
            assert missing.status_code == 400 and "missing Mcp-Session-Id" in missing.json()["error"]["message"]
            assert http.get(adapter.url).status_code == 400
            discover = http.post(adapter.url, headers={"mcp-protocol-version": "2026-07-28"},
                                 json={"jsonrpc": "2.0", "id": 1, "method": "server/discover"})
            assert discover.status_code == 400
            assert discover.json()["error"]["code"] == types.UNSUPPORTED_PROTOCOL_VERSION
            assert "2025-11-25" in discover.json()["error"]["data"]["supported"]
            garbage = http.post(adapter.url, content=b"{not json")
            assert garbage.status_code == 400 and garbage.json()["error"]["code"] == types.PARSE_ERROR
            assert http.post(adapter.url, json=listing, headers={"host": "evil.example:80"}).status_code == 421
        assert adapter.children() == []  # none of that started a stdio server
    finally:
        assert adapter.terminate() == 0, adapter.log()


def test_max_sessions(tmp_path: Path, features: list[str]) -> None:
    adapter = start(tmp_path, features, "isolated", "--max-sessions", "2")

    async def main() -> None:
        async with AsyncExitStack() as stack:
            for _ in range(2):
                await stack.enter_async_context(Client(adapter.url, mode="legacy"))
            init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
            async with httpx.AsyncClient(timeout=30) as http:
                refused = await http.post(adapter.url, json=init,
                                          headers={"accept": "application/json, text/event-stream"})
            assert refused.status_code == 503
            assert "--max-sessions" in refused.json()["error"]["message"]
            assert len(adapter.children()) == 2
        async with Client(adapter.url, mode="legacy") as client:  # room again once those ended
            assert text(await client.call_tool("echo", {"value": "in"})) == "in"

    run(adapter, main)


# -- isolation and multiplexing -----------------------------------------------------------------------------------


def test_isolated_sessions_have_their_own_child(tmp_path: Path, features: list[str]) -> None:
    adapter = start(tmp_path, features)

    async def main() -> None:
        async with Client(adapter.url) as a, Client(adapter.url) as b:
            assert [text(await a.call_tool("bump", {})) for _ in range(3)] == ["1", "2", "3"]
            assert text(await b.call_tool("bump", {})) == "1"  # a's state is not visible in b
            pids = {text(await a.call_tool("pid", {})), text(await b.call_tool("pid", {}))}
            assert len(pids) == 2
            assert {str(p) for p in adapter.children()} == pids

    run(adapter, main)


def test_shared_sessions_with_colliding_request_ids_get_their_own_answers(tmp_path: Path, features: list[str]) -> None:
    adapter = start(tmp_path, features, "shared")
    answers: dict[str, list[str]] = {"a": [], "b": []}

    async def main() -> None:
        async with Client(adapter.url) as a, Client(adapter.url) as b:
            # Both SDK clients number their requests from the same start: the ids collide at the child unless
            # the adapter rewrites them. Later calls pause less, so answers come back out of order.
            async def calls(name: str, client: Client) -> None:
                async with anyio.create_task_group() as tg:
                    for i in range(10):
                        async def one(i: int = i) -> None:
                            value = f"{name}{i}"
                            assert text(await client.call_tool("echo", {"value": value,
                                                                       "pause": (10 - i) / 100})) == value
                            answers[name].append(value)
                        tg.start_soon(one)

            async with anyio.create_task_group() as tg:
                tg.start_soon(calls, "a", a)
                tg.start_soon(calls, "b", b)
            assert text(await a.call_tool("pid", {})) == text(await b.call_tool("pid", {}))
            assert text(await a.call_tool("bump", {})) == "1"
            assert text(await b.call_tool("bump", {})) == "2"  # one child: shared state

    run(adapter, main)
    assert sorted(answers["a"]) == sorted(f"a{i}" for i in range(10))
    assert sorted(answers["b"]) == sorted(f"b{i}" for i in range(10))


@MODES
def test_progress_reaches_the_session_that_asked(tmp_path: Path, features: list[str], mode: str) -> None:
    adapter = start(tmp_path, features, mode)
    seen: dict[str, list[str | None]] = {"a": [], "b": []}

    async def main() -> None:
        async with Client(adapter.url) as a, Client(adapter.url) as b:
            async def call(name: str, client: Client) -> None:
                async def progress(done: float, total: float | None, message: str | None) -> None:
                    seen[name].append(message)

                assert text(await client.call_tool("slow", {"label": name}, progress_callback=progress)) == name

            async with anyio.create_task_group() as tg:
                tg.start_soon(call, "a", a)
                tg.start_soon(call, "b", b)

    run(adapter, main)
    assert seen == {"a": ["a 1", "a 2", "a 3"], "b": ["b 1", "b 2", "b 3"]}


@MODES
def test_sampling_elicitation_and_logging_round_trips(tmp_path: Path, features: list[str], mode: str) -> None:
    adapter = start(tmp_path, features, mode)
    logs: list[str] = []

    async def sampling(context, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        return types.CreateMessageResult(role="assistant", model="test",
                                         content=types.TextContent(type="text", text=f"sampled {params.messages[0].content.text}"))

    async def elicitation(context, params) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"name": "ada"})

    async def logging(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params.data)

    async def main() -> None:
        async with Client(adapter.url, sampling_callback=sampling, elicitation_callback=elicitation,
                          logging_callback=logging, mode="legacy") as client:
            assert text(await client.call_tool("ask", {"prompt": "hi"})) == "sampled hi / accept {'name': 'ada'}"
            assert text(await client.call_tool("log", {"value": "a log line"})) == "logged"
        async with Client(adapter.url, mode="legacy") as plain:  # declares neither capability
            with pytest.raises(MCPError) as refused:  # the adapter answers the child for it
                await plain.call_tool("ask", {"prompt": "hi"})
            assert "the client did not declare the sampling capability" in str(refused.value)

    run(adapter, main)
    assert logs == ["a log line"]


@MODES
def test_resource_subscriptions(tmp_path: Path, features: list[str], mode: str) -> None:
    adapter = start(tmp_path, features, mode)
    updates: dict[str, list[str]] = {"a": [], "b": []}

    def handler(name: str):
        async def on_message(message) -> None:
            if isinstance(message, types.ResourceUpdatedNotification):
                updates[name].append(str(message.params.uri))
        return on_message

    async def main() -> None:
        async with Client(adapter.url, mode="legacy", message_handler=handler("a")) as a, \
                Client(adapter.url, mode="legacy", message_handler=handler("b")) as b:
            await a.subscribe_resource("file:///a")
            await b.subscribe_resource("file:///a")
            await a.call_tool("touch", {"uri": "file:///a"})
            with anyio.fail_after(30):
                while not updates["a"] or (mode == "shared" and not updates["b"]):
                    await anyio.sleep(0.05)
            await b.unsubscribe_resource("file:///a")
            await a.call_tool("touch", {"uri": "file:///a"})
            with anyio.fail_after(30):
                while len(updates["a"]) < 2:
                    await anyio.sleep(0.05)
            await a.unsubscribe_resource("file:///a")
            await b.call_tool("touch", {"uri": "file:///a"})
            await a.call_tool("echo", {"value": "sync"})  # an update would have arrived before this answer

    run(adapter, main)
    log = adapter.log()
    if mode == "shared":
        # Both sessions see the child's one subscription; the child hears subscribe and unsubscribe once each.
        assert updates == {"a": ["file:///a", "file:///a"], "b": ["file:///a"]}
        assert log.count("child: subscribe file:///a") == 1 and log.count("child: unsubscribe file:///a") == 1
    else:
        assert updates == {"a": ["file:///a", "file:///a"], "b": []}  # b's child was never touched
        assert log.count("child: subscribe file:///a") == 2 and log.count("child: unsubscribe file:///a") == 2


# -- faults -------------------------------------------------------------------------------------------------------


def test_isolated_child_killed_mid_request(tmp_path: Path, features: list[str]) -> None:
    adapter = start(tmp_path, features)
    marker = tmp_path / "blocked"

    async def main() -> None:
        async with Client(adapter.url) as other, Client(adapter.url) as victim:
            pid = int(text(await victim.call_tool("pid", {})))
            async with anyio.create_task_group() as tg:
                async def kill_when_blocked() -> None:
                    while not marker.exists():
                        await anyio.sleep(0.05)
                    assert text(await other.call_tool("echo", {"value": "meanwhile"})) == "meanwhile"
                    os.kill(pid, signal.SIGKILL)

                tg.start_soon(kill_when_blocked)
                with pytest.raises(MCPError) as failed:
                    await victim.call_tool("block", {"marker": str(marker)})
            assert failed.value.error.code == types.INTERNAL_ERROR
            assert str(failed.value) == "the stdio server was killed by SIGKILL; start a new session"
            with anyio.fail_after(30):
                while True:  # the session ends with its child: 404
                    with pytest.raises(MCPError) as ended:
                        await victim.call_tool("echo", {"value": "again"})
                    if str(ended.value).startswith("Session not found"):
                        break
                    assert str(ended.value) == str(failed.value)  # until then, the same clear error
                    await anyio.sleep(0.05)
            assert text(await other.call_tool("echo", {"value": "still"})) == "still"
            wait_for(lambda: reaped(pid), f"the killed child {pid} to be reaped")

    run(adapter, main)
    assert "was killed by SIGKILL; ending the session" in adapter.log()


def test_shared_child_killed_mid_request(tmp_path: Path, features: list[str]) -> None:
    adapter = start(tmp_path, features, "shared")
    marker = tmp_path / "blocked"

    async def main() -> None:
        async with Client(adapter.url) as client:
            async with anyio.create_task_group() as tg:
                async def kill_when_blocked() -> None:
                    while not marker.exists():
                        await anyio.sleep(0.05)
                    os.kill(adapter.child(), signal.SIGKILL)

                tg.start_soon(kill_when_blocked)
                with pytest.raises(MCPError) as failed:
                    await client.call_tool("block", {"marker": str(marker)})
            assert str(failed.value) == "the stdio server was killed by SIGKILL; the platform restarts it"

    try:
        anyio.run(main)
    finally:
        assert adapter.wait() == 1, adapter.log()


@MODES
def test_garbage_on_stdout_is_logged_and_skipped(tmp_path: Path, features: list[str], mode: str) -> None:
    adapter = start(tmp_path, features, mode)

    async def main() -> None:
        async with Client(adapter.url) as client:
            assert text(await client.call_tool("garbage", {})) == "still here"
            assert text(await client.call_tool("echo", {"value": "after"})) == "after"

    run(adapter, main)
    assert "is not JSON-RPC; ignored it: 'this line is not json-rpc'" in adapter.log()


# -- processes ----------------------------------------------------------------------------------------------------


def test_isolated_children_are_reaped_when_sessions_end(tmp_path: Path, features: list[str]) -> None:
    adapter = start(tmp_path, features)
    script = features[1]
    sessions = 4

    async def main() -> None:
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(Client(adapter.url)) for _ in range(sessions)]
            pids = [int(text(await c.call_tool("pid", {}))) for c in clients]
            assert sorted(adapter.children()) == sorted(pids)
            assert sorted(running(script)) == sorted(pids)
        # Leaving the clients sent DELETE for each session.
        for pid in pids:
            wait_for(lambda pid=pid: reaped(pid), f"child {pid} to be reaped")
        assert adapter.children() == [] and zombies_of(adapter.proc.pid) == []
        assert running(script) == []  # no orphans either

        async with httpx.AsyncClient(timeout=30) as http:  # a raw session ended by DELETE
            session_id = await raw_session(http, adapter.url)
            wait_for(lambda: len(adapter.children()) == 1, "the raw session's child")
            child = adapter.child()
            assert (await http.delete(adapter.url, headers={"mcp-session-id": session_id})).status_code == 200
            wait_for(lambda: reaped(child), f"child {child} to be reaped after DELETE")
            after = await http.post(adapter.url, headers=raw_headers(session_id),
                                    json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
            assert after.status_code == 404

    run(adapter, main)


def raw_headers(session_id: str | None = None) -> dict[str, str]:
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    if session_id:
        headers |= {"mcp-session-id": session_id, "mcp-protocol-version": "2025-11-25"}
    return headers


async def raw_session(http: httpx.AsyncClient, url: str) -> str:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
    async with http.stream("POST", url, json=init, headers=raw_headers()) as response:
        assert response.status_code == 200
        session_id = response.headers["mcp-session-id"]
        async for line in response.aiter_lines():
            if line.startswith("data:") and '"result"' in line:
                break
    done = await http.post(url, headers=raw_headers(session_id),
                           json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert done.status_code == 202
    return session_id


def test_idle_sessions_are_ended_and_their_child_reaped(tmp_path: Path, features: list[str]) -> None:
    adapter = start(tmp_path, features, "isolated", "--idle-timeout", "1")

    async def main() -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            session_id = await raw_session(http, adapter.url)
            child = adapter.child()
            wait_for(lambda: reaped(child), f"idle session's child {child} to be reaped")
            after = await http.post(adapter.url, headers=raw_headers(session_id),
                                    json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
            assert after.status_code == 404

    run(adapter, main)
    assert "was idle for 1s; ended it" in adapter.log()


def test_children_die_with_a_sigkilled_adapter(tmp_path: Path, features: list[str]) -> None:
    adapter = start(tmp_path, features)
    script = features[1]

    async def main() -> list[int]:
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(Client(adapter.url)) for _ in range(3)]
            pids = [int(text(await c.call_tool("pid", {}))) for c in clients]
            adapter.proc.kill()
            adapter.proc.wait()
            stack.pop_all()  # the server is gone; nothing to close cleanly
            return pids

    pids = anyio.run(main)
    for pid in pids:
        wait_for(lambda pid=pid: not pid_alive(pid), f"child {pid} to die with its adapter")
    assert running(script) == []


# -- the npm server-everything ------------------------------------------------------------------------------------


@MODES
def test_server_everything(tmp_path: Path, everything: list[str], mode: str) -> None:
    adapter = start(tmp_path, everything, mode)
    progress: list[float] = []
    updates: list[str] = []

    async def sampling(context, params) -> types.CreateMessageResult:
        return types.CreateMessageResult(role="assistant", model="test",
                                         content=types.TextContent(type="text", text="from the client"))

    async def elicitation(context, params) -> types.ElicitResult:
        return types.ElicitResult(action="decline")

    async def on_message(message) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    async def main() -> None:
        async with Client(adapter.url, sampling_callback=sampling, elicitation_callback=elicitation,
                          message_handler=on_message) as client, Client(adapter.url) as other:
            tools = {t.name for t in (await client.list_tools()).tools}
            assert {"echo", "get-sum", "trigger-sampling-request", "trigger-elicitation-request"} <= tools
            assert "Echo: hi" in text(await client.call_tool("echo", {"message": "hi"}))
            assert "Echo: there" in text(await other.call_tool("echo", {"message": "there"}))
            done = await client.call_tool("trigger-long-running-operation", {"duration": 0.5, "steps": 3},
                                          progress_callback=on_progress)
            assert not done.is_error and progress == [1, 2, 3]
            assert "from the client" in text(await client.call_tool("trigger-sampling-request", {"prompt": "x"}))
            assert "decline" in text(await client.call_tool("trigger-elicitation-request", {}))
            resources = (await client.list_resources()).resources
            uri = str(resources[0].uri)
            assert (await client.read_resource(uri)).contents
            await client.subscribe_resource(uri)
            await client.call_tool("toggle-subscriber-updates", {})
            with anyio.fail_after(30):
                while uri not in updates:
                    await anyio.sleep(0.1)
            prompts = (await client.list_prompts()).prompts
            assert prompts

    run(adapter, main)


def test_last_event_id_resumes_a_request_stream(tmp_path: Path, features: list[str]) -> None:
    adapter = start(tmp_path, features)
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "slow", "arguments": {"label": "r"}, "_meta": {"progressToken": "tok"}}}

    async def main() -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            session_id = await raw_session(http, adapter.url)
            last_id, first = None, None
            async with http.stream("POST", adapter.url, json=call, headers=raw_headers(session_id)) as response:
                async for line in response.aiter_lines():
                    if line.startswith("id:"):
                        last_id = line[3:].strip()
                    if line.startswith("data:") and "notifications/progress" in line:
                        first = line
                        break  # drop the connection after the first progress event
            assert first is not None and '"progressToken":"tok"' in first and last_id
            resumed: list[str] = []
            async with http.stream("GET", adapter.url, headers={**raw_headers(session_id),
                                                                "last-event-id": last_id}) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data:") and line[5:].strip():
                        resumed.append(line)
                        if '"id":7' in line:
                            break
            assert [('"r 2"' in d, '"r 3"' in d) for d in resumed[:2]] == [(True, False), (False, True)]
            assert '"result"' in resumed[-1] and '"text":"r"' in resumed[-1]

    run(adapter, main)
