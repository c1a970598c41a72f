"""The stdio adapter (``python -m mcp_agent_cloud.runtime.adapter``) against its peers, in one run: the same client,
the same trivial stdio server, on loopback.

The stdio server is a low-level mcp SDK ``Server`` with one ``echo`` tool (benchmarks write it to the scratch dir
and run it with the project's Python), so the server is not what is measured. Contenders, each serving it over
Streamable HTTP on 127.0.0.1:

- **ours, isolated**: the adapter with ``--session-mode isolated`` (one stdio child per client session);
- **ours, shared**: the adapter with ``--session-mode shared`` (one stdio child for all sessions);
- **mcp-proxy** (PyPI, sparfenyuk's), stateful (its default) and ``--stateless``; one stdio child, ``--log-level
  WARNING`` so it does not write an access log line per request (the adapter does not either);
- **supergateway** (npm) with ``--outputTransport streamableHttp --stateful`` (one stdio child per session),
  ``--logLevel none`` (at ``info`` it logs every message);
- **direct**, for context: the same server run natively over Streamable HTTP (the SDK's stateful session manager
  under uvicorn), no stdio hop at all.

The baselines are installed outside the project's venv (mcp-proxy pins mcp 1.x) under .tools/bench/, at pinned
versions, by this module on first use.

Measured per contender, with the mcp SDK 2.x ``Client`` over Streamable HTTP in ``mode="legacy"`` (the initialize
handshake: every contender is session-based), calling ``echo`` with a short text:

- **latency**: one session, calls one after another; p50 and p99 of the call's wall time as the client sees it;
- **calls/s**: ``SESSIONS`` sessions calling concurrently, calls / wall time;
- **CPU per call**: user + system CPU of the contender's whole process tree (the proxy and its stdio children,
  reaped ones included) from /proc, its delta over the concurrent load divided by the calls made. Sessions are
  opened (and, where a child per session, its child started) before the load, so spawning is not in the figure;
- **memory per held session**: the growth of the anonymous PSS (Pss_Anon + Pss_Shmem from smaps_rollup) of the
  contender's process tree with N sessions open and initialized (raw ``initialize`` + ``notifications/initialized``
  POSTs keeping the Mcp-Session-Id), divided by N; 200 sessions on a contender with one stdio child, 50 where each
  session is a stdio child (a whole Python process each). The file-backed part of PSS is left out of the figure
  (noted apart): it is split with every process mapping the same files, so it drifts with the rest of the machine.
  Measured first, on a fresh contender warmed up by one session; the sessions are then ended with DELETE;
- **TCP connections closed per call** (context): new TIME_WAIT sockets of the contender's port over the concurrent
  load. An SSE answer is closed by the SDK client after its last event, so the connection is not reused.

Both load phases keep every contender's sessions open throughout and run the calls in slices, contender after
contender in a rotated order, the figures pooling the slices: a burst of background load on a shared machine falls
on all of them alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from .common import TOOLS, Context, Load, Row, Table, cpu_seconds, drive, drive_sessions, tree

MCP_PROXY_VERSION = "0.13.0"  # PyPI mcp-proxy (sparfenyuk/mcp-proxy)
SUPERGATEWAY_VERSION = "4.0.0"  # npm supergateway (supercorp-ai/supergateway)
PROXY_VENV = TOOLS / "mcp-proxy-venv"
NODE_PREFIX = TOOLS / "node"
STAMP = TOOLS / "stdio-baselines.json"
SESSIONS = 8  # concurrent sessions for calls/s
SERVER_PY = sys.executable  # the project's Python runs the stdio server for every contender

ECHO_SERVER = '''\
"""A trivial MCP server with one tool, echo: stdio by default, Streamable HTTP with --http PORT."""
import sys

from mcp import types
from mcp.server.lowlevel.server import Server

TOOLS = [types.Tool(name="echo", description="Returns its text.",
                    input_schema={"type": "object", "properties": {"text": {"type": "string"}},
                                  "required": ["text"]})]


async def list_tools(ctx, params):
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx, params):
    text = str((params.arguments or {}).get("text", ""))
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)])


server = Server("echo", version="1", on_list_tools=list_tools, on_call_tool=call_tool)

if len(sys.argv) > 2 and sys.argv[1] == "--http":
    import uvicorn

    uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
else:
    import anyio
    from mcp.server.stdio import stdio_server

    async def main():
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(main)
'''


# -- the baselines -------------------------------------------------------------------------------------------------


def _supergateway_js() -> Path:
    return NODE_PREFIX / "node_modules" / "supergateway" / "dist" / "index.js"


def _mcp_proxy_bin() -> Path:
    return PROXY_VENV / "bin" / "mcp-proxy"


def install(ctx: Context) -> None:
    """mcp-proxy in a venv of its own and supergateway with npm, under .tools/bench/, at the pinned versions.
    Idempotent: a stamp file records what was installed."""
    want = {"mcp-proxy": MCP_PROXY_VERSION, "supergateway": SUPERGATEWAY_VERSION}
    try:
        have = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        have = {}
    if have == want and _mcp_proxy_bin().exists() and _supergateway_js().exists():
        return
    TOOLS.mkdir(parents=True, exist_ok=True)
    STAMP.unlink(missing_ok=True)
    if have.get("mcp-proxy") != MCP_PROXY_VERSION or not _mcp_proxy_bin().exists():
        ctx.say(f"installing mcp-proxy=={MCP_PROXY_VERSION} into {PROXY_VENV.relative_to(TOOLS.parent.parent)}")
        python = shutil.which("python3") or sys.executable
        if not (PROXY_VENV / "bin" / "python").exists():
            subprocess.run([python, "-m", "venv", str(PROXY_VENV)], check=True)
        subprocess.run([str(PROXY_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", f"mcp-proxy=={MCP_PROXY_VERSION}"], check=True)
    if have.get("supergateway") != SUPERGATEWAY_VERSION or not _supergateway_js().exists():
        if shutil.which("npm") is None:
            raise RuntimeError("npm is needed to install the supergateway baseline (apt-get install nodejs npm)")
        ctx.say(f"installing supergateway@{SUPERGATEWAY_VERSION} into {NODE_PREFIX.relative_to(TOOLS.parent.parent)}")
        subprocess.run(["npm", "install", "--prefix", str(NODE_PREFIX), "--no-audit", "--no-fund", "--save-exact",
                        "--loglevel", "error", f"supergateway@{SUPERGATEWAY_VERSION}"], check=True,
                       stdout=subprocess.DEVNULL)
    STAMP.write_text(json.dumps(want))


# -- contenders ----------------------------------------------------------------------------------------------------


@dataclass
class Contender:
    key: str
    label: str
    argv: list[str]
    child_per_session: bool = False
    sessions: bool = True  # False: stateless, no session to hold
    port: int = 0
    proc: subprocess.Popen | None = None
    log: Path | None = None
    # results
    latency: list[float] = field(default_factory=list)  # seconds, one session
    load_calls: int = 0
    load_seconds: float = 0.0
    cpu: float = 0.0  # CPU seconds over the concurrent load
    errors: int = 0
    closed: int = 0  # TCP connections closed (TIME_WAIT) during the concurrent load
    held: int = 0
    per_session: float | None = None  # bytes of anonymous PSS per held session
    file_per_session: float | None = None  # bytes of file-backed PSS per held session

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self, workdir: Path) -> None:
        self.log = workdir / f"{self.key}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log, "wb") as stderr:
            self.proc = subprocess.Popen(self.argv, cwd=workdir, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=stderr, env=env, start_new_session=True)

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:] if self.log else ""
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the contender's group, then SIGKILL to whatever of its tree is left (stdio children run in
        sessions of their own, so the group alone would not reach them)."""
        if self.proc is None:
            return
        pids = tree(self.proc.pid) if self.proc.poll() is None else []
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        deadline = time.monotonic() + 3
        for pid in pids[1:]:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def time_wait(port: int) -> set[tuple[str, str]]:
    """The loopback TCP connections of ``port`` in TIME_WAIT (either side closed first): a connection closed in
    the last minute each. New ones over a load are the connections it opened and closed."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[3] == "06" and port in (int(parts[1].rsplit(":", 1)[1], 16), int(parts[2].rsplit(":", 1)[1], 16)):
            out.add((parts[1], parts[2]))
    return out


def contenders(server: Path) -> list[Contender]:
    from mcp_agent_cloud.runtime.ports import free_port

    stdio = [SERVER_PY, str(server)]
    out = [
        Contender("isolated", "ours, isolated", [sys.executable, "-m", "mcp_agent_cloud.runtime.adapter",
                                                 "--session-mode", "isolated", "--port", "{port}", "--", *stdio],
                  child_per_session=True),
        Contender("shared", "ours, shared", [sys.executable, "-m", "mcp_agent_cloud.runtime.adapter",
                                             "--session-mode", "shared", "--port", "{port}", "--", *stdio]),
        Contender("mcp-proxy", "mcp-proxy (stateful)", [str(_mcp_proxy_bin()), "--host", "127.0.0.1", "--port",
                                                       "{port}", "--log-level", "WARNING", "--", *stdio]),
        Contender("mcp-proxy-stateless", "mcp-proxy --stateless",
                  [str(_mcp_proxy_bin()), "--host", "127.0.0.1", "--port", "{port}", "--log-level", "WARNING",
                   "--stateless", "--", *stdio], sessions=False),
        Contender("supergateway", "supergateway --stateful",
                  ["node", str(_supergateway_js()), "--stdio", shlex.join(stdio), "--outputTransport",
                   "streamableHttp", "--stateful", "--port", "{port}", "--logLevel", "none"],
                  child_per_session=True),
        Contender("direct", "direct (no stdio)", [SERVER_PY, str(server), "--http", "{port}"]),
    ]
    for c in out:
        c.port = free_port()
        c.argv = [a.replace("{port}", str(c.port)) for a in c.argv]
    return out


# -- clients -------------------------------------------------------------------------------------------------------


async def _echo(client, text: str = "hello") -> None:
    result = await client.call_tool("echo", {"text": text})
    if result.is_error or getattr(result.content[0], "text", None) != text:
        raise RuntimeError(f"echo answered {result!r}")


@contextlib.asynccontextmanager
async def clients(url: str, n: int):
    """``n`` connected SDK clients (legacy handshake), each warmed up with a few calls."""
    from mcp_agent_cloud.client import mcp_client

    async with contextlib.AsyncExitStack() as stack:
        out = []
        for _ in range(n):
            out.append(await stack.enter_async_context(mcp_client(url, mode="legacy", read_timeout=60.0)))
        for client in out:
            for _ in range(3):
                await _echo(client)
        yield out


def _sse_or_json(resp) -> dict:
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        for line in resp.text.splitlines():
            if line.startswith("data:") and line[5:].strip():
                return json.loads(line[5:])
        raise RuntimeError(f"no data in the SSE answer: {resp.text[:200]!r}")
    return resp.json()


HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def open_raw_session(http, url: str) -> str:
    """One session opened by hand: initialize, then notifications/initialized; its Mcp-Session-Id."""
    from mcp_types.version import LATEST_HANDSHAKE_VERSION

    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": LATEST_HANDSHAKE_VERSION, "capabilities": {},
                       "clientInfo": {"name": "mcpac-bench", "version": "1"}}}
    resp = await http.post(url, json=init, headers=HEADERS)
    resp.raise_for_status()
    answer = _sse_or_json(resp)
    session_id = resp.headers.get("mcp-session-id")
    if "result" not in answer or not session_id:
        raise RuntimeError(f"initialize failed: {resp.status_code} {answer}")
    headers = {**HEADERS, "Mcp-Session-Id": session_id,
               "MCP-Protocol-Version": answer["result"].get("protocolVersion", LATEST_HANDSHAKE_VERSION)}
    resp = await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    if resp.status_code not in (200, 202):
        raise RuntimeError(f"notifications/initialized answered {resp.status_code}")
    return session_id


def pss_parts(root: int) -> dict[str, int]:
    """Pss, Pss_Anon, Pss_File and Pss_Shmem (bytes) of ``root``'s process tree, from smaps_rollup."""
    total = dict.fromkeys(("Pss", "Pss_Anon", "Pss_File", "Pss_Shmem"), 0)
    for pid in tree(root):
        try:
            lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, rest = line.partition(":")
            if key in total:
                total[key] += int(rest.split()[0]) * 1024
    return total


