"""The catalog against a real platform: publish and unpublish from the CLI, the listing and its search in the API,
calls into a public deployment by users of another org (and not into a private one), the dependency graph an app
declares, and delete or unpublish refused while others depend on a public server."""

from __future__ import annotations

import base64
import json
import shutil

import anyio
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import ROOT, PlatformProcess

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("catalog")]

HELLO = ROOT / "examples" / "hello"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>'


@pytest.fixture(scope="module")
def cat(tmp_path_factory, shared_envs):
    p = PlatformProcess(tmp_path_factory.mktemp("catalog"), shared_envs)
    p.start()
    try:
        p.cli_json("deploy", "app", str(HELLO), "--name", "greeter")
        p.acme = p.cli_json("admin", "token", "--org", "acme", "--role", "owner")["token"]
        p.acme_viewer = p.cli_json("admin", "token", "--org", "acme", "--role", "viewer")["token"]
        p.dev = p.cli_json("admin", "token", "--org", "default", "--role", "developer")["token"]
        yield p
    finally:
        p.stop()


def as_org(p: PlatformProcess, token: str) -> dict:
    return {"MCP_AGENT_CLOUD_TOKEN": token}


def call(p: PlatformProcess, name: str, token: str, tool: str = "greet", arguments: dict | None = None):
    return p.api("POST", f"/servers/{name}/call_tool", token=token,
                 json={"name": tool, "arguments": arguments or {"name": "catalog"}})


def app_using(tmp_path, name: str, uses: list[str]):
    """examples/hello under another name, declaring in its config the deployments it uses."""
    app = tmp_path / name
    shutil.copytree(HELLO, app)
    config = app / "mcp_agent.config.yaml"
    text = config.read_text()
    assert "\ndeploy:\n" in text
    config.write_text(text.replace("\ndeploy:\n", "\ndeploy:\n  uses: " + json.dumps(uses) + "\n", 1))
    return app


def test_publish_lists_it_and_another_org_can_call_it(cat, tmp_path):
    p = cat
    # Private: another org's user can neither find nor call it.
    assert p.api("GET", "/api/v1/catalog", token=p.acme).json()["entries"] == []
    assert p.api("GET", "/api/v1/catalog/@default/greeter", token=p.acme).status_code == 404
    assert call(p, "@default/greeter", p.acme).status_code == 403

    icon = tmp_path / "icon.svg"
    icon.write_bytes(SVG)
    example = tmp_path / "example.md"
    example.write_text("Ask it: greet(name='Ada')\n")
    entry = p.cli_json("publish", "greeter", "--description", "Greets anyone by name", "--icon", str(icon),
                       "--example-file", str(example))
    assert entry["address"] == "@default/greeter" and entry["name"] == "default.greeter"
    assert entry["endpoint"] == f"{p.url}/servers/@default/greeter/mcp"
    assert entry["icon"] == "data:image/svg+xml;base64," + base64.b64encode(SVG).decode()

    # Found by another org, by words of its description, and not by words it lacks.
    listed = p.api("GET", "/api/v1/catalog", token=p.acme, params={"q": "greets NAME"}).json()["entries"]
    assert [e["address"] for e in listed] == ["@default/greeter"]
    assert p.api("GET", "/api/v1/catalog", token=p.acme, params={"q": "weather"}).json()["entries"] == []
    detail = p.api("GET", "/api/v1/catalog/@default/greeter", token=p.acme).json()
    versions = p.api("GET", "/api/v1/deployments/greeter/versions").json()
    assert detail["example"] == "Ask it: greet(name='Ada')\n"
    assert [v["version"] for v in detail["versions"]] == [v["version"] for v in versions["versions"]] == [1]
    assert detail["package_sha256"] == versions["versions"][0]["package_sha256"]

    # Another org's viewer calls it through its public address, over the REST bridge and with the MCP SDK.
    answer = call(p, "@default/greeter", p.acme_viewer)
    assert answer.status_code == 200 and "catalog" in json.dumps(answer.json()), answer.text

    async def sdk() -> str:
        import httpx

        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {p.acme}"}) as http:
            async with streamable_http_client(entry["endpoint"], http_client=http) as (read, write, *_):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    result = await session.call_tool("greet", {"name": "sdk"})
                    return result.content[0].text
    assert "sdk" in anyio.run(sdk)
    # ... but nothing else of it: not its logs, status, secrets, or a deploy over it.
    for method, path in (("GET", "/api/v1/deployments/default.greeter"),
                         ("GET", "/api/v1/deployments/default.greeter/logs"),
                         ("GET", "/api/v1/deployments/default.greeter/secrets"),
                         ("POST", "/api/v1/deployments/default.greeter/stop")):
        assert p.api(method, path, token=p.acme).status_code == 403, path

    # Its own org calls it too; usage counts each caller once (both acme tokens are acme's admin).
    assert call(p, "greeter", p.token).status_code == 200
    # The CLI shows it with usage from the calls above.
    shown = p.cli("catalog", "show", "@default/greeter", env=as_org(p, p.acme), check=True).stdout
    assert "Greets anyone by name" in shown and "package sha256" in shown
    usage = p.cli_json("catalog", "show", "@default/greeter")["usage"]
    assert (usage["calls"], usage["errors"], usage["callers"]) == (3, 0, 2), usage
    assert [b["calls"] for b in usage["buckets"]] in ([3], [1, 2], [2, 1]), usage  # an hour may turn meanwhile
    table = p.cli("catalog", "greets", env=as_org(p, p.acme), check=True).stdout
    assert "@default/greeter" in table


