"""MCP client authorization, end to end: the MCP SDK's own OAuth client (``mcp.client.auth.OAuthClientProvider``)
connects to a deployment with no token given to it. It follows the deployment's 401 to its protected-resource
metadata (RFC 9728), the platform's authorization server metadata (RFC 8414), registers itself (RFC 7591), and runs
authorization code + PKCE with ``resource`` (RFC 8707). The test plays the browser: it reads the login page and
posts its form, as a person would.

Then the edges: the token works on that deployment only; PKCE is required and S256 only; a code works once (a second
use revokes the login); registration refuses redirect URIs that could leak a code; another org's deployment cannot
be asked for.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import secrets
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest

from tests.conftest import ROOT, PlatformProcess

pytestmark = [pytest.mark.e2e, pytest.mark.network, pytest.mark.xdist_group("mcp_oauth")]

HELLO = ROOT / "examples" / "hello"
PASSWORD = "mcp oauth password 77"
REDIRECT = "http://127.0.0.1:39917/callback"


@pytest.fixture(scope="module")
def p(tmp_path_factory, shared_envs):
    platform = PlatformProcess(tmp_path_factory.mktemp("mcpoauth"), shared_envs)
    platform.start()
    try:
        org = platform.api("GET", "/api/v1/whoami").json()["org"]
        for user, user_org, role in (("vera", org, "viewer"), ("bob", "beta", "owner")):
            platform.cli("admin", "users", "add", user, "--org", user_org, "--role", role, "--password-stdin",
                         input=PASSWORD, check=True)
        for name in ("hello", "other"):
            assert platform.cli_json("deploy", "app", str(HELLO), "--name", name)["status"] == "running"
        platform.org = org
        yield platform
    finally:
        platform.stop()


class Memory:
    """The SDK's TokenStorage, in memory."""

    def __init__(self) -> None:
        self.tokens = self.client = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens) -> None:
        self.tokens = tokens

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, info) -> None:
        self.client = info


def form_fields(page: str) -> dict[str, str]:
    return {html.unescape(k): html.unescape(v)
            for k, v in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page)}


class Browser:
    """What a person does: open the authorization URL, log in on the page, allow; the redirect carries the code."""

    def __init__(self, username: str = "vera", action: str = "approve") -> None:
        self.username, self.action = username, action
        self.pages: list[str] = []
        self.redirects: list[str] = []

    async def open(self, url: str) -> None:
        async with httpx.AsyncClient(follow_redirects=False, timeout=30) as http:
            page = await http.get(url)
            assert page.status_code == 200, page.text
            self.pages.append(page.text)
            assert "default-src 'none'" in page.headers["content-security-policy"]
            fields = {**form_fields(page.text), "username": self.username, "password": PASSWORD,
                      "action": self.action}
            answer = await http.post(url.split("?")[0], data=fields)
            assert answer.status_code == 302, answer.text
            self.redirects.append(answer.headers["location"])

    async def callback(self):
        from mcp.shared.auth import AuthorizationCodeResult

        query = parse_qs(urlsplit(self.redirects[-1]).query)
        return AuthorizationCodeResult(code=query["code"][0], state=query["state"][0])


def claims_of(token: str) -> dict:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


async def connect_and_greet(url: str, browser: Browser, storage: Memory) -> str:
    import httpx2
    from mcp.client import Client
    from mcp.client.auth import OAuthClientProvider
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.auth import OAuthClientMetadata

    auth = OAuthClientProvider(
        url, OAuthClientMetadata(client_name="SDK test client", redirect_uris=[REDIRECT],
                                 grant_types=["authorization_code", "refresh_token"], response_types=["code"]),
        storage, redirect_handler=browser.open, callback_handler=browser.callback)
    async with httpx2.AsyncClient(auth=auth, timeout=60) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
            result = await client.call_tool("greet", {"name": "oauth"})
            return "".join(getattr(c, "text", "") for c in result.content)


