"""The ``okta`` provider against a real OpenID Connect issuer: npm ``oidc-provider`` on loopback
(tests/oidc_issuer.mjs), with its own login and consent pages, which the test fills in as a person would.

Through it: ``mcp-agent login`` (the platform's device flow, with "Log in with Okta" on its page), and an MCP
client's authorization code flow. Groups map to roles, users are provisioned on their first login, a user in no
mapped group is refused, a disabled one gets no refresh, and a callback in another browser than the one that
started the login is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest

from mcp_agent_cloud.testing import CLI, free_port
from tests.conftest import NODE_TOOLS, ROOT, PlatformProcess, _node_tool

pytestmark = [pytest.mark.e2e, pytest.mark.network, pytest.mark.xdist_group("okta_oidc")]

SECRET_ENV, SECRET = "MCPAC_TEST_OKTA_SECRET", "issuer-client-secret-5e1"
ACCOUNTS = {"olga": {"email": "olga@example.com", "groups": ["staff", "mcp-owners"]},
            "victor": {"email": "victor@example.com", "groups": ["mcp-viewers"]},
            "nora": {"email": "nora@example.com", "groups": ["staff"]},
            "dora": {"email": "dora@example.com", "groups": ["mcp-viewers"]}}
REDIRECT = "http://127.0.0.1:39918/callback"


@pytest.fixture(scope="module")
def issuer(tmp_path_factory):
    _node_tool("oidc-provider/package.json", "npm oidc-provider")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    root = tmp_path_factory.mktemp("oidc")
    yield {"url": url, "port": port, "root": root}


@pytest.fixture(scope="module")
def p(issuer, tmp_path_factory, shared_envs):
    config = (f"auth: [builtin, {{name: okta, issuer: '{issuer['url']}', client_id: mcpac, "
              f"client_secret_env: {SECRET_ENV}, device_client_id: mcpac-cli, "
              "roles: {mcp-owners: owner, mcp-viewers: viewer}, org: acme}]\n")
    platform = PlatformProcess(tmp_path_factory.mktemp("okta"), shared_envs, extra_config=config)
    # The issuer knows the platform's callback: start it now that the platform's port is known.
    script = NODE_TOOLS.parent / "oidc_issuer.mjs"  # next to node_modules, so the import finds oidc-provider
    shutil.copyfile(ROOT / "tests" / "oidc_issuer.mjs", script)
    clients = [{"client_id": "mcpac", "client_secret": SECRET, "redirect_uris": [f"{platform.url}/oauth/callback/okta"],
                "grant_types": ["authorization_code"], "response_types": ["code"]},
               {"client_id": "mcpac-cli", "token_endpoint_auth_method": "none", "redirect_uris": [],
                "grant_types": ["urn:ietf:params:oauth:grant-type:device_code"], "response_types": []}]
    log = open(issuer["root"] / "issuer.log", "wb")
    node = subprocess.Popen(["node", str(script)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PORT": str(issuer["port"]), "OIDC_CLIENTS": json.dumps(clients),
                                 "OIDC_ACCOUNTS": json.dumps(ACCOUNTS)})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(issuer["url"] + "/.well-known/openid-configuration", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the OIDC issuer did not start:\n{(issuer['root'] / 'issuer.log').read_text()}")
            time.sleep(0.1)
        os.environ[SECRET_ENV] = SECRET
        platform.start()
        acme = platform.cli_json("admin", "token", "--org", "acme", "--role", "owner")["token"]
        assert platform.cli_json("deploy", "app", str(ROOT / "examples" / "hello"), "--name", "acme.hello",
                                 env={"MCP_AGENT_CLOUD_TOKEN": acme})["status"] == "running"
        yield platform
    finally:
        os.environ.pop(SECRET_ENV, None)
        platform.stop()
        node.terminate()
        node.wait(10)


class Forms(HTMLParser):
    """The forms of a page: their action and fields (inputs with a value)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict] = []

    def handle_starttag(self, tag, attrs) -> None:
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "fields": {}})
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1]["fields"][a["name"]] = a.get("value") or ""


def forms_of(page: str) -> list[dict]:
    parser = Forms()
    parser.feed(page)
    return parser.forms


