"""The CLI's other commands against a real platform: auth, init, plugins, config, OpenAPI, a third-party plugin."""

from __future__ import annotations

import json
import os
import stat

import pytest

from tests.conftest import ROOT, PlatformProcess
from tests.example_plugin_util import example_plugin_installed

pytestmark = [pytest.mark.e2e]



def test_auth_login_status_logout(platform):
    auth = platform.home / "auth.json"
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    token = platform.token
    who = platform.cli_json("deploy", "auth", "status")
    assert who["org"] == "default" and "owner" in who["roles"] and who["api_url"] == platform.url

    assert platform.cli_json("deploy", "auth", "logout") == {"logged_out": True, "revoked": False}  # a plain token
    assert not auth.exists()
    r = platform.cli("list")
    assert r.returncode == 1 and "auth login" in r.stderr

    r = platform.cli("deploy", "auth", "login", "--token", "mcpac_not-a-real-token", "--api-url", platform.url)
    assert r.returncode == 1 and not auth.exists()
    logged = platform.cli_json("deploy", "auth", "login", "--token", token, "--api-url", platform.url)
    assert logged["org"] == "default"
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    assert json.loads(auth.read_text())["access_token"] == token
    assert platform.cli_json("list") == []
    env = {"MCP_AGENT_CLOUD_AUTH_URL": "http://auth.example.internal"}
    assert platform.cli_json("auth", "status", env=env)["auth_url"] == "http://auth.example.internal"
    assert platform.cli_json("auth", "status")["auth_url"] == platform.url
    # `mcp-agent auth` is the same group.
    assert platform.cli_json("auth", "status")["subject"] == "admin"


def test_token_is_not_in_logs_or_events(platform):
    token = platform.token
    platform.cli_json("list")
    for path in [platform.log_path, *(platform.root / "data").rglob("*.jsonl")]:
        assert token not in path.read_text(errors="replace"), path
    assert token.encode() not in (platform.root / "data" / "registry.db").read_bytes()


def test_init_scaffolds_the_example(platform, tmp_path):
    out = platform.cli_json("init", str(tmp_path / "myapp"))
    assert sorted(out["files"]) == sorted(p.name for p in (ROOT / "examples" / "hello").iterdir()
                                          if p.is_file())
    assert (tmp_path / "myapp" / "main.py").read_text() == (ROOT / "examples" / "hello" / "main.py").read_text()
    r = platform.cli("init", str(tmp_path / "myapp"))
    assert r.returncode == 1 and "not empty" in r.stderr


def test_plugins_list_and_config_show(platform):
    rows = platform.cli_json("plugins", "list")["plugins"]
    kinds = {(r["kind"], r["name"]): r for r in rows}
    for key in [("packager", "tarball"), ("builder", "process"), ("registry", "sqlite"), ("executor", "asyncio"),
                ("secrets", "local"), ("auth", "builtin"), ("telemetry", "console"), ("telemetry", "jsonl"),
                ("server_type", "time")]:
        assert key in kinds, key
        assert kinds[key]["distribution"] == "mcp-agent-cloud" and kinds[key]["version"]

    shown = platform.cli_json("config", "show")
    assert shown["file"] == str(platform.config_path)
    assert shown["config"]["builder"]["name"] == "process"
    assert shown["sources"]["listen"].startswith(str(platform.config_path) + ":")
    assert shown["sources"]["registry"] == "default"
    env_shown = platform.cli_json("config", "show", env={"MCP_AGENT_CLOUD_LOG_LEVEL": "debug"})
    assert env_shown["config"]["log_level"] == "debug"
    assert env_shown["sources"]["log_level"] == "env MCP_AGENT_CLOUD_LOG_LEVEL"
    assert platform.cli_json("config", "validate")["valid"] is True


def test_openapi_document(platform):
    r = platform.api("GET", "/api/v1/openapi.json", token=None)
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    assert "DeployRequest" in doc["components"]["schemas"]
    routes = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert ("POST", "/api/v1/deployments/{name}/versions") in routes
    assert ("POST", "/servers/{name}/mcp") in routes
    # Every documented non-public route refuses an anonymous caller.
    for method, path in routes:
        public = "security" not in doc["paths"][path][method.lower()]
        if public:
            continue
        concrete = path.replace("{name}", "x").replace("{sha256}", "0" * 64)
        assert platform.api(method, concrete, token=None).status_code == 401, (method, path)


@pytest.mark.xdist_group("example_plugin")  # it installs the example plugin into the shared venv, as test_example_plugin
def test_third_party_plugin_selected_by_name(tmp_path, shared_envs):
    """The example plugin package, pip-installed, is selected in the config and receives the deploy events."""
    events = tmp_path / "recorded.jsonl"
    with example_plugin_installed():
        p = PlatformProcess(tmp_path, shared_envs, extra_config="")
        p.config_path.write_text(p.config_path.read_text().replace(
            "telemetry: [jsonl]", f"telemetry: [jsonl, {{name: recorder, path: {events}}}]"))
        p.start()
        try:
            rows = p.cli_json("plugins", "list")["plugins"]
            mine = [r for r in rows if r["name"] == "recorder"]
            assert mine and mine[0]["distribution"] == "mcp-agent-cloud-example-plugin"
            assert "hello from the example plugin" in p.cli("example-hello", check=True).stdout
            p.cli_json("deploy", "app", str(ROOT / "examples" / "hello"), "--name", "hello")
        finally:
            p.stop()
        recorded = [json.loads(line) for line in events.read_text().splitlines()]
        assert {"platform.bootstrap", "platform.started", "deployment.created", "deployment.started"} <= {
            e["type"] for e in recorded}
        steps = {e["step"] for e in recorded if e["type"] == "deploy.step" and e["status"] == "ok"}
        assert steps == {"unpack", "build", "start", "health_check", "route"}
        # The call-all hooks ran in the platform: lifecycle events and a context manager around every step.
        hooks = (tmp_path / "data" / "example-plugin-hooks.log").read_text().splitlines()
        assert "lifecycle deployment.created hello" in hooks and "lifecycle deployment.started hello" in hooks
        wrapped = [line.split()[1] for line in hooks if line.startswith("step ") and line.endswith("s")]
        assert wrapped == ["unpack", "build", "start", "health_check", "route"], hooks


def test_env_var_points_cli_at_platform(platform, tmp_path):
    other_home = tmp_path / "elsewhere"
    other_home.mkdir()
    env = {"MCP_AGENT_CLOUD_HOME": str(other_home), "MCP_AGENT_CLOUD_API_URL": platform.url,
           "MCP_AGENT_CLOUD_TOKEN": platform.token}
    assert platform.cli_json("list", env=env) == []
    bad = platform.cli("list", env={**env, "MCP_AGENT_CLOUD_API_URL": "http://127.0.0.1:9"})
    assert bad.returncode == 1 and "cannot reach the platform" in bad.stderr
    assert os.environ.get("MCP_AGENT_CLOUD_API_URL") is None


def test_configure_sets_url_and_default_org(platform):
    data = platform.cli_json("configure", "--api-url", platform.url, "--org", "acme")
    assert data["api_url"] == platform.url and data["org"] == "acme"
    # The token is for org `default`; short names now mean acme's deployments, which it may not see.
    r = platform.cli("status", "hello")
    assert r.returncode == 1 and "belongs to org 'acme'" in r.stderr
    platform.cli_json("configure", "--org", "default")
    r = platform.cli("status", "hello")
    assert r.returncode == 1 and "no deployment default.hello" in r.stderr
