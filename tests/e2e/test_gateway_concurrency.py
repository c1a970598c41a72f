"""Many concurrent MCP sessions through the gateway to one stdio deployment: each gets only its own traffic."""

from __future__ import annotations

import contextlib
import json
import sys
import uuid
from dataclasses import dataclass, field

import anyio
import pytest

from tests.conftest import ROOT, PlatformProcess

pytestmark = [pytest.mark.e2e]

MARKER_SERVER = ROOT / "tests" / "servers" / "marker_server.py"
SESSIONS = 50
CALLS = 2  # echo calls per session


def deploy_marker(p: PlatformProcess, name: str, mode: str | None = None, *extra: str) -> dict:
    """Deploy tests/servers/marker_server.py as a stdio server behind the adapter."""
    args = ["deploy", "server", name, "--command", sys.executable, "--arg", str(MARKER_SERVER), *extra]
    if mode:
        args += ["--session-mode", mode]
    return p.cli_json(*args)


@contextlib.contextmanager
def module_platform(tmp_path_factory, shared_envs, extra_config: str = ""):
    p = PlatformProcess(tmp_path_factory.mktemp("gw"), shared_envs, extra_config=extra_config)
    p.start()
    try:
        yield p
    finally:
        p.stop()


@contextlib.asynccontextmanager
async def open_session(url: str, token: str | None, *, on_log=None, read_timeout: float = 60.0):
    """A real SDK client session (initialize handshake, so the gateway hands out an Mcp-Session-Id).

    Yields (client, ids): ``ids`` collects every Mcp-Session-Id the gateway answered with."""
    import httpx2
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client

    ids: list[str] = []

    async def note(response) -> None:
        if sid := response.headers.get("mcp-session-id"):
            ids.append(sid)

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=read_timeout),
                                  event_hooks={"response": [note]}) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="legacy", logging_callback=on_log,
                          read_timeout_seconds=read_timeout) as client:
            yield client, ids


def text_of(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


@dataclass
class Seen:
    marker: str
    session_ids: set[str] = field(default_factory=set)
    results: list[dict] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    progress: list[str] = field(default_factory=list)
    error: str | None = None


async def run_sessions(url: str, token: str, count: int, want_logs: bool) -> list[Seen]:
    """Open ``count`` sessions, let them all initialize, then have each call echo CALLS times at once."""
    seen = [Seen(marker=f"s{i:02d}-{uuid.uuid4().hex[:8]}") for i in range(count)]
    ready, go = [0], anyio.Event()

    async def one(s: Seen) -> None:
        async def on_log(params) -> None:
            s.logs.append(params.data)

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            s.progress.append(message)

        try:
            async with open_session(url, token, on_log=on_log) as (client, ids):
                ready[0] += 1
                if ready[0] == count:
                    go.set()
                with anyio.fail_after(120):
                    await go.wait()
                for _ in range(CALLS):
                    result = await client.call_tool("echo", {"marker": s.marker}, progress_callback=on_progress)
                    assert not result.is_error, text_of(result)
                    s.results.append(json.loads(text_of(result)))
                # The SDK runs notification callbacks as tasks, and log messages are not tied to a request (they
                # may come on the GET stream): they can land after the result. Wait for them (a deadline only).
                with anyio.move_on_after(15):
                    while len(s.progress) < 2 * CALLS or (want_logs and len(s.logs) < CALLS):
                        await anyio.sleep(0.05)
                s.session_ids.update(ids)
        except Exception as exc:  # noqa: BLE001 - report every session's failure, not just the first
            s.error = f"{type(exc).__name__}: {exc}"
            go.set()  # don't leave the others waiting for a session that will never be ready

    with anyio.fail_after(150):
        async with anyio.create_task_group() as tg:
            for s in seen:
                tg.start_soon(one, s)
    return seen


def check_own_traffic(seen: list[Seen], *, want_logs: bool) -> None:
    errors = {s.marker: s.error for s in seen if s.error}
    assert not errors, errors
    for s in seen:
        assert [r["marker"] for r in s.results] == [s.marker] * CALLS, s
        assert s.progress == [f"progress:{s.marker}"] * (2 * CALLS), s
        if want_logs:
            assert s.logs == [f"log:{s.marker}"] * CALLS, s
        else:  # the child's logs cannot be attributed in shared mode: never another session's, at least
            assert set(s.logs) <= {f"log:{s.marker}"}, s
        assert len(s.session_ids) == 1, s  # one id, kept for the whole session
    assert len({sid for s in seen for sid in s.session_ids}) == len(seen)


@pytest.fixture(scope="module")
def platform_m(tmp_path_factory, shared_envs):
    with module_platform(tmp_path_factory, shared_envs) as p:
        yield p


def test_50_isolated_sessions_each_get_only_their_own_traffic(platform_m):
    endpoint = deploy_marker(platform_m, "iso", "isolated")["endpoint"]
    seen = anyio.run(run_sessions, endpoint, platform_m.token, SESSIONS, True)
    check_own_traffic(seen, want_logs=True)
    pids = [{r["pid"] for r in s.results} for s in seen]
    assert all(len(p) == 1 for p in pids), pids  # a session keeps its child ...
    assert len(set().union(*pids)) == SESSIONS  # ... and no two sessions share one


def test_50_shared_sessions_each_get_only_their_own_traffic(platform_m):
    endpoint = deploy_marker(platform_m, "shared", "shared")["endpoint"]
    seen = anyio.run(run_sessions, endpoint, platform_m.token, SESSIONS, False)
    check_own_traffic(seen, want_logs=False)
    pids = {r["pid"] for s in seen for r in s.results}
    assert len(pids) == 1, pids  # one child served them all