def at_issuer(http: httpx.Client, response: httpx.Response, login: str, *, stop: str = "") -> httpx.Response:
    """What a person does at the identity provider: follow redirects, log in, consent, until the answer comes
    back to the platform (or to ``stop``)."""
    for _ in range(20):
        if response.is_redirect:
            target = urljoin(str(response.url), response.headers["location"])
            if stop and target.startswith(stop):
                return response
            response = http.get(target)
            continue
        forms = forms_of(response.text)
        if not str(response.url).startswith(ISSUER_URL[0]) or not forms:
            return response  # back at the platform, or the issuer's last page (the device flow's success)
        form = forms[0]
        fields = form["fields"]
        if fields.get("prompt") == "login":
            fields.update(login=login, password="anything")
        fields.pop("abort", None)  # the device confirmation's other button
        response = http.post(urljoin(str(response.url), form["action"]), data=fields)
    raise AssertionError("the login did not come back from the issuer")


ISSUER_URL: list[str] = []


@pytest.fixture(autouse=True)
def _issuer_url(issuer):
    ISSUER_URL[:] = [issuer["url"]]


def device_login(p: PlatformProcess, home, login: str) -> tuple[subprocess.CompletedProcess, httpx.Response]:
    home.mkdir(exist_ok=True)
    env = {**p.env, "MCP_AGENT_CLOUD_HOME": str(home)}
    proc = subprocess.Popen([CLI, "login", "--no-browser", "--api-url", p.url, "--json"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stderr.readline()
    code = re.search(r"enter the code (\w{4}-\w{4})", first).group(1)
    with httpx.Client(timeout=30) as http:
        page = http.get(p.url + "/oauth/device", params={"user_code": code})
        assert 'value="provider:okta"' in page.text and "Log in with Okta" in page.text
        assert ISSUER_URL[0] in page.headers["content-security-policy"]  # the form may go to the issuer
        start = http.post(p.url + "/oauth/device", data={"user_code": code, "action": "provider:okta"})
        assert start.status_code == 303 and start.headers["location"].startswith(ISSUER_URL[0])
        query = parse_qs(urlsplit(start.headers["location"]).query)
        assert query["code_challenge_method"] == ["S256"] and query["nonce"] and query["state"]
        final = at_issuer(http, start, login)
    if final.status_code != 200:
        proc.kill()
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, first + err), final


def test_cli_login_through_the_issuer_maps_groups_to_roles_and_provisions_the_user(p, tmp_path):
    done, page = device_login(p, tmp_path / "olga", "olga")
    assert page.status_code == 200 and "Logged in" in page.text and "okta:olga@example.com" in page.text
    assert done.returncode == 0, done.stderr
    status = json.loads(p.cli("auth", "status", "--json", env={"MCP_AGENT_CLOUD_HOME": str(tmp_path / "olga")},
                              check=True).stdout)
    assert status["subject"] == "okta:olga@example.com" and status["org"] == "acme"
    assert status["roles"] == ["owner"]  # mcp-owners -> owner; "staff" maps to nothing
    users = {u["username"]: u for u in p.cli_json("admin", "users", "list")}
    assert users["okta:olga@example.com"]["org"] == "acme"
    # An owner of acme: it may read acme's audit log, which holds the login.
    audit = p.cli_json("audit", "--action", "oauth device login",
                       env={"MCP_AGENT_CLOUD_HOME": str(tmp_path / "olga")})
    assert any(r["actor"] == "okta:olga@example.com" and r["provider"] == "okta" for r in audit), audit


def test_a_user_in_no_mapped_group_is_refused(p, tmp_path):
    done, page = device_login(p, tmp_path / "nora", "nora")
    assert page.status_code == 403 and "in no group that has a role" in page.text
    assert done.returncode != 0
    assert "okta:nora@example.com" not in {u["username"] for u in p.cli_json("admin", "users", "list")}


def test_an_mcp_client_authorizes_through_the_issuer_and_a_disabled_user_gets_no_refresh(p):
    import base64
    import hashlib
    import secrets

    registered = httpx.post(p.url + "/oauth/register", json={"client_name": "okta test", "redirect_uris": [REDIRECT],
                                                             "grant_types": ["authorization_code", "refresh_token"],
                                                             "token_endpoint_auth_method": "none"}).json()
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    params = {"response_type": "code", "client_id": registered["client_id"], "redirect_uri": REDIRECT, "state": "st",
              "code_challenge": challenge, "code_challenge_method": "S256", "resource": f"{p.url}/servers/acme.hello"}
    with httpx.Client(timeout=30) as http:
        page = http.get(p.url + "/oauth/authorize", params=params)
        assert "Log in with Okta" in page.text
        fields = forms_of(page.text)[0]["fields"]  # the request's hidden fields (and the empty login fields)
        start = http.post(p.url + "/oauth/authorize", data={**fields, "action": "provider:okta"})
        assert start.status_code == 303
        back = at_issuer(http, start, "victor", stop=REDIRECT)
    query = parse_qs(urlsplit(back.headers["location"]).query)
    assert query["state"] == ["st"], query
    token = httpx.post(p.url + "/oauth/token", data={"grant_type": "authorization_code", "code": query["code"][0],
                                                     "redirect_uri": REDIRECT, "client_id": registered["client_id"],
                                                     "code_verifier": verifier})
    assert token.status_code == 200, token.text
    tokens = token.json()
    part = tokens["access_token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    assert claims["sub"] == "okta:victor@example.com" and claims["roles"] == ["viewer"]
    assert claims["aud"] == f"{p.url}/servers/acme.hello"
    assert p.api("GET", "/servers/acme.hello/tools", token=tokens["access_token"]).status_code == 200
    # Disabled on the platform: the refresh is refused.
    p.cli("admin", "users", "set", "okta:victor@example.com", "--disable", check=True)
    refresh = httpx.post(p.url + "/oauth/token", data={"grant_type": "refresh_token", "client_id": registered["client_id"],
                                                       "refresh_token": tokens["refresh_token"]})
    assert refresh.status_code == 400, refresh.text


def test_the_callback_must_come_back_to_the_browser_that_started(p):
    done = {}
    proc = subprocess.Popen([CLI, "login", "--no-browser", "--api-url", p.url, "--json"],
                            env={**p.env, "MCP_AGENT_CLOUD_HOME": str(p.root / "other-home")}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        code = re.search(r"enter the code (\w{4}-\w{4})", proc.stderr.readline()).group(1)
        with httpx.Client(timeout=30) as attacker:
            start = attacker.post(p.url + "/oauth/device", data={"user_code": code, "action": "provider:okta"})
            link = start.headers["location"]
        # The victim opens the link in their own browser (no cookie from the start): the platform refuses.
        with httpx.Client(timeout=30) as victim:
            final = at_issuer(victim, victim.get(link, follow_redirects=False), "olga")
        done["status"], done["text"] = final.status_code, final.text
    finally:
        proc.kill()
        proc.communicate()
    assert done["status"] == 400 and "another browser" in done["text"]


def test_cli_login_at_the_issuers_device_flow_then_token_exchange(p, tmp_path):
    home = tmp_path / "dora"
    home.mkdir()
    proc = subprocess.Popen([CLI, "login", "--no-browser", "--provider", "okta", "--api-url", p.url, "--json"],
                            env={**p.env, "MCP_AGENT_CLOUD_HOME": str(home)}, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    first = proc.stderr.readline()
    assert first.startswith(f"To log in, open {ISSUER_URL[0]}/device"), first
    complete = re.search(r"\(or open (\S+)\)", proc.stderr.readline()).group(1)
    with httpx.Client(timeout=30) as http:
        final = at_issuer(http, http.get(complete), "dora")
    assert final.status_code == 200 and "Sign-in Success" in final.text, final.text[:500]
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, first + err + out
    who = json.loads(out)
    assert (who["subject"], who["org"], who["roles"]) == ("okta:dora@example.com", "acme", ["viewer"])
    # An unsigned ID token is refused (the audience and signature checks are in tests/plugins/test_okta_auth.py).
    refused = httpx.post(p.url + "/oauth/token", data={
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "client_id": "mcp-agent-cli",
        "subject_token": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "subject_issuer": "okta",
        "subject_token_type": "urn:ietf:params:oauth:token-type:id_token"})
    assert refused.status_code == 400 and "not valid" in refused.json()["error_description"]


def test_no_secret_in_the_platform_log(p):
    log = p.log_path.read_text()
    assert SECRET not in log
    assert not re.search(r"eyJ[\w-]{20,}\.", log)


def test_the_console_signs_in_through_the_issuer(p):
    """The console offers the same providers as every login: through Okta, an owner of acme lands on acme's
    deployments, with the console's own session cookies."""
    with httpx.Client(timeout=30) as http:
        page = http.get(p.url + "/console/", follow_redirects=True)
        assert "Sign in to the console" in page.text and "Log in with Okta" in page.text
        fields = forms_of(page.text)[0]["fields"]
        start = http.post(p.url + "/oauth/authorize", data={**fields, "action": "provider:okta"})
        assert start.status_code == 303
        back = at_issuer(http, start, "olga", stop=p.url + "/console/callback")
        landed = http.get(urljoin(str(back.url), back.headers["location"]), follow_redirects=True)
        assert landed.status_code == 200 and "Deployments of acme" in landed.text, landed.text[:500]
        assert "hello" in landed.text and "okta:olga@example.com" in landed.text
        assert {c.name for c in http.cookies.jar} >= {"mcpac_console", "mcpac_console_refresh"}
