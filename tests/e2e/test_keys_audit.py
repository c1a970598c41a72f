"""API keys (create, list, revoke; role and scope limits) and the audit log, through a real platform and the CLI.

A key acts as its maker with at most their role and scopes, and is refused at once when revoked; scopes limit it
to the management API, to MCP endpoints, or to one deployment. Every management action lands in the audit log
with who, what, where from and the outcome (refusals too), which only the org's owners read, and which holds no
key or secret value.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time

import anyio
import pytest

from mcp_agent_cloud.client import mcp_client
from tests.conftest import ROOT, PlatformProcess

# One worker for the module: its tests share one platform (two deploys).
pytestmark = [pytest.mark.e2e, pytest.mark.network, pytest.mark.xdist_group("keys_audit")]

HELLO = ROOT / "examples" / "hello"
SECRET = "audit-secret-value-7c1d9e"


@pytest.fixture(scope="module")
def p(tmp_path_factory, shared_envs):
    platform = PlatformProcess(tmp_path_factory.mktemp("keys"), shared_envs)
    platform.start()
    try:
        for name in ("hello", "other"):
            assert platform.cli_json("deploy", "app", str(HELLO), "--name", name)["status"] == "running"
        yield platform
    finally:
        platform.stop()


def key(p: PlatformProcess, *args: str, token: str | None = None) -> dict:
    env = {"MCP_AGENT_CLOUD_TOKEN": token} if token else None
    return p.cli_json("keys", "create", *args, env=env)


def greet(endpoint: str, token: str) -> str:
    async def call() -> str:
        async with mcp_client(endpoint, token) as client:
            result = await client.call_tool("greet", {"name": "key"})
            return result.content[0].text
    return anyio.run(call)


def test_a_key_is_created_listed_used_and_revoked_at_once(p):
    made = key(p, "ci", "--role", "developer", "--expires-in", "2h")
    assert made["key"].startswith("mcpac_") and made["status"] == "active" and made["roles"] == ["developer"]
    assert 7100 < made["expires_at"] - made["created_at"] < 7300
    who = p.api("GET", "/api/v1/whoami", token=made["key"]).json()
    assert who["subject"] == "admin" and who["roles"] == ["developer"] and who["token_id"] == made["id"]
    listed = p.cli("keys", "list", "--json", check=True).stdout
    assert made["id"] in listed and made["key"] not in listed and "token_hash" not in listed
    human = p.cli("keys", "list", check=True).stdout
    assert made["id"] in human and "active" in human
    assert p.api("GET", "/api/v1/deployments", token=made["key"]).status_code == 200
    assert p.cli_json("keys", "revoke", made["id"])["status"] == "revoked"
    # Revoked on this node: refused at once, not after the provider's cache time.
    assert p.api("GET", "/api/v1/deployments", token=made["key"]).status_code == 401
    row = next(r for r in p.cli_json("keys", "list") if r["id"] == made["id"])
    assert row["status"] == "revoked"
    again = p.cli("keys", "revoke", made["id"])
    assert again.returncode == 0, again.stderr  # revoking twice is harmless


def test_bad_key_requests_are_refused_clearly(p):
    bad_scope = p.cli("keys", "create", "x", "--scope", "everything")
    assert bad_scope.returncode != 0 and "unknown scope 'everything'" in bad_scope.stderr, bad_scope.stderr
    bad_time = p.cli("keys", "create", "x", "--expires-in", "forever")
    assert bad_time.returncode != 0 and "not a duration" in bad_time.stderr
    too_long = p.api("POST", "/api/v1/keys", json={"name": "x", "expires_in": 400 * 86400})
    assert too_long.status_code == 400 and "expires_in" in too_long.text
    assert p.api("POST", "/api/v1/keys", token=None, json={"name": "x"}).status_code == 401


def test_a_key_never_has_more_than_its_maker(p):
    developer = p.cli_json("admin", "token", "--org", "default", "--subject", "dev", "--role", "developer")["token"]
    refused = p.api("POST", "/api/v1/keys", token=developer, json={"name": "up", "role": "owner"})
    assert refused.status_code == 403 and "more than your role" in refused.json()["message"]
    viewer = key(p, "ro", "--role", "viewer", token=developer)
    assert viewer["subject"] == "dev" and viewer["roles"] == ["viewer"]
    # A viewer lists and calls, but does not delete.
    assert p.api("GET", "/api/v1/deployments", token=viewer["key"]).status_code == 200
    assert p.api("DELETE", "/api/v1/deployments/hello", token=viewer["key"]).status_code == 403
    assert greet(p.url + "/servers/hello/mcp", viewer["key"]) == "Hello, key!"
    # A developer sees only their own keys; an owner sees every key of the org.
    mine = {r["id"] for r in p.api("GET", "/api/v1/keys", token=developer).json()["keys"]}
    assert viewer["id"] in mine and all(r["subject"] == "dev"
                                        for r in p.api("GET", "/api/v1/keys", token=developer).json()["keys"])
    assert viewer["id"] in {r["id"] for r in p.cli_json("keys", "list")}
    owner_key = key(p, "owner-made")
    assert p.api("DELETE", f"/api/v1/keys/{owner_key['id']}", token=developer).status_code == 404


def test_scopes_limit_a_key_to_mcp_api_or_one_deployment(p):
    mcp_only = key(p, "mcp", "--scope", "mcp")
    assert greet(p.url + "/servers/hello/mcp", mcp_only["key"]) == "Hello, key!"
    refused = p.api("GET", "/api/v1/deployments", token=mcp_only["key"])
    assert refused.status_code == 403 and "scope mcp" in refused.json()["message"]

    api_only = key(p, "api", "--scope", "api")
    assert p.api("GET", "/api/v1/deployments", token=api_only["key"]).status_code == 200
    assert p.api("POST", "/servers/hello/mcp", token=api_only["key"], json={}).status_code == 403

    one = key(p, "one", "--scope", "deployment:hello")
    assert p.api("GET", "/api/v1/deployments/hello", token=one["key"]).status_code == 200
    assert p.api("GET", "/api/v1/deployments/default.hello", token=one["key"]).status_code == 200
    assert greet(p.url + "/servers/hello/mcp", one["key"]) == "Hello, key!"
    for method, path in (("GET", "/api/v1/deployments/other"), ("POST", "/servers/other/mcp"),
                         ("GET", "/api/v1/deployments"), ("GET", "/api/v1/keys"), ("GET", "/metrics")):
        answer = p.api(method, path, token=one["key"], json={} if method == "POST" else None)
        assert answer.status_code == 403, (method, path, answer.text)
    # A scoped key makes keys at most as wide as itself.
    child = p.api("POST", "/api/v1/keys", token=api_only["key"], json={"name": "child"}).json()
    assert child["scopes"] == ["api"]
    wider = p.api("POST", "/api/v1/keys", token=api_only["key"], json={"name": "w", "scopes": ["mcp"]})
    assert wider.status_code == 403


def test_another_org_sees_no_keys_and_no_audit_of_this_one(p):
    mine = key(p, "private")
    acme = p.cli_json("admin", "token", "--org", "acme", "--role", "owner")["token"]
    # acme's log holds only acme's own actions: so far, the making of its token.
    assert [r["action"] for r in p.api("GET", "/api/v1/audit", token=acme).json()["records"]] == ["admin token"]
    assert mine["id"] not in json.dumps(p.api("GET", "/api/v1/keys", token=acme).json())
    assert p.api("DELETE", f"/api/v1/keys/{mine['id']}", token=acme).status_code == 404
    assert p.api("GET", "/api/v1/deployments/default.hello", token=acme).status_code == 403
    records = p.api("GET", "/api/v1/audit", token=acme).json()["records"]
    assert all(r["org"] == "acme" for r in records)
    assert [(r["action"], r["outcome"]) for r in records][0] == ("DELETE /api/v1/keys/{key_id}", "failed")
    # The default org's log has the key's making, and not acme's attempt on it.
    default = p.cli_json("audit", "--action", "/api/v1/keys")
    assert all(r["org"] == "default" for r in default)
    assert not any(r["target"] == f"key_id={mine['id']}" for r in default)


def test_management_actions_are_audited_with_who_what_where_and_outcome(p, tmp_path):
    started = time.time()
    p.cli("admin", "token", "--org", "default", "--subject", "ops", "--role", "viewer", check=True)
    viewer = key(p, "audited-viewer", "--role", "viewer")
    made = key(p, "audited")
    p.cli("keys", "revoke", made["id"], check=True)
    assert p.api("POST", "/api/v1/deployments/hello/stop", token=viewer["key"]).status_code == 403
    result = p.api("PUT", "/api/v1/deployments/hello/secrets/AUDIT__VALUE", json={"value": SECRET})
    assert result.status_code < 300, result.text
    assert p.api("GET", "/api/v1/deployments/hello/secrets/AUDIT__VALUE").status_code == 200
    broken = tmp_path / "broken"
    shutil.copytree(HELLO, broken)
    main = broken / "main.py"  # passes the CLI's checks, then fails at start on the platform
    main.write_text(main.read_text().replace('if __name__ == "__main__":', 'raise SystemExit("no start")\n\n'
                                                                           'if __name__ == "__main__":'))
    bad_deploy = p.cli("deploy", "app", str(broken), "--name", "broken")
    assert bad_deploy.returncode != 0, bad_deploy.stdout

    records = p.cli_json("audit", "-n", "200")
    by_action: dict[str, list[dict]] = {}
    for r in records:
        by_action.setdefault(r["action"], []).append(r)
    created = [r for r in by_action["POST /api/v1/keys"] if r["status"] == 201 and r["created_at"] >= started]
    assert len(created) == 2 and all(r["actor"] == "admin" and r["source"] == "127.0.0.1" and r["outcome"] == "ok"
                           for r in created)
    revoked = by_action["DELETE /api/v1/keys/{key_id}"]
    assert any(r["target"] == f"key_id={made['id']}" and r["outcome"] == "ok" for r in revoked)
    denied = by_action["POST /api/v1/deployments/{name}/stop"]
    assert any(r["outcome"] == "denied" and r["status"] == 403 and r["token_id"] == viewer["id"]
               and r["target"] == "name=hello" for r in denied)
    assert by_action["PUT /api/v1/deployments/{name}/secrets/{key}"][0]["target"] == "name=hello key=AUDIT__VALUE"
    assert by_action["GET /api/v1/deployments/{name}/secrets/{key}"][0]["outcome"] == "ok"  # a value read
    deploys = by_action["POST /api/v1/deployments/{name}/versions"]
    assert any(r["target"] == "name=hello" and r["outcome"] == "ok" for r in deploys)
    # The deploy's answer is a 200 stream whose last line is the error: recorded as failed, with its message.
    assert any(r["target"] == "name=broken" and r["outcome"] == "failed" and r["message"] for r in deploys), deploys
    assert any(r["action"] == "admin token" and r["actor"].startswith("host:") and "subject=ops role=viewer"
               in r["target"] for r in records)
    # Newest first; filters; the human table.
    assert records == sorted(records, key=lambda r: r["id"], reverse=True)
    only = p.cli_json("audit", "--action", "DELETE", "--actor", "admin")
    assert only and all("DELETE" in r["action"] and r["actor"] == "admin" for r in only)
    assert p.cli_json("audit", "--since", "1s", "--action", "no-such-route") == []
    table = p.cli("audit", "-n", "5", check=True).stdout
    assert "WHO" in table and "OUTCOME" in table
    # Only owners read it; it holds no key and no secret value, and neither does the platform's log or registry.
    assert p.api("GET", "/api/v1/audit", token=viewer["key"]).status_code == 403
    dump = json.dumps(records)
    assert made["key"] not in dump and viewer["key"] not in dump and SECRET not in dump
    assert made["key"] not in p.log_path.read_text() and SECRET not in p.log_path.read_text()
    db = sqlite3.connect(p.root / "data" / "registry.db")
    try:
        rows = json.dumps([list(r) for t in ("audit", "tokens", "events")
                           for r in db.execute(f"select * from {t}").fetchall()])  # noqa: S608
    finally:
        db.close()
    assert made["key"] not in rows and viewer["key"] not in rows and SECRET not in rows
