"""The ``temporal`` executor against a real Temporal dev server (real time: there is no time-skipping server here):
runs with state and results, signals that reach only their run, pause/resume, cancel, step retries as activity
retries, a second worker finishing what the first started, list pages, schedules firing, priority, errors, and the
platform half running (and restarting) an embedded dev server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from mcp_agent_cloud.errors import ConfigError, ConflictError, NotFoundError, ValidationFailed
from mcp_agent_cloud.hookspecs.types import (
    AppBinding,
    DeploymentRef,
    ExecutorSpec,
    PluginContext,
    RetryPolicy,
    Schedule,
)
from mcp_agent_cloud.plugins import temporal_executor as plugin
from mcp_agent_cloud.plugins.temporal_executor import (
    ExecutorUnavailable,
    TemporalConfig,
    TemporalExecutor,
    TemporalSupervisor,
    temporal_cron,
)
from mcp_agent_cloud.workflows import Workflow
from mcp_agent_cloud.workflows.base import step_def, workflow_def
from tests.conftest import free_port
from tests.contracts import assert_registers, async_test

pytestmark = pytest.mark.temporal


# -- workflows the tests run ----------------------------------------------------------------------------------

CALLS: dict[str, int] = {}


def flaky(key: str, failures: int) -> str:
    """Fails ``failures`` times per key, then succeeds (a sync step: it runs in a worker thread)."""
    CALLS[key] = CALLS.get(key, 0) + 1
    if CALLS[key] <= failures:
        raise ConnectionError(f"attempt {CALLS[key]} of {key} failed")
    return f"ok after {CALLS[key]}"


FLAKY = step_def(flaky, name="flaky", retry=RetryPolicy(max_attempts=3, initial_interval=0.1, backoff=1.0))


async def double(n: int) -> int:
    return n * 2


DOUBLE = step_def(double, name="double")


class Compute(Workflow):
    async def run(self, n: int) -> dict:
        self.update_state(stage="doubling")
        doubled = await self.step(DOUBLE, n)
        await self.sleep(0.2)
        self.update_state(stage="done", doubled=doubled)
        return {"n": n, "doubled": doubled}


class Approval(Workflow):
    async def run(self, who: str) -> dict:
        self.update_state(stage="waiting", who=who)
        decision = await self.wait_for_signal("approve")
        return {"who": who, "decision": decision}


class Ticker(Workflow):
    async def run(self, ticks: int) -> int:
        for i in range(ticks):
            await self.sleep(0.3)
            self.update_state(tick=i + 1)
        return ticks


class Retrying(Workflow):
    async def run(self, key: str, failures: int) -> str:
        return await self.step(FLAKY, key, failures)


class Broken(Workflow):
    async def run(self, message: str) -> None:
        raise ValueError(message)


def triple(n: int) -> int:
    return n * 3


class PlainStep(Workflow):
    async def run(self, n: int) -> int:
        return await self.step(triple, n)  # not an @app.step: run once, found by its module.qualname


class Impatient(Workflow):
    """Waits for a signal with a timeout: a durable timer on Temporal."""

    async def run(self, timeout: float, catch: bool = True) -> str:
        try:
            payload = await self.wait_for_signal("answer", timeout=timeout)
        except TimeoutError as exc:
            if not catch:
                raise
            return f"gave up: {exc}"
        return f"got {payload}"


class Scheduled(Workflow):
    async def run(self, source: str = "") -> str:
        return source


ALL = [Compute, Approval, Ticker, Retrying, Broken, PlainStep]


def binding(tmp_path: Path, *classes: type, schedules: dict[str, list[Schedule]] | None = None) -> AppBinding:
    defs = {}
    for cls in classes:
        defs[cls.__name__] = workflow_def(cls, schedules=(schedules or {}).get(cls.__name__))
    return AppBinding(app_name="t", deployment="default.t", data_dir=tmp_path, workflows=defs,
                      steps={s.name: s for s in (FLAKY, DOUBLE)})


def make(server, tmp_path: Path, *classes: type, queue: str | None = None, **kw) -> TemporalExecutor:
    cfg = TemporalConfig(host=server.address, task_queue=queue or f"test.{uuid.uuid4().hex}", query_timeout=3,
                         heartbeat_timeout=5, shutdown_timeout=1)
    ex = TemporalExecutor(cfg, PluginContext(data_dir=tmp_path))
    ex.spec_name = "temporal"
    ex.bind(binding(tmp_path, *(classes or ALL), **kw))
    return ex


@contextlib.asynccontextmanager
async def running(ex: TemporalExecutor):
    await ex.setup()
    try:
        yield ex
    finally:
        await ex.aclose()


async def until(ex: TemporalExecutor, run_id: str, check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        rec = await ex.status(run_id)
        if check(rec):
            return rec
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} never got there; last: {rec}")
        await asyncio.sleep(0.1)


# -- tests ----------------------------------------------------------------------------------------------------


def test_registers() -> None:
    assert_registers(plugin.mcp_agent_cloud_executors, ExecutorSpec, "temporal", TemporalExecutor, TemporalConfig)
    (spec,) = plugin.mcp_agent_cloud_executors()
    assert spec.supervisor is TemporalSupervisor and spec.requires == ("temporalio",) and spec.extra == "temporal"


def test_entry_point_reaches_the_plugin() -> None:
    from mcp_agent_cloud.manager import PluginManager

    pm = PluginManager()
    pm.load_entry_points()
    assert pm.get_executor("temporal").backend is TemporalExecutor


def test_cron_in_temporal_terms() -> None:
    # Temporal reads 6 fields as minute..weekday + YEAR; ours (like croniter) are second..weekday
    assert temporal_cron("*/5 * * * * *") == "*/5 * * * * * *"
    assert temporal_cron("0 9 * * 1-5") == "0 9 * * 1-5"
    assert temporal_cron("CRON_TZ=Europe/Paris 0 9 * * *") == "CRON_TZ=Europe/Paris 0 9 * * *"
    assert temporal_cron("@every 10s") == "@every 10s"


@async_test
async def test_run_completes_with_state_result_and_history(temporal_server, tmp_path) -> None:
    async with running(make(temporal_server, tmp_path)) as ex:
        started = await ex.start_run("Compute", {"n": 21})
        assert started.status == "running" and started.run_id and started.workflow_id.startswith("Compute-")
        rec = await ex.wait(started.run_id, timeout=30)
        assert rec.status == "completed", rec
        assert rec.result == {"n": 21, "doubled": 42}
        assert rec.state == {"stage": "done", "doubled": 42}
        assert rec.params == {"n": 21} and rec.name == "Compute" and not rec.running
        full = await ex.status(started.run_id, history=True)
        kinds = [h["kind"] for h in full.history]
        assert kinds[0] == "started" and kinds[-1] == "completed" and "step" in kinds, kinds
        assert full.history[0]["by"] == "api"
        # by workflow id: the latest run of it
        assert (await ex.status(workflow_id=started.workflow_id)).run_id == started.run_id


@async_test
async def test_signal_payload_reaches_only_the_named_run(temporal_server, tmp_path) -> None:
    async with running(make(temporal_server, tmp_path)) as ex:
        a = await ex.start_run("Approval", {"who": "ann"})
        b = await ex.start_run("Approval", {"who": "bob"})
        for run in (a, b):
            rec = await until(ex, run.run_id, lambda r: r.status == "paused")
            assert rec.waiting_for == "approve" and rec.state["stage"] == "waiting"
        await ex.signal(a.run_id, "approve", {"ok": True, "by": "carol"})
        done = await ex.wait(a.run_id, timeout=20)
        assert done.status == "completed" and done.result == {"who": "ann", "decision": {"ok": True, "by": "carol"}}
        other = await ex.status(b.run_id)
        assert other.status == "paused" and other.waiting_for == "approve"  # b never saw a's signal
        await ex.signal(b.run_id, "approve", "no")
        assert (await ex.wait(b.run_id, timeout=20)).result == {"who": "bob", "decision": "no"}
        # a finished run takes no more signals, pauses or cancels
        for call in (ex.signal(a.run_id, "approve", 1), ex.pause(a.run_id), ex.cancel(a.run_id)):
            with pytest.raises(ConflictError, match="completed"):
                await call


@async_test
async def test_pause_holds_the_run_until_resume(temporal_server, tmp_path) -> None:
    async with running(make(temporal_server, tmp_path)) as ex:
        run = await ex.start_run("Ticker", {"ticks": 6})
        await until(ex, run.run_id, lambda r: r.state.get("tick", 0) >= 1)
        paused = await ex.pause(run.run_id)
        assert paused.status == "paused" and paused.waiting_for == "resume"
        held = (await until(ex, run.run_id, lambda r: r.status == "paused")).state["tick"]
        await asyncio.sleep(1.5)  # five ticks' worth: a run that ignored the pause would be done
        still = await ex.status(run.run_id)
        assert still.status == "paused" and still.state["tick"] == held < 6
        resumed = await ex.signal(run.run_id, "resume")
        assert resumed.status == "running"
        done = await ex.wait(run.run_id, timeout=20)
        assert done.status == "completed" and done.result == 6 and done.state["tick"] == 6


@async_test
async def test_early_signals_are_kept_and_a_paused_wait_holds_after_its_signal(temporal_server, tmp_path) -> None:
    async with running(make(temporal_server, tmp_path)) as ex:
        early = await ex.start_run("Approval", {"who": "kim"})
        await ex.signal(early.run_id, "approve", "before the wait")  # sent right away, maybe before run() waits
        assert (await ex.wait(early.run_id, timeout=20)).result == {"who": "kim", "decision": "before the wait"}

        run = await ex.start_run("Approval", {"who": "lou"})
        await until(ex, run.run_id, lambda r: r.status == "paused")
        rec = await ex.pause(run.run_id)
        assert (rec.status, rec.waiting_for) == ("paused", "approve")  # still shows what it waits for
        rec = await ex.signal(run.run_id, "approve", "yes")
        assert (rec.status, rec.waiting_for) == ("paused", "resume")  # got it, and holds at the pause point
        await asyncio.sleep(0.5)
        assert (await ex.status(run.run_id)).status == "paused"
        await ex.signal(run.run_id, "resume")
        assert (await ex.wait(run.run_id, timeout=20)).result == {"who": "lou", "decision": "yes"}


@async_test
async def test_wait_for_signal_times_out(temporal_server, tmp_path) -> None:
    async with running(make(temporal_server, tmp_path, Impatient)) as ex:
        caught = await ex.start_run("Impatient", {"timeout": 1})
        uncaught = await ex.start_run("Impatient", {"timeout": 1, "catch": False})
        answered = await ex.start_run("Impatient", {"timeout": 60})
        await until(ex, answered.run_id, lambda r: r.status == "paused" and r.waiting_for == "answer")
        await ex.signal(answered.run_id, "answer", "yes")
        assert (await ex.wait(answered.run_id, timeout=20)).result == "got yes"
        rec = await ex.wait(caught.run_id, timeout=20)
        assert rec.status == "completed" and rec.result == "gave up: no signal 'answer' within 1.0 s", rec
        rec = await ex.wait(uncaught.run_id, timeout=20)
        assert rec.status == "error" and rec.error == "TimeoutError: no signal 'answer' within 1.0 s", rec


@async_test
async def test_cancel(temporal_server, tmp_path) -> None:
    async with running(make(temporal_server, tmp_path)) as ex:
        run = await ex.start_run("Approval", {"who": "dan"})
        await until(ex, run.run_id, lambda r: r.status == "paused")
        rec = await ex.cancel(run.run_id)
        assert rec.status == "cancelled" and not rec.running
        with pytest.raises(ConflictError, match="cancelled"):
            await ex.cancel(run.run_id)
        with pytest.raises(ConflictError):
            await ex.signal(run.run_id, "approve", True)


@async_test
async def test_step_fails_twice_then_succeeds_and_errors_are_reported(temporal_server, tmp_path) -> None:
    key = uuid.uuid4().hex
    async with running(make(temporal_server, tmp_path)) as ex:
        run = await ex.start_run("Retrying", {"key": key, "failures": 2})
        rec = await ex.wait(run.run_id, timeout=30)
        assert rec.status == "completed" and rec.result == "ok after 3" and CALLS[key] == 3
        # three attempts allowed, three failures: the run fails with the step's own error
        key2 = uuid.uuid4().hex
        run = await ex.start_run("Retrying", {"key": key2, "failures": 5})
        rec = await ex.wait(run.run_id, timeout=30)
        assert rec.status == "error" and CALLS[key2] == 3
        assert "step flaky failed" in rec.error and "ConnectionError" in rec.error and "attempt 3" in rec.error
        run = await ex.start_run("PlainStep", {"n": 5})
        assert (await ex.wait(run.run_id, timeout=30)).result == 15
        run = await ex.start_run("Broken", {"message": "it broke"})
        rec = await ex.wait(run.run_id, timeout=30)
        assert rec.status == "error" and rec.error == "ValueError: it broke"


@async_test
async def test_a_second_worker_finishes_what_the_first_started(temporal_server, tmp_path) -> None:
    queue = f"test.{uuid.uuid4().hex}"
    first = make(temporal_server, tmp_path, queue=queue)
    await first.setup()
    try:
        waiting = await first.start_run("Approval", {"who": "eve"})
        ticking = await first.start_run("Ticker", {"ticks": 8})
        await until(first, waiting.run_id, lambda r: r.status == "paused")
        await until(first, ticking.run_id, lambda r: r.state.get("tick", 0) >= 1)
    finally:
        await first.aclose()  # the app process goes away mid-run
    async with running(make(temporal_server, tmp_path, queue=queue)) as second:
        # the new process knows the runs only from the server (no cache): found by run id through visibility
        assert second._run_ids == {}
        rec = await until(second, waiting.run_id, lambda r: r.status == "paused")
        assert rec.state == {"stage": "waiting", "who": "eve"}  # rebuilt by replaying the history
        await second.signal(waiting.run_id, "approve", "yes")
        assert (await second.wait(waiting.run_id, timeout=20)).result == {"who": "eve", "decision": "yes"}
        done = await second.wait(ticking.run_id, timeout=30)
        assert done.status == "completed" and done.result == 8


@async_test
async def test_list_runs_pages_and_filters(temporal_server, tmp_path) -> None:
    async with running(make(temporal_server, tmp_path)) as ex:
        runs = [await ex.start_run("Compute", {"n": i}) for i in range(3)]
        waiting = await ex.start_run("Approval", {"who": "fay"})
        for run in runs:
            await ex.wait(run.run_id, timeout=30)
        await until(ex, waiting.run_id, lambda r: r.status == "paused")
        seen: list = []
        deadline = time.monotonic() + 10  # visibility is eventually consistent
        while len(seen) < 4 and time.monotonic() < deadline:
            page = await ex.list_runs(limit=3)
            seen = list(page.runs)
            if page.next_page_token:
                assert len(page.runs) == 3
                page = await ex.list_runs(limit=3, page_token=page.next_page_token)
                seen += page.runs
            await asyncio.sleep(0.2)
        # Temporal's visibility order: runs in flight first, then the finished ones, last to finish first
        assert seen[0].run_id == waiting.run_id and len(seen) == 4
        assert {r.run_id for r in seen[1:]} == {r.run_id for r in runs}
        assert [r.updated_at for r in seen[1:]] == sorted((r.updated_at for r in seen[1:]), reverse=True)
        completed = await ex.list_runs(status="completed", workflow="Compute")
        assert {r.run_id for r in completed.runs} == {r.run_id for r in runs}
        assert all(r.result == {"n": r.params["n"], "doubled": 2 * r.params["n"]} for r in completed.runs)
        paused = await ex.list_runs(status="paused")
        assert [(r.run_id, r.waiting_for) for r in paused.runs] == [(waiting.run_id, "approve")]
        assert (await ex.list_runs(status="running")).runs == []
        assert await ex.count_active() == 1
        assert (await ex.list_runs(workflow="Broken")).runs == []
        with pytest.raises(ValidationFailed, match="unknown status"):
            await ex.list_runs(status="sleeping")
        await ex.cancel(waiting.run_id)


@async_test
async def test_unknown_runs_and_workflows(temporal_server, tmp_path) -> None:
    async with running(make(temporal_server, tmp_path)) as ex:
        with pytest.raises(NotFoundError, match="not found"):
            await ex.status(str(uuid.uuid4()))
        with pytest.raises(NotFoundError):
            await ex.status("run_not-a-temporal-id")
        with pytest.raises(NotFoundError, match="workflow_id"):
            await ex.status(workflow_id="never-started")
        with pytest.raises(NotFoundError):
            await ex.signal(str(uuid.uuid4()), "resume")
        with pytest.raises(NotFoundError, match="unknown workflow"):
            await ex.start_run("Nope", {})
        # a run of another app (another task queue) on the same server is not this app's to see
        async with running(make(temporal_server, tmp_path)) as other:
            theirs = await other.start_run("Approval", {"who": "gus"})
            with pytest.raises(NotFoundError):
                await ex.status(theirs.run_id)
            with pytest.raises(NotFoundError):
                await ex.status(workflow_id=theirs.workflow_id)
            await other.cancel(theirs.run_id)
        # a workflow id with a run in flight cannot be started again
        run = await ex.start_run("Approval", {"who": "hal"}, workflow_id="approval-hal")
        with pytest.raises(ConflictError, match="approval-hal"):
            await ex.start_run("Approval", {"who": "hal"}, workflow_id="approval-hal")
        await ex.cancel(run.run_id)


@async_test
async def test_priority_reaches_temporal(temporal_server, tmp_path) -> None:
    async with running(make(temporal_server, tmp_path)) as ex:
        run = await ex.start_run("Compute", {"n": 1}, priority=2)
        assert run.priority == 2
        desc = await ex.client.get_workflow_handle(run.workflow_id).describe()
        assert desc.raw_info.priority.priority_key == 1  # higher ours -> lower (sooner) Temporal key
        rec = await ex.wait(run.run_id, timeout=30)
        assert rec.priority == 2 and rec.status == "completed"


@async_test
async def test_priority_orders_queued_runs(temporal_server, tmp_path) -> None:
    from mcp_agent_cloud.plugins.temporal_executor import connect

    ex = make(temporal_server, tmp_path, Compute)
    # runs queued while no worker polls (the app is starting): the server hands out the high-priority one first
    ex._client, ex.task_queue = await connect(ex.config), ex.config.task_queue
    low = [await ex.start_run("Compute", {"n": i}) for i in range(6)]
    high = await ex.start_run("Compute", {"n": 99}, priority=2)
    ex._client = None
    async with running(ex):
        started = {}
        for run in [*low, high]:
            rec = await ex.wait(run.run_id, timeout=60)
            started[run.run_id] = (await ex.status(run.run_id, history=True)).history[0]["ts"]
            assert rec.status == "completed"
    # In FIFO order the high-priority run, queued last, would start last. Temporal's matcher may already have handed
    # the oldest task to its buffer when the worker's first poll arrives, so it can come second, never later.
    assert sorted(started.values()).index(started[high.run_id]) <= 1, started


@async_test
async def test_schedules_fire_and_are_kept_in_step_with_the_app(temporal_server, tmp_path) -> None:
    queue = f"test.{uuid.uuid4().hex}"
    schedules = {"Scheduled": [Schedule(every=1, params={"source": "every"}, id="each-second"),
                               Schedule(cron="*/2 * * * * *", params={"source": "cron"})]}
    ex = make(temporal_server, tmp_path, Scheduled, queue=queue, schedules=schedules)
    try:
        async with running(ex):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                runs = (await ex.list_runs(workflow="Scheduled", status="completed")).runs
                sources = [r.result for r in runs]
                if sources.count("every") >= 2 and sources.count("cron") >= 2:
                    break
                await asyncio.sleep(0.5)
            assert sources.count("every") >= 2 and sources.count("cron") >= 2, sources
            first = await ex.status(runs[0].run_id, history=True)
            assert first.history[0]["by"] in ("schedule each-second", "schedule Scheduled-1"), first.history
            ids = sorted([s.id async for s in await ex.client.list_schedules() if s.id.startswith(queue + ".")])
            assert ids == [f"{queue}.Scheduled-1", f"{queue}.each-second"]
            # a suspended deployment starts no runs: its schedules are paused on the server until it resumes
            await ex.set_suspended(True)
            await asyncio.sleep(1)  # a start already under way may still land
            before = len((await ex.list_runs(workflow="Scheduled")).runs)
            await asyncio.sleep(3)
            assert len((await ex.list_runs(workflow="Scheduled")).runs) == before
            assert (await ex.client.get_schedule_handle(ids[0]).describe()).schedule.state.paused
            await ex.set_suspended(False)
            deadline = time.monotonic() + 10
            while len((await ex.list_runs(workflow="Scheduled")).runs) <= before:
                assert time.monotonic() < deadline, "schedules did not resume"
                await asyncio.sleep(0.3)
        # the next version of the app drops one schedule: setup deletes it from the server
        fewer = make(temporal_server, tmp_path, Scheduled, queue=queue,
                     schedules={"Scheduled": schedules["Scheduled"][:1]})
        async with running(fewer):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                ids = sorted([s.id async for s in await fewer.client.list_schedules() if s.id.startswith(queue)])
                if ids == [f"{queue}.each-second"]:
                    break
                await asyncio.sleep(0.3)
            assert ids == [f"{queue}.each-second"]
            await fewer.client.get_schedule_handle(f"{queue}.each-second").delete()
    finally:
        await ex.aclose()


@async_test
async def test_deleting_a_deployment_removes_its_schedules(temporal_server, tmp_path) -> None:
    name = f"shop{uuid.uuid4().hex[:8]}"
    cfg = TemporalConfig(host=temporal_server.address)
    ex = TemporalExecutor(cfg, PluginContext(tmp_path))
    ex.bind(dataclasses.replace(binding(tmp_path, Scheduled, schedules={"Scheduled": [Schedule(every=3600)]}),
                                deployment=f"acme.{name}"))
    async with running(ex):
        assert ex.task_queue == f"mcpac.acme.{name}"
    sup = TemporalSupervisor(cfg, PluginContext(tmp_path))
    await sup.setup()
    try:
        assert await sup.remove_deployment(DeploymentRef(id="x", org="acme", name=name)) == [
            f"mcpac.acme.{name}.Scheduled-0"]
        assert await sup.remove_deployment(DeploymentRef(id="x", org="acme", name=name)) == []
    finally:
        await sup.aclose()


@async_test
async def test_a_cron_temporal_refuses_is_a_validation_error(temporal_server, tmp_path) -> None:
    ex = make(temporal_server, tmp_path, Scheduled,
              schedules={"Scheduled": [Schedule(cron="every tuesday", params={})]})
    with pytest.raises(ValidationFailed, match="cron"):
        await ex.setup()
    await ex.aclose()


@async_test
async def test_unreachable_server_and_missing_namespace(temporal_server, tmp_path) -> None:
    port = free_port()
    ex = TemporalExecutor(TemporalConfig(host=f"127.0.0.1:{port}", connect_timeout=5), PluginContext(tmp_path))
    ex.bind(binding(tmp_path, Compute))
    with pytest.raises(ExecutorUnavailable, match=f"127.0.0.1:{port}") as err:
        await ex.setup()
    assert "embedded: true" in err.value.hint and err.value.code == "executor_unavailable"
    ex = TemporalExecutor(TemporalConfig(host=temporal_server.address, tls={"ca": str(tmp_path / "missing.pem")}),
                          PluginContext(tmp_path))
    ex.bind(binding(tmp_path, Compute))
    with pytest.raises(ConfigError, match=r"executor.tls.ca: cannot read .*missing.pem"):
        await ex.setup()
    ex = TemporalExecutor(TemporalConfig(host=temporal_server.address, namespace="no-such-ns"),
                          PluginContext(tmp_path))
    ex.bind(binding(tmp_path, Compute))
    with pytest.raises(ConfigError, match="no-such-ns") as err:
        await ex.setup()
    assert "temporal operator namespace create" in err.value.hint
    await ex.aclose()


def test_a_plain_step_function_is_found_by_its_name() -> None:
    # what a fresh app process does when a retry of a `self.step(plain_fn)` reaches it before any run called it
    found = plugin._resolve_function(f"{__name__}.double")
    assert found is not None and found.fn is double
    assert plugin._resolve_function(f"{__name__}.no_such_function") is None
    assert plugin._resolve_function("not_a_loaded_module.fn") is None


def test_config_checks_and_app_env(tmp_path) -> None:
    with pytest.raises(ValueError):
        TemporalConfig(task_queue="bad queue'")
    with pytest.raises(ValueError, match="placeholders"):
        TemporalConfig(task_queue="mcpac.{app}")
    with pytest.raises(ValueError):
        TemporalConfig(host="no-port")
    sup = TemporalSupervisor(TemporalConfig(api_key="s3cret", tls=True), PluginContext(tmp_path))
    sup.spec_name = "temporal"
    env = sup.app_env(DeploymentRef(id="d1", org="acme", name="shop"))
    cfg = json.loads(env["MCPAC_EXECUTOR_CONFIG"])
    assert env["MCPAC_EXECUTOR"] == "temporal"
    assert cfg["task_queue"] == "mcpac.acme.shop" and cfg["api_key"] == "s3cret" and cfg["tls"] is True
    assert TemporalConfig.model_validate(cfg).api_key.get_secret_value() == "s3cret"  # the app half reads it back
    assert "s3cret" not in repr(sup.config)
    (req,) = sup.app_requirements()
    from importlib.metadata import version

    assert req == f"temporalio=={version('temporalio')}"


@async_test
async def test_embedded_dev_server_is_supervised(tmp_path) -> None:
    port = free_port()
    cfg = TemporalConfig(host=f"127.0.0.1:{port}", embedded=True)
    events = []
    sup = TemporalSupervisor(cfg, PluginContext(data_dir=tmp_path / "data", emit=events.append))
    sup.spec_name = "temporal"
    await sup.setup()
    try:
        assert sup.db_file == tmp_path / "data" / "temporal" / "dev.db"
        pid = sup._proc.pid
        assert json.loads(sup.pid_file.read_text())["pid"] == pid
        assert await sup._healthy()
        # a run started before the server dies is still there after the supervisor restarts it (db file)
        ex = TemporalExecutor(TemporalConfig.model_validate(json.loads(sup.app_env(
            DeploymentRef(id="d", org="default", name="emb"))["MCPAC_EXECUTOR_CONFIG"])), PluginContext(tmp_path))
        ex.bind(binding(tmp_path, Approval))
        await ex.setup()
        try:
            assert ex.task_queue == "mcpac.default.emb"
            run = await ex.start_run("Approval", {"who": "ivy"})
            await until(ex, run.run_id, lambda r: r.status == "paused")
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while not (sup.restarts == 1 and sup._proc.pid != pid and await sup._healthy()):
                assert time.monotonic() < deadline, "the dev server was not restarted"
                await asyncio.sleep(0.3)
            assert any(e.type == "executor.temporal.died" for e in events)
            # the app's worker reconnects by itself; the run goes on where it was
            rec = await until(ex, run.run_id, lambda r: r.status == "paused", timeout=60)
            assert rec.waiting_for == "approve"
            await ex.signal(run.run_id, "approve", "after restart")
            assert (await ex.wait(run.run_id, timeout=30)).result == {"who": "ivy", "decision": "after restart"}
        finally:
            await ex.aclose()
        new_pid = sup._proc.pid
    finally:
        await sup.aclose()
    assert not plugin._alive(new_pid) and not sup.pid_file.exists()


@async_test
async def test_embedded_server_left_by_a_crashed_platform_is_adopted(tmp_path) -> None:
    cfg = TemporalConfig(host=f"127.0.0.1:{free_port()}", embedded=True)
    first = TemporalSupervisor(cfg, PluginContext(data_dir=tmp_path))
    await first.setup()
    pid = first._proc.pid
    first._watch.cancel()  # the platform dies without aclose: its server keeps running
    second = TemporalSupervisor(cfg, PluginContext(data_dir=tmp_path))
    try:
        await second.setup()
        assert second._adopted_pid == pid and second._proc is None
    finally:
        await second.aclose()
    assert not plugin._alive(pid)


# -- the MCPApp runtime on temporal, through the workflow tools over a real MCP client -----------------------


@contextlib.asynccontextmanager
async def app_tools(app):
    """The app's ASGI app under uvicorn on a free port and an mcp SDK client on it; yields ``call(tool, args)``
    returning ``(is_error, json_body)``. Leaving stops the server, which runs the executor's aclose."""
    import uvicorn

    from mcp_agent_cloud.client import mcp_client

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app.streamable_http_app(), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                raise RuntimeError(f"uvicorn did not start: {task.exception()!r}")
            await asyncio.sleep(0.01)
        async with mcp_client(f"http://127.0.0.1:{port}/mcp") as client:
            async def call(tool: str, args: dict | None = None):
                result = await client.call_tool(tool, args or {})
                return bool(result.is_error), json.loads("".join(getattr(c, "text", "") for c in result.content))

            yield call
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


