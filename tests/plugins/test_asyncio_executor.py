"""The ``asyncio`` executor: results, errors, signals that reach only their run, cancel and listing."""

from __future__ import annotations

import asyncio

import pytest

from mcp_agent_cloud.errors import ConflictError, NotFoundError, ValidationFailed
from mcp_agent_cloud.hookspecs.types import ExecutorSpec, PluginContext
from mcp_agent_cloud.plugins import asyncio_executor as plugin
from mcp_agent_cloud.plugins.asyncio_executor import AsyncioExecutor, AsyncioExecutorConfig, RunContext
from tests.contracts import assert_registers, async_test, eventually


def make_executor(tmp_path, **options) -> AsyncioExecutor:
    return AsyncioExecutor(AsyncioExecutorConfig(**options), PluginContext(data_dir=tmp_path))


async def add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


async def boom(message: str) -> None:
    raise RuntimeError(message)


async def approval(run: RunContext, who: str) -> dict:
    run.update_state(step="waiting", who=who)
    payload = await run.wait_for_signal("approve")
    run.update_state(step="done")
    return {"who": who, "payload": payload, "run_id": run.run_id}


def test_hook_registers_asyncio() -> None:
    assert_registers(plugin.mcp_agent_cloud_executors, ExecutorSpec, "asyncio", AsyncioExecutor, AsyncioExecutorConfig)


@async_test
async def test_run_completes_with_its_result(tmp_path) -> None:
    ex = make_executor(tmp_path)
    started = await ex.start_run("adder", add, {"a": 2, "b": 3})
    assert started.status == "running"
    assert started.run_id.startswith("run_") and len(started.run_id) > 10
    assert started.workflow_id.startswith("adder-") and started.workflow_id != "adder-"
    done = await ex.wait(started.run_id, timeout=5)
    assert (done.status, done.result, done.error) == ("completed", 5, None)
    assert await ex.status(started.run_id) == done
    named = await ex.start_run("adder", add, {"a": 1, "b": 1}, workflow_id="wf-1")
    assert named.workflow_id == "wf-1" and named.run_id != started.run_id


@async_test
async def test_error_run_records_the_error(tmp_path) -> None:
    ex = make_executor(tmp_path)
    run = await ex.start_run("bad", boom, {"message": "it broke"})
    done = await ex.wait(run.run_id, timeout=5)
    assert done.status == "error"
    assert done.error == "RuntimeError: it broke" and done.result is None
    # wrong params are the run's error too, not the caller's crash
    wrong = await ex.wait((await ex.start_run("adder", add, {"a": 1})).run_id, timeout=5)
    assert wrong.status == "error" and "TypeError" in wrong.error


@async_test
async def test_signal_reaches_only_the_named_run(tmp_path) -> None:
    ex = make_executor(tmp_path)
    first = await ex.start_run("approval", approval, {"who": "first"})
    second = await ex.start_run("approval", approval, {"who": "second"})

    async def paused(run_id: str) -> bool:
        return (await ex.status(run_id)).status == "paused"

    for rid in (first.run_id, second.run_id):
        await eventually(lambda rid=rid: ex._runs[rid].record.status == "paused", what=f"{rid} paused")
        assert await paused(rid)
    assert (await ex.status(first.run_id)).state == {"step": "waiting", "who": "first"}

    await ex.signal(second.run_id, "approve", {"ok": True})
    done = await ex.wait(second.run_id, timeout=5)
    assert done.status == "completed"
    assert done.result == {"who": "second", "payload": {"ok": True}, "run_id": second.run_id}
    assert done.state["step"] == "done"

    await asyncio.sleep(0.05)  # give a misdelivered signal time to wake the other run
    assert await paused(first.run_id)
    await ex.signal(first.run_id, "approve", "later")
    assert (await ex.wait(first.run_id, timeout=5)).result["payload"] == "later"

    with pytest.raises(ConflictError):
        await ex.signal(first.run_id, "approve")


