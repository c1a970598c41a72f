"""Gateway overhead: ``tools/call`` straight to an app instance against the same call through the gateway.

One platform (``mcp-agent serve``, process builder) with examples/hello deployed. The two sides call ``greet`` on
the same app process with the real mcp SDK client (``mcp_agent_cloud.client.mcp_client``, Streamable HTTP):

- direct (baseline): the instance's own Streamable HTTP URL (``http://127.0.0.1:PORT/mcp``, read from the
  registry), no auth;
- gateway (ours): ``{platform}/servers/hello/mcp`` with the bearer token, so auth, the session table and the byte
  relay are all on the path.

Each side holds its sessions open for the whole run. Latency is one session calling in a loop; throughput is
``sessions`` sessions calling concurrently. Server CPU per call is the CPU time (user + system, from /proc) the
server side used over the throughput load, divided by the calls: for direct the app's process tree, for the
gateway the platform's tree (the platform process and the app, which is its child); the gateway's own cost is the
difference. The two sides alternate round by round (direct first in even rounds, gateway first in odd ones) and
each figure is the median over the rounds. Both are measured twice, with the SDK's default ``mode="auto"`` (which
negotiates the stateless 2026-07-28 protocol with this server: no session id on the wire) and with
``mode="legacy"`` (the initialize handshake, a ``Mcp-Session-Id`` session the gateway maps to the upstream's, and
the SDK's standing GET stream per session).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import statistics
import time

from .common import ROOT, TOOLS, Context, Load, Row, Table, copy_app, cpu_seconds, drive, drive_sessions, instance

HELLO = ROOT / "examples" / "hello"
ENVS = TOOLS / "envs"  # the process builder's venv cache, shared between runs (keyed by requirements hash)
NAME = "hello"


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _caller(client):
    async def call() -> None:
        result = await client.call_tool("greet", {"name": "bench"})
        if result.is_error or getattr(result.content[0], "text", "") != "Hello, bench!":
            raise AssertionError(f"unexpected answer: {result}")
    return call


class Side:
    """One side (direct or gateway) of one mode: its open sessions and what each round measured."""

    def __init__(self, label: str, clients: list, server_pid: int, platform_pid: int, app_pid: int) -> None:
        self.label = label
        self.clients = clients
        self.server_pid = server_pid  # the tree that serves this side: the app (direct) or the platform (gateway)
        self.platform_pid = platform_pid
        self.app_pid = app_pid
        self.latency: list[Load] = []
        self.throughput: list[Load] = []
        self.server_cpu: list[float] = []  # ms per call, of server_pid's tree
        self.app_cpu: list[float] = []  # ms per call, of the app's tree
        self.platform_alone: list[float] = []  # ms per second of load, the platform's tree without the app's
        self.client_cpu: list[float] = []  # ms per call
        self.errors = 0

    async def round(self, lat_calls: int, tp_calls: int) -> None:
        lat = await drive(_caller(self.clients[0]), calls=lat_calls)
        before = (cpu_seconds([self.server_pid]), cpu_seconds([self.app_pid]), cpu_seconds([self.platform_pid]),
                  _client_cpu())
        tp = await drive_sessions([_caller(c) for c in self.clients], calls=tp_calls)
        after = (cpu_seconds([self.server_pid]), cpu_seconds([self.app_pid]), cpu_seconds([self.platform_pid]),
                 _client_cpu())
        server, app, platform, client = (1000 * (a - b) for a, b in zip(after, before))
        calls = max(1, tp.calls)
        self.latency.append(lat)
        self.throughput.append(tp)
        self.server_cpu.append(server / calls)
        self.app_cpu.append(app / calls)
        self.platform_alone.append((platform - app) / tp.elapsed)
        self.client_cpu.append(client / calls)
        self.errors += lat.errors + tp.errors

    def median(self, figure) -> float:
        return statistics.median(figure(i) for i in range(len(self.latency)))


async def _mode(ctx: Context, p, mode: str, direct_url: str, app_pid: int, endpoint: str, *, sessions: int,
                rounds: int, warmup: int, lat_calls: int, tp_calls: int) -> Table:
    from mcp_agent_cloud.client import mcp_client

    async with contextlib.AsyncExitStack() as stack:
        ctx.say(f"{mode}: opening {sessions} sessions on each side")
        direct = Side("direct", [await stack.enter_async_context(mcp_client(direct_url, None, mode=mode))
                                 for _ in range(sessions)], app_pid, p.proc.pid, app_pid)
        gateway = Side("gateway", [await stack.enter_async_context(mcp_client(endpoint, p.token, mode=mode))
                                   for _ in range(sessions)], p.proc.pid, p.proc.pid, app_pid)
        protocol = direct.clients[0].protocol_version
        ctx.say(f"{mode}: protocol {protocol}; warm-up, {warmup} calls per session and side")
        for side in (direct, gateway):
            await drive_sessions([_caller(c) for c in side.clients], calls=warmup * sessions)
        for r in range(rounds):
            for side in (direct, gateway) if r % 2 == 0 else (gateway, direct):
                ctx.say(f"{mode}: round {r + 1}/{rounds}, {side.label}: {lat_calls} calls on 1 session, "
                        f"{tp_calls} on {sessions}")
                await side.round(lat_calls, tp_calls)
    g, d = gateway, direct
    p50 = lambda s: s.median(lambda i: s.latency[i].p(50))  # noqa: E731
    p99 = lambda s: s.median(lambda i: s.latency[i].p(99))  # noqa: E731
    rate = lambda s: s.median(lambda i: s.throughput[i].rate)  # noqa: E731
    cpu = lambda s: s.median(lambda i: s.server_cpu[i])  # noqa: E731
    ccpu = lambda s: s.median(lambda i: s.client_cpu[i])  # noqa: E731
    app = lambda s: s.median(lambda i: s.app_cpu[i])  # noqa: E731
    added = statistics.median(g.server_cpu[i] - d.server_cpu[i] for i in range(rounds))
    table = Table(
        f"gateway overhead, mcp SDK client mode={mode!r} (protocol {protocol}), tools/call greet on examples/hello",
        "gateway (bearer auth)", "direct to the instance", [
            Row("latency p50, 1 session", "ms", p50(g), p50(d), goal=1.15),
            Row("latency p99, 1 session", "ms", p99(g), p99(d)),
            Row(f"throughput, {sessions} concurrent sessions", "calls/s", rate(g), rate(d), goal=0.85,
                higher_is_better=True),
            Row("server CPU per call", "ms", cpu(g), cpu(d),
                note="platform process tree (gateway + app) against the app's tree alone, over the throughput load"),
            Row("of which the app's CPU per call", "ms", app(g), app(d),
                note="the same app process on both sides: what the gateway's forwarding changes for it"),
            Row("gateway's added server CPU per call", "ms", added, goal=0.5, goal_kind="absolute",
                note="per round: gateway-side server CPU per call minus direct-side, median over rounds"),
            Row("client CPU per call (the benchmark's process)", "ms", ccpu(g), ccpu(d)),
            Row("failed calls", "", g.errors, d.errors, goal=0, goal_kind="absolute"),
        ],
        notes=[f"{rounds} alternating rounds per side, each {lat_calls} calls on one session then {tp_calls} calls "
               f"over {sessions} sessions; figures are the median over the rounds, after {warmup} warm-up calls per "
               "session",
               f"the platform process by itself (without the app) used {d.median(lambda i: d.platform_alone[i]):.0f} "
               "ms of CPU per second while the direct side was loaded (its background work: supervisor, "
               "reaper, telemetry); that is part of the gateway side's figure too, "
               f"{d.median(lambda i: d.platform_alone[i] / d.throughput[i].rate):.2f} ms per call at the direct "
               "side's rate",
               "one machine runs the client, the platform and the app: on few cores the gateway's process competes "
               "with both for CPU, which shows in latency and throughput as well as in CPU per call"])
    return table


async def run(ctx: Context) -> list[Table]:
    from mcp_agent_cloud.testing import PlatformProcess

    sessions = ctx.size(16, 4)
    rounds = ctx.size(3, 2)
    lat_calls = ctx.size(500, 30)
    tp_calls = ctx.size(700, 30)
    warmup = ctx.size(10, 2)
    src = copy_app(HELLO, ctx.workdir / "hello")
    ENVS.mkdir(parents=True, exist_ok=True)
    # For A/B runs of one platform setting (e.g. `tracing: {enabled: false}`): YAML added to the platform's config.
    extra = os.environ.get("MCPAC_BENCH_PLATFORM_CONFIG", "")
    if extra:
        ctx.say(f"platform config added from MCPAC_BENCH_PLATFORM_CONFIG: {extra.strip()}")
    p = PlatformProcess(ctx.workdir / "platform", ENVS, extra_config=extra + ("\n" if extra else ""))
    p.start()
    try:
        ctx.say("deploying examples/hello (process builder)")
        t0 = time.monotonic()
        deployed = json.loads(p.cli("deploy", "app", str(src), "--name", NAME, "--json", check=True).stdout)
        ctx.say(f"deployed in {time.monotonic() - t0:.1f}s")
        direct_url, app_pid = instance(p, NAME)
        endpoint = deployed["endpoint"]
        tables = []
        for mode in ("auto", "legacy"):
            tables.append(await _mode(ctx, p, mode, direct_url, app_pid, endpoint, sessions=sessions, rounds=rounds,
                                      warmup=warmup, lat_calls=lat_calls, tp_calls=tp_calls))
        return tables
    finally:
        p.stop()