def test_the_sdk_client_connects_through_discovery_registration_and_pkce(p):
    url = f"{p.url}/servers/{p.org}.hello/mcp"
    browser, storage = Browser(), Memory()
    text = anyio.run(connect_and_greet, url, browser, storage)
    assert "oauth" in text
    # One login, on a page that says who asks for what; the client registered itself.
    assert len(browser.pages) == 1 and "SDK test client" in browser.pages[0]
    assert f"{p.org}.hello" in browser.pages[0]
    assert storage.client.client_id and storage.client.redirect_uris[0].unicode_string() == REDIRECT
    claims = claims_of(storage.tokens.access_token)
    assert claims["aud"] == f"{p.url}/servers/{p.org}.hello" and claims["sub"] == "vera"
    assert claims["scope"] == "mcp" and claims["roles"] == ["viewer"]
    assert storage.tokens.refresh_token
    # Connecting again reuses the stored token: no second login.
    assert "oauth" in anyio.run(connect_and_greet, url, browser, storage)
    assert len(browser.pages) == 1
    # The short name is the same deployment.
    assert "oauth" in anyio.run(connect_and_greet, f"{p.url}/servers/hello/mcp", browser, storage)
    assert len(browser.pages) == 1
    audit = p.cli_json("audit", "--action", "oauth authorize")
    assert any(r["actor"] == "vera" and f"resource={p.org}.hello" in r["target"] for r in audit), audit

    # The token is for that deployment alone: another answers 401 with a challenge (the client gets a token for
    # it), and the management API refuses it.
    token = storage.tokens.access_token
    other = p.api("POST", f"/servers/{p.org}.other/mcp", token=token, json={})
    assert other.status_code == 401
    challenge = other.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge
    assert f'resource_metadata="{p.url}/.well-known/oauth-protected-resource/servers/{p.org}.other/mcp"' in challenge
    assert p.api("GET", "/api/v1/deployments", token=token).status_code == 403

    # Its refresh token refreshes it, for the same deployment only.
    def refresh(resource: str) -> httpx.Response:
        data = {"grant_type": "refresh_token", "refresh_token": storage.tokens.refresh_token,
                "client_id": storage.client.client_id, "resource": resource}
        return httpx.post(p.url + "/oauth/token", data=data,
                          auth=(storage.client.client_id, storage.client.client_secret))
    wrong = refresh(f"{p.url}/servers/{p.org}.other")
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_target"
    fresh = refresh(f"{p.url}/servers/{p.org}.hello/mcp")
    assert fresh.status_code == 200, fresh.text
    assert claims_of(fresh.json()["access_token"])["aud"] == f"{p.url}/servers/{p.org}.hello"


def test_a_deployment_challenges_with_its_metadata(p):
    path = f"/servers/{p.org}.hello/mcp"
    anonymous = p.api("POST", path, token=None, json={})
    assert anonymous.status_code == 401
    challenge = anonymous.headers["www-authenticate"]
    metadata_url = f"{p.url}/.well-known/oauth-protected-resource{path}"
    assert f'resource_metadata="{metadata_url}"' in challenge and "error=" not in challenge
    resource = httpx.get(metadata_url).json()
    assert resource["resource"] == f"{p.url}/servers/{p.org}.hello"
    assert resource["authorization_servers"] == [p.url] and resource["scopes_supported"] == ["mcp"]
    # Any name answers alike: the metadata says nothing of what exists.
    assert httpx.get(f"{p.url}/.well-known/oauth-protected-resource/servers/nothere/mcp").status_code == 200
    server = httpx.get(p.url + "/.well-known/oauth-authorization-server").json()
    assert server["code_challenge_methods_supported"] == ["S256"]
    assert server["registration_endpoint"] == p.url + "/oauth/register"
    assert server["authorization_endpoint"] == p.url + "/oauth/authorize"
    assert "authorization_code" in server["grant_types_supported"]
    # A bad token gets invalid_token; the management API's 401 names no resource.
    assert 'error="invalid_token"' in p.api("POST", path, token="x.y.z", json={}).headers["www-authenticate"]
    assert "resource_metadata" not in p.api("GET", "/api/v1/deployments", token=None).headers["www-authenticate"]


def register(p: PlatformProcess, **metadata) -> httpx.Response:
    return httpx.post(p.url + "/oauth/register", json={"client_name": "edge tests", "redirect_uris": [REDIRECT],
                                                       "grant_types": ["authorization_code", "refresh_token"],
                                                       "token_endpoint_auth_method": "none", **metadata})


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize(p: PlatformProcess, client_id: str, username: str = "vera", **params) -> httpx.Response:
    """The authorization request and, if it shows the page, the login on it; returns the last answer."""
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "state": "st8",
             "resource": f"{p.url}/servers/{p.org}.hello", **params}
    query = {k: v for k, v in query.items() if v is not None}
    page = httpx.get(p.url + "/oauth/authorize", params=query)
    if page.status_code != 200:
        return page
    return httpx.post(p.url + "/oauth/authorize", data={**form_fields(page.text), "username": username,
                                                         "password": PASSWORD, "action": "approve"})


