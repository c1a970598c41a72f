"""Faults through the gateway: dying, hanging and noisy stdio servers, bad bodies, unknown sessions, leaked processes.

In every case the caller gets a clear error and every other session and deployment keeps working.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import threading
import uuid
from pathlib import Path

import anyio
import httpx
import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import PlatformProcess, wait_for
from tests.e2e.test_gateway_concurrency import deploy_marker, open_session, text_of

pytestmark = [pytest.mark.e2e]

REQUEST_TIMEOUT = 30  # gateway.request_timeout for this module's platform. An isolated session's initialize spawns a
# Python child within it: that took over 6 s, then over 10 s, then 20 s, on a loaded 2-core machine (-n 2, -n 3).
MAX_BYTES = 64 * 1024  # gateway.max_message_bytes
CONFIG = f"gateway: {{request_timeout: {REQUEST_TIMEOUT}, max_message_bytes: {MAX_BYTES}}}\n"
PROTOCOL = "2025-06-18"
ACCEPT = "application/json, text/event-stream"
EXITED = re.compile(r"exit|died|dead|killed|terminat|crash|gone|closed|stopped", re.I)


@pytest.fixture(scope="module")
def gw(tmp_path_factory, shared_envs):
    """One platform for the module, with small limits, and an isolated-mode marker deployment."""
    p = PlatformProcess(tmp_path_factory.mktemp("faults"), shared_envs, extra_config=CONFIG)
    p.start()
    try:
        p.endpoint = deploy_marker(p, "iso", "isolated")["endpoint"]
        yield p
    finally:
        p.stop()


# -- helpers ---------------------------------------------------------------------------------------------------------


def instance_pid(p: PlatformProcess, name: str) -> int | None:
    """The adapter's pid of the serving version, from the platform's registry."""
    db = sqlite3.connect(p.root / "data" / "registry.db")
    try:
        row = db.execute("select v.instance from versions v join deployments d on d.id = v.deployment_id "
                         "where d.name = ? and v.status = 'serving'", (name,)).fetchone()
    finally:
        db.close()
    return json.loads(row[0]).get("data", {}).get("pid") if row and row[0] else None


def proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state) for every process, zombies included."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` with its state (Z = zombie)."""
    table = proc_table()
    children: dict[int, list[int]] = {}
    for child, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(child)
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found[child] = table[child][1]
            todo.append(child)
    return found


def app_log(p: PlatformProcess, name: str) -> str:
    return "".join(f.read_text(errors="replace") for f in sorted((p.root / "data" / "deployments").glob(
        f"default.{name}/v*/app.log")))


class RawSession:
    """An MCP session driven with plain HTTP, to send what no SDK client would."""

    def __init__(self, endpoint: str, token: str) -> None:
        self.endpoint = endpoint
        self.http = httpx.Client(headers={"Authorization": f"Bearer {token}", "Accept": ACCEPT}, timeout=60)
        self.sid: str | None = None
        self.next_id = 1

    def post(self, body, *, sid: str | None = "mine", **headers) -> httpx.Response:
        sid = self.sid if sid == "mine" else sid
        h = {"Content-Type": "application/json", "MCP-Protocol-Version": PROTOCOL, **headers}
        if sid:
            h["Mcp-Session-Id"] = sid
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.http.post(self.endpoint, content=content, headers=h)

    def initialize(self) -> RawSession:
        r = self.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}, sid=None)
        assert r.status_code == 200, (r.status_code, r.text)
        assert reply(r, 0)["result"]["protocolVersion"] == PROTOCOL
        self.sid = r.headers["mcp-session-id"]
        r = self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert r.status_code == 202, (r.status_code, r.text)
        return self

    def request(self, method: str, params: dict | None = None, **kw) -> httpx.Response:
        self.next_id += 1
        body = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            body["params"] = params
        return self.post(body, **kw)

    def echo(self, marker: str) -> str:
        r = self.request("tools/call", {"name": "echo", "arguments": {"marker": marker}})
        assert r.status_code == 200, (r.status_code, r.text)
        result = reply(r, self.next_id)["result"]
        return json.loads(result["content"][0]["text"])["marker"]

    def close(self) -> None:
        if self.sid:
            self.http.delete(self.endpoint, headers={"Mcp-Session-Id": self.sid, "MCP-Protocol-Version": PROTOCOL})
        self.http.close()


