"""`mcp-agent login` through the platform's OAuth server, end to end: the real CLI runs the device flow while the
test plays the browser (it posts the login page's form over HTTP); then refresh rotation and reuse detection,
revocation at logout, slow_down, denial, lockout, introspection, and the secrecy of tokens and passwords.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
import time

import httpx
import pytest

from mcp_agent_cloud.testing import CLI, wait_for
from tests.conftest import PlatformProcess

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("oauth_login")]

PASSWORD = "correct horse battery 51"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# 60 s tokens: the CLI refreshes them at every command (it refreshes 60 s before expiry), which the tests rely on.
CONFIG = "oauth: {access_token_seconds: 60, poll_interval: 1}\n"


@pytest.fixture(scope="module")
def p(tmp_path_factory, shared_envs):
    platform = PlatformProcess(tmp_path_factory.mktemp("oauth"), shared_envs, extra_config=CONFIG)
    platform.start()
    try:
        for user, org, role in (("alice", "acme", "developer"), ("bob", "beta", "owner")):
            platform.cli("admin", "users", "add", user, "--org", org, "--role", role, "--password-stdin",
                         input=PASSWORD, check=True)
        yield platform
    finally:
        platform.stop()


def approve(p: PlatformProcess, user_code: str, username: str = "alice", password: str = PASSWORD,
            action: str = "approve") -> httpx.Response:
    """What the user does in the browser: the page, then its form."""
    page = httpx.get(p.url + "/oauth/device", params={"user_code": user_code})
    assert page.status_code == 200 and f'value="{user_code}"' in page.text and 'type="password"' in page.text
    return httpx.post(p.url + "/oauth/device", data={"user_code": user_code, "username": username,
                                                      "password": password, "action": action})


def cli_login(p: PlatformProcess, home, username: str = "alice") -> subprocess.CompletedProcess:
    """The real `mcp-agent login`, with the test approving its code in the 'browser'."""
    home.mkdir(exist_ok=True)
    env = {**p.env, "MCP_AGENT_CLOUD_HOME": str(home)}
    proc = subprocess.Popen([CLI, "login", "--no-browser", "--api-url", p.url, "--json"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stderr.readline()
    match = re.search(r"open (\S+) and enter the code (\w{4}-\w{4})", first)
    assert match, first
    assert match.group(1) == p.url + "/oauth/device"
    assert approve(p, match.group(2), username).status_code == 200
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, first + err)


def stored(home) -> dict:
    return json.loads((home / "auth.json").read_text())


def as_user(p: PlatformProcess, home, *args: str) -> subprocess.CompletedProcess:
    return p.cli(*args, env={"MCP_AGENT_CLOUD_HOME": str(home)})


def device_start(p: PlatformProcess) -> dict:
    resp = httpx.post(p.url + "/oauth/device_authorization", data={"client_id": "mcp-agent-cli", "scope": "api mcp"})
    assert resp.status_code == 200, resp.text
    return resp.json()


def poll(p: PlatformProcess, device_code: str) -> httpx.Response:
    return httpx.post(p.url + "/oauth/token", data={"grant_type": DEVICE_GRANT, "client_id": "mcp-agent-cli",
                                                    "device_code": device_code})


def refresh(p: PlatformProcess, token: str) -> httpx.Response:
    return httpx.post(p.url + "/oauth/token", data={"grant_type": "refresh_token", "client_id": "mcp-agent-cli",
                                                    "refresh_token": token})


def test_metadata_and_jwks_are_public_and_hold_no_private_key(p):
    meta = httpx.get(p.url + "/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == p.url and meta["device_authorization_endpoint"] == p.url + "/oauth/device_authorization"
    assert DEVICE_GRANT in meta["grant_types_supported"] and meta["code_challenge_methods_supported"] == ["S256"]
    keys = httpx.get(meta["jwks_uri"]).json()["keys"]
    assert keys and all(k["kty"] == "EC" and k["alg"] == "ES256" and "d" not in k and k["kid"] for k in keys)


def test_cli_login_stores_tokens_0600_and_refreshes_them_on_its_own(p, tmp_path):
    home = tmp_path / "alice"
    result = cli_login(p, home)
    assert result.returncode == 0, result.stderr
    who = json.loads(result.stdout)
    assert who["subject"] == "alice" and who["org"] == "acme" and who["roles"] == ["developer"]
    assert stat.S_IMODE((home / "auth.json").stat().st_mode) == 0o600
    first = stored(home)
    assert first["refresh_token"].startswith("mcpacr_") and first["access_token"].count(".") == 2
    # Every command refreshes a 60 s token (the refresh token rotates) and goes on working.
    status = as_user(p, home, "auth", "status", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["subject"] == "alice" and data["login"] == "oauth" and data["scopes"] == ["api", "mcp"]
    second = stored(home)
    assert second["refresh_token"] != first["refresh_token"] and second["access_token"] != first["access_token"]
    assert stat.S_IMODE((home / "auth.json").stat().st_mode) == 0o600
    listed = as_user(p, home, "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []  # acme has no deployments
    human = as_user(p, home, "auth", "status")
    assert "alice in org acme" in human.stdout and "expires" in human.stdout
    # The old refresh token was used once already: presenting it again is taken for theft, and the login ends.
    reused = refresh(p, first["refresh_token"])
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    assert refresh(p, stored(home)["refresh_token"]).status_code == 400  # the family is revoked
    wait_for(lambda: p.api("GET", "/api/v1/whoami", token=stored(home)["access_token"]).status_code == 401,
             timeout=10, what="the revoked family's access token refused")
    ended = as_user(p, home, "auth", "status")
    assert ended.returncode != 0 and "your login has ended" in ended.stderr and "mcp-agent login" in ended.stderr


def test_logout_revokes_at_the_server(p, tmp_path):
    home = tmp_path / "alice2"
    assert cli_login(p, home).returncode == 0
    tokens = stored(home)
    out = as_user(p, home, "logout", "--json")
    assert json.loads(out.stdout) == {"logged_out": True, "revoked": True}
    assert not (home / "auth.json").exists()
    assert refresh(p, tokens["refresh_token"]).status_code == 400
    wait_for(lambda: p.api("GET", "/api/v1/whoami", token=tokens["access_token"]).status_code == 401, timeout=10,
             what="the logged-out access token refused")


def test_device_flow_pending_slow_down_denied_and_single_use(p):
    device = device_start(p)
    assert re.fullmatch(r"[A-Z]{4}-[A-Z]{4}", device["user_code"]) and device["interval"] == 1
    assert device["verification_uri_complete"].endswith("user_code=" + device["user_code"])
    assert poll(p, device["device_code"]).json()["error"] == "authorization_pending"
    assert poll(p, device["device_code"]).json()["error"] == "slow_down"  # polled within the interval
    time.sleep(6.2)  # slow_down added 5 s to the interval
    assert poll(p, device["device_code"]).json()["error"] == "authorization_pending"
    assert approve(p, device["user_code"], action="deny").status_code == 200
    time.sleep(6.2)
    assert poll(p, device["device_code"]).json()["error"] == "access_denied"
    # An approved code gives tokens once.
    device = device_start(p)
    assert approve(p, device["user_code"]).status_code == 200
    granted = poll(p, device["device_code"])
    assert granted.status_code == 200 and granted.json()["token_type"] == "Bearer"
    assert granted.headers["cache-control"] == "no-store"
    assert poll(p, device["device_code"]).status_code == 400
    assert approve(p, device["user_code"]).status_code == 400  # a used code is not accepted again
    bad = httpx.post(p.url + "/oauth/device_authorization", data={"client_id": "someone-else"})
    assert bad.status_code in (400, 401) and bad.json()["error"] == "invalid_client"


def test_wrong_passwords_are_refused_then_locked_out(p):
    device = device_start(p)
    for _ in range(5):
        page = approve(p, device["user_code"], username="bob", password="not the password")
        assert page.status_code == 401 and "Wrong username or password" in page.text
    locked = approve(p, device["user_code"], username="bob")  # the right password, but locked out now
    assert locked.status_code == 429
    unknown = approve(p, device["user_code"], username="nobody-here")
    assert unknown.status_code == 401
    assert poll(p, device["device_code"]).json()["error"] in ("authorization_pending", "slow_down")


def test_tampered_tokens_and_other_orgs_are_refused_and_introspection_is_per_org(p):
    device = device_start(p)
    approve(p, device["user_code"], username="alice")
    alice = poll(p, device["device_code"]).json()["access_token"]
    header, body, sig = alice.split(".")
    tampered = ".".join([header, body, sig[:-4] + ("AAAA" if not sig.endswith("AAAA") else "BBBB")])
    assert p.api("GET", "/api/v1/whoami", token=tampered).status_code == 401
    # Another org's data stays out of reach.
    assert p.api("GET", "/api/v1/deployments/default.anything", token=alice).status_code == 403
    assert p.api("GET", "/api/v1/whoami", token=alice).json()["org"] == "acme"
    # Introspection needs a caller, and shows a token only to its own org.
    assert httpx.post(p.url + "/oauth/introspect", data={"token": alice}).status_code == 401
    mine = httpx.post(p.url + "/oauth/introspect", data={"token": alice},
                      headers={"Authorization": f"Bearer {alice}"}).json()
    assert mine["active"] is True and mine["sub"] == "alice" and mine["aud"] == p.url + "/api"
    other = httpx.post(p.url + "/oauth/introspect", data={"token": alice},
                       headers={"Authorization": f"Bearer {p.token}"}).json()
    assert other == {"active": False}
    assert httpx.post(p.url + "/oauth/introspect", data={"token": tampered},
                      headers={"Authorization": f"Bearer {alice}"}).json() == {"active": False}


def test_disabled_users_get_no_new_tokens_and_logins_are_audited(p, tmp_path):
    p.cli("admin", "users", "add", "carol", "--org", "acme", "--role", "viewer", "--password-stdin",
          input=PASSWORD, check=True)
    device = device_start(p)
    approve(p, device["user_code"], username="carol")
    first = poll(p, device["device_code"]).json()
    tokens = refresh(p, first["refresh_token"]).json()
    assert refresh(p, first["refresh_token"]).status_code == 400  # reuse: recorded in the audit log below
    device = device_start(p)
    approve(p, device["user_code"], username="carol")
    tokens = poll(p, device["device_code"]).json()
    p.cli("admin", "users", "set", "carol", "--disable", check=True)
    assert refresh(p, tokens["refresh_token"]).status_code == 400
    device = device_start(p)
    assert approve(p, device["user_code"], username="carol").status_code == 401
    listed = p.cli_json("admin", "users", "list", "--org", "acme")
    assert {u["username"]: u["disabled"] for u in listed} == {"alice": False, "carol": True}
    assert "password" not in json.dumps(listed)
    # acme's owners see its logins, and the reuse that ended one, in the audit log.
    owner = p.cli_json("admin", "token", "--org", "acme", "--role", "owner")["token"]
    records = p.api("GET", "/api/v1/audit", token=owner).json()["records"]
    logins = [r for r in records if r["action"] == "oauth device login"]
    assert "carol" in {r["actor"] for r in logins} and all(r["source"] == "127.0.0.1" for r in logins)
    reuse = [r for r in records if r["action"] == "oauth refresh token reused" and r["actor"] == "carol"]
    assert reuse and reuse[0]["outcome"] == "denied"


def test_no_password_or_token_in_the_platform_log_or_registry(p, tmp_path):
    home = tmp_path / "alice3"
    assert cli_login(p, home).returncode == 0
    tokens = stored(home)
    log = p.log_path.read_text()
    assert PASSWORD not in log and tokens["refresh_token"] not in log and tokens["access_token"] not in log
    dump = b"".join(f.read_bytes() for f in (p.root / "data").rglob("*") if f.is_file())
    assert PASSWORD.encode() not in dump and tokens["refresh_token"].encode() not in dump