def redirect_query(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT + "?"), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def exchange(p: PlatformProcess, client_id: str, code: str, verifier: str | None, **extra) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "client_id": client_id,
            "code_verifier": verifier, **extra}
    return httpx.post(p.url + "/oauth/token", data={k: v for k, v in data.items() if v is not None})


def test_pkce_is_required_and_a_code_works_once(p):
    client_id = register(p).json()["client_id"]
    verifier, challenge = pkce()
    # No challenge, or the plain method: refused back to the client, before any login.
    for params in ({}, {"code_challenge": challenge, "code_challenge_method": "plain"}):
        query = redirect_query(authorize(p, client_id, **params))
        assert query["error"] == "invalid_request" and query["state"] == "st8"
    query = redirect_query(authorize(p, client_id, code_challenge=challenge, code_challenge_method="S256"))
    code = query["code"]
    assert exchange(p, client_id, code, pkce()[0]).json()["error"] == "invalid_grant"  # the wrong verifier
    # ... which did not use the code up: the right verifier still works (once).
    good = exchange(p, client_id, code, verifier)
    assert good.status_code == 200, good.text
    token = good.json()["access_token"]
    assert p.api("POST", f"/servers/{p.org}.hello/mcp", token=token, json={}).status_code != 401
    # A second use is refused and revokes the login it gave (RFC 6749 4.1.2).
    again = exchange(p, client_id, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert p.api("POST", f"/servers/{p.org}.hello/mcp", token=token, json={}).status_code == 401
    refreshed = httpx.post(p.url + "/oauth/token", data={"grant_type": "refresh_token", "client_id": client_id,
                                                         "refresh_token": good.json()["refresh_token"]})
    assert refreshed.status_code == 400


def test_the_resource_must_be_one_of_the_users_deployments(p):
    client_id = register(p).json()["client_id"]
    _, challenge = pkce()
    s256 = {"code_challenge": challenge, "code_challenge_method": "S256"}
    for resource in (None, f"{p.url}/api", "http://elsewhere.example/servers/hello"):
        query = redirect_query(authorize(p, client_id, resource=resource, **s256))
        assert query["error"] == "invalid_target", (resource, query)
    # bob is of org beta: the page shows, but after his login the grant is refused.
    query = redirect_query(authorize(p, client_id, username="bob", **s256))
    assert query["error"] == "invalid_target" and "code" not in query
    # A token endpoint request naming another resource than the code's is refused.
    verifier, challenge = pkce()
    code = redirect_query(authorize(p, client_id, code_challenge=challenge, code_challenge_method="S256"))["code"]
    wrong = exchange(p, client_id, code, verifier, resource=f"{p.url}/servers/{p.org}.other")
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_target"


def test_wrong_passwords_deny_and_unknown_clients(p):
    client_id = register(p).json()["client_id"]
    _, challenge = pkce()
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "state": "s",
             "code_challenge": challenge, "code_challenge_method": "S256",
             "resource": f"{p.url}/servers/{p.org}.hello"}
    page = httpx.get(p.url + "/oauth/authorize", params=query)
    fields = form_fields(page.text)
    bad = httpx.post(p.url + "/oauth/authorize", data={**fields, "username": "vera", "password": "nope",
                                                        "action": "approve"})
    assert bad.status_code == 401 and "Wrong username or password" in bad.text
    denied = httpx.post(p.url + "/oauth/authorize", data={**fields, "action": "deny"})
    assert redirect_query(denied)["error"] == "access_denied"
    # An unknown client, or a redirect URI it did not register: no redirect at all (it could be anyone's).
    for params in ({"client_id": "nobody"}, {"redirect_uri": "https://attacker.example/cb"}):
        answer = httpx.get(p.url + "/oauth/authorize", params={**query, **params})
        assert answer.status_code == 400 and "location" not in answer.headers
    # The CLI's client has no authorization code grant.
    answer = httpx.get(p.url + "/oauth/authorize", params={**query, "client_id": "mcp-agent-cli"})
    assert answer.status_code in (302, 400) and "code=" not in answer.headers.get("location", "")


