"""The ``asyncio`` executor inside an app: results and errors, signals that reach only their run, pause/resume,
cancel, step retries with backoff, the SQLite run store across restarts (and a SIGKILL), interrupted runs,
max_concurrent_runs by priority, and schedules."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mcp_agent_cloud.errors import ConflictError, NotFoundError, PluginError, ValidationFailed
from mcp_agent_cloud.hookspecs.types import AppBinding, ExecutorSpec, PluginContext, RetryPolicy, Schedule
from mcp_agent_cloud.plugins import asyncio_executor as plugin
from mcp_agent_cloud.plugins.asyncio_executor import (
    INTERRUPTED_ERROR,
    AsyncioExecutor,
    AsyncioExecutorConfig,
    AsyncioSupervisor,
)
from mcp_agent_cloud.workflows import Workflow, current_run
from mcp_agent_cloud.workflows.base import function_workflow_def, step_def, workflow_def
from tests.contracts import assert_registers, async_test

ROOT = Path(__file__).resolve().parents[2]


class Add(Workflow):
    async def run(self, a: int, b: int = 0) -> int:
        await self.sleep(0)
        return a + b


class Boom(Workflow):
    async def run(self, message: str) -> None:
        raise RuntimeError(message)


class Approval(Workflow):
    async def run(self, who: str) -> dict:
        self.update_state(step="waiting", who=who)
        payload = await self.wait_for_signal("approve")
        self.update_state(step="done")
        return {"who": who, "payload": payload, "run_id": self.run_id}


class Ticker(Workflow):
    """Counts in its state, one tick per sleep: a pause shows as a count that stops moving."""

    async def run(self, ticks: int) -> int:
        for i in range(ticks):
            self.update_state(count=i + 1)
            await self.sleep(0.01)
        return ticks


ATTEMPTS: dict[str, int] = {}


async def flaky(key: str, failures: int) -> str:
    ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    if ATTEMPTS[key] <= failures:
        raise ConnectionError(f"attempt {ATTEMPTS[key]} failed")
    return f"ok after {ATTEMPTS[key]}"


def blocking_add(a: int, b: int) -> int:  # a sync step: runs in a worker thread
    time.sleep(0.01)
    return a + b


FLAKY = step_def(flaky, retry=RetryPolicy(max_attempts=3, initial_interval=0.01, backoff=2))
FLAKY_ONCE = step_def(flaky, name="flaky-once", retry=RetryPolicy(max_attempts=2, initial_interval=0.01))
FATAL = step_def(flaky, name="fatal", retry=RetryPolicy(max_attempts=5, initial_interval=0.01,
                                                        non_retryable=["ConnectionError"]))


class Steps(Workflow):
    async def run(self, key: str, failures: int, which: str = "flaky") -> dict:
        step = {"flaky": FLAKY, "once": FLAKY_ONCE, "fatal": FATAL}[which]
        first = await self.step(step, key, failures)
        second = await self.step(blocking_add, 2, 3)
        return {"first": first, "second": second}


class SlowStep(Workflow):
    async def run(self) -> None:
        async def slow() -> None:
            await asyncio.sleep(5)
        await self.step(step_def(slow, timeout=0.05))


class Gate(Workflow):
    """Records the order runs start in, then waits for 'go'."""

    started: list[str] = []

    async def run(self, label: str) -> str:
        Gate.started.append(label)
        await self.wait_for_signal("go")
        return label


async def whoami(tag: str) -> dict:
    run = current_run()
    run.update_state(tag=tag)
    return {"run_id": run.run_id, "tag": tag}


def make(tmp_path: Path, *workflows, **options) -> AsyncioExecutor:
    ex = AsyncioExecutor(AsyncioExecutorConfig(**options), PluginContext(data_dir=tmp_path))
    defs = [w if not isinstance(w, type) else workflow_def(w) for w in workflows]
    ex.bind(AppBinding(app_name="t", deployment="default.t", data_dir=tmp_path / "data",
                       workflows={d.name: d for d in defs}, steps={}))
    return ex


@contextlib.asynccontextmanager
async def running(ex: AsyncioExecutor):
    await ex.setup()
    try:
        yield ex
    finally:
        await ex.aclose()


async def status_is(ex: AsyncioExecutor, run_id: str, status: str, waiting_for: str | None = "?") -> None:
    async def check() -> bool:
        rec = await ex.status(run_id)
        return rec.status == status and (waiting_for == "?" or rec.waiting_for == waiting_for)

    deadline = time.monotonic() + 5
    while not await check():
        if time.monotonic() > deadline:
            rec = await ex.status(run_id)
            raise AssertionError(f"{run_id}: wanted {status}/{waiting_for}, is {rec.status}/{rec.waiting_for}")
        await asyncio.sleep(0.005)


def test_hook_registers_asyncio_with_its_supervisor() -> None:
    assert_registers(plugin.mcp_agent_cloud_executors, ExecutorSpec, "asyncio", AsyncioExecutor, AsyncioExecutorConfig)
    (spec,) = plugin.mcp_agent_cloud_executors()
    assert spec.supervisor is AsyncioSupervisor


@async_test
async def test_setup_needs_a_binding(tmp_path) -> None:
    ex = AsyncioExecutor(AsyncioExecutorConfig(), PluginContext(data_dir=tmp_path))
    with pytest.raises(PluginError, match="bind"):
        await ex.setup()


@async_test
async def test_run_completes_with_its_result(tmp_path) -> None:
    async with running(make(tmp_path, Add)) as ex:
        started = await ex.start_run("Add", {"a": 2, "b": 3})
        assert started.status == "running" and started.params == {"a": 2, "b": 3}
        assert started.run_id.startswith("run_") and len(started.run_id) == 36
        assert started.workflow_id.startswith("Add-") and started.workflow_id != "Add-"
        done = await ex.wait(started.run_id, timeout=5)
        assert (done.status, done.result, done.error, done.running) == ("completed", 5, None, False)
        assert await ex.status(started.run_id) == done
        named = await ex.start_run("Add", {"a": 1}, workflow_id="wf-1")
        again = await ex.start_run("Add", {"a": 7}, workflow_id="wf-1")
        assert named.workflow_id == "wf-1" and named.run_id != again.run_id
        await ex.wait(again.run_id, timeout=5)
        assert (await ex.status(workflow_id="wf-1")).run_id == again.run_id  # the latest run of that id
        assert (await ex.status(workflow_id="wf-1")).result == 7
        assert (tmp_path / "data" / "runs.sqlite3").is_file()


@async_test
async def test_errors_bad_params_and_unknown_workflow(tmp_path) -> None:
    async with running(make(tmp_path, Add, Boom)) as ex:
        run = await ex.start_run("Boom", {"message": "it broke"})
        done = await ex.wait(run.run_id, timeout=5)
        assert (done.status, done.error, done.result) == ("error", "RuntimeError: it broke", None)
        with pytest.raises(ValidationFailed, match=r"invalid run_parameters for Add: a: Input should be a valid "
                                                   r"integer") as caught:
            await ex.start_run("Add", {"a": "many"})
        assert "workflows-Add-run" in caught.value.hint
        with pytest.raises(ValidationFailed, match="a: Field required"):
            await ex.start_run("Add", {})
        with pytest.raises(ValidationFailed, match="c: Extra inputs are not permitted"):
            await ex.start_run("Add", {"a": 1, "c": 2})
        with pytest.raises(NotFoundError, match="unknown workflow 'Nope'.*Add, Boom"):
            await ex.start_run("Nope", {})


@async_test
async def test_signal_reaches_only_the_named_run(tmp_path) -> None:
    async with running(make(tmp_path, Approval)) as ex:
        first = await ex.start_run("Approval", {"who": "first"})
        second = await ex.start_run("Approval", {"who": "second"})
        for rid in (first.run_id, second.run_id):
            await status_is(ex, rid, "paused", "approve")
        assert (await ex.status(first.run_id)).state == {"step": "waiting", "who": "first"}

        after = await ex.signal(second.run_id, "approve", {"ok": True})
        assert after.run_id == second.run_id
        done = await ex.wait(second.run_id, timeout=5)
        assert done.status == "completed"
        assert done.result == {"who": "second", "payload": {"ok": True}, "run_id": second.run_id}
        assert done.state["step"] == "done"

        await asyncio.sleep(0.05)  # give a misdelivered signal time to wake the other run
        await status_is(ex, first.run_id, "paused", "approve")
        await ex.signal(first.run_id, "approve", "later")
        assert (await ex.wait(first.run_id, timeout=5)).result["payload"] == "later"

        with pytest.raises(ConflictError, match="completed"):
            await ex.signal(first.run_id, "approve")
        history = (await ex.status(first.run_id, history=True)).history
        kinds = [h["kind"] for h in history]
        assert kinds[0] == "started" and {"kind": "signal", "name": "approve"} in [
            {k: h[k] for k in ("kind", "name")} for h in history if h["kind"] == "signal"]
        assert history[-1]["kind"] == "status" and history[-1]["status"] == "completed"


@async_test
async def test_signal_sent_before_the_wait_is_kept(tmp_path) -> None:
    class Late(Workflow):
        async def run(self) -> str:
            await self.sleep(0.1)
            return await self.wait_for_signal("go", timeout=5)

    async with running(make(tmp_path, Late)) as ex:
        run = await ex.start_run("Late", {})
        await ex.signal(run.run_id, "go", "early")
        assert (await ex.wait(run.run_id, timeout=5)).result == "early"


@async_test
async def test_wait_for_signal_timeout(tmp_path) -> None:
    class Impatient(Workflow):
        async def run(self) -> None:
            await self.wait_for_signal("never", timeout=0.01)

    async with running(make(tmp_path, Impatient)) as ex:
        done = await ex.wait((await ex.start_run("Impatient", {})).run_id, timeout=5)
        assert done.status == "error" and done.error == "TimeoutError: no signal 'never' within 0.01 s", done


@async_test
async def test_pause_holds_the_run_until_resume(tmp_path) -> None:
    async with running(make(tmp_path, Ticker, Approval)) as ex:
        run = await ex.start_run("Ticker", {"ticks": 1000})
        while "count" not in (await ex.status(run.run_id)).state:
            await asyncio.sleep(0.005)
        paused = await ex.pause(run.run_id)
        assert (paused.status, paused.waiting_for) == ("paused", "resume")
        await status_is(ex, run.run_id, "paused", "resume")
        count = (await ex.status(run.run_id)).state["count"]
        await asyncio.sleep(0.1)
        assert (await ex.status(run.run_id)).state["count"] == count  # held: no tick while paused
        assert (await ex.pause(run.run_id)).status == "paused"  # pausing twice is harmless
        resumed = await ex.signal(run.run_id, "resume")
        assert resumed.status == "running" and resumed.waiting_for is None
        await asyncio.sleep(0.05)
        assert (await ex.status(run.run_id)).state["count"] > count
        await ex.cancel(run.run_id)

        # a run waiting for a human keeps showing what it waits for; after the signal it holds for resume
        waiting = await ex.start_run("Approval", {"who": "x"})
        await status_is(ex, waiting.run_id, "paused", "approve")
        assert (await ex.pause(waiting.run_id)).waiting_for == "approve"
        await ex.signal(waiting.run_id, "approve", 1)
        await status_is(ex, waiting.run_id, "paused", "resume")
        await ex.signal(waiting.run_id, "resume")
        assert (await ex.wait(waiting.run_id, timeout=5)).result["payload"] == 1
        with pytest.raises(ConflictError):
            await ex.pause(waiting.run_id)


@async_test
async def test_cancel(tmp_path) -> None:
    async with running(make(tmp_path, Approval, Ticker)) as ex:
        run = await ex.start_run("Approval", {"who": "x"})
        await status_is(ex, run.run_id, "paused", "approve")
        cancelled = await ex.cancel(run.run_id)
        assert (cancelled.status, cancelled.running, cancelled.waiting_for) == ("cancelled", False, None)
        with pytest.raises(ConflictError, match="cancelled: it cannot be cancelled"):
            await ex.cancel(run.run_id)
        ticking = await ex.start_run("Ticker", {"ticks": 1000})
        await ex.pause(ticking.run_id)
        assert (await ex.cancel(ticking.run_id)).status == "cancelled"  # a held run is cancelled too


@async_test
async def test_unknown_run_id(tmp_path) -> None:
    async with running(make(tmp_path, Add)) as ex:
        for call in (ex.status("run_nope"), ex.signal("run_nope", "x"), ex.cancel("run_nope"), ex.pause("run_nope")):
            with pytest.raises(NotFoundError, match="run_nope"):
                await call
        with pytest.raises(NotFoundError, match="no run with workflow_id 'nope'"):
            await ex.status(workflow_id="nope")
        with pytest.raises(ValidationFailed):
            await ex.status()


@async_test
async def test_step_retries_with_backoff(tmp_path) -> None:
    ATTEMPTS.clear()
    async with running(make(tmp_path, Steps)) as ex:
        ok = await ex.wait((await ex.start_run("Steps", {"key": "a", "failures": 2})).run_id, timeout=5)
        assert ok.status == "completed", ok.error
        assert ok.result == {"first": "ok after 3", "second": 5}
        history = (await ex.status(ok.run_id, history=True)).history
        retries = [h for h in history if h["kind"] == "step_retry"]
        assert [(h["attempt"], h["retry_in"]) for h in retries] == [(1, 0.01), (2, 0.02)]
        assert retries[0]["error"] == "ConnectionError: attempt 1 failed"
        assert retries[1]["ts"] - retries[0]["ts"] >= 0.01  # it did wait before the next attempt

        spent = await ex.wait((await ex.start_run("Steps", {"key": "b", "failures": 5, "which": "once"})).run_id,
                              timeout=5)
        assert (spent.status, spent.error) == ("error", "ConnectionError: attempt 2 failed")
        assert ATTEMPTS["b"] == 2

        fatal = await ex.wait((await ex.start_run("Steps", {"key": "c", "failures": 5, "which": "fatal"})).run_id,
                              timeout=5)
        assert fatal.status == "error" and ATTEMPTS["c"] == 1  # non_retryable: no second attempt


@async_test
async def test_step_timeout(tmp_path) -> None:
    async with running(make(tmp_path, SlowStep)) as ex:
        done = await ex.wait((await ex.start_run("SlowStep", {})).run_id, timeout=5)
        assert done.status == "error" and "timed out after 0.05 s" in done.error


@async_test
async def test_current_run_in_a_function_workflow(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="outside a workflow run"):
        current_run()
    async with running(make(tmp_path, function_workflow_def(whoami))) as ex:
        run = await ex.start_run("whoami", {"tag": "t1"})
        done = await ex.wait(run.run_id, timeout=5)
        assert done.result == {"run_id": run.run_id, "tag": "t1"} and done.state == {"tag": "t1"}


@async_test
async def test_list_runs_filters_and_pages(tmp_path) -> None:
    async with running(make(tmp_path, Add, Boom, Approval)) as ex:
        ok = await ex.start_run("Add", {"a": 1, "b": 2})
        bad = await ex.start_run("Boom", {"message": "x"})
        waiting = await ex.start_run("Approval", {"who": "w"})
        await ex.wait(ok.run_id, timeout=5)
        await ex.wait(bad.run_id, timeout=5)
        await status_is(ex, waiting.run_id, "paused")

        assert [r.run_id for r in (await ex.list_runs()).runs] == [waiting.run_id, bad.run_id, ok.run_id]
        assert [r.run_id for r in (await ex.list_runs(status="completed")).runs] == [ok.run_id]
        assert [r.run_id for r in (await ex.list_runs(status="error")).runs] == [bad.run_id]
        assert [r.run_id for r in (await ex.list_runs(status="paused")).runs] == [waiting.run_id]
        assert [r.run_id for r in (await ex.list_runs(workflow="Boom")).runs] == [bad.run_id]
        assert (await ex.list_runs(status="cancelled")).runs == []

        first = await ex.list_runs(limit=2)
        assert [r.run_id for r in first.runs] == [waiting.run_id, bad.run_id] and first.next_page_token
        rest = await ex.list_runs(limit=2, page_token=first.next_page_token)
        assert [r.run_id for r in rest.runs] == [ok.run_id] and rest.next_page_token is None
        with pytest.raises(ValidationFailed, match="page token"):
            await ex.list_runs(page_token="garbage")


@async_test
async def test_old_finished_runs_are_pruned(tmp_path) -> None:
    async with running(make(tmp_path, Add, max_finished_runs=2)) as ex:
        ids = []
        for i in range(4):
            run = await ex.start_run("Add", {"a": i})
            await ex.wait(run.run_id, timeout=5)
            ids.append(run.run_id)
        with pytest.raises(NotFoundError):
            await ex.status(ids[0])
        assert [r.run_id for r in (await ex.list_runs()).runs] == [ids[3], ids[2]]
        assert (await ex.status(ids[-1])).result == 3


@async_test
async def test_runs_survive_a_restart_and_in_flight_ones_are_interrupted(tmp_path) -> None:
    async with running(make(tmp_path, Add, Approval)) as ex:
        done = await ex.start_run("Add", {"a": 40, "b": 2})
        await ex.wait(done.run_id, timeout=5)
        flying = await ex.start_run("Approval", {"who": "x"})
        await status_is(ex, flying.run_id, "paused", "approve")
        await ex.signal(flying.run_id, "other", {"kept": True})
    # a new executor on the same data dir: a new app process
    async with running(make(tmp_path, Add, Approval)) as again:
        assert (await again.status(done.run_id)).result == 42
        lost = await again.status(flying.run_id, history=True)
        assert (lost.status, lost.error, lost.waiting_for, lost.running) == (
            "interrupted", INTERRUPTED_ERROR, None, False)
        assert lost.state == {"step": "waiting", "who": "x"}
        assert lost.history[-1]["kind"] == "status" and lost.history[-1]["status"] == "interrupted"
        with pytest.raises(ConflictError, match="interrupted"):
            await again.signal(flying.run_id, "approve")
        assert [r.run_id for r in (await again.list_runs(status="interrupted")).runs] == [flying.run_id]


CRASH_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from tests.plugins.test_asyncio_executor import Approval, make

    async def main():
        ex = make(Path({tmp!r}), Approval)
        await ex.setup()
        run = await ex.start_run("Approval", {{"who": "crash"}})
        while (await ex.status(run.run_id)).status != "paused":
            await asyncio.sleep(0.01)
        print(run.run_id, flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
""")


