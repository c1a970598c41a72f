"""Lifecycle edge cases: operations queued behind a deploy, failures half-way, restarts mid-deploy, API input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import anyio
import pytest

from tests.conftest import CLI, PlatformProcess, call_tool, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.network]

SLOW_APP = '''import os, pathlib, time

if pathlib.Path(os.environ.get("HANG_FLAG", "/nonexistent")).exists():
    time.sleep(3600)  # a start that never becomes healthy
time.sleep(float(os.environ.get("SLOW", "0")))

from mcp.server.mcpserver import MCPServer

mcp = MCPServer("slow")


@mcp.tool()
def tag() -> str:
    return os.environ.get("TAG", "?")
'''


@pytest.fixture
def slow_app(tmp_path) -> Path:
    src = tmp_path / "slowapp"
    src.mkdir()
    (src / "main.py").write_text(SLOW_APP)
    (src / "requirements.txt").write_text("mcp>=2.3,<3\n")
    return src


def app_processes(platform, name: str) -> list[int]:
    """Launcher processes whose working directory is one of this deployment's versions."""
    root = str(platform.root / "data" / "deployments" / f"default.{name}")
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmd = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if cwd.startswith(root) and b"launcher.py" in cmd and state != "Z":
            pids.append(int(entry.name))
    return pids


def deploy_bg(platform, src: Path, name: str, *env: str) -> subprocess.Popen:
    args = [CLI, "deploy", "app", str(src), "--name", name, "--json"]
    for e in env:
        args += ["--env", e]
    return subprocess.Popen(args, env=platform.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def version_status(platform, name: str) -> dict[int, str]:
    r = platform.cli("status", name, "--json")
    if r.returncode != 0:  # not created yet
        return {}
    return {v["version"]: v["status"] for v in json.loads(r.stdout)["versions"]}


def tag(platform, name: str) -> str:
    endpoint = platform.cli_json("status", name)["endpoint"]
    return anyio.run(call_tool, endpoint, platform.token, "tag", {})


def test_rollback_queued_behind_a_deploy_acts_on_fresh_state(platform, slow_app):
    platform.cli_json("deploy", "app", str(slow_app), "--name", "twin", "--env", "TAG=one")
    deploying = deploy_bg(platform, slow_app, "twin", "SLOW=6", "TAG=two")
    wait_for(lambda: version_status(platform, "twin").get(2) in ("starting", "building"), timeout=60,
             what="version 2 to be on its way")
    # Queued behind the deploy's lock; when it runs, version 2 is the one serving.
    r = platform.cli("rollback", "twin", "--to", "2")
    assert deploying.wait(timeout=120) == 0, deploying.stderr.read()
    assert r.returncode == 1 and "already serving" in r.stderr
    assert tag(platform, "twin") == "two"
    wait_for(lambda: len(app_processes(platform, "twin")) == 1, timeout=20, what="exactly one app process")
    back = platform.cli_json("rollback", "twin")
    assert back["version"] == 1 and tag(platform, "twin") == "one"
    wait_for(lambda: len(app_processes(platform, "twin")) == 1, timeout=20, what="one process after rollback")
    platform.cli_json("stop", "twin")
    wait_for(lambda: app_processes(platform, "twin") == [], timeout=20, what="no process after stop")


def test_stop_then_failed_deploy_stays_stopped_across_restart(platform, slow_app, tmp_path):
    platform.cli_json("deploy", "app", str(slow_app), "--name", "held", "--env", "TAG=one")
    platform.cli_json("stop", "held")
    assert version_status(platform, "held") == {1: "stopped"}
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "main.py").write_text("raise RuntimeError('broken')\nmcp = None\n")
    (broken / "requirements.txt").write_text("mcp>=2.3,<3\n")
    (broken / "mcp_agent.config.yaml").write_text("deploy:\n  entrypoint: main:mcp\n")
    failed = platform.cli("deploy", "app", str(broken), "--name", "held")
    assert failed.returncode == 1 and "broken" in failed.stderr  # the new version's own log tail
    status = platform.cli_json("status", "held")
    assert status["desired_state"] == "stopped" and status["status"] == "stopped"
    platform.stop()
    platform.start()
    time.sleep(2)
    assert platform.cli_json("status", "held")["serving_version"] is None
    assert app_processes(platform, "held") == []

    # A stopped deployment's next deploy supersedes the stopped version, and rollback finds it.
    platform.cli_json("deploy", "app", str(slow_app), "--name", "held", "--env", "TAG=three")
    assert version_status(platform, "held") == {1: "superseded", 2: "failed", 3: "serving"}
    assert platform.cli_json("rollback", "held")["version"] == 1
    assert tag(platform, "held") == "one"