def test_registration_checks_the_metadata(p):
    public = register(p)
    assert public.status_code == 201, public.text
    assert "client_secret" not in public.json() and public.json()["token_endpoint_auth_method"] == "none"
    confidential = register(p, token_endpoint_auth_method="client_secret_post")
    assert confidential.status_code == 201 and confidential.json()["client_secret"]
    defaulted = httpx.post(p.url + "/oauth/register", json={"redirect_uris": [REDIRECT]}).json()
    assert defaulted["token_endpoint_auth_method"] == "client_secret_basic" and defaulted["client_secret"]
    assert defaulted["grant_types"] == ["authorization_code"]
    for bad in ({"redirect_uris": ["http://example.com/cb"]}, {"redirect_uris": ["javascript:alert(1)"]},
                {"redirect_uris": []}, {"redirect_uris": "http://127.0.0.1/cb"}):
        answer = register(p, **bad)
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_redirect_uri", (bad, answer.text)
    for bad in ({"grant_types": ["urn:ietf:params:oauth:grant-type:device_code"]}, {"scope": "api"},
                {"token_endpoint_auth_method": "private_key_jwt"}):
        answer = register(p, **bad)
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_client_metadata", (bad, answer.text)
    assert httpx.post(p.url + "/oauth/register", content=b"[1]").status_code == 400
    assert httpx.post(p.url + "/oauth/register", content=b"x" * 20000).status_code == 413
    # A confidential client must send its secret.
    client = confidential.json()
    verifier, challenge = pkce()
    code = redirect_query(authorize(p, client["client_id"], code_challenge=challenge,
                                    code_challenge_method="S256"))["code"]
    assert exchange(p, client["client_id"], code, verifier).status_code == 401
    good = exchange(p, client["client_id"], code, verifier, client_secret=client["client_secret"])
    assert good.status_code == 200, good.text


def test_no_password_code_or_token_in_the_log(p):
    log = p.log_path.read_text()
    assert PASSWORD not in log
    assert not re.search(r"eyJ[\w-]{20,}\.", log), "an access token is in the platform log"
    assert "code=" not in log and "mcpacr_" not in log


def test_auth_none_must_be_asked_for_is_flagged_and_opens_that_deployment_only(p):
    async def greet_without_token(url: str) -> str:
        from mcp_agent_cloud.client import mcp_client

        async with mcp_client(url, None) as client:
            result = await client.call_tool("greet", {"name": "anyone"})
            return result.content[0].text

    deployed = p.cli_json("deploy", "app", str(HELLO), "--name", "open", "--auth", "none")
    assert deployed["auth"] == "none"
    text = p.cli("deploy", "app", str(HELLO), "--name", "open", check=True).stdout  # no --auth: it stays open
    assert "auth:       none" in text and "anyone who can reach" in text
    rows = {r["name"]: r for r in p.cli_json("list")}
    assert rows["open"]["auth"] == "none" and rows["hello"]["auth"] == "platform"
    assert "NONE (open)" in p.cli("list", check=True).stdout
    assert p.cli_json("status", "open")["auth"] == "none"
    for name in (f"{p.org}.open", "open"):
        assert "anyone" in anyio.run(greet_without_token, f"{p.url}/servers/{name}/mcp")
    # Nothing else opens: the org's other deployments, the API, the REST routes of another deployment.
    assert p.api("POST", f"/servers/{p.org}.hello/mcp", token=None, json={}).status_code == 401
    assert p.api("GET", "/api/v1/deployments", token=None).status_code == 401
    assert p.api("GET", f"/servers/{p.org}.hello/tools", token=None).status_code == 401
    assert p.api("GET", f"/servers/{p.org}.open/tools", token=None).status_code == 200
    # A bad token is still refused (a caller that sent one meant to be someone).
    assert p.api("GET", f"/servers/{p.org}.open/tools", token="wrong").status_code == 401
    # Closed again by a deploy with --auth platform: at once.
    p.cli_json("deploy", "app", str(HELLO), "--name", "open", "--auth", "platform")
    assert p.api("POST", f"/servers/{p.org}.open/mcp", token=None, json={}).status_code == 401
    assert {r["name"]: r for r in p.cli_json("list")}["open"]["auth"] == "platform"


