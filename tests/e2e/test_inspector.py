"""The real MCP Inspector CLI (npm @modelcontextprotocol/inspector) against deployments, through the gateway."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, PlatformProcess

pytestmark = [pytest.mark.e2e, pytest.mark.network]

MARKER = ROOT / "tests" / "servers" / "marker_server.py"
HELLO = ROOT / "examples" / "hello"


@pytest.fixture(scope="module")
def platform_m(tmp_path_factory, shared_envs):
    p = PlatformProcess(tmp_path_factory.mktemp("inspector"), shared_envs)
    p.start()
    try:
        p.cli_json("deploy", "server", "marker", "--command", sys.executable, "--arg", str(MARKER))
        p.cli_json("deploy", "app", str(HELLO), "--name", "hello")
        yield p
    finally:
        p.stop()


@pytest.fixture
def inspect(platform_m, inspector_cli, tmp_path):
    """Run the inspector CLI against a deployment; returns (exit code, parsed stdout or None, stdout + stderr)."""

    def run(url: str, *args: str, token: str | None = "default", transport: str = "http"):
        token = platform_m.token if token == "default" else token
        headers = [] if token is None else ["--header", f"Authorization: Bearer {token}"]
        # Its own HOME: the inspector writes a catalog under ~/.mcp-inspector.
        env = {"HOME": str(tmp_path), "PATH": "/usr/local/bin:/usr/bin:/bin", "NO_COLOR": "1"}
        result = subprocess.run([*inspector_cli, url, "--transport", transport, *headers, *args],
                                capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
        try:
            parsed = json.loads(result.stdout)
        except ValueError:
            parsed = None
        return result.returncode, parsed, result.stdout + result.stderr

    return run


def test_inspector_lists_and_calls_tools_of_a_stdio_server(platform_m, inspect):
    url = f"{platform_m.url}/servers/marker/mcp"
    code, out, text = inspect(url, "--method", "tools/list")
    assert code == 0, text
    tools = {t["name"]: t for t in out["tools"]}
    assert set(tools) == {"echo", "pid", "block", "die", "garbage"}
    assert tools["echo"]["inputSchema"]["required"] == ["marker"]

    code, out, text = inspect(url, "--method", "tools/call", "--tool-name", "echo", "--tool-arg", "marker=from-inspector")
    assert code == 0, text
    assert out["isError"] is False
    assert json.loads(out["content"][0]["text"])["marker"] == "from-inspector"


def test_inspector_calls_a_native_app(platform_m, inspect):
    url = f"{platform_m.url}/servers/hello/mcp"
    code, out, text = inspect(url, "--method", "tools/call", "--tool-name", "greet", "--tool-arg", "name=inspector")
    assert code == 0, text
    assert out["content"] == [{"type": "text", "text": "Hello, inspector!"}]
    code, out, text = inspect(url, "--method", "tools/call", "--tool-name", "add", "--tool-arg", "a=2", "b=40")
    assert code == 0, text
    assert out["structuredContent"] == {"result": 42}


def test_inspector_over_legacy_sse(platform_m, inspect):
    code, out, text = inspect(f"{platform_m.url}/servers/marker/sse", "--method", "tools/call", "--tool-name", "echo",
                              "--tool-arg", "marker=over-sse", transport="sse")
    assert code == 0, text
    assert json.loads(out["content"][0]["text"])["marker"] == "over-sse"


def test_inspector_without_a_valid_token_or_deployment_is_refused(platform_m, inspect):
    url = f"{platform_m.url}/servers/marker/mcp"
    for token in (None, "mcpac_wrong"):
        code, out, text = inspect(url, "--method", "tools/list", token=token)
        assert code != 0, text
        assert "tools" not in (out or {}), text
        assert "auth" in text.lower(), text  # the 401 sent it to OAuth, which it cannot do without a TTY
    code, out, text = inspect(f"{platform_m.url}/servers/nope/mcp", "--method", "tools/list")
    assert code != 0, text
    assert "404" in text and "no deployment default.nope" in text, text

