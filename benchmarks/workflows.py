"""Workflow runs through the gateway: starts per second, start -> running latency and the pause-to-resume round
trip, on the ``asyncio`` executor and on Temporal.

The app is benchmarks/apps/workflows_bench (an ``MCPApp``): ``Noop`` returns at once, ``Gate`` waits for the signal
``go`` (a human's answer). Both return ``time.time()`` taken as their code runs, so latencies to "running" are
read on the host's one clock, without polling.

- **Starts**: several MCP sessions (the mcp SDK client over Streamable HTTP, bearer token) call
  ``workflows-Noop-run`` through the gateway concurrently; starts per second is calls / wall time. The start call
  returns once the executor has the run (asyncio: in its store and scheduled; Temporal: the execution started on
  the server). Start -> running is from just before the start call to the moment ``Noop.run`` executes (read
  afterwards from each run's result with ``workflows-get_status``).
- **Pause-to-resume**: one ``Gate`` run at a time; once ``workflows-get_status`` shows it ``paused`` waiting for
  ``go``, ``workflows-resume`` with ``signal_name: go``; timed from just before that call to the moment the run's
  code goes on, and, as a client sees it, to ``workflows-get_status`` first answering ``completed`` (polled).

Baselines, in the same run: on asyncio, the same tools called on the app instance's own MCP endpoint (no gateway,
no auth); on Temporal, a raw ``temporalio`` ``Client.start_workflow`` loop (as many concurrent loops as sessions)
on the same dev server, with a worker of the same trivial workflows in a process of its own
(benchmarks/apps/temporal_raw/worker.py), and ``handle.signal`` for the round trip.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anyio

from .common import ROOT, Context, Load, Row, Table, copy_app, drive_sessions, percentile

APP = ROOT / "benchmarks" / "apps" / "workflows_bench"
RAW_WORKER = ROOT / "benchmarks" / "apps" / "temporal_raw" / "worker.py"
NAME = "wfbench"
SESSIONS = 8
ALTERNATIONS = 3  # Temporal: baseline and ours measured in this many alternating parts


def _value(result) -> dict:
    text = "".join(getattr(c, "text", "") for c in result.content)
    if result.is_error:
        raise RuntimeError(f"tool error: {text}")
    if isinstance(result.structured_content, dict) and set(result.structured_content) != {"result"}:
        return result.structured_content
    return json.loads(text)


def _ms(values: list[float], q: float) -> float | None:
    return percentile(values, q) * 1000 if values else None


class Sessions:
    """``n`` connected MCP client sessions to one endpoint."""

    def __init__(self, url: str, token: str | None, n: int) -> None:
        self.url, self.token, self.n = url, token, n
        self.clients: list = []
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Sessions:
        from mcp_agent_cloud.client import mcp_client

        await self._stack.__aenter__()
        for _ in range(self.n):
            self.clients.append(await self._stack.enter_async_context(mcp_client(self.url, self.token,
                                                                                 read_timeout=120.0)))
        return self

    async def __aexit__(self, *exc) -> None:
        await self._stack.__aexit__(*exc)

    async def call(self, tool: str, args: dict, i: int = 0) -> dict:
        return _value(await self.clients[i % self.n].call_tool(tool, args))


# -- one side: starts, then the round trips ----------------------------------------------------------------------


async def _mcp_side(ctx: Context, url: str, token: str | None, starts: int, rounds: int, warmup: int) -> dict:
    async with Sessions(url, token, SESSIONS) as s:
        for i in range(warmup):  # connections, first-call paths, the executor's caches
            await s.call("workflows-Noop-run", {"run_parameters": {}}, i)
            await s.call("add", {"a": 1, "b": i}, i)
        plain = await drive_sessions([_bound(s, i, "add", {"a": 1, "b": 2}) for i in range(SESSIONS)], calls=starts)
        began: list[tuple[float, str]] = []

        def starter(i: int):
            async def call() -> None:
                t0 = time.time()
                ids = await s.call("workflows-Noop-run", {"run_parameters": {}}, i)
                began.append((t0, ids["run_id"]))
            return call

        load = await drive_sessions([starter(i) for i in range(SESSIONS)], calls=starts)
        ctx.say(f"  {load.calls} starts in {load.elapsed:.2f}s ({load.rate:.0f}/s, {load.errors} errors); "
                "reading each run's result")
        to_running = await _results(s, began)
        trips = await _mcp_round_trips(s, rounds)
    return {"load": load, "plain": plain, "to_running": to_running, **trips}


def _bound(s: Sessions, i: int, tool: str, args: dict):
    async def call() -> None:
        await s.call(tool, args, i)
    return call


async def _results(s: Sessions, began: list[tuple[float, str]], timeout: float = 120) -> list[float]:
    """start -> running of each run: its code's time stamp (its result) minus the time its start call began."""
    out: list[float] = []
    todo = list(began)
    deadline = time.monotonic() + timeout

    async def worker(i: int) -> None:
        while todo:
            t0, run_id = todo.pop()
            while True:
                st = await s.call("workflows-get_status", {"run_id": run_id}, i)
                if st["status"] == "completed":
                    out.append(st["result"]["t"] - t0)
                    break
                if st["status"] in ("error", "cancelled", "interrupted") or time.monotonic() > deadline:
                    raise RuntimeError(f"run {run_id} did not complete: {st}")
                await anyio.sleep(0.05)

    async with anyio.create_task_group() as tg:
        for i in range(s.n):
            tg.start_soon(worker, i)
    return out