async def hold_sessions(ctx: Context, c: Contender, n: int) -> None:
    """Memory growth of the contender's tree per session with ``n`` sessions open; they are DELETEd afterwards.

    What counts is anonymous PSS (Pss_Anon + Pss_Shmem): the file-backed part (the interpreter, the libraries)
    is split with every process on the machine that maps the same files, so it drifts with whatever else runs
    (the same venv's Python elsewhere) by more than a few hundred sessions of a one-child proxy cost. The
    file-backed growth is kept apart (``file_per_session``): for a child per session it is a real cost."""
    import httpx

    ctx.say(f"{c.label}: holding {n} sessions")
    root = c.proc.pid
    async with clients(c.url, 1):  # a warm-up session: lazy imports, first-request caches
        pass
    procs_before = len(tree(root))
    await anyio.sleep(0.5)
    before = pss_parts(root)
    ids: list[str] = []
    limiter = anyio.Semaphore(4 if c.child_per_session else 16)
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0), limits=limits) as http:
        async def one() -> None:
            async with limiter:
                ids.append(await open_raw_session(http, c.url))

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(one)
        opened = time.perf_counter() - t0
        await anyio.sleep(1.0)
        after = pss_parts(root)
        anon = (after["Pss_Anon"] + after["Pss_Shmem"]) - (before["Pss_Anon"] + before["Pss_Shmem"])
        c.held, c.per_session = len(ids), anon / len(ids)
        c.file_per_session = (after["Pss_File"] - before["Pss_File"]) / len(ids)
        ctx.say(f"{c.label}: {len(ids)} sessions opened in {opened:.1f}s; anonymous PSS +{anon / 1e6:.1f} MB "
                f"({c.per_session / 1024:,.0f} KB each), file-backed PSS {c.file_per_session / 1024:+,.0f} KB each")

        async def end(session_id: str) -> None:
            async with limiter:
                with contextlib.suppress(httpx.HTTPError):
                    await http.delete(c.url, headers={**HEADERS, "Mcp-Session-Id": session_id})

        async with anyio.create_task_group() as tg:
            for session_id in ids:
                tg.start_soon(end, session_id)
    with anyio.move_on_after(15):  # the children of ended sessions go away
        while len(tree(root)) > procs_before:
            await anyio.sleep(0.1)


