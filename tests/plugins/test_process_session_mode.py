"""The process builder carries a stdio deployment's session mode from the build request to the adapter's argv."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio
import pytest

from mcp_agent_cloud.hookspecs.types import BuildRequest, DeploymentRef, PluginContext
from mcp_agent_cloud.plugins.process import ProcessBuilder, ProcessConfig
from mcp_agent_cloud.runtime.ports import wait_port
from tests.conftest import call_tool

TIME_SERVER = str(Path(sys.executable).parent / "mcp-server-time")


def build(tmp_path: Path, mode: str | None, settings: dict | None = None):
    builder = ProcessBuilder(ProcessConfig(envs_dir=tmp_path / "envs", stop_timeout=5),
                             PluginContext(data_dir=tmp_path, settings=settings or {}))
    request = BuildRequest(deployment=DeploymentRef(id="d-t", org="acme", name="t"), version=1, kind="stdio",
                           work_dir=tmp_path / "work", command=TIME_SERVER, args=["--local-timezone", "UTC"],
                           session_mode=mode)

    async def log(line: str) -> None:
        pass

    return builder, anyio.run(builder.build, request, log)


def adapter_flags(cmd: list[str]) -> list[str]:
    """The adapter's own options: everything before the `--` that starts the child's argv."""
    return cmd[:cmd.index("--")]


@pytest.mark.parametrize("mode", ["isolated", "shared"])
def test_mode_reaches_the_adapter_argv(tmp_path: Path, mode: str) -> None:
    builder, artifact = build(tmp_path, mode, {"session_idle_timeout": 600})
    assert artifact.data["session_mode"] == mode  # stored, so restarts and rollbacks keep it
    cmd, _, _ = builder.command_for(artifact, 5555)
    flags = adapter_flags(cmd)
    assert flags[flags.index("--session-mode") + 1] == mode
    # A minute past the gateway's idle timeout: the gateway reaps first, the adapter is the backstop.
    assert flags[flags.index("--idle-timeout") + 1] == "660"
    assert cmd[cmd.index("--") + 1:] == [TIME_SERVER, "--local-timezone", "UTC"]


def test_max_sessions_follow_the_gateway_limit_with_headroom(tmp_path: Path) -> None:
    """The adapter must not refuse sessions the gateway admits: its limit is the gateway's plus headroom."""
    for gateway_limit, expected in ((1000, 1100), (5000, 5500), (20, 36)):
        builder, artifact = build(tmp_path / str(gateway_limit), "isolated",
                                  {"max_sessions_per_deployment": gateway_limit})
        flags = adapter_flags(builder.command_for(artifact, 5555)[0])
        assert int(flags[flags.index("--max-sessions") + 1]) == expected


def test_no_mode_leaves_the_adapter_default(tmp_path: Path) -> None:
    builder, artifact = build(tmp_path, None)
    cmd, _, _ = builder.command_for(artifact, 5555)
    assert "--session-mode" not in adapter_flags(cmd)
    assert "--idle-timeout" not in adapter_flags(cmd)
    assert "--max-sessions" not in adapter_flags(cmd)


def test_the_adapter_accepts_the_argv(tmp_path: Path) -> None:
    """The real adapter started with the builder's argv serves: the flags are ones it knows."""
    builder, artifact = build(tmp_path, "shared", {"session_idle_timeout": 30, "max_sessions_per_deployment": 50})

    async def run() -> str:
        instance = await builder.start(artifact, env={}, log_path=tmp_path / "app.log")
        try:
            deadline = time.monotonic() + 60
            while not await wait_port("127.0.0.1", instance.data["port"], 0.5):
                if time.monotonic() > deadline:
                    pytest.fail("adapter did not listen in 60s:\n" + (tmp_path / "app.log").read_text())
                if not await builder.is_alive(instance):  # e.g. argparse refused a flag: fail now, with its words
                    pytest.fail("adapter exited:\n" + (tmp_path / "app.log").read_text())
            return await call_tool(instance.url, None, "get_current_time", {"timezone": "UTC"})
        finally:
            await builder.stop(instance)

    assert "UTC" in anyio.run(run)