@async_test
async def test_mcpapp_workflow_tools_on_temporal(temporal_server, tmp_path, monkeypatch) -> None:
    from mcp_agent_cloud import MCPApp, current_run

    queue = f"test.{uuid.uuid4().hex}"
    monkeypatch.setenv("MCPAC_EXECUTOR", "temporal")
    monkeypatch.setenv("MCPAC_EXECUTOR_CONFIG", json.dumps({"host": temporal_server.address, "task_queue": queue}))
    for var in ("MCPAC_DEPLOYMENT", "MCPAC_APP_DATA_DIR", "MCPAC_CONTROL_TOKEN", "MCPAC_SUSPENDED"):
        monkeypatch.delenv(var, raising=False)
    app = MCPApp(name="demo", data_dir=tmp_path / "data")
    attempts = {"n": 0}

    @app.step(retry=RetryPolicy(max_attempts=3, initial_interval=0.1))
    async def charge(amount: int) -> str:
        attempts["n"] += 1
        if attempts["n"] < 3:
            raise ConnectionError("payment service busy")
        return f"receipt-{amount}"

    @app.workflow
    class Approve(Workflow):
        async def run(self, amount: int, reason: str = "") -> dict:
            self.update_state(stage="waiting", amount=amount)
            decision = await self.wait_for_signal("approve", timeout=120)
            receipt = await self.step(charge, amount)
            return {"decision": decision, "receipt": receipt, "reason": reason}

    @app.async_tool
    async def long_job(n: int) -> dict:
        run = current_run()
        run.update_state(half=n)
        await run.sleep(0.2)
        return {"double": n * 2, "run_id": run.run_id}

    async def until(call, run_id: str, *statuses: str) -> dict:
        deadline = time.monotonic() + 30
        while True:
            is_error, status = await call("workflows-get_status", {"run_id": run_id})
            assert not is_error, status
            if status["status"] in statuses:
                return status
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.1)

    async with app_tools(app) as call:
        assert app.executor.task_queue == queue and isinstance(app.executor, TemporalExecutor)
        is_error, ids = await call("workflows-Approve-run", {"run_parameters": {"amount": 5, "reason": "books"}})
        assert not is_error and ids["execution_id"] == ids["run_id"], ids
        status = await until(call, ids["run_id"], "paused")
        assert (status["waiting_for"], status["state"]) == ("approve", {"stage": "waiting", "amount": 5})
        is_error, listed = await call("workflows-runs-list", {"status": "paused"})
        assert [r["run_id"] for r in listed["runs"]] == [ids["run_id"]], listed
        is_error, _ = await call("workflows-resume", {"run_id": ids["run_id"], "signal_name": "approve",
                                                      "payload": {"approved": True}})
        assert not is_error
        done = await until(call, ids["run_id"], "completed", "error")
        assert done["result"] == {"decision": {"approved": True}, "receipt": "receipt-5", "reason": "books"}, done
        assert attempts["n"] == 3  # the step failed twice, then succeeded (Temporal retried the activity)

        is_error, job = await call("long_job", {"n": 4})
        assert not is_error, job
        finished = await until(call, job["run_id"], "completed")
        assert finished["result"] == {"double": 8, "run_id": job["run_id"]} and finished["state"] == {"half": 4}

        is_error, body = await call("workflows-resume", {"run_id": ids["run_id"]})
        assert is_error and body["error"] == "conflict", body
        is_error, body = await call("workflows-get_status", {"run_id": str(uuid.uuid4())})
        assert is_error and body["error"] == "not_found", body
        is_error, body = await call("workflows-Approve-run", {"run_parameters": {"amount": "lots"}})
        assert is_error and "amount" in body["message"], body