def reply(r: httpx.Response, request_id) -> dict:
    """The JSON-RPC message answering ``request_id`` in a JSON or SSE response."""
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        messages = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:") and line[5:].strip()]
    else:
        messages = [r.json()]
    for m in messages:
        if m.get("id") == request_id and ("result" in m or "error" in m):
            return m
    raise AssertionError(f"no reply to {request_id} in {r.status_code} {r.text[:2000]}")


def jsonrpc_error(r: httpx.Response) -> dict:
    """The error object of a JSON-RPC error body (HTTP-level refusals must still speak JSON-RPC)."""
    assert r.headers.get("content-type", "").startswith("application/json"), (r.status_code, r.headers, r.text)
    body = r.json()
    assert body.get("jsonrpc") == "2.0" and isinstance(body.get("error"), dict), body
    assert isinstance(body["error"]["code"], int) and body["error"]["message"], body
    return body["error"]


@contextlib.contextmanager
def raw_session(endpoint: str, token: str):
    s = RawSession(endpoint, token).initialize()
    try:
        yield s
    finally:
        s.close()


async def expect_error(client, tool: str, arguments: dict, deadline: float = 45) -> MCPError:
    """Call ``tool`` and return the JSON-RPC error it must fail with (the deadline catches a hang)."""
    with anyio.fail_after(deadline):
        try:
            result = await client.call_tool(tool, arguments)
        except MCPError as exc:
            return exc
    raise AssertionError(f"{tool} answered instead of failing with a JSON-RPC error: {result}")


async def echo(client, marker: str) -> str:
    result = await client.call_tool("echo", {"marker": marker})
    assert not result.is_error, text_of(result)
    return json.loads(text_of(result))["marker"]


# -- HTTP-level faults -------------------------------------------------------------------------------------------


def test_malformed_body_is_a_parse_error_and_the_session_lives_on(gw):
    with raw_session(gw.endpoint, gw.token) as s:
        r = s.post(b'{"jsonrpc": "2.0", "id": 7, "method": ')
        assert r.status_code == 400, r.text
        error = jsonrpc_error(r)
        assert error["code"] == -32700, error
        # Valid JSON that is not JSON-RPC is refused too, not passed on as if it were a request.
        r = s.post({"hello": "world"})
        assert r.status_code == 400, r.text
        assert jsonrpc_error(r)["code"] in (-32700, -32600, -32602), r.text
        assert s.echo("after-bad-body") == "after-bad-body"


def test_oversize_body_is_413_naming_the_limit_and_the_session_lives_on(gw):
    with raw_session(gw.endpoint, gw.token) as s:
        big = "x" * (MAX_BYTES + 1)
        r = s.request("tools/call", {"name": "echo", "arguments": {"marker": big}})
        assert r.status_code == 413, (r.status_code, r.text[:500])
        error = jsonrpc_error(r)
        assert "max_message_bytes" in error["message"], error
        assert s.echo("after-big-body") == "after-big-body"


def test_unknown_ended_and_foreign_session_ids_are_404(gw):
    with raw_session(gw.endpoint, gw.token) as s:
        r = s.request("tools/list", sid="no-such-session")
        assert r.status_code == 404, (r.status_code, r.text)
        jsonrpc_error(r)

        # Another caller cannot use this session, even knowing its id.
        other = gw.cli_json("admin", "token", "--org", "default", "--subject", "someone-else")["token"]
        thief = RawSession(gw.endpoint, other)
        r = thief.request("tools/list", sid=s.sid)
        thief.http.close()
        assert r.status_code == 404, (r.status_code, r.text)
        jsonrpc_error(r)
        assert s.echo("still-mine") == "still-mine"

        ended = s.sid
        r = s.http.delete(gw.endpoint, headers={"Mcp-Session-Id": ended, "MCP-Protocol-Version": PROTOCOL})
        assert r.status_code in (200, 202, 204), (r.status_code, r.text)
        r = s.request("tools/list", sid=ended)
        assert r.status_code == 404, (r.status_code, r.text)
        jsonrpc_error(r)
        s.sid = None


