"""End to end: the real CLI against a real `mcp-agent serve`, real venvs, real MCP clients."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import anyio
import httpx
import pytest

from tests.conftest import CLI, ROOT, call_tool, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.network]

HELLO = ROOT / "examples" / "hello"


def deploy_hello(platform, *extra: str, src: Path = HELLO) -> dict:
    return platform.cli_json("deploy", "app", str(src), "--name", "hello", *extra)


def test_deploy_call_and_auth(platform):
    result = deploy_hello(platform)
    assert result["status"] == "running"
    assert result["version"] == 1
    assert result["endpoint"] == f"{platform.url}/servers/hello/mcp"
    assert set(result["tools"]) >= {"greet", "add"}
    assert result["client_config"]["mcpServers"]["hello"]["url"] == result["endpoint"]

    text = anyio.run(call_tool, result["endpoint"], platform.token, "greet", {"name": "cloud"})
    assert text == "Hello, cloud!"

    # The same MCP request without a token, or with a wrong one, is refused before it reaches the app.
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
    headers = {"Accept": "application/json, text/event-stream"}
    r = httpx.post(result["endpoint"], json=body, headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = httpx.post(result["endpoint"], json=body, headers={**headers, "Authorization": "Bearer mcpac_wrong"})
    assert r.status_code == 401
    assert platform.api("GET", "/api/v1/deployments", token=None).status_code == 401
    assert platform.api("GET", "/healthz", token=None).status_code == 200

    listed = platform.cli_json("list")
    assert [d["name"] for d in listed] == ["hello"]
    alias = platform.cli_json("deploy", "agent", "list")
    assert alias == listed
    status = platform.cli_json("status", "hello")
    assert status["serving_version"] == 1 and status["status"] == "running"
    logs = platform.cli("logs", "hello", "--tail", "50", check=True).stdout
    assert "starting version 1" in logs
    # A process-built deployment has no image to export to Kubernetes, and the error says what would.
    r = platform.cli("export", "k8s", "hello")
    assert r.returncode == 1 and "--builder docker" in r.stderr and "process builder" in r.stderr, r.stderr

    # The human output shows the steps, the endpoint and a client snippet.
    plain = platform.cli("deploy", "app", str(HELLO), "--name", "hello", check=True)
    for step in ("validate", "package", "upload", "build", "start", "health_check"):
        assert step in plain.stderr, plain.stderr
    assert "endpoint:" in plain.stdout and "mcpServers" in plain.stdout
    assert "no isolation" in plain.stderr  # the process builder warns the first time
    assert "already on the platform" in plain.stderr  # unchanged code: the upload is skipped
    again = platform.cli("deploy", "app", str(HELLO), "--name", "hello", check=True)
    assert "no isolation" not in again.stderr  # ... only the first time


def test_logs_follow(platform):
    result = deploy_hello(platform)
    follower = subprocess.Popen([CLI, "logs", "hello", "--follow", "--tail", "1"], env=platform.env,
                                stdout=subprocess.PIPE, text=True)
    try:
        # The follow has started once it printed the last line there was: only then call, so the call's log
        # lines come through the follow (and not only as its first tail line, or before it).
        seen = [follower.stdout.readline()]
        anyio.run(call_tool, result["endpoint"], platform.token, "add", {"a": 1, "b": 2})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = follower.stdout.readline()
            seen.append(line)
            if "POST /mcp" in line:  # the app's own access log, written after the follow started
                break
        assert any("POST /mcp" in line for line in seen), seen
    finally:
        follower.kill()
        follower.wait()


def test_stdio_server_from_pypi(platform):
    result = platform.cli_json("deploy", "server", "clock", "--type", "time")
    assert result["status"] == "running"
    assert "get_current_time" in result["tools"]
    text = anyio.run(call_tool, result["endpoint"], platform.token, "get_current_time", {"timezone": "UTC"})
    assert "UTC" in text

    # The explicit form of the same thing.
    result = platform.cli_json("deploy", "server", "clock2", "--command", "mcp-server-time", "--pip",
                               "mcp-server-time")
    text = anyio.run(call_tool, result["endpoint"], platform.token, "get_current_time", {"timezone": "Europe/Paris"})
    assert "Europe/Paris" in text

    # A builder chosen per deploy, with options, through the API: a separate backend, set up and used.
    r = platform.api("POST", "/api/v1/deployments/clock3/versions", json={
        "kind": "stdio", "command": "mcp-server-time", "pip": ["mcp-server-time"],
        "builder": {"name": "process", "stop_timeout": 3}})
    events = [json.loads(line) for line in r.text.splitlines()]
    assert events[-1]["type"] == "result", events[-1]
    assert anyio.run(call_tool, events[-1]["endpoint"], platform.token, "get_current_time", {"timezone": "UTC"})


def test_remote_http_server(platform):
    deploy_hello(platform)
    upstream = platform.instance("hello")["url"]
    # Loopback (where every instance listens, without auth) is refused unless the operator allows it.
    refused = platform.cli("deploy", "server", "mirror", "--url", upstream)
    assert refused.returncode == 1 and "private, loopback or link-local" in refused.stderr
    assert "allow_hosts" in refused.stderr
    assert [d["name"] for d in platform.cli_json("list")] == ["hello"]

    platform.stop()
    platform.config_path.write_text(platform.config_path.read_text() + "remote: {allow_hosts: [127.0.0.1]}\n")
    platform.start()
    wait_for(lambda: platform.cli_json("status", "hello")["serving_version"] == 1, timeout=90, what="hello back")
    upstream = platform.instance("hello")["url"]
    result = platform.cli_json("deploy", "server", "mirror", "--url", upstream)
    assert result["status"] == "running" and "greet" in result["tools"]
    text = anyio.run(call_tool, result["endpoint"], platform.token, "add", {"a": 2, "b": 3})
    assert text == "5"


def test_redeploy_then_rollback(platform, tmp_path):
    src = tmp_path / "hello2"
    shutil.copytree(HELLO, src)
    first = deploy_hello(platform, src=src)
    main = src / "main.py"
    main.write_text(main.read_text().replace('f"Hello, {name}!"', 'f"Hi again, {name}!"'))
    second = deploy_hello(platform, src=src)
    assert second["version"] == first["version"] + 1
    text = anyio.run(call_tool, second["endpoint"], platform.token, "greet", {"name": "v2"})
    assert text == "Hi again, v2!"

    back = platform.cli_json("rollback", "hello")
    assert back["version"] == first["version"]
    text = anyio.run(call_tool, back["endpoint"], platform.token, "greet", {"name": "v1"})
    assert text == "Hello, v1!"
    versions = {v["version"]: v["status"] for v in platform.cli_json("status", "hello")["versions"]}
    assert versions == {1: "serving", 2: "superseded"}

    again = platform.cli_json("rollback", "hello", "--to", "2")
    assert again["version"] == 2
    assert anyio.run(call_tool, again["endpoint"], platform.token, "greet", {"name": "x"}) == "Hi again, x!"


def test_failed_deploy_keeps_old_version_serving(platform, tmp_path):
    src = tmp_path / "hello"
    shutil.copytree(HELLO, src)
    good = deploy_hello(platform, src=src)
    (src / "main.py").write_text("raise RuntimeError('boom at import')\n")
    (src / "mcp_agent.config.yaml").write_text("deploy:\n  entrypoint: main:mcp\n")
    # The entrypoint check is static, so the module still names `mcp`: make it crash at start instead.
    (src / "main.py").write_text("raise RuntimeError('boom at import')\nmcp = None\n")
    bad = platform.cli("deploy", "app", str(src), "--name", "hello")
    assert bad.returncode == 1
    assert "boom at import" in bad.stderr  # the log tail is printed without being asked
    status = platform.cli_json("status", "hello")
    assert status["serving_version"] == good["version"]
    assert status["versions"][-1]["status"] == "failed"
    assert anyio.run(call_tool, good["endpoint"], platform.token, "greet", {"name": "still"}) == "Hello, still!"


def test_crash_restart_and_platform_restart(platform):
    result = deploy_hello(platform)
    pid = _instance_pid(platform)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _instance_pid(platform) not in (None, pid), timeout=90, what="the app to be restarted")
    events = platform.cli_json("events", "hello")
    types = [e["type"] for e in events]
    assert "deployment.crashed" in types and "deployment.restarted" in types
    assert anyio.run(call_tool, result["endpoint"], platform.token, "add", {"a": 1, "b": 1}) == "2"

    # A stopped deployment stays stopped across a restart; a running one comes back.
    platform.cli_json("deploy", "app", str(HELLO), "--name", "paused")
    platform.cli_json("stop", "paused")
    platform.stop()
    platform.start()
    wait_for(lambda: platform.cli_json("status", "hello")["serving_version"] == 1, timeout=90,
             what="hello to serve again after the platform restart")
    assert anyio.run(call_tool, result["endpoint"], platform.token, "greet", {"name": "back"}) == "Hello, back!"
    assert platform.cli_json("status", "paused")["status"] == "stopped"
    r = platform.api("POST", "/servers/paused/mcp", json={})
    assert r.status_code == 503

    # SIGKILL of the platform: its apps die with it (no orphans holding ports), and come back on start.
    old_pid = _instance_pid(platform)
    platform.kill()
    wait_for(lambda: not _alive(old_pid), timeout=30, what="the app to die with the platform")
    platform.start()
    wait_for(lambda: platform.cli_json("status", "hello")["serving_version"] == 1, timeout=90,
             what="hello to serve after SIGKILL of the platform")
    assert anyio.run(call_tool, result["endpoint"], platform.token, "greet", {"name": "again"}) == "Hello, again!"


def _instance_pid(platform) -> int | None:
    import sqlite3

    db = sqlite3.connect(platform.root / "data" / "registry.db")
    try:
        rows = db.execute("select v.instance from versions v join deployments d on d.id = v.deployment_id "
                          "where d.name='hello' and v.status='serving'").fetchall()
    finally:
        db.close()
    for (raw,) in rows:
        if raw:
            pid = json.loads(raw).get("data", {}).get("pid")
            if pid and _alive(pid):
                return pid
    return None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_stop_start_delete(platform):
    result = deploy_hello(platform)
    platform.cli_json("stop", "hello")
    assert platform.cli_json("status", "hello")["status"] == "stopped"
    started = platform.cli_json("start", "hello")
    assert started["status"] == "running"
    assert anyio.run(call_tool, result["endpoint"], platform.token, "add", {"a": 20, "b": 22}) == "42"
    platform.cli_json("delete", "hello")
    assert platform.cli_json("list") == []
    missing = platform.cli("status", "hello")
    assert missing.returncode == 1 and "no deployment" in missing.stderr
    assert not (platform.root / "data" / "deployments" / "default.hello").exists()