async def _mcp_round_trips(s: Sessions, rounds: int) -> dict:
    resumed, seen, calls = [], [], []
    for _ in range(rounds):
        run_id = (await s.call("workflows-Gate-run", {"run_parameters": {}}))["run_id"]
        deadline = time.monotonic() + 60
        while True:
            st = await s.call("workflows-get_status", {"run_id": run_id})
            if st["status"] == "paused" and st.get("waiting_for") == "go":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {run_id} never waited for go: {st}")
            await anyio.sleep(0.02)
        t0 = time.time()
        p0 = time.perf_counter()
        await s.call("workflows-resume", {"run_id": run_id, "signal_name": "go", "payload": {"ok": True}})
        calls.append(time.perf_counter() - p0)
        while True:
            st = await s.call("workflows-get_status", {"run_id": run_id})
            if st["status"] == "completed":
                seen.append(time.perf_counter() - p0)
                resumed.append(st["result"]["t"] - t0)
                break
            if st["status"] in ("error", "cancelled", "interrupted") or time.monotonic() > deadline + 60:
                raise RuntimeError(f"run {run_id} did not complete after its signal: {st}")
    return {"resumed": resumed, "seen": seen, "resume_calls": calls}


# -- raw temporalio ------------------------------------------------------------------------------------------------


async def _raw_temporal(ctx: Context, address: str, starts: int, rounds: int, warmup: int, workdir: Path) -> dict:
    from temporalio.client import Client

    queue = f"bench-raw-{secrets.token_hex(4)}"
    log = open(workdir / "raw-worker.log", "w")
    worker = subprocess.Popen([sys.executable, str(RAW_WORKER), address, queue], stdout=subprocess.PIPE,
                              stderr=log, text=True)
    try:
        line = await anyio.to_thread.run_sync(worker.stdout.readline)
        if line.strip() != "ready":
            raise RuntimeError(f"the raw temporalio worker did not start: {(workdir / 'raw-worker.log').read_text()}")
        client = await Client.connect(address)
        for _ in range(warmup):
            await client.start_workflow("Noop", id=f"Noop-{uuid.uuid4().hex}", task_queue=queue)
        began: list[tuple[float, object]] = []

        async def start() -> None:
            t0 = time.time()
            handle = await client.start_workflow("Noop", id=f"Noop-{uuid.uuid4().hex}", task_queue=queue)
            began.append((t0, handle))

        load = await drive_sessions([start] * SESSIONS, calls=starts)
        ctx.say(f"  {load.calls} starts in {load.elapsed:.2f}s ({load.rate:.0f}/s, {load.errors} errors); "
                "reading each run's result")
        to_running: list[float] = []
        todo = list(began)

        async def reader() -> None:
            while todo:
                t0, handle = todo.pop()
                with anyio.fail_after(120):
                    to_running.append((await handle.result())["t"] - t0)

        async with anyio.create_task_group() as tg:
            for _ in range(SESSIONS):
                tg.start_soon(reader)
        resumed, seen, calls = [], [], []
        for _ in range(rounds):
            handle = await client.start_workflow("Gate", id=f"Gate-{uuid.uuid4().hex}", task_queue=queue)
            # Waiting: the worker has run the first workflow task (the run blocks in wait_condition).
            with anyio.fail_after(60):
                while True:
                    hist = [e async for e in handle.fetch_history_events()]
                    if sum(1 for e in hist if e.HasField("workflow_task_completed_event_attributes")):
                        break
                    await anyio.sleep(0.02)
            t0 = time.time()
            p0 = time.perf_counter()
            await handle.signal("go", {"ok": True})
            calls.append(time.perf_counter() - p0)
            with anyio.fail_after(60):
                result = await handle.result()
            seen.append(time.perf_counter() - p0)
            resumed.append(result["t"] - t0)
        return {"load": load, "to_running": to_running, "resumed": resumed, "seen": seen, "resume_calls": calls}
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()