def test_sdk_client_gets_an_error_for_an_ended_session_and_a_new_one_works(gw):
    async def main() -> None:
        async with open_session(gw.endpoint, gw.token) as (client, ids):
            assert await echo(client, "before") == "before"
            # End the session behind the client's back: its next request must get the spec's 404, which the SDK
            # reports as a terminated session (not a hang, not a 400).
            r = httpx.delete(gw.endpoint, headers={"Authorization": f"Bearer {gw.token}", "Mcp-Session-Id": ids[0],
                                                   "MCP-Protocol-Version": PROTOCOL})
            assert r.status_code in (200, 202, 204), r.text
            error = await expect_error(client, "echo", {"marker": "after"})
            assert "terminated" in error.message.lower() or "session" in error.message.lower(), error.message
        async with open_session(gw.endpoint, gw.token) as (client, ids):
            assert await echo(client, "again") == "again"

    anyio.run(main)


# -- stdio children that die, hang or misbehave -----------------------------------------------------------------------


def test_child_killed_mid_request_fails_that_call_only(gw):
    label = f"kill-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        async with open_session(gw.endpoint, gw.token) as (victim, _), \
                open_session(gw.endpoint, gw.token) as (bystander, _):
            child = int(text_of(await victim.call_tool("pid", {})))
            assert child in descendants(instance_pid(gw, "iso"))
            outcome: dict = {}

            async def blocked() -> None:
                outcome["error"] = await expect_error(victim, "block", {"label": label})

            async with anyio.create_task_group() as tg:
                tg.start_soon(blocked)
                with anyio.fail_after(REQUEST_TIMEOUT - 1):  # kill it before the gateway's timeout could answer
                    while f"blocking:{label}:{child}" not in app_log(gw, "iso"):
                        await anyio.sleep(0.05)
                os.kill(child, signal.SIGKILL)
            error = outcome["error"]
            assert "request_timeout" not in error.message, error.message  # the death was reported, not a timeout
            assert EXITED.search(error.message) and "SIGKILL" in error.message, error.message
            assert await echo(bystander, "bystander") == "bystander"
            # Its session ended with its child: the next request is told so, and does not start a new child silently.
            again = await expect_error(victim, "echo", {"marker": "victim-again"})
            assert "session" in again.message.lower(), again.message
        async with open_session(gw.endpoint, gw.token) as (fresh, _):
            assert await echo(fresh, "fresh") == "fresh"

    anyio.run(main)


def test_shared_child_killed_mid_request_fails_the_call_and_the_deployment_comes_back(gw):
    endpoint = deploy_marker(gw, "shr", "shared")["endpoint"]
    label = f"kill-shared-{uuid.uuid4().hex[:8]}"

    async def main() -> int:
        async with open_session(endpoint, gw.token) as (victim, _), open_session(endpoint, gw.token) as (other, _):
            child = int(text_of(await victim.call_tool("pid", {})))
            assert int(text_of(await other.call_tool("pid", {}))) == child  # one child for both
            outcome: dict = {}

            async def blocked() -> None:
                outcome["error"] = await expect_error(victim, "block", {"label": label})

            async with anyio.create_task_group() as tg:
                tg.start_soon(blocked)
                with anyio.fail_after(REQUEST_TIMEOUT - 1):
                    while f"blocking:{label}:{child}" not in app_log(gw, "shr"):
                        await anyio.sleep(0.05)
                os.kill(child, signal.SIGKILL)
            error = outcome["error"]
            assert "request_timeout" not in error.message, error.message
            assert EXITED.search(error.message), error.message
        return child

    adapter = instance_pid(gw, "shr")
    child = anyio.run(main)
    # The shared child is the deployment: it is restarted, and new sessions get a new child.
    wait_for(lambda: instance_pid(gw, "shr") not in (None, adapter) and
             gw.cli_json("status", "shr")["status"] == "running", timeout=60, what="shr to be restarted")

    async def after() -> None:
        async with open_session(endpoint, gw.token) as (fresh, _):
            assert int(text_of(await fresh.call_tool("pid", {}))) != child
            assert await echo(fresh, "shared-again") == "shared-again"

    anyio.run(after)


