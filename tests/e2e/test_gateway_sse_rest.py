"""The gateway's legacy HTTP+SSE transport and its REST surface, against a real platform and real deployments.

One platform serves the module: a small probe app deployed natively (its `session_id` tool answers with the upstream
Mcp-Session-Id the call arrived on, so a test can see which upstream session served it) and the stdio server
mcp-server-time behind the adapter.
"""

from __future__ import annotations

import contextlib
import json
import textwrap

import anyio
import httpx
import mcp_types as types
import pytest
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.shared.exceptions import MCPError

from tests.conftest import PlatformProcess, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.network]

MAX_MESSAGE = 64 * 1024
REQUEST_TIMEOUT = 8  # seconds; the `block` tool never answers, so its calls end by this limit
ACCEPT = "application/json, text/event-stream"

PROBE_APP = '''
"""Probe app for the SSE/REST gateway tests."""

import anyio
import mcp_types as types
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

mcp = MCPServer("probe")


@mcp.tool()
def session_id(ctx: Context) -> str:
    """The upstream MCP session id this call arrived on."""
    return (ctx.headers or {}).get("mcp-session-id", "")


@mcp.tool()
def fail(message: str) -> str:
    """Always fails with `message`."""
    raise ToolError(message)


@mcp.tool()
async def block(ctx: Context) -> str:
    """Reports that it started (progress), then never answers."""
    await ctx.report_progress(0, 1, "started")
    await anyio.sleep_forever()


@mcp.tool()
async def ask(question: str, ctx: Context) -> str:
    """Asks the client's model (sampling) and returns its answer."""
    result = await ctx.session.create_message(
        messages=[types.SamplingMessage(role="user", content=types.TextContent(type="text", text=question))],
        max_tokens=20)
    return f"model said: {result.content.text}"


@mcp.resource("probe://note", mime_type="text/plain")
def note() -> str:
    return "a note"


@mcp.prompt()
def review(code: str) -> str:
    """Review some code."""
    return f"Please review: {code}"
'''


@pytest.fixture(scope="module")
def gw(tmp_path_factory, shared_envs):
    root = tmp_path_factory.mktemp("gwsserest")
    platform = PlatformProcess(root, shared_envs, extra_config=f"gateway: {{max_message_bytes: {MAX_MESSAGE}, "
                                                               f"request_timeout: {REQUEST_TIMEOUT}}}\n")
    platform.start()
    try:
        app = root / "probe"
        app.mkdir()
        (app / "main.py").write_text(textwrap.dedent(PROBE_APP))
        (app / "requirements.txt").write_text("mcp>=2.3,<3\n")
        (app / "mcp_agent.config.yaml").write_text("deploy:\n  entrypoint: main:mcp\n")
        assert platform.cli_json("deploy", "app", str(app), "--name", "probe")["status"] == "running"
        assert platform.cli_json("deploy", "server", "clock", "--type", "time")["status"] == "running"
        yield platform
    finally:
        platform.stop()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def text_of(result: types.CallToolResult) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


@contextlib.asynccontextmanager
async def sse_session(platform: PlatformProcess, name: str, token: str | None = None, **kw):
    """An initialized SDK ClientSession over the legacy SSE transport; yields it and the message endpoint URL."""
    endpoint: list[str] = []
    async with sse_client(f"{platform.url}/servers/{name}/sse", headers=auth(token or platform.token),
                          sse_read_timeout=60,
                          on_session_created=lambda sid: endpoint.append(sid)) as (read, write):
        async with ClientSession(read, write, read_timeout_seconds=60, **kw) as session:
            await session.initialize()
            yield session, f"{platform.url}/servers/{name}/messages/?session_id={endpoint[0]}"