# -- platforms ----------------------------------------------------------------------------------------------------


def _deploy(p, src: Path) -> dict:
    deployed = p.cli_json("deploy", "app", str(src), "--name", NAME, timeout=900)
    if "workflows-Noop-run" not in deployed["tools"]:
        raise RuntimeError(f"the app does not expose workflows-Noop-run: {deployed['tools']}")
    return deployed


def _merge(parts: list[dict]) -> dict:
    """One side's figures from its alternated parts: the loads' calls over their summed time, the samples pooled."""
    out: dict = {}
    for key, value in parts[0].items():
        if isinstance(value, Load):
            loads = [part[key] for part in parts]
            out[key] = Load(latencies=[x for load in loads for x in load.latencies],
                            elapsed=sum(load.elapsed for load in loads), errors=sum(load.errors for load in loads))
        else:
            out[key] = [x for part in parts for x in part[key]]
    return out


def _rows(ours: dict, base: dict, *, rate_goal: float, rate_kind: str, base_has_plain: bool) -> list[Row]:
    lo, lb = ours["load"], base["load"]
    rows = [
        Row("run starts per second", "runs/s", lo.rate, lb.rate, goal=rate_goal, goal_kind=rate_kind,
            higher_is_better=True),
        Row("start call latency p50", "ms", lo.p(50), lb.p(50)),
        Row("start call latency p99", "ms", lo.p(99), lb.p(99)),
        Row("start -> workflow code running p50", "ms", _ms(ours["to_running"], 50), _ms(base["to_running"], 50)),
        Row("start -> workflow code running p99", "ms", _ms(ours["to_running"], 99), _ms(base["to_running"], 99)),
    ]
    if "plain" in ours:
        rows.append(Row("plain tool calls (add) per second, for reference", "calls/s", ours["plain"].rate,
                        base["plain"].rate if base_has_plain else None, higher_is_better=True))
    rows += [
        Row("pause-to-resume: resume call -> workflow code running p50", "ms", _ms(ours["resumed"], 50),
            _ms(base["resumed"], 50)),
        Row("pause-to-resume: resume call -> completed status seen p50", "ms", _ms(ours["seen"], 50),
            _ms(base["seen"], 50)),
        Row("resume call latency p50", "ms", _ms(ours["resume_calls"], 50), _ms(base["resume_calls"], 50)),
        Row("failed calls during the load", "", lo.errors + (ours["plain"].errors if "plain" in ours else 0),
            lb.errors + (base["plain"].errors if "plain" in base else 0)),
    ]
    return rows