def test_child_exiting_mid_request_fails_that_call_only(gw):
    async def main() -> None:
        async with open_session(gw.endpoint, gw.token) as (victim, _), \
                open_session(gw.endpoint, gw.token) as (bystander, _):
            assert await echo(victim, "first") == "first"
            error = await expect_error(victim, "die", {"code": 7})
            assert EXITED.search(error.message) and re.search(r"\b7\b", error.message), error.message
            assert await echo(bystander, "bystander") == "bystander"
        assert "dying with 7" in app_log(gw, "iso")

    anyio.run(main)


def test_garbage_on_stdout_is_survived_and_stderr_reaches_the_logs(gw):
    token = f"stderr-line-{uuid.uuid4().hex}"

    async def main() -> None:
        async with open_session(gw.endpoint, gw.token) as (client, _):
            result = await client.call_tool("garbage", {"text": token})
            assert not result.is_error and text_of(result) == f"after garbage:{token}"
            assert await echo(client, "after-garbage") == "after-garbage"

    anyio.run(main)
    wait_for(lambda: token in gw.cli("logs", "iso", "--tail", "500", check=True).stdout, timeout=30,
             what="the child's stderr in `mcp-agent logs iso`")


def test_hanging_tool_hits_the_request_timeout_and_others_keep_working(gw):
    async def main() -> None:
        async with open_session(gw.endpoint, gw.token) as (hung, _), \
                open_session(gw.endpoint, gw.token) as (other, _):
            outcome: dict = {}

            async def blocked() -> None:
                outcome["error"] = await expect_error(hung, "block", {"label": "hang"}, deadline=REQUEST_TIMEOUT + 30)

            async with anyio.create_task_group() as tg:
                tg.start_soon(blocked)
                await anyio.sleep(0.5)
                assert await echo(other, "while-hung") == "while-hung"
            error = outcome["error"]
            assert "request_timeout" in error.message, error.message  # names the limit and its config key
            assert await echo(other, "after-timeout") == "after-timeout"
            assert await echo(hung, "hung-session-again") == "hung-session-again"

    anyio.run(main)


def test_timed_out_request_on_a_shared_child_is_cancelled_there_too(gw):
    """The gateway cancels upstream what it gave up on. Otherwise the shared child's request stays in flight at the
    adapter for good, and with requests of two sessions in flight the adapter cannot tell whose log lines the
    child sends: another client's would go to stderr instead of to it."""
    endpoint = deploy_marker(gw, "shrto", "shared")["endpoint"]
    logs: list = []

    async def on_log(params) -> None:
        logs.append(params.data)

    async def main() -> None:
        async with open_session(endpoint, gw.token) as (hung, _),                 open_session(endpoint, gw.token, on_log=on_log) as (other, _):
            error = await expect_error(hung, "block", {"label": "shared-timeout"}, deadline=REQUEST_TIMEOUT + 30)
            assert "request_timeout" in error.message, error.message
            assert await echo(other, "routed") == "routed"
            with anyio.fail_after(30):  # the SDK runs logging callbacks as tasks
                while "log:routed" not in logs:
                    await anyio.sleep(0.05)

    anyio.run(main)


def test_instance_crash_mid_stream_ends_the_answer_with_a_jsonrpc_error(gw):
    """An instance that dies while its answer streams (the adapter killed): the client still gets a complete
    response whose last event is a JSON-RPC error for its request, not a broken chunked body."""
    endpoint = deploy_marker(gw, "crashy", "isolated")["endpoint"]
    label = f"crash-{uuid.uuid4().hex[:8]}"
    with raw_session(endpoint, gw.token) as s:
        adapter = instance_pid(gw, "crashy")
        outcome: dict = {}

        def call() -> None:
            try:
                outcome["response"] = s.request("tools/call", {"name": "block", "arguments": {"label": label}})
            except Exception as exc:  # e.g. httpx.RemoteProtocolError: the body broke off
                outcome["exception"] = exc

        caller = threading.Thread(target=call)
        caller.start()
        wait_for(lambda: f"blocking:{label}" in app_log(gw, "crashy"), timeout=REQUEST_TIMEOUT - 1, interval=0.05,
                 what="the call to run in the child")
        os.kill(adapter, signal.SIGKILL)
        caller.join(60)
        assert "response" in outcome, outcome
        r = outcome["response"]
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
        error = reply(r, s.next_id)["error"]
        assert error["code"] == -32012 and "default.crashy" in error["message"], error
        s.sid = None  # its instance is gone