@async_test
async def test_signal_sent_before_the_wait_is_kept_and_status_returns_to_running(tmp_path) -> None:
    ex = make_executor(tmp_path)
    gate = asyncio.Event()
    seen: list[str] = []

    async def flow(run: RunContext) -> str:
        await gate.wait()
        payload = await run.wait_for_signal("go", timeout=5)
        seen.append((await ex.status(run.run_id)).status)  # back to running once the signal arrived
        await gate.wait()
        return payload

    run = await ex.start_run("flow", flow, {})
    await ex.signal(run.run_id, "go", "early")
    gate.set()
    assert (await ex.wait(run.run_id, timeout=5)).result == "early"
    assert seen == ["running"]


@async_test
async def test_wait_for_signal_timeout(tmp_path) -> None:
    ex = make_executor(tmp_path)

    async def flow(run: RunContext) -> None:
        await run.wait_for_signal("never", timeout=0.01)

    done = await ex.wait((await ex.start_run("flow", flow, {})).run_id, timeout=5)
    assert done.status == "error" and done.error.startswith("TimeoutError")


@async_test
async def test_run_context_only_for_functions_that_ask(tmp_path) -> None:
    ex = make_executor(tmp_path)

    async def plain(**kwargs) -> dict:
        return kwargs

    done = await ex.wait((await ex.start_run("plain", plain, {"x": 1})).run_id, timeout=5)
    assert done.result == {"x": 1}  # **kwargs is not a parameter named run
    with pytest.raises(ValidationFailed):
        await ex.start_run("approval", approval, {"who": "x", "run": "mine"})


@async_test
async def test_cancel(tmp_path) -> None:
    ex = make_executor(tmp_path)
    stopped = asyncio.Event()

    async def forever(run: RunContext) -> None:
        try:
            await run.wait_for_signal("never")
        finally:
            stopped.set()

    run = await ex.start_run("forever", forever, {})
    await eventually(lambda: ex._runs[run.run_id].record.status == "paused", what="paused")
    await ex.cancel(run.run_id)
    assert stopped.is_set()
    assert (await ex.status(run.run_id)).status == "cancelled"
    await ex.cancel(run.run_id)  # cancelling a finished run is harmless
    assert (await ex.status(run.run_id)).status == "cancelled"


@async_test
async def test_list_runs_filters_by_status(tmp_path) -> None:
    ex = make_executor(tmp_path)
    ok = await ex.start_run("adder", add, {"a": 1, "b": 2})
    bad = await ex.start_run("bad", boom, {"message": "x"})
    waiting = await ex.start_run("approval", approval, {"who": "w"})
    await ex.wait(ok.run_id, timeout=5)
    await ex.wait(bad.run_id, timeout=5)
    await eventually(lambda: ex._runs[waiting.run_id].record.status == "paused", what="paused")

    assert [r.run_id for r in await ex.list_runs()] == [waiting.run_id, bad.run_id, ok.run_id]
    assert [r.run_id for r in await ex.list_runs(status="completed")] == [ok.run_id]
    assert [r.run_id for r in await ex.list_runs(status="error")] == [bad.run_id]
    assert [r.run_id for r in await ex.list_runs(status="paused")] == [waiting.run_id]
    assert await ex.list_runs(status="cancelled") == []
    assert len(await ex.list_runs(limit=2)) == 2
    await ex.aclose()
    assert (await ex.status(waiting.run_id)).status == "cancelled"


@async_test
async def test_status_returns_snapshots_and_old_runs_are_pruned(tmp_path) -> None:
    ex = make_executor(tmp_path, max_finished_runs=2)
    ids = []
    for i in range(4):
        run = await ex.start_run("adder", add, {"a": i, "b": 0})
        await ex.wait(run.run_id, timeout=5)
        ids.append(run.run_id)
    snapshot = await ex.status(ids[-1])
    snapshot.state["x"] = 1
    assert (await ex.status(ids[-1])).state == {}
    await ex.start_run("adder", add, {"a": 9, "b": 9})  # pruning happens when a run starts
    with pytest.raises(NotFoundError):
        await ex.status(ids[0])
    assert (await ex.status(ids[-1])).result == 3


@async_test
async def test_unknown_run_id(tmp_path) -> None:
    ex = make_executor(tmp_path)
    for call in (ex.status("run_nope"), ex.signal("run_nope", "x"), ex.cancel("run_nope"), ex.wait("run_nope")):
        with pytest.raises(NotFoundError, match="run_nope"):
            await call