def test_a_deployment_is_addressed_as_at_org_slash_name(p):
    url = f"{p.url}/servers/@{p.org}/hello/mcp"
    anonymous = p.api("POST", f"/servers/@{p.org}/hello/mcp", token=None, json={})
    assert anonymous.status_code == 401
    metadata = f"{p.url}/.well-known/oauth-protected-resource/servers/@{p.org}/hello/mcp"
    assert f'resource_metadata="{metadata}"' in anonymous.headers["www-authenticate"]
    assert httpx.get(metadata).json()["resource"] == f"{p.url}/servers/@{p.org}/hello"
    # The SDK's client, from that address alone: the token is the deployment's, as under its qualified name.
    browser, storage = Browser(), Memory()
    assert "oauth" in anyio.run(connect_and_greet, url, browser, storage)
    assert claims_of(storage.tokens.access_token)["aud"] == f"{p.url}/servers/{p.org}.hello"
    assert f"{p.org}.hello" in browser.pages[0]
    # The REST routes and the CLI take it too.
    assert p.api("GET", f"/servers/@{p.org}/hello/tools", token=storage.tokens.access_token).status_code == 200
    assert p.cli_json("status", f"@{p.org}/hello")["name"] == "hello"


def test_a_user_of_another_org_gets_a_token_for_a_public_deployment_only(p):
    client_id = register(p).json()["client_id"]
    public = f"{p.url}/servers/@{p.org}/other"

    def token_for(resource: str) -> dict:
        verifier, challenge = pkce()
        query = redirect_query(authorize(p, client_id, username="bob", resource=resource, code_challenge=challenge,
                                         code_challenge_method="S256"))
        if "code" not in query:
            return query
        return exchange(p, client_id, query["code"], verifier, resource=resource).json()

    def greet(token: str) -> httpx.Response:
        return httpx.post(f"{public}/call_tool", headers={"Authorization": f"Bearer {token}"},
                          json={"name": "greet", "arguments": {"name": "beta"}}, timeout=30)

    assert token_for(public)["error"] == "invalid_target"  # private: bob of org beta may not have it
    p.cli_json("publish", "other")
    try:
        tokens = token_for(public)
        assert claims_of(tokens["access_token"])["aud"] == f"{p.url}/servers/{p.org}.other"
        answer = greet(tokens["access_token"])
        assert answer.status_code == 200 and "beta" in answer.text, answer.text
        # Bound to that deployment: not the API, not a private deployment of its org.
        assert httpx.get(f"{p.url}/api/v1/whoami", headers={"Authorization": f"Bearer {tokens['access_token']}"}
                         ).status_code == 403
        hello = httpx.post(f"{p.url}/servers/@{p.org}/hello/call_tool", json={"name": "greet"},
                           headers={"Authorization": f"Bearer {tokens['access_token']}"})
        assert hello.status_code in (401, 403)
        refreshed = httpx.post(p.url + "/oauth/token", data={"grant_type": "refresh_token", "client_id": client_id,
                                                             "refresh_token": tokens["refresh_token"],
                                                             "resource": public})
        assert refreshed.status_code == 200, refreshed.text
    finally:
        p.cli_json("unpublish", "other")
    # Private again: the token it holds no longer gets in.
    assert greet(refreshed.json()["access_token"]).status_code in (401, 403)


def test_registrations_nobody_finished_are_pruned_and_used_clients_kept(p):
    """Last in the module: it restarts the platform with a short oauth.abandoned_client_hours (pruning runs at
    start, then hourly)."""
    abandoned, used = (register(p).json()["client_id"] for _ in range(2))
    verifier, challenge = pkce()
    code = redirect_query(authorize(p, used, code_challenge=challenge, code_challenge_method="S256"))["code"]
    assert exchange(p, used, code, verifier).status_code == 200
    p.stop()
    p.config_path.write_text(p.config_path.read_text() + "oauth: {abandoned_client_hours: 0.0001}\n")  # 0.36 s
    p.start()
    query = {"response_type": "code", "redirect_uri": REDIRECT, "state": "s", "code_challenge": challenge,
             "code_challenge_method": "S256", "resource": f"{p.url}/servers/{p.org}.hello"}
    gone = httpx.get(p.url + "/oauth/authorize", params={**query, "client_id": abandoned})
    assert gone.status_code == 400 and "location" not in gone.headers
    kept = httpx.get(p.url + "/oauth/authorize", params={**query, "client_id": used})
    assert kept.status_code == 200 and "password" in kept.text