def refusal(r: httpx.Response, status: int, kind: str, code: int | None = None) -> dict:
    """A gateway refusal on an MCP message endpoint: a JSON-RPC error, the platform's error in its data."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert body["jsonrpc"] == "2.0" and body["id"] is None, body
    error = body["error"]
    assert error["data"]["error"] == kind and error["data"]["message"] in error["message"], error
    if code is not None:
        assert error["code"] == code, error
    return error


def upstream_session_alive(platform: PlatformProcess, name: str, session_id: str) -> bool:
    """Ask the instance itself (behind the gateway) whether it still knows an MCP session."""
    r = httpx.post(platform.instance(name)["url"], timeout=30, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                   headers={"Accept": ACCEPT, "Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25"})
    return r.status_code != 404


# ---- legacy SSE ----


def test_sse_lists_and_calls_tools_native_and_stdio(gw):
    async def run():
        async with sse_session(gw, "probe") as (session, endpoint):
            assert endpoint.startswith(f"{gw.url}/servers/probe/messages/?session_id=")
            names = {t.name for t in (await session.list_tools()).tools}
            assert {"session_id", "fail", "ask"} <= names
            sid = text_of(await session.call_tool("session_id", {}))
            assert sid
            failed = await session.call_tool("fail", {"message": "boom"})
            assert failed.is_error and "boom" in text_of(failed)
            note = await session.read_resource("probe://note")
            assert note.contents[0].text == "a note"
        async with sse_session(gw, "clock") as (session, _):
            assert "get_current_time" in {t.name for t in (await session.list_tools()).tools}
            result = await session.call_tool("get_current_time", {"timezone": "UTC"})
            assert not result.is_error and "UTC" in text_of(result)

    anyio.run(run)


def test_sse_server_to_client_request_round_trip(gw):
    """Sampling: the upstream's request reaches the SSE client, and its answer travels back upstream."""
    async def sampling(ctx, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        asked = params.messages[0].content.text
        return types.CreateMessageResult(role="assistant", model="test",
                                         content=types.TextContent(type="text", text=f"echo {asked}"))

    async def run():
        async with sse_session(gw, "probe", sampling_callback=sampling) as (session, _):
            result = await session.call_tool("ask", {"question": "2+2?"})
            assert text_of(result) == "model said: echo 2+2?", result

    anyio.run(run)


def test_sse_sessions_are_independent_and_closing_one_ends_its_upstream_session(gw):
    async def run():
        async with sse_session(gw, "probe") as (a, _):
            async with sse_session(gw, "probe") as (b, _):
                sid_a, sid_b = [text_of(r) for r in await gather(a.call_tool("session_id", {}),
                                                                   b.call_tool("session_id", {}))]
                assert sid_a and sid_b and sid_a != sid_b
                # Each SSE connection keeps its one upstream session for every call.
                assert text_of(await a.call_tool("session_id", {})) == sid_a
                assert upstream_session_alive(gw, "probe", sid_b)
            # b disconnected: the gateway ended b's upstream session, and a goes on on its own.
            wait_for(lambda: not upstream_session_alive(gw, "probe", sid_b), timeout=30,
                     what="the closed SSE connection's upstream session to end")
            assert upstream_session_alive(gw, "probe", sid_a)
            assert text_of(await a.call_tool("session_id", {})) == sid_a
        wait_for(lambda: not upstream_session_alive(gw, "probe", sid_a), timeout=30, what="a's upstream session to end")

    anyio.run(run)


def test_sse_message_post_is_bound_to_its_owner_and_limited(gw):
    other = gw.cli_json("admin", "token", "--org", "default", "--subject", "someone-else")["token"]

    async def run():
        async with sse_session(gw, "probe") as (session, endpoint):
            ping = {"jsonrpc": "2.0", "id": 99, "method": "ping"}
            # Another caller cannot post into this session: it does not exist for them.
            r = httpx.post(endpoint, json=ping, headers=auth(other))
            assert refusal(r, 404, "not_found")["data"]["hint"].startswith("open a new SSE stream with GET "
                                                                            "/servers/probe/sse")
            r = httpx.post(endpoint, json=ping)
            assert r.status_code == 401
            unknown = endpoint.split("?")[0] + "?session_id=" + "0" * 32
            refusal(httpx.post(unknown, json=ping, headers=auth(gw.token)), 404, "not_found")
            # The gateway's message size limit, named in the error.
            big = {"jsonrpc": "2.0", "id": 100, "method": "ping", "params": {"pad": "x" * MAX_MESSAGE}}
            error = refusal(httpx.post(endpoint, json=big, headers=auth(gw.token)), 413, "too_large", -32010)
            assert "gateway.max_message_bytes" in error["message"]
            assert error["data"]["config_key"] == "gateway.max_message_bytes"
            r = httpx.post(endpoint, content=b"{not json", headers={**auth(gw.token), "Content-Type": "application/json"})
            refusal(r, 400, "invalid_request")
            # None of that disturbed the session.
            assert text_of(await session.call_tool("session_id", {}))

    anyio.run(run)


def test_sse_message_endpoint_resolves_the_deployment_and_never_opens_a_transport(gw):
    """A message POST is checked like every gateway route (unknown deployment 404, another org's 403) and only
    reaches the SSE transport of a stream that was opened: a name without one has no sessions (404), and posting
    to made-up names leaves nothing behind."""
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    query = "?session_id=" + "0" * 32
    for i in range(3):
        error = refusal(httpx.post(f"{gw.url}/servers/nosuch{i}/messages/{query}", json=ping, headers=auth(gw.token)),
                        404, "not_found")
        assert f"no deployment default.nosuch{i}" in error["message"], error
    refusal(httpx.post(f"{gw.url}/servers/otherorg.probe/messages/{query}", json=ping, headers=auth(gw.token)),
            403, "forbidden")
    # The qualified spelling of a real deployment on which no SSE stream was opened: no session there.
    error = refusal(httpx.post(f"{gw.url}/servers/default.probe/messages/{query}", json=ping,
                               headers=auth(gw.token)), 404, "not_found")
    assert "no SSE session" in error["message"], error

    async def run():  # a stream opened under that spelling announces it, and its messages go through
        async with sse_session(gw, "default.probe") as (session, endpoint):
            assert endpoint.startswith(f"{gw.url}/servers/default.probe/messages/?session_id=")
            assert text_of(await session.call_tool("session_id", {}))

    anyio.run(run)


def test_sse_pending_call_gets_an_error_when_the_deployment_stops(gw):
    """A call in flight when the gateway ends the session is answered with a JSON-RPC error, not left hanging."""
    async def run():
        async with sse_session(gw, "probe") as (session, _):
            started = anyio.Event()
            outcome: list = []

            async def progress(done: float, total: float | None, message: str | None) -> None:
                started.set()

            async def call() -> None:
                try:
                    outcome.append(await session.call_tool("block", {}, progress_callback=progress))
                except Exception as exc:
                    outcome.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                with anyio.fail_after(60):
                    await started.wait()  # the call is running in the app
                await anyio.to_thread.run_sync(lambda: gw.cli("stop", "probe", check=True))
            # Whoever notices first (the SDK transport when the upstream stream breaks, or the gateway ending the
            # session) answers the call with a connection-closed JSON-RPC error; on a machine so slow that the stop
            # took longer than the request timeout, that limit answered it.
            assert isinstance(outcome[0], MCPError), outcome
            assert outcome[0].code in (types.CONNECTION_CLOSED, -32011), outcome

    try:
        anyio.run(run)
    finally:
        gw.cli("start", "probe", check=True)


def test_request_timeout_over_sse_and_rest(gw):
    """A call that never finishes ends at gateway.request_timeout, on both surfaces; the session lives on."""
    async def over_sse() -> None:
        async with sse_session(gw, "probe") as (session, _):
            with pytest.raises(MCPError) as err:
                await session.call_tool("block", {})
            assert err.value.code == -32011 and "gateway.request_timeout" in err.value.message
            assert err.value.error.data["config_key"] == "gateway.request_timeout"
            assert text_of(await session.call_tool("session_id", {}))

    async def over_rest() -> httpx.Response:
        async with httpx.AsyncClient(headers=auth(gw.token), timeout=60) as client:
            return await client.post(f"{gw.url}/servers/probe/call_tool", json={"name": "block"})

    async def run() -> httpx.Response:
        async with anyio.create_task_group() as tg:
            tg.start_soon(over_sse)
            rest_response = await over_rest()
        return rest_response

    r = anyio.run(run)
    assert r.status_code == 504 and "gateway.request_timeout" in r.json()["message"], r.text
    assert rest(gw, "POST", "probe/call_tool", json={"name": "session_id"}).status_code == 200


def test_sse_unknown_deployment_and_no_token(gw):
    r = httpx.get(f"{gw.url}/servers/nope/sse", headers=auth(gw.token))
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert httpx.get(f"{gw.url}/servers/probe/sse").status_code == 401


# ---- REST ----


def rest(gw, method: str, path: str, token: str | None = "default", **kw) -> httpx.Response:
    return gw.api(method, f"/servers/{path}", token=token, **kw)


def test_rest_surface(gw):
    tools = rest(gw, "GET", "probe/tools")
    assert tools.status_code == 200, tools.text
    by_name = {t["name"]: t for t in tools.json()["tools"]}
    assert {"session_id", "fail", "block", "ask"} <= set(by_name)
    assert by_name["fail"]["inputSchema"]["required"] == ["message"]

    ok = rest(gw, "POST", "probe/call_tool", json={"name": "session_id", "arguments": {}})
    assert ok.status_code == 200 and ok.json()["isError"] is False
    # A tool's own failure is a result with isError, as MCP has it.
    failed = rest(gw, "POST", "probe/call_tool", json={"name": "fail", "arguments": {"message": "nope"}})
    assert failed.status_code == 200 and failed.json()["isError"] is True
    assert "nope" in failed.json()["content"][0]["text"]

    note = rest(gw, "POST", "probe/read_resource", json={"uri": "probe://note"})
    assert note.status_code == 200, note.text
    assert note.json()["contents"] == [{"uri": "probe://note", "mimeType": "text/plain", "text": "a note"}]
    missing = rest(gw, "POST", "probe/read_resource", json={"uri": "probe://missing"})
    assert missing.status_code in (400, 404) and "probe://missing" in missing.json()["message"]

    prompts = rest(gw, "GET", "probe/prompts").json()["prompts"]
    assert [p["name"] for p in prompts] == ["review"]
    assert prompts[0]["arguments"][0]["name"] == "code"

    # The stdio server behind the adapter, through the same surface; it has no prompts: an empty list.
    assert "get_current_time" in [t["name"] for t in rest(gw, "GET", "clock/tools").json()["tools"]]
    r = rest(gw, "POST", "clock/call_tool", json={"name": "get_current_time", "arguments": {"timezone": "UTC"}})
    assert r.status_code == 200 and "UTC" in r.json()["content"][0]["text"]
    assert rest(gw, "GET", "clock/prompts").json() == {"prompts": []}


def test_rest_reuses_one_upstream_session_per_token(gw):
    other = gw.cli_json("admin", "token", "--org", "default", "--subject", "rest-other")["token"]

    def upstream_sid(token: str = "default") -> str:
        r = rest(gw, "POST", "probe/call_tool", token=token, json={"name": "session_id"})
        assert r.status_code == 200, r.text
        return r.json()["content"][0]["text"]

    first = upstream_sid()
    assert first
    assert upstream_sid() == first
    # Another token gets its own upstream session (what a server keeps per client is not shared), and keeps it.
    theirs = upstream_sid(other)
    assert theirs and theirs != first
    assert upstream_sid(other) == theirs
    assert upstream_sid() == first

    # Concurrent calls share it too.
    async def many() -> set[str]:
        async with httpx.AsyncClient(headers=auth(gw.token), timeout=60) as client:
            async def one() -> str:
                r = await client.post(f"{gw.url}/servers/probe/call_tool", json={"name": "session_id"})
                return r.json()["content"][0]["text"]
            return set(await gather(*(one() for _ in range(20))))

    assert anyio.run(many) == {first}

    # When the upstream drops the session (as its idle timeout would), the next call opens a new one.
    r = httpx.delete(gw.instance("probe")["url"], headers={"Mcp-Session-Id": first, "Accept": ACCEPT,
                                                                   "MCP-Protocol-Version": "2025-11-25"})
    assert r.status_code in (200, 204), r.text
    second = upstream_sid()
    assert second and second != first
    assert upstream_sid() == second


def test_rest_bad_bodies_and_auth(gw):
    cases = [
        ("call_tool", b"{not json", "JSON object"),
        ("call_tool", json.dumps({"arguments": {}}).encode(), "name"),
        ("call_tool", json.dumps({"name": "fail", "arguments": "x"}).encode(), "arguments"),
        ("call_tool", json.dumps({"name": "fail", "args": {}}).encode(), "args"),
        ("call_tool", json.dumps(["fail"]).encode(), "body"),
        ("read_resource", json.dumps({}).encode(), "uri"),
        ("read_resource", json.dumps({"uri": 5}).encode(), "uri"),
    ]
    for op, body, mentions in cases:
        r = rest(gw, "POST", f"probe/{op}", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (op, body, r.text)
        assert r.json()["error"] == "invalid_request" and mentions in r.json()["message"], r.text
        assert "for example" in r.json()["hint"]
    r = rest(gw, "POST", "probe/call_tool", content=b"x" * (MAX_MESSAGE + 1))
    assert r.status_code == 413 and "gateway.max_message_bytes" in r.json()["message"]

    for method, path in (("GET", "probe/tools"), ("POST", "probe/call_tool"), ("POST", "probe/read_resource"),
                         ("GET", "probe/prompts")):
        r = rest(gw, method, path, token=None, json={"name": "session_id"})
        assert r.status_code == 401, (path, r.text)
    r = rest(gw, "GET", "nope/tools")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


async def gather(*aws):
    results: list = [None] * len(aws)

    async def run(i, aw):
        results[i] = await aw

    async with anyio.create_task_group() as tg:
        for i, aw in enumerate(aws):
            tg.start_soon(run, i, aw)
    return results

