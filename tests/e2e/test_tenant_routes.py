"""Every route of the platform, enumerated from the app's own routing table, against a real platform: without a
token each answers 401 (the public ones excepted), and with another org's token nothing of this org is reachable:
routes naming one of its objects answer 403 or 404, and routes that list show none of it."""

from __future__ import annotations

import re

import httpx
import pytest
from starlette.routing import Mount, Route

from mcp_agent_cloud.config import PlatformConfig
from mcp_agent_cloud.manager import load_plugin_manager
from mcp_agent_cloud.platform.app import PUBLIC_PATHS, PUBLIC_PREFIXES, build_app
from mcp_agent_cloud.platform.service import Platform
from tests.conftest import ROOT, PlatformProcess

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("tenant_routes")]

HELLO = ROOT / "examples" / "hello"


def routing_table() -> list[tuple[str, str]]:
    """(method, path template) of every route the platform's app serves (Mounts' own routes included)."""
    app = build_app(Platform(PlatformConfig(), load_plugin_manager()))
    found: list[tuple[str, str]] = []

    def walk(routes, prefix: str = "") -> None:
        for route in routes:
            if isinstance(route, Route):
                for method in sorted(route.methods or {"GET"}):
                    if method != "HEAD" or route.path.startswith("/api/v1/packages/"):
                        found.append((method, prefix + route.path))
            elif isinstance(route, Mount) and route.routes:
                walk(route.routes, prefix + route.path)
    walk(app.router.routes)
    return sorted(set(found))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_envs):
    p = PlatformProcess(tmp_path_factory.mktemp("tenants"), shared_envs)
    p.start()
    try:
        deployed = p.cli_json("deploy", "app", str(HELLO), "--name", "hello")
        key = p.cli_json("keys", "create", "mine")
        p.api("PUT", "/api/v1/deployments/hello/secrets/MY_SECRET", json={"value": "v"}).raise_for_status()
        versions = p.api("GET", "/api/v1/deployments/hello/versions").json()["versions"]
        other = p.cli_json("admin", "token", "--org", "acme", "--role", "owner")["token"]
        yield p, {"deployed": deployed, "key_id": key["id"], "sha256": versions[0]["package_sha256"]}, other
    finally:
        p.stop()


def concrete(path: str, facts: dict) -> str:
    values = {"name": "default.hello", "deployment": "default.hello", "key_id": facts["key_id"],
              "sha256": facts["sha256"], "key": "MY_SECRET", "workflow": "greet", "run_id": "run-of-default",
              "action": "resume", "path": ""}
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values.get(m.group(1), "x"), path)


def public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def call(p: PlatformProcess, method: str, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    kw = {}
    if method in ("POST", "PUT", "PATCH"):
        kw["json"] = {}
    if path.endswith("/mcp") or path.endswith("/mcp/"):
        headers["Accept"] = "application/json, text/event-stream"
        kw["json"] = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    return httpx.request(method, p.url + path, headers=headers, timeout=30, **kw)


def test_the_routing_table_is_what_the_tests_walk():
    table = routing_table()
    assert ("POST", "/api/v1/keys") in table and ("POST", "/servers/{name}/mcp") in table
    assert ("GET", "/api/v1/audit") in table and ("POST", "/oauth/token") in table
    assert len(table) > 50


def test_every_route_needs_a_token_and_another_orgs_token_reaches_nothing(setup):
    p, facts, other = setup
    checked = 0
    for method, template in routing_table():
        if public(template):
            continue
        path = concrete(template, facts)
        anonymous = call(p, method, path, None)
        assert anonymous.status_code == 401, (method, template, anonymous.status_code, anonymous.text[:200])
        assert anonymous.headers.get("www-authenticate", "").startswith("Bearer"), (method, template)
        answer = call(p, method, path, other)
        names_ours = any(f"{{{k}" in template for k in ("name", "deployment", "key_id", "sha256", "run_id"))
        if names_ours:
            assert answer.status_code in (403, 404), (method, template, answer.status_code, answer.text[:300])
        else:
            assert answer.status_code < 500, (method, template, answer.status_code, answer.text[:300])
        if template == "/api/v1/audit":  # acme's own log, which holds acme's attempts above (their paths)
            assert answer.status_code == 200 and {r["org"] for r in answer.json()["records"]} == {"acme"}
            checked += 1
            continue
        # Whatever the answer, nothing of the default org is in it.
        for secret in ("default.hello", facts["key_id"], facts["sha256"], facts["deployed"]["endpoint"]):
            assert secret not in answer.text or answer.status_code in (403, 404) and secret in path, \
                (method, template, secret, answer.text[:300])
        checked += 1
    assert checked > 45