def test_a_crashing_deployment_does_not_disturb_another(gw):
    other = deploy_marker(gw, "other", "isolated")["endpoint"]
    with raw_session(gw.endpoint, gw.token) as old, raw_session(other, gw.token) as neighbour:
        assert old.echo("before-crash") == "before-crash"
        r = old.request("tools/call", {"name": "pid", "arguments": {}})
        child = int(reply(r, old.next_id)["result"]["content"][0]["text"])
        adapter = instance_pid(gw, "iso")
        os.kill(adapter, signal.SIGKILL)
        assert neighbour.echo("during-crash") == "during-crash"
        wait_for(lambda: instance_pid(gw, "iso") not in (None, adapter) and
                 gw.cli_json("status", "iso")["status"] == "running", timeout=60, what="iso to be restarted")
        assert neighbour.echo("after-restart") == "after-restart"
        # The session lived in the killed instance: its id is now unknown, so the client must re-initialize.
        r = old.request("tools/list")
        assert r.status_code == 404, (r.status_code, r.text)
        jsonrpc_error(r)
        old.sid = None
    # The killed adapter could not stop its child; the child must still go (its stdin closed), not linger as an orphan.
    wait_for(lambda: child not in proc_table(), timeout=30, what=f"the killed adapter's child {child} to exit")
    with raw_session(gw.endpoint, gw.token) as again:
        assert again.echo("iso-again") == "iso-again"


# -- process accounting ------------------------------------------------------------------------------------------------


def test_isolated_children_are_reaped_when_their_sessions_end(gw):
    sessions = 5
    adapter = instance_pid(gw, "iso")
    before = set(descendants(adapter))

    async def main() -> list[int]:
        async with contextlib.AsyncExitStack() as stack:
            clients = [(await stack.enter_async_context(open_session(gw.endpoint, gw.token)))[0]
                       for _ in range(sessions)]
            pids = [int(text_of(await c.call_tool("pid", {}))) for c in clients]
            during = descendants(adapter)
            assert len(set(pids)) == sessions, pids
            assert set(pids) <= set(during), (pids, during)
            assert len(set(during) - before) == sessions, (before, during)
        return pids  # leaving the stack ended every session (DELETE)

    pids = anyio.run(main)

    def reaped() -> bool:
        table = proc_table()
        left = descendants(adapter)
        return not (set(pids) & set(table)) and not (set(left) - before) and "Z" not in left.values()

    wait_for(reaped, timeout=30, what=f"the children {pids} of ended sessions to be reaped")
    assert instance_pid(gw, "iso") == adapter  # the adapter itself stayed


def test_abandoned_session_is_ended_by_the_idle_timeout(tmp_path, shared_envs):
    p = PlatformProcess(tmp_path, shared_envs, extra_config="gateway: {session_idle_timeout: 2}\n")
    p.start()
    try:
        endpoint = deploy_marker(p, "idle", "isolated")["endpoint"]
        s = RawSession(endpoint, p.token).initialize()
        r = s.request("tools/call", {"name": "pid", "arguments": {}})
        child = int(reply(r, s.next_id)["result"]["content"][0]["text"])
        adapter = instance_pid(p, "idle")
        assert child in descendants(adapter)
        s.http.close()  # walks away without a DELETE
        wait_for(lambda: child not in proc_table(), timeout=60, what="the idle session's child to be reaped")
        assert "Z" not in descendants(adapter).values()
        s2 = RawSession(endpoint, p.token)
        r = s2.request("tools/list", sid=s.sid)
        s2.http.close()
        assert r.status_code == 404, (r.status_code, r.text)
    finally:
        p.stop()
