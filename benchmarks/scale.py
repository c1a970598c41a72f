"""Scale: many idle MCP sessions on the gateway, and many deployments on one platform.

Idle sessions. One platform (process builder) with examples/hello deployed twice, as ``idle-gw`` and
``idle-direct``, so each side has an app process of its own. N sessions are opened the way a Streamable HTTP
client opens them, with raw HTTP (httpx2; the SDK's ``Client`` costs far more per session on the client than the
servers spend): ``initialize`` (protocol 2025-11-25, the handshake era: the server keeps a session) and then
``notifications/initialized`` on the returned ``Mcp-Session-Id``, 16 sessions being opened at a time. They are
then held, idle. Through the gateway (``/servers/idle-gw/mcp``, bearer token) the growth of the platform process
alone is ours (its app is counted separately: the gateway opens one upstream session per client session); straight
on ``idle-direct``'s instance, the app's own growth per session is the baseline, so the ratio says what a gateway
session costs next to what the MCP server's own session costs. Memory is the process's RSS (and PSS) from /proc,
before and after (with a 2 s settle), divided by N. A second step then opens the standing GET stream (SSE) on every
session, as the mcp SDK client does after initialize, and measures again: that holds a connection per session
(through the gateway, two: client to gateway and gateway to app). With all of them open, one ``tools/call`` is
sent on a session of each side, to check that the gateway still serves.

The gateway's session limits are raised for this (``gateway.max_sessions_per_token`` is 100 by default and
``max_sessions_per_deployment`` 1,000); the idle timeout (30 min) is left as it is.

Deployments. A second platform, fresh: examples/hello deployed under M names (``hello-000`` ...), a few CLI
processes at a time (they share one venv, by requirements hash, and one package, by sha256). Ours is the platform
process alone with M deployments (RSS; the apps are its children but are not counted), the baseline the same
process with the first deployment only. Listing times ``mcp-agent list --json`` (the CLI end to end, a new process
each time) and ``GET /api/v1/deployments`` (one HTTP request, on a kept-alive connection), with M deployments
against with 1.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio

from .common import ROOT, TOOLS, Context, Row, Table, copy_app, instance, percentile

HELLO = ROOT / "examples" / "hello"
ENVS = TOOLS / "envs"  # the process builder's venv cache, shared between runs
PROTOCOL = "2025-11-25"
ACCEPT = "application/json, text/event-stream"
OPEN_AT_ONCE = 16
MB = 1e6


def mem(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes of the one process ``pid``, its children not included."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1]) * 1024
    return rss, pss


def _deploy(p, src: Path, name: str) -> dict:
    return json.loads(p.cli("deploy", "app", str(src), "--name", name, "--json", check=True).stdout)


# -- idle sessions --------------------------------------------------------------------------------------------------


def _rpc_result(resp) -> dict:
    """The JSON-RPC answer of a POST, whether it came as JSON or as an SSE stream of one event."""
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        for line in resp.text.splitlines():
            if line.startswith("data:"):
                return json.loads(line[5:])
        raise AssertionError(f"no data in the SSE answer: {resp.text[:200]!r}")
    return resp.json()


class Sessions:
    """N Streamable HTTP sessions opened with raw requests on one URL."""

    def __init__(self, url: str, token: str | None) -> None:
        import httpx2

        self.url = url
        headers = {"Accept": ACCEPT, **({"Authorization": f"Bearer {token}"} if token else {})}
        self.http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=60.0),
                                       limits=httpx2.Limits(max_connections=None, max_keepalive_connections=64))
        self.ids: list[str] = []
        self.streams: list = []
        self.errors: list[str] = []
        self.open_seconds: list[float] = []

    def _headers(self, sid: str) -> dict:
        return {"Mcp-Session-Id": sid, "MCP-Protocol-Version": PROTOCOL}

    async def _open_one(self, i: int) -> None:
        t0 = time.perf_counter()
        try:
            body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": f"bench-{i}", "version": "1"}}}
            resp = await self.http.post(self.url, json=body)
            sid = resp.headers.get("mcp-session-id")
            if resp.status_code != 200 or not sid or "result" not in _rpc_result(resp):
                raise AssertionError(f"initialize: HTTP {resp.status_code} {resp.text[:300]}")
            note = await self.http.post(self.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                                        headers=self._headers(sid))
            if note.status_code != 202:
                raise AssertionError(f"notifications/initialized: HTTP {note.status_code} {note.text[:300]}")
            self.ids.append(sid)
            self.open_seconds.append(time.perf_counter() - t0)
        except Exception as exc:  # counted: the table reports errors
            self.errors.append(f"{type(exc).__name__}: {exc}")

    async def open(self, n: int) -> None:
        limit = anyio.Semaphore(OPEN_AT_ONCE)

        async def one(i: int) -> None:
            async with limit:
                await self._open_one(i)

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)

    async def open_streams(self) -> None:
        """The standing GET stream on every session, as the SDK client opens it; kept open until close()."""
        limit = anyio.Semaphore(OPEN_AT_ONCE)

        async def one(sid: str) -> None:
            async with limit:
                try:
                    request = self.http.build_request("GET", self.url,
                                                      headers={**self._headers(sid), "Accept": "text/event-stream"})
                    resp = await self.http.send(request, stream=True)
                    if resp.status_code != 200:
                        await resp.aread()
                        raise AssertionError(f"GET stream: HTTP {resp.status_code} {resp.text[:300]}")
                    self.streams.append(resp)
                except Exception as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")

        async with anyio.create_task_group() as tg:
            for sid in self.ids:
                tg.start_soon(one, sid)

    async def probe(self) -> str | None:
        """One tools/call on the first session; None if it was answered, else what went wrong."""
        body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "greet",
                                                                              "arguments": {"name": "probe"}}}
        try:
            with anyio.fail_after(30):
                resp = await self.http.post(self.url, json=body, headers=self._headers(self.ids[0]))
            answer = _rpc_result(resp)
            if resp.status_code != 200 or "Hello, probe!" not in json.dumps(answer):
                return f"HTTP {resp.status_code}: {json.dumps(answer)[:300]}"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            for resp in self.streams:
                await resp.aclose()
            await self.http.aclose()


async def _settled(pids: dict[str, int]) -> dict[str, tuple[int, int]]:
    await anyio.sleep(2)
    return {k: mem(pid) for k, pid in pids.items()}


async def _idle_side(ctx: Context, label: str, url: str, token: str | None, n: int, pids: dict[str, int]) -> dict:
    """Open n sessions and then their GET streams; memory of ``pids`` before, after the sessions, after the
    streams, and what went wrong."""
    warm = Sessions(url, token)  # loads the code paths and sizes the first allocations, so they are not counted
    await warm.open(min(n, OPEN_AT_ONCE))
    await warm.open_streams()
    await warm.close()
    sessions = Sessions(url, token)
    try:
        before = await _settled(pids)
        ctx.say(f"{label}: opening {n} sessions")
        t0 = time.perf_counter()
        await sessions.open(n)
        opened = time.perf_counter() - t0
        after = await _settled(pids)
        ctx.say(f"{label}: {len(sessions.ids)} open in {opened:.1f}s; opening their GET streams")
        await sessions.open_streams()
        streams = await _settled(pids)
        probe = await sessions.probe() if sessions.ids else "no session"
        return {"before": before, "sessions": after, "streams": streams, "n": len(sessions.ids),
                "n_streams": len(sessions.streams), "errors": sessions.errors, "probe": probe, "open_s": opened,
                "open_p50": percentile(sessions.open_seconds, 50) * 1000 if sessions.open_seconds else None}
    finally:
        await sessions.close()


async def idle_sessions(ctx: Context) -> Table:
    from mcp_agent_cloud.testing import PlatformProcess

    n = ctx.size(1000, 20)
    limit = n + 100  # room for the warm-up's sessions, which the gateway may still hold for a moment
    config = f"gateway: {{max_sessions_per_token: {limit}, max_sessions_per_deployment: {limit}}}\n"
    src = copy_app(HELLO, ctx.workdir / "hello")
    p = PlatformProcess(ctx.workdir / "sessions-platform", ENVS, extra_config=config)
    p.start()
    try:
        ctx.say("sessions: deploying examples/hello as idle-gw and idle-direct")
        endpoint = _deploy(p, src, "idle-gw")["endpoint"]
        _deploy(p, src, "idle-direct")
        _, gw_app = instance(p, "idle-gw")
        direct_url, direct_app = instance(p, "idle-direct")
        pids = {"platform": p.proc.pid, "gw_app": gw_app, "direct_app": direct_app}
        direct = await _idle_side(ctx, "direct", direct_url, None, n, pids)
        gateway = await _idle_side(ctx, "gateway", endpoint, p.token, n, pids)
    finally:
        p.stop()

    def per(side: dict, who: str, step: str, kind: int) -> float | None:
        count = side["n"] if step == "sessions" else side["n_streams"]
        if not count:
            return None
        base = side["before"] if step == "sessions" else side["sessions"]
        return (side[step][who][kind] - base[who][kind]) / count / 1000  # KB

    errors = len(gateway["errors"]) + (gateway["probe"] is not None)
    base_errors = len(direct["errors"]) + (direct["probe"] is not None)
    rows = [
        Row("platform RSS growth per idle session", "KB", per(gateway, "platform", "sessions", 0),
            per(direct, "direct_app", "sessions", 0), goal=100, goal_kind="absolute",
            note="ours: the platform process alone; baseline: the app's growth per session held on it directly"),
        Row("platform PSS growth per idle session", "KB", per(gateway, "platform", "sessions", 1),
            per(direct, "direct_app", "sessions", 1)),
        Row("app RSS growth per session, behind the gateway", "KB", per(gateway, "gw_app", "sessions", 0),
            per(direct, "direct_app", "sessions", 0),
            note="the upstream session the gateway opens for each client session, on idle-gw's own app"),
        Row("+ GET stream: platform RSS growth per stream", "KB", per(gateway, "platform", "streams", 0),
            per(direct, "direct_app", "streams", 0),
            note="the standing SSE stream the mcp SDK client opens on each session, on top of the session"),
        Row("+ GET stream: app RSS growth per stream, behind the gateway", "KB", per(gateway, "gw_app", "streams", 0),
            per(direct, "direct_app", "streams", 0)),
        Row("sessions open", "", gateway["n"], direct["n"], goal=n, goal_kind="absolute", higher_is_better=True),
        Row("GET streams open", "", gateway["n_streams"], direct["n_streams"]),
        Row("time to open the sessions", "s", gateway["open_s"], direct["open_s"],
            note=f"{OPEN_AT_ONCE} at a time; p50 per session {gateway['open_p50'] or 0:.1f} ms against "
                 f"{direct['open_p50'] or 0:.1f} ms"),
        Row("errors (open, streams, the tools/call probe)", "", errors, base_errors, goal=0, goal_kind="absolute"),
    ]
    table = Table(f"{n:,} idle MCP sessions (initialize + notifications/initialized, protocol {PROTOCOL})",
                  "through the gateway", "direct on the app", rows,
                  notes=[f"platform config: gateway.max_sessions_per_token and max_sessions_per_deployment set to "
                         f"{limit} (defaults 100 and 1,000); session_idle_timeout left at 1,800 s",
                         "memory is read from /proc of each single process (not its children) after a 2 s settle; "
                         "the baseline column is the direct app's own growth, so a ratio compares a gateway session "
                         "with an MCP server session",
                         "a warm-up of 16 sessions (with streams) runs on each side before the measured ones"])
    for label, side in (("gateway", gateway), ("direct", direct)):
        if side["errors"]:
            kinds: dict[str, int] = {}
            for e in side["errors"]:
                kinds[e[:160]] = kinds.get(e[:160], 0) + 1
            table.notes.append(f"{label} errors: " + "; ".join(f"{c}× {e}" for e, c in kinds.items()))
        if side["probe"] is not None:
            table.notes.append(f"{label} tools/call probe with every stream open failed: {side['probe']}")
    return table


# -- many deployments -----------------------------------------------------------------------------------------------


def _time_cli_list(p, runs: int) -> tuple[float, int]:
    times, count = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        result = p.cli("list", "--json", check=True)
        times.append(time.perf_counter() - t0)
        count = len(json.loads(result.stdout))
    return statistics.median(times) * 1000, count


def _time_api(p, path: str, runs: int) -> float:
    import httpx

    with httpx.Client(base_url=p.url, headers={"Authorization": f"Bearer {p.token}"}, timeout=60) as http:
        http.get(path).raise_for_status()  # connect, warm
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            http.get(path).raise_for_status()
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _listing(p, cli_runs: int, api_runs: int) -> dict:
    cli_ms, count = _time_cli_list(p, cli_runs)
    return {"cli": cli_ms, "count": count, "api": _time_api(p, "/api/v1/deployments", api_runs),
            "healthz": _time_api(p, "/healthz", api_runs), "mem": mem(p.proc.pid)}


def many_deployments(ctx: Context) -> Table:
    from mcp_agent_cloud.testing import PlatformProcess

    from .common import rss_bytes

    m = ctx.size(50, 3)
    at_once = ctx.size(4, 2)
    cli_runs, api_runs = ctx.size(5, 2), ctx.size(30, 5)
    src = copy_app(HELLO, ctx.workdir / "hello")
    p = PlatformProcess(ctx.workdir / "deployments-platform", ENVS)
    p.start()
    failed: list[str] = []
    try:
        names = [f"hello-{i:03d}" for i in range(m)]
        ctx.say(f"deployments: {names[0]}, then the baseline measurements")
        _deploy(p, src, names[0])
        time.sleep(2)
        one = _listing(p, cli_runs, api_runs)
        ctx.say(f"deployments: {m - 1} more, {at_once} CLI processes at a time")

        def deploy(name: str) -> float | None:
            t0 = time.perf_counter()
            try:
                _deploy(p, src, name)
            except (AssertionError, subprocess.SubprocessError, ValueError) as exc:
                failed.append(f"{name}: {str(exc)[-300:]}")
                return None
            return time.perf_counter() - t0

        t0 = time.perf_counter()
        with ThreadPoolExecutor(at_once) as pool:
            durations = [d for d in pool.map(deploy, names[1:]) if d is not None]
        deploy_wall = time.perf_counter() - t0
        ctx.say(f"deployments: {m - 1 - len(failed)} deployed in {deploy_wall:.0f}s; measuring")
        time.sleep(3)
        many = _listing(p, cli_runs, api_runs)
        listed = p.cli_json("list")
        running = sum(1 for d in listed if d["status"] == "running")
        apps_pss = rss_bytes([p.proc.pid]) - many["mem"][1]
    finally:
        p.stop()

    rows = [
        Row(f"platform RSS with {m} deployments", "MB", many["mem"][0] / MB, one["mem"][0] / MB, goal=200,
            goal_kind="absolute", note="the platform process alone, its app processes not counted"),
        Row(f"platform PSS with {m} deployments", "MB", many["mem"][1] / MB, one["mem"][1] / MB),
        Row("mcp-agent list --json", "ms", many["cli"], one["cli"],
            note=f"median of {cli_runs}, a new CLI process each (interpreter start-up included)"),
        Row("GET /api/v1/deployments", "ms", many["api"], one["api"], note=f"median of {api_runs}"),
        Row("GET /healthz (no registry work)", "ms", many["healthz"], one["healthz"]),
        Row("deployments listed", "", many["count"], one["count"]),
        Row("deployments running", "", running, goal=m, goal_kind="absolute", higher_is_better=True),
        Row("failed deploys", "", len(failed), goal=0, goal_kind="absolute"),
        Row("deploy time per deployment (concurrent)", "s", statistics.median(durations) if durations else None,
            note=f"median CLI wall time with {at_once} at a time; {m - 1} took {deploy_wall:.0f} s in all"),
        Row("apps' PSS per deployment", "MB", apps_pss / max(1, m) / MB,
            note="the apps' process trees together (PSS), per deployment: what the platform does not count"),
    ]
    table = Table(f"{m} deployments of examples/hello on one platform (process builder)",
                  f"{m} deployments", "1 deployment", rows,
                  notes=["memory of the platform process from /proc; each listing timed on the same platform, "
                         "first with one deployment (the baseline) and then with all of them running"])
    if failed:
        table.notes.append("failed: " + " | ".join(failed[:3]))
    return table


async def run(ctx: Context) -> list[Table]:
    ENVS.mkdir(parents=True, exist_ok=True)
    tables = [await idle_sessions(ctx)]
    tables.append(await anyio.to_thread.run_sync(many_deployments, ctx))
    return tables