def _rotated(items: list, r: int) -> list:
    return items[r % len(items):] + items[: r % len(items)]


def _check(c: Contender) -> None:
    if c.proc.poll() is not None:
        raise RuntimeError(f"{c.label} exited with {c.proc.returncode}:\n{c.log_tail()}")


async def measure_latency(ctx: Context, field_of: list[Contender], sizes: Sizes) -> None:
    """One session per contender, all open at once; the calls go in slices, contender after contender."""
    per_slice = max(1, sizes.latency_calls // sizes.slices)
    ctx.say(f"latency: {per_slice * sizes.slices} calls on one session per contender, in {sizes.slices} slices")
    async with contextlib.AsyncExitStack() as stack:
        one = {c.key: (await stack.enter_async_context(clients(c.url, 1)))[0] for c in field_of}
        for r in range(sizes.slices):
            for c in _rotated(field_of, r):
                lat = await drive(lambda cl=one[c.key]: _echo(cl), calls=per_slice)
                c.latency += lat.latencies
                c.errors += lat.errors
                _check(c)


async def measure_load(ctx: Context, field_of: list[Contender], sizes: Sizes) -> None:
    """``sizes.sessions`` sessions per contender, all open before the load (a child per session started too);
    CPU and closed connections are counted over each contender's own slices only."""
    per_slice = max(1, sizes.load_calls // sizes.slices)
    ctx.say(f"load: {per_slice * sizes.slices} calls on {sizes.sessions} concurrent sessions per contender, in "
            f"{sizes.slices} slices")
    async with contextlib.AsyncExitStack() as stack:
        many = {c.key: await stack.enter_async_context(clients(c.url, sizes.sessions)) for c in field_of}
        for r in range(sizes.slices):
            for c in _rotated(field_of, r):
                root = c.proc.pid
                closed0 = time_wait(c.port)
                cpu0 = cpu_seconds([root])
                load: Load = await drive_sessions([(lambda cl=cl: _echo(cl)) for cl in many[c.key]],
                                                  calls=per_slice)
                c.cpu += cpu_seconds([root]) - cpu0
                c.closed += len(time_wait(c.port) - closed0)
                c.load_calls += load.calls
                c.load_seconds += load.elapsed
                c.errors += load.errors
                _check(c)


# -- the run -------------------------------------------------------------------------------------------------------


async def _ready(c: Contender) -> None:
    from mcp_agent_cloud.runtime.ports import wait_port

    if not await wait_port("127.0.0.1", c.port, 60) or c.proc.poll() is not None:
        raise RuntimeError(f"{c.label} did not listen on {c.port}:\n{c.log_tail()}")


async def run(ctx: Context) -> list[Table]:
    install(ctx)
    server = ctx.workdir / "echo_server.py"
    server.write_text(ECHO_SERVER)
    sizes = Sizes(slices=ctx.size(10, 2), latency_calls=ctx.size(2500, 60), load_calls=ctx.size(4000, 120),
                  sessions=ctx.size(SESSIONS, 2), held_one_child=ctx.size(200, 5), held_child_each=ctx.size(50, 2))
    field_of = contenders(server)
    try:
        t0 = time.perf_counter()
        for c in field_of:
            c.start(ctx.workdir)
        async with anyio.create_task_group() as tg:
            for c in field_of:
                tg.start_soon(_ready, c)
        ctx.say(f"{len(field_of)} contenders listening after {time.perf_counter() - t0:.1f}s")
        for c in field_of:
            if c.sessions:
                await hold_sessions(ctx, c, sizes.held_child_each if c.child_per_session else sizes.held_one_child)
        await measure_latency(ctx, field_of, sizes)
        await measure_load(ctx, field_of, sizes)
    finally:
        for c in field_of:
            c.stop()
    return tables({c.key: c for c in field_of}, sizes)


@dataclass
class Sizes:
    slices: int  # the calls of each phase go in this many slices, contender after contender
    latency_calls: int
    load_calls: int
    sessions: int
    held_one_child: int
    held_child_each: int


def _p(c: Contender, q: float) -> float:
    from .common import percentile

    return percentile(c.latency, q) * 1000


def _rate(c: Contender) -> float:
    return c.load_calls / c.load_seconds if c.load_seconds else 0.0


def _cpu_ms(c: Contender) -> float:
    return c.cpu / c.load_calls * 1000 if c.load_calls else 0.0


def _kb(c: Contender, *, file: bool = False) -> float | None:
    value = c.file_per_session if file else c.per_session
    return None if value is None else value / 1024


def _closed(c: Contender) -> float:
    return c.closed / c.load_calls if c.load_calls else 0.0


def tables(by: dict[str, Contender], sizes: Sizes) -> list[Table]:
    iso, shr, mp, mps, sg, direct = (by[k] for k in ("isolated", "shared", "mcp-proxy", "mcp-proxy-stateless",
                                                      "supergateway", "direct"))
    lat = f"latency, 1 session ({len(iso.latency):,} calls)"
    rate = f"calls/s, {sizes.sessions} concurrent sessions"
    cpu = "CPU per call, proxy + its stdio child(ren)"
    mem = "memory per held session (anonymous PSS)"
    how = [
        "tools/call of a trivial echo tool (a low-level mcp SDK server over stdio, the same script for every "
        "contender) through each proxy on 127.0.0.1, by the mcp SDK 2.x Client (mode=legacy) in the benchmark "
        "process; latency is the client's wall time per call",
        f"each phase's calls ran in {sizes.slices} slices, contender after contender (in a rotated order), with "
        "every contender's sessions open throughout, so a burst of background load falls on all of them; "
        "CPU is the user+system time (/proc) of the contender's whole process tree over the concurrent load, "
        "divided by its calls; memory is the growth of that tree's anonymous PSS (Pss_Anon + Pss_Shmem) with the "
        "sessions open (initialized, idle), divided by them: the file-backed part (interpreter, libraries) is "
        "shared with every process mapping the same files and drifts with the rest of the machine",
    ]
    errors = [f"{c.label}: {c.errors} failed calls (left out of the figures)" for c in by.values() if c.errors]

    def versus(ours: Contender, base: Contender) -> list[Row]:
        return [
            Row(f"p50 {lat}", "ms", _p(ours, 50), _p(base, 50), goal=1.0),
            Row(f"p99 {lat}", "ms", _p(ours, 99), _p(base, 99), goal=1.0),
            Row(rate, "calls/s", _rate(ours), _rate(base), higher_is_better=True),
            Row(cpu, "ms", _cpu_ms(ours), _cpu_ms(base), goal=1.0),
        ]

    goals = "goals: p50 and CPU per call ≤ mcp-proxy's; p99 below every peer's (mcp-proxy and supergateway)"
    t_iso = Table(
        f"stdio adapter, isolated mode (a stdio child per session) against mcp-proxy {MCP_PROXY_VERSION} "
        "(stateful, one stdio child for all sessions)", "ours, isolated", "mcp-proxy", [
            *versus(iso, mp),
            Row(mem, "KB", _kb(iso), _kb(mp),
                note=f"{iso.held} sessions on ours, each a whole Python stdio server (plus "
                     f"{_kb(iso, file=True):,.0f} KB file-backed PSS each); {mp.held} on mcp-proxy"),
        ], notes=[*how, goals, *errors])
    t_shr = Table(
        f"stdio adapter, shared mode (one stdio child for all sessions) against mcp-proxy {MCP_PROXY_VERSION} "
        "(stateful, one stdio child)", "ours, shared", "mcp-proxy", [
            *versus(shr, mp),
            Row(mem, "KB", _kb(shr), _kb(mp), goal=150, goal_kind="absolute",
                note=f"{shr.held} sessions held on each; the goal is absolute"),
        ], notes=[goals + "; shared mode ≤ 150 KB per held session"])
    sg_rows = []
    for ours in (iso, shr):
        sg_rows += [
            Row(f"{ours.label}: p99 {lat}", "ms", _p(ours, 99), _p(sg, 99), goal=1.0),
            Row(f"{ours.label}: p50 {lat}", "ms", _p(ours, 50), _p(sg, 50)),
            Row(f"{ours.label}: {rate}", "calls/s", _rate(ours), _rate(sg), higher_is_better=True),
            Row(f"{ours.label}: {cpu}", "ms", _cpu_ms(ours), _cpu_ms(sg)),
        ]
    sg_rows.append(Row(f"{iso.label}: {mem}", "KB", _kb(iso), _kb(sg),
                       note=f"{iso.held} sessions on ours, {sg.held} on supergateway: a stdio child per session on "
                            f"both (file-backed PSS per session besides: ours {_kb(iso, file=True):,.0f} KB, "
                            f"supergateway {_kb(sg, file=True):,.0f} KB); ours, shared holds a session in tens of KB "
                            "(previous table)"))
    t_sg = Table(f"stdio adapter against supergateway {SUPERGATEWAY_VERSION} (--stateful: a stdio child per "
                 "session)", "ours", "supergateway", sg_rows,
                 notes=["goal: p99 below supergateway's, in both session modes"])
    ctx_rows = []
    for c in (iso, shr, mp, mps, sg):
        ctx_rows += [
            Row(f"{c.label}: p50", "ms", _p(c, 50), _p(direct, 50)),
            Row(f"{c.label}: p99", "ms", _p(c, 99), _p(direct, 99)),
            Row(f"{c.label}: {rate}", "calls/s", _rate(c), _rate(direct), higher_is_better=True),
            Row(f"{c.label}: CPU per call", "ms", _cpu_ms(c), _cpu_ms(direct)),
            Row(f"{c.label}: TCP connections closed per call", "", _closed(c), _closed(direct)),
        ]
        if c.per_session is not None:
            ctx_rows.append(Row(f"{c.label}: {mem}", "KB", _kb(c), _kb(direct)))
    t_ctx = Table("every contender against the same server run natively over Streamable HTTP (no stdio hop)",
                  "contender", "direct", ctx_rows, notes=[
                      "direct: the echo server's own Streamable HTTP transport (the mcp SDK 2.x stateful session "
                      "manager under uvicorn, answering with SSE); its CPU is its one process",
                      "TCP connections closed per call: new TIME_WAIT sockets of the contender's port over the "
                      "concurrent load, per call. mcp-proxy answers a POST with application/json; the others with "
                      "an SSE stream, which the SDK client closes after the answer without reading it to its end, "
                      "so its connection is not reused",
                      f"pinned peers: mcp-proxy=={MCP_PROXY_VERSION} (a venv of its own, mcp 1.x), supergateway@"
                      f"{SUPERGATEWAY_VERSION} (node {_node_version()}); mcp-proxy --stateless has no sessions to "
                      "hold",
                      f"sessions held: {sizes.held_one_child} on contenders with one stdio child, "
                      f"{sizes.held_child_each} on those with a stdio child per session (ours isolated, "
                      "supergateway), as each of those is a whole Python process", *errors])
    return [t_iso, t_shr, t_sg, t_ctx]


def _node_version() -> str:
    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