def test_an_apps_declared_dependencies_hold_a_public_server(cat, tmp_path):
    p = cat
    p.cli_json("publish", "greeter")
    app = app_using(tmp_path, "front", ["@default/greeter"])
    front = p.cli_json("deploy", "app", str(app), env=as_org(p, p.acme))
    assert front["name"] == "front"
    status = p.api("GET", "/api/v1/deployments/acme.front", token=p.acme).json()
    assert status["uses"] == ["default.greeter"]
    # Naming a deployment that is not there, or another org's private one, fails the deploy before the build.
    missing = p.cli("deploy", "app", str(app_using(tmp_path, "lost", ["nope"])), env=as_org(p, p.acme))
    assert missing.returncode == 1 and "uses: no deployment acme.nope" in missing.stderr, missing.stderr
    p.cli_json("deploy", "app", str(HELLO), "--name", "private-one")
    hidden = p.cli("deploy", "app", str(app_using(tmp_path, "peek", ["@default/private-one"])),
                   env=as_org(p, p.acme))
    assert hidden.returncode == 1 and "no deployment default.private-one in the catalog" in hidden.stderr

    # The owner sees who depends on it (another org's by count only); unpublish and delete are refused.
    mine = p.api("GET", "/api/v1/deployments/greeter").json()
    assert mine["used_by"] == ["1 deployment of org acme"], mine
    refused = p.cli("unpublish", "greeter")
    assert refused.returncode == 1 and "in use: 1 deployment of org acme" in refused.stderr, refused.stderr
    refused = p.cli("delete", "greeter", "--yes")
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert p.api("GET", "/api/v1/catalog/@default/greeter", token=p.acme).status_code == 200
    # A developer may not force it; an owner may.
    dev = p.cli("unpublish", "greeter", "--force", env=as_org(p, p.dev))
    assert dev.returncode == 1 and "only an owner" in dev.stderr, dev.stderr
    forced = p.cli_json("unpublish", "greeter", "--force")
    assert forced == {"name": "default.greeter", "public": False, "forced_dependents": 1}
    assert p.api("GET", "/api/v1/catalog", token=p.acme).json()["entries"] == []
    assert call(p, "@default/greeter", p.acme).status_code == 403

    # A private deployment deletes easily, even while its own org's apps use it.
    p.cli_json("deploy", "app", str(HELLO), "--name", "inner", "--use", "private-one")  # --use: no config needed
    assert p.api("GET", "/api/v1/deployments/inner").json()["uses"] == ["default.private-one"]
    deleted = p.cli_json("delete", "private-one", "--yes")
    assert deleted == {"deleted": "private-one", "dependents": ["default.inner"]}
    p.cli_json("delete", "front", "--yes", env=as_org(p, p.acme))
    p.cli_json("delete", "inner", "--yes")


def test_publish_input_is_checked_and_viewers_may_not_publish(cat, tmp_path):
    p = cat
    bad = tmp_path / "icon.txt"
    bad.write_text("not an image")
    result = p.cli("publish", "greeter", "--icon", str(bad))
    assert result.returncode == 1 and "not an image type" in result.stderr
    r = p.api("POST", "/api/v1/deployments/greeter/publish", json={"icon": "javascript:alert(1)"})
    assert r.status_code == 400 and "https URL or a data:image" in r.text
    r = p.api("POST", "/api/v1/deployments/greeter/publish", json={"description": "x" * 5000})
    assert r.status_code == 400
    viewer = p.cli_json("admin", "token", "--org", "default", "--role", "viewer")["token"]
    r = p.api("POST", "/api/v1/deployments/greeter/publish", token=viewer, json={})
    assert r.status_code == 403
    assert p.api("GET", "/api/v1/catalog", token=None).status_code == 401