async def run(ctx: Context) -> list[Table]:
    from mcp_agent_cloud.testing import PlatformProcess, TemporalDevServer

    asyncio_starts = ctx.size(1000, 20)
    temporal_starts = ctx.size(300, 20)
    rounds = ctx.size(20, 3)
    warmup = ctx.size(20, 3)
    src = copy_app(APP, ctx.workdir / "app")
    envs = ctx.workdir / "envs"
    tables = []

    # -- asyncio ------------------------------------------------------------------------------------------------
    # Keep every finished run (default 1000): each run's result is read after the load.
    p = PlatformProcess(ctx.workdir / "asyncio", envs, extra_config="executor: {name: asyncio, max_finished_runs: "
                        f"{asyncio_starts * 3 + 1000}}}\n")
    p.start()
    try:
        ctx.say("asyncio: deploying benchmarks/apps/workflows_bench")
        deployed = _deploy(p, src)
        direct_url = p.instance(NAME)["url"]
        ctx.say(f"asyncio: {asyncio_starts} starts direct to the instance (baseline)")
        base = await _mcp_side(ctx, direct_url, None, asyncio_starts, rounds, warmup)
        ctx.say(f"asyncio: {asyncio_starts} starts through the gateway")
        ours = await _mcp_side(ctx, deployed["endpoint"], p.token, asyncio_starts, rounds, warmup)
        p.cli("delete", NAME, "--yes", check=True)
    finally:
        p.stop()
    tables.append(Table(
        f"workflows on asyncio: {asyncio_starts:,} starts of a trivial workflow over {SESSIONS} MCP sessions",
        "through the gateway", "direct to the app instance",
        _rows(ours, base, rate_goal=300, rate_kind="absolute", base_has_plain=True), [
            "starts: `workflows-Noop-run` called concurrently from 8 sessions of the mcp SDK client (Streamable HTTP; "
            "through the gateway with a bearer token); runs/s = calls / wall time of the whole load",
            "start -> running: from just before the start call to `Noop.run` executing (its time.time() result, "
            "read afterwards); pause-to-resume: `Gate` waits for signal `go`, timed from just before "
            f"`workflows-resume` to its code going on (median of {rounds} rounds, one at a time), and to "
            "`workflows-get_status` first saying `completed` (polled back to back)",
            "baseline: the same tools on the instance's own MCP endpoint (no gateway, no auth), same sessions count",
        ]))

    # -- temporal -----------------------------------------------------------------------------------------------
    server = TemporalDevServer(ctx.workdir / "temporal")
    (ctx.workdir / "temporal").mkdir()
    server.start()
    p = PlatformProcess(ctx.workdir / "temporal-platform", envs,
                        extra_config=f"executor: {{name: temporal, host: '{server.address}'}}\n")
    try:
        p.start(timeout=120)
        ctx.say("temporal: deploying benchmarks/apps/workflows_bench")
        deployed = _deploy(p, src)
        # Alternating parts, so a slow stretch of a noisy machine (or of the dev server's SQLite file as it
        # grows) falls on both sides instead of on whichever was measured second.
        base_parts, our_parts = [], []
        part_starts, part_rounds = max(1, temporal_starts // ALTERNATIONS), max(1, rounds // ALTERNATIONS)
        for part in range(1, ALTERNATIONS + 1):
            ctx.say(f"temporal, part {part}/{ALTERNATIONS}: {part_starts} raw temporalio starts (baseline)")
            base_parts.append(await _raw_temporal(ctx, server.address, part_starts, part_rounds, warmup,
                                                  ctx.workdir))
            ctx.say(f"temporal, part {part}/{ALTERNATIONS}: {part_starts} starts through the gateway")
            our_parts.append(await _mcp_side(ctx, deployed["endpoint"], p.token, part_starts, part_rounds, warmup))
        base, ours = _merge(base_parts), _merge(our_parts)
        p.cli("delete", NAME, "--yes", check=True)
    finally:
        p.stop()
        server.stop()
    ours.pop("plain")  # no plain-tool counterpart in a raw temporalio client
    tables.append(Table(
        f"workflows on Temporal: {temporal_starts:,} starts of a trivial workflow, {SESSIONS} concurrent starters, "
        "one dev server", "through the gateway", "raw temporalio client", _rows(
            ours, base, rate_goal=0.7, rate_kind="ratio", base_has_plain=False), [
            "ours: `workflows-Noop-run` through the gateway from 8 MCP sessions; the app's executor calls "
            "Client.start_workflow (with memo and priority) and its worker runs the run",
            "baseline: `temporalio` Client.start_workflow of the same trivial workflow from 8 concurrent loops on "
            "one client, with a worker (unsandboxed, like ours) in a separate process; both on one `temporal server "
            f"start-dev` (SQLite file), measured in {ALTERNATIONS} alternating parts (baseline, ours, baseline, ...)",
            "pause-to-resume baseline: `handle.signal('go')` once the first workflow task completed, to "
            "`handle.result()` (our side: `workflows-resume`, then `workflows-get_status` polled)",
        ]))
    return tables