def test_platform_runs_adopts_and_stops_the_embedded_server(tmp_path, shared_envs) -> None:
    """`mcp-agent serve` with `executor: {name: temporal, embedded: true}`: the dev server starts with the platform,
    outlives a SIGKILLed platform (its apps keep their runs), is taken over by the next start and stopped by a
    clean shutdown."""
    from tests.conftest import PlatformProcess, wait_for

    port = free_port()
    p = PlatformProcess(tmp_path, shared_envs,
                        extra_config=f"executor: {{name: temporal, embedded: true, host: '127.0.0.1:{port}'}}\n")
    pid_file = tmp_path / "data" / "temporal" / "dev.pid"
    pid = None
    try:
        p.start(timeout=90)
        pid = json.loads(pid_file.read_text())["pid"]
        assert plugin._alive(pid) and (tmp_path / "data" / "temporal" / "dev.db").exists()
        p.kill()
        assert plugin._alive(pid)  # a crash of the platform does not take the server (and the apps' runs) down
        p.start(timeout=90)
        assert json.loads(pid_file.read_text())["pid"] == pid  # the same server: adopted, not a second one
        p.stop()
        wait_for(lambda: not plugin._alive(pid), timeout=20, what="the dev server to stop with the platform")
        assert not pid_file.exists()
    finally:
        p.stop(signal.SIGKILL)
        if pid is not None and plugin._alive(pid):
            os.kill(pid, signal.SIGKILL)