@async_test
async def test_a_killed_process_leaves_interrupted_runs(tmp_path) -> None:
    script = CRASH_SCRIPT.format(root=str(ROOT), tmp=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    try:
        run_id = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        assert run_id.startswith("run_"), proc.stderr.read() if proc.poll() is not None else run_id
        run_id = run_id.strip()
        # while the other process lives, a new executor on the same dir leaves its run alone
        async with running(make(tmp_path, Approval)) as sibling:
            assert (await sibling.status(run_id)).status == "paused"
            with pytest.raises(ConflictError, match="another process"):
                await sibling.signal(run_id, "approve")
        os.kill(proc.pid, signal.SIGKILL)  # no shutdown code runs: only the next start can tell
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    async with running(make(tmp_path, Approval)) as ex:
        lost = await ex.status(run_id)
        assert (lost.status, lost.error) == ("interrupted", INTERRUPTED_ERROR)


@async_test
async def test_max_concurrent_runs_queue_by_priority(tmp_path) -> None:
    Gate.started = []
    async with running(make(tmp_path, Gate, max_concurrent_runs=1)) as ex:
        first = await ex.start_run("Gate", {"label": "first"})
        await status_is(ex, first.run_id, "paused", "go")
        low = await ex.start_run("Gate", {"label": "low"}, priority=0)
        high = await ex.start_run("Gate", {"label": "high"}, priority=5)
        also_low = await ex.start_run("Gate", {"label": "also_low"}, priority=0)
        assert (low.status, low.waiting_for, high.priority) == ("running", "queue", 5)
        queued = await ex.start_run("Gate", {"label": "cancelled"}, priority=9)
        assert (await ex.cancel(queued.run_id)).status == "cancelled"  # leaves the queue without starting
        await asyncio.sleep(0.05)
        assert Gate.started == ["first"]  # the others wait for the slot
        order = [first, high, low, also_low]
        for run in order:
            await status_is(ex, run.run_id, "paused", "go")
            await ex.signal(run.run_id, "go")
            await ex.wait(run.run_id, timeout=5)
        assert Gate.started == ["first", "high", "low", "also_low"]


@async_test
async def test_schedules_start_runs(tmp_path) -> None:
    every = workflow_def(Add, name="every", schedules=[Schedule(every=0.1, params={"a": 1})])
    cron = workflow_def(Add, name="cron", schedules=[Schedule(cron="* * * * * *", params={"a": 2}, id="each-second")])
    async with running(make(tmp_path, every, cron)) as ex:
        deadline = time.monotonic() + 8
        while True:
            evs = (await ex.list_runs(workflow="every")).runs
            crons = (await ex.list_runs(workflow="cron")).runs
            if len(evs) >= 2 and len(crons) >= 2:  # each schedule fired at least twice
                break
            assert time.monotonic() < deadline, (len(evs), len(crons))
            await asyncio.sleep(0.05)
        assert all(r.params == {"a": 1, "b": 0} for r in evs)
        assert all(r.params == {"a": 2, "b": 0} for r in crons)
        assert evs[0].workflow_id.startswith("every-0-") and crons[0].workflow_id.startswith("each-second-")
        # the cron ticks are a second apart: two runs, not one tick started twice
        assert crons[0].created_at - crons[-1].created_at >= 0.5, [r.created_at for r in crons]
        history = (await ex.status(evs[0].run_id, history=True)).history
        assert history[0]["by"] == "schedule every-0"
        await ex.set_suspended(True)
        await asyncio.sleep(0.05)
        count = len((await ex.list_runs(workflow="every")).runs)
        await asyncio.sleep(0.35)
        assert len((await ex.list_runs(workflow="every")).runs) == count  # suspended: no new runs


@async_test
async def test_bad_schedules_fail_setup(tmp_path) -> None:
    bad_cron = workflow_def(Add, name="x", schedules=[Schedule(cron="every tuesday", params={"a": 1})])
    with pytest.raises(ValidationFailed, match="invalid cron expression 'every tuesday'"):
        await make(tmp_path, bad_cron).setup()
    bad_params = workflow_def(Add, name="y", schedules=[Schedule(every=5, params={"a": "z"})])
    with pytest.raises(ValidationFailed, match="schedule y-0: invalid run_parameters for y: a:"):
        await make(tmp_path, bad_params).setup()
    neither = workflow_def(Add, name="z", schedules=[Schedule(params={"a": 1})])
    with pytest.raises(ValidationFailed, match="exactly one of cron and every"):
        await make(tmp_path, neither).setup()


@async_test
async def test_progress_updates_merge_in_the_history(tmp_path) -> None:
    async with running(make(tmp_path, Ticker)) as ex:
        done = await ex.wait((await ex.start_run("Ticker", {"ticks": 20})).run_id, timeout=5)
        assert done.state == {"count": 20}
        history = (await ex.status(done.run_id, history=True)).history
        states = [h for h in history if h["kind"] == "state"]
        assert [h["values"] for h in states] == [{"count": 20}]  # 20 updates in a row: one event
