"""The ``github`` provider, end to end with a real platform and the real CLI. This is a CONTRACT test: GitHub cannot
be reached from here, so tests/github_contract.py stands in for it, following GitHub's documented OAuth web flow,
device flow and REST answers (/user, /user/orgs, /user/teams), strict where GitHub is (JSON only when asked for,
errors with HTTP 200, PKCE checked, paged lists).

Covered: "Log in with GitHub" on the platform's device page; ``mcp-agent login --provider github`` (GitHub's
device flow, then RFC 8693 token exchange); GitHub orgs and teams giving the org and role; refusals for a user
outside the orgs or in no mapped team; a bad GitHub token refused at the exchange.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import httpx
import pytest

from mcp_agent_cloud.testing import CLI, free_port
from tests.conftest import PlatformProcess
from tests.github_contract import FakeGitHub, serving

pytestmark = [pytest.mark.e2e, pytest.mark.network, pytest.mark.xdist_group("github_auth")]

SECRET_ENV, SECRET = "MCPAC_TEST_GITHUB_SECRET", "gh-app-secret-93b2"
USERS = {
    "octocat": {"orgs": ["Acme-Inc", "other"], "teams": [("Acme-Inc", "platform"), ("other", "admins")]},
    "hubot": {"orgs": ["acme-inc"], "teams": [("acme-inc", f"t{i}") for i in range(120)] + [("acme-inc", "readers")]},
    "outsider": {"orgs": ["elsewhere"], "teams": []},
    "member": {"orgs": ["acme-inc"], "teams": [("acme-inc", "unmapped")]},
}


@pytest.fixture(scope="module")
def gh(tmp_path_factory, shared_envs):
    port = free_port()
    root = tmp_path_factory.mktemp("github")
    config = (f"auth: [builtin, {{name: github, client_id: Iv1.test, client_secret_env: {SECRET_ENV}, "
              f"web_url: 'http://127.0.0.1:{port}', api_url: 'http://127.0.0.1:{port}/api', "
              "orgs: {acme-inc: acme}, teams: {acme-inc/platform: developer, acme-inc/readers: viewer, "
              "other/admins: owner}}]\n")
    platform = PlatformProcess(root, shared_envs, extra_config=config)
    fake = FakeGitHub("Iv1.test", SECRET, f"{platform.url}/oauth/callback/github", USERS)
    with serving(fake, port):
        os.environ[SECRET_ENV] = SECRET
        try:
            platform.start()
            yield platform, fake
        finally:
            os.environ.pop(SECRET_ENV, None)
            platform.stop()


def browser(fake: FakeGitHub, login: str) -> httpx.Client:
    http = httpx.Client(timeout=30)
    http.cookies.set("gh_user", login, domain="127.0.0.1")
    return http


def cli_login(p: PlatformProcess, home, *args: str) -> subprocess.Popen:
    home.mkdir(exist_ok=True)
    return subprocess.Popen([CLI, "login", "--no-browser", "--api-url", p.url, "--json", *args],
                            env={**p.env, "MCP_AGENT_CLOUD_HOME": str(home)}, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def test_log_in_with_github_on_the_device_page(gh, tmp_path):
    p, fake = gh
    proc = cli_login(p, tmp_path / "home")
    code = re.search(r"enter the code (\w{4}-\w{4})", proc.stderr.readline()).group(1)
    with browser(fake, "octocat") as http:
        page = http.get(p.url + "/oauth/device", params={"user_code": code})
        assert "Log in with GitHub" in page.text and fake.url in page.headers["content-security-policy"]
        start = http.post(p.url + "/oauth/device", data={"user_code": code, "action": "provider:github"})
        assert start.status_code == 303 and start.headers["location"].startswith(fake.url + "/login/oauth/authorize")
        assert "code_challenge_method=S256" in start.headers["location"]
        final = http.get(start.headers["location"], follow_redirects=True)
    assert final.status_code == 200 and "github:octocat" in final.text, final.text
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    who = json.loads(out)
    # Member of acme-inc (matched without regard to case) and of "other", which maps to no org: acme, and the
    # team of acme-inc gives developer. other/admins is another org's team: it gives nothing here.
    assert (who["subject"], who["org"], who["roles"]) == ("github:octocat", "acme", ["developer"])
    # GitHub was asked for JSON every time (it would have answered form-encoded otherwise).
    assert fake.requests and all("application/json" in accept for _, _, accept in fake.requests)


def test_cli_device_flow_at_github_then_token_exchange(gh, tmp_path):
    p, fake = gh
    proc = cli_login(p, tmp_path / "home", "--provider", "github")
    first = proc.stderr.readline()
    match = re.search(r"open (\S+) and enter the code (\w{4}-\w{4})", first)
    assert match and match.group(1) == fake.url + "/login/device", first
    with browser(fake, "hubot") as http:
        assert http.post(match.group(1), data={"user_code": match.group(2)}).status_code == 200
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, first + err
    who = json.loads(out)
    # hubot's 121 teams take two pages; the mapped one is on the second.
    assert (who["subject"], who["org"], who["roles"]) == ("github:hubot", "acme", ["viewer"])
    stored = json.loads((tmp_path / "home" / "auth.json").read_text())
    assert stored["refresh_token"].startswith("mcpacr_")
    assert not any(t in (tmp_path / "home" / "auth.json").read_text() for t in fake.tokens)  # GitHub's: not kept
    users = {u["username"]: u for u in p.cli_json("admin", "users", "list")}
    assert users["github:hubot"]["roles"] == ["viewer"] and users["github:hubot"]["org"] == "acme"


def test_denied_at_github_fails_the_cli_login(gh, tmp_path):
    p, fake = gh
    proc = cli_login(p, tmp_path / "home", "--provider", "github")
    code = re.search(r"enter the code (\w{4}-\w{4})", proc.stderr.readline()).group(1)
    with browser(fake, "hubot") as http:
        http.post(fake.url + "/login/device", data={"user_code": code, "action": "cancel"})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "the login was denied" in out + err


@pytest.mark.parametrize("login, why", [("outsider", "in none of the GitHub orgs"),
                                        ("member", "in no team of acme-inc that has a role")])
def test_users_outside_the_orgs_or_teams_are_refused(gh, tmp_path, login, why):
    p, fake = gh
    proc = cli_login(p, tmp_path / "home")
    code = re.search(r"enter the code (\w{4}-\w{4})", proc.stderr.readline()).group(1)
    try:
        with browser(fake, login) as http:
            start = http.post(p.url + "/oauth/device", data={"user_code": code, "action": "provider:github"})
            final = http.get(start.headers["location"], follow_redirects=True)
        assert final.status_code == 403 and why in final.text, final.text
    finally:
        proc.kill()
        proc.communicate()
    assert f"github:{login}" not in {u["username"] for u in p.cli_json("admin", "users", "list")}


def test_the_exchange_refuses_bad_tokens_and_unknown_issuers(gh):
    p, _ = gh
    for issuer, token in (("github", "gho_not-a-real-token"), ("nothere", "x"), ("builtin", "x")):
        answer = httpx.post(p.url + "/oauth/token", data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "client_id": "mcp-agent-cli",
            "subject_token": token, "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "subject_issuer": issuer})
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant", (issuer, answer.text)
    # Only the CLI's client may exchange; a dynamically registered MCP client may not.
    client = httpx.post(p.url + "/oauth/register", json={"redirect_uris": ["http://127.0.0.1:1/cb"],
                                                         "token_endpoint_auth_method": "none"}).json()
    answer = httpx.post(p.url + "/oauth/token", data={
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "client_id": client["client_id"],
        "subject_token": "x", "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "subject_issuer": "github"})
    assert answer.status_code in (400, 401) and answer.json()["error"] in ("unauthorized_client", "invalid_client")
    providers = {x["name"]: x for x in httpx.get(p.url + "/api/v1/auth/providers").json()["providers"]}
    assert providers["github"]["device"]["client_id"] == "Iv1.test" and SECRET not in json.dumps(providers)


def test_no_secret_or_github_token_in_the_platform_log(gh):
    p, fake = gh
    log = p.log_path.read_text()
    assert SECRET not in log and not any(t in log for t in fake.tokens)


def test_a_deployment_may_take_only_github_users(gh, tmp_path):
    from tests.conftest import ROOT

    p, fake = gh
    owner = p.cli_json("admin", "token", "--org", "acme", "--role", "owner")["token"]
    as_owner = {"MCP_AGENT_CLOUD_TOKEN": owner}
    bad = p.cli("deploy", "app", str(ROOT / "examples" / "hello"), "--name", "acme.ghonly", "--auth",
                "provider:nothere", env=as_owner)
    assert bad.returncode != 0 and "configured: builtin, github" in bad.stdout + bad.stderr
    assert p.cli("deploy", "app", ".", "--auth", "sometimes", env=as_owner).returncode == 2  # a usage error
    deployed = p.cli_json("deploy", "app", str(ROOT / "examples" / "hello"), "--name", "acme.ghonly", "--auth",
                          "provider:github", env=as_owner)
    assert deployed["auth"] == "provider:github"
    assert {r["name"]: r for r in p.cli_json("list", env=as_owner)}["ghonly"]["auth"] == "provider:github"
    # The org's own builtin token may manage it, not call it.
    refused = p.api("GET", "/servers/acme.ghonly/tools", token=owner)
    assert refused.status_code == 403 and "logged in through github" in refused.text
    assert p.api("GET", "/api/v1/deployments/acme.ghonly", token=owner).status_code == 200
    # A GitHub login of the org may call it.
    proc = cli_login(p, tmp_path / "home", "--provider", "github")
    code = re.search(r"enter the code (\w{4}-\w{4})", proc.stderr.readline()).group(1)
    with browser(fake, "octocat") as http:
        http.post(fake.url + "/login/device", data={"user_code": code})
    assert proc.wait(60) == 0
    token = json.loads((tmp_path / "home" / "auth.json").read_text())["access_token"]
    assert p.api("GET", "/servers/acme.ghonly/tools", token=token).status_code == 200
    # An MCP client's login page for it offers GitHub only: no password form.
    client = httpx.post(p.url + "/oauth/register", json={"redirect_uris": ["http://127.0.0.1:1/cb"],
                                                         "token_endpoint_auth_method": "none"}).json()
    page = httpx.get(p.url + "/oauth/authorize", params={
        "response_type": "code", "client_id": client["client_id"], "redirect_uri": "http://127.0.0.1:1/cb",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", "code_challenge_method": "S256",
        "resource": f"{p.url}/servers/acme.ghonly", "state": "s"})
    assert page.status_code == 200 and "Log in with GitHub" in page.text and 'type="password"' not in page.text