def test_rollback_across_kinds(tmp_path, shared_envs, slow_app):
    other = PlatformProcess(tmp_path / "other", shared_envs)
    p = PlatformProcess(tmp_path / "main", shared_envs, extra_config="remote: {allow_hosts: [127.0.0.1]}\n")
    other.start()
    p.start()
    try:
        other.cli_json("deploy", "app", str(slow_app), "--name", "up", "--env", "TAG=remote")
        url = other.instance("up")["url"]
        p.cli_json("deploy", "app", str(slow_app), "--name", "kinds", "--env", "TAG=app")
        assert p.cli_json("deploy", "server", "kinds", "--url", url)["version"] == 2
        assert tag(p, "kinds") == "remote"
        assert p.cli_json("status", "kinds")["kind"] == "remote"
        assert p.cli_json("rollback", "kinds")["version"] == 1
        assert tag(p, "kinds") == "app"
        status = p.cli_json("status", "kinds")
        assert status["kind"] == "app" and status["builder"] == "process"
        assert p.cli_json("rollback", "kinds", "--to", "2")["version"] == 2
        assert tag(p, "kinds") == "remote"
    finally:
        p.stop()
        other.stop()


def test_restart_that_never_gets_healthy_is_retried_and_leaves_nothing_behind(tmp_path, shared_envs, slow_app):
    p = PlatformProcess(tmp_path, shared_envs, extra_config="limits: {health_timeout: 4}\n")
    p.start()
    try:
        flag = tmp_path / "hang"
        p.cli_json("deploy", "app", str(slow_app), "--name", "flaky", "--env", f"HANG_FLAG={flag}", "--env", "TAG=ok")
        (pid,) = app_processes(p, "flaky")
        flag.touch()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: "deployment.restart_failed" in [e["type"] for e in p.cli_json("events", "flaky")],
                 timeout=60, what="a failed restart")
        assert p.cli_json("status", "flaky")["status"] == "crashed"
        # The hung process was stopped, not left running; at most the current retry's process exists.
        assert len(app_processes(p, "flaky")) <= 1
        flag.unlink()
        wait_for(lambda: p.cli_json("status", "flaky")["status"] == "running", timeout=60,
                 what="a later retry to succeed")
        assert tag(p, "flaky") == "ok"
        wait_for(lambda: len(app_processes(p, "flaky")) == 1, timeout=20, what="exactly one process")
    finally:
        p.stop()


def test_deploy_interrupted_by_a_platform_crash(platform, slow_app):
    deploying = deploy_bg(platform, slow_app, "cut", "SLOW=30")
    wait_for(lambda: version_status(platform, "cut").get(1) == "starting", timeout=90, what="v1 starting")
    platform.kill()
    deploying.wait(timeout=30)
    platform.start()
    wait_for(lambda: version_status(platform, "cut") == {1: "failed"}, timeout=30, what="v1 marked failed")
    status = platform.cli_json("status", "cut")
    assert status["status"] == "failed"
    assert "interrupted" in status["versions"][0]["error"]


def test_api_input_is_checked(platform, slow_app):
    platform.cli_json("deploy", "app", str(slow_app), "--name", "api")
    for path in ("/api/v1/deployments/api/logs?tail=abc", "/api/v1/deployments/api/events?after=x",
                 "/api/v1/deployments/api/events?limit=-1"):
        r = platform.api("GET", path)
        assert r.status_code == 400 and r.json()["error"] == "invalid_request", path
    assert platform.api("GET", "/api/v1/deployments/api/logs?tail=0").text == ""
    r = platform.api("POST", "/api/v1/deployments/api/rollback", json={"to": True})
    assert r.status_code == 400
    r = platform.api("POST", "/api/v1/deployments/api/versions", json={"kind": "stdio", "command": "x",
                                                                       "builder": {"foo": 1}})
    assert r.status_code == 400 and "builder" in r.json()["message"]
    r = platform.api("POST", "/api/v1/deployments/api/versions", json={"kind": "app", "package_sha256": "a" * 64})
    assert r.status_code == 404 and "was not uploaded" in r.json()["message"]
    viewer = platform.cli_json("admin", "token", "--org", "default", "--role", "viewer", "--subject", "v")["token"]
    r = platform.api("POST", "/api/v1/deployments/api/versions", token=viewer, json={"kind": "stdio", "command": "x"})
    assert r.status_code == 403
    assert platform.api("GET", "/api/v1/deployments/api", token=viewer).status_code == 200
    assert platform.api("POST", "/api/v1/deployments/api/stop", token=viewer).status_code == 403
    providers = platform.api("GET", "/api/v1/auth/providers", token=None).json()["providers"]
    assert [p["name"] for p in providers] == ["builtin"]


def test_call_on_a_stopped_deployment_says_why(platform, slow_app):
    platform.cli_json("deploy", "app", str(slow_app), "--name", "quiet")
    platform.cli_json("stop", "quiet")
    r = platform.cli("call", "quiet", "tag")
    assert r.returncode == 1 and "not serving" in r.stderr and "mcp-agent start quiet" in r.stderr
    assert "Traceback" not in r.stderr
